//! OpenAI's Responses and Conversations APIs (a compatible subset, docs/openai-compatibility.md),
//! over the same turns: the official `openai` SDKs pointed at the server (`base_url` =
//! `<server>/v1`) work unchanged for what is listed there.
//!
//! Ids map 1:1 onto ours: a conversation is a session (`conv_<sessionId>`), a response is a turn
//! (`resp_<turnId>`), an item is a message (`msg_<messageId>`).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;

use crate::agent::{OnDisconnect, Started, TurnAnswer, TurnEvents, TurnRequest, replayed_events};
use crate::http::extract::{Scope, TurnIdentity, identity_of};
use crate::http::{ApiError, AppState};
use crate::ids::{AgentId, MessageId, SessionId};
use crate::store::{Message, MessageQuery, NewMessage, NewSession, Order, Role};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(create_conversation))
        .routes(utoipa_axum::routes!(get_conversation, delete_conversation))
        .routes(utoipa_axum::routes!(list_items))
        .routes(utoipa_axum::routes!(create_response))
        .routes(utoipa_axum::routes!(get_response))
        .routes(utoipa_axum::routes!(cancel_response))
        .routes(utoipa_axum::routes!(input_items))
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, same status.
struct OpenAiError(ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let kind = match e.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        let param = e.details.as_ref().and_then(|d| d.get("field")).cloned().unwrap_or(Value::Null);
        let body = json!({"error": {"message": e.message, "type": kind, "param": param, "code": e.code}});
        (e.status, Json(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, OpenAiError>;

fn bad(param: &str, message: impl Into<String>) -> OpenAiError {
    OpenAiError(ApiError::bad_request("invalid_request", message).with("field", json!(param)))
}

fn not_found(what: &str, id: &str) -> OpenAiError {
    OpenAiError(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with id {id}")))
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
    let found = state.store.get_session(&who.tenant, &session).await.map_err(|e| OpenAiError(e.into()))?;
    found.filter(|s| s.user_id == who.user).ok_or_else(|| not_found("conversation", id))
}

fn conversation_view(s: &crate::store::Session) -> Value {
    let metadata = s.metadata.as_ref().and_then(|m| m.get("openai")).cloned().unwrap_or_else(|| json!({}));
    json!({"id": conv_id(&s.id), "object": "conversation", "created_at": seconds(&s.created_at), "metadata": metadata})
}

/// A stored message as a conversation item.
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateConversation {
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// Items to seed it with (`message` items of role `user` or `assistant`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    items: Option<Vec<Value>>,
}

/// Creates a conversation (a session of the caller's user), optionally seeded with items.
#[utoipa::path(post, path = "/v1/conversations", tag = "openai", request_body = CreateConversation,
    responses((status = 200, body = Object)))]
async fn create_conversation(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    body: std::result::Result<Json<CreateConversation>, JsonRejection>,
) -> Result<Json<Value>> {
    let who = identity_of(&scope, &headers, None)?;
    let Json(body) = body.map_err(|e| OpenAiError(e.into()))?;
    let metadata = body.metadata.map(|m| {
        let mut session = crate::store::Metadata::new();
        session.insert("openai".into(), Value::Object(m));
        session
    });
    let mut seed = Vec::new();
    for i in body.items.unwrap_or_default() {
        let role = match i["role"].as_str() {
            Some("user") => Role::User,
            Some("assistant") => Role::Agent,
            _ => return Err(bad("items", "each item is a message of role user or assistant")),
        };
        let text = input_text(&json!([{"role": "user", "content": i["content"]}])).unwrap_or_default();
        seed.push(NewMessage {
            id: MessageId::generate(),
            user_id: who.user.clone(),
            role,
            content: text,
            metadata: None,
            counted: None,
        });
    }
    let new = NewSession {
        tenant_id: who.tenant.clone(),
        user_id: who.user.clone(),
        location_id: who.location.clone(),
        metadata,
    };
    let (session, _) = state.store.create_session_with(new, seed).await.map_err(|e| OpenAiError(e.into()))?;
    Ok(Json(conversation_view(&session)))
}

/// One conversation of the caller's user.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "openai",
    params(("conversation_id" = String, Path)), responses((status = 200, body = Object), (status = 404)))]
async fn get_conversation(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let who = identity_of(&scope, &headers, None)?;
    Ok(Json(conversation_view(&conversation(&state, &who, &id).await?)))
}

/// Deletes a conversation: the session and its messages are erased.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}", tag = "openai",
    params(("conversation_id" = String, Path)), responses((status = 200, body = Object), (status = 404)))]
async fn delete_conversation(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let who = identity_of(&scope, &headers, None)?;
    let session = conversation(&state, &who, &id).await?;
    state.agent.erase_session(&who.tenant, &session.id).await.map_err(|e| OpenAiError(e.into()))?;
    Ok(Json(json!({"id": id, "object": "conversation.deleted", "deleted": true})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemsQuery {
    /// An item id: the items after it.
    after: Option<String>,
    /// 1 to 100 (20 by default).
    limit: Option<usize>,
    /// `asc` or `desc` (the default).
    order: Option<String>,
}

/// The conversation's items, newest first (`order=asc` for oldest first), 20 a page.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/items", tag = "openai",
    params(("conversation_id" = String, Path), ItemsQuery), responses((status = 200, body = Object), (status = 404)))]
async fn list_items(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ItemsQuery>,
) -> Result<Json<Value>> {
    let who = identity_of(&scope, &headers, None)?;
    let session = conversation(&state, &who, &id).await?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit", "limit must be between 1 and 100"));
    }
    let order = match q.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(_) => return Err(bad("order", "order is asc or desc")),
    };
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let query = MessageQuery { limit: 200, order, cursor, ..Default::default() };
        let page =
            state.store.list_messages(&who.tenant, &session.id, query).await.map_err(|e| OpenAiError(e.into()))?;
        all.extend(page.items);
        match page.next {
            Some(next) if all.len() < 5000 => cursor = Some(next),
            _ => break,
        }
    }
    let start = match &q.after {
        Some(after) => all.iter().position(|m| format!("msg_{}", m.id) == *after).map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<Value> = all.iter().skip(start).take(limit).map(item).collect();
    let has_more = all.len() > start + page.len();
    Ok(Json(json!({
        "object": "list",
        "first_id": page.first().map(|i| i["id"].clone()),
        "last_id": page.last().map(|i| i["id"].clone()),
        "has_more": has_more,
        "data": page,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateResponse {
    /// An agent id of the tenant, or any model name for the tenant's default agent.
    #[serde(default)]
    model: Option<String>,
    /// A string, or input items.
    #[schema(value_type = Object)]
    input: Value,
    /// Added to the turn as context (this turn only).
    #[serde(default)]
    instructions: Option<String>,
    /// A conversation id, or `{"id": ...}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    conversation: Option<Value>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    stream: Option<bool>,
    /// `true` only: every response is stored.
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    background: Option<bool>,
    /// The end user, when no `x-user-id` names one.
    #[serde(default)]
    safety_identifier: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// The response object of a finished turn, from its answer (`TurnAnswer`'s JSON).
fn response_view(answer: &Value, model: &str) -> Value {
    let m = &answer["agentMessage"];
    let mut output = Vec::new();
    for a in answer["actions"].as_array().into_iter().flatten() {
        if a["status"] == "pending_approval" {
            output.push(json!({
                "type": "mcp_approval_request", "id": a["id"], "server_label": "agent-server",
                "name": a["tool"], "arguments": a["arguments"].to_string(),
            }));
        }
    }
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
        "metadata": {},
    })
}

fn answer_json(outcome: crate::agent::TurnOutcome) -> Value {
    serde_json::to_value(TurnAnswer::from(outcome)).unwrap_or_default()
}

/// Runs a turn: the newest user input of `input`, in the conversation (`conversation`, or the
/// one `previous_response_id` is in, or a new one), as the agent `model` names (else the default).
#[utoipa::path(post, path = "/v1/responses", tag = "openai", request_body = CreateResponse,
    responses((status = 200, body = Object, description = "The response, or its events (SSE) with stream: true")))]
async fn create_response(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    body: std::result::Result<Json<CreateResponse>, JsonRejection>,
) -> Result<Response> {
    let Json(body) = body.map_err(|e| OpenAiError(e.into()))?;
    let fallback = body.safety_identifier.as_deref().or(body.user.as_deref());
    let who = identity_of(&scope, &headers, fallback)?;
    if body.store == Some(false) {
        return Err(bad("store", "store: false is not supported: every response is stored (a turn of a conversation)"));
    }
    let approvals: Vec<(String, bool, Option<String>)> = body
        .input
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"] == "mcp_approval_response")
        .filter_map(|i| {
            Some((
                i["approval_request_id"].as_str()?.to_string(),
                i["approve"].as_bool()?,
                i["reason"].as_str().map(str::to_string),
            ))
        })
        .collect();
    let session = match (&body.conversation, &body.previous_response_id) {
        (Some(c), _) => {
            let id = c.as_str().or(c["id"].as_str()).ok_or_else(|| bad("conversation", "a conversation id"))?;
            conversation(&state, &who, id).await?.id
        }
        (None, Some(previous)) => {
            let turn = turn_of(previous)?;
            let found = state.store.get_message(&who.tenant, &turn).await.map_err(|e| OpenAiError(e.into()))?;
            let found = found.filter(|m| m.user_id == who.user).ok_or_else(|| not_found("response", previous))?;
            found.session_id
        }
        (None, None) if !approvals.is_empty() => {
            return Err(bad(
                "previous_response_id",
                "an mcp_approval_response needs the conversation or previous_response_id",
            ));
        }
        (None, None) => {
            let id = SessionId::generate();
            super::open_session(&*state.store, &who.tenant, &who.user, who.location.as_ref(), &id)
                .await
                .map_err(|e| OpenAiError(e.into()))?;
            id
        }
    };
    let model = body.model.clone().unwrap_or_else(|| "agent-server".into());
    // Approval responses decide the actions the agent asked about, as the approve and reject
    // routes do; the response is the agent's follow-up.
    if !approvals.is_empty() {
        let mut last = None;
        for (action, approve, reason) in approvals {
            let decided = state.agent.decide(&who.tenant, &session, Some(&who.user), &action, approve, reason).await;
            last = Some(decided.map_err(|e| OpenAiError(e.into()))?);
        }
        let outcome = last.expect("at least one approval");
        return Ok(Json(response_view(&answer_json(outcome), &model)).into_response());
    }
    let message =
        input_text(&body.input).filter(|t| !t.trim().is_empty()).ok_or_else(|| bad("input", "input: no user text"))?;
    if message.chars().count() > state.max_message_chars {
        return Err(bad("input", "input: longer than MAX_MESSAGE_CHARS"));
    }
    let mut agent = None;
    // An end user's credential does not choose the agent (as on `POST /agent/process`).
    if let Some(model) =
        body.model.as_deref().and_then(|m| AgentId::parse(m).ok()).filter(|_| scope.bound_user().is_none())
    {
        let found = state.store.get_agent(&who.tenant, &model).await.map_err(|e| OpenAiError(e.into()))?;
        agent = found.map(|a| a.id);
    }
    let context = body.instructions.as_ref().map(|i| {
        let mut c = Map::new();
        c.insert("instructions".into(), json!(i));
        c
    });
    let background = body.background == Some(true);
    let stream = body.stream == Some(true);
    let turn = TurnRequest {
        tenant: who.tenant.clone(),
        user: who.user.clone(),
        location: who.location.clone(),
        message,
        session_id: Some(session.clone()),
        context,
        metadata: body.metadata.clone(),
        idempotency_key: None,
        on_disconnect: OnDisconnect::Continue,
        // A background response runs as a streamed turn: its events are kept, for retrieve and resume.
        stream: stream || background,
        agent,
        concurrency: None,
        session_metadata: None,
    };
    let started = state.agent.start(turn).await.map_err(|e| OpenAiError(e.into()))?;
    if background && !stream {
        let turn = match &started {
            Started::Live(live) | Started::Following(live) => live.turn_id.clone(),
            Started::Replayed(outcome) => outcome.turn_id.clone(),
            Started::Elsewhere(_) => {
                return Err(OpenAiError(ApiError::new(StatusCode::CONFLICT, "in_progress", "the turn runs elsewhere")));
            }
        };
        return Ok(Json(json!({
            "id": format!("resp_{turn}"), "object": "response", "created_at": crate::timestamp::epoch_seconds(),
            "status": "queued", "background": true, "model": model, "output": [], "parallel_tool_calls": false,
            "tool_choice": "auto", "tools": [], "metadata": {}, "error": null, "incomplete_details": null,
            "conversation": {"id": conv_id(&session)},
        }))
        .into_response());
    }
    if !stream {
        let outcome = match started {
            Started::Live(live) => live.finished().await.map_err(|e| OpenAiError(e.into()))?,
            Started::Replayed(outcome) => *outcome,
            _ => {
                return Err(OpenAiError(ApiError::new(StatusCode::CONFLICT, "in_progress", "the turn runs elsewhere")));
            }
        };
        return Ok(Json(response_view(&answer_json(outcome), &model)).into_response());
    }
    let events: TurnEvents = match started {
        Started::Live(live) => {
            // A problem known before the stream starts (a closed conversation, a budget) is an error.
            live.wait_after(0).await;
            let (first, _) = live.events_after(0);
            if first.first().is_none_or(|e| e.event == "error")
                && let Some(Err(e)) = live.result()
            {
                return Err(OpenAiError(e.into()));
            }
            live.follow(0).boxed()
        }
        Started::Following(live) => live.follow(0).boxed(),
        Started::Replayed(outcome) => replayed_events(*outcome, 0),
        Started::Elsewhere(events) => events,
    };
    Ok(stream_response(events, model, None))
}

/// The Responses API's events of a turn's events.
/// `starting_after`: only the events after that sequence number (the mapping is the same every
/// time, so a resumed stream numbers its events as the first one did).
fn stream_response(events: TurnEvents, model: String, starting_after: Option<u64>) -> Response {
    let mut seq = 0u64;
    let mut head: Option<Value> = None;
    let mut text = String::new();
    let mut item_id = String::new();
    let body = events
        .map(move |e| {
            let mut out: Vec<(String, Value)> = Vec::new();
            if head.is_none() {
                let turn = e.data["turnId"].as_str().unwrap_or_default().to_string();
                item_id = MessageId::parse(turn.clone()).map(|t| format!("msg_{}", crate::agent::Agent::reply_id_of(&t))).unwrap_or_default();
                let response = json!({
                    "id": format!("resp_{turn}"), "object": "response", "created_at": crate::timestamp::epoch_seconds(),
                    "status": "in_progress", "model": model, "output": [], "parallel_tool_calls": false,
                    "tool_choice": "auto", "tools": [], "metadata": {}, "error": null, "incomplete_details": null,
                    "conversation": e.data["sessionId"].as_str().map(|s| json!({"id": format!("conv_{s}")})),
                });
                out.push(("response.created".into(), json!({"response": response})));
                out.push(("response.in_progress".into(), json!({"response": response})));
                let item = json!({"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []});
                out.push(("response.output_item.added".into(), json!({"output_index": 0, "item": item})));
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                out.push(("response.content_part.added".into(), json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part})));
                head = Some(response);
            }
            match e.event.as_str() {
                "delta" => {
                    if let Some(delta) = e.data["text"].as_str().filter(|t| !t.is_empty()) {
                        text.push_str(delta);
                        out.push(("response.output_text.delta".into(), json!({
                            "item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": [],
                        })));
                    }
                }
                "done" => {
                    let answer = &e.data;
                    {
                        let final_text = answer["response"].as_str().unwrap_or(&text).to_string();
                        out.push(("response.output_text.done".into(), json!({
                            "item_id": item_id, "output_index": 0, "content_index": 0, "text": final_text, "logprobs": [],
                        })));
                        let part = json!({"type": "output_text", "text": final_text, "annotations": []});
                        out.push(("response.content_part.done".into(), json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part.clone()})));
                        let item = json!({"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part]});
                        out.push(("response.output_item.done".into(), json!({"output_index": 0, "item": item})));
                        let response = response_view(answer, &model);
                        out.push(("response.completed".into(), json!({"response": response})));
                    }
                }
                "error" => {
                    let mut response = head.clone().unwrap_or_default();
                    response["status"] = json!("failed");
                    let message = e.data["error"]["message"].as_str().or(e.data["message"].as_str()).unwrap_or("the turn failed");
                    let code = e.data["error"]["code"].as_str().unwrap_or("server_error");
                    response["error"] = json!({"code": code, "message": message});
                    out.push(("response.failed".into(), json!({"response": response})));
                }
                _ => {}
            }
            let lines: Vec<String> = out
                .into_iter()
                .filter_map(|(kind, mut data)| {
                    let n = seq;
                    seq += 1;
                    if starting_after.is_some_and(|after| n <= after) {
                        return None;
                    }
                    data["type"] = json!(kind);
                    data["sequence_number"] = json!(n);
                    Some(format!("event: {kind}\ndata: {data}\n\n"))
                })
                .collect();
            futures::stream::iter(lines)
        })
        .flatten()
        .map(Ok::<_, std::convert::Infallible>);
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body))
        .into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetrieveQuery {
    /// `true`: the response's events (again), as a stream.
    stream: Option<bool>,
    /// With `stream`: only the events after this sequence number (resuming a dropped stream).
    starting_after: Option<u64>,
}

/// The turn of a response id and its user message, if the caller's user's.
async fn response_turn(state: &AppState, who: &TurnIdentity, id: &str) -> Result<(MessageId, Message)> {
    let turn = turn_of(id)?;
    let user = state.store.get_message(&who.tenant, &turn).await.map_err(|e| OpenAiError(e.into()))?;
    let user =
        user.filter(|m| m.user_id == who.user && m.role == Role::User).ok_or_else(|| not_found("response", id))?;
    Ok((turn, user))
}

/// A response as it is now: from the turn's view, and its stored reply once there is one.
async fn response_now(state: &AppState, who: &TurnIdentity, id: &str, turn: MessageId, user: Message) -> Result<Value> {
    let view = state
        .agent
        .turn(&who.tenant, &user.session_id, &turn, Some(&who.user))
        .await
        .map_err(|e| OpenAiError(e.into()))?;
    let view = serde_json::to_value(&view).unwrap_or_default();
    let status = view["status"].as_str().unwrap_or("running").to_string();
    let reply = state
        .store
        .get_message(&who.tenant, &crate::agent::Agent::reply_id_of(&turn))
        .await
        .map_err(|e| OpenAiError(e.into()))?;
    let Some(reply) = reply.filter(|_| status != "running") else {
        let status = match status.as_str() {
            "running" | "queued" => "in_progress",
            "cancelled" => "cancelled",
            _ => "failed",
        };
        return Ok(json!({
            "id": id, "object": "response", "created_at": seconds(&user.timestamp), "status": status,
            "model": "agent-server", "output": [], "parallel_tool_calls": false, "tool_choice": "auto", "tools": [],
            "conversation": {"id": conv_id(&user.session_id)}, "error": null, "incomplete_details": null, "metadata": {},
        }));
    };
    let session_id = user.session_id.clone();
    let outcome = crate::agent::TurnOutcome {
        turn_id: turn,
        status: serde_json::from_value(json!(status)).unwrap_or(crate::store::TurnStatus::Completed),
        session_id,
        user_message: Some(user),
        agent_message: reply,
        answered_by: None,
        answers: Vec::new(),
    };
    Ok(response_view(&answer_json(outcome), "agent-server"))
}

/// A response of the caller's user: as it is now, or (`stream=true`) its events again, after
/// `starting_after` to resume a dropped stream, from any server.
#[utoipa::path(get, path = "/v1/responses/{response_id}", tag = "openai",
    params(("response_id" = String, Path), RetrieveQuery), responses((status = 200, body = Object), (status = 404)))]
async fn get_response(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RetrieveQuery>,
) -> Result<Response> {
    let who = identity_of(&scope, &headers, None)?;
    let (turn, user) = response_turn(&state, &who, &id).await?;
    if q.stream == Some(true) {
        let events = state
            .agent
            .turn_events(&who.tenant, &user.session_id, &turn, Some(&who.user), 0)
            .await
            .map_err(|e| OpenAiError(e.into()))?;
        return Ok(stream_response(events, "agent-server".into(), q.starting_after));
    }
    Ok(Json(response_now(&state, &who, &id, turn, user).await?).into_response())
}

/// Cancels a running response (its partial reply is stored, marked cancelled); the response.
#[utoipa::path(post, path = "/v1/responses/{response_id}/cancel", tag = "openai",
    params(("response_id" = String, Path)), responses((status = 200, body = Object), (status = 404), (status = 409)))]
async fn cancel_response(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let who = identity_of(&scope, &headers, None)?;
    let (turn, user) = response_turn(&state, &who, &id).await?;
    state
        .agent
        .cancel(&who.tenant, &user.session_id, &turn, Some(&who.user))
        .await
        .map_err(|e| OpenAiError(e.into()))?;
    Ok(Json(response_now(&state, &who, &id, turn, user).await?))
}

/// The input of a response: its user message, as an input item.
#[utoipa::path(get, path = "/v1/responses/{response_id}/input_items", tag = "openai",
    params(("response_id" = String, Path)), responses((status = 200, body = Object), (status = 404)))]
async fn input_items(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let who = identity_of(&scope, &headers, None)?;
    let (_, user) = response_turn(&state, &who, &id).await?;
    let input = item(&user);
    Ok(Json(
        json!({"object": "list", "data": [input], "first_id": input["id"], "last_id": input["id"], "has_more": false}),
    ))
}
