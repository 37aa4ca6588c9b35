//! Search over conversations: `GET /agent/conversations/{tenantId}/users/{userId}/search` (one
//! user's messages) and `GET /agent/conversations/{tenantId}/search` (the tenant's), scoped exactly
//! like every other read: the tenant of the path, and for a credential bound to one user (a JWT),
//! that user's messages only.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::extract::{TenantWidePath, UserPath};
use super::{ApiError, AppState};
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::Role;
use crate::store::search::{SearchCursor, SearchOrder, SearchPage, SearchQuery, find, parse_query, scan, snippet};
use crate::timestamp::Timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(search_user)).routes(utoipa_axum::routes!(search_tenant))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words and "quoted phrases"; every one must occur (case and accents do not matter).
    q: Option<String>,
    /// Only this session.
    session_id: Option<String>,
    /// Only messages of this user (the tenant-wide search).
    user_id: Option<String>,
    /// `user` or `agent`.
    role: Option<String>,
    /// Only messages at or after this ISO-8601 time.
    from: Option<String>,
    /// Only messages at or before this ISO-8601 time.
    to: Option<String>,
    /// `relevance` (best first, the default) or `recent` (newest first).
    #[param(inline)]
    order: Option<SearchOrder>,
    /// Results per page (1-100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// From the `Link` header of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchResult {
    #[schema(value_type = String)]
    session_id: SessionId,
    #[schema(value_type = String)]
    message_id: crate::ids::MessageId,
    #[schema(value_type = String)]
    user_id: UserId,
    role: Role,
    #[schema(value_type = String)]
    timestamp: Timestamp,
    /// Up to 160 characters of the message around its first match, as plain text.
    snippet: String,
    /// `[start, end)` character (Unicode code point) offsets of the matches in `snippet`.
    highlights: Vec<[usize; 2]>,
    /// Higher is better; comparable within one search.
    score: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchAnswer {
    results: Vec<SearchResult>,
    /// The search stopped at its budget (`SEARCH_MAX_ITEMS` messages read) before reading
    /// everything: follow the `Link` header to go on.
    partial: bool,
    /// `sqlite-fts5` or `scan`.
    backend: String,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

fn time(name: &str, value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|v| Timestamp::parse(v).ok_or_else(|| bad(format!("{name}: {v:?} is not an ISO-8601 timestamp"))))
        .transpose()
}

impl SearchParams {
    fn to_query(&self, user: Option<UserId>, max_items: usize) -> Result<SearchQuery, ApiError> {
        let terms = parse_query(self.q.as_deref().unwrap_or("")).map_err(bad)?;
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(bad("limit must be between 1 and 100"));
        }
        let role = match self.role.as_deref() {
            None => None,
            Some(r) => Some(Role::parse(r).ok_or_else(|| bad(format!("role: {r:?} is not one of user, agent")))?),
        };
        let session = self
            .session_id
            .as_deref()
            .map(|s| SessionId::parse(s).map_err(|e| bad(format!("sessionId: {e}"))))
            .transpose()?;
        let cursor = self.cursor.as_deref().map(SearchCursor::decode).transpose().map_err(ApiError::from)?;
        Ok(SearchQuery {
            terms,
            user,
            session,
            role,
            from: time("from", self.from.as_deref())?,
            to: time("to", self.to.as_deref())?,
            order: self.order.unwrap_or_default(),
            limit,
            cursor,
            max_items,
        })
    }
}

async fn run(state: &AppState, uri: &Uri, tenant: &TenantId, query: SearchQuery) -> Result<Response, ApiError> {
    let page: SearchPage = if state.search.scan {
        scan(&*state.store, tenant, &query).await?
    } else {
        state.store.search_messages(tenant, &query).await?
    };
    let results = page
        .hits
        .into_iter()
        .map(|hit| {
            let ranges = find(&query.terms, &hit.message.content).map(|(_, r)| r).unwrap_or_default();
            let (snippet, highlights) = snippet(&hit.message.content, &ranges);
            let m = hit.message;
            SearchResult {
                session_id: m.session_id,
                message_id: m.id,
                user_id: m.user_id,
                role: m.role,
                timestamp: m.timestamp,
                snippet,
                highlights,
                score: hit.score,
            }
        })
        .collect();
    let answer = SearchAnswer { results, partial: page.partial, backend: page.backend.to_string() };
    let mut response = (StatusCode::OK, Json(answer)).into_response();
    if let Some(next) = page.next {
        super::link_next(&mut response, uri, "cursor", &next.encode());
    }
    Ok(response)
}

/// Search one user's messages, best first (or newest first with `order=recent`).
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/users/{userId}/search",
    tag = "conversations",
    params(("tenantId" = String, Path), ("userId" = String, Path), SearchParams),
    responses(
        (status = 200, body = SearchAnswer, description = "Matches; Link header for the next page"),
        (status = 400, description = "No words in q, or a bad filter"),
    )
)]
async fn search_user(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    UserPath { tenant, user }: UserPath,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    if params.user_id.as_deref().is_some_and(|u| u != user.as_str()) {
        return Err(bad("userId: the path names the user"));
    }
    let query = params.to_query(Some(user), state.search.max_items)?;
    run(&state, &uri, &tenant, query).await
}

/// Search the tenant's messages (tenant and admin credentials; a credential bound to one user
/// searches its own at `/agent/conversations/{tenantId}/users/{userId}/search`).
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/search",
    tag = "conversations",
    params(("tenantId" = String, Path), SearchParams),
    responses(
        (status = 200, body = SearchAnswer, description = "Matches; Link header for the next page"),
        (status = 400, description = "No words in q, or a bad filter"),
        (status = 403, description = "A credential bound to one user"),
    )
)]
async fn search_tenant(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    TenantWidePath { tenant }: TenantWidePath,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let named =
        params.user_id.as_deref().map(|u| UserId::parse(u).map_err(|e| bad(format!("userId: {e}")))).transpose()?;
    let query = params.to_query(named, state.search.max_items)?;
    run(&state, &uri, &tenant, query).await
}
