//! Tenant agents: each tenant's agents as data (instructions, model, tool policy, business API,
//! history and summary settings), managed through `/agent/tenants/{tenantId}/agents` and picked
//! per turn. What is not set comes from the server's environment, so a deployment without agents
//! works as before. A business API key is write-only: it is stored, used for the agent's tool
//! calls, and never returned, logged or exported without `--include-secrets`.

pub mod directory;
pub mod manage;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::ApprovalPolicy;
use crate::ids::{AgentId, TenantId};
use crate::timestamp::Timestamp;

/// The model an agent uses; each field falls back to the server's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// `openai`, `bedrock` or `echo`: one the server has credentials for (or `echo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// 1 to 200,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// Which tools an agent may use, and which wait for approval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolsSpec {
    /// The business API's resource types the agent may touch (the server's `API_RESOURCE_TYPES` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_types: Option<Vec<String>>,
    /// `writes` (the default), `all` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Only these tools are offered (every tool when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// These tools are never offered, and a call to them is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// The business API an agent's tools call (the server's `API_SERVER_URL` when absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BusinessApiSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Write-only: sent as its API key. Left out on a replace, the stored key stays; `""` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistorySpec {
    /// Messages of history the model is given (0 to 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummarySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_messages: Option<usize>,
}

/// The body of `PUT /agent/tenants/{tenantId}/agents/{agentId}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The agent's instructions (required, 1 to 100,000 characters).
    pub system_prompt: String,
    /// The tenant's default agent: used by turns that name none. Setting it clears the previous one.
    #[serde(default)]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_api: Option<BusinessApiSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummarySpec>,
    /// What a turn does when its session already has a running turn: `queue`, `interrupt`,
    /// `parallel` or `reject` (the server's `TURN_CONCURRENCY` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<String>,
    /// How long a turn waits after the newest message of its session before it calls the model,
    /// so that a burst of messages becomes one turn (0 to 10000 ms; 0 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_ms: Option<u64>,
    /// Free JSON for the tenant's own use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// An agent as stored: its spec (with the key), version and times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAgent {
    pub tenant_id: TenantId,
    pub id: AgentId,
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub spec: AgentSpec,
}

impl StoredAgent {
    /// The agent as the API shows it: the key replaced by `keySet`.
    pub fn view(&self) -> Value {
        let mut body = serde_json::to_value(&self.spec).unwrap_or_else(|_| json!({}));
        if let Some(api) = body.get_mut("businessApi").and_then(Value::as_object_mut) {
            let set = api.remove("key").is_some();
            api.insert("keySet".into(), json!(set));
        }
        body["id"] = json!(self.id);
        body["version"] = json!(self.version);
        body["createdAt"] = json!(self.created_at);
        body["updatedAt"] = json!(self.updated_at);
        body
    }

    /// What an end user (a JWT) may know of an agent.
    pub fn public_view(&self) -> Value {
        json!({"id": self.id, "name": self.spec.name})
    }

    /// The business API key, if one is set.
    pub fn key(&self) -> Option<&str> {
        self.spec.business_api.as_ref().and_then(|b| b.key.as_deref()).filter(|k| !k.is_empty())
    }

    /// The agent without its business API key (an export without `--include-secrets`).
    pub fn without_key(mut self) -> Self {
        if let Some(api) = self.spec.business_api.as_mut() {
            api.key = None;
        }
        self
    }
}

/// A body error as an invalid field: the field it names (`serde_path_to_error`'s path, as axum
/// reports it, or the name in `unknown field` / `missing field`) and the message, starting with it.
pub fn body_error_field(text: &str) -> (String, String) {
    let detail = text.split_once("target type: ").map_or(text, |(_, d)| d);
    let quoted = |s: &str| s.split('`').nth(1).map(str::to_string);
    let field = match detail.split_once(": ") {
        Some((path, rest)) if path != "." && !path.contains(' ') => match quoted(rest) {
            Some(name) if rest.starts_with("unknown field") || rest.starts_with("missing field") => {
                format!("{path}.{name}")
            }
            _ => path.to_string(),
        },
        _ => quoted(detail).unwrap_or_default(),
    };
    let message = if detail.starts_with(&field) { detail.to_string() } else { format!("{field}: {detail}") };
    (field, message)
}

/// An invalid field: which, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError { field, message: message.into() }
}

/// What the server can give an agent: the model providers it has credentials for, and whether
/// tenant URLs may reach private addresses.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub providers: Vec<&'static str>,
    pub allow_private_urls: bool,
}

impl Capabilities {
    /// What a server configured with `provider` offers: that provider's kind, and `echo`.
    pub fn of(provider: &crate::config::ProviderConfig, allow_private_urls: bool) -> Self {
        use crate::config::ProviderConfig;
        let mut providers = vec!["echo"];
        match provider {
            ProviderConfig::OpenAi { .. } => providers.push("openai"),
            ProviderConfig::Bedrock { .. } => providers.push("bedrock"),
            ProviderConfig::Echo { .. } => {}
        }
        Capabilities { providers, allow_private_urls }
    }
}

impl AgentSpec {
    /// Checks every field, with the server's capabilities; the first invalid field.
    pub async fn validate(&self, can: &Capabilities) -> Result<(), FieldError> {
        let prompt = self.system_prompt.chars().count();
        if prompt == 0 || prompt > 100_000 {
            return Err(invalid("systemPrompt", "must be 1 to 100,000 characters"));
        }
        if let Some(name) = &self.name
            && (name.trim().is_empty() || name.chars().count() > 200)
        {
            return Err(invalid("name", "must be 1 to 200 characters"));
        }
        if let Some(model) = &self.model {
            if let Some(p) = &model.provider {
                if !["openai", "bedrock", "echo"].contains(&p.as_str()) {
                    return Err(invalid("model.provider", format!("{p:?} is not one of openai, bedrock, echo")));
                }
                if !can.providers.contains(&p.as_str()) {
                    return Err(invalid("model.provider", format!("{p} is not configured on this server")));
                }
            }
            if let Some(name) = &model.name
                && (name.is_empty() || name.len() > 200 || name.chars().any(char::is_control))
            {
                return Err(invalid("model.name", "must be 1 to 200 printable characters"));
            }
            if let Some(t) = model.temperature
                && !(0.0..=2.0).contains(&t)
            {
                return Err(invalid("model.temperature", "must be between 0 and 2"));
            }
            if let Some(m) = model.max_output_tokens
                && !(1..=200_000).contains(&m)
            {
                return Err(invalid("model.maxOutputTokens", "must be between 1 and 200000"));
            }
        }
        if let Some(tools) = &self.tools {
            if let Some(a) = &tools.approval
                && approval(a).is_none()
            {
                return Err(invalid("tools.approval", format!("{a:?} is not one of writes, all, none")));
            }
            let lists: [(&'static str, &[String]); 3] = [
                ("tools.allow", tools.allow.as_deref().unwrap_or_default()),
                ("tools.deny", &tools.deny),
                ("tools.resourceTypes", tools.resource_types.as_deref().unwrap_or_default()),
            ];
            for (field, names) in lists {
                if let Some(bad) =
                    names.iter().find(|n| n.is_empty() || n.len() > 100 || !n.bytes().all(|b| b.is_ascii_graphic()))
                {
                    return Err(invalid(field, format!("{bad:?} is not a tool or resource type name")));
                }
            }
        }
        if let Some(api) = &self.business_api {
            if let Some(url) = &api.url {
                crate::outbound::check_url(url, can.allow_private_urls)
                    .await
                    .map_err(|m| invalid("businessApi.url", m))?;
            }
            if let Some(key) = &api.key
                && (key.len() > 4096 || key.chars().any(char::is_control))
            {
                return Err(invalid("businessApi.key", "must be at most 4096 printable characters"));
            }
            if api.key.as_deref().is_some_and(|k| !k.is_empty()) && api.url.is_none() {
                return Err(invalid("businessApi.key", "is sent to businessApi.url: give the URL with the key"));
            }
        }
        if let Some(m) = self.history.as_ref().and_then(|h| h.max_messages)
            && m > 1000
        {
            return Err(invalid("history.maxMessages", "must be between 0 and 1000"));
        }
        if let Some(summary) = &self.summary {
            if summary.trigger_tokens.is_some_and(|t| !(100..=10_000_000).contains(&t)) {
                return Err(invalid("summary.triggerTokens", "must be between 100 and 10000000"));
            }
            if summary.keep_messages.is_some_and(|k| k > 1000) {
                return Err(invalid("summary.keepMessages", "must be between 0 and 1000"));
            }
        }
        if let Some(c) = &self.concurrency {
            crate::agent::Concurrency::parse(c).map_err(|m| invalid("concurrency", m))?;
        }
        if self.debounce_ms.is_some_and(|d| d > 10_000) {
            return Err(invalid("debounceMs", "must be between 0 and 10000"));
        }
        if let Some(metadata) = &self.metadata
            && serde_json::to_string(metadata).map_or(0, |s| s.len()) > 16 * 1024
        {
            return Err(invalid("metadata", "must be at most 16 KB of JSON"));
        }
        Ok(())
    }
}

/// `writes`, `all` or `none`.
pub fn approval(value: &str) -> Option<ApprovalPolicy> {
    match value {
        "writes" => Some(ApprovalPolicy::Writes),
        "all" => Some(ApprovalPolicy::All),
        "none" => Some(ApprovalPolicy::None),
        _ => None,
    }
}
