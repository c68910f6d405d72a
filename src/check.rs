//! `spendgate check`: validate a config and print what it sets up.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::app::{open_control, open_store, Access, Runtime};
use crate::config::{Config, LimitSpec, MatchSpec, NonNegative, PriceSpec, TlsRoots, Unpriced};
use crate::domain::Scope;
use crate::pricing;
use crate::quota::control::ControlState;

/// Renders the summary of a valid config.
pub fn summary(config: &Config) -> Result<String, String> {
    let runtime = Runtime::new(config.clone()).map_err(|e| e.to_string())?;
    let c = &runtime.config;
    let mut out = String::new();
    let _ = writeln!(out, "listen      {}", c.listen);
    let _ = writeln!(out, "admin       {}", c.admin.listen);
    let _ = writeln!(out, "timezone    {}", c.timezone.0);
    let _ = writeln!(out, "store       {:?} (on_error: {:?})", c.store.backend, c.store.on_error);
    let _ = writeln!(
        out,
        "tenant      profile header {}, org header {}",
        c.tenant.profile_header,
        c.tenant.org_header.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(out, "unpriced    {}", unpriced_name(c.unpriced));
    let _ = writeln!(out, "\nroutes:");
    for (name, p) in &c.providers {
        let mount = match (&p.prefix, &p.listen) {
            (Some(pre), Some(l)) => format!("{pre} and {l}"),
            (Some(pre), None) => pre.clone(),
            (None, Some(l)) => format!("{l} (dedicated)"),
            (None, None) => String::new(),
        };
        let key = p.api_key_env.as_deref().map(|e| format!(", key from ${e}")).unwrap_or_default();
        let _ = writeln!(out, "  {name:<12} {:<10} {mount:<20} -> {}{key}", p.kind.as_str(), p.upstream);
        let mut transport = Vec::new();
        if p.tls_roots != TlsRoots::Webpki || p.tls_ca_file.is_some() {
            let roots = match p.tls_roots {
                TlsRoots::Webpki => Some("the built-in roots"),
                TlsRoots::System => Some("the system store"),
                TlsRoots::None => None,
            };
            let file = p.tls_ca_file.as_ref().map(|f| f.display().to_string());
            transport.push(format!(
                "trusts {}",
                [roots.map(str::to_string), file].into_iter().flatten().collect::<Vec<_>>().join(" and ")
            ));
        }
        if let Some(via) = crate::upstream::egress::describe(&p.proxy, &p.upstream)? {
            transport.push(via);
        }
        if !transport.is_empty() {
            let _ = writeln!(out, "  {:<12} {}", "", transport.join("; "));
        }
    }
    let _ = writeln!(out, "\nlimits:");
    let mut any = false;
    let mut print_list = |who: &str, list: &[LimitSpec]| {
        for l in list {
            any = true;
            limit_line(&mut out, who, l, "");
        }
    };
    print_list("default profile", &c.limits.default_profile);
    print_list("default org", &c.limits.default_org);
    for (id, l) in &c.limits.profiles {
        print_list(&format!("profile {id}"), l);
    }
    for (id, l) in &c.limits.orgs {
        print_list(&format!("org {id}"), l);
    }
    if !any {
        let _ = writeln!(out, "  (none: requests are metered but never refused)");
    }
    let _ = writeln!(out, "\nprice overrides:");
    if c.pricing.is_empty() {
        let _ = writeln!(out, "  (none: built-in list prices)");
    }
    for (provider, models) in &c.pricing {
        for (model, spec) in models {
            let _ = writeln!(out, "  {provider:<12} {model:<32} {}", describe_price(spec));
        }
    }
    write_unpriced(&mut out, &runtime)?;
    let named = runtime.limits.named(Scope::Profile).count() + runtime.limits.named(Scope::Org).count();
    let _ = writeln!(out, "\n{} routes, {named} named tenants", c.providers.len());
    Ok(out)
}

/// The run-time overrides, top-ups and resets kept in the store, layered over the YAML above.
pub fn overrides(state: &ControlState) -> String {
    let mut out = String::from("\nrun-time overrides in the store (layered over the YAML; a reload keeps them):\n");
    if state.tenants.is_empty() {
        out.push_str("  (none)\n");
    }
    for (t, rec) in &state.tenants {
        let who = format!("{} {}", t.scope, t.id);
        match &rec.limits {
            Some(list) if list.is_empty() => {
                let _ = writeln!(out, "  {who:<24} override: no limits");
            }
            Some(list) => {
                for l in list {
                    match l.to_spec() {
                        Ok(spec) => limit_line(&mut out, &who, &spec, " (override)"),
                        Err(e) => {
                            let _ = writeln!(out, "  {who:<24} override not readable: {e}");
                        }
                    }
                }
            }
            None => {}
        }
        for g in &rec.grants {
            let _ = writeln!(
                out,
                "  {who:<24} {:<8} {:<11} top-up +{} for {} ({})",
                g.window.as_str(),
                g.metric.as_str(),
                g.metric.describe(g.amount),
                g.bucket,
                g.reason
            );
        }
        for r in &rec.resets {
            let _ = writeln!(
                out,
                "  {who:<24} {:<8} {:<11} reset at {} ({})",
                r.window.as_str(),
                r.metric.as_str(),
                r.at.to_rfc3339(),
                r.reason
            );
        }
    }
    out
}

/// Every limit list with the key it lives under.
fn limit_lists(c: &Config) -> Vec<(String, &[LimitSpec])> {
    let mut lists = vec![
        ("limits.default_profile".to_string(), c.limits.default_profile.as_slice()),
        ("limits.default_org".to_string(), c.limits.default_org.as_slice()),
    ];
    lists.extend(c.limits.profiles.iter().map(|(id, l)| (format!("limits.profiles.{id}"), l.as_slice())));
    lists.extend(c.limits.orgs.iter().map(|(id, l)| (format!("limits.orgs.{id}"), l.as_slice())));
    lists
}

/// Per route: its price table, and the models the config names for it (in limit matches and
/// price overrides) that have no price.
fn write_unpriced(out: &mut String, runtime: &Runtime) -> Result<(), String> {
    let c = &runtime.config;
    let builtin = pricing::builtin()?;
    let policy = match c.unpriced {
        Unpriced::Default => "charged the provider's highest listed rates",
        Unpriced::Reject => "refused with 402",
        Unpriced::Zero => "free",
    };
    let _ = writeln!(
        out,
        "\nprices and unpriced models by route (unpriced: {}, so an unpriced model is {policy}):",
        unpriced_name(c.unpriced)
    );
    for (name, p) in &c.providers {
        let table = pricing::price_kind(p.kind);
        // Overrides apply by provider name and by kind (the same key when they are equal).
        let mut keys = vec![name.as_str(), p.kind.as_str()];
        keys.dedup();
        let overrides: usize = keys.iter().filter_map(|k| c.pricing.get(*k)).map(|m| m.len()).sum();
        let builtin_models = builtin.get(table).map_or(0, |m| m.len());
        let table_text = if builtin_models == 0 {
            "no built-in prices".to_string()
        } else {
            format!("built-in {table} prices ({builtin_models} models)")
        };
        let _ = writeln!(out, "  {name:<12} {table_text}, {overrides} overrides");

        let mut unpriced: Vec<String> = Vec::new();
        for (key, list) in limit_lists(c) {
            for (i, l) in list.iter().enumerate() {
                let Some(m) = &l.matcher else { continue };
                let Some(model) = &m.model else { continue };
                let applies = m.provider.as_deref().is_none_or(|pr| pr == name || pr == p.kind.as_str());
                if applies && !runtime.prices.model_glob_is_priced(name, p.kind, model) {
                    unpriced.push(format!("\"{}\" ({key}[{i}].match.model)", model.as_str()));
                }
            }
        }
        for key in keys {
            for (model, spec) in c.pricing.get(key).into_iter().flatten() {
                if *spec == PriceSpec::default() {
                    unpriced.push(format!("\"{model}\" (pricing.{key}: no rates set, so free)"));
                }
            }
        }
        unpriced.dedup();
        if unpriced.is_empty() {
            let _ = writeln!(out, "  {:<12} every model named in the config is priced", "");
        }
        for u in unpriced {
            let _ = writeln!(out, "  {:<12} unpriced: {u}", "");
        }
    }
    Ok(())
}

fn unpriced_name(u: Unpriced) -> &'static str {
    match u {
        Unpriced::Default => "default",
        Unpriced::Reject => "reject",
        Unpriced::Zero => "zero",
    }
}

/// One limit, as `check` lists it.
fn limit_line(out: &mut String, who: &str, l: &LimitSpec, suffix: &str) {
    let filter = l.matcher.as_ref().map(|m| format!(" match {}", describe_match(m))).unwrap_or_default();
    let state = match (l.enabled, l.mode) {
        (false, _) => " (disabled)",
        (true, crate::domain::Mode::Shadow) => " (shadow)",
        _ => "",
    };
    let _ = writeln!(
        out,
        "  {who:<24} {:<8} {:<11} max {}{filter}{state}{suffix}",
        l.window.as_str(),
        l.metric.as_str(),
        l.max.0
    );
}

/// A limit's `match`, as it would be written in the config.
fn describe_match(m: &MatchSpec) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &m.provider {
        parts.push(format!("provider: {p}"));
    }
    if let Some(model) = &m.model {
        parts.push(format!("model: \"{}\"", model.as_str()));
    }
    if let Some(path) = &m.path {
        parts.push(format!("path: \"{}\"", path.as_str()));
    }
    if let Some(tag) = &m.tag {
        parts.push(format!("tag: \"{}\"", tag.as_str()));
    }
    format!("{{{}}}", parts.join(", "))
}

/// The rates a price entry sets, in USD with their units.
fn describe_price(spec: &PriceSpec) -> String {
    let mut parts = Vec::new();
    let mut add = |label: &str, value: Option<NonNegative>, unit: &str| {
        if let Some(v) = value {
            parts.push(format!("{label} ${}{unit}", v.0));
        }
    };
    add("input", spec.input_per_mtok, "/Mtok");
    add("cached input", spec.cached_input_per_mtok, "/Mtok");
    add("cache write", spec.cache_write_per_mtok, "/Mtok");
    add("cache write 1h", spec.cache_write_1h_per_mtok, "/Mtok");
    add("output", spec.output_per_mtok, "/Mtok");
    add("audio input", spec.audio_input_per_mtok, "/Mtok");
    add("audio output", spec.audio_output_per_mtok, "/Mtok");
    add("image output", spec.image_output_per_mtok, "/Mtok");
    add("characters", spec.per_1k_chars, "/1K");
    add("characters", spec.per_1m_chars, "/1M");
    add("image", spec.per_image, " each");
    add("video", spec.per_video_second, "/s");
    add("audio", spec.per_audio_hour, "/h");
    add("request", spec.per_request, " each");
    add("web search", spec.per_web_search, " each");
    add("file search", spec.per_file_search, " each");
    add("code container", spec.per_code_session, " each");
    if let Some(lc) = &spec.long_context {
        let mut long = Vec::new();
        for (label, v) in [
            ("input", lc.input_per_mtok),
            ("cached input", lc.cached_input_per_mtok),
            ("output", lc.output_per_mtok),
        ] {
            if let Some(v) = v {
                long.push(format!("{label} ${}/Mtok", v.0));
            }
        }
        parts.push(format!("above {} prompt tokens: {}", lc.above_tokens, long.join(", ")));
    }
    if parts.is_empty() {
        "no rates (free)".into()
    } else {
        parts.join(", ")
    }
}

/// Runs the command; prints the summary or the error.
pub async fn run(path: Option<&Path>, skip_store: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::FAILURE;
        }
    };
    match summary(&config) {
        Ok(s) => print!("{s}"),
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !skip_store {
        let where_ = match config.store.backend {
            crate::config::Backend::Memory => format!(" at {}", config.store.path.display()),
            crate::config::Backend::Redis => format!(
                " at {}{}",
                crate::store::redis::conn::redact(&config.store.url),
                if config.store.cluster { " (cluster)" } else { "" }
            ),
        };
        let metrics = crate::metrics::Metrics::new(&config.metrics);
        if config.store.backend == crate::config::Backend::Memory && !config.store.path.exists() {
            // The proxy creates the database at start; its directory must be writable then.
            println!("store       embedded{where_}: not created yet (the proxy creates it at start)");
            println!("valid");
            return ExitCode::SUCCESS;
        }
        let reachable = match open_store(&config, &metrics, Access::Read).await {
            Ok(store) => store.ping().await.map(|()| store.name()),
            Err(e) => Err(e),
        };
        match reachable {
            Ok(name) => println!("store       {name}{where_}: reachable"),
            Err(e) => {
                eprintln!("store unreachable{where_}: {e} (--skip-store checks the file only)");
                return ExitCode::FAILURE;
            }
        }
        let state = match open_control(&config, Access::Read) {
            Ok(control) => control.load().await,
            Err(e) => Err(e),
        };
        match state {
            Ok(state) => print!("{}", overrides(&state)),
            Err(e) => {
                eprintln!("the store's limit overrides cannot be read{where_}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("valid");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_unpriced_models_per_route_and_prints_prices() {
        let yaml = r#"
providers:
  openai: {kind: openai, prefix: /openai, upstream: "http://127.0.0.1:1"}
  gemini: {kind: gemini, prefix: /gemini, upstream: "http://127.0.0.1:1"}
pricing:
  gemini:
    "gemini-2.5-flash": {input_per_mtok: 0.30, output_per_mtok: 2.50, long_context: {above_tokens: 200000, input_per_mtok: 0.6}}
    "free-model": {}
limits:
  orgs:
    acme:
      - {metric: requests, window: daily, max: 50, match: {provider: gemini, model: "imagen-*"}}
      - {metric: requests, window: daily, max: 5, match: {model: "davinci-*", path: "/v1/images/*"}}
"#;
        let config = Config::from_yaml(yaml, "t.yaml").unwrap();
        let out = summary(&config).unwrap();
        assert!(
            out.contains("gemini-2.5-flash                 input $0.3/Mtok, output $2.5/Mtok, above 200000 prompt tokens: input $0.6/Mtok"),
            "{out}"
        );
        assert!(out.contains("match {model: \"davinci-*\", path: \"/v1/images/*\"}"), "{out}");
        // A route's lines: its header and the indented lines under it.
        let route = |name: &str| {
            let header = format!("  {name:<12} built-in");
            let mut lines = out.lines().skip_while(|l| !l.starts_with(&header));
            let first = lines.next().unwrap_or_else(|| panic!("no {name} route in {out}"));
            let rest: Vec<&str> = lines.take_while(|l| l.starts_with(&" ".repeat(15))).collect();
            format!("{first}\n{}", rest.join("\n"))
        };
        let openai = route("openai");
        assert!(openai.contains("unpriced: \"davinci-*\" (limits.orgs.acme[1].match.model)"), "{openai}");
        assert!(!openai.contains("imagen"), "{openai}");
        let gemini = route("gemini");
        assert!(gemini.contains("unpriced: \"davinci-*\""), "{gemini}");
        assert!(gemini.contains("unpriced: \"free-model\" (pricing.gemini: no rates set, so free)"), "{gemini}");
        assert!(!gemini.contains("imagen"), "{gemini}");
        assert!(gemini.contains("2 overrides"), "{gemini}");
    }
}
