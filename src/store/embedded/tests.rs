use chrono::Duration as ChronoDuration;

use super::*;
use crate::domain::window::Window;
use crate::quota::ledger::{CounterOp, Expiry, OpenCall, Totals, UsageRecord};

fn opts(dir: &Path) -> Options {
    Options {
        path: dir.join("s.db"),
        durability: Durability::Batched,
        commit_interval: Duration::from_millis(2),
        on_error: OnError::Closed,
        max_unwritten: 1000,
        keep: Keep {
            recent_max: 3,
            daily_days: 400,
            monthly_months: 25,
            max_tags: 2,
        },
        snapshot: None,
    }
}

fn counter() -> IntCounter {
    IntCounter::new("persist_errors", "test").unwrap()
}

fn key(tenant: &str, field: &str) -> CounterKey {
    CounterKey {
        scope: Scope::Profile,
        tenant: tenant.into(),
        window: Window::Daily,
        bucket: "2026-11-29".into(),
        field: field.into(),
    }
}

fn record(profile: &str, org: Option<&str>, cost: i64) -> UsageRecord {
    UsageRecord {
        at: Utc::now(),
        day: "2026-11-29".into(),
        profile: profile.into(),
        org: org.map(Into::into),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        tags: Vec::new(),
        totals: Totals {
            requests: 1,
            cost_nanos: cost,
            input_tokens: 10,
            output_tokens: 5,
            ..Totals::default()
        },
        reason: None,
    }
}

fn reserve_req(id: &str, profile: &str, cost: i64, max: i64) -> ReserveRequest {
    let far = Utc::now() + ChronoDuration::days(30);
    ReserveRequest {
        ops: vec![
            CounterOp {
                key: key(profile, "requests"),
                amount: 1,
                max: None,
                watched: true,
            },
            CounterOp {
                key: key(profile, "cost"),
                amount: cost,
                max: Some(max),
                watched: true,
            },
        ]
        .into(),
        expires: Expiry::all(far),
        call: Some(std::sync::Arc::new(OpenCall {
            id: id.into(),
            record: record(profile, None, cost),
        })),
    }
}

fn settlement(id: &str, profile: &str, org: Option<&str>, reserved: i64, cost: i64) -> Settlement {
    let far = Utc::now() + ChronoDuration::days(30);
    Settlement {
        deltas: vec![(key(profile, "cost"), cost - reserved)],
        record: record(profile, org, cost),
        id: id.into(),
        expires: Expiry::all(far),
    }
}

fn days() -> Vec<String> {
    vec!["2026-11-29".into(), "2026-11-28".into()]
}

#[tokio::test]
async fn counts_settles_and_reads_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
    assert!(matches!(
        s.reserve(&reserve_req("a", "p", 6, 10)).await.unwrap(),
        ReserveOutcome::Admitted { .. }
    ));
    assert!(matches!(
        s.reserve(&reserve_req("b", "p", 6, 10)).await.unwrap(),
        ReserveOutcome::Admitted { .. }
    ));
    assert_eq!(
        s.reserve(&reserve_req("c", "p", 6, 10)).await.unwrap(),
        ReserveOutcome::Refused { index: 1, current: 12 }
    );
    s.settle(&settlement("a", "p", Some("acme"), 6, 4)).await.unwrap();
    assert_eq!(s.read(&[key("p", "cost"), key("p", "requests")]).await.unwrap(), vec![10, 2]);
    // Read right after the settlement: the report sees it.
    let h = s.history(Scope::Profile, "p", &days(), 10).await.unwrap();
    assert_eq!(h.days["2026-11-29"].cost_nanos, 4);
    assert_eq!(h.by_provider["openai"].requests, 1);
    assert_eq!(h.by_model["gpt-4o"].input_tokens, 10);
    assert_eq!(h.recent.len(), 1);
    let org = s.history(Scope::Org, "acme", &days(), 10).await.unwrap();
    assert_eq!(org.days["2026-11-29"].cost_nanos, 4);
    assert_eq!(org.recent[0].profile, "p");
    let months = s.history(Scope::Profile, "p", &["2026-11".to_string()], 0).await.unwrap();
    assert_eq!(months.days["2026-11"].cost_nanos, 4);
    assert_eq!(s.tenants(Scope::Profile).await.unwrap(), ["p"]);
    assert_eq!(s.tenants(Scope::Org).await.unwrap(), ["acme"]);
}

#[tokio::test]
async fn tenant_totals_sum_every_tenant_over_days_or_months_in_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
    s.settle(&settlement("a", "p", Some("acme"), 0, 4)).await.unwrap();
    s.settle(&settlement("b", "q", None, 0, 7)).await.unwrap();
    s.settle(&settlement("c", "q", None, 0, 3)).await.unwrap();
    for periods in [vec!["2026-11-29".to_string()], days(), vec!["2026-11".to_string()]] {
        let t = s.tenant_totals(Scope::Profile, &periods).await.unwrap();
        assert_eq!(t.len(), 2, "{periods:?}");
        assert_eq!((t["p"].requests, t["p"].cost_nanos, t["p"].input_tokens), (1, 4, 10), "{periods:?}");
        assert_eq!((t["q"].requests, t["q"].cost_nanos, t["q"].output_tokens), (2, 10, 10), "{periods:?}");
    }
    assert!(s.tenant_totals(Scope::Profile, &["2026-11-28".to_string()]).await.unwrap().is_empty());
    let orgs = s.tenant_totals(Scope::Org, &days()).await.unwrap();
    assert_eq!(orgs.keys().collect::<Vec<_>>(), ["acme"]);
    assert_eq!(orgs["acme"].cost_nanos, 4);
    // The same answer as the default, tenant by tenant, would give.
    let one = s.history(Scope::Profile, "q", &days(), 0).await.unwrap();
    assert_eq!(one.days["2026-11-29"], s.tenant_totals(Scope::Profile, &days()).await.unwrap()["q"]);
}

#[tokio::test]
async fn recent_requests_are_bounded_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
    for i in 0..5 {
        s.settle(&settlement(&format!("x{i}"), "p", Some("o"), 0, i)).await.unwrap();
        s.flush().await.unwrap();
    }
    let h = s.history(Scope::Profile, "p", &days(), 100).await.unwrap();
    assert_eq!(h.recent.iter().map(|r| r.totals.cost_nanos).collect::<Vec<_>>(), [4, 3, 2]);
    assert_eq!(h.days["2026-11-29"].cost_nanos, 10, "the totals keep everything");
    let o = s.history(Scope::Org, "o", &days(), 100).await.unwrap();
    assert_eq!(o.recent.len(), 3);
}

#[tokio::test]
async fn recent_requests_written_together_keep_each_profiles_newest() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
    // Interleaved, and written in one go (the writer then skips the rows the trim would
    // delete): each profile still lists its newest.
    for i in 0..6 {
        s.settle(&settlement(&format!("x{i}"), "p", Some("o"), 0, i)).await.unwrap();
        s.settle(&settlement(&format!("y{i}"), "q", Some("o"), 0, 10 + i)).await.unwrap();
    }
    s.flush().await.unwrap();
    let h = s.history(Scope::Profile, "p", &days(), 100).await.unwrap();
    assert_eq!(h.recent.iter().map(|r| r.totals.cost_nanos).collect::<Vec<_>>(), [5, 4, 3]);
    let h = s.history(Scope::Profile, "q", &days(), 100).await.unwrap();
    assert_eq!(h.recent.iter().map(|r| r.totals.cost_nanos).collect::<Vec<_>>(), [15, 14, 13]);
    let o = s.history(Scope::Org, "o", &days(), 100).await.unwrap();
    // An org lists the kept rows of its profiles.
    assert_eq!(o.recent.iter().map(|r| r.totals.cost_nanos).collect::<Vec<_>>(), [15, 5, 14, 4, 13, 3]);
    assert_eq!(o.days["2026-11-29"].cost_nanos, 15 + 75, "the totals keep everything");
}

#[tokio::test]
async fn a_restart_keeps_counters_and_charges_calls_left_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
        s.reserve(&reserve_req("done", "p", 5, 100)).await.unwrap();
        s.settle(&settlement("done", "p", None, 5, 3)).await.unwrap();
        // Admitted, never settled: the process dies.
        s.reserve(&reserve_req("open", "p", 7, 100)).await.unwrap();
        s.flush().await.unwrap();
    }
    // The writer of the first store may still be closing its connection.
    let s = loop {
        match EmbeddedStore::open(opts(dir.path()), counter()) {
            Ok(s) => break s,
            Err(OpenError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(s.read(&[key("p", "cost"), key("p", "requests")]).await.unwrap(), vec![10, 2]);
    let h = s.history(Scope::Profile, "p", &days(), 10).await.unwrap();
    assert_eq!(h.days["2026-11-29"].cost_nanos, 10);
    assert_eq!(h.recent[0].reason.as_deref(), Some("crash"));
    assert_eq!(h.recent[0].totals.cost_nanos, 7);
    assert_eq!(h.recent[1].reason, None);
}

async fn reopen(o: Options) -> EmbeddedStore {
    loop {
        match EmbeddedStore::open(o.clone(), counter()) {
            Ok(s) => break s,
            Err(OpenError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

fn tagged(id: &str, profile: &str, org: Option<&str>, cost: i64, tags: &[&str]) -> Settlement {
    let mut s = settlement(id, profile, org, 0, cost);
    s.record.tags = tags.iter().map(|t| t.to_string()).collect();
    s
}

#[tokio::test]
async fn tags_are_counted_per_tenant_up_to_the_bound_then_as_other() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
    // max_tags is 2: `a` and `b` are kept, `c` is past the bound.
    s.settle(&tagged("1", "p", Some("acme"), 10, &["a"])).await.unwrap();
    s.settle(&tagged("2", "p", Some("acme"), 20, &["b", "a"])).await.unwrap();
    s.settle(&tagged("3", "p", Some("acme"), 40, &["c"])).await.unwrap();
    s.settle(&tagged("4", "q", Some("acme"), 80, &["c"])).await.unwrap();
    s.settle(&tagged("5", "p", None, 1, &[])).await.unwrap();
    let h = s.history(Scope::Profile, "p", &days(), 10).await.unwrap();
    let cost = |h: &History, t: &str| h.by_tag.get(t).map(|t| t.cost_nanos);
    assert_eq!(cost(&h, "a"), Some(30));
    assert_eq!(cost(&h, "b"), Some(20));
    assert_eq!(cost(&h, "other"), Some(40));
    assert_eq!(cost(&h, "c"), None);
    assert_eq!(h.by_tag.len(), 3);
    assert_eq!(h.recent[1].tags, ["c"], "recent requests keep the tags as sent");
    assert_eq!(h.recent[2].tags, ["b", "a"]);
    // Another profile has its own set; the org's set filled up with a and b.
    let q = s.history(Scope::Profile, "q", &days(), 0).await.unwrap();
    assert_eq!(cost(&q, "c"), Some(80));
    let org = s.history(Scope::Org, "acme", &days(), 0).await.unwrap();
    assert_eq!((cost(&org, "a"), cost(&org, "b"), cost(&org, "other")), (Some(30), Some(20), Some(120)));
    // The bound holds across a restart (the sets are in the database).
    let o = opts(dir.path());
    drop(s);
    let s = reopen(o).await;
    s.settle(&tagged("6", "p", None, 5, &["d"])).await.unwrap();
    let h = s.history(Scope::Profile, "p", &days(), 0).await.unwrap();
    assert_eq!(cost(&h, "other"), Some(45));
}

#[tokio::test]
async fn an_alert_is_claimed_once_until_it_expires_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let later = Utc::now() + ChronoDuration::hours(1);
    {
        let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
        assert!(s.claim_alert("p:p1:daily:cost:0.8", later).await.unwrap());
        assert!(!s.claim_alert("p:p1:daily:cost:0.8", later).await.unwrap());
        assert!(s.claim_alert("p:p1:daily:cost:0.95", later).await.unwrap());
        let past = Utc::now() - ChronoDuration::seconds(1);
        assert!(s.claim_alert("gone", past).await.unwrap());
        assert!(s.claim_alert("gone", later).await.unwrap(), "an expired claim can be made again");
        s.flush().await.unwrap();
    }
    let s = reopen(opts(dir.path())).await;
    assert!(!s.claim_alert("p:p1:daily:cost:0.8", later).await.unwrap(), "remembered after a restart");
    let r = EmbeddedStore::open_read_only(opts(dir.path())).unwrap();
    assert!(r.claim_alert("x", later).await.is_err(), "a reader claims nothing");
}

#[tokio::test]
async fn a_call_open_at_a_crash_keeps_its_tags() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
        let mut req = reserve_req("open", "p", 7, 100);
        let mut call = (**req.call.as_ref().unwrap()).clone();
        call.record.tags = vec!["tool=x".into()];
        req.call = Some(std::sync::Arc::new(call));
        s.reserve(&req).await.unwrap();
        s.flush().await.unwrap();
    }
    let s = reopen(opts(dir.path())).await;
    let h = s.history(Scope::Profile, "p", &days(), 10).await.unwrap();
    assert_eq!(h.recent[0].reason.as_deref(), Some("crash"));
    assert_eq!(h.recent[0].tags, ["tool=x"]);
    assert_eq!(h.by_tag["tool=x"].cost_nanos, 7);
}

#[tokio::test]
async fn recent_requests_follow_their_charges_within_a_second_or_at_once_for_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let s = EmbeddedStore::open(o.clone(), counter()).unwrap();
    let c = Connection::open(&o.path).unwrap();
    let count = |table: &str| -> i64 { c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap() };
    s.settle(&settlement("a", "p", None, 0, 5)).await.unwrap();
    // The charge is committed within the commit interval (a few ms here)...
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count("daily_provider") == 0 {
        assert!(std::time::Instant::now() < deadline, "the charge was not committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...its recent-request row within a second, with no reader asking.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count("recent") == 0 {
        assert!(std::time::Instant::now() < deadline, "the recent request was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A reader has them written first.
    s.settle(&settlement("b", "p", None, 0, 6)).await.unwrap();
    let h = s.history(Scope::Profile, "p", &days(), 10).await.unwrap();
    assert_eq!(h.recent.len(), 2);
    // And closing writes what waits.
    s.settle(&settlement("c", "p", None, 0, 7)).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(count("recent"), 3);
}

#[tokio::test]
async fn one_process_owns_a_database_and_readers_see_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
    assert!(matches!(EmbeddedStore::open(opts(dir.path()), counter()), Err(OpenError::Locked { .. })));
    s.reserve(&reserve_req("a", "p", 5, 100)).await.unwrap();
    s.settle(&settlement("a", "p", None, 5, 5)).await.unwrap();
    s.flush().await.unwrap();
    let r = EmbeddedStore::open_read_only(opts(dir.path())).unwrap();
    assert_eq!(r.read(&[key("p", "cost")]).await.unwrap(), vec![5]);
    assert_eq!(r.history(Scope::Profile, "p", &days(), 5).await.unwrap().days["2026-11-29"].cost_nanos, 5);
    assert!(r.reserve(&reserve_req("b", "p", 1, 100)).await.is_err());
}

#[tokio::test]
async fn org_bindings_are_first_come_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(opts(dir.path()), counter()).unwrap();
        assert_eq!(s.bind_org("p", Some("acme")).await.unwrap().as_deref(), Some("acme"));
        assert_eq!(s.bind_org("p", Some("other")).await.unwrap().as_deref(), Some("acme"));
        assert_eq!(s.bind_org("q", None).await.unwrap(), None);
        s.flush().await.unwrap();
        assert_eq!(s.bind_org("p", None).await.unwrap().as_deref(), Some("acme"), "from the database");
    }
    let s = loop {
        match EmbeddedStore::open(opts(dir.path()), counter()) {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(s.bind_org("p", Some("x")).await.unwrap().as_deref(), Some("acme"));
    assert_eq!(s.bind_org("q", Some("x")).await.unwrap(), None);
}

#[tokio::test]
async fn strict_reservations_are_committed_before_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.durability = Durability::Strict;
    let s = EmbeddedStore::open(o.clone(), counter()).unwrap();
    s.reserve(&reserve_req("a", "p", 5, 100)).await.unwrap();
    // No barrier: what a crash at this moment leaves (everything committed, copied by a
    // second connection) already holds the reservation.
    let copy = tempfile::tempdir().unwrap();
    let c = Connection::open(&o.path).unwrap();
    c.execute("VACUUM INTO ?1", [opts(copy.path()).path.to_str().unwrap()]).unwrap();
    let after_crash = EmbeddedStore::open(opts(copy.path()), counter()).unwrap();
    assert_eq!(after_crash.read(&[key("p", "cost")]).await.unwrap(), vec![5]);
    let h = after_crash.history(Scope::Profile, "p", &days(), 5).await.unwrap();
    assert_eq!(h.recent.len(), 1);
    assert_eq!(h.recent[0].reason.as_deref(), Some("crash"), "the open call is charged its reservation");
}

#[tokio::test]
async fn a_crash_before_the_tables_catch_up_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let s = EmbeddedStore::open(o.clone(), counter()).unwrap();
    // Settled, settled with an org and tags, open, bound, claimed: all in a few commits, and
    // none of it in the tables yet (they catch up after a second or for a reader).
    s.reserve(&reserve_req("a", "p", 5, 100)).await.unwrap();
    s.settle(&settlement("a", "p", None, 5, 3)).await.unwrap();
    s.reserve(&reserve_req("b", "q", 4, 100)).await.unwrap();
    let mut tagged = settlement("b", "q", Some("acme"), 4, 4);
    tagged.record.tags = vec!["tool=x".into()];
    s.settle(&tagged).await.unwrap();
    s.reserve(&reserve_req("open", "p", 7, 100)).await.unwrap();
    assert_eq!(s.bind_org("q", Some("acme")).await.unwrap().as_deref(), Some("acme"));
    assert!(s.claim_alert("k", Utc::now() + ChronoDuration::hours(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let copy = tempfile::tempdir().unwrap();
    let c = Connection::open(&o.path).unwrap();
    let in_tables: i64 = c.query_row("SELECT COUNT(*) FROM daily_provider", [], |r| r.get(0)).unwrap();
    let journaled: i64 = c.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0)).unwrap();
    assert_eq!(in_tables, 0, "the tables have not caught up yet");
    assert!(journaled >= 1);
    c.execute("VACUUM INTO ?1", [opts(copy.path()).path.to_str().unwrap()]).unwrap();

    let after = EmbeddedStore::open(opts(copy.path()), counter()).unwrap();
    assert_eq!(
        after.read(&[key("p", "cost"), key("p", "requests"), key("q", "cost")]).await.unwrap(),
        vec![10, 2, 4]
    );
    let p = after.history(Scope::Profile, "p", &days(), 10).await.unwrap();
    assert_eq!(p.days["2026-11-29"].cost_nanos, 10, "3 settled + 7 charged at the crash");
    assert_eq!(p.recent[0].reason.as_deref(), Some("crash"));
    let acme = after.history(Scope::Org, "acme", &days(), 10).await.unwrap();
    assert_eq!(acme.days["2026-11-29"].cost_nanos, 4);
    assert_eq!(after.bind_org("q", None).await.unwrap().as_deref(), Some("acme"));
    assert!(
        !after.claim_alert("k", Utc::now() + ChronoDuration::hours(1)).await.unwrap(),
        "the claim survived"
    );
    let c = Connection::open(&opts(copy.path()).path).unwrap();
    let tags: i64 = c
        .query_row("SELECT cost_nanos FROM daily_tag WHERE tenant = 'acme' AND tag = 'tool=x'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tags, 4);
    let left: i64 = c.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "the journal was applied and emptied at start");
}

#[tokio::test]
async fn an_old_snapshot_is_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("state.json");
    let far = Utc::now().timestamp() + 86_400;
    let file = serde_json::json!({
        "version": 1,
        "counters": [[{"scope": "profile", "tenant": "p", "window": "daily", "bucket": "2026-11-29", "field": "cost"}, 42, far]],
        "tenants": [["profile", "p", {"days": {"2026-11-28": {
            "totals": {"requests": 2, "cost_nanos": 42, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "characters": 9},
            "by_provider": {"elevenlabs": {"requests": 2, "cost_nanos": 42, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "characters": 9}},
            "by_model": {"eleven_v3": {"requests": 2, "cost_nanos": 42, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "characters": 9}}
        }}, "recent": []}]],
        "orgs": [["p", "acme"]]
    });
    std::fs::write(&snap, serde_json::to_vec(&file).unwrap()).unwrap();
    let mut o = opts(dir.path());
    o.snapshot = Some(snap);
    for _ in 0..2 {
        let s = loop {
            match EmbeddedStore::open(o.clone(), counter()) {
                Ok(s) => break s,
                Err(OpenError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(s.read(&[key("p", "cost")]).await.unwrap(), vec![42]);
        let h = s.history(Scope::Profile, "p", &days(), 0).await.unwrap();
        assert_eq!(h.days["2026-11-28"].characters, 9);
        assert_eq!(h.by_model["eleven_v3"].cost_nanos, 42);
        assert_eq!(s.bind_org("p", None).await.unwrap().as_deref(), Some("acme"));
    }
}

#[test]
fn retention_deletes_counted_back_from_the_newest_day() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut c = schema::open_writer(&path, Durability::Batched).unwrap();
    let keep = Keep {
        recent_max: 10,
        daily_days: 2,
        monthly_months: 1,
        max_tags: 10,
    };
    let recs: Vec<UsageRecord> = ["2026-09-30", "2026-11-26", "2026-11-27", "2026-11-29"]
        .iter()
        .map(|d| UsageRecord {
            day: (*d).into(),
            ..record(if *d == "2026-09-30" { "old" } else { "p" }, None, 1)
        })
        .collect();
    let tx = c.transaction().unwrap();
    let mut b = journal::Changes::default();
    recs.iter().for_each(|r| b.add_history(r));
    b.apply(&tx, keep).unwrap();
    tx.commit().unwrap();
    rows::housekeeping(&mut c, keep).unwrap();
    let days: Vec<String> = c
        .prepare("SELECT DISTINCT day FROM daily_provider ORDER BY day")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(days, ["2026-11-27", "2026-11-29"]);
    let months: Vec<String> = c
        .prepare("SELECT month FROM monthly ORDER BY month")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(months, ["2026-11"], "one month back from November keeps October on; September goes");
    let tenants: Vec<String> = c
        .prepare("SELECT tenant FROM tenants")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tenants, ["p"], "a tenant without history left is forgotten");
}

mod control_data {
    use super::*;
    use crate::quota::control::{AuditEntry, AuditQuery, CasOutcome, ControlStore, TenantControl, TenantRef};

    fn audit(tenant: &TenantRef, reason: &str) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            token: "ops".into(),
            action: "grant".into(),
            tenant: Some(tenant.clone()),
            old: serde_json::Value::Null,
            new: serde_json::json!({"n": reason}),
            reason: Some(reason.into()),
        }
    }

    fn record() -> TenantControl {
        serde_json::from_value(serde_json::json!({
            "limits": [{"metric": "cost_usd", "window": "monthly", "max": 25.0, "alert_at": 0.8, "enabled": true, "mode": "enforce"}]
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn compare_and_set_audit_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let p = TenantRef::new(Scope::Profile, "p-1");
        {
            let store = EmbeddedStore::open(o.clone(), counter()).unwrap();
            let c = crate::store::embedded::control::EmbeddedControl::open(&o.path, true).unwrap();
            assert_eq!(c.version().await.unwrap(), 0);
            assert_eq!(c.update(&p, 0, &record(), &audit(&p, "a")).await.unwrap(), CasOutcome::Written { version: 1 });
            // A stale read loses.
            assert_eq!(c.update(&p, 0, &record(), &audit(&p, "b")).await.unwrap(), CasOutcome::Conflict);
            let (v, r) = c.get(&p).await.unwrap();
            assert_eq!((v, r.limits.as_ref().map(Vec::len)), (1, Some(1)));
            // Removing keeps the tenant's version, so a compare-and-set against 0 still fails.
            assert_eq!(
                c.update(&p, 1, &TenantControl::default(), &audit(&p, "c")).await.unwrap(),
                CasOutcome::Written { version: 2 }
            );
            assert_eq!(c.update(&p, 0, &record(), &audit(&p, "d")).await.unwrap(), CasOutcome::Conflict);
            assert_eq!(c.update(&p, 2, &record(), &audit(&p, "e")).await.unwrap(), CasOutcome::Written { version: 3 });
            c.append_audit(&audit(&TenantRef::new(Scope::Org, "acme"), "f")).await.unwrap();
            drop(store);
        }
        let _store = loop {
            match EmbeddedStore::open(o.clone(), counter()) {
                Ok(s) => break s,
                Err(OpenError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{e}"),
            }
        };
        let c = crate::store::embedded::control::EmbeddedControl::open(&o.path, true).unwrap();
        let state = c.load().await.unwrap();
        assert_eq!(state.version, 3);
        assert_eq!(state.tenants.len(), 1);
        let page = c
            .audit(&AuditQuery {
                tenant: Some("p-1".into()),
                scope: None,
                offset: 1,
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(page.total, 3);
        let reasons: Vec<_> = page.entries.iter().map(|e| e.reason.clone().unwrap()).collect();
        assert_eq!(reasons, ["c", "a"], "newest first, paged");
        let read_only = crate::store::embedded::control::EmbeddedControl::open(&o.path, false).unwrap();
        assert_eq!(read_only.version().await.unwrap(), 3);
        assert!(read_only.update(&p, 3, &record(), &audit(&p, "x")).await.is_err());
    }
}
