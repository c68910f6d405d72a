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
use crate::quota::deferred::DeferredCalls;
use crate::quota::ledger::{Store, StoreError};
use crate::quota::limit::LimitSet;
use crate::quota::Retention;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisStore, StoreMetrics};
use crate::store::timed::Timed;
use crate::tenant::OrgCache;
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
    pub fn new(config: Config, config_path: Option<PathBuf>, store: Arc<dyn Store>, clock: Clock) -> Result<Arc<App>, ConfigError> {
        let metrics = Metrics::new(&config.metrics);
        Self::with_metrics(config, config_path, store, clock, metrics)
    }

    /// [`App::new`] with metrics created beforehand (the store records into them too).
    pub fn with_metrics(config: Config, config_path: Option<PathBuf>, store: Arc<dyn Store>, clock: Clock, metrics: Metrics) -> Result<Arc<App>, ConfigError> {
        let runtime = Runtime::new(config)?;
        // Every store call is timed and counted in one place.
        let store: Arc<dyn Store> = Arc::new(Timed::new(store, metrics.store_errors.clone(), metrics.store_duration.clone()));
        let settlements = TaskTracker::new();
        let alerts = Alerts::new(store.clone(), settlements.clone());
        Ok(Arc::new(App {
            runtime: ArcSwap::from_pointee(runtime),
            store,
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

    /// Reads the config file again and swaps it in; on error the old one stays in force.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let result = self.try_reload();
        let label = if result.is_ok() { "success" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[label]).inc();
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

    /// Installs a new configuration (tests and reload).
    pub fn replace_config(&self, config: Config) -> Result<(), ConfigError> {
        let runtime = Runtime::new(config)?;
        for key in crate::config::restart_only_changes(&self.runtime().config, &runtime.config) {
            tracing::warn!(key, "changed in the configuration, but takes effect only after a restart");
        }
        self.metrics.reconfigure(&runtime.config.metrics);
        self.runtime.store(Arc::new(runtime));
        Ok(())
    }
}

/// Builds the configured store; it records its own calls into `metrics`
/// (`store_errors_total`, `store_duration_seconds`).
pub async fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, StoreError> {
    let s = &config.store;
    match s.backend {
        Backend::Memory => Ok(match &s.snapshot {
            Some(path) => Arc::new(MemoryStore::with_snapshot(path.clone(), s.recent_max, s.retention.daily_days)?.max_tags(s.max_tags)),
            None => Arc::new(MemoryStore::new(s.recent_max, s.retention.daily_days).max_tags(s.max_tags)),
        }),
        Backend::Redis => {
            let m = StoreMetrics {
                errors: metrics.store_errors.clone(),
                duration: metrics.store_duration.clone(),
            };
            Ok(Arc::new(RedisStore::open(s, m)?))
        }
    }
}
