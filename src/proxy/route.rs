//! A configured provider mount: its prefix, its upstream, its provider module and the pooled
//! HTTP client that reaches it.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use super::client::{self, UpstreamClient};
use crate::config::{ProviderConfig, ProviderKind};
use crate::providers::{self, Provider};

pub struct Route {
    pub name: String,
    pub kind: ProviderKind,
    pub prefix: Option<String>,
    pub provider: Arc<dyn Provider>,
    scheme: Scheme,
    authority: Authority,
    /// Path of the upstream URL without a trailing slash ("" for none).
    base_path: String,
    pub read_idle: Duration,
    pub client: UpstreamClient,
    /// The environment variable holding the key to inject, if any.
    pub api_key_env: Option<String>,
}

impl Route {
    pub fn new(name: &str, cfg: &ProviderConfig) -> Result<Route, String> {
        let uri: Uri = cfg.upstream.parse().map_err(|e| format!("upstream `{}`: {e}", cfg.upstream))?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.ok_or("upstream has no scheme")?;
        let authority = parts.authority.ok_or("upstream has no host")?;
        let base_path = parts.path_and_query.map(|p| p.path().trim_end_matches('/').to_string()).unwrap_or_default();
        Ok(Route {
            name: name.to_string(),
            kind: cfg.kind,
            prefix: cfg.prefix.clone(),
            provider: providers::for_kind(cfg.kind),
            scheme,
            authority,
            base_path,
            read_idle: cfg.timeouts.read_idle.0,
            client: client::build(cfg.timeouts.connect.0),
            api_key_env: cfg.api_key_env.clone(),
        })
    }

    /// The upstream path for a request path, when this route's prefix mounts it.
    pub fn strip<'p>(&self, path: &'p str) -> Option<&'p str> {
        let prefix = self.prefix.as_deref()?;
        let rest = path.strip_prefix(prefix)?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }

    /// The upstream URI for an upstream path and query.
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let pq = match query {
            Some(q) => format!("{}{path}?{q}", self.base_path),
            None => format!("{}{path}", self.base_path),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(pq)?)
            .build()
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}
