//! Alerts at `alert_at`: the warning header, the webhook (once per window, retried, never in
//! the way of the proxied request), and shadow limits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::ops::*;
use crate::common::*;

fn yaml(webhook: &str, timeout: &str, retries: u32) -> String {
    format!(
        "{}alerts:\n  webhook_url: \"{webhook}\"\n  timeout: {timeout}\n  retries: {retries}\nlimits:\n  default_profile:\n    - {{metric: requests, window: daily, max: 10, alert_at: 0.5}}\n  profiles:\n    p-shadow:\n      - {{metric: requests, window: daily, max: 2, mode: shadow}}\n",
        providers_yaml()
    )
}

/// Waits (bounded) until every fired alert has been delivered, given up or dropped.
async fn wait_deliveries_done(p: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = p.metrics().await;
        let result = |r: &str| sample(&m, &format!("spendgate_alerts_total{{result=\"{r}\"}} ")).unwrap_or(0.0);
        if result("sent") + result("failed") + result("dropped") >= result("fired") {
            return;
        }
        assert!(Instant::now() < deadline, "alert deliveries still pending:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn crossing_alert_at_warns_and_posts_once_per_window_with_retries() {
    let upstream = Mock::start(fixture_upstream).await;
    // The webhook fails once, then accepts.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let hook = Mock::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::new(503)
        } else {
            Reply::new(204)
        }
    })
    .await;
    let p = start_proxy(&yaml(&format!("{}/hook", hook.url()), "2", 3), &upstream.url()).await;

    for i in 1..=4 {
        let r = send(&p, GEMINI_FLASH, "p-1", None).await;
        assert_eq!(r.status, 200);
        assert!(r.headers.get("x-spendgate-warning").is_none(), "request {i} is below alert_at");
    }
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.headers["x-spendgate-warning"], "requests daily profile p-1 at 0.50");
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.headers["x-spendgate-warning"], "requests daily profile p-1 at 0.60");

    // One event, delivered on the second attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.count() < 2 {
        assert!(Instant::now() < deadline, "the webhook was not retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = hook.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/hook");
    assert_eq!(seen.headers["content-type"], "application/json");
    let event: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(event["tenant"], "p-1");
    assert_eq!(event["scope"], "profile");
    assert_eq!(event["limit"]["metric"], "requests");
    assert_eq!(event["limit"]["window"], "daily");
    assert_eq!(event["current"], 5.0);
    assert_eq!(event["max"], 10.0);
    assert_eq!(event["ratio"], 0.5);
    assert_eq!(event["alert_at"], 0.5);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&p.metrics().await, "spendgate_alerts_total{result=\"sent\"} ").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "delivery not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // More requests past the threshold in the same window: no second event.
    for _ in 0..3 {
        assert!(send(&p, GEMINI_FLASH, "p-1", None).await.headers.contains_key("x-spendgate-warning"));
    }
    // Alerts fire when a request is admitted or settled, claimed in the store by tasks the
    // settlement tracker follows: once every settlement is written, `fired` is final; each fired event ends as sent, failed or
    // dropped, and once they add up no more webhook calls can come.
    settled_or_fail(&p.handle).await;
    assert_eq!(
        sample(&p.metrics().await, "spendgate_alerts_total{result=\"fired\"} ").unwrap_or(0.0),
        1.0,
        "once per window"
    );
    wait_deliveries_done(&p).await;
    assert_eq!(hook.count(), 2, "once per window (one retry)");
    let m = p.metrics().await;
    assert_eq!(sample(&m, "spendgate_alerts_total{result=\"fired\"} ").unwrap_or(0.0), 1.0);
    assert_eq!(sample(&m, "spendgate_alerts_total{result=\"sent\"} ").unwrap_or(0.0), 1.0);
    assert_eq!(sample(&m, "spendgate_alerts_total{result=\"failed\"} ").unwrap_or(0.0), 0.0);

    // Another tenant crossing its own threshold is its own event.
    for _ in 0..5 {
        send(&p, GEMINI_FLASH, "p-2", None).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.count() < 3 {
        assert!(Instant::now() < deadline, "no event for p-2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let event: serde_json::Value = serde_json::from_slice(&hook.last().body).unwrap();
    assert_eq!(event["tenant"], "p-2");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn a_webhook_that_never_answers_does_not_delay_requests() {
    // Accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let upstream = Mock::start(fixture_upstream).await;
    let p = start_proxy(&yaml(&format!("http://{hole_addr}/hook"), "60", 0), &upstream.url()).await;
    // Every request past the threshold completes while the webhook hangs for a minute.
    for _ in 0..8 {
        let r = tokio::time::timeout(Duration::from_secs(20), send(&p, GEMINI_FLASH, "p-1", None))
            .await
            .expect("a request waited for the webhook");
        assert_eq!(r.status, 200);
    }
    settled_or_fail(&p.handle).await;
    assert_eq!(sample(&p.metrics().await, "spendgate_alerts_total{result=\"fired\"} ").unwrap_or(0.0), 1.0);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn shadow_limits_alert_and_count_but_never_refuse() {
    let upstream = Mock::start(fixture_upstream).await;
    let hook = Mock::start(|_| Reply::new(200)).await;
    let p = start_proxy(&yaml(&format!("{}/hook", hook.url()), "2", 0), &upstream.url()).await;
    for _ in 0..4 {
        assert_eq!(send(&p, GEMINI_FLASH, "p-shadow", None).await.status, 200);
    }
    let m = p.metrics().await;
    // Requests 3 and 4 found the counter at or past the max of 2.
    assert_eq!(
        sample(
            &m,
            "spendgate_shadow_refusals_total{metric=\"requests\",scope=\"profile\",tenant=\"p-shadow\",window=\"daily\"} "
        )
        .unwrap_or(0.0),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "spendgate_quota_rejections_total{metric=\"requests\",scope=\"profile\",tenant=\"p-shadow\",window=\"daily\"} "
        )
        .unwrap_or(0.0),
        0.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.count() < 1 {
        assert!(Instant::now() < deadline, "shadow limits alert too");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let event: serde_json::Value = serde_json::from_slice(&hook.last().body).unwrap();
    assert_eq!(event["limit"]["mode"], "shadow");
    p.handle.shutdown().await;
}

#[tokio::test]
async fn several_thresholds_fire_once_each_in_the_slack_format() {
    let upstream = Mock::start(fixture_upstream).await;
    let hook = Mock::start(|_| Reply::new(200)).await;
    let yaml = format!(
        "{}alerts:\n  webhook_url: \"{}/hook\"\n  format: slack\nlimits:\n  default_profile:\n    - {{metric: requests, window: daily, max: 10, alert_at: [0.95, 0.5, 0.8]}}\n",
        providers_yaml(),
        hook.url()
    );
    let p = start_proxy(&yaml, &upstream.url()).await;
    for _ in 0..10 {
        assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    }
    settled_or_fail(&p.handle).await;
    wait_deliveries_done(&p).await;
    let mut texts: Vec<String> = hook
        .seen
        .lock()
        .iter()
        .map(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    texts.sort();
    assert_eq!(texts.len(), 3, "one event per threshold: {texts:?}");
    assert!(
        texts[0].starts_with("spendgate: profile p-1 reached 100% of its daily request limit (10 requests of 10 requests; alert at 95%), resets "),
        "{texts:?}"
    );
    assert!(
        texts[1].starts_with("spendgate: profile p-1 reached 50% of its daily request limit (5 requests of 10 requests; alert at 50%)"),
        "{texts:?}"
    );
    assert!(
        texts[2].starts_with("spendgate: profile p-1 reached 80% of its daily request limit (8 requests of 10 requests; alert at 80%)"),
        "{texts:?}"
    );
    let u = admin_get(&p, "/v1/profiles/p-1/usage?range=7d", None).await.json();
    assert_eq!(u["limits"][0]["alert_at"], 0.5);
    assert_eq!(u["limits"][0]["thresholds"], serde_json::json!([0.5, 0.8, 0.95]));
    p.handle.shutdown().await;
}
