//! The Vercel AI SDK's UI message stream (protocol v1), over the same turns: `useChat` (and
//! `AbstractChat` with `DefaultChatTransport`) pointed at `/agent/ui/chat` works unchanged.
//!
//! - `POST /agent/ui/chat`: the SDK's body (`id` is the session, `messages`, `trigger`); the server
//!   keeps the history, so it takes the newest user message and runs a streamed turn on the session
//!   `id` (a new id starts a session: the SDK makes up its own chat ids); an assistant message whose
//!   tool parts carry an approval response decides those actions instead. The answer is the SSE
//!   stream of UI chunks (`start`, `start-step`, `text-start`/`-delta`/`-end`,
//!   `tool-input-available`, `tool-output-available`, `tool-approval-request`, `finish-step`,
//!   `finish`, or `error`), then `data: [DONE]`, with `x-vercel-ai-ui-message-stream: v1`.
//! - `GET /agent/ui/chat/{id}/stream` resumes the session's running turn here (204 when none);
//!   `POST /agent/ui/chat/{id}/stop` cancels it; `GET /agent/ui/chat/{id}/messages` is the stored
//!   history as `UIMessage`s.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;

mod stream;

use stream::{action_error, answered, respond};

use crate::agent::{OnDisconnect, TurnRequest};
use crate::http::extract::TurnIdentity;
use crate::http::{ApiError, AppState};
use crate::ids::SessionId;
use crate::store::{Message, MessageQuery, Order, Role};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(chat))
        .routes(utoipa_axum::routes!(resume))
        .routes(utoipa_axum::routes!(stop))
        .routes(utoipa_axum::routes!(history))
}

/// The SDK's request body (fields it sends that the server does not need are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    /// The chat's id: the session.
    id: String,
    /// The chat's messages (`UIMessage`s); the server keeps the history, so only the newest count.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<Value>,
    /// `submit-message` or `regenerate-message`.
    #[serde(default)]
    trigger: Option<String>,
}

fn session_id(id: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(id).map_err(|e| ApiError::bad_request("invalid_body", format!("id: {e}")))
}

/// The text of a UI message's text parts.
fn text_of(message: &Value) -> String {
    message["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "text")
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join("")
}

/// The approval responses in an assistant message's tool parts: (action id, approved, reason).
fn approvals_of(message: &Value) -> Vec<(String, bool, Option<String>)> {
    message["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "approval-responded")
        .filter_map(|p| {
            let approval = &p["approval"];
            let id = approval["id"].as_str().or(p["toolCallId"].as_str())?.to_string();
            Some((id, approval["approved"].as_bool()?, approval["reason"].as_str().map(str::to_string)))
        })
        .collect()
}

/// Runs the newest user message as a streamed turn of the session `id` (or decides the actions
/// the newest assistant message approves or rejects), answered as a UI message stream.
#[utoipa::path(
    post,
    path = "/agent/ui/chat",
    tag = "agent",
    request_body = ChatRequest,
    responses((status = 200, description = "The UI message stream (SSE, x-vercel-ai-ui-message-stream: v1)"))
)]
async fn chat(
    State(state): State<AppState>,
    identity: TurnIdentity,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let session = session_id(&body.id)?;
    let last = body.messages.last().ok_or_else(|| ApiError::bad_request("invalid_body", "messages: empty"))?;
    if last["role"] == "assistant" {
        let decisions = approvals_of(last);
        if decisions.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the newest message is the assistant's, with no approval response",
            ));
        }
        // The slot first: a refusal leaves nothing decided.
        let slot = crate::http::sse::slot(&state.streams)?;
        let mut answers = Vec::new();
        for (action, approve, reason) in decisions {
            let o = state.agent.decide(&identity.tenant, &session, Some(&identity.user), &action, approve, reason);
            let message = o.await?.agent_message;
            answers.push((action, message));
        }
        return Ok(answered(&answers, slot));
    }
    let message = body
        .messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(text_of)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_body", "messages: no user message with text"))?;
    if body.trigger.as_deref().is_some_and(|t| t != "submit-message" && t != "regenerate-message") {
        return Err(ApiError::bad_request("invalid_body", "trigger: one of submit-message, regenerate-message"));
    }
    if message.chars().count() > state.max_message_chars {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_long",
            "the message is too long (MAX_MESSAGE_CHARS)",
        ));
    }
    // The slot first: a refusal leaves nothing stored.
    let slot = crate::http::sse::slot(&state.streams)?;
    crate::protocols::open_session(
        &state.agent,
        &identity.tenant,
        &identity.user,
        identity.location.as_ref(),
        &session,
    )
    .await?;
    let turn = TurnRequest {
        tenant: identity.tenant,
        user: identity.user,
        location: identity.location,
        message,
        session_id: Some(session),
        context: None,
        metadata: None,
        idempotency_key: None,
        on_disconnect: OnDisconnect::Continue,
        stream: true,
        agent: None,
        concurrency: None,
        session_metadata: None,
        instructions: None,
    };
    let events = state.agent.start(turn).await?.into_events().await?;
    Ok(respond(events, slot))
}

/// Resumes the session's running turn (on this server) as a UI message stream; 204 when none runs.
#[utoipa::path(
    get,
    path = "/agent/ui/chat/{id}/stream",
    tag = "agent",
    params(("id" = String, Path)),
    responses((status = 200, description = "The UI message stream"), (status = 204, description = "No turn runs in this chat"))
)]
async fn resume(
    State(state): State<AppState>,
    identity: TurnIdentity,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let session = session_id(&id)?;
    match state.agent.running_in(&identity.tenant, &session).filter(|l| l.user == identity.user) {
        Some(live) => Ok(respond(live.follow(0).boxed(), crate::http::sse::slot(&state.streams)?)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Stops the session's running turn (its partial reply is stored, marked `cancelled`); 204.
#[utoipa::path(
    post,
    path = "/agent/ui/chat/{id}/stop",
    tag = "agent",
    params(("id" = String, Path)),
    responses((status = 204, description = "Stopped, or nothing ran"))
)]
async fn stop(
    State(state): State<AppState>,
    identity: TurnIdentity,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session = session_id(&id)?;
    if let Some(live) = state.agent.running_in(&identity.tenant, &session).filter(|l| l.user == identity.user) {
        state.agent.cancel(&identity.tenant, &session, &live.turn_id, Some(&identity.user)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The chat's stored messages as `UIMessage`s (`user` / `assistant`, text and tool parts), oldest
/// first, so a page can load a conversation.
#[utoipa::path(
    get,
    path = "/agent/ui/chat/{id}/messages",
    tag = "agent",
    params(("id" = String, Path)),
    responses((status = 200, body = Vec<Object>), (status = 404, description = "No such chat for this user"))
)]
async fn history(
    State(state): State<AppState>,
    identity: TurnIdentity,
    Path(id): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let session = session_id(&id)?;
    let found = state.store.get_session(&identity.tenant, &session).await?;
    if found.is_none_or(|s| s.user_id != identity.user) {
        return Err(ApiError::not_found(format!("no chat {id}")));
    }
    let mut messages = Vec::new();
    let mut cursor = None;
    loop {
        let query = MessageQuery { limit: 200, order: Order::Asc, cursor, ..Default::default() };
        let page = state.store.list_messages(&identity.tenant, &session, query).await?;
        messages.extend(page.items);
        match page.next {
            Some(next) if messages.len() < 2000 => cursor = Some(next),
            _ => break,
        }
    }
    Ok(Json(messages.iter().map(ui_message).collect()))
}

fn ui_message(m: &Message) -> Value {
    let mut parts = Vec::new();
    if m.role == Role::Agent {
        for a in crate::agent::Agent::proposed_actions(m) {
            let name = a["tool"].as_str().unwrap_or("tool");
            let mut part = json!({"type": format!("tool-{name}"), "toolCallId": a["id"], "input": a["arguments"]});
            match a["status"].as_str() {
                Some("pending_approval") => {
                    part["state"] = json!("approval-requested");
                    part["approval"] = json!({"id": a["id"]});
                }
                Some("done") => {
                    part["state"] = json!("output-available");
                    part["output"] = a.get("result").cloned().unwrap_or(Value::Null);
                }
                Some("rejected") => {
                    part["state"] = json!("output-denied");
                    part["approval"] = json!({"id": a["id"], "approved": false});
                    if let Some(reason) = a["reason"].as_str() {
                        part["approval"]["reason"] = json!(reason);
                    }
                }
                other => {
                    part["state"] = json!("output-error");
                    part["errorText"] = json!(action_error(a, other));
                }
            }
            parts.push(part);
        }
    }
    parts.push(json!({"type": "text", "text": m.content}));
    json!({"id": m.id, "role": if m.role == Role::Agent { "assistant" } else { "user" }, "parts": parts})
}
