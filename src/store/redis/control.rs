//! The Redis backend of [`ControlStore`]: overrides, grants, resets and the audit log, shared
//! by every replica.
//!
//! Keys (all under the hash tag `{ctl}`, one slot, so the scripts run on Redis Cluster too):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:{ctl}:tenants` | hash | `p:<id>` / `o:<id>` -> the tenant's record (JSON) |
//! | `<prefix>:{ctl}:versions` | hash | `p:<id>` / `o:<id>` -> the record's version (kept after removal) |
//! | `<prefix>:{ctl}:version` | string | the change marker, incremented by every write; replicas poll it |
//! | `<prefix>:{ctl}:audit` | list | audit entries (JSON), newest first, at most 10,000 |
//!
//! A write is one Lua script: compare the record's version, replace or remove the record,
//! bump both versions, push the audit entry. Reads of the whole state are one script too, so
//! the marker and the records always belong together.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::conn::{self, Conn};
use crate::config::StoreConfig;
use crate::quota::control::{AuditEntry, AuditPage, AuditQuery, CasOutcome, ControlState, ControlStore, TenantControl, TenantRef, AUDIT_MAX};
use crate::quota::ledger::StoreError;

const UPDATE_LUA: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if v ~= tonumber(ARGV[2]) then return -1 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
redis.call('HSET', KEYS[2], ARGV[1], v + 1)
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
return redis.call('INCR', KEYS[3])
"#;

const LOAD_LUA: &str = r#"
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"#;

const GET_LUA: &str = r#"
return {redis.call('HGET', KEYS[1], ARGV[1]) or '', redis.call('HGET', KEYS[2], ARGV[1]) or '0'}
"#;

pub struct RedisControl {
    conn: Conn,
    tenants: String,
    versions: String,
    version: String,
    audit: String,
    timeout: Duration,
    update: Script,
    load: Script,
    get: Script,
}

fn failed(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Other(format!("a stored {what} is not readable: {e}"))
}

impl RedisControl {
    /// Opens a connection handle of its own (nothing is sent until the first call).
    pub fn open(cfg: &StoreConfig) -> Result<RedisControl, StoreError> {
        let conn = conn::open(&cfg.url, cfg.cluster, cfg.tls_ca_file.as_deref())?;
        let key = |name: &str| format!("{}:{{ctl}}:{name}", cfg.key_prefix);
        Ok(RedisControl {
            conn,
            tenants: key("tenants"),
            versions: key("versions"),
            version: key("version"),
            audit: key("audit"),
            timeout: cfg.read_timeout.0,
            update: Script::new(UPDATE_LUA),
            load: Script::new(LOAD_LUA),
            get: Script::new(GET_LUA),
        })
    }

    async fn bounded<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(failed),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

#[async_trait]
impl ControlStore for RedisControl {
    async fn version(&self) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = self.bounded(redis::cmd("GET").arg(&self.version).query_async(&mut c)).await?;
        Ok(v.unwrap_or(0))
    }

    async fn load(&self) -> Result<ControlState, StoreError> {
        let mut c = self.conn.clone();
        let (version, pairs): (u64, Vec<(String, String)>) = self.bounded(self.load.key(&self.tenants).key(&self.version).invoke_async(&mut c)).await?;
        let mut tenants = Vec::with_capacity(pairs.len());
        for (field, json) in pairs {
            let Some(t) = TenantRef::parse_field(&field) else { continue };
            tenants.push((t, serde_json::from_str(&json).map_err(|e| corrupt("tenant record", e))?));
        }
        Ok(ControlState { version, tenants })
    }

    async fn get(&self, tenant: &TenantRef) -> Result<(u64, TenantControl), StoreError> {
        let mut c = self.conn.clone();
        let (json, version): (String, u64) = self
            .bounded(self.get.key(&self.tenants).key(&self.versions).arg(tenant.field()).invoke_async(&mut c))
            .await?;
        let record = if json.is_empty() {
            TenantControl::default()
        } else {
            serde_json::from_str(&json).map_err(|e| corrupt("tenant record", e))?
        };
        Ok((version, record))
    }

    async fn update(&self, tenant: &TenantRef, expected: u64, record: &TenantControl, audit: &AuditEntry) -> Result<CasOutcome, StoreError> {
        let json = if record.is_empty() {
            String::new()
        } else {
            serde_json::to_string(record).map_err(|e| StoreError::Other(e.to_string()))?
        };
        let entry = serde_json::to_string(audit).map_err(|e| StoreError::Other(e.to_string()))?;
        let mut c = self.conn.clone();
        let answer: i64 = self
            .bounded(
                self.update
                    .key(&self.tenants)
                    .key(&self.versions)
                    .key(&self.version)
                    .key(&self.audit)
                    .arg(tenant.field())
                    .arg(expected)
                    .arg(json)
                    .arg(entry)
                    .arg(AUDIT_MAX)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(match u64::try_from(answer) {
            Ok(version) => CasOutcome::Written { version },
            Err(_) => CasOutcome::Conflict,
        })
    }

    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let entry = serde_json::to_string(audit).map_err(|e| StoreError::Other(e.to_string()))?;
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH").arg(&self.audit).arg(entry).ignore();
        pipe.cmd("LTRIM").arg(&self.audit).arg(0).arg(AUDIT_MAX - 1).ignore();
        self.bounded(pipe.query_async::<()>(&mut c)).await
    }

    async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let mut c = self.conn.clone();
        let raw: Vec<String> = self.bounded(redis::cmd("LRANGE").arg(&self.audit).arg(0).arg(-1).query_async(&mut c)).await?;
        let mut total = 0;
        let mut entries = Vec::new();
        for json in raw {
            let e: AuditEntry = match serde_json::from_str(&json) {
                Ok(e) => e,
                Err(_) => continue,
            };
            if !query.matches(&e) {
                continue;
            }
            if total >= query.offset && entries.len() < query.limit {
                entries.push(e);
            }
            total += 1;
        }
        Ok(AuditPage { total, entries })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
