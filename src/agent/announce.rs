//! What the agent tells the world: the change events of turns, decisions and sessions
//! (`crate::events`), recorded before the change is answered.

use serde_json::{Value, json};

use super::Agent;
use super::turn::{TurnError, TurnOutcome};
use crate::events::{Change, EventType};
use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};
use crate::store::{Action, ActionStatus, Session, StoreError, TurnStatus};

/// Who and where a turn was: the ids every turn event carries.
pub(super) struct TurnPlace<'a> {
    pub tenant: &'a TenantId,
    pub user: &'a UserId,
    pub location: Option<&'a LocationId>,
    pub turn: &'a MessageId,
    pub session: Option<SessionId>,
}

fn ids(place: &TurnPlace<'_>) -> serde_json::Map<String, Value> {
    let mut data = serde_json::Map::new();
    data.insert("turnId".into(), json!(place.turn));
    data.insert("sessionId".into(), json!(place.session));
    data.insert("userId".into(), json!(place.user));
    if let Some(location) = place.location {
        data.insert("locationId".into(), json!(location));
    }
    data
}

/// The data of an action event: the turn's ids, the message holding the action, and the action.
pub(super) fn action_data(base: &serde_json::Map<String, Value>, message: &MessageId, action: &Action) -> Value {
    let mut data = base.clone();
    data.insert("messageId".into(), json!(message));
    data.insert("actionId".into(), json!(action.id));
    data.insert("tool".into(), json!(action.tool));
    data.insert("arguments".into(), action.arguments.clone());
    if matches!(action.status, ActionStatus::Done | ActionStatus::Failed) {
        data.insert("success".into(), json!(action.status == ActionStatus::Done));
    }
    if let Some(reason) = &action.reason {
        data.insert("reason".into(), json!(reason));
    }
    Value::Object(data)
}

impl Agent {
    /// The events of a turn that ended: its ending, and its actions (waiting for approval, or run).
    /// `decided` is an action whose decision was announced already (a follow-up turn's first).
    pub(super) async fn announce_turn(
        &self,
        place: TurnPlace<'_>,
        result: Result<&TurnOutcome, &TurnError>,
        decided: Option<&str>,
    ) {
        if !self.events.is_on() {
            return;
        }
        let mut changes = Vec::new();
        let user = Some(place.user);
        match result {
            Ok(outcome) => {
                let place = TurnPlace { session: Some(outcome.session_id.clone()), ..place };
                let base = ids(&place);
                let mut data = base.clone();
                let agent = &outcome.agent_message;
                data.insert("messageId".into(), json!(agent.id));
                data.insert("userMessageId".into(), json!(outcome.user_message.as_ref().map(|m| &m.id)));
                data.insert("status".into(), json!(outcome.status));
                data.insert("text".into(), json!(agent.content));
                if !outcome.answers.is_empty() {
                    // A turn that answered queued messages: every user message it answered.
                    data.insert("answeredMessageIds".into(), json!(outcome.answers));
                }
                if self.events.full_payload() {
                    data.insert("userMessage".into(), json!(outcome.user_message));
                    data.insert("agentMessage".into(), json!(agent));
                }
                let kind = match outcome.status {
                    TurnStatus::Interrupted => EventType::TurnInterrupted,
                    TurnStatus::Cancelled => EventType::TurnCancelled,
                    _ => EventType::TurnCompleted,
                };
                for action in Action::all_in(agent.metadata.as_ref()) {
                    if decided == Some(action.id.as_str()) {
                        continue;
                    }
                    let kind = match action.status {
                        ActionStatus::PendingApproval => EventType::ActionApprovalRequired,
                        ActionStatus::Done | ActionStatus::Failed => EventType::ActionExecuted,
                        _ => continue,
                    };
                    changes.push(Change::new(kind, user, action_data(&base, &agent.id, &action)));
                }
                changes.insert(0, Change::new(kind, user, Value::Object(data)));
            }
            // Only a turn that ran and failed is `turn.failed`: a refused request (no such session, a
            // closed one, a key in use or reused) changed nothing, and an erased turn is announced by
            // `user.erased` or `session.deleted`.
            Err(
                TurnError::Erased
                | TurnError::InProgress(_)
                | TurnError::KeyReused
                | TurnError::Gone
                | TurnError::Ended(_)
                | TurnError::TurnInProgress(_)
                | TurnError::BudgetExceeded(_)
                | TurnError::AgentNotFound(_)
                | TurnError::AgentMismatch(_)
                | TurnError::Store(StoreError::Conflict(_) | StoreError::NotFound(_) | StoreError::Invalid(_)),
            ) => return,
            Err(e) => {
                let mut data = ids(&place);
                data.insert("error".into(), json!({"code": e.code(), "message": e.public_message()}));
                changes.push(Change::new(EventType::TurnFailed, user, Value::Object(data)));
            }
        }
        self.events.record(place.tenant, changes).await;
    }

    /// `turn.queued`: a message waits for its session's running turn.
    pub(super) async fn announce_queued(&self, place: TurnPlace<'_>, message: &crate::store::Message) {
        let mut data = ids(&place);
        data.insert("userMessageId".into(), json!(message.id));
        if self.events.full_payload() {
            data.insert("userMessage".into(), json!(message));
        }
        let change = Change::new(EventType::TurnQueued, Some(place.user), Value::Object(data));
        self.events.record(place.tenant, vec![change]).await;
    }

    /// `session.created` (and `session.closed` for the user's session it replaced).
    pub(super) async fn announce_session_start(&self, session: &Session, closed: Option<&Session>) {
        let mut changes = Vec::new();
        if let Some(closed) = closed {
            changes.push(session_change(EventType::SessionClosed, closed));
        }
        changes.push(session_change(EventType::SessionCreated, session));
        self.events.record(&session.tenant_id, changes).await;
    }

    /// `session.created`, for a session a client protocol opened (an OpenAI conversation, an AI
    /// SDK chat).
    pub async fn announce_session_created(&self, session: &Session) {
        self.announce_session_start(session, None).await;
    }

    /// `session.closed`, for a session that was active.
    pub async fn announce_session_closed(&self, session: &Session) {
        self.events.record(&session.tenant_id, vec![session_change(EventType::SessionClosed, session)]).await;
    }
}

pub(super) fn session_change(kind: EventType, session: &Session) -> Change {
    let mut data = json!({"sessionId": session.id, "userId": session.user_id});
    if let Some(location) = &session.location_id {
        data["locationId"] = json!(location);
    }
    Change::new(kind, Some(&session.user_id), data)
}
