//! How a connection to an upstream leaves the host: directly, or through an HTTP proxy's
//! `CONNECT` tunnel (`providers.<name>.proxy`, or `HTTPS_PROXY` / `HTTP_PROXY` /
//! `ALL_PROXY` / `NO_PROXY` read as curl reads them); and one deadline over the whole
//! connect (TCP, tunnel and TLS handshake).
//!
//! The tunnel carries the TLS session end to end: the proxy sees the host name and port,
//! never the request, its credentials or the usage in the response.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::EgressProxy;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The environment variables a proxy for `scheme` is read from, most specific first.
fn env_vars(scheme: &str) -> &'static [&'static str] {
    if scheme == "https" {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    }
}

/// Which proxy, if any, connections are made through.
enum Rule {
    Direct,
    /// From the environment; loopback destinations are always direct.
    Env(Matcher),
    /// From the configuration, for every destination.
    Always(Matcher),
}

/// A TCP connector that opens a `CONNECT` tunnel where the rule says so.
#[derive(Clone)]
pub struct Egress {
    http: HttpConnector,
    rule: Arc<Rule>,
}

impl Egress {
    /// `upstream_scheme` is the scheme of the provider's upstream (`http` or `https`): it
    /// selects which environment variable is checked, so that a malformed proxy variable is
    /// an error at start-up rather than a silently direct connection.
    pub fn new(http: HttpConnector, proxy: &EgressProxy, upstream_scheme: &str) -> Result<Egress, String> {
        let rule = match proxy {
            EgressProxy::Direct => Rule::Direct,
            EgressProxy::Via(url) => {
                crate::config::validate_proxy(url)?;
                Rule::Always(Matcher::builder().all(url.clone()).build())
            }
            EgressProxy::Env => {
                let set = env_vars(upstream_scheme)
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()).map(|s| (*v, s)));
                match set {
                    None => Rule::Direct,
                    Some((var, url)) => {
                        // curl takes a proxy without a scheme as http://.
                        let full = if url.contains("://") { url.clone() } else { format!("http://{url}") };
                        crate::config::validate_proxy(&full).map_err(|m| format!("environment variable {var}: {m} (set `proxy: none` to ignore it)"))?;
                        Rule::Env(Matcher::from_env())
                    }
                }
            }
        };
        Ok(Egress { http, rule: Arc::new(rule) })
    }

    /// The proxy a connection to `dst` goes through, if any.
    fn proxy_for(&self, dst: &Uri) -> Option<hyper_util::client::proxy::matcher::Intercept> {
        match &*self.rule {
            Rule::Direct => None,
            Rule::Env(_) if dst.host().is_some_and(is_loopback) => None,
            Rule::Env(m) | Rule::Always(m) => m.intercept(dst),
        }
    }
}

/// How connections to `upstream` leave, for `spendgate check`: `None` when directly, else
/// the proxy's address (never its credentials) and where it was configured.
pub fn describe(proxy: &EgressProxy, upstream: &str) -> Result<Option<String>, String> {
    let uri: Uri = upstream.parse().map_err(|e| format!("upstream `{upstream}`: {e}"))?;
    let egress = Egress::new(HttpConnector::new(), proxy, uri.scheme_str().unwrap_or("https"))?;
    Ok(egress.proxy_for(&uri).map(|via| {
        let from = if matches!(proxy, EgressProxy::Env) {
            "from the environment"
        } else {
            "configured"
        };
        format!("through the HTTP proxy {} ({from})", via.uri().authority().map_or("", |a| a.as_str()))
    }))
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1`.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `dst` with its scheme's port written out (the tunnel asks for 443 when none is).
fn with_port(dst: Uri) -> Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("http") { 80 } else { 443 };
    let Some(host) = dst.host() else { return dst };
    let mut parts = dst.clone().into_parts();
    match format!("{host}:{port}").parse() {
        Ok(authority) => {
            parts.authority = Some(authority);
            Uri::from_parts(parts).unwrap_or(dst)
        }
        Err(_) => dst,
    }
}

impl Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self.proxy_for(&dst) {
            None => {
                let connecting = self.http.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Some(via) => {
                let proxy = via.uri().clone();
                let mut tunnel = Tunnel::new(proxy.clone(), self.http.clone());
                if let Some(auth) = via.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let dst = with_port(dst);
                let target = dst.authority().map(ToString::to_string).unwrap_or_default();
                let connecting = tunnel.call(dst);
                Box::pin(async move {
                    connecting.await.map_err(|e| {
                        let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                        format!("proxy {} {}: {e}{cause}", proxy.authority().map(|a| a.as_str()).unwrap_or(""), target).into()
                    })
                })
            }
        }
    }
}

/// A connector whose whole connect (everything `inner` does: TCP, tunnel, TLS) must finish
/// within `limit`.
#[derive(Clone)]
pub struct Deadline<C> {
    inner: C,
    limit: Duration,
}

impl<C> Deadline<C> {
    pub fn new(inner: C, limit: Duration) -> Self {
        Deadline { inner, limit }
    }
}

impl<C> Service<Uri> for Deadline<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Connecting<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(format!("connect did not finish within {limit:?}").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "[::1]"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["api.openai.com", "10.0.0.1", "[2001:db8::1]", "localhost.example"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn the_tunnel_is_asked_for_the_schemes_port() {
        assert_eq!(with_port("http://a.test/x".parse().unwrap()).port_u16(), Some(80));
        assert_eq!(with_port("https://a.test".parse().unwrap()).port_u16(), Some(443));
        assert_eq!(with_port("https://a.test:8443".parse().unwrap()).port_u16(), Some(8443));
    }

    #[test]
    fn a_configured_proxy_takes_every_destination_and_direct_none() {
        let via = Egress::new(HttpConnector::new(), &EgressProxy::Via("http://u:p@proxy.test:3128".into()), "https").unwrap();
        let i = via
            .proxy_for(&"https://127.0.0.1:9/".parse().unwrap())
            .expect("configured proxies apply to loopback too");
        assert_eq!(i.uri().authority().unwrap().as_str(), "proxy.test:3128");
        assert!(i.basic_auth().is_some());
        let direct = Egress::new(HttpConnector::new(), &EgressProxy::Direct, "https").unwrap();
        assert!(direct.proxy_for(&"https://api.openai.com/".parse().unwrap()).is_none());
        assert!(Egress::new(HttpConnector::new(), &EgressProxy::Via("socks5://p:1".into()), "https").is_err());
    }
}
