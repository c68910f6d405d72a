//! The embedded store's database: opening it (with the errors a newcomer can act on), its
//! settings, and the versioned schema (documented in `docs/embedded-store.md`; migrations
//! run at start, in one transaction).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::config::Durability;

/// The schema this build writes. A database with a newer version is refused (it was written
/// by a newer spendgate).
pub const VERSION: i64 = 5;

/// Each migration takes the schema from its index to its index + 1.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE counters (
         scope  TEXT NOT NULL,
         tenant TEXT NOT NULL,
         window TEXT NOT NULL,
         bucket TEXT NOT NULL,
         field  TEXT NOT NULL,
         value  INTEGER NOT NULL,
         PRIMARY KEY (scope, tenant, window, bucket, field)
     ) WITHOUT ROWID;
     CREATE TABLE open_calls (
         id            TEXT PRIMARY KEY,
         at            TEXT NOT NULL,
         day           TEXT NOT NULL,
         profile       TEXT NOT NULL,
         org           TEXT,
         provider      TEXT NOT NULL,
         model         TEXT NOT NULL,
         path          TEXT NOT NULL,
         requests      INTEGER NOT NULL,
         cost_nanos    INTEGER NOT NULL,
         input_tokens  INTEGER NOT NULL,
         output_tokens INTEGER NOT NULL,
         cached_tokens INTEGER NOT NULL,
         characters    INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE daily_provider (
         scope TEXT NOT NULL, tenant TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL,
         requests INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
         output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, characters INTEGER NOT NULL,
         PRIMARY KEY (scope, tenant, day, provider)
     ) WITHOUT ROWID;
     CREATE INDEX daily_provider_day ON daily_provider (day);
     CREATE TABLE daily_model (
         scope TEXT NOT NULL, tenant TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL,
         requests INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
         output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, characters INTEGER NOT NULL,
         PRIMARY KEY (scope, tenant, day, model)
     ) WITHOUT ROWID;
     CREATE INDEX daily_model_day ON daily_model (day);
     CREATE TABLE monthly (
         scope TEXT NOT NULL, tenant TEXT NOT NULL, month TEXT NOT NULL,
         requests INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
         output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, characters INTEGER NOT NULL,
         PRIMARY KEY (scope, tenant, month)
     ) WITHOUT ROWID;
     CREATE INDEX monthly_month ON monthly (month);
     CREATE TABLE recent (
         id            INTEGER PRIMARY KEY,
         at            TEXT NOT NULL,
         day           TEXT NOT NULL,
         profile       TEXT NOT NULL,
         org           TEXT,
         provider      TEXT NOT NULL,
         model         TEXT NOT NULL,
         path          TEXT NOT NULL,
         status        INTEGER NOT NULL,
         reason        TEXT,
         requests      INTEGER NOT NULL,
         cost_nanos    INTEGER NOT NULL,
         input_tokens  INTEGER NOT NULL,
         output_tokens INTEGER NOT NULL,
         cached_tokens INTEGER NOT NULL,
         characters    INTEGER NOT NULL
     );
     CREATE INDEX recent_profile ON recent (profile, id);
     CREATE INDEX recent_org ON recent (org, id) WHERE org IS NOT NULL;
     CREATE TABLE tenants (
         scope     TEXT NOT NULL,
         tenant    TEXT NOT NULL,
         first_day TEXT NOT NULL,
         last_day  TEXT NOT NULL,
         PRIMARY KEY (scope, tenant)
     ) WITHOUT ROWID;
     CREATE INDEX tenants_last_day ON tenants (last_day);
     CREATE TABLE org_bindings (
         profile TEXT PRIMARY KEY,
         org     TEXT
     ) WITHOUT ROWID;",
    // 1 -> 2: run-time limit overrides, top-ups, resets (one JSON record per tenant) and the
    // audit log.
    "CREATE TABLE control_tenants (
         field   TEXT PRIMARY KEY,
         version INTEGER NOT NULL,
         record  TEXT
     ) WITHOUT ROWID;
     CREATE TABLE audit (
         id     INTEGER PRIMARY KEY,
         at     TEXT NOT NULL,
         tenant TEXT,
         entry  TEXT NOT NULL
     );
     CREATE INDEX audit_tenant ON audit (tenant, id);",
    // 2 -> 3: attribution tags (per-day totals by tag, each tenant's bounded set of tags, the
    // tags of recent and open calls) and the alert claims.
    "ALTER TABLE recent ADD COLUMN tags TEXT;
     ALTER TABLE open_calls ADD COLUMN tags TEXT;
     CREATE TABLE daily_tag (
         scope TEXT NOT NULL, tenant TEXT NOT NULL, day TEXT NOT NULL, tag TEXT NOT NULL,
         requests INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
         output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, characters INTEGER NOT NULL,
         PRIMARY KEY (scope, tenant, day, tag)
     ) WITHOUT ROWID;
     CREATE INDEX daily_tag_day ON daily_tag (day);
     CREATE TABLE tenant_tags (
         scope    TEXT NOT NULL,
         tenant   TEXT NOT NULL,
         tag      TEXT NOT NULL,
         last_day TEXT NOT NULL,
         PRIMARY KEY (scope, tenant, tag)
     ) WITHOUT ROWID;
     CREATE INDEX tenant_tags_last_day ON tenant_tags (last_day);
     CREATE TABLE alert_claims (
         key     TEXT PRIMARY KEY,
         expires INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // 3 -> 4: the journal each commit appends to; the tables catch up with it about once a
    // second.
    "CREATE TABLE journal (
         seq     INTEGER PRIMARY KEY,
         changes BLOB NOT NULL
     );",
    // 4 -> 5: a tenant's four base counters of a bucket in one row (a call changed four rows
    // of `counters` per bucket; the tables' catching up was most of the writer's work with
    // many tenants). `counters` keeps the fields of limits with a `match`.
    "CREATE TABLE counter_rows (
         scope    TEXT NOT NULL,
         tenant   TEXT NOT NULL,
         window   TEXT NOT NULL,
         bucket   TEXT NOT NULL,
         cost     INTEGER NOT NULL,
         tokens   INTEGER NOT NULL,
         requests INTEGER NOT NULL,
         chars    INTEGER NOT NULL,
         PRIMARY KEY (scope, tenant, window, bucket)
     ) WITHOUT ROWID;
     INSERT INTO counter_rows
         SELECT scope, tenant, window, bucket,
                COALESCE(SUM(CASE field WHEN 'cost' THEN value END), 0),
                COALESCE(SUM(CASE field WHEN 'tokens' THEN value END), 0),
                COALESCE(SUM(CASE field WHEN 'requests' THEN value END), 0),
                COALESCE(SUM(CASE field WHEN 'chars' THEN value END), 0)
         FROM counters WHERE field IN ('cost', 'tokens', 'requests', 'chars')
         GROUP BY scope, tenant, window, bucket;
     DELETE FROM counters WHERE field IN ('cost', 'tokens', 'requests', 'chars');",
];

/// Why the database cannot be used, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: the file is not a spendgate database or is corrupt ({detail}); restore it from a backup or move it away")]
    Corrupt { path: String, detail: String },
    #[error("{path}: the database is locked by another process ({detail}); is another spendgate running on it?")]
    Locked { path: String, detail: String },
    #[error("{path}: the database cannot be written ({detail}); check the file's and the directory's permissions, or the volume's free space")]
    NotWritable { path: String, detail: String },
    #[error("{path}: the database was written by a newer spendgate (schema version {found}, this build knows up to {VERSION})")]
    TooNew { path: String, found: i64 },
    #[error("{path}: {detail}")]
    Other { path: String, detail: String },
}

impl OpenError {
    pub fn from_sqlite(path: &Path, e: &rusqlite::Error) -> OpenError {
        let path = path.display().to_string();
        let detail = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => OpenError::Corrupt { path, detail },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => OpenError::Locked { path, detail },
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => {
                OpenError::NotWritable { path, detail }
            }
            _ => OpenError::Other { path, detail },
        }
    }
}

/// How long a connection waits for another's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens the database for writing (creating it when missing), applies the settings and
/// migrates the schema to [`VERSION`].
pub fn open_writer(path: &Path, durability: Durability) -> Result<Connection, OpenError> {
    let err = |e: rusqlite::Error| OpenError::from_sqlite(path, &e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| OpenError::NotWritable {
            path: path.display().to_string(),
            detail: format!("cannot create its directory: {e}"),
        })?;
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // The writer cycles through about two dozen cached statements (commits, catching the
    // tables up, trimming); with rusqlite's default of 16 the least recently used would be
    // evicted and prepared again on every cycle.
    conn.set_prepared_statement_cache_capacity(64);
    // The first statement reads the header: a file that is not a database fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Other {
            path: path.display().to_string(),
            detail: format!("cannot use write-ahead logging (journal mode stays `{mode}`); the file system may not support it"),
        });
    }
    // Batched: commits are not synced (a process crash loses nothing committed; a power loss
    // may lose the last commits). Strict: every commit is synced.
    let sync = match durability {
        Durability::Batched => "NORMAL",
        Durability::Strict => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "OFF").map_err(err)?;
    // The tables catch up with a second of commits in one transaction: with many tenants it
    // touches more pages than SQLite's default 2 MiB cache, which would spill them to the log
    // mid-transaction and read them back. 16 MiB, used only as the database grows.
    conn.pragma_update(None, "cache_size", -16_384).map_err(err)?;
    migrate(&mut conn).map_err(|e| match e {
        Migrate::Sqlite(e) => err(e),
        Migrate::TooNew(found) => OpenError::TooNew {
            path: path.display().to_string(),
            found,
        },
    })?;
    Ok(conn)
}

/// Opens another writing connection to a database [`open_writer`] has set up.
pub fn open_connection(path: &Path) -> Result<Connection, OpenError> {
    let err = |e: rusqlite::Error| OpenError::from_sqlite(path, &e);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
    Ok(conn)
}

/// Opens a read-only connection to an existing database (the readers of a serving store, and
/// `spendgate usage` next to a running proxy).
pub fn open_reader(path: &Path) -> Result<Connection, OpenError> {
    let err = |e: rusqlite::Error| OpenError::from_sqlite(path, &e);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err)?;
    if version > VERSION {
        return Err(OpenError::TooNew {
            path: path.display().to_string(),
            found: version,
        });
    }
    if version < VERSION {
        return Err(OpenError::Other {
            path: path.display().to_string(),
            detail: format!("the schema is at version {version}; start the proxy once to migrate it to {VERSION}"),
        });
    }
    Ok(conn)
}

enum Migrate {
    Sqlite(rusqlite::Error),
    TooNew(i64),
}

impl From<rusqlite::Error> for Migrate {
    fn from(e: rusqlite::Error) -> Self {
        Migrate::Sqlite(e)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), Migrate> {
    // IMMEDIATE takes the write lock now: a read-only file or a locked database fails here.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(Migrate::TooNew(version));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
    }
    // Proves the file can be written (an up-to-date schema writes nothing above).
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('opened_by', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [format!("spendgate {}", env!("CARGO_PKG_VERSION"))],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/s.db");
        drop(open_writer(&path, Durability::Batched).unwrap());
        let c = open_writer(&path, Durability::Strict).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, VERSION);
        drop(c);
        open_reader(&path).unwrap();
    }

    #[test]
    fn a_version_2_database_migrates_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute(
                "INSERT INTO recent (at, day, profile, provider, model, path, status, requests, cost_nanos, input_tokens, \
                 output_tokens, cached_tokens, characters) VALUES ('2026-11-01T00:00:00Z', '2026-11-01', 'p1', 'openai', 'm', '/x', 200, 1, 5, 0, 0, 0, 0)",
                [],
            )
            .unwrap();
        }
        let c = open_writer(&path, Durability::Batched).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, VERSION);
        let (cost, tags): (i64, Option<String>) = c.query_row("SELECT cost_nanos, tags FROM recent", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((cost, tags), (5, None));
        let n: i64 = c.query_row("SELECT COUNT(*) FROM daily_tag", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_version_4_database_moves_its_base_counters_into_one_row_per_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..4] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            let big = i64::MAX - 7;
            for (tenant, bucket, field, value) in [
                ("p1", "2026-11-29", "cost", big),
                ("p1", "2026-11-29", "requests", 3),
                ("p1", "2026-11", "tokens", 40),
                ("p2", "2026-11-29", "chars", 615),
                ("p1", "2026-11-29", "cost#abc", 9),
            ] {
                let window = if bucket.len() == 7 { "monthly" } else { "daily" };
                c.execute(
                    "INSERT INTO counters VALUES ('profile', ?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![tenant, window, bucket, field, value],
                )
                .unwrap();
            }
        }
        let c = open_writer(&path, Durability::Batched).unwrap();
        let rows: Vec<(String, String, i64, i64, i64, i64)> = c
            .prepare("SELECT tenant, bucket, cost, tokens, requests, chars FROM counter_rows ORDER BY tenant, bucket")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                ("p1".into(), "2026-11".into(), 0, 40, 0, 0),
                ("p1".into(), "2026-11-29".into(), i64::MAX - 7, 0, 3, 0),
                ("p2".into(), "2026-11-29".into(), 0, 0, 0, 615),
            ],
            "exact integers, one row per tenant and bucket"
        );
        let left: Vec<(String, i64)> = c
            .prepare("SELECT field, value FROM counters")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, [("cost#abc".to_string(), 9)], "a match limit's counter stays where it was");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let e = open_writer(&path, Durability::Batched).unwrap_err();
        assert!(matches!(e, OpenError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("restore it from a backup"), "{e}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(open_writer(&path, Durability::Batched).unwrap());
        Connection::open(&path).unwrap().pragma_update(None, "user_version", VERSION + 1).unwrap();
        assert!(matches!(open_writer(&path, Durability::Batched).unwrap_err(), OpenError::TooNew { .. }));
        assert!(matches!(open_reader(&path).unwrap_err(), OpenError::TooNew { .. }));
    }
}
