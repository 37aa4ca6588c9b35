//! A turn's messages: their ids, the metadata that records the turn in them, and the outcome read
//! back from them.

use std::time::Instant;

use serde_json::{Map, Value, json};

use super::thinking::Thought;
use super::turn::{TurnOutcome, TurnRequest};
use crate::ids::{IdempotencyKey, MessageId, SessionId, TenantId, UserId};
use crate::store::{Message, NewMessage, Role, TurnStatus};

fn derived(name: &str) -> MessageId {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string();
    MessageId::parse(id).expect("a UUID is a valid id")
}

/// A new turn's id, which is also its user message's id: derived from the tenant, the user and the
/// `Idempotency-Key` when there is one (so a retry finds the first attempt), fresh otherwise.
pub(super) fn turn_id(tenant: &TenantId, user: &UserId, key: Option<&IdempotencyKey>) -> MessageId {
    match key {
        Some(key) => derived(&format!("turn\n{}\n{}\n{}", tenant.as_str(), user.as_str(), key.as_str())),
        None => MessageId::generate(),
    }
}

/// The id of a turn's agent message, derived from the turn's id.
pub(super) fn agent_message_id(turn: &MessageId) -> MessageId {
    derived(&format!("agent\n{}", turn.as_str()))
}

/// The id of the agent message that follows a decision on an action, derived from the action's id
/// (so a retried decision finds it).
pub(super) fn follow_up_id(action_id: &str) -> MessageId {
    derived(&format!("follow-up\n{action_id}"))
}

/// What binds an `Idempotency-Key` to its request: the message, the session and the context.
pub(super) fn request_hash(req: &TurnRequest) -> String {
    let mut request = json!({
        "message": req.message,
        "sessionId": req.session_id.as_ref().map(SessionId::as_str),
        "context": req.context,
    });
    if let Some(agent) = &req.agent {
        request["agentId"] = json!(agent);
    }
    derived(&request.to_string()).as_str().to_string()
}

/// The user message of a turn: the client's metadata, with the turn's id (and request hash).
pub(super) fn user_message(req: &TurnRequest, turn: &MessageId, hash: Option<&str>) -> NewMessage {
    let mut metadata = req.metadata.clone().unwrap_or_default();
    metadata.insert("turnId".into(), json!(turn));
    if let Some(hash) = hash {
        metadata.insert("requestHash".into(), json!(hash));
    }
    NewMessage {
        id: turn.clone(),
        user_id: req.user.clone(),
        role: Role::User,
        content: req.message.clone(),
        metadata: Some(metadata),
        counted: None,
    }
}

/// The agent message of a turn: the reply with the model, usage, latency, tool calls and the turn's
/// id and status; `interrupted` says why a partial reply stopped.
pub(super) fn agent_message(
    user: &UserId,
    id: MessageId,
    turn: &MessageId,
    status: TurnStatus,
    thought: &Thought,
    started: Instant,
    interrupted: Option<&str>,
) -> NewMessage {
    let reply = &thought.reply;
    let mut metadata = Map::new();
    metadata.insert("turnId".into(), json!(turn));
    metadata.insert("turnStatus".into(), json!(status));
    if !reply.model.is_empty() {
        metadata.insert("model".into(), json!(reply.model));
    }
    if let Some(u) = reply.usage {
        let mut usage = json!({"inputTokens": u.input_tokens, "outputTokens": u.output_tokens});
        if thought.model_calls > 0 {
            usage["modelCalls"] = json!(thought.model_calls);
        }
        metadata.insert("usage".into(), usage);
    }
    metadata.insert("latencyMs".into(), json!(started.elapsed().as_millis() as u64));
    if !thought.actions.is_empty() {
        metadata.insert("actions".into(), Value::Array(thought.actions.iter().map(|a| a.to_json()).collect()));
    }
    if let Some(why) = interrupted {
        metadata.insert("interrupted".into(), json!(why));
    }
    NewMessage {
        id,
        user_id: user.clone(),
        role: Role::Agent,
        content: reply.text.clone(),
        metadata: Some(metadata),
        counted: None,
    }
}

/// The tenant's agent named in a session's or a reply's metadata (`agentId`).
pub(super) fn agent_in(metadata: Option<&crate::store::Metadata>) -> Option<crate::ids::AgentId> {
    crate::ids::AgentId::parse(metadata?.get("agentId")?.as_str()?).ok()
}

/// Records the tenant's agent (and its version) a reply was written as.
pub(super) fn mark_persona(message: &mut NewMessage, persona: &crate::agents::directory::Persona) {
    if let (Some((id, version)), Some(metadata)) = (&persona.agent, message.metadata.as_mut()) {
        metadata.insert("agentId".into(), json!(id));
        metadata.insert("agentVersion".into(), json!(version));
    }
}

/// The status a stored agent message records for its turn (messages from before turns had a
/// status count as completed, or as interrupted when they were).
pub(super) fn recorded_status(agent: &Message) -> TurnStatus {
    let metadata = agent.metadata.as_ref();
    let stored = metadata.and_then(|m| m.get("turnStatus")).and_then(Value::as_str).and_then(TurnStatus::parse);
    match stored {
        Some(status) => status,
        None if metadata.is_some_and(|m| m.contains_key("interrupted")) => TurnStatus::Interrupted,
        None => TurnStatus::Completed,
    }
}

/// A turn read back from its stored messages. A turn that waited for approval counts as completed
/// once every action is decided.
pub(super) fn outcome(turn_id: MessageId, user_message: Option<Message>, agent_message: Message) -> TurnOutcome {
    let mut outcome = TurnOutcome {
        turn_id,
        status: recorded_status(&agent_message),
        session_id: agent_message.session_id.clone(),
        user_message,
        answers: answered_in(&agent_message),
        agent_message,
        answered_by: None,
    };
    if outcome.status == TurnStatus::AwaitingApproval && !outcome.awaits_approval() {
        outcome.status = TurnStatus::Completed;
    }
    outcome
}

/// The queued turns a reply answered (`metadata.answers`), oldest first.
pub(super) fn answered_in(agent: &Message) -> Vec<MessageId> {
    let answers = agent.metadata.as_ref().and_then(|m| m.get("answers")).and_then(serde_json::Value::as_array);
    answers
        .map(|ids| ids.iter().filter_map(|v| v.as_str()).filter_map(|id| MessageId::parse(id).ok()).collect())
        .unwrap_or_default()
}
