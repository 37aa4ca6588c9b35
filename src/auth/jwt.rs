//! JWT bearer tokens, verified with `JWT_SECRET` (HS256) or the keys at `JWT_JWKS_URL` (cached,
//! fetched again when a token names an unknown `kid`). `exp` and `nbf` are always enforced, `iss` and
//! `aud` when configured. The algorithm comes from our key, never from the token, so `alg: none` and
//! algorithm confusion (an HS256 token "signed" with a public key) are refused.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use super::Caller;
use crate::config::JwtConfig;
use crate::ids::{TenantId, UserId};

/// The shortest time between two fetches of the JWKS caused by unknown `kid`s.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(1);

pub struct JwtVerifier {
    config: JwtConfig,
    http: reqwest::Client,
    jwks: RwLock<(Option<Instant>, JwkSet)>,
    /// One refresh at a time: concurrent tokens with a new `kid` wait for it instead of each fetching.
    refresh: tokio::sync::Mutex<()>,
}

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Self {
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client with default TLS");
        Self {
            config,
            http,
            jwks: RwLock::new((None, JwkSet { keys: Vec::new() })),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.validate_nbf = true;
        v.leeway = 30;
        // A configured issuer or audience must be present in the token, not only match when present.
        let mut required = vec!["exp"];
        required.extend(self.config.issuer.as_ref().map(|_| "iss"));
        required.extend(self.config.audience.as_ref().map(|_| "aud"));
        v.set_required_spec_claims(&required);
        match &self.config.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.config.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }

    async fn fetch_jwks(&self, url: &str) -> Result<(), String> {
        let set: JwkSet = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("cannot fetch JWT_JWKS_URL: {}", e.without_url()))?
            .json()
            .await
            .map_err(|e| format!("JWT_JWKS_URL is not a JWK set: {}", e.without_url()))?;
        *self.jwks.write().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), set);
        Ok(())
    }

    fn find_key(&self, kid: Option<&str>) -> Option<Jwk> {
        let jwks = self.jwks.read().unwrap_or_else(|p| p.into_inner());
        jwks.1.keys.iter().find(|k| kid.is_none() || k.common.key_id.as_deref() == kid).cloned()
    }

    /// The caller a token names, or why it is refused (for the log; the client gets a plain 401).
    pub async fn verify(&self, token: &str) -> Result<Caller, String> {
        let header = decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let (key, alg) = if let Some(secret) = &self.config.secret {
            (DecodingKey::from_secret(secret.expose().as_bytes()), Algorithm::HS256)
        } else if let Some(url) = &self.config.jwks_url {
            let kid = header.kid.as_deref();
            let mut jwk = self.find_key(kid);
            let _one_at_a_time = match jwk {
                Some(_) => None,
                // Another request may have refreshed while this one waited.
                None => Some(self.refresh.lock().await),
            };
            if jwk.is_none() {
                jwk = self.find_key(kid);
            }
            if jwk.is_none() {
                let stale = self
                    .jwks
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .is_none_or(|t| t.elapsed() >= JWKS_REFETCH_INTERVAL);
                if stale {
                    self.fetch_jwks(url).await?;
                    jwk = self.find_key(kid);
                }
            }
            let jwk = jwk.ok_or_else(|| format!("no key with kid {kid:?} in JWT_JWKS_URL"))?;
            let alg = jwk_algorithm(&jwk).ok_or("the JWK has no usable algorithm")?;
            (DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable JWK: {e}"))?, alg)
        } else {
            return Err("no JWT key configured".into());
        };
        if header.alg != alg {
            return Err(format!("token algorithm {:?} does not match the key's {alg:?}", header.alg));
        }
        let data = decode::<Value>(token, &key, &self.validation(alg)).map_err(|e| format!("invalid token: {e}"))?;
        let claim = |name: &str| data.claims.get(name).and_then(Value::as_str).map(str::to_string);
        let tenant = claim(&self.config.tenant_claim)
            .ok_or_else(|| format!("the token has no {} claim", self.config.tenant_claim))
            .and_then(|t| TenantId::parse(t).map_err(|e| format!("tenant claim: {e}")))?;
        let user = claim(&self.config.user_claim)
            .ok_or_else(|| format!("the token has no {} claim", self.config.user_claim))
            .and_then(|u| UserId::parse(u).map_err(|e| format!("user claim: {e}")))?;
        Ok(Caller { name: format!("jwt:{user}"), tenant: Some(tenant), user: Some(user), admin: false })
    }
}

/// The algorithm a JWK is for: its `alg`, or the usual one for its key type.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    if let Some(alg) = jwk.common.key_algorithm {
        return match alg {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            _ => None,
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}
