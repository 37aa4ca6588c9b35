//! The HTTP API: one router per resource, one error type, and the middleware every request passes.

mod access;
mod actions;
mod conversations;
mod error;
mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;

use crate::agent::{Agent, AgentSettings};
use crate::auth::Authenticator;
use crate::config::{AuthConfig, Config};
use crate::llm::Provider;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub agent: Arc<Agent>,
    pub auth: Arc<Authenticator>,
    pub rate_limit: Option<Arc<access::TenantRateLimit>>,
    /// `/metrics` needs no credential (the server listens on loopback).
    pub metrics_open: bool,
    /// Renders `/metrics`; `None` when no recorder is installed (in-process tests).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub max_message_chars: usize,
}

/// Limits that protect the server from slow or greedy clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
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
        .routes(utoipa_axum::routes!(healthz))
        .routes(utoipa_axum::routes!(readyz))
        .split_for_parts();
    let api = Arc::new(api);
    router
        .route(
            "/openapi.json",
            get(move || {
                let api = api.clone();
                async move { Json(api.as_ref().clone()) }
            }),
        )
        .route("/metrics", get(metrics))
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
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests))
        .layer(middleware::from_fn_with_state(state.clone(), access::rate_limit))
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
    state.agent.store().check().await?;
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
async fn request_context(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_printable_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let tenant = request
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_printable_id(v))
        .map(str::to_string)
        .unwrap_or_default();
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
        response = (status, Json(error.body(Some(&request_id)))).into_response();
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

/// Starts the server and runs it until SIGINT or SIGTERM, then lets running requests and streams
/// finish within `SHUTDOWN_GRACE_SECONDS`.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = crate::telemetry::install()?;
    let store = crate::store::open(&config.storage, config.retention).await?;
    if config.retention.0.is_some() {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                match store.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "deleted expired sessions and messages"),
                    Err(e) => tracing::warn!(error = %e, "purging expired items failed"),
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }
    let provider = Provider::from_config(&config.provider, config.llm_timeout).await;
    let settings = AgentSettings {
        system_prompt: config.system_prompt.clone(),
        history_max_messages: config.history_max_messages,
        session_idle: config.session_idle,
        llm_timeout: config.llm_timeout,
    };
    let storage = store.describe();
    let rate_limit = config.rate_limit_per_minute.and_then(access::TenantRateLimit::per_minute);
    if let Some(limit) = rate_limit.clone() {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                limit.forget_idle();
            }
        });
    }
    if let AuthConfig::None { exposed: true } = config.auth {
        tracing::warn!(
            "AUTH_MODE=none on {}: every request is trusted with the tenant it names; only run this behind a trusted gateway",
            config.host
        );
    }
    let mut tools = config.tools.build()?;
    if !config.tools.mcp_servers.is_empty() {
        tools = tools.with_mcp(crate::tools::McpServers::connect(&config.tools.mcp_servers).await);
    }
    let agent = Arc::new(Agent::with_tools(store, provider, settings, tools));
    let state = AppState {
        agent: agent.clone(),
        auth: Arc::new(Authenticator::from_config(&config.auth)),
        rate_limit,
        metrics_open: config.host.is_loopback(),
        metrics: Some(metrics),
        max_message_chars: config.max_message_chars,
    };
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
        max_concurrent_requests: config.max_concurrent_requests,
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.host, config.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "agent-server listening on http://{addr} (storage: {storage}; model provider: {}; auth: {})",
        config.provider.name(),
        config.auth.name(),
    );
    let app = app(state, limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // hyper directly, for the header read timeout that stops slowloris clients.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(config.header_read_timeout)
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(app.clone()),
                    );
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting up to {:?} for running requests", config.shutdown_grace);
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    tokio::select! {
        _ = &mut drained => {}
        _ = tokio::time::sleep(config.shutdown_grace) => {
            // Streams still running store what they have (marked interrupted) and end.
            tracing::warn!("shutdown deadline passed: interrupting running streams");
            agent.stop_streams();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut drained).await;
        }
    }
    tracing::info!("agent-server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
