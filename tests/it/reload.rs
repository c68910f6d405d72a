//! Live reload: on file change (watcher), on `POST /v1/reload`, and what a broken file does.

use std::time::{Duration, Instant};

use crate::common::ops::*;
use crate::common::*;
use spendgate::domain::window::{Clock, Window};
use spendgate::domain::Scope;

fn yaml(max_requests: u32, extra: &str) -> String {
    format!(
        "{}{extra}limits:\n  default_profile:\n    - {{metric: requests, window: daily, max: {max_requests}}}\n",
        providers_yaml()
    )
}

async fn reloads(p: &Proxy, result: &str) -> f64 {
    sample(&p.metrics().await, &format!("spendgate_config_reloads_total{{result=\"{result}\"}} ")).unwrap_or(0.0)
}

/// Waits (bounded) until `reloads(result)` reaches `n`.
async fn wait_reloads(p: &Proxy, result: &str, n: f64) {
    wait_reloads_within(p, result, n, Duration::from_secs(10)).await;
}

async fn wait_reloads_within(p: &Proxy, result: &str, n: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while reloads(p, result).await < n {
        assert!(Instant::now() < deadline, "reload {n} ({result}) was not counted within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The profile's daily request counter, read from the store.
async fn requests_today(p: &Proxy, profile: &str) -> i64 {
    counter(p, Scope::Profile, profile, Window::Daily, "requests").await
}

#[tokio::test]
async fn a_limit_edited_in_the_file_refuses_the_next_request_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let path = write_config(dir.path(), &yaml(100, ""), &mock.url());
    let p = start_proxy_file(&path, Clock::system()).await;
    for _ in 0..3 {
        assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    }
    assert_eq!(requests_today(&p, "p-1").await, 3);

    // Edited in place: the reload is in force within 2 s. No request is sent meanwhile, so
    // the counters the new limit meets are exactly the ones from before the reload.
    std::fs::write(&path, complete_yaml(&yaml(3, ""), &mock.url())).unwrap();
    wait_reloads_within(&p, "success", 1.0, Duration::from_secs(2)).await;
    assert_eq!(requests_today(&p, "p-1").await, 3, "the reload kept the counters");
    assert_eq!(monthly_cost(&p, "p-1").await, 3 * GEMINI_FLASH_NANOS, "the reload kept the counters");
    // The very next request meets the 3 counted before the reload.
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.status, 402, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["limit"]["max"], 3.0);
    assert_eq!(mock.count(), 3);
    assert_eq!(requests_today(&p, "p-1").await, 3, "a refusal counts nothing");
    assert_eq!(reloads(&p, "success").await, 1.0);

    // Replaced the way editors and config managers do it: a new file renamed over the old.
    let tmp = dir.path().join(".spendgate.yaml.swp");
    std::fs::write(&tmp, complete_yaml(&yaml(4, ""), &mock.url())).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_reloads_within(&p, "success", 2.0, Duration::from_secs(2)).await;
    // Max 4 over the 3 counted: exactly one more request gets through.
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 402);
    assert_eq!(requests_today(&p, "p-1").await, 4);
    assert_eq!(monthly_cost(&p, "p-1").await, 4 * GEMINI_FLASH_NANOS);

    // Other files in the directory (a snapshot, say) do not reload anything. Let the
    // watcher's debounce pass, then change the config: once that reload is counted the
    // watcher has handled the snapshot's event too, and there must be exactly one more.
    std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, complete_yaml(&yaml(5, ""), &mock.url())).unwrap();
    wait_reloads_within(&p, "success", 3.0, Duration::from_secs(2)).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 402);
    assert_eq!(reloads(&p, "success").await, 3.0);
    assert_eq!(reloads(&p, "error").await, 0.0);
    assert_eq!(requests_today(&p, "p-1").await, 5);
    p.handle.shutdown().await;
}

/// A Kubernetes ConfigMap volume: the file is a symlink through `..data`, itself a symlink to
/// a timestamped directory; an update writes a new directory and renames a new `..data` over
/// the old one. Nothing named like the file changes in the watched directory.
#[tokio::test]
async fn a_configmap_update_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let version = |name: &str, max: u32| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        write_config(&d, &yaml(max, ""), &mock.url());
    };
    version("..2026_11_29_10_00_00.1", 100);
    std::os::unix::fs::symlink("..2026_11_29_10_00_00.1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("spendgate.yaml");
    std::os::unix::fs::symlink("..data/spendgate.yaml", &path).unwrap();
    let p = start_proxy_file(&path, Clock::system()).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);

    version("..2026_11_29_10_05_00.2", 1);
    std::os::unix::fs::symlink("..2026_11_29_10_05_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2026_11_29_10_00_00.1")).unwrap();
    wait_reloads_within(&p, "success", 1.0, Duration::from_secs(2)).await;
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.status, 402, "the new max of 1 is in force");
    assert_eq!(mock.count(), 1);
    p.handle.shutdown().await;
}

/// The embedded store's database beside the config file is written many times a second
/// under traffic; its writes must not hold back (or stand in for) the config's own change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_beside_a_busy_database_still_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let store = format!("store:\n  path: \"{}\"\n  commit_interval: 0.002\n", dir.path().join("spendgate.db").display());
    let path = write_config(dir.path(), &yaml(1_000_000, &store), &mock.url());
    let p = std::sync::Arc::new(start_proxy_file(&path, Clock::system()).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Traffic until told to stop (bounded in count), so the database is written throughout.
    let traffic = {
        let (p, stop) = (p.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 20_000 {
                assert_eq!(send(&p, GEMINI_FLASH, "p-busy", None).await.status, 200);
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, complete_yaml(&yaml(2_000_000, &store), &mock.url())).unwrap();
    wait_reloads_within(&p, "success", 1.0, Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = traffic.await.unwrap();
    assert!(sent > 0);
    assert_eq!(reloads(&p, "success").await, 1.0, "the database's writes reload nothing");
    assert!(dir.path().join("spendgate.db-wal").exists(), "the database is in the config's directory");
}

#[tokio::test]
async fn a_broken_file_keeps_the_proxy_serving_under_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let path = write_config(dir.path(), &yaml(3, ""), &mock.url());
    let p = start_proxy_file(&path, Clock::system()).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);

    // Not YAML: logged, counted, the old config stays.
    std::fs::write(&path, "limits:\n  default_profile: [\n").unwrap();
    wait_reloads(&p, "error", 1.0).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.status, 402, "the old max of 3 still holds");
    assert_eq!(admin_get(&p, "/readyz", None).await.status, 200);

    // POST /v1/reload answers 400 with the parser's message.
    let r = admin_post(&p, "/v1/reload", None).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["type"], "config_invalid");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("spendgate.yaml"), "{message}");
    assert!(v["error"]["line"].as_u64().is_some(), "{v}");

    // Valid YAML that fails validation names the key.
    std::fs::write(
        &path,
        complete_yaml("limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 0}\n", &mock.url()),
    )
    .unwrap();
    wait_reloads(&p, "error", 2.0).await;
    let r = admin_post(&p, "/v1/reload", None).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["key"], "limits.default_profile[0].max");
    assert!(v["error"]["message"].as_str().unwrap().contains("greater than 0"), "{v}");
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 402, "still the old config");

    // Fixed: the new config is in force, and POST /v1/reload succeeds.
    std::fs::write(&path, complete_yaml(&yaml(10, ""), &mock.url())).unwrap();
    wait_reloads(&p, "success", 1.0).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    let r = admin_post(&p, "/v1/reload", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "reloaded");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn in_flight_requests_finish_under_the_old_prices() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(fixture_upstream).await;
    let price = |input: f64, output: f64| format!("pricing:\n  gemini:\n    \"gemini-2.5-flash\": {{input_per_mtok: {input}, output_per_mtok: {output}}}\n");
    let path = write_config(dir.path(), &yaml(100, &price(0.30, 2.50)), &mock.url());
    let p = start_proxy_file(&path, Clock::system()).await;

    // A stream that the upstream holds open for a while after its last event.
    mock.set(|s| {
        let r = fixture_upstream(s);
        if s.path.ends_with(":streamGenerateContent") {
            r.stall(Duration::from_millis(800))
        } else {
            r
        }
    });
    let client = p.client.clone();
    let url = p.url(GEMINI_STREAM);
    let in_flight = tokio::spawn(async move {
        client
            .post(
                &url,
                &[("x-profile-id", "p-slow"), ("content-type", "application/json")],
                &b"{\"contents\": []}"[..],
            )
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.count() == 0 {
        assert!(Instant::now() < deadline, "the stream never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Prices ten times higher, in force for the next request.
    std::fs::write(&path, complete_yaml(&yaml(100, &price(3.0, 25.0)), &mock.url())).unwrap();
    assert_eq!(admin_post(&p, "/v1/reload", None).await.status, 200);
    let r = send(&p, GEMINI_STREAM, "p-fast", None).await;
    assert_eq!(r.status, 200);

    assert_eq!(in_flight.await.unwrap().status, 200);
    assert_eq!(monthly_cost(&p, "p-slow").await, GEMINI_STREAM_NANOS, "admitted before the reload: old prices");
    assert_eq!(monthly_cost(&p, "p-fast").await, 10 * GEMINI_STREAM_NANOS, "admitted after: new prices");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn reload_without_a_file_is_a_conflict() {
    let mock = Mock::start(fixture_upstream).await;
    let p = start_proxy(&yaml(5, ""), &mock.url()).await;
    let r = admin_post(&p, "/v1/reload", None).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["type"], "no_config_file");
    assert_eq!(admin_get(&p, "/v1/reload", None).await.status, 405);
    p.handle.shutdown().await;
}
