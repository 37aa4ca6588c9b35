//! Reading and managing conversations: `/agent/conversations/{tenantId}/...`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, OriginalUri, Path, Query, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::{Cursor, Deleted, Message, MessageQuery, Order, PageRequest, Session};
use crate::timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(list_user_conversations, erase_user))
        .routes(utoipa_axum::routes!(get_session, delete_session))
        .routes(utoipa_axum::routes!(close_session))
        .routes(utoipa_axum::routes!(list_session_messages))
        .routes(utoipa_axum::routes!(list_tenant_messages))
}

const MAX_LIMIT: usize = 100;

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|e| ApiError::bad_request("invalid_path", format!("tenantId: {e}")))
}
fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::bad_request("invalid_path", format!("userId: {e}")))
}
fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|e| ApiError::bad_request("invalid_path", format!("sessionId: {e}")))
}

/// The session, when it exists for this tenant and, for a credential bound to one user (a JWT), is
/// that user's: anyone else gets the same 404 as for a session that does not exist.
async fn visible_session(
    state: &AppState,
    caller: Option<Extension<Caller>>,
    tenant: &TenantId,
    id: &SessionId,
) -> Result<Session, ApiError> {
    let user = caller.and_then(|Extension(c)| c.user);
    state
        .agent
        .store()
        .get_session(tenant, id)
        .await?
        .filter(|s| user.as_ref().is_none_or(|u| &s.user_id == u))
        .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))
}

/// `{tenantId}` and `{sessionId}` of a session path.
fn session_path(path: Result<Path<(String, String)>, PathRejection>) -> Result<(TenantId, SessionId), ApiError> {
    let Path((tenant, id)) = path?;
    Ok((tenant_id(&tenant)?, session_id(&id)?))
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

fn before(value: Option<&str>) -> Result<Option<String>, ApiError> {
    value
        .map(|b| {
            timestamp::normalize(b).ok_or_else(|| {
                ApiError::bad_request("invalid_query", format!("before: {b:?} is not an ISO-8601 timestamp"))
            })
        })
        .transpose()
}

/// A JSON list with a `Link: <...>; rel="next"` header (RFC 8288) when there is a next page.
fn paged<T: Serialize>(uri: &Uri, items: Vec<T>, next: Option<Cursor>) -> Response {
    let mut response = Json(items).into_response();
    if let Some(next) = next {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            if k != "cursor" {
                query.append_pair(&k, &v);
            }
        }
        query.append_pair("cursor", &next.encode());
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.finish());
        if let Ok(v) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, v);
        }
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
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<UserConversationsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((tenant, user)) = path?;
    let Query(q) = query?;
    let (tenant, user) = (tenant_id(&tenant)?, user_id(&user)?);
    let limit = limit(q.limit, 10, 1, "limit")?;
    let message_limit = limit_messages(q.message_limit)?;
    let store = state.agent.store();
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
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<DeletedResponse>, ApiError> {
    let Path((tenant, user)) = path?;
    let deleted = state.agent.store().delete_user(&tenant_id(&tenant)?, &user_id(&user)?).await?;
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
    caller: Option<Extension<Caller>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Session>, ApiError> {
    let (tenant, id) = session_path(path)?;
    visible_session(&state, caller, &tenant, &id).await.map(Json)
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
    caller: Option<Extension<Caller>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<DeletedResponse>, ApiError> {
    let (tenant, id) = session_path(path)?;
    visible_session(&state, caller, &tenant, &id).await?;
    let messages = state
        .agent
        .store()
        .delete_session(&tenant, &id)
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
    caller: Option<Extension<Caller>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Session>, ApiError> {
    let (tenant, id) = session_path(path)?;
    visible_session(&state, caller, &tenant, &id).await?;
    state
        .agent
        .store()
        .close_session(&tenant, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("session {id} not found")))
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
    caller: Option<Extension<Caller>>,
    OriginalUri(uri): OriginalUri,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (tenant, id) = session_path(path)?;
    let Query(q) = query?;
    let query = q.to_store()?;
    let store = state.agent.store();
    visible_session(&state, caller, &tenant, &id).await?;
    let page = store.list_messages(&tenant, &id, query).await?;
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
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(tenant) = path?;
    let Query(q) = query?;
    let page = state.agent.store().list_tenant_messages(&tenant_id(&tenant)?, q.to_store()?).await?;
    Ok(paged(&uri, page.items, page.next))
}
