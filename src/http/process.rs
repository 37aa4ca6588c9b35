//! `POST /agent/process`: one agent turn, as JSON or as Server-Sent Events.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use super::extract::{Idempotency, TurnIdentity};
use super::sse::{self, DisconnectGuard};
use super::{ApiError, AppState, RequestId};
use futures::StreamExt;

use crate::agent::{OnDisconnect, Started, TurnAnswer, TurnEvents, TurnRequest, replayed_events};
use crate::ids::SessionId;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(process))
}

/// The largest `metadata` or `context`, as JSON.
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// The deepest nesting of `metadata` or `context`.
pub const MAX_JSON_DEPTH: usize = 8;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRequest {
    /// The user's message (not blank; at most MAX_MESSAGE_CHARS characters).
    #[schema(min_length = 1)]
    message: String,
    /// Continue this session (it must be this tenant's and user's, and active).
    session_id: Option<String>,
    /// Free JSON from the calling app, given to the model with this turn (not stored).
    #[schema(value_type = Option<Object>)]
    context: Option<Map<String, Value>>,
    /// Stored on the user message.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// Answer with Server-Sent Events (also chosen by `Accept: text/event-stream`).
    stream: Option<bool>,
    /// What happens when the client goes away: `continue` (the default: the turn completes and is
    /// stored; reconnect to its events or read it) or `cancel` (it stops; the partial reply is stored).
    on_disconnect: Option<OnDisconnect>,
    /// The tenant's agent to answer (also `x-agent-id`); by default the session's, else the
    /// tenant's default agent, else the server's.
    agent_id: Option<String>,
    /// When the session already has a running turn: `queue` (the default: stored at once, answered
    /// with the other waiting messages by one turn after it; its turn's `answeredBy` says which),
    /// `interrupt` (the running turn stops, marked `superseded`, and this one is answered),
    /// `parallel` (run beside it) or `reject` (409 `turn_in_progress`, nothing stored); by default
    /// the agent's setting, else `TURN_CONCURRENCY`.
    concurrency: Option<String>,
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `metadata` and `context` are at most 16 KB as JSON and nested at most 8 deep.
pub(crate) fn check_json(field: &str, map: &Option<Map<String, Value>>) -> Result<(), ApiError> {
    let Some(map) = map else { return Ok(()) };
    let value = Value::Object(map.clone());
    if value.to_string().len() > MAX_JSON_BYTES {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "field_too_large",
            format!("{field} is larger than {MAX_JSON_BYTES} bytes as JSON"),
        ));
    }
    if let Err(e) = crate::store::check_storable(&value) {
        return Err(ApiError::bad_request("invalid_body", format!("{field}: {e}")));
    }
    if depth(&value) > MAX_JSON_DEPTH {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} is nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    Ok(())
}

fn wants_stream(headers: &HeaderMap, body: &ProcessRequest) -> bool {
    body.stream.unwrap_or_else(|| {
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"))
    })
}

/// Send a message to the agent and get its reply.
///
/// The user's active session is continued when its last activity is within `SESSION_IDLE_MINUTES`;
/// otherwise a new session starts. Both messages are stored.
#[utoipa::path(
    post,
    path = "/agent/process",
    tag = "agent",
    request_body = ProcessRequest,
    params(
        ("x-tenant-id" = String, Header, description = "Tenant id"),
        ("x-user-id" = String, Header, description = "User id"),
        ("x-location-id" = Option<String>, Header, description = "Location id, stored on a new session"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key, per tenant and user, bound to this request (message, sessionId, context)"),
        ("x-agent-id" = Option<String>, Header, description = "The tenant's agent to answer (as agentId in the body)"),
    ),
    responses(
        (status = 200, description = "The agent's reply (or an SSE stream of events: session, delta, tool_call, tool_result, done, error; each with an id for Last-Event-ID)", body = TurnAnswer),
        (status = 400, description = "Bad JSON, header or field"),
        (status = 404, description = "sessionId is not this tenant's and user's, or agentId is not one of the tenant's agents"),
        (status = 409, description = "The session is closed, the session runs as another agent (agent_mismatch), it has a running turn and concurrency is reject (turn_in_progress, with turnId), or the same Idempotency-Key is in progress (the error names its turnId)"),
        (status = 422, description = "The Idempotency-Key was first used for a different request"),
        (status = 429, description = "A budget of the tenant or the user is used up (budget_exceeded: budget, used, limit, resetsAt; Retry-After), or the tenant's rate limit"),
        (status = 413, description = "Body or message too large"),
        (status = 415, description = "Not JSON"),
        (status = 502, description = "The model provider failed"),
        (status = 503, description = "Storage unavailable"),
        (status = 504, description = "The model did not answer in time"),
    )
)]
async fn process(
    State(state): State<AppState>,
    scope: super::extract::Scope,
    TurnIdentity { tenant, user, location }: TurnIdentity,
    Idempotency(idempotency_key): Idempotency,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<ProcessRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    if body.message.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_body", "message must not be empty"));
    }
    let chars = body.message.chars().count();
    if chars > state.max_message_chars {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_long",
            format!("message has {chars} characters; the limit is {} (MAX_MESSAGE_CHARS)", state.max_message_chars),
        ));
    }
    check_json("metadata", &body.metadata)?;
    check_json("context", &body.context)?;
    let session_id = body
        .session_id
        .clone()
        .map(SessionId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_body", format!("sessionId: {e}")))?;
    let named_agent = match (&body.agent_id, headers.get("x-agent-id")) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(h)) => Some(
            h.to_str()
                .map_err(|_| ApiError::bad_request("invalid_header", "x-agent-id: must be printable"))?
                .to_string(),
        ),
        (None, None) => None,
    };
    let agent = named_agent
        .map(crate::ids::AgentId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_body", format!("agentId: {e}")))?;
    if agent.is_some() && scope.bound_user().is_some() {
        // An end user runs as its session's agent or the tenant's default: naming one (a staff
        // agent with wider tools) is for the tenant's own servers.
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "an end user's credential may not choose the agent (agentId, x-agent-id)",
        ));
    }
    let concurrency = body
        .concurrency
        .as_deref()
        .map(crate::agent::Concurrency::parse)
        .transpose()
        .map_err(|m| ApiError::bad_request("invalid_body", format!("concurrency: {m}")))?;
    let stream = wants_stream(&headers, &body);
    let on_disconnect = body.on_disconnect.unwrap_or_default();
    let turn = TurnRequest {
        tenant,
        user,
        location,
        message: body.message,
        session_id,
        context: body.context,
        metadata: body.metadata,
        idempotency_key,
        on_disconnect,
        stream,
        agent,
        concurrency,
        session_metadata: None,
        instructions: None,
    };
    // A stream's slot is taken before its turn starts: a refused stream starts nothing.
    let slot = if stream { Some(sse::slot(&state.streams)?) } else { None };
    let respond = move |events: TurnEvents, guard| sse::respond(events, request_id, guard, slot);
    let live = match state.agent.start(turn).await? {
        Started::Live(live) => live,
        Started::Replayed(outcome) if stream => {
            return Ok(respond(replayed_events(*outcome, 0), DisconnectGuard::none()));
        }
        Started::Replayed(outcome) => return Ok(Json(TurnAnswer::from(*outcome)).into_response()),
        Started::Elsewhere(events) => return Ok(respond(events, DisconnectGuard::none())),
        Started::Following(live) => return Ok(respond(live.follow(0).boxed(), DisconnectGuard::none())),
    };
    let guard = DisconnectGuard::new(&live, on_disconnect);
    if !stream {
        let outcome = live.finished().await;
        guard.disarm();
        return Ok(Json(TurnAnswer::from(outcome?)).into_response());
    }
    // A problem known before the stream starts (no such session, a closed one) is an HTTP error.
    live.started().await?;
    Ok(respond(live.follow(0).boxed(), guard))
}
