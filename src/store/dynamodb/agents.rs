//! Tenant agents as items of the sessions table, one partition per tenant: `id` = `agents
//! <tenantId>` (a space, which no session id has), range key `tenantId` = the agent's id, the agent
//! as JSON in `body` and its `version` (N) for conditional replaces. No `userId`, so
//! `TenantUserIndex` does not hold them; read with a strongly consistent Query of the partition.
//! Every change is also noted in the partition `agent-changes log` (range key `<at> <tenantId>`, an
//! hour of TTL; a name no tenant's agents partition can take), which each server queries for what is newer than it has seen.

use aws_sdk_dynamodb::types::AttributeValue;

use super::DynamoStore;
use super::errors::{map_err, written};
use super::items::s;
use crate::agents::StoredAgent;
use crate::ids::{AgentId, TenantId};
use crate::store::{StoreError, StoreResult};
use crate::timestamp::Timestamp;

/// The partition of the agents' change log: range key `<at> <tenantId>`, kept an hour (TTL).
const CHANGES: &str = "agent-changes log";

fn partition(tenant: &TenantId) -> AttributeValue {
    s(format!("agents {}", tenant.as_str()))
}

fn from_body(item: &super::Item) -> StoreResult<StoredAgent> {
    let bad = || StoreError::Internal("a stored agent is not valid".into());
    match item.get("body") {
        Some(AttributeValue::S(body)) => serde_json::from_str(body).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

impl DynamoStore {
    pub(super) async fn write_agent(&self, agent: &StoredAgent, previous: Option<u64>) -> StoreResult<bool> {
        let body = serde_json::to_string(agent).map_err(|e| StoreError::Internal(format!("agent: {e}")))?;
        let put = self
            .client
            .put_item()
            .table_name(&self.sessions)
            .item("id", partition(&agent.tenant_id))
            .item("tenantId", s(agent.id.as_str()))
            .item("version", AttributeValue::N(agent.version.to_string()))
            .item("body", s(body));
        let put = match previous {
            None => put.condition_expression("attribute_not_exists(id)"),
            Some(v) => put
                .condition_expression("version = :previous")
                .expression_attribute_values(":previous", AttributeValue::N(v.to_string())),
        };
        written(put.send().await, &self.sessions, "PutItem")
    }

    pub(super) async fn read_agent(&self, tenant: &TenantId, id: &AgentId) -> StoreResult<Option<StoredAgent>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.sessions)
            .key("id", partition(tenant))
            .key("tenantId", s(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "GetItem", e))?;
        out.item.as_ref().map(from_body).transpose()
    }

    pub(super) async fn read_agents(&self, tenant: &TenantId) -> StoreResult<Vec<StoredAgent>> {
        self.partition_items(partition(tenant), None).await?.iter().map(from_body).collect()
    }

    /// Every item of one partition of the sessions table (after a range key, when given), read
    /// consistently, page by page.
    pub(super) async fn partition_items(
        &self,
        id: AttributeValue,
        after: Option<String>,
    ) -> StoreResult<Vec<super::Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let query = self
                .client
                .query()
                .table_name(&self.sessions)
                .expression_attribute_values(":id", id.clone())
                .consistent_read(true)
                .set_exclusive_start_key(start);
            let query = match &after {
                Some(after) => query
                    .key_condition_expression("id = :id AND tenantId > :after")
                    .expression_attribute_values(":after", s(after)),
                None => query.key_condition_expression("id = :id"),
            };
            let out = query.send().await.map_err(|e| map_err(&self.sessions, "Query", e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }

    pub(super) async fn put_agent_change(&self, tenant: &TenantId, at: &Timestamp) -> StoreResult<()> {
        let expires = at.micros().unwrap_or_default() / 1_000_000 + 3600;
        self.client
            .put_item()
            .table_name(&self.sessions)
            .item("id", s(CHANGES))
            .item("tenantId", s(format!("{} {}", at.as_str(), tenant.as_str())))
            .item("expiresAt", AttributeValue::N(expires.to_string()))
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "PutItem", e))?;
        Ok(())
    }

    pub(super) async fn read_agent_changes(&self, since: &Timestamp) -> StoreResult<Vec<(Timestamp, TenantId)>> {
        // After every tenant of `since` itself: '~' sorts after the space and any id.
        let items = self.partition_items(s(CHANGES), Some(format!("{}~", since.as_str()))).await?;
        Ok(items
            .iter()
            .filter_map(|item| match item.get("tenantId") {
                Some(AttributeValue::S(key)) => {
                    let (at, tenant) = key.split_once(' ')?;
                    Some((Timestamp::stored(at.to_string()), TenantId::parse(tenant).ok()?))
                }
                _ => None,
            })
            .collect())
    }

    /// Every tenant's agents: a Scan of the sessions table for the agents partitions (exports only).
    pub(super) async fn scan_agents(&self) -> StoreResult<Vec<StoredAgent>> {
        let mut agents = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.sessions)
                .filter_expression("begins_with(id, :prefix)")
                .expression_attribute_values(":prefix", s("agents "))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| map_err(&self.sessions, "Scan", e))?;
            // Only agents have a `body` in those partitions.
            for item in out.items.unwrap_or_default().iter().filter(|i| i.contains_key("body")) {
                agents.push(from_body(item)?);
            }
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(agents),
            }
        }
    }

    pub(super) async fn remove_agent(&self, tenant: &TenantId, id: &AgentId) -> StoreResult<bool> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.sessions)
            .key("id", partition(tenant))
            .key("tenantId", s(id.as_str()))
            .condition_expression("attribute_exists(id)")
            .send()
            .await;
        written(result, &self.sessions, "DeleteItem")
    }
}
