//! Approving or rejecting a pending tool call:
//! `POST /agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/approve|reject`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use super::extract::{ActionPath, Scope};
use super::{ApiError, AppState};
use crate::agent::TurnAnswer;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(approve)).routes(utoipa_axum::routes!(reject))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Decision {
    /// Why the action was rejected (given to the agent).
    reason: Option<String>,
}

fn reason(body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let d: Decision = serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    if d.reason.as_ref().is_some_and(|r| r.chars().count() > 2000) {
        return Err(ApiError::bad_request("invalid_body", "reason must be at most 2000 characters"));
    }
    Ok(d.reason)
}

async fn decide(
    state: AppState,
    scope: Scope,
    path: ActionPath,
    approve: bool,
    body: Bytes,
) -> Result<Json<TurnAnswer>, ApiError> {
    let reason = reason(&body)?;
    // A credential bound to one user (a JWT) decides only that user's actions.
    let outcome =
        state.agent.decide(&path.tenant, &path.session, scope.bound_user(), &path.action, approve, reason).await?;
    Ok(Json(outcome.into()))
}

/// Run a pending action once, then let the agent finish its answer (stored as a new agent message).
#[utoipa::path(
    post,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/approve",
    tag = "agent",
    params(("tenantId" = String, Path), ("sessionId" = String, Path), ("actionId" = String, Path)),
    request_body(content = Option<Decision>, description = "No body is needed"),
    responses(
        (status = 200, body = TurnAnswer, description = "The action ran; the agent's follow-up answer"),
        (status = 404, description = "No such pending action in this tenant's session"),
        (status = 409, description = "The action was already approved or rejected"),
    )
)]
async fn approve(
    State(state): State<AppState>,
    scope: Scope,
    path: ActionPath,
    body: Bytes,
) -> Result<Json<TurnAnswer>, ApiError> {
    decide(state, scope, path, true, body).await
}

/// Drop a pending action (never run), optionally with `{"reason": "..."}`, and let the agent answer.
#[utoipa::path(
    post,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/reject",
    tag = "agent",
    params(("tenantId" = String, Path), ("sessionId" = String, Path), ("actionId" = String, Path)),
    request_body(content = Option<Decision>, description = "Optional reason"),
    responses(
        (status = 200, body = TurnAnswer, description = "The agent's answer after the rejection"),
        (status = 404, description = "No such pending action in this tenant's session"),
        (status = 409, description = "The action was already approved or rejected"),
    )
)]
async fn reject(
    State(state): State<AppState>,
    scope: Scope,
    path: ActionPath,
    body: Bytes,
) -> Result<Json<TurnAnswer>, ApiError> {
    decide(state, scope, path, false, body).await
}
