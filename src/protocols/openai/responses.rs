//! The Responses API: a response is a turn (JSON, streamed, or in the background), retrieved,
//! resumed, cancelled; approvals come as `mcp_approval_response` input items.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;

use super::stream::stream_response;
use super::view::{answer_json, response_now, response_of, response_view};
use super::{Result, bad, conv_id, conversation, input_text, item, not_found, turn_of};
use crate::agent::{OnDisconnect, Started, TurnRequest};
use crate::http::extract::{Scope, TurnIdentity, identity_of};
use crate::http::{ApiError, AppState};
use crate::ids::{AgentId, SessionId};
use crate::store::{Role, TurnEvent, TurnStatus};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(create_response))
        .routes(utoipa_axum::routes!(get_response, delete_response))
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
    /// Added to the agent's system prompt (this turn only).
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
    super::check_metadata(&body.metadata)?;
    if body.conversation.is_some() && body.previous_response_id.is_some() {
        return Err(bad("previous_response_id", "give conversation or previous_response_id, not both"));
    }
    if body.store == Some(false) {
        return Err(bad("store", "store: false is not supported: every response is stored (a turn of a conversation)"));
    }
    let approvals = approvals_in(&body.input);
    let session = session_for(&state, &who, &body, !approvals.is_empty()).await?;
    let model = body.model.clone().unwrap_or_else(|| "agent-server".into());
    if !approvals.is_empty() {
        return decide_all(&state, &who, &session, approvals, body.stream == Some(true), model).await;
    }
    let message =
        input_text(&body.input).filter(|t| !t.trim().is_empty()).ok_or_else(|| bad("input", "input: no user text"))?;
    if message.chars().count() > state.max_message_chars {
        return Err(bad("input", "input: longer than MAX_MESSAGE_CHARS"));
    }
    if body.instructions.as_ref().is_some_and(|i| i.chars().count() > state.max_message_chars) {
        return Err(bad("instructions", "instructions: longer than MAX_MESSAGE_CHARS"));
    }
    let mut agent = None;
    // An end user's credential does not choose the agent (as on `POST /agent/process`).
    if let Some(model) =
        body.model.as_deref().and_then(|m| AgentId::parse(m).ok()).filter(|_| scope.bound_user().is_none())
    {
        agent = state.store.get_agent(&who.tenant, &model).await?.map(|a| a.id);
    }
    let (background, stream) = (body.background == Some(true), body.stream == Some(true));
    let turn = TurnRequest {
        tenant: who.tenant.clone(),
        user: who.user.clone(),
        location: who.location.clone(),
        message,
        session_id: Some(session.clone()),
        context: None,
        metadata: body.metadata.clone(),
        idempotency_key: None,
        on_disconnect: OnDisconnect::Continue,
        // A background response runs as a streamed turn: its events are kept, for retrieve and resume.
        stream: stream || background,
        agent,
        concurrency: None,
        session_metadata: None,
        instructions: body.instructions.clone().filter(|i| !i.trim().is_empty()),
    };
    // A stream's slot is taken before the turn starts, so a refusal leaves nothing running.
    let slot = if stream { Some(crate::http::sse::slot(&state.streams)?) } else { None };
    let started = state.agent.start(turn).await?;
    match slot {
        Some(slot) => streamed(started, model, slot).await,
        None if background => queued(started, &session, &model, body.metadata).await,
        None => Ok(Json(response_view(&answer_json(finished(started).await?), &model)).into_response()),
    }
}

/// The `mcp_approval_response` input items: (action id, approved, reason).
fn approvals_in(input: &Value) -> Vec<(String, bool, Option<String>)> {
    let items = input.as_array().into_iter().flatten().filter(|i| i["type"] == "mcp_approval_response");
    items
        .filter_map(|i| {
            let id = i["approval_request_id"].as_str()?.to_string();
            Some((id, i["approve"].as_bool()?, i["reason"].as_str().map(str::to_string)))
        })
        .collect()
}

/// The session a response runs in: the conversation named, the one `previous_response_id` is in,
/// or a new one (not for approval decisions, which answer in the conversation that asked).
async fn session_for(state: &AppState, who: &TurnIdentity, body: &CreateResponse, deciding: bool) -> Result<SessionId> {
    match (&body.conversation, &body.previous_response_id) {
        (Some(c), _) => {
            let id = c.as_str().or(c["id"].as_str()).ok_or_else(|| bad("conversation", "a conversation id"))?;
            Ok(conversation(state, who, id).await?.id)
        }
        (None, Some(previous)) => {
            let turn = turn_of(previous)?;
            let found = state.store.get_message(&who.tenant, &turn).await?;
            let found = found.filter(|m| m.user_id == who.user).ok_or_else(|| not_found("response", previous))?;
            Ok(found.session_id)
        }
        (None, None) if deciding => {
            Err(bad("previous_response_id", "an mcp_approval_response needs the conversation or previous_response_id"))
        }
        (None, None) => {
            let id = SessionId::generate();
            crate::protocols::open_session(&state.agent, &who.tenant, &who.user, who.location.as_ref(), &id).await?;
            Ok(id)
        }
    }
}

/// Decides the actions the agent asked about, as the approve and reject routes do; the response
/// is the agent's follow-up (streamed whole when asked: it is stored before it is answered).
async fn decide_all(
    state: &AppState,
    who: &TurnIdentity,
    session: &SessionId,
    approvals: Vec<(String, bool, Option<String>)>,
    stream: bool,
    model: String,
) -> Result<Response> {
    let slot = if stream { Some(crate::http::sse::slot(&state.streams)?) } else { None };
    // Each decision is answered by its own follow-up (as on the approve and reject routes); the
    // response is the last one, with every decided action in its output.
    let mut decided = Vec::new();
    let mut last = None;
    for (action, approve, reason) in approvals {
        let outcome = state.agent.decide(&who.tenant, session, Some(&who.user), &action, approve, reason).await?;
        decided.extend(outcome.agent_message.tool_actions().iter().filter(|a| a["id"] == action.as_str()).cloned());
        last = Some(outcome);
    }
    let mut answer = answer_json(last.expect("at least one approval"));
    let later: Vec<Value> = answer["actions"].as_array().into_iter().flatten().skip(1).cloned().collect();
    answer["actions"] = json!(decided.into_iter().chain(later).collect::<Vec<_>>());
    Ok(match slot {
        Some(slot) => {
            let done = TurnEvent { id: 1, event: "done".into(), data: answer };
            stream_response(futures::stream::iter([done]).boxed(), model, None, slot)
        }
        None => Json(response_view(&answer, &model)).into_response(),
    })
}

fn elsewhere() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "in_progress", "the turn runs on another server")
}

/// A started turn's outcome, once it has finished.
async fn finished(started: Started) -> Result<crate::agent::TurnOutcome> {
    match started {
        Started::Live(live) | Started::Following(live) => Ok(live.finished().await?),
        Started::Replayed(outcome) => Ok(*outcome),
        Started::Elsewhere(_) => Err(elsewhere()),
    }
}

/// A background response: answered `queued` once its input is stored (its first event), so a
/// retrieve finds it; a problem known by then (a closed conversation, a budget) is the answer.
async fn queued(
    started: Started,
    session: &SessionId,
    model: &str,
    metadata: Option<Map<String, Value>>,
) -> Result<Response> {
    let turn = match &started {
        Started::Live(live) => {
            live.started().await?;
            live.turn_id.clone()
        }
        Started::Following(live) => live.turn_id.clone(),
        Started::Replayed(outcome) => outcome.turn_id.clone(),
        Started::Elsewhere(_) => return Err(elsewhere()),
    };
    Ok(Json(json!({
        "id": format!("resp_{turn}"), "object": "response", "created_at": crate::timestamp::epoch_seconds(),
        "status": "queued", "background": true, "model": model, "output": [], "parallel_tool_calls": false,
        "tool_choice": "auto", "tools": [], "metadata": metadata.unwrap_or_default(), "error": null,
        "incomplete_details": null,
        "conversation": {"id": conv_id(session)},
    }))
    .into_response())
}

/// A streamed response: the turn's events as the Responses API's (a problem known before the
/// stream starts, such as a closed conversation or a budget, is an error answer instead).
async fn streamed(started: Started, model: String, slot: tokio::sync::OwnedSemaphorePermit) -> Result<Response> {
    Ok(stream_response(started.into_events().await?, model, None, slot))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetrieveQuery {
    /// `true`: the response's events (again), as a stream.
    stream: Option<bool>,
    /// With `stream`: only the events after this sequence number (resuming a dropped stream).
    starting_after: Option<u64>,
}

/// Deletes a finished response: its turn's record and its messages (the input and the reply)
/// leave the conversation. A running response is a 409: cancel it first.
#[utoipa::path(delete, path = "/v1/responses/{response_id}", tag = "openai",
    params(("response_id" = String, Path)), responses((status = 200, body = Object), (status = 404), (status = 409)))]
async fn delete_response(
    State(state): State<AppState>,
    scope: Scope,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let (who, turn, found) = response_of(&state, &scope, &headers, &id).await?;
    let mut messages = vec![turn.clone()];
    if found.role == Role::User {
        let view = state.agent.turn(&who.tenant, &found.session_id, &turn, Some(&who.user)).await?;
        if matches!(view.status, TurnStatus::Running | TurnStatus::Queued) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "turn_in_progress",
                "the response is still running: cancel it first (POST /v1/responses/{id}/cancel)",
            ));
        }
        // A reply that answers other messages too (a queue's) stays: it is theirs as well.
        if view.answered_by.is_none() && view.answers.is_empty() {
            messages.push(view.agent_message_id.unwrap_or_else(|| crate::agent::Agent::reply_id_of(&turn)));
        }
    }
    state.store.delete_turn(&who.tenant, &turn, &messages).await?;
    Ok(Json(json!({"id": id, "object": "response.deleted", "deleted": true})))
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
    query: std::result::Result<Query<RetrieveQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| bad("stream", format!("the query: {}", e.body_text())))?;
    let (who, turn, user) = response_of(&state, &scope, &headers, &id).await?;
    if q.stream == Some(true) {
        let slot = crate::http::sse::slot(&state.streams)?;
        let events = state.agent.turn_events(&who.tenant, &user.session_id, &turn, Some(&who.user), 0).await?;
        return Ok(stream_response(events, "agent-server".into(), q.starting_after, slot));
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
    let (who, turn, user) = response_of(&state, &scope, &headers, &id).await?;
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
    let (_, _, user) = response_of(&state, &scope, &headers, &id).await?;
    // A follow-up's input was a decision, not a message.
    let data: Vec<Value> = if user.role == Role::User { vec![item(&user)] } else { Vec::new() };
    Ok(Json(json!({
        "object": "list", "first_id": data.first().map(|i| i["id"].clone()),
        "last_id": data.last().map(|i| i["id"].clone()), "has_more": false, "data": data,
    })))
}
