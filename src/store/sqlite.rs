//! The embedded backend: SQLite (bundled) in WAL mode, one writer connection and a few readers.
//!
//! Every call runs on Tokio's blocking pool so the async executor never waits on the disk. A write
//! returns after its transaction commits; with WAL and `synchronous=NORMAL` a committed transaction
//! survives the process being killed (only a power loss can roll back the newest commits).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    Appended, ConversationStore, Cursor, Deleted, Message, MessageQuery, Metadata, NewMessage, NewSession, Order, Page,
    PageRequest, Retention, Role, Session, StoreError, StoreResult, check_size,
};
use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};
use crate::timestamp;

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

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

const SESSION_COLUMNS: &str =
    "id, tenant_id, user_id, location_id, is_active, created_at, updated_at, last_message_at, metadata, expires_at";
const MESSAGE_COLUMNS: &str = "id, tenant_id, session_id, user_id, content, role, timestamp, metadata, expires_at";
/// Rows past their `expires_at` are hidden from every read until the purge deletes them.
const LIVE: &str = "(expires_at IS NULL OR expires_at > unixepoch())";
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

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("sqlite: {e}"))
}

fn open(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open SQLite database {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(internal)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
        .map_err(|e| StoreError::Unavailable(format!("cannot use SQLite database {}: {e}", path.display())))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(internal)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "SQLite database {} has schema version {version}, newer than this build ({SCHEMA_VERSION})",
            path.display()
        )));
    }
    let tx = conn.transaction().map_err(internal)?;
    if version < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(internal)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2).map_err(internal)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")).map_err(internal)?;
    tx.commit().map_err(internal)
}

impl SqliteStore {
    /// Opens (and creates, with its folder) the database at `path`, migrating the schema.
    pub fn open(path: impl Into<PathBuf>) -> StoreResult<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create folder {}: {e}", dir.display())))?;
        }
        let mut writer = open(&path)?;
        migrate(&mut writer, &path)?;
        // Checkpoints (which fsync) run on a thread of their own, so they rarely add milliseconds to a
        // request. Under sustained writes a background checkpoint never sees the whole WAL (new frames
        // keep arriving), so the writer still checkpoints past 4,000 pages (16 MB), by then a small
        // remainder, which lets the WAL start over; the file is cut back to 64 MB afterwards.
        writer
            .execute_batch("PRAGMA wal_autocheckpoint=4000; PRAGMA journal_size_limit=67108864;")
            .map_err(internal)?;
        let inner = Arc::new(Inner { path, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) });
        spawn_checkpointer(Arc::downgrade(&inner))?;
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
            c.execute("VACUUM INTO ?1", params![out.to_string_lossy()])
                .map_err(|e| StoreError::Unavailable(format!("cannot write the backup to {}: {e}", out.display())))?;
            Ok(())
        })
        .await
    }

    async fn write<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(internal)
        .and_then(|r| r);
        crate::telemetry::storage_call("sqlite", op, result.is_ok());
        result
    }

    async fn read<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open(&inner.path)?,
            };
            let result = f(&conn);
            let mut readers = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if readers.len() < MAX_READERS {
                readers.push(conn);
            }
            result
        })
        .await
        .map_err(internal)
        .and_then(|r| r);
        crate::telemetry::storage_call("sqlite", op, result.is_ok());
        result
    }
}

/// Checkpoints the WAL into the database every second (PASSIVE: it never blocks readers or the
/// writer), until the store is dropped.
fn spawn_checkpointer(inner: std::sync::Weak<Inner>) -> StoreResult<()> {
    let path = inner.upgrade().map(|i| i.path.clone()).unwrap_or_default();
    let conn = open(&path)?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while inner.upgrade().is_some() {
                std::thread::sleep(std::time::Duration::from_secs(1));
                if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                    tracing::warn!(error = %e, "SQLite checkpoint failed");
                }
            }
        })
        .map_err(internal)?;
    Ok(())
}

fn json_text(metadata: &Option<Metadata>) -> Option<String> {
    metadata.as_ref().map(|m| serde_json::Value::Object(m.clone()).to_string())
}

fn parse_json(text: Option<String>) -> Option<Metadata> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn bad_row(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnName(format!("stored {what} is not valid"))
}

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::parse(r.get::<_, String>(0)?).map_err(|_| bad_row("session id"))?,
        tenant_id: TenantId::parse(r.get::<_, String>(1)?).map_err(|_| bad_row("tenant id"))?,
        user_id: UserId::parse(r.get::<_, String>(2)?).map_err(|_| bad_row("user id"))?,
        location_id: r.get::<_, Option<String>>(3)?.and_then(|l| LocationId::parse(l).ok()),
        is_active: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        last_message_at: r.get(7)?,
        metadata: parse_json(r.get(8)?),
        expires_at: r.get(9)?,
    })
}

fn message_from_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: MessageId::parse(r.get::<_, String>(0)?).map_err(|_| bad_row("message id"))?,
        tenant_id: TenantId::parse(r.get::<_, String>(1)?).map_err(|_| bad_row("tenant id"))?,
        session_id: SessionId::parse(r.get::<_, String>(2)?).map_err(|_| bad_row("session id"))?,
        user_id: UserId::parse(r.get::<_, String>(3)?).map_err(|_| bad_row("user id"))?,
        content: r.get(4)?,
        role: Role::parse(&r.get::<_, String>(5)?).ok_or_else(|| bad_row("role"))?,
        timestamp: r.get(6)?,
        metadata: parse_json(r.get(7)?),
        expires_at: r.get(8)?,
    })
}

fn get_session(conn: &Connection, tenant: &str, id: &str) -> StoreResult<Option<Session>> {
    conn.prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = ?1 AND id = ?2 AND {LIVE}"))
        .and_then(|mut s| s.query_row(params![tenant, id], session_from_row).optional())
        .map_err(internal)
}

/// A message by id, expired or not (ids stay taken until the row is purged).
fn get_message(conn: &Connection, id: &str) -> StoreResult<Option<Message>> {
    conn.prepare_cached(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id], message_from_row).optional())
        .map_err(internal)
}

fn insert_session(conn: &Connection, s: &Session) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))
        .and_then(|mut st| {
            st.execute(params![
                s.id.as_str(),
                s.tenant_id.as_str(),
                s.user_id.as_str(),
                s.location_id.as_ref().map(|l| l.as_str()),
                s.is_active,
                s.created_at,
                s.updated_at,
                s.last_message_at,
                json_text(&s.metadata),
                s.expires_at,
            ])
        })
        .map_err(internal)?;
    Ok(n > 0)
}

fn insert_message(conn: &Connection, m: &Message) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO messages ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))
        .and_then(|mut st| {
            st.execute(params![
                m.id.as_str(),
                m.tenant_id.as_str(),
                m.session_id.as_str(),
                m.user_id.as_str(),
                m.content,
                m.role.as_str(),
                m.timestamp,
                json_text(&m.metadata),
                m.expires_at,
            ])
        })
        .map_err(internal)?;
    Ok(n > 0)
}

/// Runs a message query with positional parameters and splits off the next-page cursor.
fn message_page(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    limit: usize,
) -> StoreResult<Page<Message>> {
    let mut stmt = conn.prepare_cached(sql).map_err(internal)?;
    let mut items = stmt
        .query_map(params, message_from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(internal)?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|m| Cursor::new(&m.timestamp, m.id.as_str()))
    } else {
        None
    };
    Ok(Page { items, next })
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

    async fn create_session(&self, new: NewSession) -> StoreResult<Session> {
        let session = Session::new(new, self.retention);
        let s = session.clone();
        self.write("create_session", move |c| insert_session(c, &s)).await?;
        Ok(session)
    }

    async fn create_session_with(
        &self,
        new: NewSession,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(Session, Vec<Message>)> {
        let mut session = Session::new(new, self.retention);
        let messages = super::first_messages(&mut session, messages, self.retention);
        for m in &messages {
            check_size(m)?;
        }
        let (s, ms) = (session.clone(), messages.clone());
        self.write("create_session_with", move |c| {
            let tx = c.transaction().map_err(internal)?;
            insert_session(&tx, &s)?;
            for m in &ms {
                if !insert_message(&tx, m)? {
                    return Err(StoreError::Conflict(format!("message id {} is already used", m.id)));
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
            let mut items = stmt
                .query_map(params![tenant.as_str(), user.as_str(), t, i, page.limit as i64 + 1], session_from_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(internal)?;
            let next = if items.len() > page.limit {
                items.truncate(page.limit);
                items.last().map(|s| Cursor::new(&s.updated_at, s.id.as_str()))
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn append_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Vec<Appended>> {
        let (tenant, session) = (tenant.clone(), session.clone());
        let retention = self.retention;
        self.write("append_messages", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let stored = get_session(&tx, tenant.as_str(), session.as_str())?
                .ok_or_else(|| StoreError::NotFound(format!("session {session} not found")))?;
            if !stored.is_active {
                return Err(StoreError::Conflict(format!("session {session} is closed")));
            }
            // Validate everything before writing anything.
            let mut results: Vec<Option<Appended>> = Vec::with_capacity(messages.len());
            let mut fresh = 0;
            for m in &messages {
                match get_message(&tx, m.id.as_str())? {
                    Some(existing) if existing.tenant_id == tenant && existing.session_id == session => {
                        results.push(Some(Appended { message: existing, created: false }))
                    }
                    Some(_) => return Err(StoreError::Conflict(format!("message id {} is already used", m.id))),
                    None => {
                        fresh += 1;
                        results.push(None)
                    }
                }
            }
            let mut stamps = timestamp::allocate(stored.last_message_at.as_deref(), fresh).into_iter();
            let mut last = None;
            let mut out = Vec::with_capacity(messages.len());
            for (m, done) in messages.into_iter().zip(results) {
                if let Some(done) = done {
                    out.push(done);
                    continue;
                }
                let ts = stamps.next().unwrap_or_default();
                let expires_at = timestamp::parse_micros(&ts).and_then(|micros| retention.expires_at(micros));
                last = Some((ts.clone(), expires_at));
                let message = Message {
                    id: m.id,
                    tenant_id: tenant.clone(),
                    session_id: session.clone(),
                    user_id: m.user_id,
                    content: m.content,
                    role: m.role,
                    timestamp: ts,
                    metadata: m.metadata,
                    expires_at,
                };
                check_size(&message)?;
                out.push(Appended { message, created: true });
            }
            for a in out.iter().filter(|a| a.created) {
                insert_message(&tx, &a.message)?;
            }
            if let Some((last, expires_at)) = last {
                tx.execute(
                    "UPDATE sessions SET last_message_at = ?1, updated_at = ?1, \
                     expires_at = coalesce(?4, expires_at) WHERE tenant_id = ?2 AND id = ?3",
                    params![last, tenant.as_str(), session.as_str(), expires_at],
                )
                .map_err(internal)?;
            }
            tx.commit().map_err(internal)?;
            Ok(out)
        })
        .await
    }

    async fn begin_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        user: &UserId,
        count: usize,
    ) -> StoreResult<(Session, Vec<String>)> {
        let (tenant, session, user) = (tenant.clone(), session.clone(), user.clone());
        self.write("begin_turn", move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
            let stored = get_session(&tx, tenant.as_str(), session.as_str())?
                .filter(|s| s.user_id == user)
                .ok_or_else(|| StoreError::NotFound(format!("session {session} not found for this tenant and user")))?;
            if !stored.is_active {
                return Err(StoreError::Conflict(format!(
                    "session {session} is closed; send the message without sessionId to start a new one"
                )));
            }
            let stamps = timestamp::allocate(stored.last_message_at.as_deref(), count);
            let last = stamps.last().cloned().unwrap_or_default();
            tx.execute(
                "UPDATE sessions SET last_message_at = ?1, updated_at = ?1 WHERE tenant_id = ?2 AND id = ?3",
                params![last, tenant.as_str(), session.as_str()],
            )
            .map_err(internal)?;
            tx.commit().map_err(internal)?;
            Ok((stored, stamps))
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
            for mut m in messages {
                check_size(&m)?;
                m.expires_at = timestamp::parse_micros(&m.timestamp).and_then(|micros| retention.expires_at(micros));
                if insert_message(&tx, &m)? {
                    out.push(Appended { message: m, created: true });
                } else {
                    match get_message(&tx, m.id.as_str())? {
                        Some(existing) if existing.tenant_id == tenant && existing.session_id == session => {
                            out.push(Appended { message: existing, created: false })
                        }
                        _ => return Err(StoreError::Conflict(format!("message id {} is already used", m.id))),
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
        reserved_last: &str,
        previous: Option<&str>,
    ) -> StoreResult<()> {
        let (tenant, session) = (tenant.clone(), session.clone());
        let (reserved, previous) = (reserved_last.to_string(), previous.map(str::to_string));
        self.write("release_turn", move |c| {
            c.execute(
                "UPDATE sessions SET last_message_at = ?4 WHERE tenant_id = ?1 AND id = ?2 AND last_message_at = ?3",
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
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 AND session_id = ?2 \
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

    async fn delete_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<usize>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.write("delete_session", move |c| {
            let tx = c.transaction().map_err(internal)?;
            let messages = tx
                .execute(
                    "DELETE FROM messages WHERE tenant_id = ?1 AND session_id = ?2",
                    params![tenant.as_str(), id.as_str()],
                )
                .map_err(internal)?;
            let sessions = tx
                .execute("DELETE FROM sessions WHERE tenant_id = ?1 AND id = ?2", params![tenant.as_str(), id.as_str()])
                .map_err(internal)?;
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
        for table in ["messages", "sessions"] {
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
        action_id: &str,
        from: &str,
        to: serde_json::Value,
    ) -> StoreResult<bool> {
        let (tenant, message, action_id, from) =
            (tenant.clone(), message.clone(), action_id.to_string(), from.to_string());
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
            let Some(slot) = actions.iter_mut().find(|a| a["id"] == serde_json::json!(action_id)) else {
                return Ok(false);
            };
            if slot["status"] != serde_json::json!(from) {
                return Ok(false);
            }
            *slot = to;
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
}
