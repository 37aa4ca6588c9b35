//! The conversation store: sessions and messages of every tenant, on DynamoDB or embedded SQLite.
//!
//! One trait, [`ConversationStore`], with two implementations that behave the same way: the same
//! ordering, idempotency, tenant scoping and paging. The conformance tests in `tests/store.rs` run one
//! suite over both.

mod cursor;
pub mod dynamodb;
mod item;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use cursor::Cursor;
pub use item::{MAX_ITEM_BYTES, check_size, check_storable, message_item_bytes};

use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};

/// Free-form JSON stored with a session or message.
pub type Metadata = Map<String, Value>;

/// A conversation session, with the seed's attribute names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    #[schema(value_type = String)]
    pub id: SessionId,
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    #[schema(value_type = String)]
    pub user_id: UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub location_id: Option<LocationId>,
    pub is_active: bool,
    /// ISO-8601 UTC, microseconds.
    pub created_at: String,
    /// ISO-8601 UTC, microseconds: the last activity on the session.
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    /// Timestamp of the newest message (our own attribute `lastMessageAt`), used for read-your-writes.
    #[serde(skip)]
    pub last_message_at: Option<String>,
    /// When `MESSAGE_TTL_DAYS` is set: epoch seconds after which the session is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Agent => "agent",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "user" => Some(Role::User),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

/// A stored message, with the seed's attribute names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    #[schema(value_type = String)]
    pub session_id: SessionId,
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub content: String,
    pub role: Role,
    /// ISO-8601 UTC, microseconds; strictly increasing within a session.
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    /// When `MESSAGE_TTL_DAYS` is set: epoch seconds after which the message is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// The messages a new session starts with, timestamped in order, and the session pointing at them.
pub(crate) fn first_messages(session: &mut Session, messages: Vec<NewMessage>, retention: Retention) -> Vec<Message> {
    let stamps = crate::timestamp::allocate(Some(&session.created_at), messages.len());
    let out: Vec<Message> = messages
        .into_iter()
        .zip(stamps)
        .map(|(m, ts)| Message {
            id: m.id,
            tenant_id: session.tenant_id.clone(),
            session_id: session.id.clone(),
            user_id: m.user_id,
            content: m.content,
            role: m.role,
            expires_at: crate::timestamp::parse_micros(&ts).and_then(|micros| retention.expires_at(micros)),
            timestamp: ts,
            metadata: m.metadata,
        })
        .collect();
    if let Some(last) = out.last() {
        session.last_message_at = Some(last.timestamp.clone());
        session.updated_at = last.timestamp.clone();
        session.expires_at = last.expires_at.or(session.expires_at);
    }
    out
}

impl Session {
    /// A new active session, created now, with its expiry under `retention`.
    pub fn new(new: NewSession, retention: Retention) -> Self {
        let micros = crate::timestamp::now_micros();
        let now = crate::timestamp::format_micros(micros);
        Session {
            id: SessionId::generate(),
            tenant_id: new.tenant_id,
            user_id: new.user_id,
            location_id: new.location_id,
            is_active: true,
            created_at: now.clone(),
            updated_at: now,
            metadata: new.metadata,
            last_message_at: None,
            expires_at: retention.expires_at(micros),
        }
    }
}

/// How long new items are kept (`MESSAGE_TTL_DAYS`), counted from their last write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention(pub Option<std::time::Duration>);

impl Retention {
    /// The `expiresAt` of an item written at `micros` (microseconds since the epoch).
    pub fn expires_at(self, micros: i64) -> Option<i64> {
        self.0.map(|ttl| micros.div_euclid(1_000_000) + ttl.as_secs() as i64)
    }
}

/// Whether an item is past its `expiresAt` (DynamoDB deletes such items lazily, so reads hide them).
pub fn is_expired(expires_at: Option<i64>) -> bool {
    expires_at.is_some_and(|t| t <= crate::timestamp::epoch_seconds())
}

/// What a caller gives to start a session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub location_id: Option<LocationId>,
    pub metadata: Option<Metadata>,
}

/// What a caller gives to append a message; the store assigns the timestamp.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub user_id: UserId,
    pub role: Role,
    pub content: String,
    pub metadata: Option<Metadata>,
}

/// The result of appending one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub message: Message,
    /// False when a message with this id was already stored: the stored one is returned.
    pub created: bool,
}

/// Oldest first or newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

/// Which page of a list to read.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// Which page of a message list to read.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    pub limit: usize,
    pub order: Order,
    pub cursor: Option<Cursor>,
    /// Only messages strictly older than this timestamp (fixed-width form).
    pub before: Option<String>,
}

/// One page of a list, and where the next page starts when there is one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub sessions: usize,
    pub messages: usize,
}

/// Why a store operation failed. Small on purpose: the HTTP layer maps each kind to one status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The session does not exist for this tenant.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the stored state (closed session, id used elsewhere).
    #[error("{0}")]
    Conflict(String),
    /// An item would exceed the storage limit.
    #[error("{0}")]
    TooLarge(String),
    /// A value the store cannot hold (bad cursor, bad metadata).
    #[error("{0}")]
    Invalid(String),
    /// The storage is not reachable, a table is missing or a permission is denied: the message names it.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else; details are logged, not shown.
    #[error("{0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The operations of the conversation store. Every call is scoped by tenant.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// `dynamodb` or `sqlite`, with where the data is.
    fn describe(&self) -> String;
    /// A cheap read that proves the storage answers (readiness).
    async fn check(&self) -> StoreResult<()>;
    async fn create_session(&self, new: NewSession) -> StoreResult<Session>;
    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>>;
    /// Creates a session together with its first messages (a turn that starts a session), all
    /// written at once; the messages get strictly increasing timestamps.
    async fn create_session_with(
        &self,
        new: NewSession,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(Session, Vec<Message>)>;
    /// The user's active session with the most recent activity.
    async fn find_active_session(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Option<Session>>;
    /// The user's sessions, most recent activity first.
    async fn list_user_sessions(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest,
    ) -> StoreResult<Page<Session>>;
    /// Appends messages to an active session with strictly increasing timestamps, in order.
    /// A message whose id is already stored in this session is not stored again.
    /// Starts a turn on an existing session: checks that it is this user's and active, moves its
    /// activity forward and reserves `count` strictly increasing timestamps after its newest message,
    /// in one write. Returns the session as it was before (its `last_message_at` is what a history
    /// read must reach) and the timestamps. Messages written with them go through `put_messages`.
    async fn begin_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        user: &UserId,
        count: usize,
    ) -> StoreResult<(Session, Vec<String>)>;
    /// Stores messages whose timestamps `begin_turn` reserved, all at once; a message whose id is
    /// already stored in this session is returned as stored.
    async fn put_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<Message>,
    ) -> StoreResult<Vec<Appended>>;
    /// Gives back the timestamps of a turn that stored nothing (the model failed), unless another
    /// turn reserved after it.
    async fn release_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        reserved_last: &str,
        previous: Option<&str>,
    ) -> StoreResult<()>;
    async fn append_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Vec<Appended>>;
    /// One message by id, only when it belongs to the tenant.
    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<Message>>;
    async fn list_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        query: MessageQuery,
    ) -> StoreResult<Page<Message>>;
    /// Marks the session inactive; `None` when it does not exist.
    async fn close_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>>;
    /// Deletes the session and all its messages; the number of messages, `None` when absent.
    async fn delete_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<usize>>;
    /// Deletes every session and message of one user (erasure request).
    async fn delete_user(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Deleted>;
    /// The tenant's messages across sessions by time (newest first by default).
    async fn list_tenant_messages(&self, tenant: &TenantId, query: MessageQuery) -> StoreResult<Page<Message>>;
    /// Deletes items past their `expiresAt` in small batches; the number deleted. DynamoDB's own TTL
    /// does this for the DynamoDB backend.
    async fn purge_expired(&self) -> StoreResult<usize> {
        Ok(0)
    }
    /// Every session (of one tenant, or of all), page by page, for export. `after` is the opaque
    /// position the previous page returned.
    async fn scan_sessions(
        &self,
        tenant: Option<&TenantId>,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<(Vec<Session>, Option<String>)>;
    /// Replaces the action `action_id` in the message's `metadata.actions` with `to`, only while its
    /// status is `from`; false when it is not (decided already, or absent). Used to approve a
    /// pending tool call exactly once.
    async fn transition_action(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        action_id: &str,
        from: &str,
        to: serde_json::Value,
    ) -> StoreResult<bool>;
    /// Stores an exported session as it is, unless one with its key exists; true when stored.
    async fn import_session(&self, session: Session) -> StoreResult<bool>;
    /// Stores an exported message as it is, unless its id exists; true when stored. Its session's
    /// `lastMessageAt` moves forward to the message's timestamp.
    async fn import_message(&self, message: Message) -> StoreResult<bool>;
}

/// The session's newest `limit` messages, oldest first, with read-your-writes.
///
/// On DynamoDB the session's messages come from a GSI, which is eventually consistent. The session
/// item records the timestamp of its newest message, so a read that comes back without it is retried
/// briefly (up to about half a second) instead of handing the model an incomplete history.
pub async fn recent_history(
    store: &dyn ConversationStore,
    session: &Session,
    limit: usize,
) -> StoreResult<Vec<Message>> {
    complete_history(store, session, limit, None).await
}

/// The query `recent_history` makes, to run beside other requests.
pub fn history_query(limit: usize) -> MessageQuery {
    MessageQuery { limit, order: Order::Desc, ..Default::default() }
}

/// `recent_history`, starting from a first page already read with `history_query`.
pub async fn complete_history(
    store: &dyn ConversationStore,
    session: &Session,
    limit: usize,
    mut first: Option<Page<Message>>,
) -> StoreResult<Vec<Message>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut delay = Duration::from_millis(10);
    for attempt in 0.. {
        let page = match first.take() {
            Some(page) => page,
            None => store.list_messages(&session.tenant_id, &session.id, history_query(limit)).await?,
        };
        let newest = page.items.first().map(|m| m.timestamp.as_str());
        let complete = match (&session.last_message_at, newest) {
            (None, _) => true,
            (Some(expected), Some(newest)) => newest >= expected.as_str(),
            (Some(_), None) => false,
        };
        if complete || attempt >= 6 {
            if !complete {
                tracing::warn!(session = %session.id, "history still incomplete after retries");
            }
            let mut items = page.items;
            items.reverse();
            return Ok(items);
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    unreachable!()
}
