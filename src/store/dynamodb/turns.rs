//! Turn records as items of the messages table, keyed `turn <turnId>` (a space, which no message id
//! has). They carry `tenantId` but neither `sessionId` nor `timestamp`, so neither index of the
//! table holds them and no message read ever meets one. `expiresAt` lets DynamoDB's TTL remove them.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::errors::{map_err, written};
use super::items::s;
use super::{DynamoStore, Item};
use crate::ids::{MessageId, TenantId};
use crate::store::{StoreError, StoreResult, TurnEvent, TurnRecord, TurnStatus};

fn key(id: &MessageId) -> String {
    format!("turn {}", id.as_str())
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
        self.put_if_absent(&self.messages, item).await
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
        written(update.send().await, &self.messages, "UpdateItem")
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
