//! Webhook endpoints from the configuration: `WEBHOOK_URL` with `WEBHOOK_SECRET`, and `WEBHOOKS_FILE`
//! (YAML or JSON) for several, each with its URL, secrets, event types and, optionally, tenants.

use std::path::Path;

use serde::Deserialize;

use super::EventType;
use super::signature::SigningKey;
use crate::config::EventsConfig;
use crate::ids::TenantId;

/// Where events are delivered.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Names the endpoint in the outbox, metrics and logs: given in the file, else derived from the URL.
    pub id: String,
    pub url: reqwest::Url,
    /// The first signs; a second one is kept while a secret rotates.
    pub keys: Vec<SigningKey>,
    /// The event types it receives (`turn.*` matches a family); every type when `None`.
    pub types: Option<Vec<String>>,
    /// The tenants whose events it receives; every tenant when `None`.
    pub tenants: Option<Vec<String>>,
}

impl Endpoint {
    pub fn wants(&self, tenant: &TenantId, kind: EventType) -> bool {
        let tenant_ok = self.tenants.as_ref().is_none_or(|list| list.iter().any(|t| t == tenant.as_str()));
        tenant_ok && self.types.as_ref().is_none_or(|list| list.iter().any(|pattern| kind.matches(pattern)))
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileSpec {
    Object { endpoints: Vec<EndpointSpec> },
    List(Vec<EndpointSpec>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    id: Option<String>,
    url: String,
    secret: Option<String>,
    secrets: Option<Vec<String>>,
    events: Option<Vec<String>>,
    tenants: Option<Vec<String>>,
}

/// A short stable id for an endpoint without one: from its URL.
fn derived_id(url: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
    let hex: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("ep_{hex}")
}

fn endpoint(spec: EndpointSpec, allow_private: bool) -> Result<Endpoint, String> {
    let url =
        reqwest::Url::parse(&spec.url).map_err(|e| format!("{:?} is not a URL: {e}", crate::redact::url(&spec.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{} is not an http(s) URL", crate::redact::url(&spec.url)));
    }
    if !allow_private
        && let Some(ip) = crate::outbound::literal_ip(&url)
        && !crate::outbound::is_public(ip)
    {
        return Err(format!(
            "{} is a loopback, private or link-local address (set WEBHOOK_ALLOW_PRIVATE=true to allow it)",
            crate::redact::url(&spec.url)
        ));
    }
    let secrets: Vec<String> = spec.secrets.unwrap_or_default().into_iter().chain(spec.secret).collect();
    if secrets.is_empty() || secrets.len() > 2 {
        return Err(format!("{}: give one secret (or two while rotating)", crate::redact::url(&spec.url)));
    }
    let keys = secrets
        .iter()
        .map(|s| SigningKey::parse(s).map_err(|e| format!("{}: {e}", crate::redact::url(&spec.url))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(types) = &spec.events {
        for t in types {
            if !EventType::ALL.iter().any(|k| k.matches(t)) {
                return Err(format!(
                    "{}: {t:?} is not an event type (see docs/events.md)",
                    crate::redact::url(&spec.url)
                ));
            }
        }
    }
    if let Some(id) = &spec.id
        && (id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        return Err(format!("endpoint id {id:?}: 1-64 of a-z A-Z 0-9 - _ ."));
    }
    Ok(Endpoint {
        id: spec.id.unwrap_or_else(|| derived_id(url.as_str())),
        url,
        keys,
        types: spec.events,
        tenants: spec.tenants,
    })
}

/// The configured endpoints; an error names what is wrong.
pub fn load(config: &EventsConfig) -> Result<Vec<Endpoint>, String> {
    let mut specs = Vec::new();
    if let (Some(url), Some(secret)) = (&config.webhook_url, &config.webhook_secret) {
        // WEBHOOK_SECRET may hold two secrets, space-separated, while one rotates.
        let secrets = secret.expose().split_whitespace().map(str::to_string).collect();
        specs.push((
            "WEBHOOK_URL",
            EndpointSpec {
                id: None,
                url: url.clone(),
                secret: None,
                secrets: Some(secrets),
                events: None,
                tenants: None,
            },
        ));
    }
    if let Some(path) = &config.webhooks_file {
        for spec in read_file(path)? {
            specs.push(("WEBHOOKS_FILE", spec));
        }
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (source, spec) in specs {
        let e = endpoint(spec, config.allow_private).map_err(|e| format!("{source}: {e}"))?;
        if endpoints.iter().any(|other| other.id == e.id) {
            return Err(format!("{source}: two endpoints have the id {}", e.id));
        }
        endpoints.push(e);
    }
    Ok(endpoints)
}

fn read_file(path: &Path) -> Result<Vec<EndpointSpec>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("WEBHOOKS_FILE: cannot read {}: {e}", path.display()))?;
    // YAML is a superset of JSON: one parser reads both.
    let spec: FileSpec =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("WEBHOOKS_FILE: {} is not valid: {e}", path.display()))?;
    Ok(match spec {
        FileSpec::Object { endpoints } | FileSpec::List(endpoints) => endpoints,
    })
}
