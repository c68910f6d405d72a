//! `spendgate usage --config FILE [--profile ID | --org ID] [--range 30d | --from D [--to D]]
//! [--by tag|provider|model] [--json]`: usage against limits, read from the configured store.
//! `--by` prints one breakdown instead: of the tenant, or of the whole fleet (every profile)
//! without one.

use std::path::Path;
use std::process::ExitCode;

use crate::app::{open_control, open_store, Access, App};
use crate::config::Config;
use crate::domain::window::Clock;
use crate::domain::Scope;

use super::{breakdown, json, listing, range_from, report, table, By};

/// Which tenants to print.
pub enum Target {
    All,
    One(Scope, String),
}

/// The span asked for on the command line: `--range`, or `--from` (and `--to`).
#[derive(Debug, Clone, Default)]
pub struct RangeArgs {
    pub range: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

pub async fn run(path: Option<&Path>, target: Target, span: &RangeArgs, by: Option<&str>, as_json: bool) -> ExitCode {
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
    let today = crate::domain::window::Calendar::new(config.timezone.0).local_date(chrono::Utc::now());
    let range = match range_from(
        span.range.as_deref(),
        span.from.as_deref(),
        span.to.as_deref(),
        config.store.retention.daily_days,
        today,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = crate::metrics::Metrics::new(&config.metrics);
    let store = match open_store(&config, &metrics, Access::Read).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let control = match open_control(&config, Access::Read) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot open the store's control data: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::with_parts(config, None, store, control, Clock::system(), metrics) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Limits as the proxy applies them: run-time overrides, top-ups and resets included.
    if let Err(e) = app.refresh_control().await {
        eprintln!("error: cannot read the limit overrides: {e}");
        return ExitCode::FAILURE;
    }
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
                match listing(&app, scope, 0, None, None).await {
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
