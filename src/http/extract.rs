//! What handlers take from a request, parsed once: the caller's scope, the ids in the path and the
//! headers, and the `Idempotency-Key`. Each extractor answers a bad value with a 400 naming it.
//!
//! This is also the one place that decides what a credential may reach. `access::authorize` only
//! establishes who is calling; every extractor that names a tenant or a user (the matched route's
//! parameters, or a turn's headers) checks them against the credential with one rule:
//! - a tenant-bound credential (a tenant's API key, a JWT) acts for its own tenant only;
//! - a user-bound credential (a JWT) reaches its own user's routes and sessions only: a route of
//!   the tenant's data of every user ([`TenantWidePath`]) is refused, a user route must name its
//!   user, and a session of another user answers 404 as if it did not exist ([`Scope::sees`]);
//! - admin keys reach every tenant; `AUTH_MODE=none` trusts the request.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::ApiError;
use crate::auth::Caller;
use crate::ids::{AgentId, ChannelId, IdError, IdempotencyKey, LocationId, MessageId, SessionId, TenantId, UserId};
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

    /// Whether the caller may manage the tenant's configuration (its agents): API keys of the
    /// tenant, admin keys, or `AUTH_MODE=none`; not an end user's credential.
    pub fn manages(&self) -> Result<(), ApiError> {
        match self.bound_user() {
            Some(_) => Err(forbidden("the tenant's configuration")),
            None => Ok(()),
        }
    }

    /// Whether the caller may set what only the operator sets (a tenant's budgets): admin keys, or
    /// `AUTH_MODE=none`.
    pub fn administers(&self) -> Result<(), ApiError> {
        match &self.caller {
            Some(c) if !c.admin => Err(forbidden("the tenant's budgets (an admin key is needed)")),
            _ => Ok(()),
        }
    }

    fn tenant(&self) -> Option<&TenantId> {
        self.caller.as_ref().and_then(|c| c.tenant.as_ref())
    }

    /// The rule above, for a route that names `tenant` and reaches `reach`.
    fn authorize(&self, tenant: &TenantId, reach: Reach<'_>) -> Result<(), ApiError> {
        if self.tenant().is_some_and(|own| own != tenant) {
            // Another tenant's agents do not exist for this caller.
            if let Reach::Agents = reach {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "agent_not_found", "this tenant has no such agent"));
            }
            return Err(forbidden("the tenant in the path"));
        }
        match (self.bound_user(), reach) {
            (Some(_), Reach::TenantWide) => Err(forbidden("the tenant's data of every user")),
            (Some(own), Reach::User(named)) if own != named => Err(forbidden("the user in the path")),
            _ => Ok(()),
        }
    }
}

/// What a route reaches, for [`Scope::authorize`].
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// Data of every user of the tenant (its message list, its search, its change events).
    TenantWide,
    /// One user's data.
    User(&'a UserId),
    /// One session: its owner is checked when it is read ([`Scope::sees`]).
    Session,
    /// The tenant's agents: a user-bound credential reads their ids and names only, and changes
    /// nothing ([`Scope::manages`]).
    Agents,
}

fn forbidden(what: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this credential may not act for {what}"))
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
        identity_of(&scope, &parts.headers, None)
    }
}

/// A turn's identity from the headers and the credential (see [`TurnIdentity`]), with a user named
/// elsewhere (an OpenAI request's `safety_identifier`) when neither names one.
pub fn identity_of(scope: &Scope, headers: &HeaderMap, fallback_user: Option<&str>) -> Result<TurnIdentity, ApiError> {
    {
        let named_tenant = header_id(headers, "x-tenant-id", TenantId::parse)?;
        let named_user = header_id(headers, "x-user-id", UserId::parse)?;
        if let (Some(own), Some(named)) = (scope.tenant(), &named_tenant)
            && own != named
        {
            return Err(forbidden("the tenant in x-tenant-id"));
        }
        if let (Some(own), Some(named)) = (scope.bound_user(), &named_user)
            && own != named
        {
            return Err(forbidden("the user in x-user-id"));
        }
        let tenant = named_tenant.or_else(|| scope.tenant().cloned());
        let user = match named_user.or_else(|| scope.bound_user().cloned()) {
            Some(user) => Some(user),
            None => fallback_user
                .map(|u| UserId::parse(u).map_err(|e| ApiError::bad_request("invalid_body", format!("user: {e}"))))
                .transpose()?,
        };
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
id_segments!(TenantId, UserId, SessionId, MessageId, AgentId, ChannelId);

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

/// Declares a path extractor whose segments are parsed into ids by name, and which authorizes the
/// caller for the tenant it names and what it reaches ([`Scope::authorize`]).
macro_rules! path_extractor {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty = $param:literal),+ $(,)? } reaches |$p:ident| $reach:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name { $(pub $field: $ty),+ }

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
                #[derive(Deserialize)]
                struct Raw { $(#[serde(rename = $param)] $field: String),+ }
                let Path(raw) = Path::<Raw>::from_request_parts(parts, state).await?;
                let $p = $name { $($field: path_id::<$ty>($param, raw.$field)?),+ };
                let scope = Scope::from_request_parts(parts, state).await.unwrap_or_default();
                scope.authorize(&$p.tenant, $reach)?;
                Ok($p)
            }
        }
    };
}

path_extractor!(
    /// `/agent/conversations/{tenantId}/messages`, `.../search`, `/agent/events/{tenantId}`: the
    /// tenant's data of every user.
    TenantWidePath { tenant: TenantId = "tenantId" } reaches |p| Reach::TenantWide
);
path_extractor!(
    /// `/agent/conversations/{tenantId}/users/{userId}`
    UserPath { tenant: TenantId = "tenantId", user: UserId = "userId" } reaches |p| Reach::User(&p.user)
);
path_extractor!(
    /// `/agent/conversations/{tenantId}/sessions/{sessionId}/...`
    SessionPath { tenant: TenantId = "tenantId", session: SessionId = "sessionId" } reaches |p| Reach::Session
);

path_extractor!(
    /// `/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/...`
    ActionPath { tenant: TenantId = "tenantId", session: SessionId = "sessionId", action: String = "actionId" }
        reaches |p| Reach::Session
);
path_extractor!(
    /// `/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/...`
    TurnPath { tenant: TenantId = "tenantId", session: SessionId = "sessionId", turn: MessageId = "turnId" }
        reaches |p| Reach::Session
);

path_extractor!(
    /// `/agent/tenants/{tenantId}/agents`
    AgentsPath { tenant: TenantId = "tenantId" } reaches |p| Reach::Agents
);
path_extractor!(
    /// `/agent/tenants/{tenantId}/agents/{agentId}`
    AgentPath { tenant: TenantId = "tenantId", agent: AgentId = "agentId" } reaches |p| Reach::Agents
);

path_extractor!(
    /// `/agent/tenants/{tenantId}/channels`: the tenant's configuration (not for an end user).
    ChannelsPath { tenant: TenantId = "tenantId" } reaches |p| Reach::TenantWide
);
path_extractor!(
    /// `/agent/tenants/{tenantId}/channels/{channelId}`
    ChannelPath { tenant: TenantId = "tenantId", channel: ChannelId = "channelId" } reaches |p| Reach::TenantWide
);
