//! Several proxy processes (the real binary) sharing one Redis, standalone and Redis Cluster:
//! concurrent requests over both never slip past a limit, and every admitted request is
//! recorded once. Also `spendgate check` against Redis.

use std::process::Command;
use std::time::Duration;

use crate::common::process::{output_within, Spendgate};
use crate::common::redis::{hist_total, tts_body, tts_reply, RedisCluster, RedisServer, PRICE};
use crate::common::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use spendgate::domain::window::{Calendar, Window};
use tempfile::TempDir;

/// One `spendgate` process with its own config file (it picks its own ports), killed on
/// drop.
struct Proc {
    sg: Spendgate,
    _dir: TempDir,
}

impl Proc {
    async fn start(body: &str) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("spendgate.yaml");
        std::fs::write(&config, format!("listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n{body}")).unwrap();
        let sg = tokio::task::spawn_blocking(move || Spendgate::start(&config, &[])).await.unwrap();
        Proc { sg, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        self.sg.url(path)
    }

    fn log(&self) -> String {
        self.sg.log()
    }
}

fn config_body(url: &str, cluster: bool, upstream: &str, limits: &str) -> String {
    // A generous timeout: the exactness shown here holds while Redis answers within it (on a
    // loaded two-core machine 50 ms is not always enough; past it the fence decides).
    format!(
        "providers:\n  elevenlabs: {{kind: elevenlabs, prefix: /elevenlabs, upstream: \"{upstream}\"}}\nstore:\n  backend: redis\n  url: \"{url}\"\n  cluster: {cluster}\n  key_prefix: sg\n  timeout: 2\nlimits:\n{limits}"
    )
}

/// Sends `(process index, profile, org)` requests all at once; returns the statuses.
async fn burst(procs: &[&Proc], requests: &[(usize, String, Option<String>)]) -> Vec<u16> {
    let client = TestClient::new();
    let body = tts_body();
    let futures = requests.iter().map(|(i, profile, org)| {
        let url = procs[*i].url("/elevenlabs/v1/text-to-speech/voice");
        let (client, body) = (client.clone(), body.clone());
        async move {
            let mut headers = vec![("x-profile-id", profile.as_str()), ("content-type", "application/json")];
            if let Some(o) = org {
                headers.push(("x-org-id", o.as_str()));
            }
            client.post(&url, &headers, body).await.status.as_u16()
        }
    });
    futures_util::future::join_all(futures).await
}

fn count(statuses: &[u16], s: u16) -> usize {
    statuses.iter().filter(|x| **x == s).count()
}

/// The buckets of `window` the processes (UTC, the default zone) may have counted in since
/// `from`: one, or two when the day or month ended meanwhile. Values are summed over them,
/// so the totals hold across midnight.
fn buckets(window: Window, from: DateTime<Utc>) -> Vec<String> {
    let cal = Calendar::new(chrono_tz::UTC);
    let mut ids = vec![cal.bucket(window, from).id.to_string(), cal.bucket(window, Utc::now()).id.to_string()];
    ids.dedup();
    ids
}

/// The sum of `f(bucket)` over the buckets of `window` since `from`.
fn over(window: Window, from: DateTime<Utc>, mut f: impl FnMut(&str) -> i64) -> i64 {
    buckets(window, from).iter().map(|b| f(b)).sum()
}

/// Reads a hash field through any connection (standalone or cluster).
fn hget(c: &mut impl ::redis::ConnectionLike, key: &str, field: &str) -> i64 {
    ::redis::cmd("HGET").arg(key).arg(field).query::<Option<i64>>(c).unwrap().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_one_redis_admit_exactly_17() {
    let server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1}\n";
    let body = config_body(&server.url(), false, &mock.url(), limits);
    let (a, b) = (Proc::start(&body).await, Proc::start(&body).await);
    let requests: Vec<_> = (0..300).map(|i| (i % 2, "p-shared".to_string(), None)).collect();
    let from = Utc::now();
    let statuses = burst(&[&a, &b], &requests).await;
    assert_eq!(count(&statuses, 200), 17, "{statuses:?}\n{}\n{}", a.log(), b.log());
    assert_eq!(count(&statuses, 402), 283);
    assert_eq!(mock.count(), 17);

    let mut c = server.conn();
    let hist = |d: &str| format!("sg:{{p:p-shared}}:h:p:p-shared:d:{d}");
    eventually("every settlement is recorded", || {
        over(Window::Daily, from, |d| hist_total(&mut c, &hist(d), "requests")) == 17
    })
    .await;
    let counter = |w: &str, b: &str| format!("sg:{{p:p-shared}}:c:p:p-shared:{w}:{b}");
    assert_eq!(over(Window::Monthly, from, |m| hget(&mut c, &counter("m", m), "cost")), 17 * PRICE);
    assert_eq!(over(Window::Daily, from, |d| hget(&mut c, &counter("d", d), "cost")), 17 * PRICE);
    assert_eq!(over(Window::Monthly, from, |m| hget(&mut c, &counter("m", m), "requests")), 17);
    assert_eq!(over(Window::Daily, from, |d| hist_total(&mut c, &hist(d), "cost")), 17 * PRICE);
    assert_eq!(
        over(Window::Daily, from, |d| hget(&mut c, &hist(d), "cost|elevenlabs|eleven_multilingual_v2")),
        17 * PRICE
    );
}

/// Settlements reach Redis in batches; a SIGTERM in the middle of a load loses none of them.
/// Once the stopped process has drained and exited, and the other has settled, every request
/// is in the counters (reservations corrected by settlements) and in the history (written
/// only by settlements) exactly once, and the upstream saw no request that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_no_settlement() {
    let server = RedisServer::start();
    // Answers that take a while, so that many requests are in flight at the signal.
    let mock = Mock::start(|_| tts_reply().pieces(&[0u8; 256], 64, Duration::from_millis(30))).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1000}\n";
    let body = config_body(&server.url(), false, &mock.url(), limits);
    let (mut a, b) = (Proc::start(&body).await, Proc::start(&body).await);
    let profiles: Vec<String> = (0..10).map(|i| format!("p-term-{i}")).collect();
    let from = Utc::now();

    // Errors are expected from the stopped process (a request it no longer accepts); what
    // matters is what was counted.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let sends: Vec<_> = (0..300)
        .map(|i| {
            let req = Request::post([&a, &b][i % 2].url("/elevenlabs/v1/text-to-speech/voice"))
                .header("x-profile-id", profiles[i % profiles.len()].as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(tts_body())))
                .unwrap();
            let client = client.clone();
            async move {
                let r = client.request(req).await.ok()?;
                let status = r.status().as_u16();
                r.into_body().collect().await.ok().map(|_| status)
            }
        })
        .collect();
    let load = tokio::spawn(futures_util::future::join_all(sends));
    eventually("requests are in flight through both processes", || mock.count() >= 60).await;
    a.sg.process.signal("TERM");
    let statuses = load.await.unwrap();
    let (a, exit) = tokio::task::spawn_blocking(move || {
        let exit = a.sg.process.wait_within(Duration::from_secs(30));
        (a, exit)
    })
    .await
    .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", a.log());
    assert!(!a.log().contains("settlements did not finish"), "{}", a.log());
    let ok = statuses.iter().filter(|s| **s == Some(200)).count() as i64;

    let mut c = server.conn();
    let sum = |c: &mut ::redis::Connection, f: &dyn Fn(&mut ::redis::Connection, &str) -> i64| -> i64 { profiles.iter().map(|p| f(c, p)).sum() };
    let counted = |c: &mut ::redis::Connection, field: &str| {
        sum(c, &|c, p| {
            over(Window::Monthly, from, |m| hget(c, &format!("sg:{{p:{p}}}:c:p:{p}:m:{m}"), field))
        })
    };
    let recorded = |c: &mut ::redis::Connection, metric: &str| {
        sum(c, &|c, p| {
            over(Window::Daily, from, |d| hist_total(c, &format!("sg:{{p:{p}}}:h:p:{p}:d:{d}"), metric))
        })
    };
    // The process still serving settles its last requests in a batch that may wait (25 ms
    // under load) for others to join; what it settles lands in the counters and the history
    // together.
    eventually("every request the upstream saw is settled", || {
        let admitted = counted(&mut c, "requests");
        admitted >= mock.count() as i64 && recorded(&mut c, "requests") == admitted
    })
    .await;
    let admitted = counted(&mut c, "requests");
    assert!(admitted >= ok, "{ok} answered 200, {admitted} admitted");
    // Exact estimates: every settled request costs its price, reserved and recorded.
    assert_eq!(counted(&mut c, "cost"), admitted * PRICE);
    assert_eq!(recorded(&mut c, "cost"), admitted * PRICE);
    assert!(!b.log().contains("could not record a settlement"), "{}", b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_hold_a_10_per_minute_limit_exactly_under_100_concurrent_requests() {
    let server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: requests, window: minute, max: 10}\n";
    let body = config_body(&server.url(), false, &mock.url(), limits);
    let (a, b) = (Proc::start(&body).await, Proc::start(&body).await);
    // The burst must fall in one minute: start it early in one.
    let into_minute = Utc::now().timestamp() % 60;
    if into_minute > 40 {
        tokio::time::sleep(Duration::from_secs((61 - into_minute) as u64)).await;
    }
    let from = Utc::now();
    let requests: Vec<_> = (0..100).map(|i| (i % 2, "p-rpm".to_string(), None)).collect();
    let statuses = burst(&[&a, &b], &requests).await;
    assert_eq!(
        Calendar::new(chrono_tz::UTC).bucket(Window::Minute, from).id,
        Calendar::new(chrono_tz::UTC).bucket(Window::Minute, Utc::now()).id,
        "the burst took longer than expected"
    );
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}\n{}\n{}", a.log(), b.log());
    assert_eq!(count(&statuses, 429), 90);
    assert_eq!(mock.count(), 10);
    let minute = Calendar::new(chrono_tz::UTC).bucket(Window::Minute, from);
    let mut c = server.conn();
    let key = format!("sg:{{p:p-rpm}}:c:p:p-rpm:i:{}", minute.id);
    assert_eq!(hget(&mut c, &key, "requests"), 10);
    let ttl: i64 = ::redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!((60..=240).contains(&ttl), "a minute counter expires minutes after its window: {ttl}");
    // A refusal carries the seconds to the next minute.
    let client = TestClient::new();
    let r = client
        .post(
            &a.url("/elevenlabs/v1/text-to-speech/voice"),
            &[("x-profile-id", "p-rpm"), ("content-type", "application/json")],
            tts_body(),
        )
        .await;
    if r.status == 429 {
        let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_crossing_a_threshold_together_send_one_webhook_per_threshold() {
    let server = RedisServer::start();
    let mock = Mock::start(|_| tts_reply()).await;
    let hook = Mock::start(|_| Reply::new(204)).await;
    let limits = "  default_profile:\n    - {metric: requests, window: daily, max: 40, alert_at: [0.5, 0.8]}\n";
    let body = format!(
        "{}alerts:\n  webhook_url: \"{}/hook\"\n",
        config_body(&server.url(), false, &mock.url(), limits),
        hook.url()
    );
    let (a, b) = (Proc::start(&body).await, Proc::start(&body).await);
    // Both replicas see both thresholds crossed, at the same time.
    let requests: Vec<_> = (0..40).map(|i| (i % 2, "p-alert".to_string(), None)).collect();
    let statuses = burst(&[&a, &b], &requests).await;
    assert_eq!(count(&statuses, 200), 40);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hook.count() < 2 {
        assert!(std::time::Instant::now() < deadline, "alerts were not sent\n{}\n{}", a.log(), b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Any duplicate would have been posted by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events: Vec<serde_json::Value> = hook.seen.lock().iter().map(|s| serde_json::from_slice(&s.body).unwrap()).collect();
    assert_eq!(events.len(), 2, "one webhook per threshold across both replicas: {events:?}");
    let mut crossed: Vec<f64> = events.iter().map(|e| e["alert_at"].as_f64().unwrap()).collect();
    crossed.sort_by(f64::total_cmp);
    assert_eq!(crossed, [0.5, 0.8]);
    assert!(events
        .iter()
        .all(|e| e["tenant"] == "p-alert" && e["thresholds"] == serde_json::json!([0.5, 0.8])));
}

/// Profile ids whose keys fall on each of the cluster's masters, `per_master` of each.
fn profiles_on_every_master(cluster: &RedisCluster, per_master: usize) -> Vec<String> {
    let mut c = cluster.nodes[0].conn();
    let mut picked: Vec<Vec<String>> = vec![Vec::new(); 3];
    for i in 0.. {
        let id = format!("p-{i}");
        let slot: i64 = ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(format!("{{p:{id}}}")).query(&mut c).unwrap();
        // `redis-cli --cluster create` splits the slots in three even ranges.
        let master = (slot * 3 / 16384) as usize;
        if picked[master].len() < per_master {
            picked[master].push(id);
        }
        if picked.iter().all(|p| p.len() == per_master) {
            break;
        }
    }
    picked.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_profiles_on_every_master_and_an_org_shared_by_three_profiles() {
    let cluster = RedisCluster::start(3);
    let mock = Mock::start(|_| tts_reply()).await;
    let limits = "  default_profile:\n    - {metric: cost_usd, window: monthly, max: 1}\n  orgs:\n    acme:\n      - {metric: requests, window: daily, max: 50}\n  profiles:\n    q-1: [{metric: requests, window: daily, max: 1000}]\n    q-2: [{metric: requests, window: daily, max: 1000}]\n    q-3: [{metric: requests, window: daily, max: 1000}]\n";
    let body = config_body(&cluster.url(), true, &mock.url(), limits);
    let (a, b) = (Proc::start(&body).await, Proc::start(&body).await);

    // Six profiles, two on each master, 50 requests each, all at once over both processes.
    let profiles = profiles_on_every_master(&cluster, 2);
    let requests: Vec<_> = (0..300).map(|i| (i % 2, profiles[i % profiles.len()].clone(), None)).collect();
    let from = Utc::now();
    let statuses = burst(&[&a, &b], &requests).await;
    assert_eq!(count(&statuses, 200), 17 * profiles.len(), "{}\n{}", a.log(), b.log());
    let mut c = cluster.conn();
    let month_key = |p: &str, m: &str| format!("sg:{{p:{p}}}:c:p:{p}:m:{m}");
    let month_keys: Vec<String> = profiles
        .iter()
        .flat_map(|p| buckets(Window::Monthly, from).into_iter().map(move |m| month_key(p, &m)))
        .collect();
    for p in &profiles {
        let hist = |d: &str| format!("sg:{{p:{p}}}:h:p:{p}:d:{d}");
        eventually("every settlement is recorded", || {
            over(Window::Daily, from, |d| hist_total(&mut c, &hist(d), "requests")) == 17
        })
        .await;
        assert_eq!(over(Window::Monthly, from, |m| hget(&mut c, &month_key(p, m), "cost")), 17 * PRICE, "{p}");
        assert_eq!(over(Window::Daily, from, |d| hist_total(&mut c, &hist(d), "cost")), 17 * PRICE, "{p}");
    }
    assert_eq!(cluster.masters_holding(&month_keys), 3, "the profiles' keys are spread over every master");

    // Three profiles of one org, 30 requests each: the org's daily request limit (50) holds
    // across all of them and both processes.
    let requests: Vec<_> = (0..90).map(|i| (i % 2, format!("q-{}", i % 3 + 1), Some("acme".to_string()))).collect();
    let from = Utc::now();
    let statuses = burst(&[&a, &b], &requests).await;
    assert_eq!(count(&statuses, 200), 50, "{statuses:?}");
    assert_eq!(count(&statuses, 402), 40);
    let org_day = |d: &str| format!("sg:{{o:acme}}:c:o:acme:d:{d}");
    let org_hist = |d: &str| format!("sg:{{o:acme}}:h:o:acme:d:{d}");
    eventually("every settlement is recorded", || {
        over(Window::Daily, from, |d| hist_total(&mut c, &org_hist(d), "requests")) == 50
    })
    .await;
    // A day that ended during the burst would leave its own org counter; the limit is per day.
    if buckets(Window::Daily, from).len() == 1 {
        assert_eq!(over(Window::Daily, from, |d| hget(&mut c, &org_day(d), "requests")), 50);
        assert_eq!(over(Window::Daily, from, |d| hget(&mut c, &org_day(d), "cost")), 50 * PRICE);
        let per_profile: i64 = over(Window::Daily, from, |d| {
            (1..=3).map(|i| hget(&mut c, &format!("sg:{{o:acme}}:c:p:q-{i}:d:{d}"), "requests")).sum()
        });
        assert_eq!(per_profile, 50, "the profiles' counters live in the org's slot and add up");
        assert_eq!(over(Window::Daily, from, |d| hist_total(&mut c, &org_hist(d), "cost")), 50 * PRICE);
    }
    // The usage API finds each profile's data under the org through the profile's index.
    let homes: Vec<String> = ::redis::cmd("ZRANGE").arg("sg:{p:q-1}:homes").arg(0).arg(-1).query(&mut c).unwrap();
    assert_eq!(homes, ["o:acme"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_whether_redis_is_reachable() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, format!("store:\n  backend: redis\n  url: \"{}\"\n  read_timeout: 1\n", server.url())).unwrap();
    let check = |extra: &[&str]| {
        output_within(
            Command::new(env!("CARGO_BIN_EXE_spendgate"))
                .arg("check")
                .arg("--config")
                .arg(&config)
                .args(extra)
                .env("RUST_LOG", "error"),
            None,
            Duration::from_secs(60),
        )
    };
    let out = check(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("store       redis at {}: reachable", server.url())), "{stdout}");
    server.kill();
    let out = check(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store unreachable at redis://127.0.0.1:"), "{stderr}");
    let out = check(&["--skip-store"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A profile limited to 2 requests a day, each request naming another org (or none), over
/// two processes: one after the other, then all at once. Exactly 2 get through either way.
async fn org_rotation_cannot_split_a_profiles_limit(url: &str, cluster: bool) {
    let mock = Mock::start(|_| tts_reply()).await;
    let limits =
        "  profiles:\n    p-rot:\n      - {metric: requests, window: daily, max: 2}\n    p-rot-burst:\n      - {metric: requests, window: daily, max: 2}\n";
    let body = config_body(url, cluster, &mock.url(), limits);
    let (a, b) = (Proc::start(&body).await, Proc::start(&body).await);
    let org = |i: usize| match i % 5 {
        4 => None,
        k => Some(format!("org-{k}")),
    };
    let mut statuses = Vec::new();
    for i in 0..9 {
        statuses.extend(burst(&[&a, &b], &[(i % 2, "p-rot".to_string(), org(i))]).await);
    }
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}\n{}\n{}", a.log(), b.log());
    assert_eq!(count(&statuses, 200) + count(&statuses, 402) + count(&statuses, 409), 9, "{statuses:?}");
    let requests: Vec<_> = (0..30).map(|i| (i % 2, "p-rot-burst".to_string(), org(i))).collect();
    let statuses = burst(&[&a, &b], &requests).await;
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}\n{}\n{}", a.log(), b.log());
    assert_eq!(mock.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_rotation_cannot_split_a_profiles_limit_on_redis() {
    let server = RedisServer::start();
    org_rotation_cannot_split_a_profiles_limit(&server.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_rotation_cannot_split_a_profiles_limit_on_redis_cluster() {
    let cluster = RedisCluster::start(3);
    org_rotation_cannot_split_a_profiles_limit(&cluster.url(), true).await;
}
