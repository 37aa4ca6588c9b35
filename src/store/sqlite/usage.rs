//! Usage, budgets and once-per-period notices in SQLite: `usage` (a user's day per agent and
//! model), `usage_totals` (a tenant's day, added to once a second by each process), `budgets` and
//! `notices` (schema version 13).

use rusqlite::{Connection, params};

use super::internal;
use crate::ids::{TenantId, UserId};
use crate::store::StoreResult;
use crate::usage::{Counts, UsageEntry, UsageRow};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    tenant_id TEXT NOT NULL,
    day TEXT NOT NULL,
    user_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    model_calls INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    unpriced_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, user_id, agent_id, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_totals (
    tenant_id TEXT NOT NULL,
    day TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    model_calls INTEGER NOT NULL DEFAULT 0,
    turns INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    unpriced_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, agent_id, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budgets (tenant_id TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notices (
    tenant_id TEXT NOT NULL,
    notice TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, notice)
) WITHOUT ROWID;
";

const COLUMNS: &str = "input_tokens, output_tokens, model_calls, turns, cost_micros, unpriced_tokens";

fn counts_params(c: &Counts) -> [i64; 6] {
    [c.input_tokens, c.output_tokens, c.model_calls, c.turns, c.cost_micros, c.unpriced_tokens].map(|v| v as i64)
}

fn counts_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Counts> {
    let n = |i: usize| r.get::<_, i64>(first + i).map(|v| v.max(0) as u64);
    Ok(Counts {
        input_tokens: n(0)?,
        output_tokens: n(1)?,
        model_calls: n(2)?,
        turns: n(3)?,
        cost_micros: n(4)?,
        unpriced_tokens: n(5)?,
    })
}

/// Adds entries to a user's day (`user` given) or to the tenant's totals, in one transaction.
pub(super) fn add(
    conn: &mut Connection,
    tenant: &TenantId,
    user: Option<&UserId>,
    day: &str,
    entries: &[UsageEntry],
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(internal)?;
    add_in(&tx, tenant, user, day, entries)?;
    tx.commit().map_err(internal)
}

/// Adds entries within the caller's transaction (a stored reply's usage goes with the reply).
pub(super) fn add_in(
    tx: &Connection,
    tenant: &TenantId,
    user: Option<&UserId>,
    day: &str,
    entries: &[UsageEntry],
) -> StoreResult<()> {
    let add = "input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + \
               excluded.output_tokens, model_calls = model_calls + excluded.model_calls, turns = turns + \
               excluded.turns, cost_micros = cost_micros + excluded.cost_micros, unpriced_tokens = \
               unpriced_tokens + excluded.unpriced_tokens";
    for e in entries {
        let c = counts_params(&e.counts);
        match user {
            Some(user) => tx
                .prepare_cached(&format!(
                    "INSERT INTO usage (tenant_id, day, user_id, agent_id, model, {COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                     ON CONFLICT (tenant_id, day, user_id, agent_id, model) DO UPDATE SET {add}"
                ))
                .and_then(|mut st| {
                    st.execute(params![
                        tenant.as_str(),
                        day,
                        user.as_str(),
                        e.agent,
                        e.model,
                        c[0],
                        c[1],
                        c[2],
                        c[3],
                        c[4],
                        c[5]
                    ])
                }),
            None => tx
                .prepare_cached(&format!(
                    "INSERT INTO usage_totals (tenant_id, day, agent_id, model, {COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                     ON CONFLICT (tenant_id, day, agent_id, model) DO UPDATE SET {add}"
                ))
                .and_then(|mut st| {
                    st.execute(params![tenant.as_str(), day, e.agent, e.model, c[0], c[1], c[2], c[3], c[4], c[5]])
                }),
        }
        .map_err(internal)?;
    }
    Ok(())
}

/// The users' rows (or one user's) from `from` to `to`.
pub(super) fn users(
    conn: &Connection,
    tenant: &TenantId,
    from: &str,
    to: &str,
    user: Option<&UserId>,
) -> StoreResult<Vec<UsageRow>> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT day, user_id, agent_id, model, {COLUMNS} FROM usage WHERE tenant_id = ?1 AND day >= ?2 \
             AND day <= ?3 AND (?4 IS NULL OR user_id = ?4) ORDER BY day, user_id, agent_id, model"
        ))
        .map_err(internal)?;
    let rows = statement
        .query_map(params![tenant.as_str(), from, to, user.map(|u| u.as_str())], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, counts_at(r, 4)?))
        })
        .map_err(internal)?;
    let mut out = Vec::new();
    for row in rows {
        let (day, user, agent, model, counts) = row.map_err(internal)?;
        let Ok(user) = UserId::parse(user) else { continue };
        out.push(UsageRow { day, user: Some(user), entry: UsageEntry { agent, model, counts } });
    }
    Ok(out)
}

/// The tenant's totals from `from` to `to`.
pub(super) fn totals(conn: &Connection, tenant: &TenantId, from: &str, to: &str) -> StoreResult<Vec<UsageRow>> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT day, agent_id, model, {COLUMNS} FROM usage_totals WHERE tenant_id = ?1 AND day >= ?2 \
             AND day <= ?3 ORDER BY day, agent_id, model"
        ))
        .map_err(internal)?;
    let rows = statement
        .query_map(params![tenant.as_str(), from, to], |r| {
            Ok(UsageRow {
                day: r.get(0)?,
                user: None,
                entry: UsageEntry { agent: r.get(1)?, model: r.get(2)?, counts: counts_at(r, 3)? },
            })
        })
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}
