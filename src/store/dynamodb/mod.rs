//! (Over 400 lines: it is the one implementation of the store trait for DynamoDB, a request or two per
//! method; items, errors, tables and backups live beside it.)
//!
//! The DynamoDB backend, on the two tables of the original server's DynamoDB guide (see
//! docs/origin.md), with the official AWS SDK.
//!
//! Serving uses only the actions of the guide's IAM policy (GetItem, PutItem, UpdateItem, DeleteItem,
//! Query) and never Scan, BatchWriteItem, TransactWriteItems or DescribeTable.
//!
//! Our own extra attributes, which a reader of the guide's schema can ignore:
//! - sessions: `lastMessageAt` (S), the timestamp of the session's newest message. Appends move it
//!   forward with a conditional update, which is what makes message timestamps strictly increasing
//!   within a session across server instances, and lets history reads detect a lagging GSI.

mod agents;
pub mod backup;
mod channels;
mod client;
mod erasures;
mod errors;
mod events;
mod items;
pub mod tables;
mod turns;
mod usage;

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use futures::{StreamExt, TryStreamExt};

pub use client::{DynamoDbCalls, client};
use errors::{is_conditional_failure, map_err, written};

use items::{message_from_item, message_item, s, session_from_item, session_item, to_attribute};
use tables::{SESSION_TIMESTAMP_INDEX, TENANT_TIMESTAMP_INDEX, TENANT_USER_INDEX};

use super::{
    Action, ActionStatus, Appended, ContextSummary, ConversationStore, Deleted, Delivery, DeliveryStep, Erasure, Hold,
    HoldLease, HoldRequest, Message, MessageQuery, NewMessage, NewSession, Order, Page, PageRequest, Retention,
    Session, StoreError, StoreResult, StoredEvent, TurnEvent, TurnRecord, TurnStatus, is_expired, new_session_with,
    prepare_messages, writable_session,
};
use crate::ids::{MessageId, SessionId, TenantId, UserId};
use crate::timestamp::{self, Timestamp};
use crate::usage::{UsageEntry, UsageRow};

pub(super) type Item = HashMap<String, AttributeValue>;

/// How many deletes run at once when a session or a user is erased.
const DELETE_CONCURRENCY: usize = 16;

pub struct DynamoStore {
    client: Client,
    sessions: String,
    messages: String,
    retention: Retention,
}

/// The turns queued on a session item (`turnQueue`), oldest first.
fn queued_turns(item: &HashMap<String, AttributeValue>) -> Vec<MessageId> {
    match item.get("turnQueue") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .filter_map(|v| match v {
                AttributeValue::S(id) => MessageId::parse(id.clone()).ok(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl DynamoStore {
    /// A session's holder and queue, read consistently (`None`: no such session).
    async fn holder_item(
        &self,
        tenant: &TenantId,
        session: &SessionId,
    ) -> StoreResult<Option<HashMap<String, AttributeValue>>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.sessions)
            .key("id", s(session.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .projection_expression("id, turnHolder, turnHolderUntil, turnQueue")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "GetItem", e))?;
        Ok(out.item)
    }

    pub fn new(client: Client, sessions_table: impl Into<String>, messages_table: impl Into<String>) -> Self {
        Self {
            client,
            sessions: sessions_table.into(),
            messages: messages_table.into(),
            retention: Retention::default(),
        }
    }

    /// New sessions and messages carry `expiresAt` (DynamoDB's TTL attribute) this long after their
    /// last write.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn get_session_item(&self, tenant: &str, id: &str) -> StoreResult<Option<Session>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.sessions)
            .key("id", s(id))
            .key("tenantId", s(tenant))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "GetItem", e))?;
        Ok(out.item.map(session_from_item).transpose()?.filter(|s| !is_expired(s.expires_at)))
    }

    async fn get_message_item(&self, id: &str) -> StoreResult<Option<Message>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.messages)
            .key("id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_err(&self.messages, "GetItem", e))?;
        out.item.map(message_from_item).transpose()
    }

    /// All sessions of a user from TenantUserIndex (which is not sorted by time), newest first.
    async fn all_user_sessions(&self, tenant: &str, user: &str, only_active: bool) -> StoreResult<Vec<Session>> {
        let mut sessions = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.sessions)
                .index_name(TENANT_USER_INDEX)
                .key_condition_expression("tenantId = :t AND userId = :u")
                .expression_attribute_values(":t", s(tenant))
                .expression_attribute_values(":u", s(user))
                .set_exclusive_start_key(start.take());
            if only_active {
                q = q
                    .filter_expression("isActive = :active")
                    .expression_attribute_values(":active", AttributeValue::Bool(true));
            }
            let out = q.send().await.map_err(|e| map_err(&self.sessions, "Query", e))?;
            for item in out.items.unwrap_or_default() {
                let session = session_from_item(item)?;
                if !is_expired(session.expires_at) {
                    sessions.push(session);
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        sessions.sort_by(|a, b| (&b.updated_at, &b.id).cmp(&(&a.updated_at, &a.id)));
        Ok(sessions)
    }

    /// Runs a message query page by page until `limit + 1` items (to know whether more exist).
    async fn collect_messages(
        &self,
        base: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        limit: usize,
        mut start: Option<Item>,
        for_model: bool,
    ) -> StoreResult<Page<Message>> {
        let mut items = Vec::with_capacity(limit + 1);
        loop {
            let want = (limit + 1 - items.len()).max(1) as i32;
            let out = base
                .clone()
                .limit(want)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| map_err(&self.messages, "Query", e))?;
            for mut item in out.items.unwrap_or_default() {
                if for_model {
                    // A model's history: only an agent message's `actions` (see `MessageQuery`).
                    let agent = matches!(item.get("role"), Some(AttributeValue::S(r)) if r == "agent");
                    match item.get_mut("metadata") {
                        Some(AttributeValue::M(metadata)) if agent => metadata.retain(|k, _| k == "actions"),
                        Some(_) => {
                            item.remove("metadata");
                        }
                        None => {}
                    }
                }
                let message = message_from_item(item)?;
                if !is_expired(message.expires_at) {
                    items.push(message);
                }
            }
            if items.len() > limit {
                break;
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(Page::of_messages(items, limit))
    }

    /// Ids of every message of a session (tenant-checked), and of the turn records of its user
    /// messages.
    async fn session_message_ids(
        &self,
        tenant: &str,
        session: &str,
        up_to: Option<&Timestamp>,
    ) -> StoreResult<(Vec<String>, Vec<String>)> {
        let mut users = Vec::new();
        let mut ids = Vec::new();
        let mut start: Option<Item> = None;
        let mut query = self
            .client
            .query()
            .table_name(&self.messages)
            .index_name(SESSION_TIMESTAMP_INDEX)
            .filter_expression("tenantId = :t")
            .expression_attribute_values(":s", s(session))
            .expression_attribute_values(":t", s(tenant));
        query = match up_to {
            None => query.key_condition_expression("sessionId = :s"),
            Some(t) => query
                .key_condition_expression("sessionId = :s AND #ts <= :up")
                .expression_attribute_names("#ts", "timestamp")
                .expression_attribute_values(":up", s(t.as_str())),
        };
        loop {
            let out = query
                .clone()
                .projection_expression("#id, #role, #md.turnId, #md.answers")
                .expression_attribute_names("#id", "id")
                .expression_attribute_names("#role", "role")
                .expression_attribute_names("#md", "metadata")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| map_err(&self.messages, "Query", e))?;
            for item in out.items.unwrap_or_default() {
                if let Some(AttributeValue::S(id)) = item.get("id") {
                    if matches!(item.get("role"), Some(AttributeValue::S(r)) if r == "user") {
                        users.push(id.clone());
                    }
                    // A reply to queued messages: its turn has a record of its own.
                    if let Some(AttributeValue::M(md)) = item.get("metadata")
                        && md.contains_key("answers")
                        && let Some(AttributeValue::S(turn)) = md.get("turnId")
                    {
                        users.push(turn.clone());
                    }
                    ids.push(id.clone());
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok((ids, Self::turn_keys(&users)))
    }

    async fn delete_session_items(&self, tenant: &str, session: &str, up_to: Option<&Timestamp>) -> StoreResult<usize> {
        let (ids, turns) = self.session_message_ids(tenant, session, up_to).await?;
        let count = ids.len();
        futures::stream::iter(ids.into_iter().chain(turns))
            .map(|id| async move {
                self.client
                    .delete_item()
                    .table_name(&self.messages)
                    .key("id", s(id))
                    .condition_expression("tenantId = :t")
                    .expression_attribute_values(":t", s(tenant))
                    .send()
                    .await
                    .map(|_| ())
                    .or_else(|e| {
                        if is_conditional_failure(&e) { Ok(()) } else { Err(map_err(&self.messages, "DeleteItem", e)) }
                    })
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        let mut delete =
            self.client.delete_item().table_name(&self.sessions).key("id", s(session)).key("tenantId", s(tenant));
        if let Some(t) = up_to {
            delete = delete.condition_expression("createdAt <= :up").expression_attribute_values(":up", s(t.as_str()));
        }
        match delete.send().await {
            Ok(_) => {}
            Err(e) if is_conditional_failure(&e) => {}
            Err(e) => return Err(map_err(&self.sessions, "DeleteItem", e)),
        }
        Ok(count)
    }

    /// A PutItem unless an item with this key exists; false when one did.
    async fn put_if_absent(&self, table: &str, item: Item) -> StoreResult<bool> {
        let put = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        written(put, table, "PutItem")
    }

    /// Conditional PutItems of new messages, in parallel. An id already stored in the same session
    /// is returned as stored; one stored elsewhere is a conflict.
    /// Writes messages that are not stored yet, each with the usage it carries: an atomic `ADD` to
    /// its user's day beside the message's write (one more request in the same round trip). A usage
    /// write that fails is logged and the reply stands.
    async fn put_all(&self, messages: Vec<Message>) -> StoreResult<Vec<Appended>> {
        let tallies: Vec<_> = messages
            .iter()
            .filter_map(|m| m.counted.clone().map(|t| (m.tenant_id.clone(), m.user_id.clone(), t)))
            .collect();
        let tallies = futures::future::join_all(tallies.into_iter().map(|(tenant, user, t)| async move {
            if let Err(e) = self.add_user_usage(&tenant, &user, &t.day, &t.entries).await {
                tracing::warn!(error = %e, %tenant, "could not count a reply's usage");
            }
        }));
        let writes = messages.into_iter().map(|mut m| async move {
            m.counted = None;
            if self.put_if_absent(&self.messages, message_item(&m)?).await? {
                return Ok(Appended { message: m, created: true });
            }
            match self.get_message_item(m.id.as_str()).await? {
                Some(existing) if existing.tenant_id == m.tenant_id && existing.session_id == m.session_id => {
                    Ok(Appended { message: existing, created: false })
                }
                _ => Err(StoreError::id_taken("message", &m.id)),
            }
        });
        let (written, _) = tokio::join!(futures::future::try_join_all(writes), tallies);
        written
    }
}

#[async_trait]
impl ConversationStore for DynamoStore {
    fn describe(&self) -> String {
        format!("dynamodb (tables {} and {})", self.sessions, self.messages)
    }

    async fn check(&self) -> StoreResult<()> {
        let probe = "__agent_server_readiness_probe__";
        let (a, b) = futures::join!(self.get_session_item(probe, probe), self.get_message_item(probe));
        a.and(b).map(|_| ()).map_err(|e| match e {
            StoreError::Internal(m) => StoreError::Unavailable(m),
            other => other,
        })
    }

    async fn create_session_with(
        &self,
        new: NewSession,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(Session, Vec<Message>)> {
        let (session, messages) = new_session_with(new, messages, self.retention)?;
        for m in &messages {
            message_item(m)?;
        }
        // The session and its messages in one round trip: nothing else can write a new session yet.
        let ids: Vec<MessageId> = messages.iter().map(|m| m.id.clone()).collect();
        let (created, stored) =
            tokio::join!(self.put_if_absent(&self.sessions, session_item(&session)?), self.put_all(messages));
        let session_written = matches!(created, Ok(true));
        let failure = match (created, &stored) {
            (Ok(true), Ok(_)) => None,
            (Ok(false), _) => Some(StoreError::id_taken("session", &session.id)),
            (Err(e), _) => Some(e),
            (Ok(true), Err(e)) => Some(e.clone()),
        };
        if let Some(e) = failure {
            // Whatever half was written goes: no orphan messages without their session (which no
            // erasure could find), and no empty session.
            for id in &ids {
                let _ = self
                    .client
                    .delete_item()
                    .table_name(&self.messages)
                    .key("id", s(id.as_str()))
                    .condition_expression("tenantId = :t AND sessionId = :s")
                    .expression_attribute_values(":t", s(session.tenant_id.as_str()))
                    .expression_attribute_values(":s", s(session.id.as_str()))
                    .send()
                    .await;
            }
            if session_written {
                let _ = self.delete_session_items(session.tenant_id.as_str(), session.id.as_str(), None).await;
            }
            return Err(e);
        }
        Ok((session, stored?.into_iter().map(|a| a.message).collect()))
    }

    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>> {
        self.get_session_item(tenant.as_str(), id.as_str()).await
    }

    async fn find_active_session(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Option<Session>> {
        Ok(self.all_user_sessions(tenant.as_str(), user.as_str(), true).await?.into_iter().next())
    }

    async fn list_user_sessions(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest,
    ) -> StoreResult<Page<Session>> {
        let all = self.all_user_sessions(tenant.as_str(), user.as_str(), false).await?;
        let items: Vec<Session> = all
            .into_iter()
            .filter(|s| match &page.cursor {
                None => true,
                Some(c) => (s.updated_at.as_str(), s.id.as_str()) < (c.timestamp.as_str(), c.id.as_str()),
            })
            .take(page.limit + 1)
            .collect();
        Ok(Page::of_sessions(items, page.limit))
    }

    async fn begin_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        owner: Option<&UserId>,
        count: usize,
    ) -> StoreResult<(Session, Vec<Timestamp>)> {
        let mut after: Option<Timestamp> = None;
        for _ in 0..20 {
            let stamps = timestamp::allocate(after.as_ref(), count);
            let (first, last) = (stamps[0].clone(), stamps[count - 1].clone());
            let expires_at = timestamp::parse_micros(&last).and_then(|m| self.retention.expires_at(m));
            // One conditional write checks the session (active, the owner's) and reserves the
            // timestamps; the old item comes back for the history check.
            let mut update = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(session.as_str()))
                .key("tenantId", s(tenant.as_str()))
                .condition_expression(if owner.is_some() {
                    "attribute_exists(id) AND userId = :u AND isActive = :active AND \
                     (attribute_not_exists(lastMessageAt) OR lastMessageAt < :first)"
                } else {
                    "attribute_exists(id) AND isActive = :active AND \
                     (attribute_not_exists(lastMessageAt) OR lastMessageAt < :first)"
                })
                .set_expression_attribute_values(owner.map(|u| [(":u".to_string(), s(u.as_str()))].into()))
                .expression_attribute_values(":active", AttributeValue::Bool(true))
                .expression_attribute_values(":first", s(first))
                .expression_attribute_values(":last", s(last))
                .return_values(ReturnValue::AllOld);
            update = match expires_at {
                Some(at) => update
                    .update_expression("SET lastMessageAt = :last, updatedAt = :last, expiresAt = :exp")
                    .expression_attribute_values(":exp", AttributeValue::N(at.to_string())),
                None => update.update_expression("SET lastMessageAt = :last, updatedAt = :last"),
            };
            match update.send().await {
                Ok(out) => {
                    let before = session_from_item(out.attributes.unwrap_or_default())?;
                    return Ok((writable_session(Some(before), session, owner)?, stamps));
                }
                Err(e) if is_conditional_failure(&e) => {
                    let stored = self.get_session_item(tenant.as_str(), session.as_str()).await?;
                    after = writable_session(stored, session, owner)?.last_message_at;
                }
                Err(e) => return Err(map_err(&self.sessions, "UpdateItem", e)),
            }
        }
        Err(StoreError::Conflict(format!("session {session} is being written by too many requests at once; retry")))
    }

    async fn begin_held_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        owner: Option<&UserId>,
        count: usize,
        hold: HoldRequest<'_>,
    ) -> StoreResult<(Session, Vec<Timestamp>, Hold)> {
        let mut after: Option<Timestamp> = None;
        for _ in 0..20 {
            let stamps = timestamp::allocate(after.as_ref(), count);
            let (first, last) = (stamps[0].clone(), stamps[count - 1].clone());
            let expires_at = timestamp::parse_micros(&last).and_then(|m| self.retention.expires_at(m));
            // The reservation and the hold in one conditional write; the old item comes back for
            // the history check and the queue it takes.
            let mut condition = String::from(
                "attribute_exists(id) AND isActive = :active AND (attribute_not_exists(lastMessageAt) OR lastMessageAt < :first)",
            );
            if owner.is_some() {
                condition.push_str(" AND userId = :u");
            }
            if !hold.take_over {
                condition.push_str(
                    " AND (attribute_not_exists(turnHolder) OR turnHolderUntil < :now OR turnHolder = :holder)",
                );
            }
            let mut set = String::from(
                "SET lastMessageAt = :last, updatedAt = :last, turnHolder = :holder, turnHolderUntil = :until",
            );
            if expires_at.is_some() {
                set.push_str(", expiresAt = :exp");
            }
            let mut update = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(session.as_str()))
                .key("tenantId", s(tenant.as_str()))
                .condition_expression(condition)
                .update_expression(format!("{set} REMOVE turnQueue"))
                .set_expression_attribute_values(owner.map(|u| [(":u".to_string(), s(u.as_str()))].into()))
                .expression_attribute_values(":active", AttributeValue::Bool(true))
                .expression_attribute_values(":first", s(first))
                .expression_attribute_values(":last", s(last))
                .expression_attribute_values(":holder", s(hold.holder.as_str()))
                .expression_attribute_values(":until", AttributeValue::N(hold.lease.until.to_string()))
                .return_values(ReturnValue::AllOld);
            if !hold.take_over {
                update = update.expression_attribute_values(":now", AttributeValue::N(hold.lease.now.to_string()));
            }
            if let Some(at) = expires_at {
                update = update.expression_attribute_values(":exp", AttributeValue::N(at.to_string()));
            }
            match update.send().await {
                Ok(out) => {
                    let old = out.attributes.unwrap_or_default();
                    let taken_from = match (old.get("turnHolder"), old.get("turnHolderUntil")) {
                        (Some(AttributeValue::S(h)), Some(AttributeValue::N(until)))
                            if h != hold.holder.as_str() && until.parse::<i64>().is_ok_and(|u| u >= hold.lease.now) =>
                        {
                            MessageId::parse(h.clone()).ok()
                        }
                        _ => None,
                    };
                    let queued = queued_turns(&old);
                    let before = session_from_item(old)?;
                    let before = writable_session(Some(before), session, owner)?;
                    return Ok((before, stamps, Hold::Held { queued, taken_from }));
                }
                Err(e) if is_conditional_failure(&e) => {
                    let stored = self.get_session_item(tenant.as_str(), session.as_str()).await?;
                    after = writable_session(stored, session, owner)?.last_message_at;
                    // Held by another turn: the times are reserved all the same, without the hold.
                    if !hold.take_over
                        && let Some(item) = self.holder_item(tenant, session).await?
                        && let (Some(AttributeValue::S(h)), Some(AttributeValue::N(until))) =
                            (item.get("turnHolder"), item.get("turnHolderUntil"))
                        && h != hold.holder.as_str()
                        && until.parse::<i64>().is_ok_and(|u| u >= hold.lease.now)
                    {
                        let holder = MessageId::parse(h.clone()).map_err(|e| StoreError::Internal(e.to_string()))?;
                        let (before, stamps) = self.begin_turn(tenant, session, owner, count).await?;
                        return Ok((before, stamps, Hold::Busy(holder)));
                    }
                }
                Err(e) => return Err(map_err(&self.sessions, "UpdateItem", e)),
            }
        }
        Err(StoreError::Conflict(format!("session {session} is being written by too many requests at once; retry")))
    }

    async fn put_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<Message>,
    ) -> StoreResult<Vec<Appended>> {
        let messages = prepare_messages(tenant, session, self.retention, messages)?;
        for m in &messages {
            message_item(m)?;
        }
        self.put_all(messages).await
    }

    async fn release_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        reserved_last: &Timestamp,
        previous: Option<&Timestamp>,
    ) -> StoreResult<()> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(session.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .condition_expression("lastMessageAt = :reserved")
            .expression_attribute_values(":reserved", s(reserved_last));
        update = match previous {
            Some(p) => update
                .update_expression("SET lastMessageAt = :prev, updatedAt = :prev")
                .expression_attribute_values(":prev", s(p)),
            None => update.update_expression("REMOVE lastMessageAt"),
        };
        written(update.send().await, &self.sessions, "UpdateItem").map(|_| ())
    }

    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<Message>> {
        Ok(self.get_message_item(id.as_str()).await?.filter(|m| &m.tenant_id == tenant && !is_expired(m.expires_at)))
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        query: MessageQuery,
    ) -> StoreResult<Page<Message>> {
        // Timestamps are unique within a session, so a cursor's timestamp is an exact position.
        let mut base = self
            .client
            .query()
            .table_name(&self.messages)
            .index_name(SESSION_TIMESTAMP_INDEX)
            .filter_expression("tenantId = :t")
            .expression_attribute_values(":s", s(session.as_str()))
            .expression_attribute_values(":t", s(tenant.as_str()))
            .scan_index_forward(query.order == Order::Asc);
        let after = query.cursor.map(|c| c.timestamp);
        let bounded = after.is_some() || query.before.is_some();
        if bounded {
            base = base.expression_attribute_names("#ts", "timestamp");
        }
        base = match (query.order, after, query.before.map(String::from)) {
            (Order::Desc, Some(a), Some(b)) => base
                .key_condition_expression("sessionId = :s AND #ts < :hi")
                .expression_attribute_values(":hi", s(a.min(b))),
            (Order::Desc, Some(hi), None) | (_, None, Some(hi)) => {
                base.key_condition_expression("sessionId = :s AND #ts < :hi").expression_attribute_values(":hi", s(hi))
            }
            (Order::Asc, Some(lo), before) => {
                let b = base
                    .key_condition_expression("sessionId = :s AND #ts > :lo")
                    .expression_attribute_values(":lo", s(lo));
                match before {
                    Some(hi) => {
                        b.filter_expression("tenantId = :t AND #ts < :hi").expression_attribute_values(":hi", s(hi))
                    }
                    None => b,
                }
            }
            (_, None, None) => base.key_condition_expression("sessionId = :s"),
        };
        self.collect_messages(base, query.limit, None, query.for_model).await
    }

    async fn close_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>> {
        let result = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(id.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .update_expression("SET isActive = :false, updatedAt = :now")
            .condition_expression("attribute_exists(id)")
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":now", s(timestamp::now()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => out.attributes.map(session_from_item).transpose(),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(map_err(&self.sessions, "UpdateItem", e)),
        }
    }

    async fn set_session_metadata(
        &self,
        tenant: &TenantId,
        id: &SessionId,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<Option<Session>> {
        let value = to_attribute(value)?;
        // The key is set inside the metadata map when there is one, else the map is written with
        // only that key; a map written in between makes the second try fail and the first run again.
        for _ in 0..3 {
            let inside = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(id.as_str()))
                .key("tenantId", s(tenant.as_str()))
                .update_expression("SET #m.#k = :v")
                .condition_expression("attribute_exists(#m)")
                .expression_attribute_names("#m", "metadata")
                .expression_attribute_names("#k", key)
                .expression_attribute_values(":v", value.clone())
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            match inside {
                Ok(out) => return out.attributes.map(session_from_item).transpose(),
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(map_err(&self.sessions, "UpdateItem", e)),
            }
            let whole = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(id.as_str()))
                .key("tenantId", s(tenant.as_str()))
                .update_expression("SET #m = :m")
                .condition_expression("attribute_exists(id) AND attribute_not_exists(#m)")
                .expression_attribute_names("#m", "metadata")
                .expression_attribute_values(":m", AttributeValue::M(HashMap::from([(key.to_string(), value.clone())])))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            match whole {
                Ok(out) => return out.attributes.map(session_from_item).transpose(),
                Err(e) if is_conditional_failure(&e) => {
                    if self.get_session_item(tenant.as_str(), id.as_str()).await?.is_none() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(map_err(&self.sessions, "UpdateItem", e)),
            }
        }
        Err(StoreError::Conflict("the session's metadata kept changing; try again".into()))
    }

    async fn delete_session(
        &self,
        tenant: &TenantId,
        id: &SessionId,
        up_to: Option<&Timestamp>,
    ) -> StoreResult<Option<usize>> {
        // Messages left in a session that is gone (a turn that lost to an erasure) go too; the answer
        // still says the session was absent.
        let existed = self
            .get_session_item(tenant.as_str(), id.as_str())
            .await?
            .is_some_and(|s| up_to.is_none_or(|t| &s.created_at <= t));
        let count = self.delete_session_items(tenant.as_str(), id.as_str(), up_to).await?;
        Ok(existed.then_some(count))
    }

    async fn delete_user(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Deleted> {
        let sessions = self.all_user_sessions(tenant.as_str(), user.as_str(), false).await?;
        let mut deleted = Deleted::default();
        for session in sessions {
            deleted.messages += self.delete_session_items(tenant.as_str(), session.id.as_str(), None).await?;
            deleted.sessions += 1;
        }
        Ok(deleted)
    }

    async fn list_tenant_messages(&self, tenant: &TenantId, query: MessageQuery) -> StoreResult<Page<Message>> {
        let mut base = self
            .client
            .query()
            .table_name(&self.messages)
            .index_name(TENANT_TIMESTAMP_INDEX)
            .expression_attribute_values(":t", s(tenant.as_str()))
            .scan_index_forward(query.order == Order::Asc);
        base = match query.before.clone() {
            Some(before) => base
                .key_condition_expression("tenantId = :t AND #ts < :hi")
                .expression_attribute_names("#ts", "timestamp")
                .expression_attribute_values(":hi", s(before)),
            None => base.key_condition_expression("tenantId = :t"),
        };
        // A cursor outside the `before` range (DynamoDB refuses such a start key): newest first, the
        // range alone is the answer; oldest first, nothing is left.
        let outside =
            matches!((&query.cursor, &query.before), (Some(c), Some(b)) if c.timestamp.as_str() >= b.as_str());
        if outside && query.order == Order::Asc {
            return Ok(Page { items: Vec::new(), next: None });
        }
        let cursor = if outside { None } else { query.cursor };
        // The cursor becomes the start key, always under the caller's own tenant.
        let start = cursor.map(|c| {
            HashMap::from([
                ("tenantId".to_string(), s(tenant.as_str())),
                ("timestamp".to_string(), s(c.timestamp)),
                ("id".to_string(), s(c.id)),
            ])
        });
        self.collect_messages(base, query.limit, start, false).await
    }

    async fn scan_sessions(
        &self,
        tenant: Option<&TenantId>,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<(Vec<Session>, Option<String>)> {
        // The position is DynamoDB's LastEvaluatedKey (string attributes), as JSON.
        let start: Option<Item> = after
            .as_deref()
            .and_then(|a| serde_json::from_str::<HashMap<String, String>>(a).ok())
            .map(|m| m.into_iter().map(|(k, v)| (k, s(v))).collect());
        let (items, last) = match tenant {
            Some(t) => {
                let out = self
                    .client
                    .query()
                    .table_name(&self.sessions)
                    .index_name(TENANT_USER_INDEX)
                    .key_condition_expression("tenantId = :t")
                    .expression_attribute_values(":t", s(t.as_str()))
                    .set_exclusive_start_key(start)
                    .limit(limit as i32)
                    .send()
                    .await
                    .map_err(|e| map_err(&self.sessions, "Query", e))?;
                (out.items, out.last_evaluated_key)
            }
            None => {
                let out = self
                    .client
                    .scan()
                    .table_name(&self.sessions)
                    .set_exclusive_start_key(start)
                    .limit(limit as i32)
                    .send()
                    .await
                    .map_err(|e| map_err(&self.sessions, "Scan", e))?;
                (out.items, out.last_evaluated_key)
            }
        };
        let mut sessions = Vec::new();
        for item in items.unwrap_or_default() {
            // Event feeds and the webhook outbox share the table, keyed `events ...` / `outbox ...`.
            if item.get("id").and_then(|v| v.as_s().ok()).is_some_and(|id| id.contains(' ')) {
                continue;
            }
            let session = session_from_item(item)?;
            if !is_expired(session.expires_at) {
                sessions.push(session);
            }
        }
        let next = last.filter(|k| !k.is_empty()).map(|k| {
            let plain: HashMap<String, String> =
                k.into_iter().filter_map(|(name, v)| v.as_s().ok().map(|s| (name, s.clone()))).collect();
            serde_json::to_string(&plain).unwrap_or_default()
        });
        Ok((sessions, next))
    }

    async fn transition_action(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        from: ActionStatus,
        to: &Action,
    ) -> StoreResult<bool> {
        let action_id = to.id.as_str();
        let Some(stored) = self.get_message_item(message.as_str()).await?.filter(|m| &m.tenant_id == tenant) else {
            return Ok(false);
        };
        let actions = stored.metadata.as_ref().and_then(|m| m.get("actions")).and_then(|a| a.as_array());
        let Some(index) = actions.and_then(|a| a.iter().position(|x| x["id"] == serde_json::json!(action_id))) else {
            return Ok(false);
        };
        // A conditional update of that one list element: only one decision can win.
        let path = format!("#md.#actions[{index}]");
        let result = self
            .client
            .update_item()
            .table_name(&self.messages)
            .key("id", s(message.as_str()))
            .update_expression(format!("SET {path} = :to"))
            .condition_expression(format!("tenantId = :t AND {path}.#id = :aid AND {path}.#status = :from"))
            .expression_attribute_names("#md", "metadata")
            .expression_attribute_names("#actions", "actions")
            .expression_attribute_names("#id", "id")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":to", to_attribute(&to.to_json())?)
            .expression_attribute_values(":t", s(tenant.as_str()))
            .expression_attribute_values(":aid", s(action_id))
            .expression_attribute_values(":from", s(from.as_str()))
            .send()
            .await;
        written(result, &self.messages, "UpdateItem")
    }

    async fn create_turn(&self, turn: &TurnRecord) -> StoreResult<bool> {
        self.put_turn(turn).await
    }

    async fn get_turn(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<TurnRecord>> {
        self.read_turn(tenant, id).await
    }

    async fn put_agent(&self, agent: &crate::agents::StoredAgent, previous: Option<u64>) -> StoreResult<bool> {
        self.write_agent(agent, previous).await
    }

    async fn get_agent(
        &self,
        tenant: &TenantId,
        id: &crate::ids::AgentId,
    ) -> StoreResult<Option<crate::agents::StoredAgent>> {
        self.read_agent(tenant, id).await
    }

    async fn list_agents(&self, tenant: &TenantId) -> StoreResult<Vec<crate::agents::StoredAgent>> {
        self.read_agents(tenant).await
    }

    async fn record_agent_change(&self, tenant: &TenantId, at: &Timestamp) -> StoreResult<()> {
        self.put_agent_change(tenant, at).await
    }

    async fn agent_changes_since(&self, since: &Timestamp) -> StoreResult<Vec<(Timestamp, TenantId)>> {
        self.read_agent_changes(since).await
    }

    async fn all_agents(&self) -> StoreResult<Vec<crate::agents::StoredAgent>> {
        self.scan_agents().await
    }

    async fn delete_agent(&self, tenant: &TenantId, id: &crate::ids::AgentId) -> StoreResult<bool> {
        self.remove_agent(tenant, id).await
    }

    async fn hold_session(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        lease: HoldLease,
        take_over: bool,
    ) -> StoreResult<Hold> {
        // The holder is read after a refused write; one that let go meanwhile means: try again.
        for _ in 0..5 {
            let condition = if take_over {
                "attribute_exists(id)"
            } else {
                "attribute_exists(id) AND (attribute_not_exists(turnHolder) OR turnHolderUntil < :now OR turnHolder = :turn)"
            };
            let mut held = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(session.as_str()))
                .key("tenantId", s(tenant.as_str()))
                .update_expression("SET turnHolder = :turn, turnHolderUntil = :until REMOVE turnQueue")
                .condition_expression(condition)
                .expression_attribute_values(":turn", s(turn.as_str()))
                .expression_attribute_values(":until", AttributeValue::N(lease.until.to_string()))
                .return_values(ReturnValue::AllOld);
            if !take_over {
                held = held.expression_attribute_values(":now", AttributeValue::N(lease.now.to_string()));
            }
            match held.send().await {
                Ok(out) => {
                    let old = out.attributes.unwrap_or_default();
                    let live_holder = match (old.get("turnHolder"), old.get("turnHolderUntil")) {
                        (Some(AttributeValue::S(h)), Some(AttributeValue::N(until)))
                            if h != turn.as_str() && until.parse::<i64>().is_ok_and(|u| u >= lease.now) =>
                        {
                            MessageId::parse(h.clone()).ok()
                        }
                        _ => None,
                    };
                    return Ok(Hold::Held { queued: queued_turns(&old), taken_from: live_holder });
                }
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(map_err(&self.sessions, "UpdateItem", e)),
            }
            let item = self.holder_item(tenant, session).await?;
            let Some(item) = item else { return Err(StoreError::session_not_found(session)) };
            if let Some(AttributeValue::S(holder)) = item.get("turnHolder") {
                return Ok(Hold::Busy(
                    MessageId::parse(holder.clone()).map_err(|e| StoreError::Internal(e.to_string()))?,
                ));
            }
        }
        Err(StoreError::Conflict(format!("session {session} is being held and let go too often; retry")))
    }

    async fn queue_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        now: i64,
    ) -> StoreResult<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(session.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .update_expression("SET turnQueue = list_append(if_not_exists(turnQueue, :empty), :turn)")
            .condition_expression("attribute_exists(turnHolder) AND turnHolderUntil >= :now")
            .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":turn", AttributeValue::L(vec![s(turn.as_str())]))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .send()
            .await;
        written(result, &self.sessions, "UpdateItem")
    }

    async fn renew_session_hold(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        until: i64,
    ) -> StoreResult<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(session.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .update_expression("SET turnHolderUntil = :until")
            .condition_expression("turnHolder = :turn")
            .expression_attribute_values(":turn", s(turn.as_str()))
            .expression_attribute_values(":until", AttributeValue::N(until.to_string()))
            .send()
            .await;
        written(result, &self.sessions, "UpdateItem")
    }

    async fn let_go_session(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        next: &MessageId,
        until: i64,
    ) -> StoreResult<Vec<MessageId>> {
        // Most turns find nothing queued: one conditional write lets go.
        let result = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(session.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .update_expression("REMOVE turnHolder, turnHolderUntil")
            .condition_expression("turnHolder = :turn AND attribute_not_exists(turnQueue)")
            .expression_attribute_values(":turn", s(turn.as_str()))
            .send()
            .await;
        if written(result, &self.sessions, "UpdateItem")? {
            return Ok(Vec::new());
        }
        // Turns are queued (or this turn no longer holds it): `next` takes the session with them,
        // unless more were queued between the read and the write (then read again).
        for _ in 0..10 {
            let Some(item) = self.holder_item(tenant, session).await? else { return Ok(Vec::new()) };
            if !matches!(item.get("turnHolder"), Some(AttributeValue::S(h)) if h == turn.as_str()) {
                return Ok(Vec::new());
            }
            let queued = queued_turns(&item);
            let handed = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(session.as_str()))
                .key("tenantId", s(tenant.as_str()));
            let handed = if queued.is_empty() {
                handed
                    .update_expression("REMOVE turnHolder, turnHolderUntil")
                    .condition_expression("turnHolder = :turn AND attribute_not_exists(turnQueue)")
            } else {
                handed
                    .update_expression("SET turnHolder = :next, turnHolderUntil = :until REMOVE turnQueue")
                    .condition_expression("turnHolder = :turn AND size(turnQueue) = :n")
                    .expression_attribute_values(":next", s(next.as_str()))
                    .expression_attribute_values(":until", AttributeValue::N(until.to_string()))
                    .expression_attribute_values(":n", AttributeValue::N(queued.len().to_string()))
            };
            let handed = handed.expression_attribute_values(":turn", s(turn.as_str())).send().await;
            if written(handed, &self.sessions, "UpdateItem")? {
                return Ok(queued);
            }
        }
        Err(StoreError::Conflict(format!("session {session} is being queued on too often; retry")))
    }

    async fn add_usage(&self, tenant: &TenantId, user: &UserId, day: &str, entries: &[UsageEntry]) -> StoreResult<()> {
        self.add_user_usage(tenant, user, day, entries).await
    }

    async fn add_tenant_usage(&self, tenant: &TenantId, day: &str, entries: &[UsageEntry]) -> StoreResult<()> {
        self.add_total_usage(tenant, day, entries).await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        from: &str,
        to: &str,
        user: Option<&UserId>,
    ) -> StoreResult<Vec<UsageRow>> {
        self.read_user_usage(tenant, from, to, user).await
    }

    async fn tenant_usage(&self, tenant: &TenantId, from: &str, to: &str) -> StoreResult<Vec<UsageRow>> {
        self.read_total_usage(tenant, from, to).await
    }

    async fn put_channel(&self, channel: &crate::channels::StoredChannel, released: &[String]) -> StoreResult<bool> {
        self.write_channel(channel, released).await
    }

    async fn get_channel(
        &self,
        tenant: &TenantId,
        id: &crate::ids::ChannelId,
    ) -> StoreResult<Option<crate::channels::StoredChannel>> {
        self.read_channel(tenant, id).await
    }

    async fn list_channels(&self, tenant: &TenantId) -> StoreResult<Vec<crate::channels::StoredChannel>> {
        self.read_channels(tenant).await
    }

    async fn delete_channel(&self, tenant: &TenantId, id: &crate::ids::ChannelId) -> StoreResult<bool> {
        self.remove_channel(tenant, id).await
    }

    async fn channel_at(&self, address: &str) -> StoreResult<Option<crate::channels::StoredChannel>> {
        self.claimed_channel(address).await
    }

    async fn set_delivery(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        delivery: &serde_json::Value,
    ) -> StoreResult<bool> {
        self.write_delivery(tenant, message, delivery).await
    }

    async fn put_budget(&self, tenant: &TenantId, budget: &crate::usage::Budget) -> StoreResult<()> {
        self.write_budget(tenant, budget).await
    }

    async fn get_budget(&self, tenant: &TenantId) -> StoreResult<Option<crate::usage::Budget>> {
        self.read_budget(tenant).await
    }

    async fn note_once(&self, tenant: &TenantId, notice: &str, expires_at: i64) -> StoreResult<bool> {
        self.write_notice(tenant, notice, expires_at).await
    }

    async fn hand_over(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        from: &MessageId,
        to: &MessageId,
        until: i64,
    ) -> StoreResult<Option<Vec<MessageId>>> {
        let result = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(session.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .update_expression("SET turnHolder = :to, turnHolderUntil = :until REMOVE turnQueue")
            .condition_expression("turnHolder = :from")
            .expression_attribute_values(":from", s(from.as_str()))
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":until", AttributeValue::N(until.to_string()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(queued_turns(&out.attributes.unwrap_or_default()))),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(map_err(&self.sessions, "UpdateItem", e)),
        }
    }

    async fn record_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        self.put_erasure(erasure).await
    }

    async fn pending_erasures(&self, limit: usize) -> StoreResult<Vec<Erasure>> {
        self.read_erasures(limit).await
    }

    async fn finish_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        self.delete_erasure(erasure).await
    }

    async fn running_turns(&self, started_before: &Timestamp, limit: usize) -> StoreResult<Vec<TurnRecord>> {
        self.read_running(started_before, limit).await
    }

    async fn save_turn(&self, turn: &TurnRecord, events: &[TurnEvent], from: &[TurnStatus]) -> StoreResult<bool> {
        self.update_turn(turn, events, from).await
    }

    async fn delete_turn(&self, tenant: &TenantId, id: &MessageId, messages: &[MessageId]) -> StoreResult<()> {
        self.remove_turn(tenant, id, messages).await
    }

    async fn import_session(&self, session: Session) -> StoreResult<bool> {
        self.put_if_absent(&self.sessions, session_item(&session)?).await
    }

    async fn import_message(&self, message: Message) -> StoreResult<bool> {
        let created = self.put_if_absent(&self.messages, message_item(&message)?).await?;
        let update = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(message.session_id.as_str()))
            .key("tenantId", s(message.tenant_id.as_str()))
            .update_expression("SET lastMessageAt = :ts")
            .condition_expression(
                "attribute_exists(id) AND (attribute_not_exists(lastMessageAt) OR lastMessageAt < :ts)",
            )
            .expression_attribute_values(":ts", s(message.timestamp.clone()))
            .send()
            .await;
        written(update, &self.sessions, "UpdateItem")?;
        Ok(created)
    }

    async fn record_events(&self, events: &[StoredEvent], deliveries: &[Delivery]) -> StoreResult<()> {
        self.put_events(events, deliveries).await
    }

    async fn list_events(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        before: &str,
        types: &[String],
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.query_events(tenant, after, before, types, limit).await
    }

    async fn pending_deliveries(
        &self,
        due_at: Option<i64>,
        limit: usize,
        part: crate::store::OutboxPart,
    ) -> StoreResult<Vec<Delivery>> {
        self.outbox(due_at, limit, part).await
    }

    async fn claim_delivery(&self, delivery: &Delivery, owner: &str, now: i64, until: i64) -> StoreResult<bool> {
        self.claim(delivery, owner, now, until).await
    }

    async fn settle_delivery(&self, delivery: &Delivery, owner: &str, step: DeliveryStep) -> StoreResult<bool> {
        self.settle(delivery, owner, step).await
    }

    async fn forget_events(&self, tenant: &TenantId, user: &UserId, session: Option<&SessionId>) -> StoreResult<usize> {
        self.forget_user_events(tenant, user, session).await
    }

    async fn save_context_summary(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        summary: &ContextSummary,
        previous: Option<&Timestamp>,
    ) -> StoreResult<bool> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.sessions)
            .key("id", s(session.as_str()))
            .key("tenantId", s(tenant.as_str()))
            .update_expression("SET contextSummary = :summary")
            .expression_attribute_values(":summary", items::summary_attribute(summary)?);
        update = match previous {
            None => update.condition_expression("attribute_exists(id) AND attribute_not_exists(contextSummary)"),
            Some(at) => update
                .condition_expression("attribute_exists(id) AND contextSummary.createdAt = :previous")
                .expression_attribute_values(":previous", s(at.as_str())),
        };
        written(update.send().await, &self.sessions, "UpdateItem")
    }
}
