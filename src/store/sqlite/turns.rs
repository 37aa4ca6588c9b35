//! Turn records as SQLite rows: the record as JSON, its events as a JSON array beside it.

use rusqlite::{Connection, OptionalExtension, params};

use super::internal;
use crate::ids::{MessageId, TenantId};
use crate::store::{StoreResult, TurnEvent, TurnRecord, TurnStatus};
use crate::timestamp::Timestamp;

pub(super) fn create(conn: &Connection, turn: &TurnRecord) -> StoreResult<bool> {
    let events = serde_json::to_string(&turn.events).map_err(internal)?;
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO turns (id, tenant_id, session_id, user_id, status, record, events, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                turn.turn_id.as_str(),
                turn.tenant_id.as_str(),
                turn.session_id.as_str(),
                turn.user_id.as_str(),
                turn.status.as_str(),
                turn.to_json(),
                events,
                turn.expires_at
            ],
        )
        .map_err(internal)?;
    Ok(n > 0)
}

pub(super) fn get(conn: &Connection, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<TurnRecord>> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT record, events FROM turns WHERE id = ?1 AND tenant_id = ?2")
        .and_then(|mut s| s.query_row(params![id.as_str(), tenant.as_str()], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(internal)?;
    let Some((record, events)) = row else { return Ok(None) };
    let mut turn: TurnRecord = serde_json::from_str(&record).map_err(internal)?;
    turn.events = serde_json::from_str(&events).map_err(internal)?;
    Ok(Some(turn))
}

/// Running records of every tenant created before `before` whose lease lapsed, at most `limit`.
pub(super) fn running(conn: &Connection, before: &Timestamp, limit: usize) -> StoreResult<Vec<TurnRecord>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT record, events FROM turns WHERE status IN ('running', 'queued') \
             AND json_extract(record, '$.createdAt') < ?1 AND json_extract(record, '$.leaseUntil') < ?3 LIMIT ?2",
        )
        .map_err(internal)?;
    let rows = statement
        .query_map(params![before.as_str(), limit as i64, crate::timestamp::now_micros() / 1000], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(internal)?;
    let mut turns = Vec::new();
    for row in rows {
        let (record, events) = row.map_err(internal)?;
        let mut turn: TurnRecord = serde_json::from_str(&record).map_err(internal)?;
        turn.events = serde_json::from_str(&events).map_err(internal)?;
        turns.push(turn);
    }
    Ok(turns)
}

/// Saves a record whose stored status is one of `from`, appending `new` to its events, in one
/// statement: the stored events are neither read nor parsed (a turn's last save carries its whole
/// answer), the new ones are spliced onto the stored JSON array.
pub(super) fn save(conn: &Connection, turn: &TurnRecord, new: &[TurnEvent], from: &[TurnStatus]) -> StoreResult<bool> {
    let statuses: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let new = match new {
        [] => None,
        _ => Some(serde_json::to_string(new).map_err(internal)?),
    };
    let n = conn
        .prepare_cached(
            "UPDATE turns SET status = ?3, record = ?4, session_id = ?5, events = CASE \
                 WHEN ?6 IS NULL THEN events \
                 WHEN events = '[]' THEN ?6 \
                 ELSE substr(events, 1, length(events) - 1) || ',' || substr(?6, 2) END \
             WHERE id = ?1 AND tenant_id = ?2 AND status IN (SELECT value FROM json_each(?7))",
        )
        .and_then(|mut s| {
            s.execute(params![
                turn.turn_id.as_str(),
                turn.tenant_id.as_str(),
                turn.status.as_str(),
                turn.to_json(),
                turn.session_id.as_str(),
                new,
                serde_json::to_string(&statuses).unwrap_or_default(),
            ])
        })
        .map_err(internal)?;
    Ok(n == 1)
}

pub(super) fn delete(
    conn: &mut Connection,
    tenant: &TenantId,
    id: &MessageId,
    messages: &[MessageId],
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(internal)?;
    tx.execute("DELETE FROM turns WHERE id = ?1 AND tenant_id = ?2", params![id.as_str(), tenant.as_str()])
        .map_err(internal)?;
    for m in messages {
        tx.execute("DELETE FROM messages WHERE id = ?1 AND tenant_id = ?2", params![m.as_str(), tenant.as_str()])
            .map_err(internal)?;
    }
    tx.commit().map_err(internal)
}
