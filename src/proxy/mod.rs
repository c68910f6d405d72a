//! The data plane: listeners, connections and graceful drain. The request path itself is in
//! [`handler`], in three phases: [`admit`], [`forward`], [`meter`] (which [`settle`]s).

pub mod admit;
pub mod forward;
pub mod handler;
pub mod headers;
mod idle;
pub mod meter;
pub mod ratelimit;
pub mod reply;
mod repoll;
pub mod settle;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::upstream::route::Route;
use idle::Activity;

/// Limits of client connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// On shutdown, how long open connections may take to finish their requests.
    pub grace: Duration,
    /// Interval (and timeout) of HTTP/2 keep-alive pings.
    pub h2_keepalive: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
}

impl ConnLimits {
    pub fn for_server(cfg: &crate::config::ServerConfig) -> Self {
        Self {
            grace: cfg.shutdown_grace.0,
            h2_keepalive: cfg.h2_keepalive.0,
            idle: cfg.idle_timeout.0,
        }
    }
}

/// Serves connections from `listener` until `shutdown` flips to true, then stops accepting
/// and lets open connections finish their in-flight requests for up to `limits.grace`.
pub async fn serve<F, Fut, B>(listener: TcpListener, mut shutdown: watch::Receiver<bool>, limits: ConnLimits, handler: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(limits.h2_keepalive)
        .max_concurrent_streams(1024);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = crate::process::stopped(&mut shutdown) => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let activity = Activity::new();
        let tracked = activity.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            let guard = tracked.begin();
            async move { Ok::<_, Infallible>(handler(req).await.map(|body| idle::Tracked::new(body, guard))) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = repoll::Repoll::new(graceful.watch(conn));
        let idle = limits.idle;
        tokio::spawn(async move {
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    r = &mut conn => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = tokio::time::sleep(activity.idle_check(idle)) => {
                        if activity.idle_for() >= idle {
                            tracing::debug!("closing a client connection idle for {idle:?}");
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
}

/// A bound data-plane listener: the shared one (routes by prefix) or a provider's own.
pub struct DataListener {
    pub listener: TcpListener,
    pub route: Option<Arc<Route>>,
}

impl DataListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves a data-plane listener.
pub async fn serve_data(app: Arc<App>, l: DataListener, shutdown: watch::Receiver<bool>) {
    let limits = ConnLimits::for_server(&app.runtime().config.server);
    let route = l.route;
    serve(l.listener, shutdown, limits, move |req| handler::handle(app.clone(), req, route.clone())).await;
}
