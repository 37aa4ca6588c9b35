//! The Responses API: a response is a turn (JSON, streamed, or in the background), retrieved,
//! resumed, cancelled; approvals come as `mcp_approval_response` input items.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;

use super::stream::stream_response;
use super::{OpenAiError, Result, bad, conv_id, conversation, input_text, item, not_found, seconds, turn_of};
use crate::agent::{OnDisconnect, Started, TurnAnswer, TurnEvents, TurnRequest, replayed_events};
use crate::http::extract::{Scope, TurnIdentity, identity_of};
use crate::http::{ApiError, AppState};
use crate::ids::{AgentId, MessageId, SessionId};
use crate::store::{Message, Role};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(create_response))
        .routes(utoipa_axum::routes!(get_response))
        .routes(utoipa_axum::routes!(cancel_response))
        .routes(utoipa_axum::routes!(input_items))
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
pub(super) fn response_view(answer: &Value, model: &str) -> Value {
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
    let Json(body) = body?;
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
            let found = state.store.get_message(&who.tenant, &turn).await?;
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
            crate::protocols::open_session(&*state.store, &who.tenant, &who.user, who.location.as_ref(), &id).await?;
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
            last = Some(decided?);
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
        let found = state.store.get_agent(&who.tenant, &model).await?;
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
    let started = state.agent.start(turn).await?;
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
            Started::Live(live) => live.finished().await?,
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
    let user = state.store.get_message(&who.tenant, &turn).await?;
    let user =
        user.filter(|m| m.user_id == who.user && m.role == Role::User).ok_or_else(|| not_found("response", id))?;
    Ok((turn, user))
}

/// A response as it is now: from the turn's view, and its stored reply once there is one.
async fn response_now(state: &AppState, who: &TurnIdentity, id: &str, turn: MessageId, user: Message) -> Result<Value> {
    let view = state.agent.turn(&who.tenant, &user.session_id, &turn, Some(&who.user)).await?;
    let view = serde_json::to_value(&view).unwrap_or_default();
    let status = view["status"].as_str().unwrap_or("running").to_string();
    let reply = state.store.get_message(&who.tenant, &crate::agent::Agent::reply_id_of(&turn)).await?;
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
        let events = state.agent.turn_events(&who.tenant, &user.session_id, &turn, Some(&who.user), 0).await?;
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
    state.agent.cancel(&who.tenant, &user.session_id, &turn, Some(&who.user)).await?;
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
