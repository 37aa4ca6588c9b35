//! The Conversations API: a conversation is a session of the caller's user, its items its messages.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;

use super::{Result, bad, check_metadata, conversation, conversation_view, input_text, items_of, not_found};
use crate::http::AppState;
use crate::http::extract::TurnIdentity;
use crate::ids::MessageId;
use crate::store::{MessageQuery, NewMessage, NewSession, Order, Role};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(utoipa_axum::routes!(create_conversation))
        .routes(utoipa_axum::routes!(get_conversation, update_conversation, delete_conversation))
        .routes(utoipa_axum::routes!(list_items, add_items))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateConversation {
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// Items to seed it with (`message` items of role `user` or `assistant`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    items: Option<Vec<Value>>,
}

/// Creates a conversation (a session of the caller's user), optionally seeded with items.
#[utoipa::path(post, path = "/v1/conversations", tag = "openai", request_body = CreateConversation,
    responses((status = 200, body = Object)))]
async fn create_conversation(
    State(state): State<AppState>,
    who: TurnIdentity,
    body: std::result::Result<Json<CreateConversation>, JsonRejection>,
) -> Result<Json<Value>> {
    let Json(body) = body?;
    check_metadata(&body.metadata)?;
    let metadata = body.metadata.map(|m| {
        let mut session = crate::store::Metadata::new();
        session.insert(METADATA_KEY.into(), Value::Object(m));
        session
    });
    let seed = seed_messages(&who, body.items.unwrap_or_default())?;
    let new = NewSession {
        tenant_id: who.tenant.clone(),
        user_id: who.user.clone(),
        location_id: who.location.clone(),
        metadata,
    };
    let (session, _) = state.store.create_session_with(new, seed).await?;
    state.agent.announce_session_created(&session).await;
    Ok(Json(conversation_view(&session)))
}

/// Where a conversation's `metadata` is kept in its session's metadata.
const METADATA_KEY: &str = "openai";

/// Input items as messages to store: `message` items of role `user` or `assistant`, with text.
fn seed_messages(who: &TurnIdentity, items: Vec<Value>) -> Result<Vec<NewMessage>> {
    if items.len() > 20 {
        return Err(bad("items", "at most 20 items at a time"));
    }
    let mut seed = Vec::new();
    for i in items {
        let role = match (i["type"].as_str(), i["role"].as_str()) {
            (None | Some("message"), Some("user")) => Role::User,
            (None | Some("message"), Some("assistant")) => Role::Agent,
            _ => return Err(bad("items", "each item is a message of role user or assistant")),
        };
        let text = input_text(&json!([{"role": "user", "content": i["content"]}])).unwrap_or_default();
        if text.trim().is_empty() {
            return Err(bad("items", "each item has text (a string, or input_text / output_text parts)"));
        }
        seed.push(NewMessage {
            id: MessageId::generate(),
            user_id: who.user.clone(),
            role,
            content: text,
            metadata: None,
            counted: None,
        });
    }
    Ok(seed)
}

/// One conversation of the caller's user.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "openai",
    params(("conversation_id" = String, Path)), responses((status = 200, body = Object), (status = 404)))]
async fn get_conversation(
    State(state): State<AppState>,
    who: TurnIdentity,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(conversation_view(&conversation(&state, &who, &id).await?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateConversation {
    /// Replaces the conversation's metadata (at most 16 keys).
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
}

/// Replaces a conversation's metadata.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}", tag = "openai",
    params(("conversation_id" = String, Path)), request_body = UpdateConversation,
    responses((status = 200, body = Object), (status = 404)))]
async fn update_conversation(
    State(state): State<AppState>,
    who: TurnIdentity,
    Path(id): Path<String>,
    body: std::result::Result<Json<UpdateConversation>, JsonRejection>,
) -> Result<Json<Value>> {
    let Json(body) = body?;
    let metadata = Some(body.metadata);
    check_metadata(&metadata)?;
    let session = conversation(&state, &who, &id).await?;
    let value = Value::Object(metadata.into_iter().flatten().collect());
    let updated = state.store.set_session_metadata(&who.tenant, &session.id, METADATA_KEY, &value).await?;
    Ok(Json(conversation_view(&updated.ok_or_else(|| not_found("conversation", &id))?)))
}

/// Deletes a conversation: the session and its messages are erased.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}", tag = "openai",
    params(("conversation_id" = String, Path)), responses((status = 200, body = Object), (status = 404)))]
async fn delete_conversation(
    State(state): State<AppState>,
    who: TurnIdentity,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let session = conversation(&state, &who, &id).await?;
    state.agent.erase_session(&who.tenant, &session.id).await?;
    Ok(Json(json!({"id": id, "object": "conversation.deleted", "deleted": true})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemsQuery {
    /// An item id: the items after it.
    after: Option<String>,
    /// 1 to 100 (20 by default).
    limit: Option<usize>,
    /// `asc` or `desc` (the default).
    order: Option<String>,
}

/// The conversation's items, newest first (`order=asc` for oldest first), 20 a page.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/items", tag = "openai",
    params(("conversation_id" = String, Path), ItemsQuery), responses((status = 200, body = Object), (status = 404)))]
async fn list_items(
    State(state): State<AppState>,
    who: TurnIdentity,
    Path(id): Path<String>,
    query: std::result::Result<Query<ItemsQuery>, QueryRejection>,
) -> Result<Json<Value>> {
    let Query(q) = query.map_err(|e| bad("limit", format!("the query: {}", e.body_text())))?;
    let session = conversation(&state, &who, &id).await?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit", "limit must be between 1 and 100"));
    }
    let order = match q.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(_) => return Err(bad("order", "order is asc or desc")),
    };
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let query = MessageQuery { limit: 200, order, cursor, ..Default::default() };
        let page = state.store.list_messages(&who.tenant, &session.id, query).await?;
        all.extend(page.items);
        match page.next {
            Some(next) if all.len() < 5000 => cursor = Some(next),
            _ => break,
        }
    }
    let all: Vec<Value> = all
        .iter()
        .flat_map(|m| {
            let mut items = items_of(m);
            if order == Order::Desc {
                items.reverse();
            }
            items
        })
        .collect();
    let start = match &q.after {
        Some(after) => all.iter().position(|i| i["id"] == after.as_str()).map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let has_more = all.len() > start + page.len();
    Ok(Json(json!({
        "object": "list",
        "first_id": page.first().map(|i| i["id"].clone()),
        "last_id": page.last().map(|i| i["id"].clone()),
        "has_more": has_more,
        "data": page,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AddItems {
    /// `message` items of role `user` or `assistant` (at most 20).
    #[schema(value_type = Vec<Object>)]
    items: Vec<Value>,
}

/// Adds items to a conversation (stored as its messages, after the ones it has); the items added.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/items", tag = "openai",
    params(("conversation_id" = String, Path)), request_body = AddItems,
    responses((status = 200, body = Object), (status = 404)))]
async fn add_items(
    State(state): State<AppState>,
    who: TurnIdentity,
    Path(id): Path<String>,
    body: std::result::Result<Json<AddItems>, JsonRejection>,
) -> Result<Json<Value>> {
    let Json(body) = body?;
    let seed = seed_messages(&who, body.items)?;
    if seed.is_empty() {
        return Err(bad("items", "items: at least one"));
    }
    let session = conversation(&state, &who, &id).await?;
    let added = state.store.append_messages(&who.tenant, &session.id, seed).await?;
    let data: Vec<Value> = added.iter().flat_map(|a| items_of(&a.message)).collect();
    Ok(Json(json!({
        "object": "list",
        "first_id": data.first().map(|i| i["id"].clone()),
        "last_id": data.last().map(|i| i["id"].clone()),
        "has_more": false,
        "data": data,
    })))
}
