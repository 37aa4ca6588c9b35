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
//! - `live`: the turns running in this process; `messages`: how a turn is recorded in its messages.

mod announce;
mod approvals;
mod flow;
mod follow;
mod idempotency;
mod live;
mod messages;
mod progress;
mod summary;
mod thinking;
mod turn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use follow::{ORPHAN_SWEEP_EVERY, TurnEvents, TurnView, replayed_events};
pub use live::LiveTurn;
pub use summary::Summarized;
pub use turn::{OnDisconnect, StopReason, TurnAnswer, TurnError, TurnOutcome, TurnRequest};

use crate::events::{Change, EventType, Events};
use crate::ids::{SessionId, TenantId, UserId};
use crate::llm::Provider;
use crate::store::{ConversationStore, Deleted};
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

type SessionStartLock = Arc<tokio::sync::Mutex<()>>;

pub struct Agent {
    store: Arc<dyn ConversationStore>,
    provider: Provider,
    tools: Toolbox,
    settings: AgentSettings,
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
        Self {
            store,
            provider,
            tools,
            settings,
            live: Arc::default(),
            events: Events::off(),
            summarizer: None,
            summarizing: Mutex::default(),
            session_starts: Mutex::new(HashMap::new()),
        }
    }

    /// The agent with change events recorded (and delivered) as configured.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
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

    pub fn provider(&self) -> &Provider {
        &self.provider
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

    /// Deletes a session and its messages. Erasure wins: the turns running on it are stopped and
    /// store nothing, now or later.
    pub async fn erase_session(
        self: &Arc<Self>,
        tenant: &TenantId,
        session: &SessionId,
    ) -> Result<Option<usize>, TurnError> {
        let running = self.live.begin_erasure(tenant, None, Some(session));
        for turn in running {
            let _ = turn.finished().await;
        }
        // Read only for its event (the ids it names).
        let before = match self.events.is_on() {
            true => self.store.get_session(tenant, session).await,
            false => Ok(None),
        };
        let result = self.store.delete_session(tenant, session, None).await;
        self.live.end_erasure(tenant, None, Some(session));
        self.sweep_later(tenant.clone(), None, vec![session.clone()]);
        if let (Ok(Some(_)), Ok(Some(gone))) = (&result, &before) {
            // The session's content goes from the feed and the outbox with it; its deletion is
            // announced (ids only).
            self.events.forget(tenant, &gone.user_id, Some(session)).await;
            let change = announce::session_change(EventType::SessionDeleted, gone);
            self.events.record(tenant, vec![change]).await;
        }
        Ok(result?)
    }

    /// A JSON turn running on another server keeps no record that an erasure could reach: once the
    /// longest such turn has surely ended, the erasure runs again and removes what it wrote. Only
    /// what was written by the time the erasure answered (such a turn reserved its timestamps
    /// before): a session created later with a reused id, and its messages, stay.
    fn sweep_later(self: &Arc<Self>, tenant: TenantId, user: Option<UserId>, sessions: Vec<SessionId>) {
        let agent = self.clone();
        let longest = self.settings.llm_timeout * (self.tools.max_steps as u32 + 2) + Duration::from_secs(30);
        let erased_at = crate::timestamp::Timestamp::now();
        tokio::spawn(async move {
            tokio::time::sleep(longest).await;
            let mut sessions = sessions;
            // Sessions a turn started before the erasure answered (never those started after it).
            if let Some(user) = &user {
                sessions.extend(agent.user_session_ids(&tenant, user, Some(&erased_at)).await);
            }
            for session in &sessions {
                if let Err(e) = agent.store.delete_session(&tenant, session, Some(&erased_at)).await {
                    tracing::warn!(error = %e, %session, "the second sweep of an erasure failed");
                }
            }
        });
    }

    /// Deletes every session and message of a user, with the same guarantee as `erase_session`.
    pub async fn erase_user(self: &Arc<Self>, tenant: &TenantId, user: &UserId) -> Result<Deleted, TurnError> {
        let running = self.live.begin_erasure(tenant, Some(user), None);
        for turn in running {
            let _ = turn.finished().await;
        }
        let sessions = self.user_session_ids(tenant, user, None).await;
        let result = self.store.delete_user(tenant, user).await;
        self.live.end_erasure(tenant, Some(user), None);
        self.sweep_later(tenant.clone(), Some(user.clone()), sessions);
        let deleted = result?;
        // The user's earlier events go with their data; the erasure itself is announced (ids only).
        self.events.forget(tenant, user, None).await;
        let data = serde_json::json!({"userId": user, "sessions": deleted.sessions, "messages": deleted.messages});
        self.events.record(tenant, vec![Change::new(EventType::UserErased, None, data)]).await;
        Ok(deleted)
    }

    /// The ids of a user's sessions (created no later than `created_by`, when given), for the second
    /// sweep of an erasure.
    async fn user_session_ids(
        &self,
        tenant: &TenantId,
        user: &UserId,
        created_by: Option<&crate::timestamp::Timestamp>,
    ) -> Vec<SessionId> {
        let mut ids = Vec::new();
        let mut page = crate::store::PageRequest { limit: 100, cursor: None };
        while let Ok(found) = self.store.list_user_sessions(tenant, user, page.clone()).await {
            let kept = found.items.into_iter().filter(|s| created_by.is_none_or(|t| &s.created_at <= t));
            ids.extend(kept.map(|s| s.id));
            match found.next {
                Some(next) => page.cursor = Some(next),
                None => break,
            }
        }
        ids
    }
}
