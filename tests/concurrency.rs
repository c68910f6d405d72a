//! Many requests in flight against one limit: the reservation is atomic with the check, so
//! exactly as many are admitted as the limit allows by exact estimate.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_tts_requests_admit_exactly_n() {
    let (status, headers) = fixture_head("elevenlabs/tts_headers.txt");
    // The upstream answers slowly, so that all 200 are in flight together.
    let mock = Mock::start(move |_| {
        Reply::new(status.as_u16())
            .headers(headers.clone())
            .pieces(&[0u8; 64], 64, std::time::Duration::from_millis(50))
    })
    .await;
    // $0.0111 a request against $0.10: admitted while the counter is below the max, so
    // n = ceil(0.10 / 0.0111) = 10.
    let yaml = format!(
        "{}limits:\n  profiles:\n    p-c:\n      - {{metric: cost_usd, window: daily, max: 0.10}}\n",
        providers_yaml()
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    let url = p.url("/elevenlabs/v1/text-to-speech/voice1/stream");
    let body = fixture("elevenlabs/tts_request.json");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (client, url, body) = (p.client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            client.post(&url, &[("x-profile-id", "p-c")], body).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            402 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (10, 190));
    assert_eq!(mock.count(), 10);
    assert_eq!(monthly_cost(&p, "p-c").await, 10 * usd("0.0111"));
    p.handle.shutdown().await;
}
