//! A tenant's channels as items of the sessions table: `id` = `channels <tenantId>`, range key
//! `tenantId` = the channel's id, the channel as JSON in `body` (read with a strongly consistent
//! Query of the partition). Each address a channel claims is an item `id` = `channel-claim
//! <address>`, `tenantId` = `claim`, with `claimTenant` and `claimChannel`: taken with a conditional
//! write, so an address belongs to one channel of one tenant. Without transactions (not among the
//! seed's IAM actions), a channel's claims are written before the channel and released after it: a
//! crash between leaves a claim of this channel, which its next write takes again.

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use super::DynamoStore;
use super::errors::{map_err, written};
use super::items::s;
use crate::channels::StoredChannel;
use crate::ids::{ChannelId, MessageId, TenantId};
use crate::store::{StoreError, StoreResult};

fn partition(tenant: &TenantId) -> AttributeValue {
    s(format!("channels {}", tenant.as_str()))
}

fn claim_key(address: &str) -> AttributeValue {
    s(format!("channel-claim {address}"))
}

fn from_body(item: &super::Item) -> StoreResult<StoredChannel> {
    let bad = || StoreError::Internal("a stored channel is not valid".into());
    match item.get("body") {
        Some(AttributeValue::S(body)) => serde_json::from_str(body).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

impl DynamoStore {
    async fn claim_address(&self, channel: &StoredChannel, address: &str, per_tenant: bool) -> StoreResult<bool> {
        let put = self
            .client
            .put_item()
            .table_name(&self.sessions)
            .item("id", claim_key(address))
            .item("tenantId", s("claim"))
            .item("claimTenant", s(channel.tenant_id.as_str()))
            .item("claimChannel", s(channel.id.as_str()))
            .expression_attribute_values(":t", s(channel.tenant_id.as_str()));
        let put = if per_tenant {
            put.condition_expression("attribute_not_exists(id) OR claimTenant = :t")
        } else {
            put.condition_expression("attribute_not_exists(id) OR (claimTenant = :t AND claimChannel = :c)")
                .expression_attribute_values(":c", s(channel.id.as_str()))
        };
        written(put.send().await, &self.sessions, "PutItem")
    }

    async fn release_address(&self, tenant: &TenantId, channel: &ChannelId, address: &str) -> StoreResult<()> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.sessions)
            .key("id", claim_key(address))
            .key("tenantId", s("claim"))
            .condition_expression("claimTenant = :t AND claimChannel = :c")
            .expression_attribute_values(":t", s(tenant.as_str()))
            .expression_attribute_values(":c", s(channel.as_str()))
            .send()
            .await;
        written(result, &self.sessions, "DeleteItem").map(|_| ())
    }

    pub(super) async fn write_channel(&self, channel: &StoredChannel, released: &[String]) -> StoreResult<bool> {
        let previous = self.read_channel(&channel.tenant_id, &channel.id).await?;
        let held: Vec<String> =
            previous.map(|p| p.claims().into_iter().map(|c| c.address).collect()).unwrap_or_default();
        let mut taken = Vec::new();
        for claim in channel.claims() {
            if self.claim_address(channel, &claim.address, claim.per_tenant).await? {
                taken.push(claim.address);
                continue;
            }
            // Another channel has it: the claims this write took (and the channel did not hold) go.
            for address in taken.iter().filter(|a| !held.contains(a)) {
                let _ = self.release_address(&channel.tenant_id, &channel.id, address).await;
            }
            return Ok(false);
        }
        let body = serde_json::to_string(channel).map_err(|e| StoreError::Internal(format!("channel: {e}")))?;
        self.client
            .put_item()
            .table_name(&self.sessions)
            .item("id", partition(&channel.tenant_id))
            .item("tenantId", s(channel.id.as_str()))
            .item("body", s(body))
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "PutItem", e))?;
        for address in released {
            self.release_address(&channel.tenant_id, &channel.id, address).await?;
        }
        Ok(true)
    }

    pub(super) async fn read_channel(&self, tenant: &TenantId, id: &ChannelId) -> StoreResult<Option<StoredChannel>> {
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

    pub(super) async fn read_channels(&self, tenant: &TenantId) -> StoreResult<Vec<StoredChannel>> {
        self.partition_items(partition(tenant), None).await?.iter().map(from_body).collect()
    }

    pub(super) async fn remove_channel(&self, tenant: &TenantId, id: &ChannelId) -> StoreResult<bool> {
        let Some(channel) = self.read_channel(tenant, id).await? else { return Ok(false) };
        let result = self
            .client
            .delete_item()
            .table_name(&self.sessions)
            .key("id", partition(tenant))
            .key("tenantId", s(id.as_str()))
            .condition_expression("attribute_exists(id)")
            .send()
            .await;
        let deleted = written(result, &self.sessions, "DeleteItem")?;
        for claim in channel.claims() {
            self.release_address(tenant, id, &claim.address).await?;
        }
        Ok(deleted)
    }

    pub(super) async fn claimed_channel(&self, address: &str) -> StoreResult<Option<StoredChannel>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.sessions)
            .key("id", claim_key(address))
            .key("tenantId", s("claim"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "GetItem", e))?;
        let Some(item) = out.item else { return Ok(None) };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let (Some(tenant), Some(channel)) = (text("claimTenant"), text("claimChannel")) else { return Ok(None) };
        let (Ok(tenant), Ok(channel)) = (TenantId::parse(tenant), ChannelId::parse(channel)) else { return Ok(None) };
        // A claim left by a crash between a claim and its channel's write finds no channel.
        Ok(self.read_channel(&tenant, &channel).await?.filter(|c| c.claims().iter().any(|k| k.address == address)))
    }

    pub(super) async fn write_delivery(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        delivery: &Value,
    ) -> StoreResult<bool> {
        let value = super::items::to_attribute(delivery)?;
        let result = self
            .client
            .update_item()
            .table_name(&self.messages)
            .key("id", s(message.as_str()))
            .update_expression("SET metadata.#delivery = :d")
            .condition_expression("tenantId = :t AND attribute_exists(metadata)")
            .expression_attribute_names("#delivery", "delivery")
            .expression_attribute_values(":d", value)
            .expression_attribute_values(":t", s(tenant.as_str()))
            .send()
            .await;
        written(result, &self.messages, "UpdateItem")
    }
}
