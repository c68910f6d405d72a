//! The admin token: `/v1/*` and `/` need it when `admin.token_env` names a set variable;
//! `/metrics` and the probes never do.

use crate::common::ops::*;
use crate::common::*;

const TOKEN: &str = "tok-3f9a7c1e-5b2d";

fn yaml(env: &str) -> String {
    format!(
        "{}admin:\n  listen: \"127.0.0.1:0\"\n  token_env: {env}\nlimits:\n  default_profile:\n    - {{metric: requests, window: daily, max: 10}}\n",
        providers_yaml()
    )
}

#[tokio::test]
async fn token_guards_the_api_and_the_page_but_not_probes() {
    // A variable only this test uses, set with every other one before anything starts.
    crate::common::env::init();
    assert_eq!(std::env::var(env::ADMIN_TOKEN_GUARD.0).as_deref(), Ok(TOKEN));
    let mock = Mock::start(fixture_upstream).await;
    let p = start_proxy(&yaml("SPENDGATE_TEST_ADMIN_TOKEN_GUARD"), &mock.url()).await;
    assert_eq!(send(&p, GEMINI_FLASH, "p-1", None).await.status, 200);
    settled_or_fail(&p.handle).await;

    for open in ["/healthz", "/readyz"] {
        assert_eq!(admin_get(&p, open, None).await.status, 200, "{open} stays open");
    }
    // Tenant ids and spend are in the metrics: they need the token unless made public.
    assert_eq!(admin_get(&p, "/metrics", None).await.status, 401);
    assert_eq!(admin_get(&p, "/metrics", Some(TOKEN)).await.status, 200);

    for path in ["/v1/profiles", "/v1/orgs", "/v1/profiles/p-1/usage", "/v1/profiles/p-1/usage?range=7d"] {
        let r = admin_get(&p, path, None).await;
        assert_eq!(r.status, 401, "{path} without a token");
        assert_eq!(r.json()["error"]["type"], "unauthorized");
        assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"), "{path}");
        let r = admin_get(&p, path, Some("tok-3f9a7c1e-5b2e")).await;
        assert_eq!(r.status, 403, "{path} with a wrong token");
        assert_eq!(r.json()["error"]["type"], "forbidden");
        assert_eq!(
            admin_get(&p, path, Some(&TOKEN[..TOKEN.len() - 1])).await.status,
            403,
            "{path}: a prefix is wrong"
        );
        assert_eq!(admin_get(&p, path, Some(TOKEN)).await.status, 200, "{path} with the token");
    }
    // Another scheme, or a bare `Bearer`, is a wrong credential.
    for auth in ["Basic dG9rOnRvaw==", "Bearer", "Bearer "] {
        let r = p.client.get(&p.admin_url("/v1/profiles"), &[("authorization", auth)]).await;
        assert_eq!(r.status, 403, "{auth}");
    }
    // The query token is for the page only.
    let r = p.client.get(&p.admin_url(&format!("/v1/profiles?token={TOKEN}")), &[]).await;
    assert_eq!(r.status, 401);

    // Reload is guarded too (and checked before anything is read).
    assert_eq!(admin_post(&p, "/v1/reload", None).await.status, 401);
    assert_eq!(admin_post(&p, "/v1/reload", Some("nope")).await.status, 403);

    // The page: a sign-in form without the token, the dashboard with it.
    let r = admin_get(&p, "/", None).await;
    assert_eq!(r.status, 401);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&r.body).contains("name=\"token\""));
    let r = p.client.get(&p.admin_url("/?token=wrong"), &[]).await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("wrong"));
    let r = p.client.get(&p.admin_url(&format!("/?token={TOKEN}")), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains("id=\"tenants\""),
        "the dashboard, not the sign-in form"
    );
    assert_eq!(admin_get(&p, "/", Some(TOKEN)).await.status, 200);

    p.handle.shutdown().await;
}

#[tokio::test]
async fn no_token_variable_means_open() {
    // The named variable is not set in this process.
    let mock = Mock::start(fixture_upstream).await;
    let p = start_proxy(&yaml("SPENDGATE_TEST_ADMIN_TOKEN_NEVER_SET"), &mock.url()).await;
    assert_eq!(admin_get(&p, "/v1/profiles", None).await.status, 200);
    assert_eq!(admin_get(&p, "/", None).await.status, 200);
    p.handle.shutdown().await;
}

#[tokio::test]
async fn an_empty_token_locks_the_api() {
    crate::common::env::init();
    assert_eq!(std::env::var(env::ADMIN_TOKEN_EMPTY.0).as_deref(), Ok(""));
    let mock = Mock::start(fixture_upstream).await;
    let p = start_proxy(&yaml("SPENDGATE_TEST_ADMIN_TOKEN_EMPTY"), &mock.url()).await;
    assert_eq!(admin_get(&p, "/v1/profiles", None).await.status, 401);
    let r = p.client.get(&p.admin_url("/v1/profiles"), &[("authorization", "Bearer ")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(admin_get(&p, "/healthz", None).await.status, 200);
    p.handle.shutdown().await;
}
