//! The change-event feed: `GET /agent/events/{tenantId}`, the tenant's events in order, with the
//! same ids and bodies as the webhooks, so a consumer that was down can catch up.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use super::extract::TenantWidePath;
use super::{ApiError, AppState};
use crate::events::{EventType, event_id_floor, is_event_id};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(list_events))
}

/// How old an event must be before the feed shows it: events minted at the same moment by several
/// writers (or instances) are all stored by then, so paging with `after` never skips one.
pub const FEED_SETTLE_MS: i64 = 2000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this event id (the last one you processed).
    after: Option<String>,
    /// Comma-separated event types (`turn.completed`, or `turn.*` for a family); all when absent.
    types: Option<String>,
    /// Events per page (1-100, default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// The tenant's change events, oldest first (kept `EVENTS_RETENTION_DAYS`). Events appear about a
/// two seconds after they happen. A full page has a `Link` header to the next one.
#[utoipa::path(
    get,
    path = "/agent/events/{tenantId}",
    tag = "events",
    params(("tenantId" = String, Path), EventsQuery),
    responses(
        (status = 200, body = Vec<serde_json::Value>, description = "Events, oldest first; Link header for the next page"),
        (status = 404, description = "Change events are off (EVENTS=off)"),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    TenantWidePath { tenant }: TenantWidePath,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    if !state.agent.events().is_on() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "events_off",
            "change events are off on this server: set EVENTS=on (or configure a webhook)",
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 100"));
    }
    if let Some(after) = &q.after
        && !is_event_id(after)
    {
        return Err(ApiError::bad_request("invalid_query", "after must be an event id (evt_ and 32 hex digits)"));
    }
    let types: Vec<String> = q
        .types
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = types.iter().find(|t| !EventType::ALL.iter().any(|k| k.matches(t))) {
        return Err(ApiError::bad_request("invalid_query", format!("types: {bad:?} is not an event type")));
    }
    // Patterns (`turn.*`) become the types they name: the store matches exact names.
    let types: Vec<String> =
        EventType::ALL.iter().filter(|k| types.iter().any(|t| k.matches(t))).map(|k| k.as_str().to_string()).collect();
    if q.types.is_some() && types.is_empty() {
        return Ok(Json(Vec::<serde_json::Value>::new()).into_response());
    }
    let now = crate::timestamp::now_micros() / 1000;
    let before = event_id_floor(now - FEED_SETTLE_MS);
    // Nothing older than the retention is served, so a read never walks expired events.
    let oldest = event_id_floor(now - state.agent.events().retention().as_millis() as i64);
    let after = match q.after.as_deref() {
        Some(after) if after > oldest.as_str() => after.to_string(),
        _ => oldest,
    };
    let stored = state.store.list_events(&tenant, Some(&after), &before, &types, limit).await?;
    let next = (stored.len() == limit).then(|| stored.last().map(|e| e.id.clone())).flatten();
    let events: Vec<serde_json::Value> = stored.iter().filter_map(|e| serde_json::from_str(&e.body).ok()).collect();
    let mut response = Json(events).into_response();
    if let Some(next) = next {
        super::link_next(&mut response, &uri, "after", &next);
    }
    Ok(response)
}
