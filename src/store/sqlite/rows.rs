//! Sessions and messages as SQLite rows, and the statements that read and write one row.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::internal;
use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};
use crate::store::{Message, Metadata, Page, Role, Session, StoreResult};
use crate::timestamp::Timestamp;

impl rusqlite::ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.as_str().to_sql()
    }
}

impl rusqlite::types::FromSql for Timestamp {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(value).map(Timestamp::stored)
    }
}

pub(super) const SESSION_COLUMNS: &str = "id, tenant_id, user_id, location_id, is_active, created_at, updated_at, last_message_at, metadata, expires_at, \
     context_summary";
pub(super) const MESSAGE_COLUMNS: &str =
    "id, tenant_id, session_id, user_id, content, role, timestamp, metadata, expires_at";
/// `MESSAGE_COLUMNS` with the metadata only when it is an agent message's with `actions` (a model's
/// history; a user message's metadata is the client's, never shown to the model).
pub(super) const MODEL_HISTORY_COLUMNS: &str = "id, tenant_id, session_id, user_id, content, role, timestamp, \
     CASE WHEN role = 'agent' AND instr(metadata, '\"actions\"') > 0 THEN json_object('actions', metadata -> '$.actions') END, expires_at";
/// Rows past their `expires_at` are hidden from every read until the purge deletes them.
pub(super) const LIVE: &str = "(expires_at IS NULL OR expires_at > unixepoch())";
pub(super) fn json_text(metadata: &Option<Metadata>) -> Option<String> {
    metadata.as_ref().map(|m| serde_json::Value::Object(m.clone()).to_string())
}

pub(super) fn parse_json(text: Option<String>) -> Option<Metadata> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

pub(super) fn bad_row(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnName(format!("stored {what} is not valid"))
}

pub(super) fn session_from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
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
        context_summary: r.get::<_, Option<String>>(10)?.and_then(|t| serde_json::from_str(&t).ok()),
    })
}

pub(super) fn message_from_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: MessageId::parse(r.get::<_, String>(0)?).map_err(|_| bad_row("message id"))?,
        tenant_id: TenantId::parse(r.get::<_, String>(1)?).map_err(|_| bad_row("tenant id"))?,
        session_id: SessionId::parse(r.get::<_, String>(2)?).map_err(|_| bad_row("session id"))?,
        user_id: UserId::parse(r.get::<_, String>(3)?).map_err(|_| bad_row("user id"))?,
        content: r.get(4)?,
        role: Role::parse(r.get_ref(5)?.as_str()?).ok_or_else(|| bad_row("role"))?,
        timestamp: r.get(6)?,
        metadata: parse_json(r.get(7)?),
        expires_at: r.get(8)?,
        counted: None,
    })
}

pub(super) fn get_session(conn: &Connection, tenant: &str, id: &str) -> StoreResult<Option<Session>> {
    conn.prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = ?1 AND id = ?2 AND {LIVE}"))
        .and_then(|mut s| s.query_row(params![tenant, id], session_from_row).optional())
        .map_err(internal)
}

/// A message by id, expired or not (ids stay taken until the row is purged).
pub(super) fn get_message(conn: &Connection, id: &str) -> StoreResult<Option<Message>> {
    conn.prepare_cached(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id], message_from_row).optional())
        .map_err(internal)
}

pub(super) fn insert_session(conn: &Connection, s: &Session) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
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
                s.context_summary.as_ref().and_then(|c| serde_json::to_string(c).ok()),
            ])
        })
        .map_err(internal)?;
    Ok(n > 0)
}

/// Inserts a message unless its id is stored, and counts the usage it carries when it is new (in
/// the caller's transaction: a reply and its usage are written together, and a retried write of
/// the same reply counts nothing).
pub(super) fn insert_message(conn: &Connection, m: &Message) -> StoreResult<bool> {
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
    if let (true, Some(tally)) = (n > 0, &m.counted) {
        super::usage::add_in(conn, &m.tenant_id, Some(&m.user_id), &tally.day, &tally.entries)?;
    }
    Ok(n > 0)
}

/// Runs a message query with positional parameters and splits off the next-page cursor.
pub(super) fn message_page(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    limit: usize,
) -> StoreResult<Page<Message>> {
    let mut stmt = conn.prepare_cached(sql).map_err(internal)?;
    let items = stmt
        .query_map(params, message_from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(internal)?;
    Ok(Page::of_messages(items, limit))
}
