//! The dashboard page in headless Chromium (Debian's `chromium` package), after real traffic
//! through the proxy, behind the admin token; and its limits editor, driven by clicks.

use crate::common::browser::dump_dom;
use crate::common::ops::*;
use crate::common::*;

const TOKEN: &str = "dash-7c41e0b9";

/// The markup of every element that starts with `marker` (up to the next one, or to the end
/// of its table row when the element is a row).
pub fn elements<'a>(dom: &'a str, marker: &str) -> Vec<&'a str> {
    let starts: Vec<usize> = dom.match_indices(marker).map(|(i, _)| i).collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &i)| &dom[i..starts.get(n + 1).copied().unwrap_or(dom.len())])
        .map(|e| e.split("</tr>").next().unwrap_or(e))
        .collect()
}

/// The value of attribute `name` in a piece of markup.
pub fn attr<'a>(markup: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = markup.find(&key)? + key.len();
    markup[start..].split('"').next()
}

/// The tenant rows of a list, in order.
pub fn tenant_rows(dom: &str) -> Vec<&str> {
    elements(dom, "<tr class=\"tenant\"")
}

/// The ids of rows (or other elements carrying `data-id`).
pub fn ids<'a>(rows: &[&'a str]) -> Vec<&'a str> {
    rows.iter().map(|r| attr(r, "data-id").expect("a data-id")).collect()
}

/// The markup inside the element whose opening tag contains `marker`, up to `until`.
pub fn section<'a>(dom: &'a str, marker: &str, until: &str) -> &'a str {
    let start = dom.find(marker).unwrap_or_else(|| panic!("no {marker} in:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find(until).unwrap_or(rest.len())]
}

async fn dom_of(url: String) -> String {
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap();
    assert!(dom.contains("data-loaded=\"true\""), "the page did not finish loading:\n{dom}");
    dom
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

    // The page runs under a CSP that allows its own inline code by hash only (it loaded, so
    // the hashes are right).
    let page = admin_get(&p, "/", Some(TOKEN)).await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe"), "{csp}");

    // The profiles, closest to a limit first: p-1 has used its 3 daily requests.
    let dom = dom_of(p.admin_url(&format!("/?token={TOKEN}"))).await;
    let rows = tenant_rows(&dom);
    assert_eq!(ids(&rows), ["p-1", "p-2"], "{dom}");
    assert_eq!(attr(rows[0], "data-ratio"), Some("1.0000"), "{}", rows[0]);
    assert!(
        rows[0].contains("data-state=\"over\"") && rows[0].contains("daily requests: 3 / 3"),
        "{}",
        rows[0]
    );
    assert!(rows[0].contains(">$0.0151<"), "month cost: {}", rows[0]);
    assert!(dom.contains("Profiles <span class=\"count\">(2)</span>"), "{dom}");

    // p-1's page: requests used up (red), cost past alert_at (amber: 0.0151194 of 0.018),
    // characters fine.
    let dom = dom_of(p.admin_url(&format!("/?token={TOKEN}#view=tenant&scope=profile&id=p-1&range=30d"))).await;
    let limits = section(&dom, "id=\"limits\"", "id=\"chart\"");
    assert!(
        limits.contains("data-metric=\"requests\" data-window=\"daily\" data-state=\"over\" data-ratio=\"1.0000\""),
        "{limits}"
    );
    assert!(
        limits.contains("data-metric=\"cost_usd\" data-window=\"monthly\" data-state=\"warn\" data-ratio=\"0.8400\""),
        "{limits}"
    );
    assert!(
        limits.contains("data-metric=\"characters\" data-window=\"monthly\" data-state=\"ok\" data-ratio=\"0.1110\""),
        "{limits}"
    );
    assert!(limits.contains("$0.0151 / $0.0180 (84.0%)"), "{limits}");
    assert!(limits.contains("style=\"width: 100%;\""), "bars are capped at full width: {limits}");
    assert!(limits.contains("class=\"tick\" title=\"alert at 80%\""), "a tick marks alert_at: {limits}");
    let cards = elements(&dom, "<div class=\"card metric\"");
    assert_eq!(
        attr(cards[0], "data-value"),
        Some(&*(2 * GEMINI_FLASH_NANOS + ELEVENLABS_TTS_NANOS).to_string())
    );
    assert!(cards[1].contains(">3<"), "three requests: {}", cards[1]);
    assert!(cards[4].contains(">111<"), "111 characters: {}", cards[4]);
    assert_eq!(dom.matches("<rect class=\"day\"").count(), 30, "one bar a day");

    // The range selector: this calendar month, and a custom span of one day.
    let month = admin_get(&p, "/v1/profiles/p-1/usage?range=month", Some(TOKEN)).await.json();
    let (first, today) = (month["from"].as_str().unwrap(), month["to"].as_str().unwrap());
    let shown = dom_of(p.admin_url(&format!("/?token={TOKEN}#view=tenant&scope=profile&id=p-1&range=month"))).await;
    assert_eq!(Some(shown.matches("<rect class=\"day\"").count() as u64), month["days"].as_u64());
    assert!(shown.contains(&format!("{first} to {today} (")), "{shown}");
    let shown = dom_of(p.admin_url(&format!(
        "/?token={TOKEN}#view=tenant&scope=profile&id=p-1&range=custom&from={today}&to={today}"
    )))
    .await;
    assert_eq!(shown.matches("<rect class=\"day\"").count(), 1);
    assert!(shown.contains(&format!("{today} to {today} (1 day, UTC)")), "{shown}");
    assert!(shown.contains("data-metric=\"requests\" data-value=\"3\""), "{shown}");

    // Breakdowns: Gemini is p-1's two calls, ElevenLabs its one.
    let gemini = elements(&dom, "<tr data-requests=")
        .into_iter()
        .find(|r| r.contains("data-provider=\"gemini\""))
        .expect("a gemini row");
    assert!(gemini.contains(">2<") && gemini.contains("$0.004019"), "{gemini}");
    let eleven = elements(&dom, "<tr data-requests=")
        .into_iter()
        .find(|r| r.contains("data-provider=\"elevenlabs\""))
        .expect("an elevenlabs row");
    assert!(eleven.contains(">1<") && eleven.contains("$0.0111"), "{eleven}");
    assert!(dom.contains("data-model=\"gemini-2.5-flash\""), "{dom}");

    // Recent requests, newest first.
    let rows = elements(&dom, "<tr class=\"request\"");
    assert_eq!(rows.len(), 3, "{dom}");
    assert!(rows[0].contains("/v1/text-to-speech/v1d") && rows[0].contains(">acme<"), "{}", rows[0]);
    assert!(rows[2].contains("generateContent"), "{}", rows[2]);

    // The orgs, compared side by side.
    let dom = dom_of(p.admin_url(&format!("/?token={TOKEN}#view=orgs"))).await;
    assert_eq!(ids(&tenant_rows(&dom)), ["acme"]);
    let cost = elements(&dom, "<div class=\"cell compare-cost\"");
    assert_eq!(attr(cost[0], "data-id"), Some("acme"));
    assert!(cost[0].contains(">$0.0151<"), "{}", cost[0]);
    let ratio = elements(&dom, "<div class=\"cell compare-ratio\"");
    assert_eq!(attr(ratio[0], "data-ratio"), Some("0.0003"), "{}", ratio[0]);

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
        let listed = "Array.from(document.querySelectorAll('tr.tenant')).map(c => c.dataset.scope + ':' + c.dataset.id).join(',')";
        b.wait_for("document.body.dataset.loaded === 'true'");
        assert_eq!(b.eval(listed), "profile:p-1");
        b.eval("window.location.hash = '#view=orgs'; true");
        b.wait_for("document.body.dataset.view === 'orgs' && document.body.dataset.loaded === 'true'");
        assert_eq!(b.eval(listed), "org:acme");
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
