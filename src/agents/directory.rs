//! Which agent a turn runs as, and what running as it means (a [`Persona`]: instructions, model
//! provider, toolbox, history and summary settings), without a storage request per turn. Each
//! process keeps the agents of the tenants it serves, read once with one query, and builds an
//! agent's provider and toolbox once per version. Every change to a tenant's agents is also noted
//! in the store's change log, which each server polls every [`POLL_EVERY`] (one small query for
//! all tenants): a change drops that tenant's agents here, and the next turn reads them again. A
//! change made through this process is seen here at once, one made through another server within
//! `POLL_EVERY` plus a query; while the log cannot be read, what was read is trusted for
//! [`FRESH_FOR`] only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Capabilities, StoredAgent, approval};
use crate::config::{ProviderConfig, Secret, ToolsConfig};
use crate::ids::{AgentId, TenantId};
use crate::llm::Provider;
use crate::store::{ConversationStore, StoreError};
use crate::timestamp::Timestamp;
use crate::tools::{BusinessApi, FileTool, Toolbox};

/// How long a process trusts the agents it read for a tenant when it cannot follow the change log.
pub const FRESH_FOR: Duration = Duration::from_secs(5);
/// How often a server reads the change log of every tenant's agents.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// How far back each poll of the change log reads (changes are seen once; writers' clocks may be
/// this far apart).
const LOG_WINDOW_MICROS: i64 = 300_000_000;
/// The most tenants whose agents a process keeps.
const MAX_KNOWN: usize = 10_000;

/// What a turn runs as: a tenant's agent, or the server's environment.
pub struct Persona {
    /// The agent and its version; `None` for the environment's agent.
    pub agent: Option<(AgentId, u64)>,
    pub system_prompt: String,
    pub provider: Arc<Provider>,
    pub tools: Arc<Toolbox>,
    pub history_max_messages: usize,
    pub summary_trigger_tokens: Option<u64>,
    pub summary_keep_messages: usize,
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<u32>,
    /// The agent's `concurrency` (the server's `TURN_CONCURRENCY` when `None`).
    pub concurrency: Option<crate::agent::Concurrency>,
    /// The agent's `debounceMs`: how long a turn waits after its session's newest message.
    pub debounce: std::time::Duration,
}

impl Persona {
    pub fn agent_id(&self) -> Option<&AgentId> {
        self.agent.as_ref().map(|(id, _)| id)
    }
}

/// Why a turn cannot run as the agent it asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum PickError {
    /// The tenant has no agent with this id.
    NotFound(AgentId),
    /// The session started with another agent (its id).
    Mismatch {
        session_agent: AgentId,
    },
    Store(StoreError),
}

impl From<StoreError> for PickError {
    fn from(e: StoreError) -> Self {
        PickError::Store(e)
    }
}

/// What an agent falls back to: the server's provider configuration, tools and settings.
pub struct ServerAgent {
    pub persona: Arc<Persona>,
    pub provider: ProviderConfig,
    pub llm_timeout: Duration,
    pub tools: ToolsConfig,
    pub file_tools: Vec<FileTool>,
    pub allow_private_urls: bool,
}

struct Known {
    /// When the read that gave these agents started.
    read_at: Instant,
    agents: Arc<Vec<StoredAgent>>,
}

/// A persona's key: tenant, agent, version and `updatedAt`.
type PersonaKey = (TenantId, AgentId, u64, String);

/// What this process follows of the change log.
#[derive(Default)]
struct Watch {
    /// When the log was last read without an error.
    polled_at: Option<Instant>,
    /// The changes already acted on, by their time and tenant (kept for the window).
    seen: std::collections::HashSet<(String, TenantId)>,
    /// When each tenant's agents were last dropped here for a change.
    dropped: HashMap<TenantId, Instant>,
}

/// The agents of every tenant this process has served lately, and the personas built from them.
pub struct Directory {
    store: Arc<dyn ConversationStore>,
    server: ServerAgent,
    known: Mutex<HashMap<TenantId, Known>>,
    watch: Mutex<Watch>,
    /// By tenant, agent, version and `updatedAt` (a deleted and recreated agent starts at version 1).
    personas: Mutex<HashMap<PersonaKey, Arc<Persona>>>,
}

impl Directory {
    pub fn new(store: Arc<dyn ConversationStore>, server: ServerAgent) -> Self {
        Self { store, server, known: Mutex::default(), watch: Mutex::default(), personas: Mutex::default() }
    }

    /// The environment's agent (a deployment without agents).
    pub fn server_persona(&self) -> &Arc<Persona> {
        &self.server.persona
    }

    /// What agents on this server may use.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::of(&self.server.provider, self.server.allow_private_urls)
    }

    /// A tenant's agents: as read here, while no change to them was noted since (or, when the
    /// change log cannot be followed, as read at most `FRESH_FOR` ago).
    pub async fn agents(&self, tenant: &TenantId) -> Result<Arc<Vec<StoredAgent>>, StoreError> {
        if let Some(agents) = self.trusted(tenant) {
            return Ok(agents);
        }
        let read_at = Instant::now();
        let agents = Arc::new(self.store.list_agents(tenant).await?);
        let mut known = self.lock_known();
        if known.len() >= MAX_KNOWN {
            known.retain(|_, k| k.read_at.elapsed() < Duration::from_secs(60));
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        known.insert(tenant.clone(), Known { read_at, agents: agents.clone() });
        Ok(agents)
    }

    fn trusted(&self, tenant: &TenantId) -> Option<Arc<Vec<StoredAgent>>> {
        let known = self.lock_known();
        let entry = known.get(tenant)?;
        if entry.read_at.elapsed() < FRESH_FOR {
            return Some(entry.agents.clone());
        }
        let watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let following = watch.polled_at.is_some_and(|at| at.elapsed() < FRESH_FOR);
        let dropped_after = watch.dropped.get(tenant).is_some_and(|at| *at >= entry.read_at);
        (following && !dropped_after).then(|| entry.agents.clone())
    }

    /// Reads the change log of every tenant's agents and drops what changed (every `POLL_EVERY`).
    pub async fn poll_changes(&self) {
        let since = Timestamp::from_micros(crate::timestamp::now_micros() - LOG_WINDOW_MICROS);
        let changes = match self.store.agent_changes_since(&since).await {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the agents' change log; agents are read again every 5 s");
                return;
            }
        };
        let mut fresh = Vec::new();
        let first;
        {
            let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            first = watch.polled_at.is_none();
            watch.seen.retain(|(at, _)| at.as_str() > since.as_str());
            for (at, tenant) in changes {
                if watch.seen.insert((at.as_str().to_string(), tenant.clone())) && !first {
                    fresh.push(tenant);
                }
            }
            let now = Instant::now();
            for tenant in &fresh {
                watch.dropped.insert(tenant.clone(), now);
            }
            watch.dropped.retain(|_, at| at.elapsed() < Duration::from_secs(600));
            watch.polled_at = Some(now);
        }
        if first {
            // What was read before the log was followed is read again.
            self.lock_known().clear();
        }
        for tenant in fresh {
            self.forget(&tenant);
        }
    }

    /// Forgets what this process knows of a tenant's agents (after they changed).
    pub fn forget(&self, tenant: &TenantId) {
        self.lock_known().remove(tenant);
        self.personas.lock().unwrap_or_else(|p| p.into_inner()).retain(|(t, _, _, _), _| t != tenant);
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The persona of a turn: the agent it names, else its session's, else the tenant's default,
    /// else the environment's. Naming another agent than the session's is refused.
    pub async fn pick(
        &self,
        tenant: &TenantId,
        named: Option<&AgentId>,
        session_agent: Option<&AgentId>,
    ) -> Result<Arc<Persona>, PickError> {
        let agents = self.agents(tenant).await?;
        // A session runs as the agent it started with, while that agent exists.
        if let (Some(named), Some(had)) = (named, session_agent)
            && named != had
            && agents.iter().any(|a| &a.id == had)
        {
            return Err(PickError::Mismatch { session_agent: had.clone() });
        }
        let chosen = match (named, session_agent) {
            (Some(id), _) => Some(agents.iter().find(|a| &a.id == id).ok_or_else(|| PickError::NotFound(id.clone()))?),
            // A session whose agent was deleted goes on with the tenant's default.
            (None, Some(id)) => agents.iter().find(|a| &a.id == id).or_else(|| agents.iter().find(|a| a.spec.default)),
            (None, None) => agents.iter().find(|a| a.spec.default),
        };
        match chosen {
            None => Ok(self.server.persona.clone()),
            Some(agent) => Ok(self.persona(agent).await),
        }
    }

    /// Exactly this agent of the tenant (`None`: the environment's), for the turn that follows an
    /// approval, which runs as the agent that proposed the action.
    pub async fn exact(&self, tenant: &TenantId, agent: Option<&AgentId>) -> Result<Arc<Persona>, PickError> {
        let Some(id) = agent else { return Ok(self.server.persona.clone()) };
        let agents = self.agents(tenant).await?;
        match agents.iter().find(|a| &a.id == id) {
            Some(agent) => Ok(self.persona(agent).await),
            None => Err(PickError::NotFound(id.clone())),
        }
    }

    /// The persona of one version of an agent, built once.
    async fn persona(&self, agent: &StoredAgent) -> Arc<Persona> {
        let key = (agent.tenant_id.clone(), agent.id.clone(), agent.version, agent.updated_at.as_str().to_string());
        if let Some(p) = self.personas.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return p.clone();
        }
        let built = Arc::new(self.build(agent).await);
        let mut personas = self.personas.lock().unwrap_or_else(|p| p.into_inner());
        // Older versions of this agent are not used any more.
        personas.retain(|(t, id, _, _), _| !(t == &key.0 && id == &key.1));
        personas.insert(key, built.clone());
        built
    }

    async fn build(&self, agent: &StoredAgent) -> Persona {
        let base = &self.server.persona;
        let spec = &agent.spec;
        let model = spec.model.clone().unwrap_or_default();
        let provider = match (&model.provider, &model.name) {
            (None, None) => base.provider.clone(),
            (kind, name) => Arc::new(
                Provider::from_config(&self.provider_config(kind.as_deref(), name.as_deref()), self.server.llm_timeout)
                    .await,
            ),
        };
        let tools = match (&spec.tools, &spec.business_api) {
            (None, None) => base.tools.clone(),
            (policy, api) => {
                let policy = policy.clone().unwrap_or_default();
                let env = &self.server.tools;
                let types = policy.resource_types.clone().or_else(|| env.resource_types.clone());
                let business = match api.as_ref().and_then(|a| a.url.clone()) {
                    Some(url) => Some(BusinessApi::for_tenant(
                        url,
                        agent.key().map(Secret::new),
                        types,
                        Vec::new(),
                        self.server.allow_private_urls,
                    )),
                    None => env.api_server_url.clone().map(|url| {
                        BusinessApi::new(url, env.api_server_key.clone(), types, self.server.file_tools.clone())
                    }),
                };
                let approval = policy.approval.as_deref().and_then(approval).unwrap_or(env.approval);
                Arc::new(base.tools.for_agent(business, approval, policy.allow.clone(), policy.deny.clone()))
            }
        };
        let history = spec.history.as_ref().and_then(|h| h.max_messages);
        let summary = spec.summary.clone().unwrap_or_default();
        Persona {
            agent: Some((agent.id.clone(), agent.version)),
            system_prompt: spec.system_prompt.clone(),
            provider,
            tools,
            history_max_messages: history.unwrap_or(base.history_max_messages),
            summary_trigger_tokens: summary.trigger_tokens.or(base.summary_trigger_tokens),
            summary_keep_messages: summary.keep_messages.unwrap_or(base.summary_keep_messages),
            temperature: model.temperature,
            max_output_tokens: model.max_output_tokens,
            concurrency: spec.concurrency.as_deref().and_then(|c| crate::agent::Concurrency::parse(c).ok()),
            debounce: std::time::Duration::from_millis(spec.debounce_ms.unwrap_or(0)),
        }
    }

    /// The server's provider configuration for another provider kind or model name.
    fn provider_config(&self, kind: Option<&str>, name: Option<&str>) -> ProviderConfig {
        let server = &self.server.provider;
        let same = kind.is_none_or(|k| {
            matches!(
                (k, server),
                ("echo", ProviderConfig::Echo { .. })
                    | ("openai", ProviderConfig::OpenAi { .. })
                    | ("bedrock", ProviderConfig::Bedrock { .. })
            )
        });
        match (same, name) {
            (true, Some(name)) => server.with_model(name),
            (true, None) => server.clone(),
            // Validation allows only the server's kind and echo.
            (false, _) => ProviderConfig::Echo { chunk_delay: Duration::ZERO },
        }
    }
}
