//! The agent turn, a resource with one lifecycle: it starts (`start`), runs in a task of its own
//! whatever its client does, sends numbered events that a client can follow and reconnect to, and
//! ends `completed`, `awaiting_approval`, `failed`, `interrupted` or `cancelled`. The JSON turn, the
//! streamed turn and the turn that continues after an approval are the same flow with different
//! outputs.
//!
//! - `flow`: one session-resolution path and one write protocol for every turn;
//! - `progress`: a turn while the model works: its events, its record and lease, its stop signals;
//! - `thinking`: the model call and the tool loop;
//! - `approvals`: deciding pending actions, exactly once, and the turn that follows;
//! - `idempotency`: what a retried `Idempotency-Key` finds;
//! - `follow`: reading a turn (its record, its events) and cancelling it, here or on another server;
//! - `queue`: a session's one running turn (`concurrency`), the messages queued behind it and the turn
//!   that answers them together;
//! - `live`: the turns running in this process; `messages`: how a turn is recorded in its messages.

mod announce;
mod approvals;
mod erasure;
mod flow;
mod follow;
mod idempotency;
mod live;
mod messages;
mod progress;
mod queue;
mod spending;
mod summary;
mod thinking;
mod turn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use follow::{ORPHAN_SWEEP_EVERY, TurnEvents, TurnView, replayed_events};
pub use live::LiveTurn;
pub use summary::Summarized;
pub use turn::{Concurrency, OnDisconnect, StopReason, TurnAnswer, TurnError, TurnOutcome, TurnRequest};

use crate::agents::directory::{Directory, Persona, ServerAgent};
use crate::config::{ProviderConfig, ToolsConfig};
use crate::events::Events;
use crate::ids::{SessionId, TenantId, UserId};
use crate::llm::Provider;
use crate::store::ConversationStore;
use crate::tools::Toolbox;

/// How the agent behaves, from the configuration.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub system_prompt: String,
    pub history_max_messages: usize,
    pub session_idle: Duration,
    pub llm_timeout: Duration,
    /// How long a turn's events can be replayed (`TURN_EVENTS_TTL_HOURS`).
    pub turn_events_ttl: Duration,
    /// `CONTEXT_SUMMARY_TRIGGER_TOKENS`: summaries are written once the history passes it (off when `None`).
    pub summary_trigger_tokens: Option<u64>,
    /// `CONTEXT_SUMMARY_KEEP_MESSAGES`: the newest messages a summary leaves verbatim.
    pub summary_keep_messages: usize,
    /// `TURN_CONCURRENCY`: what a turn does when its session has a running turn.
    pub turn_concurrency: Concurrency,
    /// `ERASURE_SWEEP_DELAY_SECONDS`: how long after an erasure its second pass runs (by default
    /// once the longest turn has surely ended: `LLM_TIMEOUT_SECONDS` x (`AGENT_MAX_TOOL_STEPS` + 2) +
    /// `TOOL_TIMEOUT_SECONDS` x `AGENT_MAX_TOOL_STEPS` + 30 s).
    pub erasure_sweep_delay: Duration,
}

impl AgentSettings {
    /// Settings for tests and tools: the given prompt, 50 messages of history, 30 idle minutes.
    pub fn new(system_prompt: impl Into<String>) -> Self {
        AgentSettings {
            system_prompt: system_prompt.into(),
            history_max_messages: 50,
            session_idle: Duration::from_secs(1800),
            llm_timeout: Duration::from_secs(60),
            turn_events_ttl: Duration::from_secs(24 * 3600),
            summary_trigger_tokens: None,
            summary_keep_messages: 20,
            turn_concurrency: Concurrency::Queue,
            erasure_sweep_delay: Duration::from_secs(60 * 7 + 30),
        }
    }
}

/// What starting a turn gave.
pub enum Started {
    /// The turn runs (or, for a retried `Idempotency-Key`, was already running here).
    Live(Arc<LiveTurn>),
    /// A streamed retry of an `Idempotency-Key` whose turn runs here: it follows that turn (and its
    /// going away does not stop it).
    Following(Arc<LiveTurn>),
    /// A retried `Idempotency-Key` whose turn had ended: its stored result.
    Replayed(Box<TurnOutcome>),
    /// A retried `Idempotency-Key` whose turn runs on another server: follow its stored events.
    Elsewhere(TurnEvents),
}

impl Started {
    /// The turn's events for a client that follows it, from its first; a turn that failed before
    /// it began (a closed session, a budget) is its error instead (see `LiveTurn::started`).
    pub async fn into_events(self) -> Result<TurnEvents, TurnError> {
        use futures::StreamExt;
        Ok(match self {
            Started::Live(live) => {
                live.started().await?;
                live.follow(0).boxed()
            }
            Started::Following(live) => live.follow(0).boxed(),
            Started::Replayed(outcome) => replayed_events(*outcome, 0),
            Started::Elsewhere(events) => events,
        })
    }
}

type SessionStartLock = Arc<tokio::sync::Mutex<()>>;

pub struct Agent {
    store: Arc<dyn ConversationStore>,
    settings: AgentSettings,
    /// The tenants' agents and the environment's, by which a turn picks what it runs as.
    agents: Directory,
    live: Arc<live::LiveTurns>,
    /// Change events (off unless configured).
    events: Events,
    /// The model that writes context summaries (`CONTEXT_SUMMARY_MODEL`); the turn's when `None`.
    summarizer: Option<Provider>,
    /// The sessions this process is summarising now.
    summarizing: Mutex<std::collections::HashSet<(TenantId, SessionId)>>,
    /// Held while a user's turn finds or starts their active session, so that concurrent first
    /// turns of one user end in one session.
    session_starts: Mutex<HashMap<(TenantId, UserId), SessionStartLock>>,
    /// The erasures of every server whose second pass is still due, read every second.
    erasures: std::sync::RwLock<Vec<crate::store::Erasure>>,
    /// What the tenants spend, and their budgets.
    meter: Arc<crate::usage::Meter>,
    /// The channels, for the `send_message` tool (they hold the agent: a weak handle back).
    channels: std::sync::OnceLock<std::sync::Weak<crate::channels::worker::Channels>>,
}

impl Agent {
    pub fn new(store: Arc<dyn ConversationStore>, provider: Provider, settings: AgentSettings) -> Self {
        Self::with_tools(store, provider, settings, Toolbox::empty())
    }

    pub fn with_tools(
        store: Arc<dyn ConversationStore>,
        provider: Provider,
        settings: AgentSettings,
        tools: Toolbox,
    ) -> Self {
        let persona = Arc::new(Persona {
            agent: None,
            system_prompt: settings.system_prompt.clone(),
            provider: Arc::new(provider),
            tools: Arc::new(tools),
            history_max_messages: settings.history_max_messages,
            summary_trigger_tokens: settings.summary_trigger_tokens,
            summary_keep_messages: settings.summary_keep_messages,
            temperature: None,
            max_output_tokens: None,
            concurrency: None,
            debounce: Duration::ZERO,
        });
        let server = ServerAgent {
            persona,
            provider: ProviderConfig::Echo { chunk_delay: Duration::ZERO },
            llm_timeout: settings.llm_timeout,
            tools: ToolsConfig::none(),
            file_tools: Vec::new(),
            allow_private_urls: false,
        };
        Self {
            meter: Arc::new(crate::usage::Meter::new(store.clone(), crate::usage::Prices::default(), true)),
            agents: Directory::new(store.clone(), server),
            store,
            settings,
            live: Arc::default(),
            events: Events::off(),
            summarizer: None,
            summarizing: Mutex::default(),
            session_starts: Mutex::new(HashMap::new()),
            erasures: Default::default(),
            channels: std::sync::OnceLock::new(),
        }
    }

    /// The id of a turn's reply (derived from the turn's id).
    pub fn reply_id_of(turn: &crate::ids::MessageId) -> crate::ids::MessageId {
        messages::agent_message_id(turn)
    }

    /// The status of the turn an agent message ended (as stored with it).
    pub fn recorded_status(message: &crate::store::Message) -> crate::store::TurnStatus {
        messages::recorded_status(message)
    }

    /// Whether an agent message is the follow-up of a decision on an action (it starts with it).
    pub fn is_follow_up(message: &crate::store::Message) -> bool {
        let first = message.tool_actions().first().and_then(|a| a["id"].as_str());
        first.is_some_and(|id| messages::follow_up_id(id) == message.id)
    }

    /// The actions of an agent message that it proposed: a follow-up after a decision starts
    /// with the decided action, which belongs to (and is shown in) the message that proposed it.
    pub fn proposed_actions(message: &crate::store::Message) -> impl Iterator<Item = &serde_json::Value> {
        message
            .tool_actions()
            .iter()
            .filter(|a| a["id"].as_str().is_none_or(|id| messages::follow_up_id(id) != message.id))
    }

    /// A turn this process runs in the session, if any (what a UI stream resumes and stops).
    pub fn running_in(&self, tenant: &TenantId, session: &SessionId) -> Option<Arc<LiveTurn>> {
        self.live.running_in(tenant, session)
    }

    /// Gives the agent the channels its `send_message` tool sends through.
    pub fn set_channels(&self, channels: &Arc<crate::channels::worker::Channels>) {
        let _ = self.channels.set(Arc::downgrade(channels));
    }

    /// The agent whose tenants' agents fall back to the server's configuration: its provider (and
    /// the kinds of provider an agent may name), its business API and tools settings, and whether
    /// tenant URLs may reach private addresses (`ALLOW_PRIVATE_URLS`).
    pub fn with_server_config(
        mut self,
        provider: ProviderConfig,
        tools: ToolsConfig,
        file_tools: Vec<crate::tools::FileTool>,
        allow_private_urls: bool,
    ) -> Self {
        let server = ServerAgent {
            persona: self.agents.server_persona().clone(),
            provider,
            llm_timeout: self.settings.llm_timeout,
            tools,
            file_tools,
            allow_private_urls,
        };
        self.agents = Directory::new(self.store.clone(), server);
        self
    }

    /// The tenants' agents as this process knows them.
    pub fn agents(&self) -> &Directory {
        &self.agents
    }

    /// The agent with change events recorded (and delivered) as configured.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// The agent with usage counted (or not) with these prices.
    pub fn with_usage(mut self, prices: crate::usage::Prices, on: bool) -> Self {
        self.meter = Arc::new(crate::usage::Meter::new(self.store.clone(), prices, on));
        self
    }

    /// What the tenants spend, and their budgets.
    pub fn meter(&self) -> &crate::usage::Meter {
        &self.meter
    }

    /// The agent with context summaries written by this provider (`CONTEXT_SUMMARY_MODEL`).
    pub fn with_summarizer(mut self, provider: Provider) -> Self {
        self.summarizer = Some(provider);
        self
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn store(&self) -> &Arc<dyn ConversationStore> {
        &self.store
    }

    /// The environment's model provider.
    pub fn provider(&self) -> &Provider {
        &self.agents.server_persona().provider
    }

    /// Asks every running turn to stop now and store what it has (the shutdown deadline passed).
    pub fn stop_streams(&self) {
        self.live.stop_all(StopReason::Shutdown);
    }

    /// Resolves when every turn running in this process has ended and stored its result.
    pub async fn turns_finished(&self) {
        loop {
            let running = self.live.running();
            if running.is_empty() {
                return;
            }
            for turn in running {
                let _ = turn.finished().await;
            }
        }
    }

    /// The lock that makes one user's session start one at a time.
    fn session_start_lock(&self, tenant: &TenantId, user: &UserId) -> SessionStartLock {
        let mut locks = self.session_starts.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry((tenant.clone(), user.clone())).or_default().clone()
    }
}
