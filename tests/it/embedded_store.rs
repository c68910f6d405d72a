//! The embedded store as an operator meets it: the binary killed under load and restarted
//! (nothing admitted is lost beyond the last commit interval, an open call is charged its
//! reservation), a clean restart that changes no usage answer, and the database's faults
//! (corrupt, locked, read-only, a full disk at start and at run time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use crate::common::ops::*;
use crate::common::process::{output_within, Spendgate};
use crate::common::redis::{tts_body, tts_reply, PRICE};
use crate::common::*;

/// The TTS call the load sends; `HANG` is answered never.
const TTS: &str = "/elevenlabs/v1/text-to-speech/v1d";
const HANG: &str = "/elevenlabs/v1/text-to-speech/hang";

fn config(dir: &Path, store: &str, upstream: &str) -> PathBuf {
    write_config(
        dir,
        &format!("providers:\n  elevenlabs: {{kind: elevenlabs, prefix: /elevenlabs, upstream: \"{{upstream}}\"}}\nstore:\n  path: spendgate.db\n{store}"),
        upstream,
    )
}

async fn tts_mock() -> Mock {
    Mock::start(|seen| {
        if seen.path.ends_with("/hang") {
            tts_reply().stall(Duration::from_secs(3600))
        } else {
            tts_reply()
        }
    })
    .await
}

async fn post(client: &TestClient, data: SocketAddr, path: &str, profile: &str) -> u16 {
    client
        .post(
            &format!("http://{data}{path}"),
            &[("x-profile-id", profile), ("content-type", "application/json")],
            tts_body(),
        )
        .await
        .status
        .as_u16()
}

async fn usage(client: &TestClient, admin: SocketAddr, path: &str) -> Value {
    let r = client.get(&format!("http://{admin}{path}"), &[]).await;
    assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Kills the binary under load, restarts it on the same database, and compares what it
/// recorded with what the clients were answered.
async fn sigkill_under_load(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mock = tts_mock().await;
    let cfg = config(dir.path(), &format!("  durability: {durability}\n"), &mock.url());
    let sg = tokio::task::spawn_blocking({
        let c = cfg.clone();
        move || Spendgate::start(&c, &[])
    })
    .await
    .unwrap();
    let data = sg.data;
    let client = TestClient::new();

    // A call in flight at the kill: admitted, forwarded, never answered.
    let hanging = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .send(http::Method::POST, &format!("http://{data}{HANG}"), &[("x-profile-id", "p-open")], tts_body())
                .await
        }
    });
    eventually("the hanging call reaches the upstream", || mock.count() >= 1).await;

    // The load: eight clients, each one call at a time, for about a second.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let answered: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, stop, sent, answered) = (client.clone(), stop.clone(), sent.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                sent.fetch_add(1, Ordering::AcqRel);
                let r = client
                    .send(http::Method::POST, &format!("http://{data}{TTS}"), &[("x-profile-id", "p-load")], tts_body())
                    .await;
                if r.status() != 200 {
                    break;
                }
                // The answer's body ends the call; count it once it is whole.
                if http_body_util::BodyExt::collect(r.into_body()).await.is_err() {
                    break;
                }
                answered.lock().push(Instant::now());
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    let mut sg = sg;
    sg.process.signal("KILL");
    stop.store(true, Ordering::Release);
    let status = tokio::task::spawn_blocking(move || {
        let s = sg.process.wait_within(Duration::from_secs(10));
        drop(sg);
        s
    })
    .await
    .unwrap();
    assert!(!status.success());
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
    hanging.abort();
    let sent = sent.load(Ordering::Acquire) as i64;
    let answered = answered.lock().clone();
    let done = answered.len() as i64;
    // Answered well before the kill (more than the 5 ms commit interval plus a slow commit):
    // certainly committed.
    let settled_before = answered.iter().filter(|t| **t + Duration::from_millis(150) < killed_at).count() as i64;
    assert!(done > 100, "the load got {done} answers");

    // Restart on the same database.
    let p = start_proxy(
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("path: spendgate.db", &format!("path: \"{}\"", dir.path().join("spendgate.db").display())),
        &mock.url(),
    )
    .await;
    let load = usage(&p.client, p.handle.admin_addr, "/v1/profiles/p-load/usage?range=7d").await;
    let recorded = load["totals"]["requests"].as_i64().unwrap();
    let cost = load["totals"]["cost_nanos"].as_i64().unwrap();
    eprintln!("{durability}: sent {sent}, answered {done} ({settled_before} >150 ms before the kill), recorded {recorded}");
    assert!(recorded <= sent, "recorded {recorded} of {sent} sent");
    if durability == "strict" {
        // Every forwarded call's reservation was durable before it was forwarded.
        assert!(recorded >= done, "strict: recorded {recorded} of {done} answered");
    } else {
        assert!(
            recorded >= settled_before,
            "batched: recorded {recorded}, but {settled_before} were answered more than 150 ms before the kill"
        );
    }
    assert_eq!(cost, recorded * PRICE, "every recorded call at its price");
    // Counters and history agree: the limits see what the history shows.
    assert_eq!(monthly_cost(&p, "p-load").await, cost);

    let open = usage(&p.client, p.handle.admin_addr, "/v1/profiles/p-open/usage?range=7d").await;
    assert_eq!(open["totals"]["requests"], 1, "{open:#}");
    assert_eq!(open["totals"]["cost_nanos"], PRICE, "the open call is charged its reservation");
    assert_eq!(open["recent"][0]["reason"], "crash", "{open:#}");
    assert_eq!(monthly_cost(&p, "p-open").await, PRICE);
    p.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_at_most_the_last_commit_interval() {
    sigkill_under_load("batched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_strict_durability_loses_nothing_forwarded() {
    sigkill_under_load("strict").await;
}

/// Drops what differs between two reads of the same data (the time of the answer).
fn without_generated_at(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("generated_at");
        for x in o.values_mut() {
            *x = without_generated_at(x.take());
        }
    } else if let Some(a) = v.as_array_mut() {
        for x in a {
            *x = without_generated_at(x.take());
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_leaves_every_usage_answer_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}limits:\n  default_profile:\n    - {{metric: cost_usd, window: monthly, max: 5}}\n    - {{metric: requests, window: daily, max: 100}}\n  default_org:\n    - {{metric: cost_usd, window: daily, max: 3}}\n",
            providers_yaml()
        ),
        &mock.url(),
    );
    let start = |c: PathBuf| tokio::task::spawn_blocking(move || Spendgate::start(&c, &[]));
    let sg = start(cfg.clone()).await.unwrap();
    let client = TestClient::new();
    let send = |path: &'static str, profile: &'static str, org: Option<&'static str>| {
        let client = client.clone();
        let data = sg.data;
        async move {
            let mut h = vec![("x-profile-id", profile), ("content-type", "application/json")];
            if let Some(o) = org {
                h.push(("x-org-id", o));
            }
            let body = if path.starts_with("/elevenlabs") {
                fixture("elevenlabs/tts_request.json")
            } else {
                b"{\"contents\": []}".to_vec()
            };
            assert_eq!(client.post(&format!("http://{data}{path}"), &h, body).await.status, 200);
        }
    };
    send(GEMINI_FLASH, "p-1", Some("acme")).await;
    send(ELEVENLABS_TTS, "p-1", Some("acme")).await;
    send(GEMINI_STREAM, "p-2", Some("acme")).await;
    send(ELEVENLABS_TTS, "p-3", None).await;
    let today = chrono::Utc::now().date_naive();
    let paths = [
        "/v1/profiles".to_string(),
        "/v1/orgs".to_string(),
        "/v1/profiles/p-1/usage".to_string(),
        "/v1/profiles/p-1/usage?range=7d".to_string(),
        "/v1/profiles/p-1/usage?range=all".to_string(),
        format!("/v1/profiles/p-2/usage?from={}&to={today}", today - chrono::Duration::days(3)),
        "/v1/profiles/p-3/usage?range=90d".to_string(),
        "/v1/orgs/acme/usage?range=30d".to_string(),
    ];
    let read = |admin: SocketAddr| {
        let client = client.clone();
        let paths = paths.clone();
        async move {
            let mut out = Vec::new();
            for p in &paths {
                out.push(without_generated_at(usage(&client, admin, p).await));
            }
            out
        }
    };
    let before = read(sg.admin).await;
    assert_eq!(before[7]["totals"]["requests"], 3, "{:#}", before[7]);
    let mut sg = sg;
    sg.process.signal("TERM");
    let status = tokio::task::spawn_blocking(move || sg.process.wait_within(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success());
    let sg = start(cfg).await.unwrap();
    let after = read(sg.admin).await;
    for ((p, b), a) in paths.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{p} changed across the restart");
    }
}

/// Runs the binary until it exits (it must fail to start); its output.
fn failed_start(cmd: &mut Command) -> String {
    let out = output_within(cmd, None, Duration::from_secs(30));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "started although it should not:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_locked_database_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mock = tts_mock().await;
    let cfg = config(dir.path(), "", &mock.url());
    // Not a database.
    std::fs::write(dir.path().join("spendgate.db"), vec![b'#'; 10_000]).unwrap();
    let text = failed_start(&mut Spendgate::command(&[], &cfg, &[]));
    assert!(text.contains("is not a spendgate database or is corrupt"), "{text}");
    std::fs::remove_file(dir.path().join("spendgate.db")).unwrap();

    // Held by another proxy.
    let first = tokio::task::spawn_blocking({
        let c = cfg.clone();
        move || Spendgate::start(&c, &[])
    })
    .await
    .unwrap();
    let text = failed_start(&mut Spendgate::command(&[], &cfg, &[]));
    assert!(text.contains("is another spendgate running on it"), "{text}");
    drop(first);

    // Locked by another program's write transaction.
    let other = rusqlite::Connection::open(dir.path().join("spendgate.db")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let text = failed_start(&mut Spendgate::command(&[], &cfg, &[]));
    assert!(text.contains("locked"), "{text}");
    other.execute_batch("COMMIT").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_stops_the_start_with_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mock = tts_mock().await;
    // Everything the unprivileged child needs is readable by anyone; the database is not
    // writable by it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("spendgate");
    std::fs::copy(env!("CARGO_BIN_EXE_spendgate"), &bin).unwrap();
    let cfg = config(dir.path(), "", &mock.url());
    let db = dir.path().join("spendgate.db");
    drop(rusqlite::Connection::open(&db).unwrap());
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = output_within(Command::new("id").arg("-u"), None, Duration::from_secs(10));
    let mut cmd = if String::from_utf8_lossy(&root.stdout).trim() == "0" {
        // Root writes anything: run as nobody instead.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.current_dir(dir.path()).arg("--config").arg(&cfg);
    let text = failed_start(&mut cmd);
    assert!(
        text.contains("cannot be written") || text.contains("readonly") || text.contains("read-only"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_start_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mock = tts_mock().await;
    let cfg = config(dir.path(), "", &mock.url());
    // A file-size limit of 4 KiB: the database cannot even get its schema.
    let text = failed_start(&mut Spendgate::command(&["prlimit", "--fsize=4096", "--"], &cfg, &[]));
    assert!(text.contains("cannot be written") || text.contains("full"), "{text}");
}

/// Fills the database's disk while serving, then frees it: the failed writes are counted and
/// retried, `on_error` decides what is answered meanwhile, and nothing admitted is lost.
async fn full_disk_while_serving(on_error: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mock = tts_mock().await;
    let cfg = config(dir.path(), &format!("  on_error: {on_error}\n  max_unwritten: 200\n"), &mock.url());
    let sg = tokio::task::spawn_blocking({
        let c = cfg.clone();
        move || Spendgate::start_command(Spendgate::command(&["prlimit", "--fsize=300000:unlimited", "--"], &c, &[]))
    })
    .await
    .unwrap();
    let client = TestClient::new();
    let mut admitted = 0;
    let mut refused = 0;
    for _ in 0..5000 {
        match post(&client, sg.data, TTS, "p-full").await {
            200 => admitted += 1,
            503 => {
                refused += 1;
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(refused, 1, "the full disk never refused a call ({admitted} admitted)");
    let metrics = String::from_utf8(client.get(&format!("http://{}/metrics", sg.admin), &[]).await.body.to_vec()).unwrap();
    assert!(
        sample(&metrics, "spendgate_store_errors_total{op=\"persist\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    let ready = client.get(&format!("http://{}/readyz", sg.admin), &[]).await;
    if on_error == "closed" {
        assert_eq!(ready.status, 503, "not ready while the database cannot be written");
    } else {
        assert_eq!(ready.json()["status"], "degraded");
    }

    // Space again: the kept records are written and calls are admitted.
    let lifted = output_within(
        Command::new("prlimit").arg("--pid").arg(sg.process.id().to_string()).arg("--fsize=unlimited"),
        None,
        Duration::from_secs(10),
    );
    assert!(lifted.status.success(), "{lifted:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match post(&client, sg.data, TTS, "p-full").await {
            200 => {
                admitted += 1;
                break;
            }
            503 => assert!(Instant::now() < deadline, "still refusing 20 s after the disk has room"),
            s => panic!("unexpected status {s}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let u = usage(&client, sg.admin, "/v1/profiles/p-full/usage?range=7d").await;
    assert_eq!(u["totals"]["requests"], admitted, "every admitted call is recorded");
    assert_eq!(u["totals"]["cost_nanos"], admitted * PRICE);
    assert_eq!(client.get(&format!("http://{}/readyz", sg.admin), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_serving_closed_refuses_until_writes_succeed() {
    full_disk_while_serving("closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_serving_open_keeps_serving_up_to_the_bound() {
    full_disk_while_serving("open").await;
}
