//! The one error type of the HTTP API. Every error is JSON:
//! `{"error": {"code": "snake_case", "message": "...", "requestId": "..."}}`.
//! Internal details go to the log under the request id, never to the client.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::agent::TurnError;
use crate::llm::ModelError;
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Fields added to the error object (a turn's id or status).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, retry_after: None }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The JSON body, with the request id when known.
    pub fn body(&self, request_id: Option<&str>) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        for (k, v) in self.details.iter().flatten() {
            error[k.as_str()] = v.clone();
        }
        if let Some(id) = request_id {
            error["requestId"] = json!(id);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body(None))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        // The request-id middleware finds the error here and adds the id to the body.
        response.extensions_mut().insert(self);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            StoreError::Invalid(m) => ApiError::bad_request("invalid_request", m),
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "storage unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", m)
            }
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "internal storage error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error; the request id identifies it in the server log",
                )
            }
        }
    }
}

impl ApiError {
    /// Adds a field to the error object.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.details.get_or_insert_with(Default::default).insert(key.to_string(), value);
        self
    }
}

impl From<TurnError> for ApiError {
    fn from(e: TurnError) -> Self {
        let status = match &e {
            TurnError::Store(e) => return e.clone().into(),
            TurnError::Model(ModelError::Failed(m)) => {
                tracing::warn!(error = %m, "model provider failed");
                StatusCode::BAD_GATEWAY
            }
            TurnError::Model(ModelError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            TurnError::AnsweredWith(f) if f.code == "model_timeout" => StatusCode::GATEWAY_TIMEOUT,
            TurnError::AnsweredWith(f) if f.code == "erased" => StatusCode::CONFLICT,
            TurnError::AnsweredWith(_) => StatusCode::BAD_GATEWAY,
            TurnError::InProgress(_) | TurnError::Erased | TurnError::Ended(_) => StatusCode::CONFLICT,
            TurnError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            TurnError::Gone => StatusCode::GONE,
            TurnError::AgentNotFound(_) => StatusCode::NOT_FOUND,
            TurnError::AgentMismatch(_) | TurnError::TurnInProgress(_) => StatusCode::CONFLICT,
            TurnError::BudgetExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        let error = ApiError::new(status, e.code(), e.public_message());
        match e {
            TurnError::InProgress(turn) | TurnError::TurnInProgress(turn) => error.with("turnId", json!(turn)),
            TurnError::Ended(s) => error.with("status", json!(s)),
            TurnError::AgentNotFound(id) => error.with("agentId", json!(id)),
            TurnError::AgentMismatch(id) => error.with("sessionAgentId", json!(id)),
            TurnError::BudgetExceeded(over) => {
                let mut error = error;
                for (k, v) in over.details().as_object().into_iter().flatten() {
                    error = error.with(k, v.clone());
                }
                error.retry_after = Some(over.retry_after);
                error
            }
            _ => error,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON with Content-Type: application/json",
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("invalid_json", e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
            other => ApiError::bad_request("invalid_body", other.body_text()),
        }
    }
}

pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than MAX_BODY_BYTES allows",
    )
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}
