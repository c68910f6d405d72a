//! The Redis store against real `redis-server` processes: the scripts' semantics, history,
//! outages (open and closed), the exactly-once replay, timeouts, and calendar roll-over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::redis::{hist_total, tts_body, tts_reply, RedisServer, PRICE};
use crate::common::*;
use chrono::{DateTime, Utc};
use spendgate::config::Config;
use spendgate::domain::window::{Clock, Window};
use spendgate::domain::Scope;
use spendgate::metrics::Metrics;
use spendgate::quota::ledger::{CounterKey, CounterOp, Expiry, ReserveOutcome, ReserveRequest, Settlement, Store, Totals, UsageRecord};
use spendgate::store::redis::{RedisStore, StoreMetrics};

fn open_store(url: &str, extra: &str) -> RedisStore {
    open_store_with_metrics(url, extra).0
}

fn open_store_with_metrics(url: &str, extra: &str) -> (RedisStore, Metrics) {
    let yaml = format!("store:\n  backend: redis\n  url: \"{url}\"\n  key_prefix: sg\n{extra}");
    let c = Config::from_yaml(&yaml, "t.yaml").unwrap();
    let m = Metrics::new(&c.metrics);
    let store = RedisStore::open(
        &c.store,
        StoreMetrics {
            errors: m.store_errors.clone(),
            duration: m.store_duration.clone(),
        },
    )
    .unwrap();
    (store, m)
}

fn ck(scope: Scope, tenant: &str, window: Window, bucket: &str, field: &str) -> CounterKey {
    CounterKey {
        scope,
        tenant: tenant.into(),
        window,
        bucket: bucket.into(),
        field: field.into(),
    }
}

fn op(key: CounterKey, amount: i64, max: Option<i64>) -> CounterOp {
    CounterOp {
        key,
        amount,
        max,
        watched: true,
    }
}

fn far() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(60)
}

fn reserve_req(ops: Vec<CounterOp>) -> ReserveRequest {
    ReserveRequest {
        ops: ops.into(),
        expires: Expiry::all(far()),
        call: None,
    }
}

fn hget(c: &mut ::redis::Connection, key: &str, field: &str) -> i64 {
    ::redis::cmd("HGET").arg(key).arg(field).query::<Option<i64>>(c).unwrap().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_checks_every_counter_exactly_and_applies_all_or_nothing() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), "");
    let day = "2027-03-04";
    let p_cost = ck(Scope::Profile, "p1", Window::Daily, day, "cost");
    let p_req = ck(Scope::Profile, "p1", Window::Daily, day, "requests");
    let o_cost = ck(Scope::Org, "acme", Window::Monthly, "2027-03", "cost");
    let req = |amount| {
        reserve_req(vec![
            op(p_cost.clone(), amount, Some(10)),
            op(p_req.clone(), 1, None),
            op(o_cost.clone(), amount, Some(100)),
        ])
    };
    assert_eq!(store.reserve(&req(6)).await.unwrap(), ReserveOutcome::Admitted { before: vec![0, 0, 0] });
    assert_eq!(store.reserve(&req(6)).await.unwrap(), ReserveOutcome::Admitted { before: vec![6, 1, 6] });
    assert_eq!(store.reserve(&req(6)).await.unwrap(), ReserveOutcome::Refused { index: 0, current: 12 });
    assert_eq!(
        store.reserve(&req(0)).await.unwrap(),
        ReserveOutcome::Admitted { before: vec![12, 2, 12] },
        "a zero amount is never refused"
    );
    assert_eq!(store.read(&[p_cost.clone(), p_req.clone(), o_cost.clone()]).await.unwrap(), vec![12, 3, 12]);

    // The documented keys: the profile's counters live in its org's slot.
    let mut c = server.conn();
    assert_eq!(hget(&mut c, "sg:{o:acme}:c:p:p1:d:2027-03-04", "cost"), 12);
    assert_eq!(hget(&mut c, "sg:{o:acme}:c:o:acme:m:2027-03", "cost"), 12);
    let ttl: i64 = ::redis::cmd("TTL").arg("sg:{o:acme}:c:p:p1:d:2027-03-04").query(&mut c).unwrap();
    assert!(ttl > 50 * 86_400, "counters expire with their window plus retention: {ttl}");

    // Beyond 2^53 doubles cannot tell 2^53 from 2^53 + 1; the script compares exactly.
    let big = ck(Scope::Profile, "p2", Window::Daily, day, "tokens");
    let _: () = ::redis::cmd("HSET")
        .arg("sg:{p:p2}:c:p:p2:d:2027-03-04")
        .arg("tokens")
        .arg(9_007_199_254_740_992i64)
        .query(&mut c)
        .unwrap();
    let r = reserve_req(vec![op(big.clone(), 1, Some(9_007_199_254_740_993))]);
    assert_eq!(
        store.reserve(&r).await.unwrap(),
        ReserveOutcome::Admitted {
            before: vec![9_007_199_254_740_992]
        }
    );
    assert_eq!(
        store.reserve(&r).await.unwrap(),
        ReserveOutcome::Refused {
            index: 0,
            current: 9_007_199_254_740_993
        }
    );
    // Negative values (a settlement larger than the reservation it corrects) compare too.
    let neg = ck(Scope::Profile, "p3", Window::Daily, day, "cost");
    let _: () = ::redis::cmd("HSET")
        .arg("sg:{p:p3}:c:p:p3:d:2027-03-04")
        .arg("cost")
        .arg(-5)
        .query(&mut c)
        .unwrap();
    let r = reserve_req(vec![op(neg, 3, Some(-4))]);
    assert_eq!(store.reserve(&r).await.unwrap(), ReserveOutcome::Admitted { before: vec![-5] });
    assert_eq!(store.reserve(&r).await.unwrap(), ReserveOutcome::Refused { index: 0, current: -2 });

    // Sums across the 15-digit boundary stay exact, and a field two ops count (two limits
    // with the same match) gets both amounts.
    let edge = ck(Scope::Profile, "p4", Window::Daily, day, "cost");
    let _: () = ::redis::cmd("HSET")
        .arg("sg:{p:p4}:c:p:p4:d:2027-03-04")
        .arg("cost")
        .arg(999_999_999_999_999i64)
        .query(&mut c)
        .unwrap();
    let r = reserve_req(vec![op(edge.clone(), 1, None), op(edge.clone(), 2, None)]);
    store.reserve(&r).await.unwrap();
    assert_eq!(hget(&mut c, "sg:{p:p4}:c:p:p4:d:2027-03-04", "cost"), 1_000_000_000_000_002);
    store.reserve(&r).await.unwrap();
    assert_eq!(hget(&mut c, "sg:{p:p4}:c:p:p4:d:2027-03-04", "cost"), 1_000_000_000_000_005);
}

/// The proxy reserves nothing on counters no limit reads when the store is Redis; the
/// store leaves them out of the script (the reply's values and a refusal's index still
/// follow the request's ops), and the settlement adds their whole amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_counters_stay_out_of_the_reservation() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), "");
    assert!(!store.reserves_unwatched());
    let day = "2027-03-04";
    let tokens = ck(Scope::Profile, "u1", Window::Daily, day, "tokens");
    let chars = ck(Scope::Profile, "u1", Window::Daily, day, "chars");
    let cost = ck(Scope::Profile, "u1", Window::Monthly, "2027-03", "cost");
    let unwatched = |key: &CounterKey| CounterOp {
        key: key.clone(),
        amount: 0,
        max: None,
        watched: false,
    };
    let req = || reserve_req(vec![unwatched(&tokens), op(cost.clone(), 60, Some(100)), unwatched(&chars)]);
    assert_eq!(store.reserve(&req()).await.unwrap(), ReserveOutcome::Admitted { before: vec![0, 0, 0] });
    assert_eq!(store.reserve(&req()).await.unwrap(), ReserveOutcome::Admitted { before: vec![0, 60, 0] });
    assert_eq!(store.reserve(&req()).await.unwrap(), ReserveOutcome::Refused { index: 1, current: 120 });
    let mut c = server.conn();
    let daily: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL").arg("sg:{p:u1}:c:p:u1:d:2027-03-04").query(&mut c).unwrap();
    assert!(daily.is_empty(), "nothing written to unwatched counters: {daily:?}");

    // Only unwatched counters (no limit at all): one of them still goes to Redis, so the
    // call claims its id there and an unreachable Redis is noticed as for any other call.
    let only = reserve_req(vec![unwatched(&tokens), unwatched(&chars)]);
    assert_eq!(store.reserve(&only).await.unwrap(), ReserveOutcome::Admitted { before: vec![0, 0] });

    let mut s = settlement("u1-a", "u1", None, "gemini", "m", 55, day);
    s.deltas = vec![(tokens.clone(), 7), (chars.clone(), 3), (cost.clone(), -5)];
    store.settle(&s).await.unwrap();
    assert_eq!(store.read(&[tokens, chars, cost]).await.unwrap(), vec![7, 3, 115]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_loaded_again_after_a_script_flush() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), "");
    let k = ck(Scope::Profile, "p1", Window::Daily, "2027-03-04", "cost");
    store.reserve(&reserve_req(vec![op(k.clone(), 1, Some(10))])).await.unwrap();
    let mut c = server.conn();
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    assert_eq!(
        store.reserve(&reserve_req(vec![op(k.clone(), 1, Some(10))])).await.unwrap(),
        ReserveOutcome::Admitted { before: vec![1] },
        "NOSCRIPT is answered by loading the script and calling it again"
    );
}

fn settlement(id: &str, profile: &str, org: Option<&str>, provider: &str, model: &str, cost: i64, day: &str) -> Settlement {
    let month = &day[..7];
    let mut deltas = vec![
        (ck(Scope::Profile, profile, Window::Daily, day, "cost"), cost),
        (ck(Scope::Profile, profile, Window::Monthly, month, "cost"), cost),
    ];
    if let Some(o) = org {
        deltas.push((ck(Scope::Org, o, Window::Daily, day, "cost"), cost));
        deltas.push((ck(Scope::Org, o, Window::Monthly, month, "cost"), cost));
    }
    Settlement {
        deltas,
        record: UsageRecord {
            tags: Vec::new(),
            at: Utc::now(),
            day: day.into(),
            profile: profile.into(),
            org: org.map(Into::into),
            provider: provider.into(),
            model: model.into(),
            path: "/v1/x".into(),
            status: 200,
            totals: Totals {
                requests: 1,
                cost_nanos: cost,
                input_tokens: 10,
                output_tokens: 4,
                ..Totals::default()
            },
            reason: None,
        },
        id: id.into(),
        expires: Expiry::all(far()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_build_history_with_breakdowns_recent_requests_and_tenants() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), "  recent_max: 2\n");
    let day = "2027-03-04";
    store
        .settle(&settlement("a", "p1", Some("acme"), "gemini", "gemini-2.5-flash", 100, day))
        .await
        .unwrap();
    store
        .settle(&settlement("b", "p1", Some("acme"), "elevenlabs", "eleven_v3", 50, day))
        .await
        .unwrap();
    store
        .settle(&settlement("c", "p1", None, "gemini", "gemini-2.5-flash", 7, "2027-03-05"))
        .await
        .unwrap();
    store
        .settle(&settlement("d", "p2", Some("acme"), "gemini", "gemini-2.5-flash", 1, day))
        .await
        .unwrap();

    // The profile's data lives under its org's tag and its own; the index finds both.
    let days = vec![day.to_string(), "2027-03-05".to_string()];
    let h = store.history(Scope::Profile, "p1", &days, 10).await.unwrap();
    assert_eq!(h.days[day].requests, 2);
    assert_eq!(h.days[day].cost_nanos, 150);
    assert_eq!(h.days["2027-03-05"].cost_nanos, 7);
    assert_eq!(h.by_provider["gemini"].cost_nanos, 107);
    assert_eq!(h.by_model["eleven_v3"].requests, 1);
    assert_eq!(h.by_model["gemini-2.5-flash"].input_tokens, 20);
    // Two tags with two recent requests each, newest first, capped to what was asked.
    assert_eq!(h.recent.len(), 3);
    assert!(h.recent.windows(2).all(|w| w[0].at >= w[1].at));
    let month = store.history(Scope::Profile, "p1", &["2027-03".to_string()], 0).await.unwrap();
    assert_eq!(month.days["2027-03"].cost_nanos, 157, "monthly history");
    let org = store.history(Scope::Org, "acme", &days, 5).await.unwrap();
    assert_eq!(org.days[day].requests, 3);
    assert_eq!(org.days[day].cost_nanos, 151);
    assert_eq!(org.recent.len(), 2, "the recent list is capped at recent_max");

    assert_eq!(
        store
            .read(&[
                ck(Scope::Profile, "p1", Window::Monthly, "2027-03", "cost"),
                ck(Scope::Org, "acme", Window::Daily, day, "cost")
            ])
            .await
            .unwrap(),
        vec![157, 151],
        "a profile's counters are summed over its tags"
    );
    let mut c = server.conn();
    assert_eq!(hist_total(&mut c, "sg:{o:acme}:h:p:p1:d:2027-03-04", "cost"), 150);
    assert_eq!(hget(&mut c, "sg:{o:acme}:h:o:acme:m:2027-03", "requests|gemini|gemini-2.5-flash"), 2);
    let ttl: i64 = ::redis::cmd("TTL").arg("sg:{o:acme}:h:p:p1:d:2027-03-04").query(&mut c).unwrap();
    assert!(ttl > 390 * 86_400, "daily history is kept 400 days: {ttl}");
    let ttl: i64 = ::redis::cmd("TTL").arg("sg:{o:acme}:c:p:p1:d:2027-03-04").query(&mut c).unwrap();
    assert!(ttl > 50 * 86_400, "a counter hash made by a settlement gets its expiry too: {ttl}");
    let ttl: i64 = ::redis::cmd("TTL").arg("sg:{o:acme}:r:p:p1").query(&mut c).unwrap();
    assert!(ttl > 390 * 86_400, "{ttl}");

    // The registries are written in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let profiles = store.tenants(Scope::Profile).await.unwrap();
        let orgs = store.tenants(Scope::Org).await.unwrap();
        if profiles == ["p1", "p2"] && orgs == ["acme"] {
            break;
        }
        assert!(Instant::now() < deadline, "tenants: {profiles:?} {orgs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settlements that share a batch are summed in the script: amounts of up to 15 digits as
/// Lua numbers, written out before a sum reaches 10^15, longer ones as the strings they are.
/// Every total stays exact whatever mix of them shares a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_in_a_batch_stay_exact_past_what_a_double_holds() {
    let server = RedisServer::start();
    let store = Arc::new(open_store(&server.url(), ""));
    let day = "2027-03-04";
    // 15-digit amounts whose sums cross 10^15, 16- and 19-digit ones, negative corrections
    // and odd small ones: settled together, so that they share batches.
    let costs: Vec<i64> = (0..120i64)
        .map(|i| match i % 6 {
            0 => 999_999_999_999_999,
            1 => 300_000_000_000_001,
            2 => 4_000_000_000_000_003,
            3 => -7,
            4 => 1_234_567_890_123_456_789 / 1_000,
            _ => 2 * i + 1,
        })
        .collect();
    let settles = costs.iter().enumerate().map(|(i, &cost)| {
        let store = store.clone();
        async move { store.settle(&settlement(&format!("s{i}"), "big", Some("acme"), "gemini", "m", cost, day)).await }
    });
    for r in futures_util::future::join_all(settles).await {
        r.unwrap();
    }
    let total: i64 = costs.iter().sum();
    assert_eq!(
        store
            .read(&[
                ck(Scope::Profile, "big", Window::Daily, day, "cost"),
                ck(Scope::Org, "acme", Window::Monthly, "2027-03", "cost"),
            ])
            .await
            .unwrap(),
        vec![total, total]
    );
    let h = store.history(Scope::Profile, "big", &[day.to_string()], 0).await.unwrap();
    assert_eq!(h.days[day].cost_nanos, total);
    assert_eq!(h.days[day].requests, 120);
    assert_eq!(h.by_model["m"].cost_nanos, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_does_not_count_twice() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.ndjson");
    let extra = format!("  journal: \"{}\"\n", journal.display());
    let store = open_store(&server.url(), &extra);
    store.ping().await.unwrap();
    server.kill();
    let day = "2027-03-04";
    for i in 0..5 {
        store
            .settle(&settlement(&format!("s{i}"), "p1", Some("acme"), "gemini", "m", 100, day))
            .await
            .unwrap();
    }
    assert_eq!(store.journal_len(), 5);
    store.flush().await.unwrap();
    // What the file holds before the replay: as if the process died right after Redis applied
    // the entries and before it wrote that down.
    let before_replay = std::fs::read(&journal).unwrap();
    assert_eq!(String::from_utf8_lossy(&before_replay).lines().count(), 5);

    server.restart_empty();
    eventually("the journal is replayed", || store.journal_len() == 0).await;
    let mut c = server.conn();
    let cost_key = "sg:{o:acme}:c:p:p1:d:2027-03-04";
    let hist_key = "sg:{o:acme}:h:o:acme:d:2027-03-04";
    assert_eq!(hget(&mut c, cost_key, "cost"), 500);
    assert_eq!(hist_total(&mut c, hist_key, "requests"), 5);
    drop(store);

    std::fs::write(&journal, &before_replay).unwrap();
    let (store, metrics) = open_store_with_metrics(&server.url(), &extra);
    eventually("the journal is replayed again", || store.journal_len() == 0).await;
    let replays = metrics.store_duration.with_label_values(&["replay"]).get_sample_count();
    assert!(replays >= 5, "the five entries were read back from the file and replayed ({replays} replays)");
    assert_eq!(hget(&mut c, cost_key, "cost"), 500, "replayed entries are not applied twice");
    assert_eq!(hist_total(&mut c, hist_key, "requests"), 5);
    let recent: i64 = ::redis::cmd("LLEN").arg("sg:{o:acme}:r:o:acme").query(&mut c).unwrap();
    assert_eq!(recent, 5);
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0, "an empty journal leaves an empty file");
}

fn ttl(c: &mut ::redis::Connection, key: &str) -> i64 {
    ::redis::cmd("TTL").arg(key).query(c).unwrap()
}

/// The id hashes of the current hour under a tag.
fn id_hashes(c: &mut ::redis::Connection, tag: &str) -> Vec<String> {
    ::redis::cmd("KEYS").arg(format!("sg:{{{tag}}}:n:*")).query(c).unwrap()
}

/// Recent lists are trimmed in steps (a quarter past the cap, at least 8) rather than on
/// every push, and readers still see at most the cap. Expiries that do not change are sent
/// once per process: the keys still have them, also when Redis comes back empty and the
/// keys are made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_lists_are_trimmed_in_steps_and_keys_keep_their_expiries_across_an_empty_restart() {
    let mut server = RedisServer::start();
    let store = open_store(
        &server.url(),
        "  recent_max: 4
",
    );
    let day = "2027-03-04";
    let list = "sg:{o:acme}:r:p:p1";
    let mut c = server.conn();
    let mut longest = 0;
    for i in 0..40 {
        store
            .settle(&settlement(&format!("t{i}"), "p1", Some("acme"), "gemini", "m", 1, day))
            .await
            .unwrap();
        let len: usize = ::redis::cmd("LLEN").arg(list).query(&mut c).unwrap();
        longest = longest.max(len);
    }
    assert_eq!(longest, 12, "trimmed back to 4 once past 4 + 8");
    let h = store.history(Scope::Profile, "p1", &[day.to_string()], 100).await.unwrap();
    assert_eq!(h.recent.len(), 4, "readers see the cap");
    assert_eq!(h.days[day].requests, 40);
    assert!(ttl(&mut c, list) > 390 * 86_400);
    let ids = id_hashes(&mut c, "o:acme");
    assert!(!ids.is_empty());
    for k in &ids {
        let t = ttl(&mut c, k);
        assert!(t > 7100 && t <= 3 * 3600 + 60, "ids are kept two hours after their hour: {k} {t}");
    }

    server.restart_empty();
    let mut c = server.conn();
    // The first call after the restart may fail and be journaled; either way it lands.
    let _ = store.settle(&settlement("after-1", "p1", Some("acme"), "gemini", "m", 1, day)).await;
    eventually("the journal is replayed", || store.journal_len() == 0).await;
    store.settle(&settlement("after-2", "p1", Some("acme"), "gemini", "m", 1, day)).await.unwrap();
    assert_eq!(hist_total(&mut c, "sg:{o:acme}:h:p:p1:d:2027-03-04", "requests"), 2);
    assert!(ttl(&mut c, list) > 390 * 86_400, "the list made again has its expiry");
    for k in id_hashes(&mut c, "o:acme") {
        assert!(ttl(&mut c, &k) > 7100, "the id hash made again has its expiry: {k}");
    }
}

/// An id hash's expiry goes with the first reservation of a process that writes it; when
/// that one is refused (nothing is written), the next one that is admitted sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_hash_gets_its_expiry_even_when_its_first_reservation_is_refused() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), "");
    let mut c = server.conn();
    let cost = ck(Scope::Profile, "p7", Window::Daily, "2027-03-04", "cost");
    let refused = store.reserve(&reserve_req(vec![op(cost.clone(), 5, Some(0))])).await.unwrap();
    assert!(matches!(refused, ReserveOutcome::Refused { .. }));
    assert!(id_hashes(&mut c, "p:p7").is_empty(), "a refusal writes no id");
    let admitted = store.reserve(&reserve_req(vec![op(cost, 5, Some(10))])).await.unwrap();
    assert_eq!(admitted, ReserveOutcome::Admitted { before: vec![0] });
    let ids = id_hashes(&mut c, "p:p7");
    assert_eq!(ids.len(), 1);
    assert!(ttl(&mut c, &ids[0]) > 7100, "two hours after the end of its hour: {}", ttl(&mut c, &ids[0]));
}

fn evalsha_calls(c: &mut ::redis::Connection) -> u64 {
    let info: String = ::redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Concurrent reservations share script calls (the reservations of requests arriving
/// together go out as one batch) and are still decided one after the other: 200 at once of
/// $0.0615 against $1.00 admit exactly 17, as 200 calls one by one would. A key of the
/// wrong type in a batch fails only its own reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_share_script_calls_and_admit_exactly_as_one_by_one() {
    let server = RedisServer::start();
    let store = Arc::new(open_store(&server.url(), ""));
    let mut c = server.conn();
    let cost = ck(Scope::Profile, "p1", Window::Monthly, "2027-03", "cost");
    // Warm up: the profile's index is written on its first request.
    store.reserve(&reserve_req(vec![op(cost.clone(), 0, None)])).await.unwrap();
    let before = evalsha_calls(&mut c);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            let cost = cost.clone();
            tokio::spawn(async move { store.reserve(&reserve_req(vec![op(cost, PRICE, Some(1_000_000_000))])).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if let ReserveOutcome::Admitted { .. } = t.await.unwrap().unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 17);
    assert_eq!(hget(&mut c, "sg:{p:p1}:c:p:p1:m:2027-03", "cost"), 17 * PRICE);
    let calls = evalsha_calls(&mut c) - before;
    assert!(calls < 200, "200 reservations took {calls} script calls");

    // A counter hash Redis cannot increment (a string) fails its own reservation only, after
    // the other counter it had added to is taken back; closed on errors, it is refused.
    let closed = Arc::new(open_store(&server.url(), "  on_error: closed\n"));
    let _: () = ::redis::cmd("SET").arg("sg:{p:bad}:c:p:bad:m:2027-03").arg("x").query(&mut c).unwrap();
    for round in 0..20 {
        let tasks: Vec<_> = ["p2", "bad", "p3", "p4"]
            .into_iter()
            .map(|p| {
                let store = closed.clone();
                let cost = ck(Scope::Profile, p, Window::Daily, "2027-03-04", "cost");
                let key = ck(Scope::Profile, p, Window::Monthly, "2027-03", "cost");
                tokio::spawn(async move { store.reserve(&reserve_req(vec![op(cost, 5, Some(1000)), op(key, 5, Some(1000))])).await })
            })
            .collect();
        let results: Vec<_> = futures_util::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
        assert!(results[1].is_err(), "round {round}: {:?}", results[1]);
        for (i, p) in [(0, "p2"), (2, "p3"), (3, "p4")] {
            assert_eq!(
                results[i].as_ref().unwrap(),
                &ReserveOutcome::Admitted {
                    before: vec![round * 5, round * 5]
                },
                "{p}"
            );
        }
        assert_eq!(hget(&mut c, "sg:{p:bad}:c:p:bad:d:2027-03-04", "cost"), 0, "taken back");
        let ids: Vec<String> = ::redis::cmd("KEYS").arg("sg:{p:bad}:n:*").query(&mut c).unwrap();
        assert!(ids.is_empty(), "its id is given back");
    }
}

/// A batch of first calls goes through `settle_sums.lua` with its writes summed; when one of
/// its ids was applied before (a retry whose answer was lost), that script takes its claims
/// back and the batch goes through `settle.lua`, which applies every other entry once and
/// the repeated one not again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_applied_before_sends_its_batch_through_the_per_entry_script() {
    let server = RedisServer::start();
    let store = Arc::new(open_store(&server.url(), ""));
    let mut c = server.conn();
    let day = "2027-03-04";
    let cost_key = "sg:{o:acme}:c:p:p1:d:2027-03-04";
    let hist_key = "sg:{o:acme}:h:o:acme:d:2027-03-04";
    store.settle(&settlement("dup", "p1", Some("acme"), "gemini", "m", 1000, day)).await.unwrap();
    // Alone: the summed script finds the id and changes nothing.
    store.settle(&settlement("dup", "p1", Some("acme"), "gemini", "m", 1000, day)).await.unwrap();
    assert_eq!(hget(&mut c, cost_key, "cost"), 1000);
    // Among others, in whatever batches they form.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            let id = if i % 10 == 9 { "dup".to_string() } else { format!("n{i}") };
            tokio::spawn(async move { store.settle(&settlement(&id, "p1", Some("acme"), "gemini", "m", 7, day)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(hget(&mut c, cost_key, "cost"), 1000 + 36 * 7, "36 new settlements, the repeated id not again");
    assert_eq!(hist_total(&mut c, hist_key, "requests"), 37);
    let recent: i64 = ::redis::cmd("LLEN").arg("sg:{o:acme}:r:o:acme").query(&mut c).unwrap();
    assert_eq!(recent, 37);
    let ids: Vec<String> = ::redis::cmd("KEYS").arg("sg:{o:acme}:n:*").query(&mut c).unwrap();
    let claimed: i64 = ids.iter().map(|k| ::redis::cmd("HLEN").arg(k).query::<i64>(&mut c).unwrap()).sum();
    assert_eq!(claimed, 37, "every id claimed once; claims taken back are not left behind");
}

/// A counter is incremented first and its value before read from the answer; when that
/// increment would pass the signed 64-bit range the counter is read instead, so a counter at
/// its limit still refuses cleanly (nothing added, no error), and a refusal takes back what
/// the request's other counters were given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_at_the_top_of_the_range_takes_everything_back() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), "");
    let mut c = server.conn();
    let key = "sg:{p:p1}:c:p:p1:m:2027-03";
    let _: () = ::redis::cmd("HSET").arg(key).arg("tokens").arg(i64::MAX).query(&mut c).unwrap();
    let cost = ck(Scope::Profile, "p1", Window::Monthly, "2027-03", "cost");
    let tokens = ck(Scope::Profile, "p1", Window::Monthly, "2027-03", "tokens");
    let r = reserve_req(vec![op(cost, 5, Some(100)), op(tokens, 10, Some(100))]);
    assert_eq!(store.reserve(&r).await.unwrap(), ReserveOutcome::Refused { index: 1, current: i64::MAX });
    assert_eq!(hget(&mut c, key, "cost"), 0, "the other counter's amount is taken back");
    assert_eq!(hget(&mut c, key, "tokens"), i64::MAX);
}

/// Redis does not roll a failed script back. A settlement batch one of whose writes fails
/// (here the recent-requests list is a string) applies everything else exactly once and says
/// so, rather than stopping part-way with its ids unclaimed (a retry would count the applied
/// part again, once per attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_write_redis_refuses_is_skipped_and_the_rest_applied_once() {
    let server = RedisServer::start();
    let (store, metrics) = open_store_with_metrics(&server.url(), "");
    store.ping().await.unwrap();
    let mut c = server.conn();
    let recent_key = "sg:{p:pw}:r:p:pw";
    let _: () = ::redis::cmd("SET").arg(recent_key).arg("not a list").query(&mut c).unwrap();
    let day = "2027-03-04";
    let errors = || metrics.store_errors.with_label_values(&["settle"]).get();
    let before = errors();
    store.settle(&settlement("w1", "pw", None, "gemini", "m", 100, day)).await.unwrap();
    store.settle(&settlement("w1", "pw", None, "gemini", "m", 100, day)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.journal_len(), 0, "applied, not journaled for a retry");
    assert_eq!(
        hget(&mut c, "sg:{p:pw}:c:p:pw:d:2027-03-04", "cost"),
        100,
        "once, the repeat is known by its id"
    );
    assert_eq!(hist_total(&mut c, "sg:{p:pw}:h:p:pw:d:2027-03-04", "requests"), 1);
    let kind: String = ::redis::cmd("TYPE").arg(recent_key).query(&mut c).unwrap();
    assert_eq!(kind, "string", "the refused write was skipped");
    assert!(errors() > before, "and counted as a settle error");
}

// ---- Through the proxy ----

fn proxy_yaml(url: &str, store_extra: &str, limits: &str) -> String {
    format!(
        "providers:\n  elevenlabs: {{kind: elevenlabs, prefix: /elevenlabs, upstream: \"{{upstream}}\"}}\nstore:\n  backend: redis\n  url: \"{url}\"\n  key_prefix: sg\n{store_extra}limits:\n{limits}"
    )
}

async fn tts(p: &Proxy, profile: &str) -> Got {
    p.client
        .post(
            &p.url("/elevenlabs/v1/text-to-speech/voice"),
            &[("x-profile-id", profile), ("content-type", "application/json")],
            tts_body(),
        )
        .await
}

/// The proxy on a clock fixed at the test's start: the month it counts in is the one the
/// test builds its keys from, even when the wall clock crosses midnight at the end of a
/// month meanwhile.
async fn start_fixed(yaml: &str, upstream: &str) -> Proxy {
    start_proxy_with_clock(yaml, upstream, Clock::fixed(Utc::now())).await
}

/// The month bucket the proxy counts in, from its own calendar and clock.
fn this_month(p: &Proxy) -> String {
    p.handle.app.runtime().calendar.bucket(Window::Monthly, p.handle.app.clock.now()).id.to_string()
}

/// A journal file for the store: it is truncated whenever nothing is left to apply to
/// Redis, which is the signal that no replay or late call can still change a counter.
fn journal_in(dir: &tempfile::TempDir) -> (String, std::path::PathBuf) {
    let path = dir.path().join("journal.ndjson");
    (format!("  journal: \"{}\"\n", path.display()), path)
}

fn journal_empty(path: &std::path::Path) -> bool {
    std::fs::metadata(path).map_or(true, |m| m.len() == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_open_forwards_everything_and_replays_its_cost_once() {
    let mut server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 100}\n";
    let dir = tempfile::tempdir().unwrap();
    let (journal_yaml, journal) = journal_in(&dir);
    let p = start_fixed(&proxy_yaml(&server.url(), &journal_yaml, limits), &mock.url()).await;
    for _ in 0..3 {
        assert_eq!(tts(&p, "p-out").await.status, 200);
    }
    settled_or_fail(&p.handle).await;

    // Redis is killed during traffic: ten requests reserved in Redis are still streaming
    // their responses, so they settle while Redis is gone.
    mock.set(|_| tts_reply().pieces(&[0u8; 256], 256, Duration::from_millis(400)));
    let (client, url) = (p.client.clone(), p.url("/elevenlabs/v1/text-to-speech/voice"));
    let in_flight = tokio::spawn(async move {
        let headers = [("x-profile-id", "p-out"), ("content-type", "application/json")];
        futures_util::future::join_all((0..10).map(|_| client.post(&url, &headers, tts_body()))).await
    });
    eventually("the ten requests reach the upstream", || mock.count() == 13).await;
    server.kill();
    mock.set(|_| tts_reply());

    // During the outage: every request is forwarded.
    let during = futures_util::future::join_all((0..20).map(|_| tts(&p, "p-out"))).await;
    let in_flight = in_flight.await.unwrap();
    assert!(
        during.iter().chain(&in_flight).all(|g| g.status == 200),
        "{:?}",
        during.iter().chain(&in_flight).map(|g| g.status).collect::<Vec<_>>()
    );
    assert_eq!(mock.count(), 33);
    settled_or_fail(&p.handle).await;
    // Still serving: ready, but degraded.
    let ready = p.client.get(&p.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "degraded");

    // Redis comes back empty: what was counted during the outage is replayed, once. The
    // reservations of the ten in flight went down with the old Redis; their settlements
    // bring their history, and the whole amount of the counters no limit reads (requests
    // here: they are left to the settlement), while the cost counter, which a limit reads,
    // only gets its correction (zero: the estimate was exact).
    server.restart_empty();
    let key = format!("sg:{{p:p-out}}:c:p:p-out:m:{}", this_month(&p));
    let hist = format!("sg:{{p:p-out}}:h:p:p-out:m:{}", this_month(&p));
    let mut c = server.conn();
    eventually("the outage reaches Redis", || {
        hget(&mut c, &key, "cost") == 20 * PRICE && hist_total(&mut c, &hist, "requests") == 30
    })
    .await;
    // Nothing is left to replay: the values are final.
    eventually("the journal is drained", || journal_empty(&journal)).await;
    assert_eq!(hget(&mut c, &key, "cost"), 20 * PRICE, "exactly once");
    assert_eq!(hget(&mut c, &key, "requests"), 30);
    assert_eq!(hist_total(&mut c, &hist, "requests"), 30);
    assert_eq!(hist_total(&mut c, &hist, "cost"), 30 * PRICE);
    // The usage API finds the tenant counted during the outage, with the exact cost, though
    // Redis came back without its registry.
    let usage = crate::common::ops::admin_get(&p, "/v1/profiles/p-out/usage?range=30d", None).await;
    assert_eq!(usage.status, 200, "{}", String::from_utf8_lossy(&usage.body));
    assert_eq!(usage.json()["month"]["requests"], 30);
    assert_eq!(usage.json()["month"]["cost_usd"], spendgate::domain::money::nanos_to_usd(30 * PRICE));
    let listing = crate::common::ops::admin_get(&p, "/v1/profiles", None).await;
    assert!(
        String::from_utf8_lossy(&listing.body).contains("\"p-out\""),
        "{}",
        String::from_utf8_lossy(&listing.body)
    );

    // And Redis is used again directly.
    assert_eq!(tts(&p, "p-out").await.status, 200);
    settled_or_fail(&p.handle).await;
    assert_eq!(hget(&mut c, &key, "cost"), 21 * PRICE);
    let metrics = p.metrics().await;
    assert!(
        sample(&metrics, "spendgate_store_errors_total{op=\"reserve\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "spendgate_store_errors_total{op=\"settle\"}").unwrap_or(0.0) >= 10.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "spendgate_store_duration_seconds_count{op=\"replay\"}").unwrap_or(0.0) >= 30.0,
        "{metrics}"
    );
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_open_still_enforces_last_read_plus_counted_since() {
    let mut server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1}\n";
    // A timeout no request reaches while Redis is up: this test is about the fence's values,
    // not about timeouts.
    let p = start_fixed(&proxy_yaml(&server.url(), "  timeout: 0.25\n", limits), &mock.url()).await;
    for _ in 0..10 {
        assert_eq!(tts(&p, "p-fence").await.status, 200);
    }
    settled_or_fail(&p.handle).await;
    server.kill();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(tts(&p, "p-fence").await.status.as_u16());
    }
    // $0.615 read before the outage; seven more reach $1.0455; the rest are refused.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 7, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 13, "{statuses:?}");
    assert_eq!(mock.count(), 17);
    settled_or_fail(&p.handle).await;
    server.restart_empty();
    let key = format!("sg:{{p:p-fence}}:c:p:p-fence:m:{}", this_month(&p));
    let mut c = server.conn();
    eventually("the outage's cost reaches Redis", || hget(&mut c, &key, "cost") == 7 * PRICE).await;
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_closed_answers_503_and_recovers_by_itself() {
    let mut server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 100}\n";
    let p = start_fixed(&proxy_yaml(&server.url(), "  on_error: closed\n", limits), &mock.url()).await;
    assert_eq!(tts(&p, "p-closed").await.status, 200);
    settled_or_fail(&p.handle).await;
    server.kill();
    for _ in 0..5 {
        let g = tts(&p, "p-closed").await;
        assert_eq!(g.status, 503);
        assert_eq!(g.json()["error"]["type"], "quota_store_unavailable");
    }
    assert_eq!(mock.count(), 1, "nothing is forwarded");
    // Refusing paid calls: not ready.
    let ready = p.client.get(&p.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "unavailable");
    server.restart_empty();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tts(&p, "p-closed").await.status != 200 {
        assert!(Instant::now() < deadline, "the store did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_even_when_open() {
    let mut server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 100}\n";
    let p = start_fixed(&proxy_yaml(&server.url(), "  journal_max_entries: 8\n", limits), &mock.url()).await;
    p.client.get(&p.admin_url("/readyz"), &[]).await;
    server.kill();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let g = tts(&p, "p-full").await;
        settled_or_fail(&p.handle).await;
        statuses.push(g.status.as_u16());
    }
    // Each request journals its reservation and its settlement; reservations stop at 6 of 8
    // entries so that the settlements of forwarded requests still fit.
    assert_eq!(statuses, [200, 200, 200, 503, 503]);
    assert_eq!(mock.count(), 3);
    server.restart_empty();
    let key = format!("sg:{{p:p-full}}:c:p:p-full:m:{}", this_month(&p));
    let hist = format!("sg:{{p:p-full}}:h:p:p-full:m:{}", this_month(&p));
    let mut c = server.conn();
    eventually("the journal is replayed", || {
        hget(&mut c, &key, "cost") == 3 * PRICE && hist_total(&mut c, &hist, "requests") == 3
    })
    .await;
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_hits_the_timeout_and_a_late_success_counts_once() {
    let server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 100}\n";
    let dir = tempfile::tempdir().unwrap();
    let (journal_yaml, journal) = journal_in(&dir);
    let p = start_fixed(&proxy_yaml(&server.url(), &format!("  timeout: 0.05\n{journal_yaml}"), limits), &mock.url()).await;
    assert_eq!(tts(&p, "p-slow").await.status, 200);
    settled_or_fail(&p.handle).await;
    // Redis stops answering everyone else for a while; the request does not wait for it.
    let mut c = server.conn();
    let _: () = ::redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL").query(&mut c).unwrap();
    let paused_at = Instant::now();
    assert_eq!(tts(&p, "p-slow").await.status, 200);
    assert!(paused_at.elapsed() < Duration::from_millis(1500), "answered while Redis was still paused");
    settled_or_fail(&p.handle).await;
    let metrics = p.metrics().await;
    assert!(
        sample(&metrics, "spendgate_store_errors_total{op=\"reserve\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    // Once Redis answers, the calls that were given up on complete: the reservation and the
    // settlement are in Redis once, and their journal entries were withdrawn.
    let key = format!("sg:{{p:p-slow}}:c:p:p-slow:m:{}", this_month(&p));
    let hist = format!("sg:{{p:p-slow}}:h:p:p-slow:m:{}", this_month(&p));
    eventually("the late calls land", || {
        hget(&mut c, &key, "cost") == 2 * PRICE && hist_total(&mut c, &hist, "requests") == 2
    })
    .await;
    // Nothing is left to replay or to land late: the values are final.
    eventually("the journal is drained", || journal_empty(&journal)).await;
    assert_eq!(hget(&mut c, &key, "cost"), 2 * PRICE);
    assert_eq!(hist_total(&mut c, &hist, "requests"), 2);
    p.handle.shutdown().await;
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_rolls_over_at_the_zones_midnight_and_old_buckets_stay() {
    let server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: requests, window: daily, max: 2}\n    - {metric: requests, window: monthly, max: 3}\n";
    let yaml = format!("timezone: America/New_York\n{}", proxy_yaml(&server.url(), "", limits));
    // 15:00 on January 31 in New York.
    let clock = Clock::fixed(utc("2027-01-31T20:00:00Z"));
    let p = start_proxy_with_clock(&yaml, &mock.url(), clock.clone()).await;
    let statuses = |v: Vec<Got>| v.iter().map(|g| g.status.as_u16()).collect::<Vec<_>>();
    let mut day1 = Vec::new();
    for _ in 0..3 {
        day1.push(tts(&p, "p-cal").await);
    }
    assert_eq!(statuses(day1), [200, 200, 402]);
    // 22:00 in New York, already February 1 in UTC: still the same day there.
    clock.set(utc("2027-02-01T03:00:00Z"));
    assert_eq!(tts(&p, "p-cal").await.status, 402);
    // 00:30 on February 1 in New York: a new day and a new month, both from zero.
    clock.set(utc("2027-02-01T05:30:00Z"));
    let mut day2 = Vec::new();
    for _ in 0..3 {
        day2.push(tts(&p, "p-cal").await);
    }
    assert_eq!(statuses(day2), [200, 200, 402]);
    // February 2: the day starts over, the month does not (its max is 3).
    clock.set(utc("2027-02-02T05:30:00Z"));
    let mut day3 = Vec::new();
    for _ in 0..2 {
        day3.push(tts(&p, "p-cal").await);
    }
    let day3 = statuses(day3);
    assert_eq!(day3, [200, 402]);
    settled_or_fail(&p.handle).await;

    let read = |w, b: &str| ck(Scope::Profile, "p-cal", w, b, "requests");
    let values = p
        .handle
        .app
        .store
        .read(&[
            read(Window::Daily, "2027-01-31"),
            read(Window::Monthly, "2027-01"),
            read(Window::Daily, "2027-02-01"),
            read(Window::Daily, "2027-02-02"),
            read(Window::Monthly, "2027-02"),
        ])
        .await
        .unwrap();
    assert_eq!(values, vec![2, 2, 2, 1, 3], "old buckets stay readable");
    let h = p
        .handle
        .app
        .store
        .history(Scope::Profile, "p-cal", &["2027-01-31".into(), "2027-02-01".into(), "2027-01".into()], 10)
        .await
        .unwrap();
    assert_eq!(h.days["2027-01-31"].requests, 2);
    assert_eq!(h.days["2027-02-01"].requests, 2);
    assert_eq!(h.days["2027-01"].cost_nanos, 2 * PRICE);
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let files = crate::common::redis::TlsFiles::generate();
    let server = crate::common::redis::RedisServer::start_tls(&files);
    let url = format!("rediss://127.0.0.1:{}/0", server.port);
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 100}\n";
    let extra = format!("  tls_ca_file: \"{}\"\n", files.ca.display());
    let p = start_proxy(&proxy_yaml(&url, &extra, limits), &mock.url()).await;
    assert_eq!(p.client.get(&p.admin_url("/readyz"), &[]).await.status, 200);
    assert_eq!(tts(&p, "p-tls").await.status, 200);
    assert_eq!(monthly_cost(&p, "p-tls").await, PRICE);
    p.handle.shutdown().await;

    // The public roots do not know this CA: the handshake fails and the store is unreachable.
    let untrusted = open_store(&url, "");
    assert!(untrusted.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_kept_per_tenant_bounded_and_limited_on_redis() {
    let server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: requests, window: daily, max: 1, match: {tag: \"tool=a\"}}\n";
    let p = start_fixed(&proxy_yaml(&server.url(), "  max_tags: 2\n", limits), &mock.url()).await;
    let call = |profile: &'static str, org: Option<&'static str>, tag: &'static str| {
        let p = &p;
        async move {
            let mut h = vec![("x-profile-id", profile), ("content-type", "application/json"), ("x-spendgate-tag", tag)];
            if let Some(o) = org {
                h.push(("x-org-id", o));
            }
            p.client
                .post(&p.url("/elevenlabs/v1/text-to-speech/voice"), &h, tts_body())
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(call("p-1", Some("acme"), "tool=a,team=x").await, 200);
    assert_eq!(call("p-1", Some("acme"), "tool=a").await, 402, "the tag's limit holds on Redis");
    assert_eq!(call("p-1", Some("acme"), "tool=b").await, 200);
    assert_eq!(call("p-2", Some("acme"), "tool=c").await, 200);
    settled_or_fail(&p.handle).await;
    let u = crate::common::ops::admin_get(&p, "/v1/profiles/p-1/usage?range=7d", None).await.json();
    assert_eq!(u["by_tag"]["tool=a"]["requests"], 1, "{u}");
    assert_eq!(u["by_tag"]["team=x"]["requests"], 1);
    assert_eq!(u["by_tag"]["other"]["requests"], 1, "a third distinct tag past max_tags 2");
    assert_eq!(u["by_tag"]["other"]["cost_usd"].as_f64().unwrap(), PRICE as f64 / 1e9);
    assert_eq!(u["totals"]["requests"], 2);
    // The org has its own bound: tool=a, team=x, then other for tool=b and tool=c.
    let o = crate::common::ops::admin_get(&p, "/v1/orgs/acme/usage?range=7d", None).await.json();
    assert_eq!(o["by_tag"]["other"]["requests"], 2, "{o}");
    assert_eq!(o["totals"]["requests"], 3);
    let mut c = server.conn();
    let members: Vec<String> = ::redis::cmd("SMEMBERS").arg("sg:{o:acme}:g:p:p-1").query(&mut c).unwrap();
    assert_eq!(members.len(), 2);
}
