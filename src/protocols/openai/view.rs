//! A response as the Responses API shows it: from a turn's answer, or from what is stored now.

use serde_json::{Value, json};

use super::{Result, action_output, conv_id, not_found, seconds, turn_of};
use crate::agent::TurnAnswer;
use crate::http::AppState;
use crate::http::extract::TurnIdentity;
use crate::ids::MessageId;
use crate::store::{Message, Role};

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

/// The turn of a response id and the message it starts from, if the caller's user's: a turn's
/// user message, or (the response to an approval decision) the follow-up agent message.
pub(super) async fn response_turn(state: &AppState, who: &TurnIdentity, id: &str) -> Result<(MessageId, Message)> {
    let turn = turn_of(id)?;
    let found = state.store.get_message(&who.tenant, &turn).await?;
    // An agent message is a response only when it is a follow-up (its id is its decision's).
    let found =
        found.filter(|m| m.user_id == who.user && (m.role == Role::User || crate::agent::Agent::is_follow_up(m)));
    Ok((turn, found.ok_or_else(|| not_found("response", id))?))
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
        let status = user.metadata.as_ref().and_then(|m| m.get("turnStatus")).cloned();
        let outcome = outcome_of(turn, status, None, user);
        return Ok(response_view(&answer_json(outcome), "agent-server"));
    }
    let view = state.agent.turn(&who.tenant, &user.session_id, &turn, Some(&who.user)).await?;
    let view = serde_json::to_value(&view).unwrap_or_default();
    let status = view["status"].as_str().unwrap_or("running").to_string();
    // A queued message's reply is the reply of the turn that answered it.
    let answerer = view["answeredBy"].as_str().and_then(|t| MessageId::parse(t).ok()).unwrap_or_else(|| turn.clone());
    let reply = match view["agentMessageId"].as_str().and_then(|r| MessageId::parse(r).ok()) {
        Some(reply) => Some(reply),
        None => (status != "running").then(|| crate::agent::Agent::reply_id_of(&answerer)),
    };
    let reply = match reply {
        Some(reply) => state.store.get_message(&who.tenant, &reply).await?,
        None => None,
    };
    let Some(reply) = reply.filter(|_| status != "running" && status != "queued") else {
        let status = match status.as_str() {
            "running" | "queued" => "in_progress",
            "cancelled" => "cancelled",
            _ => "failed",
        };
        return Ok(json!({
            "id": id, "object": "response", "created_at": seconds(&user.timestamp), "status": status,
            "model": "agent-server", "output": [], "parallel_tool_calls": false, "tool_choice": "auto", "tools": [],
            "conversation": {"id": conv_id(&user.session_id)}, "error": null, "incomplete_details": null,
            "metadata": client_metadata(user.metadata.as_ref()),
        }));
    };
    let outcome = outcome_of(turn, Some(json!(status)), Some(user), reply);
    Ok(response_view(&answer_json(outcome), "agent-server"))
}

fn outcome_of(
    turn: MessageId,
    status: Option<Value>,
    user: Option<Message>,
    reply: Message,
) -> crate::agent::TurnOutcome {
    crate::agent::TurnOutcome {
        turn_id: turn,
        status: status.and_then(|s| serde_json::from_value(s).ok()).unwrap_or(crate::store::TurnStatus::Completed),
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
