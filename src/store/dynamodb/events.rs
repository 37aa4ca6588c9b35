//! Change events and webhook deliveries as items of the sessions table, in partitions of their own
//! that no session read reaches: the hash key holds a space, which no session id has, and the items
//! have no `userId`, so `TenantUserIndex` does not hold them.
//! - A tenant's feed: `id` = `events <tenantId>`, range key `tenantId` = the event id (time-ordered),
//!   read with a strongly consistent Query of that partition.
//! - The outbox: `id` = `outbox <n>` (a few partitions, by the event id), range key `tenantId` =
//!   `<eventId> <endpointId>`, read with a Query per partition; claims and results are conditional
//!   writes on `leaseOwner`.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};

use super::errors::{map_err, written};
use super::items::s;
use super::{DynamoStore, Item};
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::{
    CHANNEL_ENDPOINT_PREFIX, Delivery, DeliveryStep, OutboxPart, StoreError, StoreResult, StoredEvent, is_expired,
    outbox_shard,
};

/// How many partitions the outbox spreads over (each takes about 1,000 writes a second).
pub const OUTBOX_SHARDS: u32 = 4;

fn feed_key(tenant: &TenantId) -> String {
    format!("events {}", tenant.as_str())
}

fn outbox_key(shard: u32) -> String {
    format!("outbox {shard}")
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &Item, name: &str) -> i64 {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn bad() -> StoreError {
    StoreError::Internal("a stored event is not valid".into())
}

fn event_from_item(item: &Item) -> StoreResult<StoredEvent> {
    let tenant = get_s(item, "id").and_then(|k| k.strip_prefix("events ").map(str::to_string)).ok_or_else(bad)?;
    Ok(StoredEvent {
        id: get_s(item, "tenantId").ok_or_else(bad)?,
        tenant_id: TenantId::parse(tenant).map_err(|_| bad())?,
        kind: get_s(item, "eventType").ok_or_else(bad)?,
        user_id: get_s(item, "eventUserId").and_then(|u| UserId::parse(u).ok()),
        session_id: get_s(item, "eventSessionId").and_then(|s| SessionId::parse(s).ok()),
        body: get_s(item, "body").ok_or_else(bad)?,
        expires_at: get_n(item, "expiresAt"),
    })
}

fn delivery_from_item(item: &Item) -> StoreResult<Delivery> {
    let sort = get_s(item, "tenantId").ok_or_else(bad)?;
    let (event_id, endpoint) = sort.split_once(' ').ok_or_else(bad)?;
    Ok(Delivery {
        event_id: event_id.to_string(),
        endpoint: endpoint.to_string(),
        tenant_id: TenantId::parse(get_s(item, "eventTenant").ok_or_else(bad)?).map_err(|_| bad())?,
        kind: get_s(item, "eventType").ok_or_else(bad)?,
        user_id: get_s(item, "eventUserId").and_then(|u| UserId::parse(u).ok()),
        session_id: get_s(item, "eventSessionId").and_then(|s| SessionId::parse(s).ok()),
        body: get_s(item, "body").ok_or_else(bad)?,
        attempts: get_n(item, "attempts") as u32,
        next_at: get_n(item, "nextAt"),
        first_at: get_n(item, "firstAt"),
        lease_until: get_n(item, "leaseUntil"),
        last_error: get_s(item, "lastError"),
    })
}

fn delivery_key(d: &Delivery) -> (AttributeValue, AttributeValue) {
    (s(outbox_key(outbox_shard(&d.event_id, OUTBOX_SHARDS))), s(format!("{} {}", d.event_id, d.endpoint)))
}

impl DynamoStore {
    /// Puts an item that is new, or not at all (an item recorded again, as a retried webhook's
    /// channel job, stays as it is: its attempts and its lease go on).
    async fn put_plain(&self, item: Item) -> StoreResult<()> {
        let result = self
            .client
            .put_item()
            .table_name(&self.sessions)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        written(result, &self.sessions, "PutItem").map(|_| ())
    }

    pub(super) async fn put_events(&self, events: &[StoredEvent], deliveries: &[Delivery]) -> StoreResult<()> {
        let mut items = Vec::new();
        for e in events {
            let mut item: Item = HashMap::from([
                ("id".to_string(), s(feed_key(&e.tenant_id))),
                ("tenantId".to_string(), s(&e.id)),
                ("eventType".to_string(), s(&e.kind)),
                ("body".to_string(), s(&e.body)),
                ("expiresAt".to_string(), n(e.expires_at)),
            ]);
            if let Some(u) = &e.user_id {
                item.insert("eventUserId".into(), s(u.as_str()));
            }
            if let Some(session) = &e.session_id {
                item.insert("eventSessionId".into(), s(session.as_str()));
            }
            items.push(item);
        }
        for d in deliveries {
            let (id, sort) = delivery_key(d);
            let mut item: Item = HashMap::from([
                ("id".to_string(), id),
                ("tenantId".to_string(), sort),
                ("eventTenant".to_string(), s(d.tenant_id.as_str())),
                ("eventType".to_string(), s(&d.kind)),
                ("endpoint".to_string(), s(&d.endpoint)),
                ("body".to_string(), s(&d.body)),
                ("attempts".to_string(), n(d.attempts as i64)),
                ("nextAt".to_string(), n(d.next_at)),
                ("firstAt".to_string(), n(d.first_at)),
                ("leaseUntil".to_string(), n(d.lease_until)),
                // A day and an hour past the event: delivery gives up after a day.
                ("expiresAt".to_string(), n(d.first_at / 1000 + 25 * 3600)),
            ]);
            if let Some(u) = &d.user_id {
                item.insert("eventUserId".into(), s(u.as_str()));
            }
            if let Some(session) = &d.session_id {
                item.insert("eventSessionId".into(), s(session.as_str()));
            }
            items.push(item);
        }
        futures::stream::iter(items.into_iter().map(|item| self.put_plain(item)))
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .map(|_| ())
    }

    pub(super) async fn query_events(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        before: &str,
        types: &[String],
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.sessions)
                .key_condition_expression("id = :p AND tenantId > :after")
                .expression_attribute_values(":p", s(feed_key(tenant)))
                .expression_attribute_values(":after", s(after.unwrap_or("evt_")))
                .consistent_read(true)
                .limit((limit + 1).clamp(10, 500) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| map_err(&self.sessions, "Query", e))?;
            for item in out.items.unwrap_or_default() {
                let event = event_from_item(&item)?;
                if event.id.as_str() >= before {
                    return Ok(found);
                }
                if is_expired(Some(event.expires_at)) || !(types.is_empty() || types.contains(&event.kind)) {
                    continue;
                }
                found.push(event);
                if found.len() == limit {
                    return Ok(found);
                }
            }
            match out.last_evaluated_key.filter(|k| !k.is_empty()) {
                Some(k) => start = Some(k),
                None => return Ok(found),
            }
        }
    }

    /// Every item of one partition of the sessions table that passes `filter`.
    async fn partition(
        &self,
        key: String,
        filter: Option<(&str, Vec<(&str, AttributeValue)>)>,
        limit: usize,
    ) -> StoreResult<Vec<Item>> {
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.sessions)
                .key_condition_expression("id = :p")
                .expression_attribute_values(":p", s(&key))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some((expression, values)) = &filter {
                query = query.filter_expression(*expression);
                for (name, value) in values {
                    query = query.expression_attribute_values(*name, value.clone());
                }
            }
            let out = query.send().await.map_err(|e| map_err(&self.sessions, "Query", e))?;
            found.extend(out.items.unwrap_or_default());
            if found.len() >= limit {
                found.truncate(limit);
                return Ok(found);
            }
            match out.last_evaluated_key.filter(|k| !k.is_empty()) {
                Some(k) => start = Some(k),
                None => return Ok(found),
            }
        }
    }

    pub(super) async fn outbox(
        &self,
        due_at: Option<i64>,
        limit: usize,
        part: OutboxPart,
    ) -> StoreResult<Vec<Delivery>> {
        let reads = (0..OUTBOX_SHARDS).map(|shard| {
            let mut conditions = Vec::new();
            let mut values = Vec::new();
            if let Some(now) = due_at {
                conditions.push("nextAt <= :now AND leaseUntil <= :now");
                values.push((":now", n(now)));
            }
            match part {
                OutboxPart::All => {}
                OutboxPart::Channels => conditions.push("begins_with(endpoint, :channel)"),
                OutboxPart::Webhooks => conditions.push("NOT begins_with(endpoint, :channel)"),
            }
            if part != OutboxPart::All {
                values.push((":channel", s(CHANNEL_ENDPOINT_PREFIX)));
            }
            let expression = conditions.join(" AND ");
            let filter = (!conditions.is_empty()).then_some((expression, values));
            async move {
                let filter = filter.as_ref().map(|(e, v)| (e.as_str(), v.clone()));
                self.partition(outbox_key(shard), filter, limit).await
            }
        });
        let mut all = Vec::new();
        for items in futures::future::try_join_all(reads).await? {
            for item in &items {
                all.push(delivery_from_item(item)?);
            }
        }
        all.sort_by(|a, b| (a.next_at, &a.event_id).cmp(&(b.next_at, &b.event_id)));
        all.truncate(limit);
        Ok(all)
    }

    pub(super) async fn claim(&self, d: &Delivery, owner: &str, now: i64, until: i64) -> StoreResult<bool> {
        let (id, sort) = delivery_key(d);
        let result = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", id)
            .key("tenantId", sort)
            .update_expression("SET leaseUntil = :until, leaseOwner = :owner")
            .condition_expression("attempts = :attempts AND nextAt <= :now AND leaseUntil <= :now")
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":attempts", n(d.attempts as i64))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        written(result, &self.sessions, "UpdateItem")
    }

    pub(super) async fn settle(&self, d: &Delivery, owner: &str, step: DeliveryStep) -> StoreResult<bool> {
        let (id, sort) = delivery_key(d);
        match step {
            DeliveryStep::Finished => {
                let result = self
                    .client
                    .delete_item()
                    .table_name(&self.sessions)
                    .key("id", id)
                    .key("tenantId", sort)
                    .condition_expression("leaseOwner = :owner")
                    .expression_attribute_values(":owner", s(owner))
                    .send()
                    .await;
                written(result, &self.sessions, "DeleteItem")
            }
            DeliveryStep::Retry { attempts, next_at, error } => {
                let result = self
                    .client
                    .update_item()
                    .table_name(&self.sessions)
                    .key("id", id)
                    .key("tenantId", sort)
                    .update_expression(
                        "SET attempts = :attempts, nextAt = :next, lastError = :error, leaseUntil = :zero REMOVE leaseOwner",
                    )
                    .condition_expression("leaseOwner = :owner")
                    .expression_attribute_values(":attempts", n(attempts as i64))
                    .expression_attribute_values(":next", n(next_at))
                    .expression_attribute_values(":error", s(error))
                    .expression_attribute_values(":zero", n(0))
                    .expression_attribute_values(":owner", s(owner))
                    .send()
                    .await;
                written(result, &self.sessions, "UpdateItem")
            }
        }
    }

    pub(super) async fn forget_user_events(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> StoreResult<usize> {
        let mut keys = Vec::new();
        let (mut feed_filter, mut feed_values) = ("eventUserId = :u".to_string(), vec![(":u", s(user.as_str()))]);
        let (mut outbox_filter, mut outbox_values) = (
            "eventTenant = :t AND eventUserId = :u".to_string(),
            vec![(":t", s(tenant.as_str())), (":u", s(user.as_str()))],
        );
        if let Some(session) = session {
            feed_filter.push_str(" AND eventSessionId = :s");
            feed_values.push((":s", s(session.as_str())));
            outbox_filter.push_str(" AND eventSessionId = :s");
            outbox_values.push((":s", s(session.as_str())));
        }
        let feed = self.partition(feed_key(tenant), Some((&feed_filter, feed_values)), usize::MAX).await?;
        keys.extend(feed);
        for shard in 0..OUTBOX_SHARDS {
            let filter = (outbox_filter.as_str(), outbox_values.clone());
            keys.extend(self.partition(outbox_key(shard), Some(filter), usize::MAX).await?);
        }
        let deletes = keys.into_iter().map(|item| async move {
            let (Some(id), Some(sort)) = (item.get("id").cloned(), item.get("tenantId").cloned()) else {
                return Ok(());
            };
            self.client
                .delete_item()
                .table_name(&self.sessions)
                .key("id", id)
                .key("tenantId", sort)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map_err(&self.sessions, "DeleteItem", e))
        });
        let done: Vec<()> = futures::stream::iter(deletes).buffer_unordered(16).try_collect().await?;
        Ok(done.len())
    }
}
