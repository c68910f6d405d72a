//! A configured provider mount: its prefix, its upstream, its provider module and the pooled
//! HTTP client that reaches it.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use super::client::{self, UpstreamClient};
use super::credentials::{self, ApiKey};
use crate::config::{ProviderConfig, ProviderKind};
use crate::providers::{self, Provider};

pub struct Route {
    pub name: Arc<str>,
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
    /// The key read from it when the configuration was loaded.
    pub api_key: Option<ApiKey>,
    /// This route's `spendgate_upstream_duration_seconds` series, resolved on first use
    /// rather than looked up by its label on every call.
    upstream_duration: std::sync::OnceLock<prometheus::Histogram>,
}

impl Route {
    pub fn new(name: &str, cfg: &ProviderConfig) -> Result<Route, String> {
        let uri: Uri = cfg.upstream.parse().map_err(|e| format!("upstream `{}`: {e}", cfg.upstream))?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.ok_or("upstream has no scheme")?;
        let authority = parts.authority.ok_or("upstream has no host")?;
        let base_path = parts.path_and_query.map(|p| p.path().trim_end_matches('/').to_string()).unwrap_or_default();
        let client = client::build(client::ClientOptions {
            connect_timeout: cfg.timeouts.connect.0,
            tls_roots: cfg.tls_roots,
            tls_ca_file: cfg.tls_ca_file.as_deref(),
            proxy: &cfg.proxy,
            scheme: scheme.as_str(),
        })?;
        let api_key = cfg.api_key_env.as_deref().map(|var| ApiKey::from_env(cfg.kind, var)).transpose()?;
        Ok(Route {
            name: name.into(),
            kind: cfg.kind,
            prefix: cfg.prefix.clone(),
            provider: providers::for_kind(cfg.kind),
            scheme,
            authority,
            base_path,
            read_idle: cfg.timeouts.read_idle.0,
            client,
            api_key_env: cfg.api_key_env.clone(),
            api_key,
            upstream_duration: std::sync::OnceLock::new(),
        })
    }

    /// This route's series of `upstream_duration` (`spendgate_upstream_duration_seconds`).
    pub fn upstream_duration(&self, upstream_duration: &prometheus::HistogramVec) -> &prometheus::Histogram {
        self.upstream_duration.get_or_init(|| upstream_duration.with_label_values(&[&self.name]))
    }

    /// The client's headers as they go upstream, credential-wise: with a configured key,
    /// every client credential is replaced by it; otherwise they pass unchanged.
    pub fn set_credentials(&self, headers: &mut http::HeaderMap) {
        if let Some(key) = &self.api_key {
            key.inject(headers);
        }
    }

    /// The client's query string as it goes upstream: with a configured key, without the
    /// client's `key=` parameter where the provider reads one there.
    pub fn upstream_query<'q>(&self, query: Option<&'q str>) -> Option<std::borrow::Cow<'q, str>> {
        let query = query?;
        if self.api_key.is_some() && credentials::uses_query_key(self.kind) {
            credentials::strip_query_key(query).map(std::borrow::Cow::Owned)
        } else {
            Some(std::borrow::Cow::Borrowed(query))
        }
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
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
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
