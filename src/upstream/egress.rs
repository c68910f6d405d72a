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

/// The environment variables a proxy for an `https://` upstream is read from, in order; the
/// first that is set and not empty is used.
const HTTPS_PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

fn first_env(vars: &[&'static str]) -> Option<(&'static str, String)> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()).map(|s| (*v, s)))
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
    /// `upstream_scheme` is the scheme of the provider's upstream: the environment's proxy
    /// applies to `https` only (a tunnel would carry an `http` upstream's requests in clear
    /// text, and proxies refuse `CONNECT` to port 80 by default). A malformed or unsupported
    /// proxy variable is an error here, at start-up, rather than a connection made some other
    /// way than the operator meant.
    pub fn new(http: HttpConnector, proxy: &EgressProxy, upstream_scheme: &str) -> Result<Egress, String> {
        let rule = match proxy {
            EgressProxy::Direct => Rule::Direct,
            EgressProxy::Via(url) => {
                crate::config::validate_proxy(url)?;
                Rule::Always(Matcher::builder().all(url.clone()).build())
            }
            EgressProxy::Env if upstream_scheme != "https" => Rule::Direct,
            EgressProxy::Env => match first_env(&HTTPS_PROXY_VARS) {
                None => Rule::Direct,
                Some((var, url)) => {
                    // A proxy without a scheme is taken as http://, as curl does.
                    let full = if url.contains("://") { url.clone() } else { format!("http://{url}") };
                    crate::config::validate_proxy(&full)
                        .map_err(|m| format!("environment variable {var}: {m} (set the provider's `proxy: none` to ignore it)"))?;
                    // Built from the very value checked (not read again by other rules).
                    let no = first_env(&NO_PROXY_VARS).map(|(_, v)| v).unwrap_or_default();
                    Rule::Env(Matcher::builder().https(full).no(no).build())
                }
            },
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

/// Why a connection could not be made, beyond what the socket says: the egress proxy, or the
/// connect deadline. The full text (with the proxy's address) is for the log; [`public`]
/// is what the caller of the proxy is told.
///
/// [`public`]: EgressError::public
#[derive(Debug)]
pub enum EgressError {
    Tunnel { proxy: String, target: String, source: BoxError },
    Deadline(Duration),
}

impl EgressError {
    /// The reason without the proxy's address or the network's internals.
    pub fn public(&self) -> String {
        match self {
            EgressError::Tunnel { source, .. } => format!("the egress proxy did not open a tunnel ({source})"),
            EgressError::Deadline(d) => format!("the connection did not finish within {d:?}"),
        }
    }
}

impl std::fmt::Display for EgressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EgressError::Tunnel { proxy, target, source } => write!(f, "CONNECT {target} through the proxy {proxy}: {}", causes(&**source)),
            EgressError::Deadline(d) => write!(f, "connect (TCP, proxy tunnel and TLS handshake) did not finish within {d:?}"),
        }
    }
}

impl std::error::Error for EgressError {}

/// An error and its sources, `outer: inner: innermost`, a source whose text the outer one
/// already shows left out (hyper's outer layers only say "client error (Connect)").
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(inner) = next {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = inner.source();
    }
    out
}

/// What the caller of the proxy is told about a failed connect: the egress proxy's or the
/// deadline's reason, a TLS failure (the certificate), or the socket's error kind; never an
/// address.
pub fn public_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut next = Some(e);
    while let Some(mut cur) = next {
        // An I/O error shows its inner error's text but not as its source: look inside (TLS
        // errors come as an I/O error wrapped in another).
        while let Some(inner) = cur.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            cur = inner;
        }
        if let Some(egress) = cur.downcast_ref::<EgressError>() {
            return egress.public();
        }
        if let Some(tls) = cur.downcast_ref::<rustls::Error>() {
            return format!("TLS handshake failed: {tls}");
        }
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            return format!("connect failed: {}", io.kind());
        }
        next = cur.source();
    }
    "connect failed".into()
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
                        let proxy = proxy.authority().map(ToString::to_string).unwrap_or_default();
                        Box::new(EgressError::Tunnel {
                            proxy,
                            target,
                            source: Box::new(e),
                        }) as BoxError
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
                Err(_) => Err(Box::new(EgressError::Deadline(limit)) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_is_told_the_reason_without_addresses() {
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(public_reason(&tls), "TLS handshake failed: invalid peer certificate: UnknownIssuer");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(public_reason(&refused), "connect failed: connection refused");
        let tunnel = EgressError::Tunnel {
            proxy: "10.0.0.5:3128".into(),
            target: "api.openai.com:443".into(),
            source: "tunnel error: unsuccessful".into(),
        };
        assert!(tunnel.to_string().contains("10.0.0.5:3128"), "the log has the address");
        let told = public_reason(&std::io::Error::other(tunnel));
        assert_eq!(told, "the egress proxy did not open a tunnel (tunnel error: unsuccessful)");
        assert_eq!(
            public_reason(&EgressError::Deadline(Duration::from_millis(300))),
            "the connection did not finish within 300ms"
        );
    }

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
        let plain = via.proxy_for(&"http://127.0.0.1:9/".parse().unwrap());
        assert!(plain.is_some(), "a configured proxy takes http:// upstreams too");
        let i = via
            .proxy_for(&"https://127.0.0.1:9/".parse().unwrap())
            .expect("configured proxies apply to loopback too");
        assert_eq!(i.uri().authority().unwrap().as_str(), "proxy.test:3128");
        assert!(i.basic_auth().is_some());
        let direct = Egress::new(HttpConnector::new(), &EgressProxy::Direct, "https").unwrap();
        assert!(direct.proxy_for(&"https://api.openai.com/".parse().unwrap()).is_none());
        assert!(Egress::new(HttpConnector::new(), &EgressProxy::Via("socks5://p:1".into()), "https").is_err());
        let e = Egress::new(HttpConnector::new(), &EgressProxy::Via("https://user:s3cr@t@p:1".into()), "https")
            .err()
            .unwrap();
        assert!(!e.contains("s3cr"), "credentials are not shown: {e}");
        assert!(e.contains("***@p:1"), "{e}");
    }
}
