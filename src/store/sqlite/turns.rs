//! Turn records as SQLite rows: the record as JSON, its events as a JSON array beside it.

use rusqlite::{Connection, OptionalExtension, params};

use super::internal;
use crate::ids::{MessageId, TenantId};
use crate::store::{StoreResult, TurnEvent, TurnRecord, TurnStatus};

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

pub(super) fn save(
    conn: &mut Connection,
    turn: &TurnRecord,
    new: &[TurnEvent],
    from: &[TurnStatus],
) -> StoreResult<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(internal)?;
    let Some(stored) = get(&tx, &turn.tenant_id, &turn.turn_id)? else { return Ok(false) };
    if !from.contains(&stored.status) {
        return Ok(false);
    }
    let mut events = stored.events;
    events.extend(new.iter().cloned());
    tx.execute(
        "UPDATE turns SET status = ?2, record = ?3, events = ?4, session_id = ?5 WHERE id = ?1",
        params![
            turn.turn_id.as_str(),
            turn.status.as_str(),
            turn.to_json(),
            serde_json::to_string(&events).map_err(internal)?,
            turn.session_id.as_str()
        ],
    )
    .map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(true)
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
