//! Who is calling: `AUTH_MODE=none` (trusted headers, loopback only unless explicitly allowed),
//! `api-key` or `jwt`. With a credential, the tenant comes from the credential.

pub mod api_keys;
mod jwt;

use axum::http::HeaderMap;

use crate::config::AuthConfig;
use crate::ids::{TenantId, UserId};

pub use api_keys::ApiKeys;
pub use jwt::JwtVerifier;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The one tenant the caller may act for; `None` for admin keys (all tenants).
    pub tenant: Option<TenantId>,
    /// The user a token is bound to (JWT), if any.
    pub user: Option<UserId>,
    pub admin: bool,
    /// For the log: a key's name or id, or `jwt:<user>`. Never the secret.
    pub name: String,
}

/// Why a request has no caller.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A credential that is not valid; the reason is for the log only.
    Invalid(String),
}

/// The configured way of authenticating requests.
pub enum Authenticator {
    None,
    ApiKeys(ApiKeys),
    Jwt(JwtVerifier),
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Self {
        match config {
            AuthConfig::None { .. } => Authenticator::None,
            AuthConfig::ApiKey { keys_file } => Authenticator::ApiKeys(ApiKeys::new(keys_file.clone())),
            AuthConfig::Jwt(jwt) => Authenticator::Jwt(JwtVerifier::new(jwt.clone())),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Authenticator::None)
    }

    /// The caller of a request; `Ok(None)` in `AUTH_MODE=none`, where headers are trusted.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Caller>, AuthFailure> {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        match self {
            Authenticator::None => Ok(None),
            Authenticator::ApiKeys(keys) => {
                let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
                let key = key.ok_or(AuthFailure::Missing)?;
                keys.verify(key).map(Some).ok_or_else(|| AuthFailure::Invalid("unknown or revoked API key".into()))
            }
            Authenticator::Jwt(verifier) => {
                let token = bearer.ok_or(AuthFailure::Missing)?;
                verifier.verify(token).await.map(Some).map_err(AuthFailure::Invalid)
            }
        }
    }
}
