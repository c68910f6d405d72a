//! Rate windows (`window: minute | hour`): a refusal is 429 `rate_limited` with Retry-After
//! within the window, the next window admits again, and day and month refusals stay 402.

use crate::common::ops::*;
use crate::common::*;
use chrono::{DateTime, Utc};
use spendgate::domain::window::Clock;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test]
async fn a_minute_window_refuses_with_429_and_admits_again_the_next_minute() {
    let mock = Mock::start(fixture_upstream).await;
    let clock = Clock::fixed(at("2026-11-22T10:05:15Z"));
    let yaml = format!(
        "{}limits:\n  default_profile:\n    - {{metric: requests, window: minute, max: 3}}\n    - {{metric: requests, window: daily, max: 5}}\n",
        providers_yaml()
    );
    let p = start_proxy_with_clock(&yaml, &mock.url(), clock.clone()).await;
    for n in 1..=3 {
        let r = send(&p, GEMINI_FLASH, "p-1", None).await;
        assert_eq!(r.status, 200);
        // The standard headers name the tightest limit of each window, tightest first.
        // The minute (3 - n left of 3) is always tighter than the day (5 - n of 5).
        let (minute, daily) = (3 - n, 5 - n);
        assert_eq!(
            r.headers["ratelimit-policy"],
            "\"profile-requests-minute\";q=3;w=60, \"profile-requests-daily\";q=5;w=86400"
        );
        assert_eq!(
            r.headers["ratelimit"],
            format!("\"profile-requests-minute\";r={minute};t=45, \"profile-requests-daily\";r={daily};t=50085").as_str()
        );
        assert!(r.headers.contains_key("x-spendgate-remaining"));
    }
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.status, 429);
    let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(retry, 45, "seconds to the end of the minute");
    let body = r.json();
    assert_eq!(body["error"]["type"], "rate_limited");
    assert_eq!(body["error"]["status"], "RATE_LIMITED");
    assert_eq!(body["error"]["limit"]["window"], "minute");
    assert_eq!(body["error"]["resets_at"], "2026-11-22T10:06:00Z");
    assert_eq!(body["detail"]["error"], "rate_limited");
    assert_eq!(mock.count(), 3, "the refused call never reached the upstream");
    assert!(p
        .metrics()
        .await
        .contains("spendgate_quota_rejections_total{metric=\"requests\",scope=\"profile\",tenant=\"p-1\",window=\"minute\"} 1"));

    // Still the same minute: still refused.
    clock.set(at("2026-11-22T10:05:59Z"));
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!((r.status.as_u16(), r.headers["retry-after"].to_str().unwrap()), (429, "1"));
    // The next minute admits again, until the daily limit (402, not 429).
    clock.set(at("2026-11-22T10:06:00Z"));
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.status, 402);
    assert_eq!(r.json()["error"]["type"], "quota_exceeded");
    // Another profile has its own minute.
    assert_eq!(send(&p, GEMINI_FLASH, "p-2", None).await.status, 200);
}

#[tokio::test]
async fn an_hour_cost_window_refuses_with_429_until_the_hour_ends() {
    let mock = Mock::start(fixture_upstream).await;
    let clock = Clock::fixed(at("2026-11-22T10:59:00Z"));
    // Two calls' cost: the second crosses the max, the third is refused.
    let max = 1.5 * GEMINI_FLASH_NANOS as f64 / 1e9;
    let yaml = format!(
        "{}limits:\n  default_profile:\n    - {{metric: cost_usd, window: hour, max: {max}}}\n",
        providers_yaml()
    );
    let p = start_proxy_with_clock(&yaml, &mock.url(), clock.clone()).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    settled_or_fail(&p.handle).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    settled_or_fail(&p.handle).await;
    let r = send(&p, GEMINI_FLASH, "p-1", None).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "60");
    assert_eq!(r.json()["error"]["limit"]["window"], "hour");
    clock.set(at("2026-11-22T11:00:00Z"));
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    // The monthly counter kept every call.
    assert_eq!(monthly_cost(&p, "p-1").await, 3 * GEMINI_FLASH_NANOS);
}
