//! Erasures still due a second pass, as items of the sessions table in a partition of their own
//! (`id` = `erasures pending`: a space, which no session id has), range key `tenantId` = the erasure's time-ordered
//! id, the erasure as JSON in `body`, and `expiresAt` a day after its second pass was due. They
//! have no `userId`, so `TenantUserIndex` does not hold them. Erasures are rare: one partition.

use aws_sdk_dynamodb::types::AttributeValue;

use super::DynamoStore;
use super::errors::map_err;
use super::items::s;
use crate::store::{Erasure, StoreError, StoreResult};

/// The partition's key: it holds a space, which no session id has.
const PARTITION: &str = "erasures pending";

impl DynamoStore {
    pub(super) async fn put_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        let body = serde_json::to_string(erasure).map_err(|e| StoreError::Internal(format!("erasure: {e}")))?;
        let expires = erasure.sweep_at.micros().unwrap_or_default() / 1_000_000 + 86_400;
        self.client
            .put_item()
            .table_name(&self.sessions)
            .item("id", s(PARTITION))
            .item("tenantId", s(&erasure.id))
            .item("body", s(body))
            .item("expiresAt", AttributeValue::N(expires.to_string()))
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "PutItem", e))?;
        Ok(())
    }

    pub(super) async fn read_erasures(&self, limit: usize) -> StoreResult<Vec<Erasure>> {
        let out = self
            .client
            .query()
            .table_name(&self.sessions)
            .key_condition_expression("id = :id")
            .expression_attribute_values(":id", s(PARTITION))
            .consistent_read(true)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "Query", e))?;
        let bad = || StoreError::Internal("a stored erasure is not valid".into());
        out.items
            .unwrap_or_default()
            .iter()
            .map(|item| match item.get("body") {
                Some(AttributeValue::S(body)) => serde_json::from_str(body).map_err(|_| bad()),
                _ => Err(bad()),
            })
            .collect()
    }

    pub(super) async fn delete_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        self.client
            .delete_item()
            .table_name(&self.sessions)
            .key("id", s(PARTITION))
            .key("tenantId", s(&erasure.id))
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "DeleteItem", e))?;
        Ok(())
    }
}
