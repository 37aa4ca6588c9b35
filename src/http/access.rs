//! Who is calling (authentication), per-tenant rate limits and header limits. What a caller may
//! reach is decided in one place, the extractors of `extract`.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{RawPathParams, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{ApiError, AppState};
use crate::auth::{AuthFailure, Caller};

/// The longest header value we read, and all headers together.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_HEADERS_TOTAL_BYTES: usize = 32 * 1024;
/// The most headers a request may have, and the longest URI.
pub const MAX_HEADER_COUNT: usize = 100;
pub const MAX_URI_BYTES: usize = 16 * 1024;
/// What the HTTP parser itself accepts (past it, hyper answers without a body).
pub const PARSER_MAX_HEADERS: usize = 1024;
pub const PARSER_MAX_HEAD_BYTES: usize = 1024 * 1024;

/// Paths anyone may call.
fn is_open(path: &str) -> bool {
    // The providers' webhooks are checked by their signatures (`http::channels`).
    matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/console")
        || path.starts_with("/console/")
        || path.starts_with("/channels/")
}

fn unauthorized(failure: AuthFailure) -> Response {
    let (message, challenge) = match failure {
        AuthFailure::Missing => {
            ("authentication required: send Authorization: Bearer <credential>", "Bearer realm=\"agent-server\"")
        }
        AuthFailure::Invalid(why) => {
            tracing::info!(reason = %why, "credential refused");
            ("the credential is not valid", "Bearer realm=\"agent-server\", error=\"invalid_token\"")
        }
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

/// Authentication, before any handler runs: who is calling (a `Caller` in the request's
/// extensions). What that caller may reach is decided by the extractors of `extract`, against the
/// matched route's parameters.
pub async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if state.auth.is_none() || is_open(path) {
        return next.run(request).await;
    }
    if path == "/metrics" && state.metrics_open {
        return next.run(request).await;
    }
    let caller = match state.auth.authenticate(request.headers()).await {
        Ok(Some(caller)) => caller,
        Ok(None) => return next.run(request).await,
        Err(failure) => return unauthorized(failure),
    };
    if path == "/metrics" && !caller.admin {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this credential may not act for metrics (an admin credential is needed)",
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The slots for requests in progress (`MAX_CONCURRENT_REQUESTS`), and how long a request waits
/// for one (`REQUEST_QUEUE_TIMEOUT_MS`).
#[derive(Clone)]
pub struct RequestSlots {
    slots: Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

impl RequestSlots {
    pub fn new(slots: usize, wait: std::time::Duration) -> Self {
        Self { slots: Arc::new(tokio::sync::Semaphore::new(slots.min(tokio::sync::Semaphore::MAX_PERMITS))), wait }
    }
}

/// Holds a slot while the request is handled (a stream lets go once its response head is sent).
/// Health probes take none, so they answer however busy the server is; a request that cannot get
/// one in time is answered 503 with `Retry-After`, instead of waiting without end.
pub async fn request_slot(State(slots): State<RequestSlots>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let Ok(Ok(permit)) = tokio::time::timeout(slots.wait, slots.slots.clone().acquire_owned()).await else {
        metrics::counter!("http_requests_shed_total").increment(1);
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is handling MAX_CONCURRENT_REQUESTS requests and none ended in time; retry shortly",
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

/// Requests per minute per tenant.
pub struct TenantRateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl TenantRateLimit {
    pub fn per_minute(n: u32) -> Option<Arc<Self>> {
        let n = NonZeroU32::new(n)?;
        Some(Arc::new(Self { limiter: RateLimiter::keyed(Quota::per_minute(n)) }))
    }

    /// Forgets tenants that have not been seen for a while (run periodically).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// 429 with `Retry-After` once a tenant has used its requests for the minute. A route layer: it
/// runs after routing, so the tenant is the matched route's `{tenantId}` when the credential has
/// none of its own (an admin key) and no `x-tenant-id` names one.
pub async fn rate_limit(
    State(state): State<AppState>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limit) = &state.rate_limit else { return next.run(request).await };
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    // The credential's tenant when it has one (the extractors refuse a request naming another).
    let bound = request.extensions().get::<Caller>().and_then(|c| c.tenant.as_ref()).map(|t| t.to_string());
    let routed = || params.ok()?.iter().find(|(name, _)| *name == "tenantId").map(|(_, v)| v.to_string());
    let tenant = bound
        .or_else(|| request.headers().get("x-tenant-id").and_then(|v| v.to_str().ok()).map(str::to_string))
        .or_else(routed)
        .unwrap_or_default();
    if let Err(not_until) = limit.limiter.check_key(&tenant) {
        crate::telemetry::rate_limited();
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("this tenant sent more than RATE_LIMIT_PER_MINUTE requests; retry in {seconds} s"),
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return response;
    }
    next.run(request).await
}

/// 431 for a header value over 8 KB or headers over 32 KB in all.
pub async fn header_limits(request: Request, next: Next) -> Response {
    let uri = request.uri().to_string().len();
    if uri > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the URI is {uri} bytes; at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    if request.headers().len() > MAX_HEADER_COUNT {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            format!("{} headers; at most {MAX_HEADER_COUNT}", request.headers().len()),
        )
        .into_response();
    }
    let mut total = 0;
    for (name, value) in request.headers() {
        total += name.as_str().len() + value.len();
        if value.len() > MAX_HEADER_BYTES || total > MAX_HEADERS_TOTAL_BYTES {
            return ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
                format!("header {name} is too large: at most {MAX_HEADER_BYTES} bytes per header and {MAX_HEADERS_TOTAL_BYTES} in all"),
            )
            .into_response();
        }
    }
    next.run(request).await
}
