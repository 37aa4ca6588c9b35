//! What a turn is asked to do, what it gives back, and why it can fail.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{IdempotencyKey, LocationId, MessageId, SessionId, TenantId, UserId};
use crate::llm::ModelError;
use crate::store::{Action, ActionStatus, Message, Metadata, StoreError, TurnStatus};

/// What happens to a turn when its client goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDisconnect {
    /// The turn completes and is stored; the client reconnects to its events or reads it.
    #[default]
    Continue,
    /// The turn stops; the partial reply is stored, marked `interrupted`.
    Cancel,
}

/// One user message for the agent.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub tenant: TenantId,
    pub user: UserId,
    pub location: Option<LocationId>,
    pub message: String,
    pub session_id: Option<SessionId>,
    pub context: Option<Map<String, Value>>,
    pub metadata: Option<Metadata>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub on_disconnect: OnDisconnect,
    /// Whether the client follows the turn's events (the model streams), or waits for the answer.
    pub stream: bool,
    /// The tenant's agent the turn asks for (`agentId` in the body, or `x-agent-id`).
    pub agent: Option<crate::ids::AgentId>,
    /// What to do when the session already has a running turn (`concurrency`); by default the
    /// agent's setting, else `TURN_CONCURRENCY`.
    pub concurrency: Option<Concurrency>,
    /// Metadata for the session the turn starts, if it starts one (a channel's contact name).
    pub session_metadata: Option<Metadata>,
    /// Added to the agent's system prompt for this turn only (the Responses API's `instructions`).
    pub instructions: Option<String>,
}

/// What a turn does when its session already has a running turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Its message is stored at once and waits; when the running turn ends, one turn answers every
    /// message that waited, in one model call.
    #[default]
    Queue,
    /// The running turn stops (its partial reply stored, marked `interrupted: superseded`) and a new
    /// turn answers everything not answered yet.
    Interrupt,
    /// It runs beside the other (each reply right after its own message).
    Parallel,
    /// It is refused with 409 `turn_in_progress` and the running turn's id; nothing is stored.
    Reject,
}

impl Concurrency {
    /// `queue`, `interrupt`, `parallel` or `reject`.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "queue" => Ok(Concurrency::Queue),
            "interrupt" => Ok(Concurrency::Interrupt),
            "parallel" => Ok(Concurrency::Parallel),
            "reject" => Ok(Concurrency::Reject),
            other => Err(format!("{other:?} is not one of queue, interrupt, parallel, reject")),
        }
    }

    /// Whether a turn under this policy holds its session while it runs.
    pub fn holds(self) -> bool {
        self != Concurrency::Parallel
    }
}

/// A finished turn: its stored messages (no user message for the turn that continues after an
/// approval decision).
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub turn_id: MessageId,
    pub status: TurnStatus,
    pub session_id: SessionId,
    pub user_message: Option<Message>,
    pub agent_message: Message,
    /// A queued message's: the turn whose reply answers it.
    pub answered_by: Option<MessageId>,
    /// A turn that answered queued messages: their turns, oldest first.
    pub answers: Vec<MessageId>,
}

impl TurnOutcome {
    /// Every tool call of the turn, as stored in the agent message's `metadata.actions`.
    pub fn actions(&self) -> Vec<Value> {
        self.agent_message.tool_actions().to_vec()
    }

    /// Whether an action of the turn waits for a person.
    pub fn awaits_approval(&self) -> bool {
        Action::all_in(self.agent_message.metadata.as_ref()).iter().any(|a| a.status == ActionStatus::PendingApproval)
    }
}

/// A turn's answer: the JSON body of `POST /agent/process` and the data of the `done` event.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnAnswer {
    #[schema(value_type = String)]
    pub session_id: SessionId,
    /// The turn's id (also its user message's id).
    #[schema(value_type = String)]
    pub turn_id: MessageId,
    pub status: TurnStatus,
    /// `approval_required` when an action waits for a person's decision, `automatic` otherwise (the
    /// original server's field).
    pub decision_level: &'static str,
    /// The agent's reply text.
    pub response: String,
    /// The stored user message (absent in the answer to an approval decision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_message: Option<Message>,
    pub agent_message: Message,
    /// Every tool call of the turn: `{id, tool, arguments, status, summary}`, status one of `done`,
    /// `failed`, `pending_approval`, `rejected`.
    #[schema(value_type = Vec<Object>)]
    pub actions: Vec<Value>,
    /// A queued message's: the turn whose reply (this one) answered it with the others queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub answered_by: Option<MessageId>,
    /// A turn that answered queued messages: their turns, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub answers: Vec<MessageId>,
}

impl From<TurnOutcome> for TurnAnswer {
    fn from(t: TurnOutcome) -> Self {
        TurnAnswer {
            decision_level: if t.awaits_approval() { "approval_required" } else { "automatic" },
            actions: t.actions(),
            session_id: t.session_id,
            turn_id: t.turn_id,
            status: t.status,
            response: t.agent_message.content.clone(),
            user_message: t.user_message,
            agent_message: t.agent_message,
            answered_by: t.answered_by,
            answers: t.answers,
        }
    }
}

/// Why a turn did not finish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TurnError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A request with the same `Idempotency-Key` is still running.
    #[error("a request with this Idempotency-Key is still in progress (turn {0}); retry later or follow its events")]
    InProgress(MessageId),
    /// The `Idempotency-Key` was first used for another request.
    #[error("this Idempotency-Key was used for a different request; use a new key for a new request")]
    KeyReused,
    /// The turn's user or session was erased while it ran; nothing of it is stored.
    #[error("the conversation was deleted while the turn ran")]
    Erased,
    /// The turn's events are past `TURN_EVENTS_TTL_HOURS`.
    #[error("this turn's events are past their retention (TURN_EVENTS_TTL_HOURS)")]
    Gone,
    /// The turn has ended (with this status), so it cannot be cancelled.
    #[error("the turn has already ended with status {}", .0.as_str())]
    Ended(TurnStatus),
    /// The tenant has no agent with this id.
    #[error("this tenant has no agent {0}")]
    AgentNotFound(crate::ids::AgentId),
    /// The session started with another agent.
    #[error("this session runs as agent {0}; start a new session for another agent")]
    AgentMismatch(crate::ids::AgentId),
    /// The session has a running turn, and this one asked to be refused then (`reject`).
    #[error("the session has a running turn ({0}); retry when it ends")]
    TurnInProgress(MessageId),
    /// A budget of the tenant or the user is used up: the turn was refused before the model.
    #[error("the {} budget is used up (it resets at {})", if .0.which == crate::usage::budgets::Which::Monthly { "tenant's monthly" } else { "user's daily" }, .0.resets_at)]
    BudgetExceeded(Box<crate::usage::BudgetExceeded>),
    /// The turn that was to answer this queued message failed.
    #[error("the turn that answered this message failed: {}", .0.message)]
    AnsweredWith(crate::store::TurnFailure),
}

impl From<crate::agents::directory::PickError> for TurnError {
    fn from(e: crate::agents::directory::PickError) -> Self {
        use crate::agents::directory::PickError;
        match e {
            PickError::NotFound(id) => TurnError::AgentNotFound(id),
            PickError::Mismatch { session_agent } => TurnError::AgentMismatch(session_agent),
            PickError::Store(e) => TurnError::Store(e),
        }
    }
}

impl TurnError {
    /// The error's code in API answers and turn events.
    pub fn code(&self) -> &'static str {
        match self {
            TurnError::Store(e) => e.code(),
            TurnError::Model(ModelError::Failed(_)) => "model_provider_error",
            TurnError::Model(ModelError::Timeout(_)) => "model_timeout",
            TurnError::InProgress(_) => "idempotency_in_progress",
            TurnError::KeyReused => "idempotency_key_reused",
            TurnError::Erased => "erased",
            TurnError::Gone => "gone",
            TurnError::Ended(_) => "turn_ended",
            TurnError::AgentNotFound(_) => "agent_not_found",
            TurnError::AgentMismatch(_) => "agent_mismatch",
            TurnError::TurnInProgress(_) => "turn_in_progress",
            TurnError::BudgetExceeded(_) => "budget_exceeded",
            TurnError::AnsweredWith(failure) => match failure.code.as_str() {
                "model_timeout" => "model_timeout",
                "erased" => "erased",
                _ => "model_provider_error",
            },
        }
    }

    /// What a client may be told (internal details stay in the log).
    pub fn public_message(&self) -> String {
        match self {
            TurnError::Store(e) => e.public_message(),
            TurnError::Model(e @ ModelError::Timeout(_)) => format!("{e} (LLM_TIMEOUT_SECONDS)"),
            other => other.to_string(),
        }
    }

    /// The `error` event of a turn that failed.
    pub fn event_data(&self) -> Value {
        serde_json::json!({"error": {"code": self.code(), "message": self.public_message()}})
    }
}

/// Why a running turn was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `POST .../turns/{turnId}/cancel`.
    Cancelled,
    /// Its client went away and asked for `onDisconnect: cancel`.
    ClientGone,
    /// The server's shutdown deadline passed.
    Shutdown,
    /// Its user or session is being erased: nothing more is stored.
    Erased,
    /// Another server took it for dead (its lease lapsed) and settled it as interrupted: that is
    /// its one result, and this server stores and announces nothing more.
    SettledElsewhere,
    /// A newer message of its session took the session over (`concurrency: interrupt`).
    Superseded,
}

impl StopReason {
    /// The `metadata.interrupted` of the partial reply, and the turn's status.
    pub fn marks(self) -> (&'static str, TurnStatus) {
        match self {
            StopReason::Cancelled => ("cancelled", TurnStatus::Cancelled),
            StopReason::ClientGone => ("client_disconnected", TurnStatus::Interrupted),
            StopReason::Shutdown => ("shutdown", TurnStatus::Interrupted),
            StopReason::Erased => ("erased", TurnStatus::Cancelled),
            StopReason::SettledElsewhere => ("server_stopped", TurnStatus::Interrupted),
            StopReason::Superseded => ("superseded", TurnStatus::Interrupted),
        }
    }
}
