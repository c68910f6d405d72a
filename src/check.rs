//! `spendgate check`: validate a config and print what it sets up.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::app::{open_store, Runtime};
use crate::config::Config;
use crate::quota::limit::Scope;

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
    let _ = writeln!(out, "unpriced    {:?}", c.unpriced);
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
    }
    let _ = writeln!(out, "\nlimits:");
    let mut any = false;
    let mut print_list = |who: &str, list: &[crate::config::LimitSpec]| {
        for l in list {
            any = true;
            let filter = l.matcher.as_ref().map(|m| format!(" match {m:?}")).unwrap_or_default();
            let state = match (l.enabled, l.mode) {
                (false, _) => " (disabled)",
                (true, crate::quota::limit::Mode::Shadow) => " (shadow)",
                _ => "",
            };
            let _ = writeln!(
                out,
                "  {who:<24} {:<8} {:<11} max {}{filter}{state}",
                l.window.as_str(),
                l.metric.as_str(),
                l.max.0
            );
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
    let named = runtime.limits.named(Scope::Profile).count() + runtime.limits.named(Scope::Org).count();
    let _ = writeln!(out, "\n{} routes, {named} named tenants", c.providers.len());
    Ok(out)
}

fn describe_price(spec: &crate::config::PriceSpec) -> String {
    let v = serde_json::to_value(format!("{spec:?}")).unwrap_or_default();
    v.as_str().unwrap_or_default().replace("Some(NonNegative(", "").replace("))", "")
}

/// Runs the command; prints the summary or the error.
pub async fn run(path: Option<&Path>, skip_store: bool) -> ExitCode {
    let config = match path {
        Some(p) => Config::from_file(p),
        None => Ok(Config::embedded_default()),
    };
    let config = match config {
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
            crate::config::Backend::Memory => String::new(),
            crate::config::Backend::Redis => format!(
                " at {}{}",
                crate::store::redis::conn::redact(&config.store.url),
                if config.store.cluster { " (cluster)" } else { "" }
            ),
        };
        let metrics = crate::metrics::Metrics::new(&config.metrics);
        let reachable = match open_store(&config, &metrics).await {
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
    }
    println!("valid");
    ExitCode::SUCCESS
}
