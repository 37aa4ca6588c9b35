//! The stored record of a streamed turn: its status, its lease and the events it sent, so that a
//! client can reconnect to it, and another server process can follow or cancel it.
//!
//! A JSON turn keeps no record of its own: its messages' metadata (`turnId`, `turnStatus`) is its
//! record, so it costs no extra write.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::NewMessage;
use crate::ids::{MessageId, SessionId, TenantId, UserId};
use crate::timestamp::Timestamp;

/// Where a turn stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// Its message waits for the session's running turn; the turn after it answers it.
    Queued,
    /// The model is working on it.
    Running,
    /// It finished with tool calls that wait for a person's decision.
    AwaitingApproval,
    /// It finished with a reply.
    Completed,
    /// The model failed; the user message is stored without a reply.
    Failed,
    /// It stopped early (client gone with `onDisconnect: cancel`, shutdown, or its server died); the
    /// partial reply is stored and marked.
    Interrupted,
    /// Someone cancelled it; the partial reply is stored and marked.
    Cancelled,
}

impl TurnStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Queued => "queued",
            TurnStatus::Running => "running",
            TurnStatus::AwaitingApproval => "awaiting_approval",
            TurnStatus::Completed => "completed",
            TurnStatus::Failed => "failed",
            TurnStatus::Interrupted => "interrupted",
            TurnStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        serde_json::from_value(Value::String(value.to_string())).ok()
    }

    /// Whether the turn will not change any more (awaiting approval counts as ended: the turn that
    /// continues after the decision is a turn of its own).
    pub fn is_final(self) -> bool {
        !matches!(self, TurnStatus::Running | TurnStatus::Queued)
    }
}

/// Why a turn failed, as the client was told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TurnFailure {
    pub code: String,
    pub message: String,
}

/// One event a turn sent, with its id (1, 2, 3, ... within the turn).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

/// A streamed turn as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnRecord {
    /// The turn's id, which is also its user message's id.
    pub turn_id: MessageId,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub user_id: UserId,
    pub status: TurnStatus,
    pub agent_message_id: Option<MessageId>,
    pub error: Option<TurnFailure>,
    pub last_event_id: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Binds an `Idempotency-Key` to the request that first used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// Epoch milliseconds until which the process running the turn is known to be alive.
    #[serde(default)]
    pub lease_until: i64,
    /// A keyed JSON turn's user message, which it stores only with its reply: kept here so that a
    /// turn whose server died is settled with it (and a retry answers `interrupted`, not a rerun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_user: Option<NewMessage>,
    /// The places the turn reserved for what it has yet to store (the pending user message's
    /// first, then the reply's): a settled turn's messages take them, right after its own message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Timestamp>,
    /// A queued turn's: the turn that answers its message with the others queued beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<MessageId>,
    /// A turn that answers queued messages: their turns, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<MessageId>,
    /// Epoch seconds after which the record (and its events) is gone (`TURN_EVENTS_TTL_HOURS`).
    pub expires_at: i64,
    /// The events sent so far, oldest first (stored beside the record, not in it).
    #[serde(skip)]
    pub events: Vec<TurnEvent>,
}

impl TurnRecord {
    /// The record as stored (without its events), as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
