//! Configuration from the environment (and a `.env` file in the working directory), with the
//! variable names of the original server's DynamoDB guide (docs/origin.md). Invalid values stop the
//! process at start with one line naming the variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_SESSIONS_TABLE: &str = "ai-agent-sessions";
pub const DEFAULT_MESSAGES_TABLE: &str = "ai-agent-messages";
pub const DEFAULT_SQLITE_PATH: &str = "./data/agent-server.db";
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant for a business with several locations. \
Answer the user's questions clearly and briefly, use the context you are given, and say so when you do not know.";

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { var, reason: reason.into() }
}

/// Where conversations are kept.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    Sqlite { path: PathBuf },
    DynamoDb { sessions_table: String, messages_table: String },
}

/// A secret value: shown as `***` in debug output, so it cannot reach a log by accident.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How JWTs are verified.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    pub secret: Option<Secret>,
    pub jwks_url: Option<String>,
    pub tenant_claim: String,
    pub user_claim: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// How requests are authenticated (`AUTH_MODE`).
#[derive(Debug, Clone, PartialEq)]
pub enum AuthConfig {
    /// Headers are trusted; `exposed` when explicitly allowed on a non-loopback address.
    None {
        exposed: bool,
    },
    ApiKey {
        keys_file: PathBuf,
    },
    Jwt(JwtConfig),
}

impl AuthConfig {
    pub fn name(&self) -> &'static str {
        match self {
            AuthConfig::None { .. } => "none",
            AuthConfig::ApiKey { .. } => "api-key",
            AuthConfig::Jwt(_) => "jwt",
        }
    }
}

/// Which model answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    Echo { chunk_delay: Duration },
    OpenAi { api_key: Option<Secret>, base_url: String, model: String },
    Bedrock { model: String },
}

impl ProviderConfig {
    pub fn name(&self) -> String {
        match self {
            ProviderConfig::Echo { .. } => "echo".into(),
            ProviderConfig::OpenAi { model, base_url, .. } => {
                format!("openai ({model} at {})", crate::redact::url(base_url))
            }
            ProviderConfig::Bedrock { model } => format!("bedrock ({model})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub storage: StorageConfig,
    pub sessions_table: String,
    pub messages_table: String,
    pub host: IpAddr,
    pub port: u16,
    pub provider: ProviderConfig,
    pub system_prompt: String,
    pub history_max_messages: usize,
    pub session_idle: Duration,
    /// `TURN_EVENTS_TTL_HOURS`: how long a turn's events can be replayed.
    pub turn_events_ttl: Duration,
    pub max_body_bytes: usize,
    pub max_message_chars: usize,
    pub llm_timeout: Duration,
    /// `ERASURE_SWEEP_DELAY_SECONDS`: when an erasure's second pass runs; `None`: once the longest
    /// turn has surely ended.
    pub erasure_sweep_delay: Option<Duration>,
    /// `TURN_CONCURRENCY`: `queue` (the default), `interrupt`, `parallel` or `reject`.
    pub turn_concurrency: crate::agent::Concurrency,
    /// `USAGE`: whether model calls are counted (and budgets enforced); on by default.
    pub usage: bool,
    /// The price table: the built-in one with `MODEL_PRICES_FILE` over it.
    pub prices: crate::usage::Prices,
    pub auth: AuthConfig,
    pub api_keys_file: PathBuf,
    /// Requests per minute per tenant; `None` is unlimited.
    pub rate_limit_per_minute: Option<u32>,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_concurrent_requests: usize,
    /// `REQUEST_QUEUE_TIMEOUT_MS`: how long a request waits for one of those slots before a 503.
    pub request_queue_timeout: Duration,
    /// `MAX_CONCURRENT_STREAMS`: open event streams (each holds its slot until it ends).
    pub max_concurrent_streams: usize,
    pub shutdown_grace: Duration,
    /// `MESSAGE_TTL_DAYS`: how long sessions and messages are kept after their last write.
    pub retention: crate::store::Retention,
    pub tools: ToolsConfig,
    pub events: EventsConfig,
    pub summary: SummaryConfig,
    pub search: SearchConfig,
    /// `CONSOLE`: whether the web console is served at `/console/` (on by default).
    pub console: bool,
    /// `WHATSAPP_API_BASE_URL`, `WHATSAPP_API_VERSION`, `TWILIO_API_BASE_URL`, `PUBLIC_BASE_URL`.
    pub channels: crate::channels::ChannelsConfig,
}

/// How messages are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchConfig {
    /// `SEARCH_BACKEND`: `sqlite-fts5` (SQLite's default) or `scan` (DynamoDB's, and the only choice there).
    pub scan: bool,
    /// `SEARCH_MAX_ITEMS`: the most messages a scan reads for one request.
    pub max_items: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig { scan: false, max_items: 2000 }
    }
}

/// Context summaries of long sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryConfig {
    /// `CONTEXT_SUMMARY_TRIGGER_TOKENS`: summaries are written once a session's history passes it.
    pub trigger_tokens: Option<u64>,
    /// `CONTEXT_SUMMARY_KEEP_MESSAGES`: the newest messages left verbatim.
    pub keep_messages: usize,
    /// `CONTEXT_SUMMARY_MODEL`: the model that writes them (the provider's own model when unset).
    pub model: Option<String>,
}

impl ProviderConfig {
    /// The same provider with another model (the echo provider has none).
    pub fn with_model(&self, model: &str) -> ProviderConfig {
        match self {
            ProviderConfig::Echo { chunk_delay } => ProviderConfig::Echo { chunk_delay: *chunk_delay },
            ProviderConfig::OpenAi { api_key, base_url, .. } => {
                ProviderConfig::OpenAi { api_key: api_key.clone(), base_url: base_url.clone(), model: model.into() }
            }
            ProviderConfig::Bedrock { .. } => ProviderConfig::Bedrock { model: model.into() },
        }
    }
}

/// Change events and their webhooks.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// `EVENTS`: whether changes are recorded as events (on by default when a webhook is configured).
    pub enabled: bool,
    /// `EVENTS_RETENTION_DAYS`: how long the feed keeps an event.
    pub retention: Duration,
    /// `WEBHOOK_PAYLOAD=full`: events carry the stored message objects too.
    pub full_payload: bool,
    /// `WEBHOOK_URL` and `WEBHOOK_SECRET`: one endpoint.
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<Secret>,
    /// `WEBHOOKS_FILE`: several endpoints (YAML or JSON).
    pub webhooks_file: Option<PathBuf>,
    /// `WEBHOOK_ALLOW_PRIVATE`: loopback, private and link-local targets are allowed.
    pub allow_private: bool,
    /// `WEBHOOK_RETRY_SCHEDULE`: the waits between attempts; the last one repeats, for up to 24 h.
    pub retry_schedule: Vec<Duration>,
}

/// A duration like `500ms`, `5s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => return None,
    })
}

fn events_config() -> Result<EventsConfig, ConfigError> {
    let webhook_url = var("WEBHOOK_URL");
    let webhook_secret = var("WEBHOOK_SECRET").map(Secret::new);
    if webhook_url.is_some() && webhook_secret.is_none() {
        return Err(err("WEBHOOK_SECRET", "WEBHOOK_URL needs a secret (whsec_ followed by base64)"));
    }
    let webhooks_file = var("WEBHOOKS_FILE").map(PathBuf::from);
    let enabled = match var("EVENTS").as_deref() {
        None => webhook_url.is_some() || webhooks_file.is_some(),
        Some("on") => true,
        Some("off") => false,
        Some(other) => return Err(err("EVENTS", format!("{other:?} is not one of on, off"))),
    };
    let full_payload = match var("WEBHOOK_PAYLOAD").as_deref() {
        None | Some("standard") => false,
        Some("full") => true,
        Some(other) => return Err(err("WEBHOOK_PAYLOAD", format!("{other:?} is not one of standard, full"))),
    };
    let retry_schedule = match var("WEBHOOK_RETRY_SCHEDULE") {
        None => ["5s", "30s", "2m", "10m", "30m", "1h"].iter().filter_map(|d| parse_duration(d)).collect(),
        Some(v) => v
            .split(',')
            .map(|d| {
                parse_duration(d).filter(|d| !d.is_zero()).ok_or_else(|| {
                    err("WEBHOOK_RETRY_SCHEDULE", format!("{d:?} is not a duration like 500ms, 5s, 2m or 1h"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(EventsConfig {
        enabled,
        retention: Duration::from_secs(86_400 * parse_num("EVENTS_RETENTION_DAYS", 7u64, 1)?),
        full_payload,
        webhook_url,
        webhook_secret,
        webhooks_file,
        allow_private: allow_private_urls() || var("WEBHOOK_ALLOW_PRIVATE").is_some_and(|v| v == "true"),
        retry_schedule,
    })
}

/// The agent's tools: the business API and its settings.
#[derive(Debug, Clone)]
pub struct ToolsConfig {
    pub api_server_url: Option<String>,
    pub api_server_key: Option<Secret>,
    pub resource_types: Option<Vec<String>>,
    pub tools_file: Option<PathBuf>,
    pub timeout: Duration,
    pub max_steps: usize,
    pub approval: ApprovalPolicy,
    pub result_max_chars: usize,
    /// `MCP_SERVERS`: streamable HTTP URLs of MCP servers whose tools the agent may use.
    pub mcp_servers: Vec<String>,
}

impl ToolsConfig {
    /// No business API, no tools file, no MCP servers; the defaults of the other settings.
    pub fn none() -> Self {
        ToolsConfig {
            api_server_url: None,
            api_server_key: None,
            resource_types: None,
            tools_file: None,
            timeout: Duration::from_secs(15),
            max_steps: 5,
            approval: ApprovalPolicy::Writes,
            result_max_chars: 8000,
            mcp_servers: Vec::new(),
        }
    }
}

/// Which tool calls wait for a human (`TOOL_APPROVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalPolicy {
    /// Nothing waits.
    None,
    /// Calls that create, change or delete wait; reads run at once.
    Writes,
    /// Every call waits.
    All,
}

/// `ALLOW_PRIVATE_URLS=true`: every outbound URL a tenant or operator configures (webhooks, agents'
/// business APIs) may reach loopback, private and link-local addresses.
pub fn allow_private_urls() -> bool {
    var("ALLOW_PRIVATE_URLS").is_some_and(|v| v == "true")
}

/// Reads a variable; unset and empty are the same.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn parse_num<T>(name: &'static str, default: T, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match var(name) {
        None => Ok(default),
        Some(v) => {
            let n: T = v.parse().map_err(|_| err(name, format!("{v:?} is not a number")))?;
            if n < min {
                return Err(err(name, format!("must be at least {min}")));
            }
            Ok(n)
        }
    }
}

impl Config {
    /// Loads `.env` of the working directory (when present; never a parent's) into the environment,
    /// then reads the configuration.
    pub fn load() -> Result<Self, ConfigError> {
        match dotenvy::from_path(".env") {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(err(".env", e.to_string())),
        }
        Self::from_env()
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let sessions_var = var("DYNAMODB_SESSIONS_TABLE");
        let messages_var = var("DYNAMODB_MESSAGES_TABLE");
        let sessions_table = sessions_var.clone().unwrap_or_else(|| DEFAULT_SESSIONS_TABLE.into());
        let messages_table = messages_var.clone().unwrap_or_else(|| DEFAULT_MESSAGES_TABLE.into());
        for (name, value) in
            [("DYNAMODB_SESSIONS_TABLE", &sessions_table), ("DYNAMODB_MESSAGES_TABLE", &messages_table)]
        {
            let ok = (3..=255).contains(&value.len())
                && value.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !ok {
                let name: &'static str = if name == "DYNAMODB_SESSIONS_TABLE" {
                    "DYNAMODB_SESSIONS_TABLE"
                } else {
                    "DYNAMODB_MESSAGES_TABLE"
                };
                return Err(err(
                    name,
                    format!("{value:?} is not a valid DynamoDB table name (3-255 of a-z A-Z 0-9 _ - .)"),
                ));
            }
        }
        let dynamo = || StorageConfig::DynamoDb {
            sessions_table: sessions_table.clone(),
            messages_table: messages_table.clone(),
        };
        let sqlite = || StorageConfig::Sqlite {
            path: PathBuf::from(var("SQLITE_PATH").unwrap_or_else(|| DEFAULT_SQLITE_PATH.into())),
        };
        let storage = match var("STORAGE").as_deref() {
            Some("sqlite") => sqlite(),
            Some("dynamodb") => dynamo(),
            Some(other) => {
                return Err(err("STORAGE", format!("{other:?} is not one of sqlite, dynamodb")));
            }
            // Someone who followed the guide's .env must not silently write to a local file.
            None if sessions_var.is_some() || messages_var.is_some() => dynamo(),
            None => sqlite(),
        };
        let host: IpAddr = match var("HOST") {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(h) if h == "localhost" => IpAddr::from([127, 0, 0, 1]),
            Some(h) => h.parse().map_err(|_| err("HOST", format!("{h:?} is not an IP address")))?,
        };
        let port = parse_num::<u16>("PORT", 3000, 0)?;
        let provider = match var("LLM_PROVIDER").as_deref() {
            None | Some("echo") => {
                ProviderConfig::Echo { chunk_delay: Duration::from_millis(parse_num("ECHO_CHUNK_DELAY_MS", 0u64, 0)?) }
            }
            Some("openai") => ProviderConfig::OpenAi {
                api_key: var("OPENAI_API_KEY").map(Secret::new),
                base_url: var("OPENAI_BASE_URL")
                    .unwrap_or_else(|| "https://api.openai.com/v1".into())
                    .trim_end_matches('/')
                    .to_string(),
                model: var("LLM_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
            },
            Some("bedrock") => ProviderConfig::Bedrock {
                model: var("LLM_MODEL")
                    .ok_or_else(|| err("LLM_MODEL", "a Bedrock model id is required with LLM_PROVIDER=bedrock"))?,
            },
            Some(other) => {
                return Err(err("LLM_PROVIDER", format!("{other:?} is not one of echo, openai, bedrock")));
            }
        };
        let loopback = host.is_loopback();
        let api_keys_file = PathBuf::from(var("API_KEYS_FILE").unwrap_or_else(|| "./data/api-keys.json".into()));
        let auth = match var("AUTH_MODE").as_deref() {
            None | Some("none") => {
                let allowed = var("ALLOW_UNAUTHENTICATED").is_some_and(|v| v == "true");
                let explicit = var("AUTH_MODE").is_some();
                if !(loopback || explicit && allowed) {
                    return Err(err(
                        "AUTH_MODE",
                        format!(
                            "HOST={host} is not a loopback address, and without authentication anyone who reaches it \
                             can read and write every tenant's data: set AUTH_MODE=api-key or AUTH_MODE=jwt, or \
                             AUTH_MODE=none with ALLOW_UNAUTHENTICATED=true behind a trusted gateway"
                        ),
                    ));
                }
                AuthConfig::None { exposed: !loopback }
            }
            Some("api-key") => AuthConfig::ApiKey { keys_file: api_keys_file.clone() },
            Some("jwt") => {
                let secret = var("JWT_SECRET").map(Secret::new);
                let jwks_url = var("JWT_JWKS_URL");
                if secret.is_none() == jwks_url.is_none() {
                    return Err(err("JWT_SECRET", "AUTH_MODE=jwt needs exactly one of JWT_SECRET or JWT_JWKS_URL"));
                }
                if secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
                    return Err(err("JWT_SECRET", "must be at least 32 characters"));
                }
                AuthConfig::Jwt(JwtConfig {
                    secret,
                    jwks_url,
                    tenant_claim: var("JWT_TENANT_CLAIM").unwrap_or_else(|| "tenant_id".into()),
                    user_claim: var("JWT_USER_CLAIM").unwrap_or_else(|| "sub".into()),
                    issuer: var("JWT_ISSUER"),
                    audience: var("JWT_AUDIENCE"),
                })
            }
            Some(other) => {
                return Err(err("AUTH_MODE", format!("{other:?} is not one of none, api-key, jwt")));
            }
        };
        let rate_limit_per_minute = match var("RATE_LIMIT_PER_MINUTE").as_deref() {
            None if loopback => None,
            None => Some(600),
            Some("off") | Some("0") => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .map_err(|_| err("RATE_LIMIT_PER_MINUTE", format!("{v:?} is not a number (or off)")))?,
            ),
        };
        let llm_timeout = Duration::from_secs(parse_num("LLM_TIMEOUT_SECONDS", 60u64, 1)?);
        let search = SearchConfig {
            scan: match (var("SEARCH_BACKEND").as_deref(), &storage) {
                (None | Some("auto"), StorageConfig::Sqlite { .. }) => false,
                (None | Some("auto") | Some("scan"), StorageConfig::DynamoDb { .. }) => true,
                (Some("sqlite-fts5"), StorageConfig::Sqlite { .. }) => false,
                (Some("scan"), StorageConfig::Sqlite { .. }) => true,
                (Some("sqlite-fts5"), StorageConfig::DynamoDb { .. }) => {
                    return Err(err("SEARCH_BACKEND", "sqlite-fts5 needs STORAGE=sqlite; DynamoDB searches with scan"));
                }
                (Some(other), _) => {
                    return Err(err("SEARCH_BACKEND", format!("{other:?} is not one of auto, sqlite-fts5, scan")));
                }
            },
            max_items: parse_num("SEARCH_MAX_ITEMS", 2000usize, 10)?,
        };
        let url = |name: &'static str, default: String| -> Result<String, ConfigError> {
            match var(name) {
                None => Ok(default),
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    Ok(u.trim_end_matches('/').to_string())
                }
                Some(u) => Err(err(name, format!("{u:?} is not an http(s) URL"))),
            }
        };
        let defaults = crate::channels::ChannelsConfig::default();
        let channels = crate::channels::ChannelsConfig {
            whatsapp_base_url: url("WHATSAPP_API_BASE_URL", defaults.whatsapp_base_url)?,
            whatsapp_api_version: var("WHATSAPP_API_VERSION").unwrap_or(defaults.whatsapp_api_version),
            twilio_base_url: url("TWILIO_API_BASE_URL", defaults.twilio_base_url)?,
            public_base_url: match var("PUBLIC_BASE_URL") {
                None => None,
                Some(_) => Some(url("PUBLIC_BASE_URL", String::new())?),
            },
        };
        Ok(Config {
            channels,
            usage: match var("USAGE").as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => return Err(err("USAGE", format!("{other:?} is not one of on, off"))),
            },
            prices: match var("MODEL_PRICES_FILE") {
                None => crate::usage::Prices::default(),
                Some(path) => crate::usage::Prices::with_file(std::path::Path::new(&path))
                    .map_err(|m| err("MODEL_PRICES_FILE", m))?,
            },
            console: match var("CONSOLE").as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => return Err(err("CONSOLE", format!("{other:?} is not one of on, off"))),
            },
            search,
            events: events_config()?,
            summary: SummaryConfig {
                trigger_tokens: match var("CONTEXT_SUMMARY_TRIGGER_TOKENS") {
                    None => None,
                    Some(_) => Some(parse_num("CONTEXT_SUMMARY_TRIGGER_TOKENS", 0u64, 100)?),
                },
                keep_messages: parse_num("CONTEXT_SUMMARY_KEEP_MESSAGES", 20usize, 2)?,
                model: var("CONTEXT_SUMMARY_MODEL"),
            },
            auth,
            api_keys_file,
            rate_limit_per_minute,
            request_timeout: Duration::from_secs(parse_num("REQUEST_TIMEOUT_SECONDS", llm_timeout.as_secs() + 30, 1)?),
            header_read_timeout: Duration::from_secs(parse_num("HEADER_READ_TIMEOUT_SECONDS", 10u64, 1)?),
            max_concurrent_requests: parse_num("MAX_CONCURRENT_REQUESTS", 4096usize, 1)?,
            request_queue_timeout: Duration::from_millis(parse_num("REQUEST_QUEUE_TIMEOUT_MS", 5000u64, 0)?),
            max_concurrent_streams: parse_num("MAX_CONCURRENT_STREAMS", 2048usize, 1)?,
            shutdown_grace: Duration::from_secs(parse_num("SHUTDOWN_GRACE_SECONDS", 25u64, 0)?),
            tools: ToolsConfig {
                api_server_url: match var("API_SERVER_URL") {
                    None => None,
                    Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u),
                    Some(u) => return Err(err("API_SERVER_URL", format!("{u:?} is not an http(s) URL"))),
                },
                api_server_key: var("API_SERVER_KEY").map(Secret::new),
                resource_types: var("API_RESOURCE_TYPES")
                    .map(|v| v.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()),
                tools_file: var("AGENT_TOOLS_FILE").map(PathBuf::from),
                timeout: Duration::from_secs(parse_num("TOOL_TIMEOUT_SECONDS", 15u64, 1)?),
                max_steps: parse_num("AGENT_MAX_TOOL_STEPS", 5usize, 1)?,
                approval: match var("TOOL_APPROVAL").as_deref() {
                    None | Some("writes") => ApprovalPolicy::Writes,
                    Some("none") => ApprovalPolicy::None,
                    Some("all") => ApprovalPolicy::All,
                    Some(other) => {
                        return Err(err("TOOL_APPROVAL", format!("{other:?} is not one of writes, none, all")));
                    }
                },
                result_max_chars: parse_num("TOOL_RESULT_MAX_CHARS", 8000usize, 100)?,
                mcp_servers: match var("MCP_SERVERS") {
                    None => Vec::new(),
                    Some(v) => {
                        let urls: Vec<String> =
                            v.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
                        if let Some(bad) =
                            urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                        {
                            return Err(err("MCP_SERVERS", format!("{bad:?} is not an http(s) URL")));
                        }
                        urls
                    }
                },
            },
            retention: crate::store::Retention(match var("MESSAGE_TTL_DAYS") {
                None => None,
                Some(_) => Some(Duration::from_secs(86_400 * parse_num("MESSAGE_TTL_DAYS", 0u64, 1)?)),
            }),
            storage,
            sessions_table,
            messages_table,
            host,
            port,
            provider,
            system_prompt: var("AGENT_SYSTEM_PROMPT").unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.into()),
            history_max_messages: parse_num("HISTORY_MAX_MESSAGES", 50usize, 0)?,
            session_idle: Duration::from_secs(60 * parse_num("SESSION_IDLE_MINUTES", 30u64, 0)?),
            turn_events_ttl: Duration::from_secs(3600 * parse_num("TURN_EVENTS_TTL_HOURS", 24u64, 0)?),
            max_body_bytes: parse_num("MAX_BODY_BYTES", 1024 * 1024usize, 1024)?,
            max_message_chars: parse_num("MAX_MESSAGE_CHARS", 32_000usize, 1)?,
            llm_timeout,
            turn_concurrency: match var("TURN_CONCURRENCY") {
                None => crate::agent::Concurrency::Queue,
                Some(v) => crate::agent::Concurrency::parse(&v).map_err(|m| err("TURN_CONCURRENCY", m))?,
            },
            erasure_sweep_delay: match var("ERASURE_SWEEP_DELAY_SECONDS") {
                None => None,
                Some(_) => Some(Duration::from_secs(parse_num("ERASURE_SWEEP_DELAY_SECONDS", 0u64, 1)?)),
            },
        })
    }
}

/// The AWS SDK configuration from the standard chain: environment, profiles, SSO, instance and
/// task roles; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_DYNAMODB` point it at an emulator.
pub async fn aws_sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
