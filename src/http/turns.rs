//! Turns as resources: `/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}`, its
//! events (resumable with `Last-Event-ID`), and cancelling it.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use super::extract::{Scope, TurnPath};
use super::sse::{self, DisconnectGuard};
use super::{ApiError, AppState, RequestId};
use crate::agent::TurnView;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(get_turn))
        .routes(utoipa_axum::routes!(turn_events))
        .routes(utoipa_axum::routes!(cancel_turn))
}

/// A turn: its status, its messages' ids and its newest event's id.
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}",
    tag = "agent",
    params(("tenantId" = String, Path), ("sessionId" = String, Path), ("turnId" = String, Path)),
    responses((status = 200, body = TurnView), (status = 404, description = "No such turn in this caller's session"))
)]
async fn get_turn(
    State(state): State<AppState>,
    scope: Scope,
    TurnPath { tenant, session, turn }: TurnPath,
) -> Result<Json<TurnView>, ApiError> {
    Ok(Json(state.agent.turn(&tenant, &session, &turn, scope.bound_user()).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only the events after this id (like the `Last-Event-ID` header, which wins when both are given).
    after: Option<u64>,
}

/// The turn's events as Server-Sent Events: those after `Last-Event-ID` (or `after`), then the live
/// ones until the turn ends. A finished turn's events are replayed (a JSON turn's as `session`, one
/// `delta` with the whole reply, and `done`).
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/events",
    tag = "agent",
    params(
        ("tenantId" = String, Path), ("sessionId" = String, Path), ("turnId" = String, Path),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "text/event-stream: session, delta, tool_call, tool_result, done, error"),
        (status = 400, description = "Last-Event-ID is not an event id"),
        (status = 404, description = "No such turn in this caller's session"),
        (status = 410, description = "The turn's events are past TURN_EVENTS_TTL_HOURS"),
    )
)]
async fn turn_events(
    State(state): State<AppState>,
    scope: Scope,
    TurnPath { tenant, session, turn }: TurnPath,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("invalid_header", "Last-Event-ID: an event id (a number)"))?,
        None => q.after.unwrap_or(0),
    };
    let slot = sse::slot(&state.streams)?;
    let events = state.agent.turn_events(&tenant, &session, &turn, scope.bound_user(), after).await?;
    Ok(sse::respond(events, request_id, DisconnectGuard::none(), Some(slot)))
}

/// Cancel a running turn: the model call stops wherever it runs, the partial reply is stored with
/// `metadata.interrupted: "cancelled"`, and the turn's status becomes `cancelled`.
#[utoipa::path(
    post,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/cancel",
    tag = "agent",
    params(("tenantId" = String, Path), ("sessionId" = String, Path), ("turnId" = String, Path)),
    responses(
        (status = 200, body = TurnView, description = "Cancelled (again: the same answer)"),
        (status = 404, description = "No such turn in this caller's session"),
        (status = 409, description = "The turn had already ended; the error gives its status"),
    )
)]
async fn cancel_turn(
    State(state): State<AppState>,
    scope: Scope,
    TurnPath { tenant, session, turn }: TurnPath,
) -> Result<Json<TurnView>, ApiError> {
    Ok(Json(state.agent.cancel(&tenant, &session, &turn, scope.bound_user()).await?))
}
