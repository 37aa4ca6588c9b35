//! The HTTP API: one router per resource, one error type, and the middleware every request passes.

mod access;
mod actions;
mod agents;
mod channels;
pub mod console;
mod conversations;
mod error;
mod events;
pub(crate) mod extract;
mod process;
pub(crate) use process::check_json;
mod search;
pub(crate) mod server;
pub(crate) mod sse;
mod turns;
mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub(crate) use access::TenantRateLimit;
pub use error::ApiError;

use crate::agent::Agent;
use crate::auth::Authenticator;
use crate::store::ConversationStore;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub agent: Arc<Agent>,
    /// The agent's store, for the handlers that read and manage conversations.
    pub store: Arc<dyn ConversationStore>,
    pub auth: Arc<Authenticator>,
    pub rate_limit: Option<Arc<access::TenantRateLimit>>,
    /// `/metrics` needs no credential (the server listens on loopback).
    pub metrics_open: bool,
    /// Renders `/metrics`; `None` when no recorder is installed (in-process tests).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub max_message_chars: usize,
    /// Slots for open event streams (`MAX_CONCURRENT_STREAMS`): the request limit lets go of a
    /// request when its response head is sent, so a stream holds a slot of its own until it ends.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// How messages are searched (`SEARCH_BACKEND`, `SEARCH_MAX_ITEMS`).
    pub search: crate::config::SearchConfig,
    /// Whether `/console/` is served (`CONSOLE`).
    pub console: bool,
    /// The channels' webhooks and outbox.
    pub channels: Arc<crate::channels::worker::Channels>,
}

/// Limits that protect the server from slow or greedy clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    /// How long a request waits for a slot before it is answered 503.
    pub request_queue_timeout: Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agent-server",
        description = "Multi-tenant AI agent conversations on DynamoDB or embedded SQLite."
    ),
    tags(
        (name = "agent", description = "Agent turns"),
        (name = "conversations", description = "Reading and managing conversations"),
        (name = "agents", description = "A tenant's agents: instructions, model, tools, business API"),
        (name = "events", description = "Change events (the feed; webhooks carry the same events)"),
        (name = "channels", description = "WhatsApp and Twilio channels: a tenant's agent where its customers write"),
        (name = "operations", description = "Health and the API description"),
    )
)]
struct ApiDoc;

/// The whole application: routes, their OpenAPI document, and the middleware.
pub fn app(state: AppState, limits: Limits) -> axum::Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(process::router())
        .merge(conversations::router())
        .merge(actions::router())
        .merge(agents::router())
        .merge(turns::router())
        .merge(events::router())
        .merge(search::router())
        .merge(usage::router())
        .merge(channels::router())
        .merge(crate::protocols::ui_chat::router())
        .merge(crate::protocols::openai::router())
        .routes(utoipa_axum::routes!(healthz))
        .routes(utoipa_axum::routes!(readyz))
        .split_for_parts();
    let api = Arc::new(api);
    let router = if state.console { router.merge(console::router()) } else { router };
    router
        .route(
            "/openapi.json",
            get(move || {
                let api = api.clone();
                async move { Json(api.as_ref().clone()) }
            }),
        )
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), access::rate_limit))
        .route_layer(middleware::from_fn(route_label))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error; the request id identifies it in the server log",
            )
            .into_response()
        }))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
        .layer(middleware::from_fn_with_state(
            access::RequestSlots::new(limits.max_concurrent_requests, limits.request_queue_timeout),
            access::request_slot,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), access::authorize))
        .layer(middleware::from_fn(access::header_limits))
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// Prometheus text: open on loopback, otherwise for admin credentials (see `access::authorize`).
async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
        }
        None => ApiError::not_found("metrics are not enabled in this process").into_response(),
    }
}

/// The route pattern a request matched (for logs and metrics without unbounded label values).
#[derive(Clone)]
struct RouteLabel(String);

async fn route_label(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteLabel(route));
    }
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// The process is up (no I/O).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Storage answers and the model provider is configured.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready, with the reason"),
))]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.check().await?;
    if let Some(why) = state.agent.provider().not_ready() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_provider_not_configured", why));
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}

fn is_printable_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Request id (accepted from `x-request-id` or generated, and returned), JSON bodies for every
/// error (axum's own 404/405/413 included), and one log line per request.
/// The id of the request being answered (for error bodies built in handlers, such as SSE errors).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

async fn request_context(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_printable_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| crate::random::uuid().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let tenant = request
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_printable_id(v))
        .map(str::to_string)
        .unwrap_or_default();
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    let status = response.status();
    let route = response.extensions().get::<RouteLabel>().map_or_else(|| "unmatched".to_string(), |r| r.0.clone());
    crate::telemetry::http_request(method.as_str(), &route, status.as_u16(), started.elapsed());
    let error = response.extensions().get::<ApiError>().cloned().or_else(|| {
        let is_json =
            response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        (status.as_u16() >= 400 && !is_json).then(|| match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                ApiError::new(status, "method_not_allowed", format!("{method} is not allowed on {path}"))
            }
            StatusCode::PAYLOAD_TOO_LARGE => error::payload_too_large(),
            StatusCode::NOT_FOUND => ApiError::not_found(format!("no route for {method} {path}")),
            s => ApiError::new(s, "error", s.canonical_reason().unwrap_or("error")),
        })
    });
    if let Some(error) = error {
        let headers = std::mem::take(response.headers_mut());
        // OpenAI's routes answer in OpenAI's shape, whatever refused the request.
        let body = if path.starts_with("/v1/") {
            crate::protocols::openai::error_body(&error)
        } else {
            error.body(Some(&request_id))
        };
        response = (status, Json(body)).into_response();
        for (name, value) in headers.iter() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        request_id = %request_id,
        %method,
        path = %path,
        route = %route,
        tenant = %tenant,
        status = status.as_u16(),
        latency_ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
}

/// Adds `Link: <path?...>; rel="next"` (RFC 8288) to a response: the request's own query with
/// `param` set to `value`, so the next page keeps every filter of this one.
pub(crate) fn link_next(response: &mut Response, uri: &axum::http::Uri, param: &str, value: &str) {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k != param {
            query.append_pair(&k, &v);
        }
    }
    query.append_pair(param, value);
    let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.finish());
    if let Ok(v) = axum::http::HeaderValue::from_str(&link) {
        response.headers_mut().insert(axum::http::header::LINK, v);
    }
}
