//! A tenant's agents: `PUT`, `GET`, `DELETE /agent/tenants/{tenantId}/agents/{agentId}` and the
//! list. Tenant API keys and admin keys manage them; an end user's credential (a JWT) reads only
//! their ids and names. An agent's business API key is write-only (`businessApi.keySet`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use super::extract::{AgentPath, AgentsPath, Scope};
use super::{ApiError, AppState};
use crate::agents::manage::{self, ManageError};
use crate::agents::{AgentSpec, StoredAgent};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(list_agents)).routes(utoipa_axum::routes!(
        put_agent,
        get_agent,
        delete_agent
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentsQuery {
    /// Agents per page (1-100, default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// From the `Link` header of the previous page: the last agent id of that page.
    after: Option<String>,
}

fn shown(scope: &Scope, agent: &StoredAgent) -> Value {
    if scope.bound_user().is_some() { agent.public_view() } else { agent.view() }
}

/// The tenant's agents, by id (an end user's credential sees ids and names only). A full page has
/// a `Link` header to the next one.
#[utoipa::path(
    get,
    path = "/agent/tenants/{tenantId}/agents",
    tag = "agents",
    params(("tenantId" = String, Path), AgentsQuery),
    responses((status = 200, body = Vec<Object>, description = "Agents; Link header for the next page"))
)]
async fn list_agents(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    scope: Scope,
    AgentsPath { tenant }: AgentsPath,
    query: Result<Query<AgentsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 100"));
    }
    let all = state.store.list_agents(&tenant).await?;
    let rest = all.iter().filter(|a| q.after.as_deref().is_none_or(|after| a.id.as_str() > after));
    let page: Vec<&StoredAgent> = rest.take(limit + 1).collect();
    let more = page.len() > limit;
    let page = &page[..page.len().min(limit)];
    let mut response = Json(page.iter().map(|a| shown(&scope, a)).collect::<Vec<_>>()).into_response();
    if let (true, Some(last)) = (more, page.last()) {
        super::link_next(&mut response, &uri, "after", last.id.as_str());
    }
    Ok(response)
}

/// One agent of the tenant (an end user's credential sees its id and name only).
#[utoipa::path(
    get,
    path = "/agent/tenants/{tenantId}/agents/{agentId}",
    tag = "agents",
    params(("tenantId" = String, Path), ("agentId" = String, Path)),
    responses((status = 200, body = Object), (status = 404, description = "No such agent for this tenant"))
)]
async fn get_agent(
    State(state): State<AppState>,
    scope: Scope,
    AgentPath { tenant, agent }: AgentPath,
) -> Result<Json<Value>, ApiError> {
    let found = state.store.get_agent(&tenant, &agent).await?;
    let found = found.ok_or_else(|| agent_not_found(&agent))?;
    Ok(Json(shown(&scope, &found)))
}

fn agent_not_found(id: &crate::ids::AgentId) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "agent_not_found", format!("this tenant has no agent {id}"))
}

/// Creates (201) or replaces (200) an agent. Every field but `systemPrompt` is optional (the
/// server's environment fills in); `businessApi.key` is write-only: left out, the stored key stays.
#[utoipa::path(
    put,
    path = "/agent/tenants/{tenantId}/agents/{agentId}",
    tag = "agents",
    params(("tenantId" = String, Path), ("agentId" = String, Path, description = "1 to 64 of [A-Za-z0-9._-]")),
    request_body = AgentSpec,
    responses(
        (status = 200, body = Object, description = "Replaced"),
        (status = 201, body = Object, description = "Created"),
        (status = 403, description = "An end user's credential"),
        (status = 409, description = "Changed at the same time, or the tenant has 100 agents"),
        (status = 422, description = "An invalid field (named in `field`)"),
    )
)]
async fn put_agent(
    State(state): State<AppState>,
    scope: Scope,
    AgentPath { tenant, agent }: AgentPath,
    body: Result<Json<AgentSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    scope.manages()?;
    let Json(spec) = body.map_err(|e| match e {
        JsonRejection::JsonDataError(e) => {
            let (field, message) = crate::agents::body_error_field(&e.body_text());
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_agent", message).with("field", json!(field))
        }
        other => other.into(),
    })?;
    let directory = state.agent.agents();
    let put = manage::put(&*state.store, &directory.capabilities(), &tenant, &agent, spec).await;
    // Whatever the outcome, this server reads the tenant's agents again.
    directory.forget(&tenant);
    let put = put.map_err(|e| match e {
        ManageError::Invalid(f) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_agent", format!("{}: {}", f.field, f.message))
                .with("field", json!(f.field))
        }
        ManageError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        ManageError::Store(e) => e.into(),
    })?;
    state.agent.events().record(&tenant, put.changes()).await;
    let status = if put.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(put.agent.view())).into_response())
}

/// Deletes an agent (204). Its sessions keep their messages and their `agentId`; their next turns
/// run as the tenant's default agent.
#[utoipa::path(
    delete,
    path = "/agent/tenants/{tenantId}/agents/{agentId}",
    tag = "agents",
    params(("tenantId" = String, Path), ("agentId" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 403, description = "An end user's credential"), (status = 404, description = "No such agent"))
)]
async fn delete_agent(
    State(state): State<AppState>,
    scope: Scope,
    AgentPath { tenant, agent }: AgentPath,
) -> Result<StatusCode, ApiError> {
    scope.manages()?;
    let deleted = manage::delete(&*state.store, &tenant, &agent).await;
    state.agent.agents().forget(&tenant);
    if !deleted? {
        return Err(agent_not_found(&agent));
    }
    state.agent.events().record(&tenant, vec![manage::deleted(&agent)]).await;
    Ok(StatusCode::NO_CONTENT)
}
