//! One connection type over standalone Redis and Redis Cluster.
//!
//! Standalone uses redis-rs's `ConnectionManager` (one multiplexed connection that
//! reconnects by itself, with backoff, after a restart or a failover behind a fixed
//! address); Cluster uses the async `ClusterConnection` (one multiplexed connection per
//! node, slot map refreshed on `MOVED`/`ASK` and on connection errors). Both are created
//! without waiting for Redis, so the proxy starts, and applies `on_error`, while Redis is
//! down.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};

use crate::quota::ledger::StoreError;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long redis-rs itself waits for a reply. The store gives up much earlier
/// (`store.timeout`) but keeps listening for the reply until this, to learn whether a call
/// it gave up on was applied.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Opens a connection handle for `url` (one URL, or with `cluster` a comma-separated list
/// of seed nodes), trusting the CA in `ca_file` for TLS when given. Nothing is sent until
/// the first command.
pub fn open(url: &str, cluster: bool, ca_file: Option<&Path>) -> Result<Conn, StoreError> {
    let bad = |e: redis::RedisError| StoreError::Other(format!("store.url {}: {e}", redact(url)));
    let certs = match ca_file {
        Some(path) => Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(path).map_err(|e| StoreError::Other(format!("store.tls_ca_file {}: {e}", path.display())))?),
        }),
        None => None,
    };
    if cluster {
        let seeds: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let mut builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT);
        if let Some(c) = certs {
            builder = builder.certs(c);
        }
        let client = builder.build().map_err(bad)?;
        let config = ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        Ok(Conn::Cluster(client.get_pending_async_connection_with_config(config)))
    } else {
        let client = match certs {
            Some(c) => redis::Client::build_with_tls(url, c),
            None => redis::Client::open(url),
        }
        .map_err(bad)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(3)
            .set_pipeline_buffer_size(1024);
        Ok(Conn::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?))
    }
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("rediss://u:p@a:1,redis://b:2"), "rediss://***@a:1,redis://b:2");
        assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }

    #[tokio::test]
    async fn opening_does_not_need_a_server() {
        assert!(open("redis://127.0.0.1:1/0", false, None).is_ok());
        assert!(open("redis://127.0.0.1:1", true, None).is_ok());
        assert!(matches!(open("nonsense://x", false, None), Err(StoreError::Other(_))));
        assert!(matches!(
            open("rediss://x", false, Some(Path::new("/nonexistent/ca.pem"))),
            Err(StoreError::Other(_))
        ));
    }
}
