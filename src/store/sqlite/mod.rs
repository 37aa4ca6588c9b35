//! (Over 400 lines: it is the one implementation of the store trait for SQLite, a short SQL call per
//! method; rows and schema live beside it.)
//!
//! The embedded backend: SQLite (bundled) in WAL mode, one writer connection and a few readers.
//!
//! A turn's calls run on the calling task when their connection is free (see `is_quick`); other calls,
//! and any that would wait for a connection, run on Tokio's blocking pool. A write returns after its
//! transaction commits; with WAL and `synchronous=NORMAL` a committed transaction
//! survives the process being killed (only a power loss can roll back the newest commits).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod channels;
mod events;
mod rows;
mod schema;
mod search;
mod turns;
mod usage;

use rows::*;
use schema::{migrate, open, spawn_maintenance};

use super::{
    Action, ActionStatus, Appended, ContextSummary, ConversationStore, Deleted, Delivery, DeliveryStep, Erasure, Hold,
    HoldLease, HoldRequest, Message, MessageQuery, NewMessage, NewSession, Order, Page, PageRequest, Retention,
    Session, StoreError, StoreResult, StoredEvent, TurnEvent, TurnRecord, TurnStatus, new_session_with,
    prepare_messages, writable_session,
};
use crate::agents::StoredAgent;
use crate::ids::{AgentId, MessageId, SessionId, TenantId, UserId};
use crate::timestamp::{self, Timestamp};

const MAX_READERS: usize = 8;
/// Rows deleted per purge transaction, so the write lock is held only briefly.
const PURGE_BATCH: usize = 500;

pub struct SqliteStore {
    inner: Arc<Inner>,
    retention: Retention,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl Inner {
    fn take_reader(&self) -> Option<Connection> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back_reader(&self, conn: Connection) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() < MAX_READERS {
            readers.push(conn);
        }
    }
}

/// The calls a turn makes, each a few indexed statements over a bounded number of rows (a history
/// is at most `HISTORY_MAX_MESSAGES`): they run on the calling task when their connection is free
/// (usually tens of microseconds, into the WAL in the page cache), instead of a trip to the blocking
/// pool and back, which cost more than the call. Everything else (erasures, purges, scans, imports,
/// search, backups, and a streamed turn's record saves, which rewrite its events so far), and any
/// call whose connection is busy, runs on the blocking pool. Known costs of the inline path: the
/// commit that takes the WAL past 16 MB runs the writer's checkpoint of the small remainder on the
/// task, and another process holding SQLite's write lock (`search reindex`) makes it wait up to the
/// busy timeout there.
fn is_quick(op: &str) -> bool {
    matches!(
        op,
        "check"
            | "get_session"
            | "find_active_session"
            | "create_session_with"
            | "begin_turn"
            | "put_messages"
            | "release_turn"
            | "get_message"
            | "list_messages"
            | "close_session"
            | "transition_action"
            | "create_turn"
            | "get_turn"
            | "record_events"
            | "claim_delivery"
            | "settle_delivery"
            | "save_context_summary"
    )
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("sqlite: {e}"))
}

impl SqliteStore {
    /// Opens (and creates, with its folder) the database at `path`, migrating the schema.
    pub fn open(path: impl Into<PathBuf>) -> StoreResult<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create folder {}: {e}", dir.display())))?;
        }
        crate::private_file::create_if_absent(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot create SQLite database {}: {e}", path.display())))?;
        // SQLite gives the `-wal` and `-shm` files it creates the database's mode; ones left by an
        // earlier run keep theirs unless narrowed before it opens them.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            crate::private_file::restrict_if_present(Path::new(&side)).map_err(|e| {
                StoreError::Unavailable(format!("cannot make {} private: {e}", Path::new(&side).display()))
            })?;
        }
        let mut writer = open(&path)?;
        migrate(&mut writer, &path)?;
        // Checkpoints (which fsync) run on the store's background thread every 200 ms, so they rarely
        // add milliseconds to a request. Under sustained writes a passive checkpoint never sees the
        // whole WAL (new frames keep arriving), so the writer still checkpoints past 4,000 pages (16
        // MB), by then a small remainder, which lets the WAL start over; the file is cut back to 64 MB
        // afterwards. Without the writer's own checkpoint (only a background RESTART past 16 MB), writers
        // that never pause starve the background one and the WAL grows without bound (1.9 GB measured).
        writer
            .execute_batch("PRAGMA wal_autocheckpoint=4000; PRAGMA journal_size_limit=67108864;")
            .map_err(internal)?;
        let inner = Arc::new(Inner { path, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) });
        spawn_maintenance(&inner)?;
        Ok(Self { inner, retention: Retention::default() })
    }

    /// Keeps new sessions and messages for this long after their last write.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A consistent copy of the database, taken while the server runs (`VACUUM INTO`).
    pub async fn backup_to(&self, out: PathBuf) -> StoreResult<()> {
        self.read("backup", move |c| {
            crate::private_file::create_if_absent(&out).map_err(internal)?;
            c.execute("VACUUM INTO ?1", params![out.to_string_lossy()])
                .map_err(|e| StoreError::Unavailable(format!("cannot write the backup to {}: {e}", out.display())))?;
            // VACUUM may renumber the messages' row ids, which the search index refers to.
            search::rebuild(&open(&out)?)
        })
        .await
    }

    /// Rebuilds the search index from the messages (`agent-server search reindex`).
    pub async fn reindex(&self) -> StoreResult<()> {
        self.write("reindex", |c| search::rebuild(c)).await
    }

    async fn write<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let result = match self.write_here(op, f) {
            Ok(result) => result,
            Err(f) => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
                    f(&mut conn)
                })
                .await
                .map_err(internal)
                .and_then(|r| r)
            }
        };
        crate::telemetry::storage_call("sqlite", op, result.is_ok());
        result
    }

    /// Runs a quick write (`is_quick`) on this task when the writer is free; otherwise gives `f` back.
    fn write_here<T, F>(&self, op: &str, f: F) -> Result<StoreResult<T>, F>
    where
        F: FnOnce(&mut Connection) -> StoreResult<T>,
    {
        if !is_quick(op) {
            return Err(f);
        }
        match self.inner.writer.try_lock() {
            Ok(mut conn) => Ok(f(&mut conn)),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(f(&mut p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => Err(f),
        }
    }

    async fn read<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let result = match is_quick(op).then(|| self.inner.take_reader()).flatten() {
            Some(conn) => {
                let result = f(&conn);
                self.inner.give_back_reader(conn);
                result
            }
            None => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = match inner.take_reader() {
                        Some(c) => c,
                        None => open(&inner.path)?,
                    };
                    let result = f(&conn);
                    inner.give_back_reader(conn);
                    result
                })
                .await
                .map_err(internal)
                .and_then(|r| r)
            }
        };
        crate::telemetry::storage_call("sqlite", op, result.is_ok());
        result
    }
}

#[async_trait]
impl ConversationStore for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite ({})", self.inner.path.display())
    }

    async fn check(&self) -> StoreResult<()> {
        self.read("check", |c| {
            c.query_row("SELECT count(*) FROM sessions WHERE 0", [], |_| Ok(()))
                .map_err(|e| StoreError::Unavailable(format!("SQLite database does not answer: {e}")))
        })
        .await
    }

    async fn create_session_with(
        &self,
        new: NewSession,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(Session, Vec<Message>)> {
        let (session, mut messages) = new_session_with(new, messages, self.retention)?;
        let (s, ms) = (session.clone(), messages.clone());
        messages.iter_mut().for_each(|m| m.counted = None);
        self.write("create_session_with", move |c| {
            let tx = c.transaction().map_err(internal)?;
            if !insert_session(&tx, &s)? {
                return Err(StoreError::id_taken("session", &s.id));
            }
            for m in &ms {
                if !insert_message(&tx, m)? {
                    return Err(StoreError::id_taken("message", &m.id));
                }
            }
            tx.commit().map_err(internal)
        })
        .await?;
        Ok((session, messages))
    }

    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read("get_session", move |c| get_session(c, tenant.as_str(), id.as_str())).await
    }

    async fn find_active_session(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Option<Session>> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.read("find_active_session", move |c| {
            c.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = ?1 AND user_id = ?2 \
                 AND is_active = 1 AND {LIVE} ORDER BY updated_at DESC, id DESC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row(params![tenant.as_str(), user.as_str()], session_from_row).optional())
            .map_err(internal)
        })
        .await
    }

    async fn list_user_sessions(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest,
    ) -> StoreResult<Page<Session>> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.read("list_user_sessions", move |c| {
            let (t, i) =
                page.cursor.map(|c| (c.timestamp, c.id)).unwrap_or_else(|| ("\u{10FFFF}".into(), String::new()));
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = ?1 AND user_id = ?2 \
                     AND (updated_at < ?3 OR (updated_at = ?3 AND id < ?4)) AND {LIVE} \
                     ORDER BY updated_at DESC, id DESC LIMIT ?5"
                ))
                .map_err(internal)?;
            let items = stmt
                .query_map(params![tenant.as_str(), user.as_str(), t, i, page.limit as i64 + 1], session_from_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(internal)?;
            Ok(Page::of_sessions(items, page.limit))
        })
        .await
    }

    async fn begin_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        owner: Option<&UserId>,
        count: usize,
    ) -> StoreResult<(Session, Vec<Timestamp>)> {
        let (tenant, session, owner) = (tenant.clone(), session.clone(), owner.cloned());
        self.write("begin_turn", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let (stored, stamps) = reserve(&tx, &tenant, &session, owner.as_ref(), count)?;
            tx.commit().map_err(internal)?;
            Ok((stored, stamps))
        })
        .await
    }

    async fn begin_held_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        owner: Option<&UserId>,
        count: usize,
        hold: HoldRequest<'_>,
    ) -> StoreResult<(Session, Vec<Timestamp>, Hold)> {
        let (tenant, session, owner) = (tenant.clone(), session.clone(), owner.cloned());
        let (holder, lease, take_over) = (hold.holder.clone(), hold.lease, hold.take_over);
        self.write("begin_turn", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let (stored, stamps) = reserve(&tx, &tenant, &session, owner.as_ref(), count)?;
            let (held, queued) = holder_row(&tx, &tenant, &session)?;
            let live = held.filter(|(h, until)| h != holder.as_str() && *until >= lease.now);
            let hold = match (&live, take_over) {
                (Some((other, _)), false) => Hold::Busy(MessageId::parse(other.clone()).map_err(internal)?),
                _ => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO session_holders (tenant_id, session_id, turn_id, until, queue) \
                         VALUES (?1, ?2, ?3, ?4, '[]')",
                    )
                    .and_then(|mut s| {
                        s.execute(params![tenant.as_str(), session.as_str(), holder.as_str(), lease.until])
                    })
                    .map_err(internal)?;
                    Hold::Held { queued, taken_from: live.and_then(|(h, _)| MessageId::parse(h).ok()) }
                }
            };
            tx.commit().map_err(internal)?;
            Ok((stored, stamps, hold))
        })
        .await
    }

    async fn put_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<Message>,
    ) -> StoreResult<Vec<Appended>> {
        let (tenant, session) = (tenant.clone(), session.clone());
        let retention = self.retention;
        self.write("put_messages", move |c| {
            let tx = c.transaction().map_err(internal)?;
            let mut out = Vec::with_capacity(messages.len());
            for mut m in prepare_messages(&tenant, &session, retention, messages)? {
                if insert_message(&tx, &m)? {
                    m.counted = None;
                    out.push(Appended { message: m, created: true });
                } else {
                    match get_message(&tx, m.id.as_str())? {
                        Some(existing) if existing.tenant_id == tenant && existing.session_id == session => {
                            out.push(Appended { message: existing, created: false })
                        }
                        _ => return Err(StoreError::id_taken("message", &m.id)),
                    }
                }
            }
            if let Some(at) = out.iter().filter_map(|a| a.message.expires_at).max() {
                tx.execute(
                    "UPDATE sessions SET expires_at = ?3 WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant.as_str(), session.as_str(), at],
                )
                .map_err(internal)?;
            }
            tx.commit().map_err(internal)?;
            Ok(out)
        })
        .await
    }

    async fn release_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        reserved_last: &Timestamp,
        previous: Option<&Timestamp>,
    ) -> StoreResult<()> {
        let (tenant, session) = (tenant.clone(), session.clone());
        let (reserved, previous) = (reserved_last.clone(), previous.cloned());
        self.write("release_turn", move |c| {
            c.execute(
                "UPDATE sessions SET last_message_at = ?4, updated_at = coalesce(?4, updated_at) \
                 WHERE tenant_id = ?1 AND id = ?2 AND last_message_at = ?3",
                params![tenant.as_str(), session.as_str(), reserved, previous],
            )
            .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<Message>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read("get_message", move |c| {
            Ok(get_message(c, id.as_str())?.filter(|m| m.tenant_id == tenant && !super::is_expired(m.expires_at)))
        })
        .await
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        query: MessageQuery,
    ) -> StoreResult<Page<Message>> {
        let (tenant, session) = (tenant.clone(), session.clone());
        self.read("list_messages", move |c| {
            let limit = query.limit;
            // Timestamps are unique within a session, so the cursor's timestamp is the position.
            let after = query.cursor.map(|c| c.timestamp);
            let before = query.before;
            let (cmp, dir) = match query.order {
                Order::Desc => ("<", "DESC"),
                Order::Asc => (">", "ASC"),
            };
            // A model's history reads metadata only where it records actions (rare): parsing every
            // message's metadata would cost more than the rest of the read.
            let columns = match query.for_model {
                true => MODEL_HISTORY_COLUMNS,
                false => MESSAGE_COLUMNS,
            };
            let sql = format!(
                "SELECT {columns} FROM messages WHERE tenant_id = ?1 AND session_id = ?2 \
                 AND (?3 IS NULL OR timestamp {cmp} ?3) AND (?4 IS NULL OR timestamp < ?4) AND {LIVE} \
                 ORDER BY timestamp {dir} LIMIT ?5"
            );
            message_page(c, &sql, &[&tenant.as_str(), &session.as_str(), &after, &before, &(limit as i64 + 1)], limit)
        })
        .await
    }

    async fn close_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.write("close_session", move |c| {
            c.prepare_cached(&format!(
                "UPDATE sessions SET is_active = 0, updated_at = ?3 WHERE tenant_id = ?1 AND id = ?2 AND {LIVE} \
                 RETURNING {SESSION_COLUMNS}"
            ))
            .and_then(|mut s| {
                s.query_row(params![tenant.as_str(), id.as_str(), timestamp::now()], session_from_row).optional()
            })
            .map_err(internal)
        })
        .await
    }

    async fn set_session_metadata(
        &self,
        tenant: &TenantId,
        id: &SessionId,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<Option<Session>> {
        let (tenant, id, path, value) = (tenant.clone(), id.clone(), format!("$.\"{key}\""), value.to_string());
        self.write("set_session_metadata", move |c| {
            c.prepare_cached(&format!(
                "UPDATE sessions SET metadata = json_set(coalesce(metadata, '{{}}'), ?3, json(?4)) \
                 WHERE tenant_id = ?1 AND id = ?2 AND {LIVE} RETURNING {SESSION_COLUMNS}"
            ))
            .and_then(|mut s| {
                s.query_row(params![tenant.as_str(), id.as_str(), path, value], session_from_row).optional()
            })
            .map_err(internal)
        })
        .await
    }

    async fn delete_session(
        &self,
        tenant: &TenantId,
        id: &SessionId,
        up_to: Option<&Timestamp>,
    ) -> StoreResult<Option<usize>> {
        let (tenant, id, up_to) = (tenant.clone(), id.clone(), up_to.map(|t| t.as_str().to_string()));
        self.write("delete_session", move |c| {
            let tx = c.transaction().map_err(internal)?;
            let keys = params![tenant.as_str(), id.as_str(), up_to];
            // A turn record's id is its user message's id.
            tx.execute(
                "DELETE FROM turns WHERE tenant_id = ?1 AND session_id = ?2 AND (?3 IS NULL OR id IN \
                 (SELECT id FROM messages WHERE tenant_id = ?1 AND session_id = ?2 AND timestamp <= ?3))",
                keys,
            )
            .map_err(internal)?;
            let messages = tx
                .execute(
                    "DELETE FROM messages WHERE tenant_id = ?1 AND session_id = ?2 AND (?3 IS NULL OR timestamp <= ?3)",
                    keys,
                )
                .map_err(internal)?;
            let sessions = tx
                .execute(
                    "DELETE FROM sessions WHERE tenant_id = ?1 AND id = ?2 AND (?3 IS NULL OR created_at <= ?3)",
                    keys,
                )
                .map_err(internal)?;
            if sessions > 0 {
                tx.execute(
                    "DELETE FROM session_holders WHERE tenant_id = ?1 AND session_id = ?2",
                    params![tenant.as_str(), id.as_str()],
                )
                .map_err(internal)?;
            }
            tx.commit().map_err(internal)?;
            Ok((sessions > 0).then_some(messages))
        })
        .await
    }

    async fn delete_user(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Deleted> {
        let (tenant, user) = (tenant.clone(), user.clone());
        self.write("delete_user", move |c| {
            let tx = c.transaction().map_err(internal)?;
            let messages = tx
                .execute(
                    "DELETE FROM messages WHERE tenant_id = ?1 AND (user_id = ?2 OR session_id IN \
                     (SELECT id FROM sessions WHERE tenant_id = ?1 AND user_id = ?2))",
                    params![tenant.as_str(), user.as_str()],
                )
                .map_err(internal)?;
            tx.execute(
                "DELETE FROM turns WHERE tenant_id = ?1 AND (user_id = ?2 OR session_id IN \
                 (SELECT id FROM sessions WHERE tenant_id = ?1 AND user_id = ?2))",
                params![tenant.as_str(), user.as_str()],
            )
            .map_err(internal)?;
            tx.execute(
                "DELETE FROM session_holders WHERE tenant_id = ?1 AND session_id IN \
                 (SELECT id FROM sessions WHERE tenant_id = ?1 AND user_id = ?2)",
                params![tenant.as_str(), user.as_str()],
            )
            .map_err(internal)?;
            let sessions = tx
                .execute(
                    "DELETE FROM sessions WHERE tenant_id = ?1 AND user_id = ?2",
                    params![tenant.as_str(), user.as_str()],
                )
                .map_err(internal)?;
            tx.commit().map_err(internal)?;
            Ok(Deleted { sessions, messages })
        })
        .await
    }

    async fn list_tenant_messages(&self, tenant: &TenantId, query: MessageQuery) -> StoreResult<Page<Message>> {
        let tenant = tenant.clone();
        self.read("list_tenant_messages", move |c| {
            let limit = query.limit;
            let (t, i) = match query.cursor {
                Some(c) => (Some(c.timestamp), c.id),
                None => (None, String::new()),
            };
            let (cmp, dir) = match query.order {
                Order::Desc => ("<", "DESC"),
                Order::Asc => (">", "ASC"),
            };
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 \
                 AND (?2 IS NULL OR timestamp {cmp} ?2 OR (timestamp = ?2 AND id {cmp} ?3)) \
                 AND (?4 IS NULL OR timestamp < ?4) AND {LIVE} ORDER BY timestamp {dir}, id {dir} LIMIT ?5"
            );
            message_page(c, &sql, &[&tenant.as_str(), &t, &i, &query.before, &(limit as i64 + 1)], limit)
        })
        .await
    }

    async fn purge_expired(&self) -> StoreResult<usize> {
        let mut total = 0;
        for table in ["messages", "sessions", "turns", "events"] {
            loop {
                let sql = format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} \
                     WHERE expires_at IS NOT NULL AND expires_at <= unixepoch() LIMIT {PURGE_BATCH})"
                );
                // `sessions` is WITHOUT ROWID: delete by its key instead.
                let sql = if table == "sessions" {
                    format!(
                        "DELETE FROM sessions WHERE (tenant_id, id) IN (SELECT tenant_id, id FROM sessions \
                         WHERE expires_at IS NOT NULL AND expires_at <= unixepoch() LIMIT {PURGE_BATCH})"
                    )
                } else {
                    sql
                };
                let n = self.write("purge_expired", move |c| c.execute(&sql, []).map_err(internal)).await?;
                total += n;
                if n < PURGE_BATCH {
                    break;
                }
                // Let other writers in between batches.
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }

    async fn scan_sessions(
        &self,
        tenant: Option<&TenantId>,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<(Vec<Session>, Option<String>)> {
        let tenant = tenant.map(|t| t.to_string());
        self.read("scan_sessions", move |c| {
            let (after_tenant, after_id) =
                after.as_deref().and_then(|a| serde_json::from_str::<(String, String)>(a).ok()).unwrap_or_default();
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE (?1 IS NULL OR tenant_id = ?1) \
                     AND (tenant_id > ?2 OR (tenant_id = ?2 AND id > ?3)) AND {LIVE} \
                     ORDER BY tenant_id, id LIMIT ?4"
                ))
                .map_err(internal)?;
            let items = stmt
                .query_map(params![tenant, after_tenant, after_id, limit as i64], session_from_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(internal)?;
            let next = (items.len() == limit)
                .then(|| items.last().map(|s| serde_json::json!([s.tenant_id, s.id]).to_string()))
                .flatten();
            Ok((items, next))
        })
        .await
    }

    async fn transition_action(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        from: ActionStatus,
        to: &Action,
    ) -> StoreResult<bool> {
        let (tenant, message, to) = (tenant.clone(), message.clone(), to.clone());
        self.write("transition_action", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let Some(mut stored) = get_message(&tx, message.as_str())?.filter(|m| m.tenant_id == tenant) else {
                return Ok(false);
            };
            let Some(actions) =
                stored.metadata.as_mut().and_then(|m| m.get_mut("actions")).and_then(|a| a.as_array_mut())
            else {
                return Ok(false);
            };
            let Some(slot) = actions.iter_mut().find(|a| a["id"] == serde_json::json!(to.id)) else {
                return Ok(false);
            };
            if slot["status"] != serde_json::json!(from) {
                return Ok(false);
            }
            *slot = to.to_json();
            tx.execute(
                "UPDATE messages SET metadata = ?2 WHERE id = ?1",
                params![message.as_str(), json_text(&stored.metadata)],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)?;
            Ok(true)
        })
        .await
    }

    async fn create_turn(&self, turn: &TurnRecord) -> StoreResult<bool> {
        let turn = turn.clone();
        self.write("create_turn", move |c| turns::create(c, &turn)).await
    }

    async fn get_turn(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<TurnRecord>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read("get_turn", move |c| turns::get(c, &tenant, &id)).await
    }

    async fn put_agent(&self, agent: &StoredAgent, previous: Option<u64>) -> StoreResult<bool> {
        let body = serde_json::to_string(agent).map_err(internal)?;
        let (tenant, id, version) = (agent.tenant_id.clone(), agent.id.clone(), agent.version as i64);
        self.write("put_agent", move |c| {
            let n = match previous {
                None => c.execute(
                    "INSERT OR IGNORE INTO agents (tenant_id, id, version, body) VALUES (?1, ?2, ?3, ?4)",
                    params![tenant.as_str(), id.as_str(), version, body],
                ),
                Some(previous) => c.execute(
                    "UPDATE agents SET version = ?3, body = ?4 WHERE tenant_id = ?1 AND id = ?2 AND version = ?5",
                    params![tenant.as_str(), id.as_str(), version, body, previous as i64],
                ),
            }
            .map_err(internal)?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_agent(&self, tenant: &TenantId, id: &AgentId) -> StoreResult<Option<StoredAgent>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read("get_agent", move |c| {
            let body: Option<String> = c
                .prepare_cached("SELECT body FROM agents WHERE tenant_id = ?1 AND id = ?2")
                .and_then(|mut s| s.query_row(params![tenant.as_str(), id.as_str()], |r| r.get(0)).optional())
                .map_err(internal)?;
            body.map(|b| serde_json::from_str(&b).map_err(internal)).transpose()
        })
        .await
    }

    async fn list_agents(&self, tenant: &TenantId) -> StoreResult<Vec<StoredAgent>> {
        let tenant = tenant.clone();
        self.read("list_agents", move |c| {
            let mut statement =
                c.prepare_cached("SELECT body FROM agents WHERE tenant_id = ?1 ORDER BY id").map_err(internal)?;
            let rows = statement.query_map([tenant.as_str()], |r| r.get::<_, String>(0)).map_err(internal)?;
            rows.map(|b| serde_json::from_str(&b.map_err(internal)?).map_err(internal)).collect()
        })
        .await
    }

    async fn record_agent_change(&self, tenant: &TenantId, at: &Timestamp) -> StoreResult<()> {
        let (tenant, at) = (tenant.clone(), at.clone());
        let hour_ago = timestamp::format_micros(at.micros().unwrap_or_else(timestamp::now_micros) - 3_600_000_000);
        self.write("record_agent_change", move |c| {
            c.execute(
                "INSERT OR IGNORE INTO agent_changes (at, tenant_id) VALUES (?1, ?2)",
                params![at, tenant.as_str()],
            )
            .map_err(internal)?;
            c.execute("DELETE FROM agent_changes WHERE at < ?1", [hour_ago]).map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn agent_changes_since(&self, since: &Timestamp) -> StoreResult<Vec<(Timestamp, TenantId)>> {
        let since = since.clone();
        self.read("agent_changes_since", move |c| {
            let mut statement = c
                .prepare_cached("SELECT at, tenant_id FROM agent_changes WHERE at > ?1 ORDER BY at")
                .map_err(internal)?;
            let rows = statement
                .query_map([since], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(internal)?;
            let mut changes = Vec::new();
            for row in rows {
                let (at, tenant) = row.map_err(internal)?;
                if let Ok(tenant) = TenantId::parse(tenant) {
                    changes.push((Timestamp::stored(at), tenant));
                }
            }
            Ok(changes)
        })
        .await
    }

    async fn all_agents(&self) -> StoreResult<Vec<StoredAgent>> {
        self.read("all_agents", move |c| {
            let mut statement = c.prepare_cached("SELECT body FROM agents ORDER BY tenant_id, id").map_err(internal)?;
            let rows = statement.query_map([], |r| r.get::<_, String>(0)).map_err(internal)?;
            rows.map(|b| serde_json::from_str(&b.map_err(internal)?).map_err(internal)).collect()
        })
        .await
    }

    async fn delete_agent(&self, tenant: &TenantId, id: &AgentId) -> StoreResult<bool> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.write("delete_agent", move |c| {
            let n = c
                .execute("DELETE FROM agents WHERE tenant_id = ?1 AND id = ?2", params![tenant.as_str(), id.as_str()])
                .map_err(internal)?;
            Ok(n == 1)
        })
        .await
    }

    async fn hold_session(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        lease: HoldLease,
        take_over: bool,
    ) -> StoreResult<Hold> {
        let (tenant, session, turn) = (tenant.clone(), session.clone(), turn.clone());
        self.write("hold_session", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let exists: bool = tx
                .query_row(
                    "SELECT count(*) > 0 FROM sessions WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant.as_str(), session.as_str()],
                    |r| r.get(0),
                )
                .map_err(internal)?;
            if !exists {
                return Err(StoreError::session_not_found(&session));
            }
            let (holder, queued) = holder_row(&tx, &tenant, &session)?;
            let live = holder.filter(|(h, until)| h != turn.as_str() && *until >= lease.now);
            if let (Some((holder, _)), false) = (&live, take_over) {
                return Ok(Hold::Busy(MessageId::parse(holder.clone()).map_err(internal)?));
            }
            tx.execute(
                "INSERT OR REPLACE INTO session_holders (tenant_id, session_id, turn_id, until, queue) \
                 VALUES (?1, ?2, ?3, ?4, '[]')",
                params![tenant.as_str(), session.as_str(), turn.as_str(), lease.until],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)?;
            let taken_from = live.and_then(|(h, _)| MessageId::parse(h).ok());
            Ok(Hold::Held { queued, taken_from })
        })
        .await
    }

    async fn queue_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        now: i64,
    ) -> StoreResult<bool> {
        let (tenant, session, turn) = (tenant.clone(), session.clone(), turn.clone());
        self.write("queue_turn", move |c| {
            let n = c
                .execute(
                    "UPDATE session_holders SET queue = json_insert(queue, '$[#]', ?3) \
                     WHERE tenant_id = ?1 AND session_id = ?2 AND until >= ?4",
                    params![tenant.as_str(), session.as_str(), turn.as_str(), now],
                )
                .map_err(internal)?;
            Ok(n == 1)
        })
        .await
    }

    async fn renew_session_hold(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        until: i64,
    ) -> StoreResult<bool> {
        let (tenant, session, turn) = (tenant.clone(), session.clone(), turn.clone());
        self.write("renew_session_hold", move |c| {
            let n = c
                .execute(
                    "UPDATE session_holders SET until = ?4 WHERE tenant_id = ?1 AND session_id = ?2 AND turn_id = ?3",
                    params![tenant.as_str(), session.as_str(), turn.as_str(), until],
                )
                .map_err(internal)?;
            Ok(n == 1)
        })
        .await
    }

    async fn let_go_session(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        next: &MessageId,
        until: i64,
    ) -> StoreResult<Vec<MessageId>> {
        let (tenant, session, turn, next) = (tenant.clone(), session.clone(), turn.clone(), next.clone());
        self.write("let_go_session", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let (holder, queued) = holder_row(&tx, &tenant, &session)?;
            if holder.is_none_or(|(h, _)| h != turn.as_str()) {
                return Ok(Vec::new());
            }
            if queued.is_empty() {
                tx.execute(
                    "DELETE FROM session_holders WHERE tenant_id = ?1 AND session_id = ?2",
                    params![tenant.as_str(), session.as_str()],
                )
                .map_err(internal)?;
            } else {
                tx.execute(
                    "UPDATE session_holders SET turn_id = ?3, until = ?4, queue = '[]' \
                     WHERE tenant_id = ?1 AND session_id = ?2",
                    params![tenant.as_str(), session.as_str(), next.as_str(), until],
                )
                .map_err(internal)?;
            }
            tx.commit().map_err(internal)?;
            Ok(queued)
        })
        .await
    }

    async fn add_usage(
        &self,
        tenant: &TenantId,
        user: &UserId,
        day: &str,
        entries: &[crate::usage::UsageEntry],
    ) -> StoreResult<()> {
        let (tenant, user, day, entries) = (tenant.clone(), user.clone(), day.to_string(), entries.to_vec());
        self.write("add_usage", move |c| usage::add(c, &tenant, Some(&user), &day, &entries)).await
    }

    async fn add_tenant_usage(
        &self,
        tenant: &TenantId,
        day: &str,
        entries: &[crate::usage::UsageEntry],
    ) -> StoreResult<()> {
        let (tenant, day, entries) = (tenant.clone(), day.to_string(), entries.to_vec());
        self.write("add_tenant_usage", move |c| usage::add(c, &tenant, None, &day, &entries)).await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        from: &str,
        to: &str,
        user: Option<&UserId>,
    ) -> StoreResult<Vec<crate::usage::UsageRow>> {
        let (tenant, from, to, user) = (tenant.clone(), from.to_string(), to.to_string(), user.cloned());
        self.read("usage", move |c| usage::users(c, &tenant, &from, &to, user.as_ref())).await
    }

    async fn tenant_usage(&self, tenant: &TenantId, from: &str, to: &str) -> StoreResult<Vec<crate::usage::UsageRow>> {
        let (tenant, from, to) = (tenant.clone(), from.to_string(), to.to_string());
        self.read("tenant_usage", move |c| usage::totals(c, &tenant, &from, &to)).await
    }

    async fn put_channel(&self, channel: &crate::channels::StoredChannel, released: &[String]) -> StoreResult<bool> {
        let (channel, released) = (channel.clone(), released.to_vec());
        self.write("put_channel", move |c| channels::put(c, &channel, &released)).await
    }

    async fn get_channel(
        &self,
        tenant: &TenantId,
        id: &crate::ids::ChannelId,
    ) -> StoreResult<Option<crate::channels::StoredChannel>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read("get_channel", move |c| channels::get(c, &tenant, &id)).await
    }

    async fn list_channels(&self, tenant: &TenantId) -> StoreResult<Vec<crate::channels::StoredChannel>> {
        let tenant = tenant.clone();
        self.read("list_channels", move |c| channels::list(c, &tenant)).await
    }

    async fn delete_channel(&self, tenant: &TenantId, id: &crate::ids::ChannelId) -> StoreResult<bool> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.write("delete_channel", move |c| channels::delete(c, &tenant, &id)).await
    }

    async fn channel_at(&self, address: &str) -> StoreResult<Option<crate::channels::StoredChannel>> {
        let address = address.to_string();
        self.read("channel_at", move |c| channels::at(c, &address)).await
    }

    async fn set_delivery(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        delivery: &serde_json::Value,
    ) -> StoreResult<bool> {
        let (tenant, message, delivery) = (tenant.clone(), message.as_str().to_string(), delivery.to_string());
        self.write("set_delivery", move |c| channels::set_delivery(c, &tenant, &message, &delivery)).await
    }

    async fn put_budget(&self, tenant: &TenantId, budget: &crate::usage::Budget) -> StoreResult<()> {
        let (tenant, body) = (tenant.clone(), serde_json::to_string(budget).map_err(internal)?);
        self.write("put_budget", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO budgets (tenant_id, body) VALUES (?1, ?2)",
                params![tenant.as_str(), body],
            )
            .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn get_budget(&self, tenant: &TenantId) -> StoreResult<Option<crate::usage::Budget>> {
        let tenant = tenant.clone();
        self.read("get_budget", move |c| {
            let body: Option<String> = c
                .query_row("SELECT body FROM budgets WHERE tenant_id = ?1", params![tenant.as_str()], |r| r.get(0))
                .optional()
                .map_err(internal)?;
            body.map(|b| serde_json::from_str(&b).map_err(internal)).transpose()
        })
        .await
    }

    async fn note_once(&self, tenant: &TenantId, notice: &str, expires_at: i64) -> StoreResult<bool> {
        let (tenant, notice) = (tenant.clone(), notice.to_string());
        self.write("note_once", move |c| {
            c.execute("DELETE FROM notices WHERE expires_at < ?1", params![crate::timestamp::epoch_seconds()])
                .map_err(internal)?;
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO notices (tenant_id, notice, expires_at) VALUES (?1, ?2, ?3)",
                    params![tenant.as_str(), notice, expires_at],
                )
                .map_err(internal)?;
            Ok(n == 1)
        })
        .await
    }

    async fn hand_over(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        from: &MessageId,
        to: &MessageId,
        until: i64,
    ) -> StoreResult<Option<Vec<MessageId>>> {
        let (tenant, session, from, to) = (tenant.clone(), session.clone(), from.clone(), to.clone());
        self.write("hand_over", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let (holder, queued) = holder_row(&tx, &tenant, &session)?;
            if holder.is_none_or(|(h, _)| h != from.as_str()) {
                return Ok(None);
            }
            tx.execute(
                "UPDATE session_holders SET turn_id = ?3, until = ?4, queue = '[]' WHERE tenant_id = ?1 AND session_id = ?2",
                params![tenant.as_str(), session.as_str(), to.as_str(), until],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)?;
            Ok(Some(queued))
        })
        .await
    }

    async fn record_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        let (id, body) = (erasure.id.clone(), serde_json::to_string(erasure).map_err(internal)?);
        self.write("record_erasure", move |c| {
            c.execute("INSERT OR REPLACE INTO erasures (id, body) VALUES (?1, ?2)", params![id, body])
                .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn pending_erasures(&self, limit: usize) -> StoreResult<Vec<Erasure>> {
        self.read("pending_erasures", move |c| {
            let mut statement = c.prepare_cached("SELECT body FROM erasures ORDER BY id LIMIT ?1").map_err(internal)?;
            let rows = statement.query_map([limit as i64], |r| r.get::<_, String>(0)).map_err(internal)?;
            rows.map(|body| serde_json::from_str(&body.map_err(internal)?).map_err(internal)).collect()
        })
        .await
    }

    async fn finish_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        let id = erasure.id.clone();
        self.write("finish_erasure", move |c| {
            c.execute("DELETE FROM erasures WHERE id = ?1", [id]).map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn running_turns(&self, started_before: &Timestamp, limit: usize) -> StoreResult<Vec<TurnRecord>> {
        let before = started_before.clone();
        self.read("running_turns", move |c| turns::running(c, &before, limit)).await
    }

    async fn save_turn(&self, turn: &TurnRecord, events: &[TurnEvent], from: &[TurnStatus]) -> StoreResult<bool> {
        let (turn, events, from) = (turn.clone(), events.to_vec(), from.to_vec());
        self.write("save_turn", move |c| turns::save(c, &turn, &events, &from)).await
    }

    async fn delete_turn(&self, tenant: &TenantId, id: &MessageId, messages: &[MessageId]) -> StoreResult<()> {
        let (tenant, id, messages) = (tenant.clone(), id.clone(), messages.to_vec());
        self.write("delete_turn", move |c| turns::delete(c, &tenant, &id, &messages)).await
    }

    async fn import_session(&self, session: Session) -> StoreResult<bool> {
        self.write("import_session", move |c| insert_session(c, &session)).await
    }

    async fn import_message(&self, message: Message) -> StoreResult<bool> {
        self.write("import_message", move |c| {
            let tx = c.transaction().map_err(internal)?;
            let created = insert_message(&tx, &message)?;
            tx.execute(
                "UPDATE sessions SET last_message_at = ?3 WHERE tenant_id = ?1 AND id = ?2 \
                 AND (last_message_at IS NULL OR last_message_at < ?3)",
                params![message.tenant_id.as_str(), message.session_id.as_str(), message.timestamp],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)?;
            Ok(created)
        })
        .await
    }

    async fn record_events(&self, events: &[StoredEvent], deliveries: &[Delivery]) -> StoreResult<()> {
        let (events, deliveries) = (events.to_vec(), deliveries.to_vec());
        self.write("record_events", move |c| events::record(c, &events, &deliveries)).await
    }

    async fn list_events(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        before: &str,
        types: &[String],
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let (tenant, after, before, types) =
            (tenant.clone(), after.map(str::to_string), before.to_string(), types.to_vec());
        self.read("list_events", move |c| events::list(c, &tenant, after.as_deref(), &before, &types, limit)).await
    }

    async fn pending_deliveries(
        &self,
        due_at: Option<i64>,
        limit: usize,
        part: crate::store::OutboxPart,
    ) -> StoreResult<Vec<Delivery>> {
        self.read("pending_deliveries", move |c| events::pending(c, due_at, limit, part)).await
    }

    async fn claim_delivery(&self, delivery: &Delivery, owner: &str, now: i64, until: i64) -> StoreResult<bool> {
        let (d, owner) = (delivery.clone(), owner.to_string());
        self.write("claim_delivery", move |c| events::claim(c, &d, &owner, now, until)).await
    }

    async fn settle_delivery(&self, delivery: &Delivery, owner: &str, step: DeliveryStep) -> StoreResult<bool> {
        let (d, owner) = (delivery.clone(), owner.to_string());
        self.write("settle_delivery", move |c| events::settle(c, &d, &owner, &step)).await
    }

    async fn forget_events(&self, tenant: &TenantId, user: &UserId, session: Option<&SessionId>) -> StoreResult<usize> {
        let (tenant, user, session) = (tenant.clone(), user.clone(), session.cloned());
        self.write("forget_events", move |c| events::forget(c, &tenant, &user, session.as_ref())).await
    }

    async fn save_context_summary(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        summary: &ContextSummary,
        previous: Option<&Timestamp>,
    ) -> StoreResult<bool> {
        let (tenant, session, previous) = (tenant.clone(), session.clone(), previous.cloned());
        let text = serde_json::to_string(summary).map_err(internal)?;
        self.write("save_context_summary", move |c| {
            let n = c
                .execute(
                    "UPDATE sessions SET context_summary = ?3 WHERE tenant_id = ?1 AND id = ?2 \
                     AND ((context_summary IS NULL AND ?4 IS NULL) OR json_extract(context_summary, '$.createdAt') = ?4)",
                    params![tenant.as_str(), session.as_str(), text, previous],
                )
                .map_err(internal)?;
            Ok(n == 1)
        })
        .await
    }

    async fn search_messages(
        &self,
        tenant: &TenantId,
        query: &crate::store::search::SearchQuery,
    ) -> StoreResult<crate::store::search::SearchPage> {
        let (tenant, query) = (tenant.clone(), query.clone());
        // A search sees every message stored before it: what the background thread has not indexed
        // yet is indexed first.
        if self.read("search_pending", search::has_pending).await? {
            self.write("search_index", |c| {
                while search::index_pending(c, 1000)? > 0 {}
                Ok(())
            })
            .await?;
        }
        self.read("search", move |c| search::search(c, &tenant, &query)).await
    }
}

/// A session's holder (with its lease) and the turns queued on it, oldest first.
#[allow(clippy::type_complexity)]
fn holder_row(
    tx: &rusqlite::Transaction<'_>,
    tenant: &TenantId,
    session: &SessionId,
) -> StoreResult<(Option<(String, i64)>, Vec<MessageId>)> {
    let row: Option<(String, i64, String)> = tx
        .query_row(
            "SELECT turn_id, until, queue FROM session_holders WHERE tenant_id = ?1 AND session_id = ?2",
            params![tenant.as_str(), session.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(internal)?;
    let Some((holder, until, queue)) = row else { return Ok((None, Vec::new())) };
    let queue: Vec<String> = serde_json::from_str(&queue).map_err(internal)?;
    Ok((Some((holder, until)), queue.into_iter().filter_map(|id| MessageId::parse(id).ok()).collect()))
}

/// A turn's start in `tx`: the session checked (active, the owner's when given) and `count`
/// timestamps after its newest message reserved; the session as it was, and the timestamps.
fn reserve(
    tx: &rusqlite::Transaction<'_>,
    tenant: &TenantId,
    session: &SessionId,
    owner: Option<&UserId>,
    count: usize,
) -> StoreResult<(Session, Vec<Timestamp>)> {
    let stored = get_session(tx, tenant.as_str(), session.as_str())?;
    let stored = writable_session(stored, session, owner)?;
    let stamps = timestamp::allocate(stored.last_message_at.as_ref(), count);
    let last = stamps.last().cloned().unwrap_or_else(Timestamp::now);
    tx.prepare_cached("UPDATE sessions SET last_message_at = ?1, updated_at = ?1 WHERE tenant_id = ?2 AND id = ?3")
        .and_then(|mut s| s.execute(params![last, tenant.as_str(), session.as_str()]))
        .map_err(internal)?;
    Ok((stored, stamps))
}
