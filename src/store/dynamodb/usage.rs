//! Usage, budgets and once-per-period notices as items of the sessions table (names with a space,
//! which no session id has; no `userId`, so no index holds them):
//! - a user's day: `id` = `usage <tenantId>`, range key `<day> <userId>`;
//! - a tenant's day (added once a second by each server): `id` = `usage-total <tenantId>`, range
//!   key `<day>`;
//! - a tenant's budgets: `id` = `budget <tenantId>`, range key `budget`, the JSON in `body`;
//! - a notice sent once: `id` = `notices <tenantId>`, range key the notice, with a TTL.
//!
//! A day item keeps one number per agent, model and field, named `<field>|<agentId>|<model>`, each
//! added to with an atomic `ADD`, so writers never read first.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};

use super::DynamoStore;
use super::errors::{map_err, written};
use super::items::s;
use crate::ids::{TenantId, UserId};
use crate::store::{StoreError, StoreResult};
use crate::usage::{Budget, Counts, UsageEntry, UsageRow};

/// How long a day's usage is kept (TTL): 400 days, a year and a month to compare with.
const KEEP_SECONDS: i64 = 400 * 86_400;

fn expires_at() -> AttributeValue {
    AttributeValue::N((crate::timestamp::epoch_seconds() + KEEP_SECONDS).to_string())
}

fn parse_day(day: &str) -> StoreResult<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| StoreError::Invalid(format!("{day} is not a day")))
}

/// The entries of a day item.
fn entries_of(item: &HashMap<String, AttributeValue>) -> Vec<UsageEntry> {
    let mut by: HashMap<(String, String), Counts> = HashMap::new();
    for (name, value) in item {
        let mut parts = name.splitn(3, '|');
        let (Some(field), Some(agent), Some(model)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let AttributeValue::N(n) = value else { continue };
        let counts = by.entry((agent.to_string(), model.to_string())).or_default();
        counts.set(field, n.parse().unwrap_or(0));
    }
    let mut entries: Vec<UsageEntry> =
        by.into_iter().map(|((agent, model), counts)| UsageEntry { agent, model, counts }).collect();
    entries.sort_by(|a, b| (&a.agent, &a.model).cmp(&(&b.agent, &b.model)));
    entries
}

impl DynamoStore {
    /// Adds entries to a day item with one `UpdateItem` of `ADD`s.
    pub(super) async fn add_to_day(&self, id: String, range: String, entries: &[UsageEntry]) -> StoreResult<()> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(id))
            .key("tenantId", s(range))
            .expression_attribute_values(":exp", expires_at());
        let mut adds = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            for (j, (field, value)) in entry.counts.fields().into_iter().enumerate() {
                if value == 0 {
                    continue;
                }
                let (name, val) = (format!("#n{i}_{j}"), format!(":v{i}_{j}"));
                adds.push(format!("{name} {val}"));
                update = update
                    .expression_attribute_names(&name, format!("{field}|{}|{}", entry.agent, entry.model))
                    .expression_attribute_values(&val, AttributeValue::N(value.to_string()));
            }
        }
        if adds.is_empty() {
            return Ok(());
        }
        let expression = format!("SET expiresAt = :exp ADD {}", adds.join(", "));
        update.update_expression(expression).send().await.map_err(|e| map_err(&self.sessions, "UpdateItem", e))?;
        Ok(())
    }

    /// The day items of a partition from `from` to `to` (range keys starting with the days), read
    /// consistently, page by page.
    pub(super) async fn read_days(
        &self,
        id: String,
        from: &str,
        to: &str,
    ) -> StoreResult<Vec<(String, HashMap<String, AttributeValue>)>> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.sessions)
                .key_condition_expression("id = :id AND tenantId BETWEEN :from AND :to")
                .expression_attribute_values(":id", s(id.clone()))
                .expression_attribute_values(":from", s(from))
                // Past every `<to> <user>` key: no character sorts above U+10FFFF.
                .expression_attribute_values(":to", s(format!("{to}\u{10FFFF}")))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| map_err(&self.sessions, "Query", e))?;
            for item in out.items.unwrap_or_default() {
                if let Some(AttributeValue::S(range)) = item.get("tenantId") {
                    found.push((range.clone(), item));
                }
            }
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(found),
            }
        }
    }

    pub(super) async fn add_user_usage(
        &self,
        tenant: &TenantId,
        user: &UserId,
        day: &str,
        entries: &[UsageEntry],
    ) -> StoreResult<()> {
        self.add_to_day(format!("usage {}", tenant.as_str()), format!("{day} {}", user.as_str()), entries).await
    }

    pub(super) async fn add_total_usage(
        &self,
        tenant: &TenantId,
        day: &str,
        entries: &[UsageEntry],
    ) -> StoreResult<()> {
        self.add_to_day(format!("usage-total {}", tenant.as_str()), day.to_string(), entries).await
    }

    pub(super) async fn read_user_usage(
        &self,
        tenant: &TenantId,
        from: &str,
        to: &str,
        user: Option<&UserId>,
    ) -> StoreResult<Vec<UsageRow>> {
        let id = format!("usage {}", tenant.as_str());
        let items = match user {
            // One user's days: a strongly consistent GetItem per day (16 at a time), not a read of
            // every user's.
            Some(user) => {
                let mut days = Vec::new();
                let (mut day, last) = (parse_day(from)?, parse_day(to)?);
                while day <= last && days.len() <= 400 {
                    days.push(day.format("%Y-%m-%d").to_string());
                    day = day.succ_opt().unwrap_or(last + chrono::Days::new(1));
                }
                let reads = days.into_iter().map(|d| {
                    let (id, range) = (id.clone(), format!("{d} {}", user.as_str()));
                    async move {
                        let out = self
                            .client
                            .get_item()
                            .table_name(&self.sessions)
                            .key("id", s(id))
                            .key("tenantId", s(range.clone()))
                            .consistent_read(true)
                            .send()
                            .await
                            .map_err(|e| map_err(&self.sessions, "GetItem", e))?;
                        Ok::<_, StoreError>(out.item.map(|item| (range, item)))
                    }
                });
                let found: Vec<Option<_>> = futures::stream::iter(reads).buffered(16).try_collect().await?;
                found.into_iter().flatten().collect()
            }
            None => self.read_days(id, from, to).await?,
        };
        let mut rows = Vec::new();
        for (range, item) in items {
            let Some((day, who)) = range.split_once(' ') else { continue };
            if day > to || user.is_some_and(|u| u.as_str() != who) {
                continue;
            }
            let Ok(who) = UserId::parse(who) else { continue };
            for entry in entries_of(&item) {
                rows.push(UsageRow { day: day.to_string(), user: Some(who.clone()), entry });
            }
        }
        Ok(rows)
    }

    pub(super) async fn read_total_usage(&self, tenant: &TenantId, from: &str, to: &str) -> StoreResult<Vec<UsageRow>> {
        let items = self.read_days(format!("usage-total {}", tenant.as_str()), from, to).await?;
        let mut rows = Vec::new();
        for (day, item) in items {
            for entry in entries_of(&item) {
                rows.push(UsageRow { day: day.clone(), user: None, entry });
            }
        }
        Ok(rows)
    }

    pub(super) async fn write_budget(&self, tenant: &TenantId, budget: &Budget) -> StoreResult<()> {
        let body = serde_json::to_string(budget).map_err(|e| StoreError::Internal(format!("budget: {e}")))?;
        self.client
            .put_item()
            .table_name(&self.sessions)
            .item("id", s(format!("budget {}", tenant.as_str())))
            .item("tenantId", s("budget"))
            .item("body", s(body))
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "PutItem", e))?;
        Ok(())
    }

    pub(super) async fn read_budget(&self, tenant: &TenantId) -> StoreResult<Option<Budget>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.sessions)
            .key("id", s(format!("budget {}", tenant.as_str())))
            .key("tenantId", s("budget"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "GetItem", e))?;
        match out.item.as_ref().and_then(|i| i.get("body")) {
            Some(AttributeValue::S(body)) => {
                serde_json::from_str(body).map(Some).map_err(|e| StoreError::Internal(format!("budget: {e}")))
            }
            _ => Ok(None),
        }
    }

    pub(super) async fn write_notice(&self, tenant: &TenantId, notice: &str, expires: i64) -> StoreResult<bool> {
        let put = self
            .client
            .put_item()
            .table_name(&self.sessions)
            .item("id", s(format!("notices {}", tenant.as_str())))
            .item("tenantId", s(notice))
            .item("expiresAt", AttributeValue::N(expires.to_string()))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        written(put, &self.sessions, "PutItem")
    }
}
