//! `spendgate usage --config FILE [--profile ID | --org ID] [--range 30d] [--by tag|provider|model] [--json]`:
//! usage against limits, read from the configured store (Redis, or the memory store's snapshot
//! file as last written by the proxy). `--by` prints one breakdown instead: of the tenant, or
//! of the whole fleet (every profile) without one.

use std::path::Path;
use std::process::ExitCode;

use crate::app::{open_store, App};
use crate::config::{Backend, Config};
use crate::domain::window::Clock;
use crate::domain::Scope;

use super::{breakdown, json, listing, report, table, By, Range};

/// Which tenants to print.
pub enum Target {
    All,
    One(Scope, String),
}

pub async fn run(path: Option<&Path>, target: Target, range: &str, by: Option<&str>, as_json: bool) -> ExitCode {
    let by = match by.map(By::parse).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.store.backend == Backend::Memory && config.store.snapshot.is_none() {
        eprintln!(
            "note: the memory store without `store.snapshot` keeps its counters inside the running proxy only; \
             read them from its admin API (GET /v1/profiles) instead"
        );
    }
    let range = match Range::parse(range, config.store.retention.daily_days) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = crate::metrics::Metrics::new(&config.metrics);
    let store = match open_store(&config, &metrics).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::new(config, None, store, Clock::system()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(by) = by {
        let tenant = match &target {
            Target::One(scope, id) => Some((*scope, id.as_str())),
            Target::All => None,
        };
        return match breakdown(&app, tenant, by, &range).await {
            Ok(map) if as_json => {
                println!("{:#}", json::breakdown(tenant, by, &range, &map));
                ExitCode::SUCCESS
            }
            Ok(map) => {
                let who = tenant.map_or_else(|| "all profiles".to_string(), |(s, id)| format!("{} {id}", s.as_str()));
                print!("{}", table::breakdown(&format!("{who}  (range {})", range.label), by, &map));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match target {
        Target::One(scope, id) => match report(&app, scope, &id, range).await {
            Ok(Some(r)) => {
                if as_json {
                    println!("{:#}", json::report(&r));
                } else {
                    print!("{}", table::report(&r));
                }
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("no {scope} `{id}` is named in the config or has usage on record");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Target::All => {
            for scope in [Scope::Profile, Scope::Org] {
                match listing(&app, scope, 0, None).await {
                    Ok(l) if as_json => println!("{:#}", json::listing(&l)),
                    Ok(l) => println!("{}", table::listing(&l)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}
