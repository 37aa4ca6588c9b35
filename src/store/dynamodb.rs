//! The DynamoDB backend, on the seed's two tables with the official AWS SDK.
//!
//! Serving uses only the actions of the seed's IAM policy (GetItem, PutItem, UpdateItem, DeleteItem,
//! Query) and never Scan, BatchWriteItem, TransactWriteItems or DescribeTable.
//!
//! Our own extra attributes, which a reader of the seed's schema can ignore:
//! - sessions: `lastMessageAt` (S), the timestamp of the session's newest message. Appends move it
//!   forward with a conditional update, which is what makes message timestamps strictly increasing
//!   within a session across server instances, and lets history reads detect a lagging GSI.

use std::collections::HashMap;
use std::fmt::Debug;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Number, Value};

use super::{
    Appended, ConversationStore, Cursor, Deleted, Message, MessageQuery, Metadata, NewMessage, NewSession, Order, Page,
    PageRequest, Retention, Role, Session, StoreError, StoreResult, check_size, is_expired,
};
use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};
use crate::tables::{SESSION_TIMESTAMP_INDEX, TENANT_TIMESTAMP_INDEX, TENANT_USER_INDEX};
use crate::timestamp;

type Item = HashMap<String, AttributeValue>;

/// How many deletes run at once when a session or a user is erased.
const DELETE_CONCURRENCY: usize = 16;

pub struct DynamoStore {
    client: Client,
    sessions: String,
    messages: String,
    retention: Retention,
}

impl DynamoStore {
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
            for item in out.items.unwrap_or_default() {
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
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|m| Cursor::new(&m.timestamp, m.id.as_str()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Ids of every message of a session (tenant-checked).
    async fn session_message_ids(&self, tenant: &str, session: &str) -> StoreResult<Vec<String>> {
        let mut ids = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.messages)
                .index_name(SESSION_TIMESTAMP_INDEX)
                .key_condition_expression("sessionId = :s")
                .filter_expression("tenantId = :t")
                .expression_attribute_values(":s", s(session))
                .expression_attribute_values(":t", s(tenant))
                .projection_expression("#id")
                .expression_attribute_names("#id", "id")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| map_err(&self.messages, "Query", e))?;
            for item in out.items.unwrap_or_default() {
                if let Some(AttributeValue::S(id)) = item.get("id") {
                    ids.push(id.clone());
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(ids)
    }

    async fn delete_session_items(&self, tenant: &str, session: &str) -> StoreResult<usize> {
        let ids = self.session_message_ids(tenant, session).await?;
        let count = ids.len();
        futures::stream::iter(ids)
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
        self.client
            .delete_item()
            .table_name(&self.sessions)
            .key("id", s(session))
            .key("tenantId", s(tenant))
            .send()
            .await
            .map_err(|e| map_err(&self.sessions, "DeleteItem", e))?;
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
    async fn put_all(&self, messages: Vec<Message>) -> StoreResult<Vec<Appended>> {
        let writes = messages.into_iter().map(|m| async move {
            if self.put_if_absent(&self.messages, message_item(&m)?).await? {
                return Ok(Appended { message: m, created: true });
            }
            match self.get_message_item(m.id.as_str()).await? {
                Some(existing) if existing.tenant_id == m.tenant_id && existing.session_id == m.session_id => {
                    Ok(Appended { message: existing, created: false })
                }
                _ => Err(StoreError::Conflict(format!("message id {} is already used", m.id))),
            }
        });
        futures::future::try_join_all(writes).await
    }

    /// Moves the session's `lastMessageAt` forward over `count` new timestamps and returns them.
    /// Returns the new timestamps and the session's previous `lastMessageAt` and `updatedAt`.
    async fn reserve_timestamps(&self, tenant: &str, session: &str, count: usize) -> StoreResult<(Vec<String>, Item)> {
        let mut after: Option<String> = None;
        for _ in 0..20 {
            let stamps = timestamp::allocate(after.as_deref(), count);
            let (first, last) = (stamps[0].clone(), stamps[count - 1].clone());
            let expires_at = timestamp::parse_micros(&last).and_then(|m| self.retention.expires_at(m));
            let mut update =
                self.client.update_item().table_name(&self.sessions).key("id", s(session)).key("tenantId", s(tenant));
            update = match expires_at {
                Some(at) => update
                    .update_expression("SET lastMessageAt = :last, updatedAt = :last, expiresAt = :exp")
                    .expression_attribute_values(":exp", AttributeValue::N(at.to_string())),
                None => update.update_expression("SET lastMessageAt = :last, updatedAt = :last"),
            };
            let result = update
                .condition_expression(
                    "attribute_exists(id) AND isActive = :active AND \
                     (attribute_not_exists(lastMessageAt) OR lastMessageAt < :first)",
                )
                .expression_attribute_values(":last", s(last))
                .expression_attribute_values(":first", s(first))
                .expression_attribute_values(":active", AttributeValue::Bool(true))
                .return_values(ReturnValue::UpdatedOld)
                .send()
                .await;
            match result {
                Ok(out) => return Ok((stamps, out.attributes.unwrap_or_default())),
                Err(e) if is_conditional_failure(&e) => {
                    let stored = self
                        .get_session_item(tenant, session)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("session {session} not found")))?;
                    if !stored.is_active {
                        return Err(StoreError::Conflict(format!("session {session} is closed")));
                    }
                    after = stored.last_message_at;
                }
                Err(e) => return Err(map_err(&self.sessions, "UpdateItem", e)),
            }
        }
        Err(StoreError::Conflict(format!("session {session} is being written by too many requests at once; retry")))
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

    async fn create_session(&self, new: NewSession) -> StoreResult<Session> {
        let session = Session::new(new, self.retention);
        if !self.put_if_absent(&self.sessions, session_item(&session)?).await? {
            return Err(StoreError::Conflict(format!("session id {} is already used", session.id)));
        }
        Ok(session)
    }

    async fn create_session_with(
        &self,
        new: NewSession,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(Session, Vec<Message>)> {
        let mut session = Session::new(new, self.retention);
        let messages = super::first_messages(&mut session, messages, self.retention);
        for m in &messages {
            check_size(m)?;
            message_item(m)?;
        }
        // The session and its messages in one round trip: nothing else can write a new session yet.
        let (created, stored) =
            tokio::join!(self.put_if_absent(&self.sessions, session_item(&session)?), self.put_all(messages));
        if !created? {
            return Err(StoreError::Conflict(format!("session id {} is already used", session.id)));
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
        let mut items: Vec<Session> = all
            .into_iter()
            .filter(|s| match &page.cursor {
                None => true,
                Some(c) => (s.updated_at.as_str(), s.id.as_str()) < (c.timestamp.as_str(), c.id.as_str()),
            })
            .take(page.limit + 1)
            .collect();
        let next = if items.len() > page.limit {
            items.truncate(page.limit);
            items.last().map(|s| Cursor::new(&s.updated_at, s.id.as_str()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn append_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Vec<Appended>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // Build and check every item before writing anything.
        let provisional = timestamp::now();
        let mut built: Vec<Message> = messages
            .into_iter()
            .map(|m| Message {
                id: m.id,
                tenant_id: tenant.clone(),
                session_id: session.clone(),
                user_id: m.user_id,
                content: m.content,
                role: m.role,
                timestamp: provisional.clone(),
                metadata: m.metadata,
                expires_at: self.retention.expires_at(0),
            })
            .collect();
        for m in &built {
            check_size(m)?;
            message_item(m)?;
        }
        let (stamps, previous) = self.reserve_timestamps(tenant.as_str(), session.as_str(), built.len()).await?;
        let reserved_last = stamps[stamps.len() - 1].clone();
        for (m, ts) in built.iter_mut().zip(stamps) {
            m.expires_at = timestamp::parse_micros(&ts).and_then(|micros| self.retention.expires_at(micros));
            m.timestamp = ts;
        }
        let appended = self.put_all(built).await?;
        // Ids that were already stored did not use their reserved timestamps: move the session's
        // marks back to the newest message really written, unless another append moved them since.
        let newest_created = appended.iter().filter(|a| a.created).map(|a| &a.message.timestamp).max();
        if newest_created != Some(&reserved_last) {
            let (last, updated) = match newest_created {
                Some(ts) => (Some(s(ts.clone())), s(ts.clone())),
                None => (
                    previous.get("lastMessageAt").cloned(),
                    previous.get("updatedAt").cloned().unwrap_or_else(|| s(timestamp::now())),
                ),
            };
            let mut update = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(session.as_str()))
                .key("tenantId", s(tenant.as_str()))
                .condition_expression("lastMessageAt = :reserved")
                .expression_attribute_values(":reserved", s(reserved_last))
                .expression_attribute_values(":updated", updated);
            update = match last {
                Some(last) => update
                    .update_expression("SET lastMessageAt = :last, updatedAt = :updated")
                    .expression_attribute_values(":last", last),
                None => update.update_expression("SET updatedAt = :updated REMOVE lastMessageAt"),
            };
            match update.send().await {
                Ok(_) => {}
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(map_err(&self.sessions, "UpdateItem", e)),
            }
        }
        Ok(appended)
    }

    async fn begin_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        user: &UserId,
        count: usize,
    ) -> StoreResult<(Session, Vec<String>)> {
        let not_found = || StoreError::NotFound(format!("session {session} not found for this tenant and user"));
        let mut after: Option<String> = None;
        for _ in 0..20 {
            let stamps = timestamp::allocate(after.as_deref(), count);
            let (first, last) = (stamps[0].clone(), stamps[count - 1].clone());
            let expires_at = timestamp::parse_micros(&last).and_then(|m| self.retention.expires_at(m));
            // One conditional write checks the session (this user's, active) and reserves the
            // timestamps; the old item comes back for the history check.
            let mut update = self
                .client
                .update_item()
                .table_name(&self.sessions)
                .key("id", s(session.as_str()))
                .key("tenantId", s(tenant.as_str()))
                .condition_expression(
                    "attribute_exists(id) AND userId = :u AND isActive = :active AND \
                     (attribute_not_exists(lastMessageAt) OR lastMessageAt < :first)",
                )
                .expression_attribute_values(":u", s(user.as_str()))
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
                    if is_expired(before.expires_at) {
                        return Err(not_found());
                    }
                    return Ok((before, stamps));
                }
                Err(e) if is_conditional_failure(&e) => {
                    let stored = self
                        .get_session_item(tenant.as_str(), session.as_str())
                        .await?
                        .filter(|s| &s.user_id == user)
                        .ok_or_else(not_found)?;
                    if !stored.is_active {
                        return Err(StoreError::Conflict(format!(
                            "session {session} is closed; send the message without sessionId to start a new one"
                        )));
                    }
                    after = stored.last_message_at;
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
        let mut checked = Vec::with_capacity(messages.len());
        for mut m in messages {
            if &m.tenant_id != tenant || &m.session_id != session {
                return Err(StoreError::Invalid("a message of another session".into()));
            }
            m.expires_at = timestamp::parse_micros(&m.timestamp).and_then(|micros| self.retention.expires_at(micros));
            check_size(&m)?;
            message_item(&m)?;
            checked.push(m);
        }
        self.put_all(checked).await
    }

    async fn release_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        reserved_last: &str,
        previous: Option<&str>,
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
            Some(p) => update.update_expression("SET lastMessageAt = :prev").expression_attribute_values(":prev", s(p)),
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
        base = match (query.order, after, query.before) {
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
        self.collect_messages(base, query.limit, None).await
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

    async fn delete_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<usize>> {
        if self.get_session_item(tenant.as_str(), id.as_str()).await?.is_none() {
            return Ok(None);
        }
        self.delete_session_items(tenant.as_str(), id.as_str()).await.map(Some)
    }

    async fn delete_user(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Deleted> {
        let sessions = self.all_user_sessions(tenant.as_str(), user.as_str(), false).await?;
        let mut deleted = Deleted::default();
        for session in sessions {
            deleted.messages += self.delete_session_items(tenant.as_str(), session.id.as_str()).await?;
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
        base = match query.before {
            Some(before) => base
                .key_condition_expression("tenantId = :t AND #ts < :hi")
                .expression_attribute_names("#ts", "timestamp")
                .expression_attribute_values(":hi", s(before)),
            None => base.key_condition_expression("tenantId = :t"),
        };
        // The cursor becomes the start key, always under the caller's own tenant.
        let start = query.cursor.map(|c| {
            HashMap::from([
                ("tenantId".to_string(), s(tenant.as_str())),
                ("timestamp".to_string(), s(c.timestamp)),
                ("id".to_string(), s(c.id)),
            ])
        });
        self.collect_messages(base, query.limit, start).await
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
        action_id: &str,
        from: &str,
        to: serde_json::Value,
    ) -> StoreResult<bool> {
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
            .expression_attribute_values(":to", to_attribute(&to)?)
            .expression_attribute_values(":t", s(tenant.as_str()))
            .expression_attribute_values(":aid", s(action_id))
            .expression_attribute_values(":from", s(from))
            .send()
            .await;
        written(result, &self.messages, "UpdateItem")
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
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A conditional write's outcome: true when it happened, false when its condition did not hold.
fn written<T, E, R>(result: Result<T, SdkError<E, R>>, table: &str, action: &str) -> StoreResult<bool>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_conditional_failure(&e) => Ok(false),
        Err(e) => Err(map_err(table, action, e)),
    }
}

fn is_conditional_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(se) if se.err().code() == Some("ConditionalCheckFailedException"))
}

/// Turns an SDK error into a store error that names the table, the action or the endpoint.
/// Throttling and 5xx have already been retried by the SDK's standard retry policy by now.
fn map_err<E, R>(table: &str, action: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            let message = se.err().message().unwrap_or_default();
            match code {
                "ResourceNotFoundException" => StoreError::Unavailable(format!(
                    "DynamoDB table {table} does not exist (create it with `agent-server tables create`)"
                )),
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "MissingAuthenticationTokenException" => StoreError::Unavailable(format!(
                    "DynamoDB denied dynamodb:{action} on table {table} ({code}): grant it (see `agent-server tables iam-policy`) or fix the AWS credentials"
                )),
                "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded" => {
                    StoreError::Unavailable(format!(
                        "DynamoDB is throttling dynamodb:{action} on table {table}; retry later"
                    ))
                }
                "ValidationException" if message.contains("size") => {
                    StoreError::TooLarge(format!("item too large for DynamoDB table {table}: {message}"))
                }
                _ => {
                    tracing::error!(table, action, code, message, "DynamoDB error");
                    StoreError::Internal(format!("DynamoDB {action} on {table} failed: {code}"))
                }
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            tracing::error!(table, action, error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "DynamoDB unreachable");
            StoreError::Unavailable(format!("DynamoDB endpoint is unreachable (dynamodb:{action} on table {table})"))
        }
        _ => {
            tracing::error!(table, action, error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "DynamoDB request failed");
            StoreError::Unavailable(format!(
                "DynamoDB request dynamodb:{action} on table {table} could not be made (check AWS region and credentials)"
            ))
        }
    }
}

// ---- items -------------------------------------------------------------------------------------

/// JSON to a DynamoDB attribute value, applying DynamoDB's rules for numbers.
pub(crate) fn to_attribute(value: &Value) -> StoreResult<AttributeValue> {
    Ok(match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => {
            super::check_storable(value).map_err(|e| StoreError::Invalid(format!("metadata: {e}")))?;
            AttributeValue::N(n.to_string())
        }
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attribute).collect::<StoreResult<_>>()?),
        Value::Object(map) => AttributeValue::M(to_attribute_map(map)?),
    })
}

fn to_attribute_map(map: &Metadata) -> StoreResult<HashMap<String, AttributeValue>> {
    map.iter().map(|(k, v)| Ok((k.clone(), to_attribute(v)?))).collect()
}

/// A DynamoDB attribute value to JSON (sets become arrays, binary becomes base64 text).
pub(crate) fn from_attribute(value: &AttributeValue) -> Value {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match value {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number(n),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::L(items) => Value::Array(items.iter().map(from_attribute).collect()),
        AttributeValue::M(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), from_attribute(v))).collect()),
        AttributeValue::Ss(items) => Value::Array(items.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(items) => Value::Array(items.iter().map(|n| number(n)).collect()),
        AttributeValue::B(b) => Value::String(b64(b.as_ref())),
        AttributeValue::Bs(items) => Value::Array(items.iter().map(|b| Value::String(b64(b.as_ref()))).collect()),
        _ => Value::Null,
    }
}

fn number(n: &str) -> Value {
    if let Ok(i) = n.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = n.parse::<u64>() {
        return Value::Number(u.into());
    }
    n.parse::<f64>().ok().and_then(Number::from_f64).map_or_else(|| Value::String(n.to_string()), Value::Number)
}

fn get_s(item: &Item, name: &str) -> StoreResult<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::Internal(format!("stored item has no string attribute {name}"))),
    }
}

fn get_opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn get_metadata(item: &Item) -> Option<Metadata> {
    match item.get("metadata") {
        Some(AttributeValue::M(m)) => Some(m.iter().map(|(k, v)| (k.clone(), from_attribute(v))).collect()),
        _ => None,
    }
}

/// `expiresAt`: epoch seconds (DynamoDB's TTL format).
fn get_epoch(item: &Item) -> Option<i64> {
    match item.get("expiresAt") {
        Some(AttributeValue::N(n)) => n.parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} is not valid"))
}

pub(crate) fn session_item(s: &Session) -> StoreResult<Item> {
    let mut item = HashMap::from([
        ("id".to_string(), AttributeValue::S(s.id.to_string())),
        ("tenantId".to_string(), AttributeValue::S(s.tenant_id.to_string())),
        ("userId".to_string(), AttributeValue::S(s.user_id.to_string())),
        ("isActive".to_string(), AttributeValue::Bool(s.is_active)),
        ("createdAt".to_string(), AttributeValue::S(s.created_at.clone())),
        ("updatedAt".to_string(), AttributeValue::S(s.updated_at.clone())),
    ]);
    if let Some(l) = &s.location_id {
        item.insert("locationId".into(), AttributeValue::S(l.to_string()));
    }
    if let Some(m) = &s.metadata {
        item.insert("metadata".into(), AttributeValue::M(to_attribute_map(m)?));
    }
    if let Some(t) = &s.last_message_at {
        item.insert("lastMessageAt".into(), AttributeValue::S(t.clone()));
    }
    if let Some(at) = s.expires_at {
        item.insert("expiresAt".into(), AttributeValue::N(at.to_string()));
    }
    Ok(item)
}

pub(crate) fn session_from_item(item: Item) -> StoreResult<Session> {
    Ok(Session {
        id: SessionId::parse(get_s(&item, "id")?).map_err(|_| bad("session id"))?,
        tenant_id: TenantId::parse(get_s(&item, "tenantId")?).map_err(|_| bad("tenant id"))?,
        user_id: UserId::parse(get_s(&item, "userId")?).map_err(|_| bad("user id"))?,
        location_id: get_opt_s(&item, "locationId").and_then(|l| LocationId::parse(l).ok()),
        is_active: matches!(item.get("isActive"), Some(AttributeValue::Bool(true))),
        created_at: get_s(&item, "createdAt")?,
        updated_at: get_s(&item, "updatedAt")?,
        last_message_at: get_opt_s(&item, "lastMessageAt"),
        metadata: get_metadata(&item),
        expires_at: get_epoch(&item),
    })
}

pub(crate) fn message_item(m: &Message) -> StoreResult<Item> {
    let mut item = HashMap::from([
        ("id".to_string(), AttributeValue::S(m.id.to_string())),
        ("tenantId".to_string(), AttributeValue::S(m.tenant_id.to_string())),
        ("sessionId".to_string(), AttributeValue::S(m.session_id.to_string())),
        ("userId".to_string(), AttributeValue::S(m.user_id.to_string())),
        ("content".to_string(), AttributeValue::S(m.content.clone())),
        ("role".to_string(), AttributeValue::S(m.role.as_str().to_string())),
        ("timestamp".to_string(), AttributeValue::S(m.timestamp.clone())),
    ]);
    if let Some(md) = &m.metadata {
        item.insert("metadata".into(), AttributeValue::M(to_attribute_map(md)?));
    }
    if let Some(at) = m.expires_at {
        item.insert("expiresAt".into(), AttributeValue::N(at.to_string()));
    }
    Ok(item)
}

pub(crate) fn message_from_item(item: Item) -> StoreResult<Message> {
    Ok(Message {
        id: MessageId::parse(get_s(&item, "id")?).map_err(|_| bad("message id"))?,
        tenant_id: TenantId::parse(get_s(&item, "tenantId")?).map_err(|_| bad("tenant id"))?,
        session_id: SessionId::parse(get_s(&item, "sessionId")?).map_err(|_| bad("session id"))?,
        user_id: UserId::parse(get_s(&item, "userId")?).map_err(|_| bad("user id"))?,
        content: get_s(&item, "content")?,
        role: Role::parse(&get_s(&item, "role")?).ok_or_else(|| bad("role"))?,
        timestamp: get_s(&item, "timestamp")?,
        metadata: get_metadata(&item),
        expires_at: get_epoch(&item),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_round_trips_through_attribute_values() {
        let v = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -7}});
        assert_eq!(from_attribute(&to_attribute(&v).unwrap()), v);
    }

    #[test]
    fn numbers_outside_dynamodb_range_are_refused() {
        assert!(to_attribute(&json!(1e300)).is_err());
        assert!(to_attribute(&json!(1e-200)).is_err());
        assert!(to_attribute(&json!(1e100)).is_ok());
    }
}
