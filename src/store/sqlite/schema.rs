//! The SQLite schema and its migrations, the connection settings, and the WAL checkpointer.

use std::path::Path;

use rusqlite::Connection;

use super::{Inner, internal};
use crate::store::{StoreError, StoreResult};

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 14;

/// Version 1: sessions and messages with their indexes.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    location_id TEXT,
    is_active INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_message_at TEXT,
    metadata TEXT,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (tenant_id, user_id, updated_at, id);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    content TEXT NOT NULL,
    role TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (tenant_id, session_id, timestamp);
CREATE INDEX IF NOT EXISTS messages_by_tenant ON messages (tenant_id, timestamp, id);
CREATE INDEX IF NOT EXISTS messages_by_user ON messages (tenant_id, user_id);
";

/// Version 2: `expires_at` (epoch seconds) for retention.
const SCHEMA_V2: &str = "
ALTER TABLE sessions ADD COLUMN expires_at INTEGER;
ALTER TABLE messages ADD COLUMN expires_at INTEGER;
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;
";

/// Version 3: records of streamed turns, with the events they sent (never part of a message read).
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS turns (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    events TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (tenant_id, session_id);
CREATE INDEX IF NOT EXISTS turns_by_user ON turns (tenant_id, user_id);
CREATE INDEX IF NOT EXISTS turns_by_expiry ON turns (expires_at);
";

/// Version 4: change events (the tenants' feeds) and the webhook deliveries still owed for them.
const SCHEMA_V4: &str = "
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    type TEXT NOT NULL,
    user_id TEXT,
    body TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_tenant ON events (tenant_id, id);
CREATE INDEX IF NOT EXISTS events_by_user ON events (tenant_id, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_expiry ON events (expires_at);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    type TEXT NOT NULL,
    user_id TEXT,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    lease_owner TEXT,
    last_error TEXT,
    PRIMARY KEY (event_id, endpoint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_due ON deliveries (next_at);
";

/// Version 5: a session's context summary (JSON).
const SCHEMA_V5: &str = "ALTER TABLE sessions ADD COLUMN context_summary TEXT;";

pub(super) fn open(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open SQLite database {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(internal)?;
    // Every statement a turn runs stays prepared (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(64);
    // Plans do not depend on bound values: otherwise SQLite re-prepares a statement whenever a
    // parameter it planned around (a bound `LIMIT ?5`) is bound anew, which was about a tenth of a
    // turn's instructions, on every history read.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(internal)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
        .map_err(|e| StoreError::Unavailable(format!("cannot use SQLite database {}: {e}", path.display())))?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

/// Migrates up to `target` (the tests build older versions' databases with it).
pub(super) fn migrate_to(conn: &mut Connection, path: &Path, target: i64) -> StoreResult<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(internal)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "SQLite database {} has schema version {version}, newer than this build ({SCHEMA_VERSION})",
            path.display()
        )));
    }
    let tx = conn.transaction().map_err(internal)?;
    if version < 1 && 1 <= target {
        tx.execute_batch(SCHEMA_V1).map_err(internal)?;
    }
    if version < 2 && 2 <= target {
        tx.execute_batch(SCHEMA_V2).map_err(internal)?;
    }
    if version < 3 && 3 <= target {
        tx.execute_batch(SCHEMA_V3).map_err(internal)?;
    }
    if version < 4 && 4 <= target {
        tx.execute_batch(SCHEMA_V4).map_err(internal)?;
    }
    if version < 5 && 5 <= target {
        tx.execute_batch(SCHEMA_V5).map_err(internal)?;
    }
    // Version 6: the full-text search index of the messages, built from those already stored.
    if version < 6 && 6 <= target {
        tx.execute_batch(super::search::SCHEMA).map_err(internal)?;
    }
    // Version 7: new messages are indexed in batches, outside their transactions.
    if version < 7 && 7 <= target {
        tx.execute_batch(super::search::SCHEMA_V7).map_err(internal)?;
    }
    // Version 8: the session an event is about (deleting a session removes its events).
    if version < 8 && 8 <= target {
        for table in ["events", "deliveries"] {
            let has: bool = tx
                .query_row("SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'session_id'", [table], |r| {
                    r.get(0)
                })
                .map_err(internal)?;
            if !has {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN session_id TEXT;")).map_err(internal)?;
            }
        }
    }
    // Version 9: the running turns, for the sweep that settles those whose server died, and the
    // erasures whose second pass is still due.
    if version < 9 && 9 <= target {
        tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS turns_running ON turns (id) WHERE status = 'running';
             CREATE TABLE IF NOT EXISTS erasures (id TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL);",
        )
        .map_err(internal)?;
    }
    // Version 10: tenant agents, and the log of their changes that other processes poll.
    if version < 10 && 10 <= target {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS agents (
                tenant_id TEXT NOT NULL,
                id TEXT NOT NULL,
                version INTEGER NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (tenant_id, id)
            );
            CREATE TABLE IF NOT EXISTS agent_changes (
                at TEXT NOT NULL,
                tenant_id TEXT NOT NULL,
                PRIMARY KEY (at, tenant_id)
            );",
        )
        .map_err(internal)?;
    }
    // Version 11: the turn that holds a session (`TURN_CONCURRENCY=reject`).
    if version < 11 && 11 <= target {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS session_holders (
                tenant_id TEXT NOT NULL,
                session_id TEXT NOT NULL,
                turn_id TEXT NOT NULL,
                until INTEGER NOT NULL,
                PRIMARY KEY (tenant_id, session_id)
            ) WITHOUT ROWID;",
        )
        .map_err(internal)?;
    }
    // Version 12: the turns queued behind a session's running turn (`TURN_CONCURRENCY=queue`), and
    // queued turns among the running ones the sweep looks at.
    if version < 12 && 12 <= target {
        let has: bool = tx
            .query_row("SELECT count(*) > 0 FROM pragma_table_info('session_holders') WHERE name = 'queue'", [], |r| {
                r.get(0)
            })
            .map_err(internal)?;
        if !has {
            tx.execute_batch("ALTER TABLE session_holders ADD COLUMN queue TEXT NOT NULL DEFAULT '[]';")
                .map_err(internal)?;
        }
        tx.execute_batch(
            "DROP INDEX IF EXISTS turns_running;
             CREATE INDEX turns_running ON turns (id) WHERE status IN ('running', 'queued');",
        )
        .map_err(internal)?;
    }
    // Version 13: usage per user and day, the tenants' totals, budgets and once-per-period notices.
    if version < 13 && 13 <= target {
        tx.execute_batch(super::usage::SCHEMA).map_err(internal)?;
    }
    // Version 14: channels and the addresses they claim.
    if version < 14 && 14 <= target {
        tx.execute_batch(super::channels::SCHEMA).map_err(internal)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {}", target.max(version))).map_err(internal)?;
    tx.commit().map_err(internal)
}

/// The store's background thread, until the store is dropped: every 200 ms it checkpoints the WAL
/// into the database (PASSIVE: it blocks no one, and it leaves the writer's own checkpoint past 16 MB
/// only a small remainder), and indexes the new messages for search (in batches, taking the write
/// lock for each).
pub(super) fn spawn_maintenance(store: &std::sync::Arc<Inner>) -> StoreResult<()> {
    let conn = open(&store.path)?;
    let inner = std::sync::Arc::downgrade(store);
    std::thread::Builder::new()
        .name("sqlite-maintenance".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let Some(store) = inner.upgrade() else { break };
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "SQLite checkpoint failed");
                }
                loop {
                    let mut writer = store.writer.lock().unwrap_or_else(|p| p.into_inner());
                    match super::search::index_pending(&mut writer, super::search::BATCH) {
                        Ok(n) if n == super::search::BATCH => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "SQLite search indexing failed");
                            break;
                        }
                    }
                }
            }
        })
        .map_err(internal)?;
    Ok(())
}
