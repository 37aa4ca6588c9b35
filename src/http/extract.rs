//! What handlers take from a request, parsed once: the caller's scope, the ids in the path and the
//! headers, and the `Idempotency-Key`. Each extractor answers a bad value with a 400 naming it.

use axum::extract::{FromRequestParts, Path};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::Deserialize;

use super::ApiError;
use crate::auth::Caller;
use crate::ids::{IdError, IdempotencyKey, LocationId, MessageId, SessionId, TenantId, UserId};
use crate::store::Session;

/// Who is calling, as `access::authorize` established it: with a credential, the user it is bound
/// to (a JWT) and whether it is an admin key; with `AUTH_MODE=none`, nobody in particular.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    caller: Option<Caller>,
}

impl Scope {
    /// The user a credential is bound to: such a caller sees and acts on that user's data only.
    pub fn bound_user(&self) -> Option<&UserId> {
        self.caller.as_ref().and_then(|c| c.user.as_ref())
    }

    /// Whether the caller may see this session (every session of the tenant, unless bound to a user).
    pub fn sees(&self, session: &Session) -> bool {
        self.bound_user().is_none_or(|u| &session.user_id == u)
    }

    fn tenant(&self) -> Option<&TenantId> {
        self.caller.as_ref().and_then(|c| c.tenant.as_ref())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Scope { caller: parts.extensions.get::<Caller>().cloned() })
    }
}

/// The identity of a turn, from `x-tenant-id`, `x-user-id` and `x-location-id`. A credential's own
/// tenant and user stand in for headers left out (`access::authorize` has refused any that differ).
#[derive(Debug, Clone)]
pub struct TurnIdentity {
    pub tenant: TenantId,
    pub user: UserId,
    pub location: Option<LocationId>,
}

impl<S: Send + Sync> FromRequestParts<S> for TurnIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let scope = Scope::from_request_parts(parts, state).await.unwrap_or_default();
        let headers = &parts.headers;
        let tenant = header_id(headers, "x-tenant-id", TenantId::parse)?.or_else(|| scope.tenant().cloned());
        let user = header_id(headers, "x-user-id", UserId::parse)?.or_else(|| scope.bound_user().cloned());
        Ok(TurnIdentity {
            tenant: tenant.ok_or_else(|| missing_header("x-tenant-id"))?,
            user: user.ok_or_else(|| missing_header("x-user-id"))?,
            location: header_id(headers, "x-location-id", LocationId::parse)?,
        })
    }
}

fn missing_header(name: &str) -> ApiError {
    ApiError::bad_request("missing_header", format!("the {name} header is required"))
}

/// Reads an id header; `Ok(None)` when absent.
fn header_id<T>(
    headers: &HeaderMap,
    name: &str,
    parse: fn(String) -> Result<T, IdError>,
) -> Result<Option<T>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::bad_request(
            "invalid_header",
            format!("{name}: must contain only printable characters without spaces"),
        )
    })?;
    parse(text.to_string()).map(Some).map_err(|e| ApiError::bad_request("invalid_header", format!("{name}: {e}")))
}

/// The optional `Idempotency-Key` of a request.
pub struct Idempotency(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Idempotency(None));
        };
        value
            .to_str()
            .ok()
            .and_then(IdempotencyKey::parse)
            .map(|k| Idempotency(Some(k)))
            .ok_or_else(|| ApiError::bad_request("invalid_header", "Idempotency-Key: 1 to 255 printable characters"))
    }
}

/// What a path segment can be parsed into.
trait Segment: Sized {
    fn parse_segment(raw: String) -> Result<Self, IdError>;
}

macro_rules! id_segments {
    ($($ty:ty),+) => {
        $(impl Segment for $ty {
            fn parse_segment(raw: String) -> Result<Self, IdError> {
                <$ty>::parse(raw)
            }
        })+
    };
}
id_segments!(TenantId, UserId, SessionId, MessageId);

/// An action id is the server's own (checked when it is looked up).
impl Segment for String {
    fn parse_segment(raw: String) -> Result<Self, IdError> {
        Ok(raw)
    }
}

/// Parses one path segment, naming it in the error.
fn path_id<T: Segment>(name: &str, raw: String) -> Result<T, ApiError> {
    T::parse_segment(raw).map_err(|e| ApiError::bad_request("invalid_path", format!("{name}: {e}")))
}

/// Declares a path extractor whose segments are parsed into ids by name.
macro_rules! path_extractor {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty = $param:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name { $(pub $field: $ty),+ }

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
                #[derive(Deserialize)]
                struct Raw { $(#[serde(rename = $param)] $field: String),+ }
                let Path(raw) = Path::<Raw>::from_request_parts(parts, state).await?;
                Ok($name { $($field: path_id::<$ty>($param, raw.$field)?),+ })
            }
        }
    };
}

path_extractor!(
    /// `/agent/conversations/{tenantId}/...`
    TenantPath { tenant: TenantId = "tenantId" }
);
path_extractor!(
    /// `/agent/conversations/{tenantId}/users/{userId}`
    UserPath { tenant: TenantId = "tenantId", user: UserId = "userId" }
);
path_extractor!(
    /// `/agent/conversations/{tenantId}/sessions/{sessionId}/...`
    SessionPath { tenant: TenantId = "tenantId", session: SessionId = "sessionId" }
);

path_extractor!(
    /// `/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/...`
    ActionPath { tenant: TenantId = "tenantId", session: SessionId = "sessionId", action: String = "actionId" }
);
path_extractor!(
    /// `/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/...`
    TurnPath { tenant: TenantId = "tenantId", session: SessionId = "sessionId", turn: MessageId = "turnId" }
);
