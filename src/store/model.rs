//! The stored data: sessions, messages and what callers give to write them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Cursor;
use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};
use crate::timestamp::Timestamp;

/// Free-form JSON stored with a session or message.
pub type Metadata = Map<String, Value>;

/// A conversation session, with the attribute names of the original server's DynamoDB guide.
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
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// ISO-8601 UTC, microseconds: the last activity on the session.
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    /// Timestamp of the newest message (our own attribute `lastMessageAt`), used for read-your-writes.
    #[serde(skip)]
    pub last_message_at: Option<Timestamp>,
    /// When `MESSAGE_TTL_DAYS` is set: epoch seconds after which the session is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// What the model is given instead of the messages it covers (`CONTEXT_SUMMARY_TRIGGER_TOKENS`);
    /// the messages themselves stay, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_summary: Option<ContextSummary>,
}

/// The longest context summary kept (characters). It rides on the session item, which every turn
/// updates (DynamoDB bills writes per KB of item), so it stays small.
pub const MAX_SUMMARY_CHARS: usize = 6_000;

/// A summary of a session's older messages, given to the model in their place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextSummary {
    pub text: String,
    /// The newest message it covers: the model sees the messages after it.
    #[schema(value_type = String)]
    pub covers_through_message_id: MessageId,
    #[schema(value_type = String)]
    pub covers_through_timestamp: Timestamp,
    /// Estimated tokens of what it replaced (the previous summary and the messages it folded).
    pub tokens_before: u64,
    /// Tokens of the summary itself.
    pub tokens_after: u64,
    /// The model that wrote it.
    pub model: String,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// What writing it cost, as the model reported it: `{"inputTokens", "outputTokens"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
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

/// A stored message, with the guide's attribute names.
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
    #[schema(value_type = String)]
    pub timestamp: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    /// When `MESSAGE_TTL_DAYS` is set: epoch seconds after which the message is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The usage this message accounts for, counted when it is stored (a reply's; never serialized).
    #[serde(skip)]
    #[schema(ignore)]
    pub counted: Option<crate::usage::Tally>,
}

impl Message {
    /// What an agent message's tools did (its `metadata.actions`); nothing for a user message, whose
    /// metadata is the client's and is never taken for a record of tools.
    pub fn tool_actions(&self) -> &[Value] {
        match self.role {
            Role::Agent => self
                .metadata
                .as_ref()
                .and_then(|m| m.get("actions"))
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice),
            Role::User => &[],
        }
    }
}

#[cfg(test)]
impl Message {
    /// A stored message for unit tests: "text" from user `u` in session `s` of tenant `t`.
    pub(crate) fn sample(role: Role, metadata: Option<Metadata>) -> Self {
        Message {
            id: MessageId::parse("m1").unwrap(),
            tenant_id: TenantId::parse("t").unwrap(),
            session_id: SessionId::parse("s").unwrap(),
            user_id: UserId::parse("u").unwrap(),
            content: "text".into(),
            role,
            timestamp: Timestamp::now(),
            metadata,
            expires_at: None,
            counted: None,
        }
    }
}

/// A new session and the messages it starts with, timestamped in order and checked for storage.
pub(crate) fn new_session_with(
    new: NewSession,
    messages: Vec<NewMessage>,
    retention: Retention,
) -> super::StoreResult<(Session, Vec<Message>)> {
    let mut session = Session::new(new, retention);
    let messages = first_messages(&mut session, messages, retention);
    for m in &messages {
        super::check_message(m)?;
    }
    Ok((session, messages))
}

/// The messages a new session starts with, timestamped in order, and the session pointing at them.
fn first_messages(session: &mut Session, messages: Vec<NewMessage>, retention: Retention) -> Vec<Message> {
    let stamps = crate::timestamp::allocate(Some(&session.created_at), messages.len());
    let out: Vec<Message> = messages
        .into_iter()
        .zip(stamps)
        .map(|(m, ts)| {
            let mut message = m.into_message(&session.tenant_id, &session.id, ts);
            message.expires_at = message.timestamp.micros().and_then(|micros| retention.expires_at(micros));
            message
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
        let now = Timestamp::from_micros(micros);
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
            context_summary: None,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewMessage {
    pub id: MessageId,
    pub user_id: UserId,
    pub role: Role,
    pub content: String,
    pub metadata: Option<Metadata>,
    /// The usage it accounts for (see `Message::counted`).
    #[serde(skip)]
    pub counted: Option<crate::usage::Tally>,
}

impl NewMessage {
    /// The message as stored in `session` at `timestamp` (its expiry is the store's to set).
    pub fn into_message(self, tenant: &TenantId, session: &SessionId, timestamp: Timestamp) -> Message {
        Message {
            id: self.id,
            tenant_id: tenant.clone(),
            session_id: session.clone(),
            user_id: self.user_id,
            content: self.content,
            role: self.role,
            timestamp,
            metadata: self.metadata,
            expires_at: None,
            counted: self.counted,
        }
    }
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
    pub before: Option<Timestamp>,
    /// For a model's history: only an agent message's metadata is read, and only its `actions`
    /// (what tools did, which the model is told), so a turn does not parse every message's metadata.
    pub for_model: bool,
}

/// One page of a list, and where the next page starts when there is one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl Page<Message> {
    /// A page from up to `limit + 1` messages read in order: the extra one only says that more exist.
    pub fn of_messages(items: Vec<Message>, limit: usize) -> Self {
        Page::split(items, limit, |m| Cursor::new(&m.timestamp, m.id.as_str()))
    }
}

impl Page<Session> {
    /// A page from up to `limit + 1` sessions read by last activity.
    pub fn of_sessions(items: Vec<Session>, limit: usize) -> Self {
        Page::split(items, limit, |s| Cursor::new(&s.updated_at, s.id.as_str()))
    }
}

impl<T> Page<T> {
    fn split(mut items: Vec<T>, limit: usize, position: impl Fn(&T) -> Cursor) -> Self {
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(position)
        } else {
            None
        };
        Page { items, next }
    }
}

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub sessions: usize,
    pub messages: usize,
}

/// Where a tool call stands. Stored as snake case text in the action's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Waiting for a person to approve or reject it.
    PendingApproval,
    /// Approved; the tool is running (or ran and its result is not stored yet).
    Approved,
    /// Rejected: it never runs.
    Rejected,
    /// The tool ran and answered.
    Done,
    /// The tool ran and failed.
    Failed,
    /// The agent may not use this tool (its `tools.allow` or `tools.deny`): it never ran.
    Refused,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::PendingApproval => "pending_approval",
            ActionStatus::Approved => "approved",
            ActionStatus::Rejected => "rejected",
            ActionStatus::Done => "done",
            ActionStatus::Failed => "failed",
            ActionStatus::Refused => "refused",
        }
    }
}

/// A tool call of the agent, as stored in its message's `metadata.actions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub id: String,
    pub tool: String,
    #[serde(default)]
    pub arguments: Value,
    pub status: ActionStatus,
    /// What the tool answered (JSON text), once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The first 200 characters of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Set when the call ran after a person approved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<bool>,
    /// Why it was rejected, when the person said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Action {
    /// The action as JSON, for `metadata.actions` and API answers, with the original server's
    /// `actionType` (the tool) and `success` (only once the tool ran: true when it answered).
    pub fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).unwrap_or(Value::Null);
        json["actionType"] = Value::String(self.tool.clone());
        match self.status {
            ActionStatus::Done => json["success"] = Value::Bool(true),
            ActionStatus::Failed => json["success"] = Value::Bool(false),
            _ => {}
        }
        json
    }

    /// The actions stored in a message's metadata (entries that are not actions are skipped).
    pub fn all_in(metadata: Option<&Metadata>) -> Vec<Action> {
        metadata
            .and_then(|m| m.get("actions"))
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(|a| serde_json::from_value(a.clone()).ok()).collect())
            .unwrap_or_default()
    }
}
