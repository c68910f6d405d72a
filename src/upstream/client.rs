//! The pooled upstream client: hyper-util's legacy client over hyper-rustls (HTTP/1.1 and
//! HTTP/2 chosen by ALPN, SNI), with the trust anchors and egress path of its provider
//! ([`super::tls`], [`super::egress`]); plain HTTP allowed for local upstreams.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::egress::{Deadline, Egress};
use super::tls;
use crate::config::{EgressProxy, TlsRoots};

/// A request body going upstream: the client's body streamed through, or a buffered one.
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;
pub type UpstreamClient = Client<Deadline<HttpsConnector<Egress>>, UpstreamBody>;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// How one upstream is reached.
pub struct ClientOptions<'a> {
    /// Deadline of the whole connect: TCP, proxy tunnel and TLS handshake.
    pub connect_timeout: Duration,
    pub tls_roots: TlsRoots,
    pub tls_ca_file: Option<&'a Path>,
    pub proxy: &'a EgressProxy,
    /// `http` or `https`: which proxy environment variable applies.
    pub scheme: &'a str,
}

impl ClientOptions<'static> {
    /// Public roots, the environment's proxy for HTTPS.
    pub fn public(connect_timeout: Duration) -> Self {
        ClientOptions {
            connect_timeout,
            tls_roots: TlsRoots::Webpki,
            tls_ca_file: None,
            proxy: &EgressProxy::Env,
            scheme: "https",
        }
    }
}

pub fn build(o: ClientOptions<'_>) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // The deadline below covers the whole connect; this one bounds each address tried.
    http.set_connect_timeout(Some(o.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let egress = Egress::new(http, o.proxy, o.scheme)?;
    let roots = tls::root_store(o.tls_roots, o.tls_ca_file)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::client_config(roots))
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(egress);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(Deadline::new(https, o.connect_timeout)))
}
