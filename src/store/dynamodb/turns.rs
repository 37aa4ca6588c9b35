//! Turn records as items of the messages table, keyed `turn <turnId>` (a space, which no message id
//! has). They carry `tenantId` but neither `sessionId` nor `timestamp`, so neither index of the
//! table holds them and no message read ever meets one. `expiresAt` lets DynamoDB's TTL remove them.
//!
//! The running turns' registry, so that a sweep finds the turns of a server that died without a
//! table scan: items of the sessions table in a few partitions of their own (`id` = `running <n>`,
//! range key `tenantId` = `<createdAt> <turnId>`, no `userId`, so no index holds them), written
//! beside a running record's creation and deleted beside its final save (two small writes a
//! streamed or keyed turn; TTL removes an entry whose deletion was lost).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::errors::{map_err, written};
use super::items::s;
use super::{DynamoStore, Item};
use crate::ids::{MessageId, TenantId};
use crate::store::{StoreError, StoreResult, TurnEvent, TurnRecord, TurnStatus};
use crate::timestamp::Timestamp;

fn key(id: &MessageId) -> String {
    format!("turn {}", id.as_str())
}

/// How many partitions the running turns' registry spreads over.
const RUNNING_SHARDS: u32 = 4;

fn registry_key(turn: &TurnRecord) -> (AttributeValue, AttributeValue) {
    let shard = crate::store::outbox_shard(turn.turn_id.as_str(), RUNNING_SHARDS);
    (s(format!("running {shard}")), s(format!("{} {}", turn.created_at.as_str(), turn.turn_id.as_str())))
}

fn events_attribute(events: &[TurnEvent]) -> StoreResult<AttributeValue> {
    let list = events
        .iter()
        .map(|e| serde_json::to_string(e).map(AttributeValue::S))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Internal(format!("turn events: {e}")))?;
    Ok(AttributeValue::L(list))
}

fn from_item(item: Item) -> StoreResult<TurnRecord> {
    let bad = || StoreError::Internal("a stored turn record is not valid".into());
    let Some(AttributeValue::S(record)) = item.get("record") else { return Err(bad()) };
    let mut turn: TurnRecord = serde_json::from_str(record).map_err(|_| bad())?;
    if let Some(AttributeValue::L(events)) = item.get("events") {
        for e in events {
            if let AttributeValue::S(text) = e {
                turn.events.push(serde_json::from_str(text).map_err(|_| bad())?);
            }
        }
    }
    Ok(turn)
}

impl DynamoStore {
    pub(super) async fn put_turn(&self, turn: &TurnRecord) -> StoreResult<bool> {
        let item: Item = HashMap::from([
            ("id".to_string(), s(key(&turn.turn_id))),
            ("tenantId".to_string(), s(turn.tenant_id.as_str())),
            ("turnSessionId".to_string(), s(turn.session_id.as_str())),
            ("status".to_string(), s(turn.status.as_str())),
            ("record".to_string(), s(turn.to_json())),
            ("events".to_string(), events_attribute(&turn.events)?),
            ("expiresAt".to_string(), AttributeValue::N(turn.expires_at.to_string())),
        ]);
        if turn.status.is_final() {
            return self.put_if_absent(&self.messages, item).await;
        }
        let (shard, entry) = registry_key(turn);
        let entry = self
            .client
            .put_item()
            .table_name(&self.sessions)
            .item("id", shard)
            .item("tenantId", entry)
            .item("turnTenant", s(turn.tenant_id.as_str()))
            .item("turnId", s(turn.turn_id.as_str()))
            .item("expiresAt", AttributeValue::N(turn.expires_at.to_string()))
            .send();
        let (created, entry) = tokio::join!(self.put_if_absent(&self.messages, item), entry);
        entry.map_err(|e| map_err(&self.sessions, "PutItem", e))?;
        created
    }

    /// The registry's entries created before `before`, read consistently, page by page, with the
    /// records still running whose lease lapsed (at most `limit`; live ones do not count); an entry
    /// whose record ended or is gone is deleted on the way.
    pub(super) async fn read_running(&self, before: &Timestamp, limit: usize) -> StoreResult<Vec<TurnRecord>> {
        let now_ms = crate::timestamp::now_micros() / 1000;
        let mut found = Vec::new();
        for shard in 0..RUNNING_SHARDS {
            let mut start = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.sessions)
                    .key_condition_expression("id = :id AND tenantId < :before")
                    .expression_attribute_values(":id", s(format!("running {shard}")))
                    .expression_attribute_values(":before", s(before.as_str()))
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| map_err(&self.sessions, "Query", e))?;
                for entry in out.items.unwrap_or_default() {
                    let text = |name: &str| match entry.get(name) {
                        Some(AttributeValue::S(v)) => Some(v.clone()),
                        _ => None,
                    };
                    let (Some(tenant), Some(turn), Some(key)) = (text("turnTenant"), text("turnId"), text("tenantId"))
                    else {
                        continue;
                    };
                    let (Ok(tenant), Ok(turn)) = (TenantId::parse(tenant), MessageId::parse(turn)) else { continue };
                    match self.read_turn(&tenant, &turn).await? {
                        Some(record) if !record.status.is_final() => {
                            if record.lease_until < now_ms {
                                found.push(record);
                            }
                        }
                        _ => self.delete_entry(s(format!("running {shard}")), s(key)).await?,
                    }
                    if found.len() >= limit {
                        return Ok(found);
                    }
                }
                match out.last_evaluated_key {
                    Some(key) => start = Some(key),
                    None => break,
                }
            }
        }
        Ok(found)
    }

    async fn delete_entry(&self, shard: AttributeValue, entry: AttributeValue) -> StoreResult<()> {
        let result =
            self.client.delete_item().table_name(&self.sessions).key("id", shard).key("tenantId", entry).send().await;
        result.map(|_| ()).map_err(|e| map_err(&self.sessions, "DeleteItem", e))
    }

    pub(super) async fn read_turn(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<TurnRecord>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.messages)
            .key("id", s(key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_err(&self.messages, "GetItem", e))?;
        let Some(item) = out.item else { return Ok(None) };
        if !matches!(item.get("tenantId"), Some(AttributeValue::S(t)) if t == tenant.as_str()) {
            return Ok(None);
        }
        from_item(item).map(Some)
    }

    pub(super) async fn update_turn(
        &self,
        turn: &TurnRecord,
        events: &[TurnEvent],
        from: &[TurnStatus],
    ) -> StoreResult<bool> {
        let allowed: Vec<String> = (0..from.len()).map(|i| format!(":from{i}")).collect();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.messages)
            .key("id", s(key(&turn.turn_id)))
            .update_expression(
                "SET #status = :status, #record = :record, #events = list_append(#events, :new), turnSessionId = :sid",
            )
            .expression_attribute_values(":sid", s(turn.session_id.as_str()))
            .condition_expression(format!("tenantId = :t AND #status IN ({})", allowed.join(", ")))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#record", "record")
            .expression_attribute_names("#events", "events")
            .expression_attribute_values(":status", s(turn.status.as_str()))
            .expression_attribute_values(":record", s(turn.to_json()))
            .expression_attribute_values(":new", events_attribute(events)?)
            .expression_attribute_values(":t", s(turn.tenant_id.as_str()));
        for (name, status) in allowed.iter().zip(from) {
            update = update.expression_attribute_values(name, s(status.as_str()));
        }
        if !turn.status.is_final() || from.iter().all(|s| s.is_final()) {
            return written(update.send().await, &self.messages, "UpdateItem");
        }
        // The turn ends: its registry entry goes (a sweep deletes it if this write is lost).
        let (shard, entry) = registry_key(turn);
        let (saved, _) = tokio::join!(update.send(), self.delete_entry(shard, entry));
        written(saved, &self.messages, "UpdateItem")
    }

    pub(super) async fn remove_turn(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        messages: &[MessageId],
    ) -> StoreResult<()> {
        let keys = std::iter::once(key(id)).chain(messages.iter().map(|m| m.as_str().to_string()));
        for k in keys {
            let result = self
                .client
                .delete_item()
                .table_name(&self.messages)
                .key("id", s(k))
                .condition_expression("tenantId = :t")
                .expression_attribute_values(":t", s(tenant.as_str()))
                .send()
                .await;
            written(result, &self.messages, "DeleteItem")?;
        }
        Ok(())
    }

    /// The record keys of the turns whose user messages are `ids` (a turn's id is its user message's).
    pub(super) fn turn_keys(ids: &[String]) -> Vec<String> {
        ids.iter().map(|id| format!("turn {id}")).collect()
    }
}
