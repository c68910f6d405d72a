//! Starting and stopping the whole process: bind every listener, run the planes and the
//! background jobs, and on shutdown drain in-flight requests, wait for their settlements and
//! flush the store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::{open_control, open_store, Access, App};
use crate::config::Config;
use crate::domain::window::Clock;
use crate::metrics::Metrics;
use crate::proxy::{self, DataListener};

/// How often each replica checks the control store's change marker.
const CONTROL_POLL: Duration = Duration::from_millis(250);

/// How long shutdown waits for settlements still being written.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// A running proxy.
pub struct Handle {
    pub app: Arc<App>,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Provider name -> its dedicated listener, for providers with `listen`.
    pub provider_addrs: BTreeMap<String, SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Options for [`start`] beyond the config.
#[derive(Default)]
pub struct Options {
    pub config_path: Option<PathBuf>,
    pub clock: Clock,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Binds every listener and starts serving.
pub async fn start(config: Config, opts: Options) -> anyhow::Result<Handle> {
    // A file-size limit (RLIMIT_FSIZE) fails the store's writes (counted and retried) instead
    // of killing the process: SIGXFSZ (25 on Linux) gets a handler.
    #[cfg(target_os = "linux")]
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25)) {
        tracing::warn!(error = %e, "cannot handle SIGXFSZ");
    }
    // The configuration is checked whole (routes, keys, prices) before the store is opened:
    // a config that cannot serve never creates or takes a database.
    crate::app::Runtime::new(config.clone())?;
    let metrics = Metrics::new(&config.metrics);
    let store = open_store(&config, &metrics, Access::Serve).await.context("cannot open the store")?;
    let control = open_control(&config, Access::Serve).context("cannot open the store's control data")?;
    let app = App::with_parts(config, opts.config_path, store, control, opts.clock, metrics)?;
    // Overrides apply from the first request; an unreachable store leaves the YAML in force
    // until the poll below reads them.
    if let Err(e) = app.refresh_control().await {
        tracing::warn!(error = %e, "cannot read the limit overrides yet; the YAML limits apply until they are read");
    }
    let runtime = app.runtime();
    let cfg = &runtime.config;

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let data = bind(cfg.listen.0, "listen").await?;
    let data_addr = data.local_addr()?;
    let admin = bind(cfg.admin.listen.0, "admin.listen").await?;
    let admin_addr = admin.local_addr()?;
    let mut provider_addrs = BTreeMap::new();
    let mut listeners = vec![DataListener { listener: data, route: None }];
    for route in &runtime.routes {
        if let Some(l) = cfg.providers.get(&*route.name).and_then(|p| p.listen) {
            let listener = bind(l.0, &format!("providers.{}.listen", route.name)).await?;
            provider_addrs.insert(route.name.to_string(), listener.local_addr()?);
            listeners.push(DataListener {
                listener,
                route: Some(route.clone()),
            });
        }
    }
    for l in listeners {
        tasks.spawn(proxy::serve_data(app.clone(), l, rx.clone()));
    }
    let admin_app = app.clone();
    let admin_limits = proxy::ConnLimits {
        grace: Duration::from_secs(5),
        ..proxy::ConnLimits::for_server(&cfg.server)
    };
    tasks.spawn(proxy::serve(admin, rx.clone(), admin_limits, move |req| {
        crate::admin::handle(admin_app.clone(), req)
    }));

    // Alert webhook deliveries.
    if let Some(events) = app.alerts.take_receiver() {
        tasks.spawn(crate::alerts::deliver(events, app.metrics.alerts.clone(), rx.clone()));
    }

    // Reload on file change (SIGHUP and POST /v1/reload also reload).
    if let Some(path) = app.config_path.clone() {
        match crate::reload::watch(app.clone(), path, rx.clone()) {
            Ok(watcher) => {
                tasks.spawn(watcher);
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /v1/reload"),
        }
    }

    // Run-time overrides, grants and resets written by any replica apply here within
    // CONTROL_POLL (plus one store read).
    let control_app = app.clone();
    let mut control_rx = rx.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(CONTROL_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = crate::process::stopped(&mut control_rx) => break,
                _ = tick.tick() => {}
            }
            match control_app.poll_control().await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the limit overrides; the last ones read stay in force");
                }
                Err(_) => {}
            }
        }
    });

    // Periodic store upkeep (the Redis journal, the embedded store's sweep).
    let flush_app = app.clone();
    let interval = cfg.store.snapshot_interval.0;
    let mut flush_rx = rx.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = crate::process::stopped(&mut flush_rx) => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = flush_app.store.flush().await {
                tracing::error!(error = %e, "store flush failed");
            }
        }
    });

    if !admin_addr.ip().is_loopback() && crate::admin::open_to_anyone(&cfg.admin) {
        tracing::warn!(
            %admin_addr,
            token_env = %cfg.admin.token_env,
            "the admin API listens beyond loopback without a token: anyone who reaches it can read usage and reload the configuration; set the token variable"
        );
    }
    tracing::info!(%data_addr, %admin_addr, store = app.store.name(), "spendgate is serving");
    Ok(Handle {
        app,
        data_addr,
        admin_addr,
        provider_addrs,
        shutdown,
        tasks,
    })
}

impl Handle {
    /// Stops accepting, drains in-flight requests (bounded by `server.shutdown_grace`),
    /// waits for their settlements and flushes the store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.app.stopping.cancel();
        self.app.settlements.close();
        if tokio::time::timeout(SETTLE_WAIT, self.app.settlements.wait()).await.is_err() {
            tracing::error!("some settlements did not finish before shutdown");
        }
        if let Err(e) = self.app.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!("spendgate stopped");
    }

    /// Waits for the settlements already started (tests use this before reading the store).
    /// Settlements still running after the shutdown's wait are an error, not something to
    /// wait out: one that never ends is a lost charge.
    pub async fn settled(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        while !self.app.settlements.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{} settlement(s) still running after {SETTLE_WAIT:?}", self.app.settlements.len()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}
