//! The dashboard with a fleet: 10,000 profiles (in 20 orgs) put in the embedded store by
//! real calls through the proxy, then the page in headless Chromium (Debian's `chromium`):
//! the lists page, search and sort on the server, the tenant page shows what the usage API
//! says, and screenshots of both are kept for review. The listing API's latency at that size
//! is printed (`--nocapture`), not asserted.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use crate::common::browser::{dump_dom, screenshot, Browser};
use crate::common::ops::*;
use crate::common::*;
use crate::dashboard::{attr, elements, ids, section, tenant_rows};

/// Profiles in the fleet: 10,000, or `SPENDGATE_TEST_FLEET_PROFILES` (7,778 to 100,000) to
/// measure the listing at another size.
fn fleet_size() -> usize {
    std::env::var("SPENDGATE_TEST_FLEET_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (7_778..=100_000).contains(n))
        .unwrap_or(10_000)
}

/// `10,000`, as the page shows counts.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

const ORGS: usize = 20;
/// Calls in flight while seeding.
const IN_FLIGHT: usize = 64;

fn profile(i: usize) -> String {
    format!("p-{i:05}")
}

fn org(i: usize) -> String {
    format!("org-{:02}", i % ORGS)
}

/// p-07777 has its own, tight daily request limit: 3 calls of 4 put it closest to a limit.
/// p-00042 makes 5 calls of the default 100. Everyone else makes one (1%).
const YAML: &str = "limits:\n  default_profile:\n    - {metric: requests, window: daily, max: 100}\n    - {metric: cost_usd, window: monthly, max: 1}\n  default_org:\n    - {metric: cost_usd, window: monthly, max: 50}\n  profiles:\n    p-07777:\n      - {metric: requests, window: daily, max: 4}\n      - {metric: characters, window: monthly, max: 1000}\n";

async fn dom_of(url: String) -> String {
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap();
    assert!(dom.contains("data-loaded=\"true\""), "the page did not finish loading:\n{dom}");
    dom
}

/// Where the screenshots go: beside the build, in the cargo target directory.
fn screenshot_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/it-<hash>
    let target = exe.ancestors().nth(3).expect("the test binary is under <target>/<profile>/deps");
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A PNG of the page, checked to be a real picture of the window's size with something in it.
async fn picture(url: String, name: &str) -> std::path::PathBuf {
    let path = screenshot_dir().join(name);
    let p = path.clone();
    tokio::task::spawn_blocking(move || screenshot(&url, &p)).await.unwrap();
    let png = std::fs::read(&path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1280, 2000), "{}", path.display());
    // A blank 1280x2000 PNG compresses to a few kB; a page with tables and text is far more.
    assert!(png.len() > 40_000, "{} is only {} bytes: an empty page?", path.display(), png.len());
    println!("screenshot: {}", path.display());
    path
}

/// The number shown in a metric card (digits only: `1,602` is 1602).
fn shown_count(card: &str) -> i64 {
    let text = card.split("<div class=\"value\">").nth(1).and_then(|v| v.split('<').next()).expect("a value");
    text.replace(',', "").parse().unwrap_or_else(|_| panic!("not a count: {text}"))
}

/// The dollars shown in a metric card (`$0.0131`), and how precise that display is.
fn shown_usd(card: &str) -> (f64, f64) {
    let text = card.split("<div class=\"value\">").nth(1).and_then(|v| v.split('<').next()).expect("a value");
    let digits = text.strip_prefix('$').unwrap_or_else(|| panic!("not dollars: {text}"));
    let decimals = digits.split('.').nth(1).map_or(0, str::len);
    (digits.parse().unwrap(), 0.5 * 10f64.powi(-(decimals as i32)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_searches_sorts_and_pages_ten_thousand_tenants() {
    let profiles = fleet_size();
    // The embedded store; `SPENDGATE_TEST_FLEET_STORE=redis` measures a redis-server instead.
    let redis = (std::env::var("SPENDGATE_TEST_FLEET_STORE").as_deref() == Ok("redis")).then(crate::common::redis::RedisServer::start);
    let store = match &redis {
        Some(r) => format!("store:\n  backend: redis\n  url: \"{}\"\n  recent_max: 100\n", r.url()),
        None => "store:\n  recent_max: 100\n".to_string(),
    };
    let mock = Mock::start(fixture_upstream).await;
    let p = start_proxy(&format!("{store}{}{YAML}", providers_yaml()), &mock.url()).await;

    // One call for each profile, many at a time (a hang detector bounds it).
    let started = Instant::now();
    let p_ref = &p;
    let statuses: Vec<u16> = tokio::time::timeout(
        Duration::from_secs(300 * profiles as u64 / 10_000),
        stream::iter(0..profiles)
            .map(|i| async move { send(p_ref, GEMINI_FLASH, &profile(i), Some(&org(i))).await.status.as_u16() })
            .buffer_unordered(IN_FLIGHT)
            .collect(),
    )
    .await
    .expect("seeding hung");
    assert!(statuses.iter().all(|s| *s == 200), "{:?}", statuses.iter().find(|s| **s != 200));
    assert_eq!(send(&p, GEMINI_FLASH, "p-07777", Some(&org(7777))).await.status, 200);
    // One call attributed to two features (X-Spendgate-Tag): it counts under both tags.
    let o = org(7777);
    let tagged = [
        ("x-profile-id", "p-07777"),
        ("x-org-id", o.as_str()),
        ("content-type", "application/json"),
        ("x-spendgate-tag", "tool=narration,team=video"),
    ];
    let r = p.client.post(&p.url(ELEVENLABS_TTS), &tagged, fixture("elevenlabs/tts_request.json")).await;
    assert_eq!(r.status, 200);
    for _ in 0..4 {
        assert_eq!(send(&p, GEMINI_FLASH, "p-00042", Some(&org(42))).await.status, 200);
    }
    settled_or_fail(&p.handle).await;
    let backend = if redis.is_some() { "redis" } else { "embedded" };
    println!("seeded {profiles} profiles through the proxy ({backend} store) in {:.1?}", started.elapsed());

    // The listing API at this size: what one page of the dashboard costs.
    let first = admin_get(&p, "/v1/profiles?sort=ratio&limit=25", None).await.json();
    for (what, path) in [
        ("sort=ratio", "/v1/profiles?sort=ratio&limit=25"),
        ("sort=cost", "/v1/profiles?sort=cost&limit=25"),
        ("sort=name page 200", "/v1/profiles?sort=name&offset=4975&limit=25"),
        ("q=077 sort=ratio", "/v1/profiles?q=077&sort=ratio&limit=25"),
    ] {
        let mut took = Vec::new();
        for _ in 0..5 {
            let at = Instant::now();
            let r = admin_get(&p, path, None).await;
            took.push(at.elapsed());
            assert_eq!(r.status, 200, "{path}");
        }
        took.sort();
        println!(
            "GET {path} ({what}) at {profiles} profiles ({backend} store): median {:.1?}, max {:.1?}",
            took[2], took[4]
        );
    }
    let listed: Vec<&str> = first["profiles"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(&listed[..3], ["p-07777", "p-00042", "p-00000"], "{first}");
    assert_eq!(
        (first["total"].as_u64(), first["known"].as_u64()),
        (Some(profiles as u64), Some(profiles as u64))
    );

    // The list: closest to a limit first, 25 a page, the whole fleet in all.
    let pages = profiles.div_ceil(25);
    let base = p.admin_url("/");
    let dom = dom_of(base.clone()).await;
    let rows = tenant_rows(&dom);
    assert_eq!(rows.len(), 25);
    assert_eq!(&ids(&rows)[..3], ["p-07777", "p-00042", "p-00000"], "{dom}");
    assert_eq!(attr(rows[0], "data-ratio"), Some("0.7500"));
    assert!(dom.contains(&format!("data-total=\"{profiles}\"")), "{dom}");
    assert!(dom.contains(&format!("Profiles <span class=\"count\">({})</span>", grouped(profiles))));
    assert!(dom.contains(&format!("page 1 of {pages}")));

    // Pages by name: page 2 holds the next 25, none of page 1's.
    let page1 = dom_of(format!("{base}#view=profiles&sort=name&order=asc")).await;
    let page2 = dom_of(format!("{base}#view=profiles&sort=name&order=asc&page=2")).await;
    let (one, two) = (tenant_rows(&page1), tenant_rows(&page2));
    let expect = |from: usize| (from..from + 25).map(profile).collect::<Vec<_>>();
    assert_eq!(ids(&one), expect(0));
    assert_eq!(ids(&two), expect(25));
    assert!(page2.contains(&format!("page 2 of {pages}")), "{page2}");

    // Search narrows to the one tenant.
    let found = dom_of(format!("{base}#view=profiles&q=07777")).await;
    assert_eq!(ids(&tenant_rows(&found)), ["p-07777"]);
    assert!(found.contains("data-total=\"1\""));
    assert!(found.contains(&format!("showing 1–1 of 1 matching ({} in all)", grouped(profiles))), "{found}");

    // The orgs by month cost: org-17 (p-07777's) spent the most, then org-02 (p-00042's).
    let orgs = dom_of(format!("{base}#view=orgs&sort=cost")).await;
    let org_rows = tenant_rows(&orgs);
    assert_eq!(org_rows.len(), ORGS);
    assert_eq!(&ids(&org_rows)[..2], ["org-17", "org-02"]);
    let compared = elements(&orgs, "<div class=\"cell compare-cost\"");
    assert_eq!(compared.len(), ORGS, "every org of the page is compared");
    let api_orgs = admin_get(&p, "/v1/orgs?sort=cost", None).await.json();
    for (cell, o) in compared.iter().zip(api_orgs["orgs"].as_array().unwrap()) {
        assert_eq!(attr(cell, "data-id"), o["id"].as_str());
        assert_eq!(attr(cell, "data-cost-nanos").map(str::to_string), Some(o["month"]["cost_nanos"].to_string()));
    }

    // The tenant page's numbers are the usage API's.
    let api: Value = admin_get(&p, "/v1/profiles/p-07777/usage?range=30d", None).await.json();
    let tenant_url = format!("{base}#view=tenant&scope=profile&id=p-07777&range=30d");
    let dom = dom_of(tenant_url.clone()).await;
    let cards = elements(&dom, "<div class=\"card metric\"");
    assert_eq!(cards.len(), 5);
    let card = |metric: &str| {
        *cards
            .iter()
            .find(|c| attr(c, "data-metric") == Some(metric))
            .unwrap_or_else(|| panic!("no {metric} card"))
    };
    let t = &api["totals"];
    let (usd, precision) = shown_usd(card("cost_usd"));
    assert!((usd - t["cost_usd"].as_f64().unwrap()).abs() <= precision + 1e-12, "{usd} vs {t}");
    assert_eq!(attr(card("cost_usd"), "data-value"), Some(&*t["cost_nanos"].to_string()));
    for metric in ["requests", "input_tokens", "output_tokens", "characters"] {
        assert_eq!(shown_count(card(metric)), t[metric].as_i64().unwrap(), "{metric}");
    }
    assert_eq!(t["requests"], 3);
    for l in api["limits"].as_array().unwrap() {
        let marker = format!(
            "data-metric=\"{}\" data-window=\"{}\" data-state=",
            l["metric"].as_str().unwrap(),
            l["window"].as_str().unwrap()
        );
        let shown = section(&dom, &marker, ">");
        assert_eq!(attr(shown, "data-ratio"), Some(&*format!("{:.4}", l["ratio"].as_f64().unwrap())), "{shown}");
    }
    assert!(
        section(&dom, "data-metric=\"requests\" data-window=\"daily\"", ">").contains("data-state=\"ok\""),
        "0.75 is below alert_at 0.8"
    );
    // The chart: a bar a day, the day's cost from the API's daily points.
    let bars = elements(&dom, "<rect class=\"day\"");
    let daily = api["daily"].as_array().unwrap();
    assert_eq!(bars.len(), daily.len());
    for (bar, d) in bars.iter().zip(daily) {
        assert_eq!(attr(bar, "data-date"), d["date"].as_str());
        assert_eq!(attr(bar, "data-cost-nanos").map(str::to_string), Some(d["cost_nanos"].to_string()));
    }
    // Breakdowns and recent requests.
    assert_eq!(api["by_tag"].as_object().map(|m| m.len()), Some(2), "{api}");
    for (key, map) in [("provider", &api["by_provider"]), ("model", &api["by_model"]), ("tag", &api["by_tag"])] {
        let rows = elements(&dom, "<tr data-requests=");
        for (name, v) in map.as_object().unwrap() {
            let row = rows
                .iter()
                .find(|r| attr(r, &format!("data-{key}")) == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no {key} row {name}"));
            assert_eq!(attr(row, "data-cost-nanos").map(str::to_string), Some(v["cost_nanos"].to_string()));
            assert_eq!(attr(row, "data-requests").map(str::to_string), Some(v["requests"].to_string()));
        }
    }
    let recent = elements(&dom, "<tr class=\"request\"");
    assert_eq!(recent.len(), api["recent"].as_array().unwrap().len());
    assert!(recent[0].contains("/v1/text-to-speech/v1d"), "newest first: {}", recent[0]);
    assert!(recent[0].contains("<span>tool=narration</span><span>team=video</span>"), "{}", recent[0]);

    // The controls, clicked and typed into: search, pages, sort, a tenant, its range, its limits.
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::open(&base);
        let ready = "document.body.dataset.loaded === 'true'";
        let first = "document.querySelector('tr.tenant').dataset.id";
        let rows = "document.querySelectorAll('tr.tenant').length";
        b.wait_for(ready);
        b.eval("document.getElementById('q').value = '07777'; document.getElementById('list-form').requestSubmit(); true");
        b.wait_for(&format!("{ready} && {rows} === 1"));
        assert_eq!(b.eval(first), "p-07777");
        b.eval("document.getElementById('q').value = ''; document.getElementById('list-form').requestSubmit(); true");
        b.wait_for(&format!("{ready} && {rows} === 25"));
        b.eval("document.getElementById('next').click(); true");
        b.wait_for(&format!("{ready} && document.getElementById('list-view').dataset.page === '2'"));
        assert_eq!(b.eval(first), "p-00023", "page 2 by ratio: after p-07777, p-00042 and p-00000 to p-00022");
        b.eval("const s = document.getElementById('sort'); s.value = 'name'; s.dispatchEvent(new Event('change')); true");
        b.wait_for(&format!(
            "{ready} && document.getElementById('list-view').dataset.page === '1' && {first} === 'p-00000'"
        ));
        b.eval("document.querySelector('tr.tenant[data-id=\"p-00003\"] a.tenant-link').click(); true");
        b.wait_for(&format!("{ready} && document.body.dataset.view === 'tenant'"));
        assert_eq!(b.eval("document.getElementById('tenant-view').dataset.id"), "p-00003");
        b.eval("const r = document.getElementById('range'); r.value = '7d'; r.dispatchEvent(new Event('change')); true");
        b.wait_for(&format!("{ready} && document.querySelectorAll('#chart rect.day').length === 7"));
        assert!(b.eval("window.location.hash").as_str().unwrap().contains("range=7d"));
        b.eval("document.getElementById('tenant-limits').click(); true");
        b.wait_for("document.getElementById('le-body').dataset.state === 'ready'");
        assert_eq!(b.eval("document.getElementById('le-title').textContent"), "profile p-00003");
    })
    .await
    .unwrap();

    // Pictures for review.
    let base = p.admin_url("/");
    picture(base.clone(), "fleet-list.png").await;
    picture(tenant_url, "fleet-tenant.png").await;
    picture(format!("{base}#view=orgs&sort=cost"), "fleet-orgs.png").await;
    p.handle.shutdown().await;
}
