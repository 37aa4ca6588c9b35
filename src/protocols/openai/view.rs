//! A response as the Responses API shows it: from a turn's answer, or from what is stored now.

use serde_json::{Value, json};

use super::{Result, action_output, conv_id, not_found, seconds, turn_of};
use crate::agent::TurnAnswer;
use axum::http::HeaderMap;

use crate::http::AppState;
use crate::http::extract::{Scope, TurnIdentity, identity_of};
use crate::ids::MessageId;
use crate::store::{Message, Role, TurnStatus};

/// The response object of a finished turn, from its answer (`TurnAnswer`'s JSON).
pub(super) fn response_view(answer: &Value, model: &str) -> Value {
    let m = &answer["agentMessage"];
    let mut output: Vec<Value> = answer["actions"].as_array().into_iter().flatten().map(action_output).collect();
    let text = m["content"].as_str().unwrap_or_default();
    output.push(json!({
        "type": "message", "id": format!("msg_{}", m["id"].as_str().unwrap_or_default()), "status": "completed",
        "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}],
    }));
    let usage = &m["metadata"]["usage"];
    let (input, output_tokens) =
        (usage["inputTokens"].as_u64().unwrap_or(0), usage["outputTokens"].as_u64().unwrap_or(0));
    let status = match answer["status"].as_str() {
        Some("completed" | "awaiting_approval") => "completed",
        Some("cancelled") => "cancelled",
        Some("interrupted") => "incomplete",
        Some("failed") => "failed",
        _ => "in_progress",
    };
    let created = m["timestamp"].as_str().and_then(crate::timestamp::parse_micros).map_or(0, |t| t / 1_000_000);
    json!({
        "id": format!("resp_{}", answer["turnId"].as_str().unwrap_or_default()),
        "object": "response",
        "created_at": created,
        "status": status,
        "model": m["metadata"]["model"].as_str().unwrap_or(model),
        "output": output,
        "output_text": text,
        "parallel_tool_calls": false,
        "tool_choice": "auto",
        "tools": [],
        "conversation": {"id": format!("conv_{}", answer["sessionId"].as_str().unwrap_or_default())},
        "usage": {
            "input_tokens": input, "output_tokens": output_tokens, "total_tokens": input + output_tokens,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0},
        },
        "error": null,
        "incomplete_details": null,
        "metadata": client_metadata(answer["userMessage"]["metadata"].as_object()),
    })
}

pub(super) fn answer_json(outcome: crate::agent::TurnOutcome) -> Value {
    serde_json::to_value(TurnAnswer::from(outcome)).unwrap_or_default()
}

/// A response of the caller, read once: who asks (the user the request names, else, for a
/// tenant-wide credential, the response's own user: one made with only `safety_identifier`, which
/// a retrieve cannot send), its turn, and the message it starts from (a turn's user message, or the
/// follow-up agent message of an approval decision).
pub(super) async fn response_of(
    state: &AppState,
    scope: &Scope,
    headers: &HeaderMap,
    id: &str,
) -> Result<(TurnIdentity, MessageId, Message)> {
    let turn = turn_of(id)?;
    let named = scope.bound_user().is_some() || headers.contains_key("x-user-id");
    let asking = identity_of(scope, headers, if named { None } else { Some("anyone") })?;
    let found = state.store.get_message(&asking.tenant, &turn).await?;
    // An agent message is a response only when it is a follow-up (its id is its decision's).
    let found = found.filter(|m| m.role == Role::User || crate::agent::Agent::is_follow_up(m));
    let found = found.filter(|m| !named || m.user_id == asking.user).ok_or_else(|| not_found("response", id))?;
    let who = if named { asking } else { identity_of(scope, headers, Some(found.user_id.as_str()))? };
    Ok((who, turn, found))
}

/// A response as it is now: from the turn's view, and its stored reply once there is one.
pub(super) async fn response_now(
    state: &AppState,
    who: &TurnIdentity,
    id: &str,
    turn: MessageId,
    user: Message,
) -> Result<Value> {
    if user.role == Role::Agent {
        // A follow-up: it is stored once it has finished.
        let status = crate::agent::Agent::recorded_status(&user);
        return Ok(response_view(&answer_json(outcome_of(turn, status, None, user)), "agent-server"));
    }
    let view = state.agent.turn(&who.tenant, &user.session_id, &turn, Some(&who.user)).await?;
    let running = matches!(view.status, TurnStatus::Running | TurnStatus::Queued);
    // A queued message's reply is the reply of the turn that answered it.
    let answerer = view.answered_by.as_ref().unwrap_or(&turn);
    let reply = match view.agent_message_id {
        Some(reply) => Some(reply),
        None => (!running).then(|| crate::agent::Agent::reply_id_of(answerer)),
    };
    let reply = match reply {
        Some(reply) if !running => state.store.get_message(&who.tenant, &reply).await?,
        _ => None,
    };
    let Some(reply) = reply else {
        let status = match view.status {
            TurnStatus::Running | TurnStatus::Queued => "in_progress",
            TurnStatus::Cancelled => "cancelled",
            _ => "failed",
        };
        return Ok(json!({
            "id": id, "object": "response", "created_at": seconds(&user.timestamp), "status": status,
            "model": "agent-server", "output": [], "parallel_tool_calls": false, "tool_choice": "auto", "tools": [],
            "conversation": {"id": conv_id(&user.session_id)}, "error": null, "incomplete_details": null,
            "metadata": client_metadata(user.metadata.as_ref()),
        }));
    };
    Ok(response_view(&answer_json(outcome_of(turn, view.status, Some(user), reply)), "agent-server"))
}

fn outcome_of(turn: MessageId, status: TurnStatus, user: Option<Message>, reply: Message) -> crate::agent::TurnOutcome {
    crate::agent::TurnOutcome {
        turn_id: turn,
        status,
        session_id: reply.session_id.clone(),
        user_message: user,
        agent_message: reply,
        answered_by: None,
        answers: Vec::new(),
    }
}

/// The metadata a client gave its input, without what the server adds (`turnId`).
fn client_metadata(metadata: Option<&serde_json::Map<String, Value>>) -> Value {
    let mut m = metadata.cloned().unwrap_or_default();
    m.remove("turnId");
    Value::Object(m)
}
