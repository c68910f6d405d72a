//! The dashboard page in headless Chromium (Debian's `chromium` package), after real traffic
//! through the proxy, behind the admin token; and its limits editor, driven by clicks.

use std::process::Command;
use std::time::Duration;

use crate::common::browser::chromium;
use crate::common::ops::*;
use crate::common::process::output_within;
use crate::common::*;

const TOKEN: &str = "dash-7c41e0b9";

/// The DOM of `url` after the page's scripts ran (virtual time lets its fetches finish).
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    // A hang detector, not a speed check; chromium is killed if the test fails.
    let out = output_within(
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(url),
        None,
        Duration::from_secs(90),
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("</html>"),
        "chromium printed no DOM (status {}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The markup of one tenant's card.
fn card<'a>(dom: &'a str, scope: &str, id: &str) -> &'a str {
    let marker = format!("data-scope=\"{scope}\" data-id=\"{id}\"");
    let start = dom.find(&marker).unwrap_or_else(|| panic!("no card for {scope} {id}:\n{dom}"));
    let rest = &dom[start..];
    let end = rest[marker.len()..].find("class=\"card tenant\"").map_or(rest.len(), |e| e + marker.len());
    &rest[..end]
}

const LIMITS: &str = "limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 3}\n    - {metric: cost_usd, window: monthly, max: 0.018, alert_at: 0.8}\n    - {metric: characters, window: monthly, max: 1000}\n  default_org:\n    - {metric: cost_usd, window: monthly, max: 50}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_tenants_limits_providers_and_recent_requests() {
    crate::common::env::init();
    assert_eq!(std::env::var(crate::common::env::ADMIN_TOKEN_DASH.0).as_deref(), Ok(TOKEN));
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!(
        "{}{LIMITS}admin:\n  listen: \"127.0.0.1:0\"\n  token_env: SPENDGATE_TEST_ADMIN_TOKEN_DASH\n",
        providers_yaml()
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    for path in [GEMINI_FLASH, GEMINI_FLASH, ELEVENLABS_TTS] {
        assert_eq!(send(&p, path, "p-1", Some("acme")).await.status, 200);
    }
    assert_eq!(send(&p, GEMINI_STREAM, "p-2", None).await.status, 200);
    settled_or_fail(&p.handle).await;

    let url = p.admin_url(&format!("/?token={TOKEN}"));
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap();
    assert!(dom.contains("data-loaded=\"true\""), "the page did not finish loading:\n{dom}");

    // p-1: requests used up (red), cost past alert_at (amber: 0.0151194 of 0.018), characters fine.
    let p1 = card(&dom, "profile", "p-1");
    assert!(
        p1.contains("data-metric=\"requests\" data-window=\"daily\" data-state=\"over\" data-ratio=\"1.0000\""),
        "{p1}"
    );
    assert!(
        p1.contains("data-metric=\"cost_usd\" data-window=\"monthly\" data-state=\"warn\" data-ratio=\"0.8400\""),
        "{p1}"
    );
    assert!(
        p1.contains("data-metric=\"characters\" data-window=\"monthly\" data-state=\"ok\" data-ratio=\"0.1110\""),
        "{p1}"
    );
    assert!(p1.contains("$0.0151 / $0.0180 (84.0%)"), "{p1}");
    assert!(p1.contains("style=\"width: 100%;\""), "bars are capped at full width: {p1}");
    assert!(p1.contains("30 days by provider: elevenlabs $0.0111 · gemini $0.004019"), "{p1}");
    let p2 = card(&dom, "profile", "p-2");
    assert!(p2.contains("data-metric=\"requests\" data-window=\"daily\" data-state=\"ok\""), "{p2}");
    let acme = card(&dom, "org", "acme");
    assert!(acme.contains("data-metric=\"cost_usd\" data-window=\"monthly\" data-state=\"ok\""), "{acme}");
    assert!(acme.contains("month $0.0151 · 3 req"), "{acme}");

    // Cost by provider over the profiles: Gemini is p-1's two calls plus p-2's stream.
    let gemini = dom
        .split("data-provider=\"gemini\"")
        .nth(1)
        .expect("a gemini row")
        .split("</tr>")
        .next()
        .unwrap();
    assert!(gemini.contains(">3<") && gemini.contains("$0.004847"), "{gemini}");
    let eleven = dom
        .split("data-provider=\"elevenlabs\"")
        .nth(1)
        .expect("an elevenlabs row")
        .split("</tr>")
        .next()
        .unwrap();
    assert!(eleven.contains(">1<") && eleven.contains("$0.0111"), "{eleven}");

    // Recent requests, newest first.
    let rows: Vec<&str> = dom.split("<tr class=\"request\">").skip(1).collect();
    assert_eq!(rows.len(), 4, "{dom}");
    assert!(rows[0].contains(">p-2<") && rows[0].contains("streamGenerateContent"), "{}", rows[0]);
    assert!(rows[1].contains("/v1/text-to-speech/v1d") && rows[1].contains(">acme<"), "{}", rows[1]);

    // Without the token the browser gets the sign-in form, and no data.
    let url = p.admin_url("/");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap();
    assert!(dom.contains("name=\"token\""), "{dom}");
    assert!(!dom.contains("p-1"), "{dom}");
    p.handle.shutdown().await;
}

/// The limits editor: an admin saves a limit on the page and the next call through the proxy
/// is refused; an org token sees only its org; a viewer cannot save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_editor_saves_what_the_proxy_enforces_next_and_follows_the_token_role() {
    use crate::common::browser::Browser;
    use crate::common::env::{TOKEN_ACME, TOKEN_OPS, TOKEN_VIEWER};
    crate::common::env::init();
    let mock = Mock::start(fixture_upstream).await;
    let yaml = format!(
        "{}admin:\n  listen: \"127.0.0.1:0\"\n  tokens:\n    - {{name: ops, env: SPENDGATE_TEST_TOKEN_OPS, role: admin}}\n    - {{name: ro, env: SPENDGATE_TEST_TOKEN_VIEWER, role: viewer}}\n    - {{name: acme, env: SPENDGATE_TEST_TOKEN_ACME, role: \"org:acme\"}}\ntenant:\n  orgs: {{acme: [p-1], beta: [p-2]}}\nlimits:\n  default_profile:\n    - {{metric: cost_usd, window: monthly, max: 5}}\n    - {{metric: requests, window: daily, max: 100}}\n",
        providers_yaml()
    );
    let p = start_proxy(&yaml, &mock.url()).await;
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-1", Some("acme")).await.status, 200);
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-2", Some("beta")).await.status, 200);
    settled_or_fail(&p.handle).await;

    // The admin lowers p-1's monthly cost limit below what it spent, on the page.
    let url = p.admin_url(&format!("/?token={}#limits/profile/p-1", TOKEN_OPS.1));
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::open(&url);
        b.wait_for("document.getElementById('le-body').dataset.state === 'ready'");
        assert_eq!(b.eval("document.getElementById('le-body').dataset.writable"), "true");
        assert_eq!(b.eval("document.getElementById('le-body').dataset.source"), "default_profile");
        b.eval(
            r#"(() => {
                const tr = document.querySelector('tr.le-limit[data-metric="cost_usd"][data-window="monthly"]');
                const max = tr.querySelector('.le-max');
                max.value = '0.01';
                max.dispatchEvent(new Event('input'));
                const alert = tr.querySelector('.le-alert');
                alert.value = '0.5';
                alert.dispatchEvent(new Event('input'));
                document.getElementById('le-reason').value = 'edited on the page';
                tr.querySelector('.le-save').click();
                return true;
            })()"#,
        );
        b.wait_for("document.getElementById('le-msg').textContent === 'Saved'");
        b.wait_for("document.querySelector('#le-audit tr.le-audit-entry[data-action=\"override_set\"]')");
        assert_eq!(b.eval("document.getElementById('le-body').dataset.source"), "override");
    })
    .await
    .unwrap();
    let refused = send(&p, ELEVENLABS_TTS, "p-1", Some("acme")).await;
    assert_eq!(refused.status, 402);
    assert_eq!(refused.json()["error"]["limit"]["max"], 0.01);
    let v = admin_get(&p, "/v1/profiles/p-1/limits", Some(TOKEN_OPS.1)).await.json();
    let l = &v["limits"][0];
    assert_eq!(
        (l["max"].as_f64(), l["alert_at"].as_f64(), l["source"].as_str()),
        (Some(0.01), Some(0.5), Some("override")),
        "{v}"
    );
    assert_eq!(v["limits"][1]["max"], 100.0, "the other limit is kept as it was");
    assert_eq!(
        (v["override"]["token"].as_str(), v["override"]["reason"].as_str()),
        (Some("ops"), Some("edited on the page"))
    );

    // An org token: its org and its profiles only, read-only here.
    let url = p.admin_url(&format!("/?token={}#limits/profile/p-1", TOKEN_ACME.1));
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::open(&url);
        b.wait_for("document.body.dataset.loaded === 'true'");
        let cards = b.eval("Array.from(document.querySelectorAll('.card.tenant')).map(c => c.dataset.scope + ':' + c.dataset.id).join(',')");
        assert_eq!(cards, "profile:p-1,org:acme");
        b.wait_for("document.getElementById('le-body').dataset.state === 'ready'");
        assert_eq!(b.eval("document.getElementById('le-body').dataset.writable"), "false");
    })
    .await
    .unwrap();

    // A viewer sees the editor read-only, and the API refuses a save it forces.
    let url = p.admin_url(&format!("/?token={}#limits/profile/p-2", TOKEN_VIEWER.1));
    let viewer = TOKEN_VIEWER.1;
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::open(&url);
        b.wait_for("document.getElementById('le-body').dataset.state === 'ready'");
        assert_eq!(b.eval("document.getElementById('le-body').dataset.writable"), "false");
        assert_eq!(b.eval("!document.getElementById('le-readonly').hidden"), true);
        assert_eq!(
            b.eval("Array.from(document.querySelectorAll('#limits-editor button.le-save, #limits-editor button.le-remove, #limits-editor button.le-admin, #le-add')).every(x => x.disabled)"),
            true
        );
        assert_eq!(b.eval("Array.from(document.querySelectorAll('#le-limits .le-max')).every(x => x.disabled)"), true);
        let status = b.eval(&format!(
            "fetch('/v1/profiles/p-2/limits', {{method: 'PUT', headers: {{'Authorization': 'Bearer {viewer}', 'Content-Type': 'application/json'}}, body: JSON.stringify({{limits: []}})}}).then(r => r.status)"
        ));
        assert_eq!(status, 403);
    })
    .await
    .unwrap();
    let v = admin_get(&p, "/v1/profiles/p-2/limits", Some(TOKEN_OPS.1)).await.json();
    assert_eq!(v["source"], "default_profile");
    assert_eq!(send(&p, ELEVENLABS_TTS, "p-2", Some("beta")).await.status, 200);
    p.handle.shutdown().await;
}
