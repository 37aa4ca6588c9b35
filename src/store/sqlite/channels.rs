//! A tenant's channels (`channels`, the spec as JSON) and the external addresses they claim
//! (`channel_claims`, one row per address: whose it is).

use rusqlite::{Connection, OptionalExtension, params};

use super::internal;
use crate::channels::{Claim, StoredChannel};
use crate::ids::{ChannelId, TenantId};
use crate::store::{StoreError, StoreResult};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS channels (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel_claims (
    address TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    channel_id TEXT NOT NULL
) WITHOUT ROWID;
";

fn parse(body: String) -> StoreResult<StoredChannel> {
    serde_json::from_str(&body).map_err(|_| StoreError::Internal("a stored channel is not valid".into()))
}

/// Claims the channel's addresses (none may be another tenant's, or another channel's unless
/// shared within the tenant), releases `released`, and stores the channel, in one transaction.
pub(super) fn put(conn: &mut Connection, channel: &StoredChannel, released: &[String]) -> StoreResult<bool> {
    let tx = conn.transaction().map_err(internal)?;
    let (tenant, id) = (channel.tenant_id.as_str(), channel.id.as_str());
    for Claim { address, per_tenant } in channel.claims() {
        let owner: Option<(String, String)> = tx
            .query_row("SELECT tenant_id, channel_id FROM channel_claims WHERE address = ?1", [&address], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(internal)?;
        if let Some((t, c)) = owner
            && (t != tenant || (!per_tenant && c != id))
        {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO channel_claims (address, tenant_id, channel_id) VALUES (?1, ?2, ?3)",
            params![address, tenant, id],
        )
        .map_err(internal)?;
    }
    for address in released {
        tx.execute(
            "DELETE FROM channel_claims WHERE address = ?1 AND tenant_id = ?2 AND channel_id = ?3",
            params![address, tenant, id],
        )
        .map_err(internal)?;
    }
    let body = serde_json::to_string(channel).map_err(internal)?;
    tx.execute("INSERT OR REPLACE INTO channels (tenant_id, id, body) VALUES (?1, ?2, ?3)", params![tenant, id, body])
        .map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(true)
}

pub(super) fn get(conn: &Connection, tenant: &TenantId, id: &ChannelId) -> StoreResult<Option<StoredChannel>> {
    conn.query_row(
        "SELECT body FROM channels WHERE tenant_id = ?1 AND id = ?2",
        params![tenant.as_str(), id.as_str()],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map_err(internal)?
    .map(parse)
    .transpose()
}

pub(super) fn list(conn: &Connection, tenant: &TenantId) -> StoreResult<Vec<StoredChannel>> {
    let mut st = conn.prepare("SELECT body FROM channels WHERE tenant_id = ?1 ORDER BY id").map_err(internal)?;
    let rows = st.query_map([tenant.as_str()], |r| r.get::<_, String>(0)).map_err(internal)?;
    rows.map(|r| r.map_err(internal).and_then(parse)).collect()
}

/// Deletes a channel and the claims it holds.
pub(super) fn delete(conn: &mut Connection, tenant: &TenantId, id: &ChannelId) -> StoreResult<bool> {
    let tx = conn.transaction().map_err(internal)?;
    let params = params![tenant.as_str(), id.as_str()];
    tx.execute("DELETE FROM channel_claims WHERE tenant_id = ?1 AND channel_id = ?2", params).map_err(internal)?;
    let n = tx.execute("DELETE FROM channels WHERE tenant_id = ?1 AND id = ?2", params).map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(n > 0)
}

/// The channel that claims `address`.
pub(super) fn at(conn: &Connection, address: &str) -> StoreResult<Option<StoredChannel>> {
    conn.query_row(
        "SELECT c.body FROM channel_claims a JOIN channels c ON c.tenant_id = a.tenant_id AND c.id = a.channel_id \
         WHERE a.address = ?1",
        [address],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map_err(internal)?
    .map(parse)
    .transpose()
    // Only while the channel still has the address (as on DynamoDB).
    .map(|c| c.filter(|c| c.claims().iter().any(|k| k.address == address)))
}

/// Sets a message's `metadata.delivery` (the message is the tenant's).
pub(super) fn set_delivery(conn: &Connection, tenant: &TenantId, message: &str, delivery: &str) -> StoreResult<bool> {
    let n = conn
        .execute(
            "UPDATE messages SET metadata = json_set(coalesce(metadata, '{}'), '$.delivery', json(?3)) \
             WHERE id = ?1 AND tenant_id = ?2",
            params![message, tenant.as_str(), delivery],
        )
        .map_err(internal)?;
    Ok(n > 0)
}
