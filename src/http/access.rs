//! Who may do what: authentication, the tenant check, per-tenant rate limits and header limits.
//! This is the one place where a request's tenant is decided.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
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
    matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/console") || path.starts_with("/console/")
}

/// The `{tenantId}` of `/agent/conversations/{tenantId}/...`, percent-decoded as the router does.
fn path_tenant(path: &str) -> Option<String> {
    let rest = conversations_path(path).or_else(|| path.strip_prefix("/agent/events/"))?;
    let segment = rest.split('/').next()?;
    Some(percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
}

/// What follows `/agent/conversations/` (or `/conversations/`, the original server's aliases).
fn conversations_path(path: &str) -> Option<&str> {
    path.strip_prefix("/agent/conversations/").or_else(|| path.strip_prefix("/conversations/"))
}

/// The `{userId}` of `/agent/conversations/{tenantId}/users/{userId}`.
fn path_user(path: &str) -> Option<String> {
    let mut parts = conversations_path(path)?.split('/');
    parts.next()?;
    (parts.next()? == "users").then_some(())?;
    let segment = parts.next()?;
    Some(percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
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

fn forbidden(what: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this credential may not act for {what}"))
}

/// Checks a caller against the tenant and user a request names in its headers and path. Headers
/// left out are not filled in here: `extract::TurnIdentity` takes the credential's own instead.
fn bind(caller: &Caller, request: &Request) -> Result<(), ApiError> {
    let path = request.uri().path();
    let headers = request.headers();
    if let Some(tenant) = &caller.tenant {
        if headers.get("x-tenant-id").is_some_and(|named| named.as_bytes() != tenant.as_str().as_bytes()) {
            return Err(forbidden("the tenant in x-tenant-id"));
        }
        if path_tenant(path).is_some_and(|t| t != tenant.as_str()) {
            return Err(forbidden("the tenant in the path"));
        }
    }
    if let Some(user) = &caller.user {
        if headers.get("x-user-id").is_some_and(|named| named.as_bytes() != user.as_str().as_bytes()) {
            return Err(forbidden("the user in x-user-id"));
        }
        if path_user(path).is_some_and(|u| u != user.as_str()) {
            return Err(forbidden("the user in the path"));
        }
        // The tenant's change events are for tenant credentials, not one user's.
        if path.starts_with("/agent/events/") {
            return Err(forbidden("the tenant's change events"));
        }
        // The tenant-wide message list is for tenant credentials, not one user's.
        if path_tenant(path).is_some()
            && path.trim_end_matches('/').ends_with("/messages")
            && !path.contains("/sessions/")
        {
            return Err(forbidden("the tenant's messages of every user"));
        }
    }
    Ok(())
}

/// Authentication and the tenant check, before any handler runs.
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
        return forbidden("metrics (an admin credential is needed)").into_response();
    }
    if let Err(error) = bind(&caller, &request) {
        return error.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
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

/// 429 with `Retry-After` once a tenant has used its requests for the minute.
pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(limit) = &state.rate_limit else { return next.run(request).await };
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    // The credential's tenant when it has one (headers and path were checked against it).
    let bound = request.extensions().get::<Caller>().and_then(|c| c.tenant.as_ref()).map(|t| t.to_string());
    let tenant = bound
        .or_else(|| request.headers().get("x-tenant-id").and_then(|v| v.to_str().ok()).map(str::to_string))
        .or_else(|| path_tenant(request.uri().path()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_decoded_like_the_router_does() {
        assert_eq!(path_tenant("/agent/conversations/acme/users/u1").as_deref(), Some("acme"));
        assert_eq!(path_tenant("/agent/conversations/ac%6De/messages").as_deref(), Some("acme"));
        assert_eq!(path_tenant("/agent/process"), None);
        assert_eq!(path_user("/agent/conversations/acme/users/u%31").as_deref(), Some("u1"));
        assert_eq!(path_user("/agent/conversations/acme/sessions/s1"), None);
    }
}
