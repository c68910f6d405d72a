//! Process state: the live config generation (swapped atomically on reload), the store, the
//! metrics, the clock, and the tracker of settlements still being written.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::Alerts;
use crate::config::{Backend, Config, ConfigError};
use crate::domain::window::{Calendar, Clock};
use crate::metrics::Metrics;
use crate::pricing::PriceTable;
use crate::process::BodyBudget;
use crate::quota::control::{AuditEntry, ControlCache, ControlStore, LimitEntry};
use crate::quota::deferred::DeferredCalls;
use crate::quota::ledger::{Store, StoreError};
use crate::quota::limit::LimitSet;
use crate::quota::Retention;
use crate::store::control_memory::MemoryControl;
use crate::store::embedded::control::EmbeddedControl;
use crate::store::embedded::{EmbeddedStore, Options as EmbeddedOptions};
use crate::store::redis::control::RedisControl;
use crate::store::redis::{RedisStore, StoreMetrics};
use crate::store::timed::Timed;
use crate::tenant::{OrgCache, TenantHeaders};
use crate::upstream::route::Route;

/// One generation of the configuration, compiled for the request path. Requests take a
/// reference to the generation current when they arrive and finish under it.
pub struct Runtime {
    pub config: Config,
    pub routes: Vec<Arc<Route>>,
    pub prices: PriceTable,
    pub limits: LimitSet,
    pub calendar: Calendar,
    pub retention: Retention,
    /// `config.tenant`'s header names, parsed.
    pub tenant_headers: TenantHeaders,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Runtime, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            source_name: "config".into(),
            key: Some(key.into()),
            line: None,
            message,
        };
        let prices = PriceTable::new(&config).map_err(|m| err("pricing", m))?;
        let mut routes = Vec::with_capacity(config.providers.len());
        for (name, p) in &config.providers {
            routes.push(Arc::new(Route::new(name, p).map_err(|m| err(&format!("providers.{name}"), m))?));
        }
        // Longest prefix first, so that the first match is the most specific.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.as_deref().map_or(0, str::len)));
        Ok(Runtime {
            tenant_headers: TenantHeaders::new(&config.tenant).map_err(|m| err("tenant", m))?,
            limits: LimitSet::new(&config.limits),
            calendar: Calendar::new(config.timezone.0),
            retention: Retention {
                daily_days: config.store.retention.daily_days,
                monthly_months: config.store.retention.monthly_months,
            },
            prices,
            routes,
            config,
        })
    }

    /// The route mounted at the longest prefix of `path`, with the upstream path.
    pub fn route_for<'p>(&self, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        self.routes.iter().find_map(|r| r.strip(path).map(|rest| (r, rest)))
    }
}

/// Everything the planes share.
pub struct App {
    runtime: ArcSwap<Runtime>,
    pub store: Arc<dyn Store>,
    /// Run-time limit overrides, grants, resets and the audit log.
    pub control: Arc<dyn ControlStore>,
    /// The control data compiled for the request path, refreshed from `control`.
    pub control_cache: ControlCache,
    pub metrics: Metrics,
    /// Threshold alerts (dedupe state and the webhook queue).
    pub alerts: Alerts,
    pub clock: Clock,
    /// Settlements still being written (and bodies still being read for their usage after
    /// the client left); shutdown waits for them.
    pub settlements: TaskTracker,
    /// Cancelled when the process stops serving: work still reading upstream bodies
    /// settles at once.
    pub stopping: CancellationToken,
    /// Request bodies buffered at once, over all requests.
    pub body_budget: BodyBudget,
    /// Profile -> org bindings already read from the store.
    pub orgs: OrgCache,
    /// Calls charged their reservation until a later answer reports their usage.
    pub deferred: DeferredCalls,
    /// Where the config came from (None: embedded or given in memory).
    pub config_path: Option<PathBuf>,
}

impl App {
    /// An app whose control data is kept in memory only.
    pub fn new(config: Config, config_path: Option<PathBuf>, store: Arc<dyn Store>, clock: Clock) -> Result<Arc<App>, ConfigError> {
        let metrics = Metrics::new(&config.metrics);
        Self::with_parts(config, config_path, store, Arc::new(MemoryControl::new()), clock, metrics)
    }

    /// [`App::new`] with the control store and metrics created beforehand (the store records
    /// into them too).
    pub fn with_parts(
        config: Config,
        config_path: Option<PathBuf>,
        store: Arc<dyn Store>,
        control: Arc<dyn ControlStore>,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Arc<App>, ConfigError> {
        let runtime = Runtime::new(config)?;
        warn_missing_tokens(&runtime.config);
        // Every store call is timed and counted in one place.
        let store: Arc<dyn Store> = Arc::new(Timed::new(store, metrics.store_errors.clone(), metrics.store_duration.clone()));
        let settlements = TaskTracker::new();
        let alerts = Alerts::new(store.clone(), settlements.clone());
        Ok(Arc::new(App {
            runtime: ArcSwap::from_pointee(runtime),
            store,
            control,
            control_cache: ControlCache::default(),
            metrics,
            alerts,
            clock,
            settlements,
            stopping: CancellationToken::new(),
            body_budget: BodyBudget::default(),
            orgs: OrgCache::default(),
            deferred: DeferredCalls::default(),
            config_path,
        }))
    }

    /// The current configuration generation.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Reads the control data again and installs it for the request path.
    pub async fn refresh_control(&self) -> Result<(), StoreError> {
        let state = self.control.load().await?;
        self.control_cache.install(state);
        Ok(())
    }

    /// Refreshes the control data when the store's change marker has moved.
    pub async fn poll_control(&self) -> Result<(), StoreError> {
        if self.control.version().await? != self.control_cache.load().version {
            self.refresh_control().await?;
        }
        Ok(())
    }

    /// Reads the config file again and swaps it in; on error the old one stays in force.
    /// Run-time overrides are kept apart and stay as they are.
    pub fn reload(&self) -> Result<(), ConfigError> {
        self.reload_by("config")
    }

    /// [`App::reload`], recording `token` as who asked for it in the audit log.
    pub fn reload_by(&self, token: &str) -> Result<(), ConfigError> {
        let old = limits_json(&self.runtime().config);
        let result = self.try_reload();
        let label = if result.is_ok() { "success" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[label]).inc();
        if result.is_ok() {
            self.audit_reload(token, old, limits_json(&self.runtime().config));
        }
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => tracing::error!(error = %e, "configuration reload failed; the previous configuration stays in force"),
        }
        result
    }

    fn try_reload(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError {
                source_name: "<embedded>".into(),
                key: None,
                line: None,
                message: "the proxy runs on the embedded configuration; there is no file to reload".into(),
            });
        };
        let config = Config::from_file(path)?;
        self.replace_config(config)
    }

    /// Records a reload in the audit log, in the background (reload runs on a blocking thread).
    fn audit_reload(&self, token: &str, old: serde_json::Value, new: serde_json::Value) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let entry = AuditEntry {
            at: self.clock.now(),
            token: token.to_string(),
            action: "config_reload".into(),
            tenant: None,
            old,
            new,
            reason: self.config_path.as_ref().map(|p| format!("reloaded {}", p.display())),
        };
        let control = self.control.clone();
        rt.spawn(async move {
            if let Err(e) = control.append_audit(&entry).await {
                tracing::warn!(error = %e, "the config reload could not be recorded in the audit log");
            }
        });
    }

    /// Installs a new configuration (tests and reload).
    pub fn replace_config(&self, config: Config) -> Result<(), ConfigError> {
        let runtime = Runtime::new(config)?;
        for key in crate::config::restart_only_changes(&self.runtime().config, &runtime.config) {
            tracing::warn!(key, "changed in the configuration, but takes effect only after a restart");
        }
        warn_missing_tokens(&runtime.config);
        self.metrics.reconfigure(&runtime.config.metrics);
        self.runtime.store(Arc::new(runtime));
        Ok(())
    }
}

/// A named admin token whose variable is not set is disabled: say so.
fn warn_missing_tokens(c: &Config) {
    for t in &c.admin.tokens {
        if std::env::var_os(&t.env).is_none() {
            tracing::warn!(token = %t.name, env = %t.env, "the variable of this admin token is not set; the token is disabled");
        }
    }
}

/// The YAML limits of a config, as the audit log records them (large configs are summarised).
fn limits_json(c: &Config) -> serde_json::Value {
    let list = |l: &Vec<crate::config::LimitSpec>| l.iter().map(LimitEntry::from_spec).collect::<Vec<_>>();
    let v = serde_json::json!({
        "default_profile": list(&c.limits.default_profile),
        "default_org": list(&c.limits.default_org),
        "profiles": c.limits.profiles.iter().map(|(k, l)| (k.clone(), list(l))).collect::<std::collections::BTreeMap<_, _>>(),
        "orgs": c.limits.orgs.iter().map(|(k, l)| (k.clone(), list(l))).collect::<std::collections::BTreeMap<_, _>>(),
    });
    if v.to_string().len() > 64 * 1024 {
        return serde_json::json!({"named_profiles": c.limits.profiles.len(), "named_orgs": c.limits.orgs.len(), "note": "too large to record whole"});
    }
    v
}

/// Builds the configured control store: in the embedded store's database (opened by
/// [`open_store`] before), or in Redis.
pub fn open_control(config: &Config, access: Access) -> Result<Arc<dyn ControlStore>, StoreError> {
    let s = &config.store;
    Ok(match s.backend {
        Backend::Memory => Arc::new(EmbeddedControl::open(&s.path, access == Access::Serve).map_err(|e| StoreError::Unavailable(e.to_string()))?),
        Backend::Redis => Arc::new(RedisControl::open(s)?),
    })
}

/// Who opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The proxy: owns the embedded database (one process at a time) and writes it.
    Serve,
    /// Reports and checks: reads what is committed, next to a running proxy.
    Read,
}

/// Builds the configured store; it records its own calls into `metrics`
/// (`store_errors_total`, `store_duration_seconds`).
pub async fn open_store(config: &Config, metrics: &Metrics, access: Access) -> Result<Arc<dyn Store>, StoreError> {
    let s = &config.store;
    match s.backend {
        Backend::Memory => {
            let opts = EmbeddedOptions::from_config(s);
            let opened = match access {
                Access::Serve => {
                    let errors = metrics.store_errors.with_label_values(&["persist"]);
                    tokio::task::spawn_blocking(move || EmbeddedStore::open(opts, errors))
                        .await
                        .map_err(|e| StoreError::Other(e.to_string()))?
                }
                Access::Read => EmbeddedStore::open_read_only(opts),
            };
            Ok(Arc::new(opened.map_err(|e| StoreError::Unavailable(e.to_string()))?))
        }
        Backend::Redis => {
            let m = StoreMetrics {
                errors: metrics.store_errors.clone(),
                duration: metrics.store_duration.clone(),
            };
            Ok(Arc::new(RedisStore::open(s, m)?))
        }
    }
}
