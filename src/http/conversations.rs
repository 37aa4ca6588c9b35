//! Reading and managing conversations: `/agent/conversations/{tenantId}/...`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::extract::{Scope, SessionPath, TenantWidePath, UserPath};
use super::{ApiError, AppState};
use crate::agent::Summarized;
use crate::ids::{SessionId, TenantId};
use crate::store::{ContextSummary, Cursor, Deleted, Message, MessageQuery, Order, PageRequest, Session};
use crate::timestamp::Timestamp;

#[allow(deprecated)] // registers the original server's paths, marked deprecated in OpenAPI
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(list_user_conversations, erase_user))
        .routes(utoipa_axum::routes!(get_session, delete_session))
        .routes(utoipa_axum::routes!(close_session))
        .routes(utoipa_axum::routes!(summarize_session))
        .routes(utoipa_axum::routes!(list_session_messages))
        .routes(utoipa_axum::routes!(list_tenant_messages))
        .routes(utoipa_axum::routes!(original_user_conversations))
        .routes(utoipa_axum::routes!(original_session))
        .routes(utoipa_axum::routes!(original_session_messages))
}

const MAX_LIMIT: usize = 100;

/// The session, when it exists for this tenant and, for a credential bound to one user (a JWT), is
/// that user's: anyone else gets the same 404 as for a session that does not exist.
async fn visible_session(
    state: &AppState,
    scope: &Scope,
    tenant: &TenantId,
    id: &SessionId,
) -> Result<Session, ApiError> {
    state
        .store
        .get_session(tenant, id)
        .await?
        .filter(|s| scope.sees(s))
        .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))
}

fn limit(value: Option<usize>, default: usize, min: usize, name: &str) -> Result<usize, ApiError> {
    let v = value.unwrap_or(default);
    if v < min || v > MAX_LIMIT {
        return Err(ApiError::bad_request("invalid_query", format!("{name} must be between {min} and {MAX_LIMIT}")));
    }
    Ok(v)
}

fn cursor(value: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    value.map(Cursor::decode).transpose().map_err(ApiError::from)
}

fn before(value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|b| {
            Timestamp::parse(b).ok_or_else(|| {
                ApiError::bad_request("invalid_query", format!("before: {b:?} is not an ISO-8601 timestamp"))
            })
        })
        .transpose()
}

/// A JSON list with a `Link: <...>; rel="next"` header (RFC 8288) when there is a next page.
fn paged<T: Serialize>(uri: &Uri, items: Vec<T>, next: Option<Cursor>) -> Response {
    let mut response = Json(items).into_response();
    if let Some(next) = next {
        super::link_next(&mut response, uri, "cursor", &next.encode());
    }
    response
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct UserConversationsQuery {
    /// Sessions per page (1-100, default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// Newest messages per session, oldest first (0-100, default 20).
    #[param(minimum = 0, maximum = 100)]
    message_limit: Option<usize>,
    /// From the `Link` header of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    #[serde(flatten)]
    session: Session,
    messages: Vec<Message>,
}

/// A user's sessions, most recent activity first, each with its newest messages (oldest first).
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/users/{userId}",
    tag = "conversations",
    params(("tenantId" = String, Path), ("userId" = String, Path), UserConversationsQuery),
    responses((status = 200, body = Vec<Conversation>, description = "Sessions with messages; Link header for the next page"))
)]
async fn list_user_conversations(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    UserPath { tenant, user }: UserPath,
    query: Result<Query<UserConversationsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let limit = limit(q.limit, 10, 1, "limit")?;
    let message_limit = limit_messages(q.message_limit)?;
    let store = &state.store;
    let page =
        store.list_user_sessions(&tenant, &user, PageRequest { limit, cursor: cursor(q.cursor.as_deref())? }).await?;
    let reads = page.items.into_iter().map(|session| async move {
        let messages = if message_limit == 0 {
            Vec::new()
        } else {
            let mut m = store
                .list_messages(
                    &session.tenant_id,
                    &session.id,
                    MessageQuery { limit: message_limit, ..Default::default() },
                )
                .await?
                .items;
            m.reverse();
            m
        };
        Ok::<_, ApiError>(Conversation { session, messages })
    });
    let conversations = futures::future::try_join_all(reads).await?;
    Ok(paged(&uri, conversations, page.next))
}

fn limit_messages(v: Option<usize>) -> Result<usize, ApiError> {
    limit(v, 20, 0, "messageLimit")
}

/// Erase everything of one user (sessions and messages).
#[utoipa::path(
    delete,
    path = "/agent/conversations/{tenantId}/users/{userId}",
    tag = "conversations",
    params(("tenantId" = String, Path), ("userId" = String, Path)),
    responses((status = 200, body = DeletedResponse, description = "What was deleted"))
)]
async fn erase_user(
    State(state): State<AppState>,
    UserPath { tenant, user }: UserPath,
) -> Result<Json<DeletedResponse>, ApiError> {
    let deleted = state.agent.erase_user(&tenant, &user).await?;
    Ok(Json(DeletedResponse { deleted }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedResponse {
    deleted: Deleted,
}

/// One session.
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}",
    tag = "conversations",
    params(("tenantId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = Session), (status = 404, description = "No such session for this tenant"))
)]
async fn get_session(
    State(state): State<AppState>,
    scope: Scope,
    SessionPath { tenant, session: id }: SessionPath,
) -> Result<Json<Session>, ApiError> {
    visible_session(&state, &scope, &tenant, &id).await.map(Json)
}

/// Delete a session and all its messages.
#[utoipa::path(
    delete,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}",
    tag = "conversations",
    params(("tenantId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = DeletedResponse), (status = 404, description = "No such session for this tenant"))
)]
async fn delete_session(
    State(state): State<AppState>,
    scope: Scope,
    SessionPath { tenant, session: id }: SessionPath,
) -> Result<Json<DeletedResponse>, ApiError> {
    visible_session(&state, &scope, &tenant, &id).await?;
    let messages = state
        .agent
        .erase_session(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))?;
    Ok(Json(DeletedResponse { deleted: Deleted { sessions: 1, messages } }))
}

/// Close a session (`isActive: false`); the next message without `sessionId` starts a new one.
#[utoipa::path(
    post,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/close",
    tag = "conversations",
    params(("tenantId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = Session), (status = 404, description = "No such session for this tenant"))
)]
async fn close_session(
    State(state): State<AppState>,
    scope: Scope,
    SessionPath { tenant, session: id }: SessionPath,
) -> Result<Json<Session>, ApiError> {
    let before = visible_session(&state, &scope, &tenant, &id).await?;
    let closed = state
        .store
        .close_session(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))?;
    if before.is_active {
        state.agent.announce_session_closed(&closed).await;
    }
    Ok(Json(closed))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummarizeResponse {
    /// Whether this request stored a new summary (false: nothing to fold, or another summariser
    /// stored one first).
    summarized: bool,
    /// The session's summary now.
    context_summary: Option<ContextSummary>,
}

/// Summarise the session's older messages now (all but the newest `CONTEXT_SUMMARY_KEEP_MESSAGES`),
/// folding in its previous summary. The messages stay; the model is given the summary in their place.
#[utoipa::path(
    post,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/summarize",
    tag = "conversations",
    params(("tenantId" = String, Path), ("sessionId" = String, Path)),
    responses(
        (status = 200, body = SummarizeResponse),
        (status = 404, description = "No such session for this tenant"),
        (status = 502, description = "The summariser failed; the previous summary stays"),
    )
)]
async fn summarize_session(
    State(state): State<AppState>,
    scope: Scope,
    SessionPath { tenant, session: id }: SessionPath,
) -> Result<Json<SummarizeResponse>, ApiError> {
    visible_session(&state, &scope, &tenant, &id).await?;
    let response = match state.agent.summarize(&tenant, &id).await? {
        Summarized::Stored(summary) => SummarizeResponse { summarized: true, context_summary: Some(summary) },
        Summarized::Unchanged(summary) | Summarized::Lost(summary) => {
            SummarizeResponse { summarized: false, context_summary: summary }
        }
    };
    Ok(Json(response))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Messages per page (1-100, default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// Only messages older than this ISO-8601 timestamp.
    before: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(inline)]
    order: Option<Order>,
    /// From the `Link` header of the previous page.
    cursor: Option<String>,
}

impl MessagesQuery {
    fn to_store(&self) -> Result<MessageQuery, ApiError> {
        Ok(MessageQuery {
            limit: limit(self.limit, 50, 1, "limit")?,
            order: self.order.unwrap_or_default(),
            cursor: cursor(self.cursor.as_deref())?,
            before: before(self.before.as_deref())?,
            for_model: false,
        })
    }
}

/// A session's messages, newest first by default.
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/sessions/{sessionId}/messages",
    tag = "conversations",
    params(("tenantId" = String, Path), ("sessionId" = String, Path), MessagesQuery),
    responses((status = 200, body = Vec<Message>, description = "Messages; Link header for the next page"), (status = 404, description = "No such session for this tenant"))
)]
async fn list_session_messages(
    State(state): State<AppState>,
    scope: Scope,
    OriginalUri(uri): OriginalUri,
    SessionPath { tenant, session: id }: SessionPath,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let query = q.to_store()?;
    visible_session(&state, &scope, &tenant, &id).await?;
    let page = state.store.list_messages(&tenant, &id, query).await?;
    Ok(paged(&uri, page.items, page.next))
}

/// The tenant's recent messages across sessions (TenantTimestampIndex), newest first by default.
#[utoipa::path(
    get,
    path = "/agent/conversations/{tenantId}/messages",
    tag = "conversations",
    params(("tenantId" = String, Path), MessagesQuery),
    responses((status = 200, body = Vec<Message>, description = "Messages; Link header for the next page"))
)]
async fn list_tenant_messages(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    TenantWidePath { tenant }: TenantWidePath,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let page = state.store.list_tenant_messages(&tenant, q.to_store()?).await?;
    Ok(paged(&uri, page.items, page.next))
}

// The original server served its conversation reads without the `/agent` prefix; clients written
// for it keep working. Same handlers, same checks (`access` reads the tenant and user from both).

/// A user's conversations (the original server's path; use `/agent/conversations/...`).
#[utoipa::path(
    get,
    path = "/conversations/{tenantId}/users/{userId}",
    tag = "conversations",
    params(("tenantId" = String, Path), ("userId" = String, Path), UserConversationsQuery),
    responses((status = 200, body = Vec<Conversation>, description = "As GET /agent/conversations/{tenantId}/users/{userId}")),
)]
#[deprecated(note = "the original server's path; use /agent/conversations/{tenantId}/users/{userId}")]
async fn original_user_conversations(
    state: State<AppState>,
    uri: OriginalUri,
    path: UserPath,
    query: Result<Query<UserConversationsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    list_user_conversations(state, uri, path, query).await
}

/// One session (the original server's path; use `/agent/conversations/...`).
#[utoipa::path(
    get,
    path = "/conversations/{tenantId}/sessions/{sessionId}",
    tag = "conversations",
    params(("tenantId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = Session), (status = 404, description = "No such session for this tenant")),
)]
#[deprecated(note = "the original server's path; use /agent/conversations/{tenantId}/sessions/{sessionId}")]
async fn original_session(state: State<AppState>, scope: Scope, path: SessionPath) -> Result<Json<Session>, ApiError> {
    get_session(state, scope, path).await
}

/// A session's messages (the original server's path; use `/agent/conversations/...`).
#[utoipa::path(
    get,
    path = "/conversations/{tenantId}/sessions/{sessionId}/messages",
    tag = "conversations",
    params(("tenantId" = String, Path), ("sessionId" = String, Path), MessagesQuery),
    responses((status = 200, body = Vec<Message>, description = "As GET /agent/conversations/{tenantId}/sessions/{sessionId}/messages"), (status = 404, description = "No such session for this tenant")),
)]
#[deprecated(note = "the original server's path; use /agent/conversations/{tenantId}/sessions/{sessionId}/messages")]
async fn original_session_messages(
    state: State<AppState>,
    scope: Scope,
    uri: OriginalUri,
    path: SessionPath,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    list_session_messages(state, scope, uri, path, query).await
}
