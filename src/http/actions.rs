//! Approving or rejecting a pending tool call:
//! `POST /agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/approve|reject`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use super::process::ProcessResponse;
use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::ids::{SessionId, TenantId};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(approve)).routes(utoipa_axum::routes!(reject))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Decision {
    /// Why the action was rejected (given to the agent).
    reason: Option<String>,
}

fn ids(tenant: &str, session: &str) -> Result<(TenantId, SessionId), ApiError> {
    let t = TenantId::parse(tenant).map_err(|e| ApiError::bad_request("invalid_path", format!("tenantId: {e}")))?;
    let s = SessionId::parse(session).map_err(|e| ApiError::bad_request("invalid_path", format!("sessionId: {e}")))?;
    Ok((t, s))
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
    caller: Option<Extension<Caller>>,
    path: (String, String, String),
    approve: bool,
    body: Bytes,
) -> Result<Json<ProcessResponse>, ApiError> {
    let (tenant, session) = ids(&path.0, &path.1)?;
    let reason = reason(&body)?;
    // A credential bound to one user (a JWT) decides only that user's actions.
    let user = caller.and_then(|Extension(c)| c.user);
    let outcome = state.agent.decide(&tenant, &session, user.as_ref(), &path.2, approve, reason).await?;
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
        (status = 200, body = ProcessResponse, description = "The action ran; the agent's follow-up answer"),
        (status = 404, description = "No such pending action in this tenant's session"),
        (status = 409, description = "The action was already approved or rejected"),
    )
)]
async fn approve(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Json<ProcessResponse>, ApiError> {
    let Path(path) = path?;
    decide(state, caller, path, true, body).await
}

/// Drop a pending action (never run), optionally with `{"reason": "..."}`, and let the agent answer.
#[utoipa::path(
    post,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/reject",
    tag = "agent",
    params(("tenantId" = String, Path), ("sessionId" = String, Path), ("actionId" = String, Path)),
    request_body(content = Option<Decision>, description = "Optional reason"),
    responses(
        (status = 200, body = ProcessResponse, description = "The agent's answer after the rejection"),
        (status = 404, description = "No such pending action in this tenant's session"),
        (status = 409, description = "The action was already approved or rejected"),
    )
)]
async fn reject(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Json<ProcessResponse>, ApiError> {
    let Path(path) = path?;
    decide(state, caller, path, false, body).await
}
