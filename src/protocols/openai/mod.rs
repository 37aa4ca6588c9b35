//! OpenAI's Responses and Conversations APIs (a compatible subset, docs/openai-compatibility.md),
//! over the same turns: the official `openai` SDKs pointed at the server (`base_url` =
//! `<server>/v1`) work unchanged for what is listed there.
//!
//! Ids map 1:1 onto ours: a conversation is a session (`conv_<sessionId>`), a response is a turn
//! (`resp_<turnId>`), an item is a message (`msg_<messageId>`).
//!
//! `conversations`: the Conversations API; `responses`: the Responses API's routes; `view`: a
//! response object; `stream`: a turn's events as the Responses API's streaming events.

mod conversations;
mod responses;
mod stream;
mod view;

use axum::http::StatusCode;

use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;

use crate::http::extract::TurnIdentity;
use crate::http::{ApiError, AppState};
use crate::ids::{MessageId, SessionId};
use crate::store::{Message, Role};

pub fn router() -> OpenApiRouter<AppState> {
    conversations::router().merge(responses::router())
}

/// OpenAI's error body for one of our errors (also what the server's own errors on `/v1/` paths,
/// such as a refused credential or an unknown route, become).
pub fn error_body(e: &ApiError) -> Value {
    let kind = match e.status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let param = e.details.as_ref().and_then(|d| d.get("field")).cloned().unwrap_or(Value::Null);
    json!({"error": {"message": e.message, "type": kind, "param": param, "code": e.code}})
}

/// Handlers answer our own errors: the request-context middleware renders every error under
/// `/v1/` in OpenAI's shape (`error_body`), so a handler's and the server's own refusals agree.
type Result<T> = std::result::Result<T, ApiError>;

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message).with("field", json!(param))
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with id {id}"))
}

/// OpenAI's rule for `metadata` (at most 16 pairs), and ours for any JSON a client stores.
fn check_metadata(metadata: &Option<Map<String, Value>>) -> Result<()> {
    if metadata.as_ref().is_some_and(|m| m.len() > 16) {
        return Err(bad("metadata", "metadata has at most 16 keys"));
    }
    crate::http::check_json("metadata", metadata).map_err(|e| e.with("field", json!("metadata")))
}

fn conv_id(session: &SessionId) -> String {
    format!("conv_{session}")
}

fn session_of(id: &str) -> Result<SessionId> {
    let raw = id.strip_prefix("conv_").ok_or_else(|| bad("conversation", "a conversation id starts with conv_"))?;
    SessionId::parse(raw).map_err(|e| bad("conversation", format!("conversation: {e}")))
}

fn turn_of(id: &str) -> Result<MessageId> {
    let raw = id.strip_prefix("resp_").ok_or_else(|| bad("response_id", "a response id starts with resp_"))?;
    MessageId::parse(raw).map_err(|e| bad("response_id", format!("response_id: {e}")))
}

fn seconds(ts: &crate::timestamp::Timestamp) -> i64 {
    ts.micros().unwrap_or_default() / 1_000_000
}

/// The conversation a user may see: the session, if it is theirs.
async fn conversation(state: &AppState, who: &TurnIdentity, id: &str) -> Result<crate::store::Session> {
    let session = session_of(id)?;
    let found = state.store.get_session(&who.tenant, &session).await?;
    found.filter(|s| s.user_id == who.user).ok_or_else(|| not_found("conversation", id))
}

fn conversation_view(s: &crate::store::Session) -> Value {
    let metadata = s.metadata.as_ref().and_then(|m| m.get("openai")).cloned().unwrap_or_else(|| json!({}));
    json!({"id": conv_id(&s.id), "object": "conversation", "created_at": seconds(&s.created_at), "metadata": metadata})
}

/// A stored message as a conversation's `message` item.
fn item(m: &Message) -> Value {
    let (role, part) = match m.role {
        Role::User => ("user", "input_text"),
        Role::Agent => ("assistant", "output_text"),
    };
    let mut content = json!({"type": part, "text": m.content});
    if m.role == Role::Agent {
        content["annotations"] = json!([]);
    }
    json!({"type": "message", "id": format!("msg_{}", m.id), "status": "completed", "role": role, "content": [content]})
}

/// A stored message as conversation items: an agent message's actions first (each a
/// `function_call` and its `function_call_output`, or an `mcp_approval_request` while it waits),
/// then the message.
fn items_of(m: &Message) -> Vec<Value> {
    let mut items = Vec::new();
    for a in crate::agent::Agent::proposed_actions(m) {
        let id = a["id"].as_str().unwrap_or_default();
        if a["status"] == "pending_approval" {
            items.push(approval_request(a));
            continue;
        }
        items.push(json!({
            "type": "function_call", "id": format!("fc_{id}"), "call_id": id, "name": a["tool"],
            "arguments": a["arguments"].to_string(), "status": "completed",
        }));
        let output = match action_error(a) {
            Some(error) => json!({"error": error}).to_string(),
            None => a["result"].as_str().unwrap_or("null").to_string(),
        };
        items.push(
            json!({"type": "function_call_output", "id": format!("fco_{id}"), "call_id": id, "output": output, "status": "completed"}),
        );
    }
    items.push(item(m));
    items
}

/// Why an action did not answer (`None` when it ran and answered).
fn action_error(a: &Value) -> Option<String> {
    let reason = a["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
    match a["status"].as_str() {
        Some("done") => None,
        Some("rejected") => Some(format!("rejected by the user{reason}")),
        Some("refused") => Some("the agent may not use this tool".into()),
        Some("approved") => Some("approved; its result was not recorded".into()),
        _ => Some(format!("failed: {}", a["result"].as_str().unwrap_or("no result"))),
    }
}

/// An action waiting for approval, as an `mcp_approval_request` output item.
fn approval_request(a: &Value) -> Value {
    json!({
        "type": "mcp_approval_request", "id": a["id"], "server_label": "agent-server",
        "name": a["tool"], "arguments": a["arguments"].to_string(),
    })
}

/// An action of a response: waiting for approval, or run (or refused) by the server, as an
/// `mcp_call` output item (a call the server made, not one the client must run).
fn action_output(a: &Value) -> Value {
    if a["status"] == "pending_approval" {
        return approval_request(a);
    }
    let error = action_error(a);
    let output = if error.is_none() { a["result"].clone() } else { Value::Null };
    let mut call = json!({
        "type": "mcp_call", "id": a["id"], "server_label": "agent-server", "name": a["tool"],
        "arguments": a["arguments"].to_string(), "output": output,
        "status": if error.is_none() { "completed" } else { "failed" }, "error": error,
    });
    if a["approved"] == true || a["status"] == "rejected" {
        call["approval_request_id"] = a["id"].clone();
    }
    call
}

/// The text of input items (a string, or `message` items' text parts), the newest user one.
fn input_text(input: &Value) -> Option<String> {
    if let Some(text) = input.as_str() {
        return Some(text.to_string());
    }
    let items = input.as_array()?;
    let message =
        items.iter().rev().find(|i| i["role"] == "user" && i["type"].as_str().is_none_or(|t| t == "message"))?;
    match &message["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("")),
        _ => None,
    }
}
