//! Change events and webhook deliveries as SQLite rows (tables `events` and `deliveries`).

use rusqlite::{Connection, Row, params};

use super::internal;
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::{Delivery, DeliveryStep, StoreResult, StoredEvent};

pub(super) fn record(conn: &mut Connection, events: &[StoredEvent], deliveries: &[Delivery]) -> StoreResult<()> {
    let tx = conn.transaction().map_err(internal)?;
    for e in events {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO events (id, tenant_id, type, user_id, body, expires_at, session_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                e.id,
                e.tenant_id.as_str(),
                e.kind,
                e.user_id.as_ref().map(|u| u.as_str()),
                e.body,
                e.expires_at,
                e.session_id.as_ref().map(|s| s.as_str())
            ])
        })
        .map_err(internal)?;
    }
    for d in deliveries {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO deliveries (event_id, endpoint, tenant_id, type, user_id, body, attempts, next_at, \
             first_at, lease_until, last_error, session_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .and_then(|mut s| {
            s.execute(params![
                d.event_id,
                d.endpoint,
                d.tenant_id.as_str(),
                d.kind,
                d.user_id.as_ref().map(|u| u.as_str()),
                d.body,
                d.attempts,
                d.next_at,
                d.first_at,
                d.lease_until,
                d.last_error,
                d.session_id.as_ref().map(|s| s.as_str())
            ])
        })
        .map_err(internal)?;
    }
    tx.commit().map_err(internal)
}

fn user(value: Option<String>) -> Option<UserId> {
    value.and_then(|u| UserId::parse(u).ok())
}

fn session(value: Option<String>) -> Option<SessionId> {
    value.and_then(|s| SessionId::parse(s).ok())
}

fn event_from_row(r: &Row) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: r.get(0)?,
        tenant_id: TenantId::parse(r.get::<_, String>(1)?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e)))?,
        kind: r.get(2)?,
        user_id: user(r.get(3)?),
        body: r.get(4)?,
        expires_at: r.get(5)?,
        session_id: session(r.get(6)?),
    })
}

pub(super) fn list(
    conn: &Connection,
    tenant: &TenantId,
    after: Option<&str>,
    before: &str,
    types: &[String],
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    // The types, as a JSON array matched with json_each: one statement whatever their number.
    let types = serde_json::to_string(types).map_err(internal)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, tenant_id, type, user_id, body, expires_at, session_id FROM events \
             WHERE tenant_id = ?1 AND id > ?2 AND id < ?3 AND expires_at > unixepoch() \
             AND (json_array_length(?4) = 0 OR type IN (SELECT value FROM json_each(?4))) \
             ORDER BY id LIMIT ?5",
        )
        .map_err(internal)?;
    stmt.query_map(params![tenant.as_str(), after.unwrap_or(""), before, types, limit as i64], event_from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(internal)
}

const DELIVERY_COLUMNS: &str = "event_id, endpoint, tenant_id, type, user_id, body, attempts, next_at, first_at, lease_until, last_error, \
     session_id";

fn delivery_from_row(r: &Row) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        event_id: r.get(0)?,
        endpoint: r.get(1)?,
        tenant_id: TenantId::parse(r.get::<_, String>(2)?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e)))?,
        kind: r.get(3)?,
        user_id: user(r.get(4)?),
        body: r.get(5)?,
        attempts: r.get(6)?,
        next_at: r.get(7)?,
        first_at: r.get(8)?,
        lease_until: r.get(9)?,
        last_error: r.get(10)?,
        session_id: session(r.get(11)?),
    })
}

pub(super) fn pending(
    conn: &Connection,
    due_at: Option<i64>,
    limit: usize,
    part: crate::store::OutboxPart,
) -> StoreResult<Vec<Delivery>> {
    use crate::store::OutboxPart;
    let part = match part {
        OutboxPart::All => 0,
        OutboxPart::Channels => 1,
        OutboxPart::Webhooks => 2,
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries \
             WHERE (?1 IS NULL OR (next_at <= ?1 AND lease_until <= ?1)) \
             AND (?3 = 0 OR (substr(endpoint, 1, 8) = 'channel ') = (?3 = 1)) \
             ORDER BY next_at, event_id LIMIT ?2"
        ))
        .map_err(internal)?;
    stmt.query_map(params![due_at, limit as i64, part], delivery_from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(internal)
}

pub(super) fn claim(conn: &Connection, d: &Delivery, owner: &str, now: i64, until: i64) -> StoreResult<bool> {
    let n = conn
        .execute(
            "UPDATE deliveries SET lease_until = ?5, lease_owner = ?6 WHERE event_id = ?1 AND endpoint = ?2 \
             AND attempts = ?3 AND next_at <= ?4 AND lease_until <= ?4",
            params![d.event_id, d.endpoint, d.attempts, now, until, owner],
        )
        .map_err(internal)?;
    Ok(n == 1)
}

pub(super) fn settle(conn: &Connection, d: &Delivery, owner: &str, step: &DeliveryStep) -> StoreResult<bool> {
    let n = match step {
        DeliveryStep::Finished => conn.execute(
            "DELETE FROM deliveries WHERE event_id = ?1 AND endpoint = ?2 AND lease_owner = ?3",
            params![d.event_id, d.endpoint, owner],
        ),
        DeliveryStep::Retry { attempts, next_at, error } => conn.execute(
            "UPDATE deliveries SET attempts = ?4, next_at = ?5, last_error = ?6, lease_until = 0, lease_owner = NULL \
             WHERE event_id = ?1 AND endpoint = ?2 AND lease_owner = ?3",
            params![d.event_id, d.endpoint, owner, attempts, next_at, error],
        ),
    }
    .map_err(internal)?;
    Ok(n == 1)
}

pub(super) fn forget(
    conn: &mut Connection,
    tenant: &TenantId,
    user: &UserId,
    session: Option<&SessionId>,
) -> StoreResult<usize> {
    let tx = conn.transaction().map_err(internal)?;
    let keys = params![tenant.as_str(), user.as_str(), session.map(|s| s.as_str())];
    // Rows recorded before schema version 8 have no session_id: their body names the session.
    let mut n = tx
        .execute(
            "DELETE FROM events WHERE tenant_id = ?1 AND user_id = ?2 AND (?3 IS NULL OR session_id = ?3 \
             OR (session_id IS NULL AND json_extract(body, '$.data.sessionId') = ?3))",
            keys,
        )
        .map_err(internal)?;
    n += tx
        .execute(
            "DELETE FROM deliveries WHERE tenant_id = ?1 AND user_id = ?2 AND (?3 IS NULL OR session_id = ?3 \
             OR (session_id IS NULL AND json_extract(body, '$.data.sessionId') = ?3))",
            keys,
        )
        .map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(n)
}
