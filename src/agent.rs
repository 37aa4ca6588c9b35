//! The agent turn: resolve the session, give the model its history, store the message and the reply.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::ids::{IdempotencyKey, LocationId, MessageId, SessionId, TenantId, UserId};
use crate::llm::{Deltas, ModelError, ModelReply, ModelRequest, Provider, StreamItem, Usage};
use crate::store::{
    Action, ActionStatus, ConversationStore, Message, MessageQuery, Metadata, NewMessage, NewSession, Order, Role,
    Session, StoreError, complete_history, history_query, recent_history, writable_session,
};
use crate::timestamp::{self, Timestamp};
use crate::tools::{ToolCall, ToolContext, ToolResult, ToolStep, Toolbox, action_record};

/// How the agent behaves, from the configuration.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub system_prompt: String,
    pub history_max_messages: usize,
    pub session_idle: Duration,
    pub llm_timeout: Duration,
}

/// One user message for the agent.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub tenant: TenantId,
    pub user: UserId,
    pub location: Option<LocationId>,
    pub message: String,
    pub session_id: Option<SessionId>,
    pub context: Option<Map<String, Value>>,
    pub metadata: Option<Metadata>,
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A finished turn: the stored messages (no user message when the turn continues after an
/// approval decision).
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub session_id: SessionId,
    pub user_message: Option<Message>,
    pub agent_message: Message,
}

impl TurnOutcome {
    /// Every tool call of the turn, as stored in the agent message's `metadata.actions`.
    pub fn actions(&self) -> Vec<Value> {
        self.agent_message
            .metadata
            .as_ref()
            .and_then(|m| m.get("actions"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

/// Why a turn did not finish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TurnError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A request with the same `Idempotency-Key` is still running.
    #[error("a request with this Idempotency-Key is still in progress; retry later")]
    InProgress,
}

/// What a streaming turn reports, in order: `Session`, `Delta`s, then `Done` or `Error`.
#[derive(Debug)]
pub enum TurnEvent {
    Session { session_id: SessionId, user_message: Message },
    Delta(String),
    ToolCall(Value),
    ToolResult(Value),
    Done(TurnOutcome),
    Error(TurnError),
}

pub struct Agent {
    store: Arc<dyn ConversationStore>,
    provider: Provider,
    tools: Toolbox,
    settings: AgentSettings,
    /// Idempotency keys (per tenant) of turns running in this process.
    in_flight: Mutex<HashSet<(TenantId, IdempotencyKey)>>,
    /// Set when streams must stop (shutdown deadline).
    stop: tokio::sync::watch::Sender<bool>,
}

/// Removes an idempotency key from the in-flight set when the turn ends, however it ends.
struct InFlight<'a> {
    agent: &'a Agent,
    key: Option<(TenantId, IdempotencyKey)>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.agent.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }
}

/// The message ids of a turn: derived from the idempotency key when there is one, so that a retry
/// finds the first attempt's messages, and fresh UUIDv7s otherwise.
fn turn_ids(tenant: &TenantId, key: Option<&str>) -> (MessageId, MessageId) {
    match key {
        None => (MessageId::generate(), MessageId::generate()),
        Some(key) => {
            let derive = |part: &str| {
                let name = format!("{}\n{}\n{}", tenant.as_str(), key, part);
                let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string();
                MessageId::parse(id).expect("a UUID is a valid id")
            };
            (derive("user"), derive("agent"))
        }
    }
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
            in_flight: Mutex::new(HashSet::new()),
            stop: tokio::sync::watch::Sender::new(false),
        }
    }

    pub fn store(&self) -> &Arc<dyn ConversationStore> {
        &self.store
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    fn claim(&self, req: &TurnRequest) -> Result<InFlight<'_>, TurnError> {
        let Some(key) = &req.idempotency_key else {
            return Ok(InFlight { agent: self, key: None });
        };
        let entry = (req.tenant.clone(), key.clone());
        if !self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(entry.clone()) {
            return Err(TurnError::InProgress);
        }
        Ok(InFlight { agent: self, key: Some(entry) })
    }

    /// The stored result of an earlier request with the same idempotency key, if it finished.
    async fn replay(&self, req: &TurnRequest, ids: &(MessageId, MessageId)) -> Result<Option<TurnOutcome>, TurnError> {
        if req.idempotency_key.is_none() {
            return Ok(None);
        }
        let Some(user_message) = self.store.get_message(&req.tenant, &ids.0).await? else {
            return Ok(None);
        };
        match self.store.get_message(&req.tenant, &ids.1).await? {
            Some(agent_message) => Ok(Some(TurnOutcome {
                session_id: user_message.session_id.clone(),
                user_message: Some(user_message),
                agent_message,
            })),
            None => Err(TurnError::InProgress),
        }
    }

    /// The session this turn continues, or `None` when it starts a new one (created only when the
    /// turn has something to store). An idle active session is closed at that point.
    async fn find_session(&self, req: &TurnRequest) -> Result<(Option<Session>, Option<Session>), TurnError> {
        if let Some(id) = &req.session_id {
            let session = self.store.get_session(&req.tenant, id).await?;
            return Ok((Some(writable_session(session, id, Some(&req.user))?), None));
        }
        match self.store.find_active_session(&req.tenant, &req.user).await? {
            Some(active) if self.is_idle(&active) => Ok((None, Some(active))),
            Some(active) => Ok((Some(active), None)),
            None => Ok((None, None)),
        }
    }

    /// Creates the new session of a turn, closing the user's idle one so that one is active at a time.
    async fn start_session(&self, req: &TurnRequest, idle: Option<Session>) -> Result<Session, TurnError> {
        if let Some(idle) = idle {
            self.store.close_session(&req.tenant, &idle.id).await?;
        }
        Ok(self
            .store
            .create_session(NewSession {
                tenant_id: req.tenant.clone(),
                user_id: req.user.clone(),
                location_id: req.location.clone(),
                metadata: None,
            })
            .await?)
    }

    async fn history(&self, session: Option<&Session>) -> Result<Vec<Message>, TurnError> {
        match session {
            Some(s) => Ok(recent_history(&*self.store, s, self.settings.history_max_messages).await?),
            None => Ok(Vec::new()),
        }
    }

    fn model_request(
        &self,
        message: String,
        history: Vec<Message>,
        context: Option<Map<String, Value>>,
    ) -> ModelRequest {
        ModelRequest {
            system_prompt: self.settings.system_prompt.clone(),
            history,
            message,
            context,
            tools: self.tools.specs(),
            steps: Vec::new(),
        }
    }

    fn user_message(req: &TurnRequest, id: MessageId) -> NewMessage {
        NewMessage {
            id,
            user_id: req.user.clone(),
            role: Role::User,
            content: req.message.clone(),
            metadata: req.metadata.clone(),
        }
    }

    fn agent_message(
        user: &UserId,
        id: MessageId,
        thought: &Thought,
        started: Instant,
        extra: Option<(&str, Value)>,
    ) -> NewMessage {
        let reply = &thought.reply;
        let mut metadata = Map::new();
        metadata.insert("model".into(), json!(reply.model));
        if let Some(u) = reply.usage {
            metadata.insert("usage".into(), json!({"inputTokens": u.input_tokens, "outputTokens": u.output_tokens}));
        }
        metadata.insert("latencyMs".into(), json!(started.elapsed().as_millis() as u64));
        if !thought.actions.is_empty() {
            metadata.insert("actions".into(), Value::Array(thought.actions.iter().map(Action::to_json).collect()));
        }
        if let Some((k, v)) = extra {
            metadata.insert(k.into(), v);
        }
        NewMessage {
            id,
            user_id: user.clone(),
            role: Role::Agent,
            content: reply.text.clone(),
            metadata: Some(metadata),
        }
    }

    async fn call_model(&self, request: &ModelRequest, deltas: Option<&Deltas>) -> Result<ModelReply, ModelError> {
        let timeout = self.settings.llm_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.provider.complete(request, deltas)).await {
            Ok(result) => result,
            Err(_) => Err(ModelError::Timeout(timeout)),
        };
        let tokens = result.as_ref().ok().and_then(|r| r.usage).map(|u| (u.input_tokens, u.output_tokens));
        crate::telemetry::model_call(self.provider.label(), result.is_ok(), started.elapsed(), tokens);
        result
    }

    /// The model's answer, with the tool loop: tool calls are run (in parallel) and their results
    /// given back, up to `AGENT_MAX_TOOL_STEPS` rounds; calls that need approval stop the turn.
    async fn think(
        &self,
        mut request: ModelRequest,
        ctx: &ToolContext,
        progress: Option<&Deltas>,
    ) -> Result<Thought, TurnError> {
        let mut actions = Vec::new();
        let mut usage: Option<Usage> = None;
        for step in 0.. {
            let mut reply = self.call_model(&request, progress).await?;
            if let Some(u) = reply.usage {
                let total = usage.get_or_insert_with(Usage::default);
                total.input_tokens += u.input_tokens;
                total.output_tokens += u.output_tokens;
            }
            reply.usage = usage;
            if reply.tool_calls.is_empty() {
                return Ok(Thought { reply, actions });
            }
            if step >= self.tools.max_steps {
                let note = format!(
                    "I stopped after {} rounds of tool calls (AGENT_MAX_TOOL_STEPS) without a final answer.",
                    self.tools.max_steps
                );
                reply.text = if reply.text.is_empty() { note } else { format!("{}\n\n{note}", reply.text) };
                reply.tool_calls.clear();
                return Ok(Thought { reply, actions });
            }
            for (i, call) in reply.tool_calls.iter_mut().enumerate() {
                if call.id.is_empty() {
                    call.id = format!("call_{}_{}", step + 1, i + 1);
                }
                // Action ids are unique across turns, so approvals can find them.
                call.id = format!("{}-{}", uuid::Uuid::now_v7().simple(), call.id);
            }
            let calls = std::mem::take(&mut reply.tool_calls);
            let (pending, runnable): (Vec<_>, Vec<_>) =
                calls.iter().cloned().partition(|c| self.tools.needs_approval(c));
            for c in &calls {
                if let Some(p) = progress {
                    p.event(StreamItem::ToolCall(json!({"id": c.id, "tool": c.name, "arguments": c.arguments})));
                }
            }
            let results = futures::future::join_all(runnable.iter().map(|c| self.run_tool(c, ctx))).await;
            for (c, r) in runnable.iter().zip(&results) {
                let status = if r.is_error { ActionStatus::Failed } else { ActionStatus::Done };
                let action = action_record(c, status, Some(r));
                if let Some(p) = progress {
                    p.event(StreamItem::ToolResult(action.to_json()));
                }
                actions.push(action);
            }
            if !pending.is_empty() {
                let wanted: Vec<String> = pending.iter().map(|c| format!("{}({})", c.name, c.arguments)).collect();
                let note = format!("I would like to run {}. Please approve or reject.", wanted.join(", "));
                reply.text = if reply.text.is_empty() { note } else { format!("{}\n\n{note}", reply.text) };
                if let Some(p) = progress {
                    p.send(format!("\n\n{}", wanted.join(", ")));
                }
                actions.extend(pending.iter().map(|c| action_record(c, ActionStatus::PendingApproval, None)));
                return Ok(Thought { reply, actions });
            }
            request.steps.push(ToolStep { text: reply.text.clone(), calls: runnable, results });
        }
        unreachable!("the loop returns")
    }

    async fn run_tool(&self, call: &ToolCall, ctx: &ToolContext) -> ToolResult {
        match self.tools.run(call, ctx).await {
            Ok(content) => ToolResult { call_id: call.id.clone(), content, is_error: false },
            Err(e) => {
                ToolResult { call_id: call.id.clone(), content: json!({"error": e.0}).to_string(), is_error: true }
            }
        }
    }

    fn tool_context(tenant: &TenantId, user: &UserId, location: Option<&LocationId>) -> ToolContext {
        ToolContext { tenant: tenant.clone(), user: user.clone(), location: location.cloned() }
    }

    /// A whole turn. Nothing is stored unless the model answers (not even a new session): then the
    /// message and the reply are stored together.
    pub async fn run(&self, req: TurnRequest) -> Result<TurnOutcome, TurnError> {
        let started = Instant::now();
        let result = self.run_turn(req).await;
        crate::telemetry::turn(false, result.is_ok(), started.elapsed());
        result
    }

    async fn run_turn(&self, req: TurnRequest) -> Result<TurnOutcome, TurnError> {
        let _claim = self.claim(&req)?;
        let ids = turn_ids(&req.tenant, req.idempotency_key.as_ref().map(IdempotencyKey::as_str));
        if let Some(done) = self.replay(&req, &ids).await? {
            return Ok(done);
        }
        let (session, idle) = match &req.session_id {
            Some(id) => (Some(id.clone()), None),
            None => match self.store.find_active_session(&req.tenant, &req.user).await? {
                Some(active) if !self.is_idle(&active) => (Some(active.id), None),
                other => (None, other),
            },
        };
        match session {
            Some(id) => self.continue_session(&req, &id, ids).await,
            None => self.start_session_turn(&req, idle, ids).await,
        }
    }

    fn is_idle(&self, session: &Session) -> bool {
        let idle = timestamp::parse_micros(&session.updated_at)
            .map(|t| timestamp::now_micros().saturating_sub(t))
            .unwrap_or(i64::MAX);
        idle > self.settings.session_idle.as_micros() as i64
    }

    /// A turn on an existing session, in two round trips to the store: before the model, one
    /// conditional write that checks the session and reserves the two timestamps, beside the history
    /// read; after it, the two messages written at once. If the model fails, the reservation is
    /// given back and nothing is stored.
    async fn continue_session(
        &self,
        req: &TurnRequest,
        id: &SessionId,
        ids: (MessageId, MessageId),
    ) -> Result<TurnOutcome, TurnError> {
        let limit = self.settings.history_max_messages;
        let history_page = async {
            if limit == 0 {
                Ok(None)
            } else {
                self.store.list_messages(&req.tenant, id, history_query(limit)).await.map(Some)
            }
        };
        let (begun, page) = tokio::join!(self.store.begin_turn(&req.tenant, id, Some(&req.user), 2), history_page);
        let (before, stamps) = begun?;
        let history = complete_history(&*self.store, &before, limit, page?).await?;
        let request = self.model_request(req.message.clone(), history, req.context.clone());
        let ctx = Self::tool_context(&req.tenant, &req.user, before.location_id.as_ref());
        let started = Instant::now();
        let thought = match self.think(request, &ctx, None).await {
            Ok(t) => t,
            Err(e) => {
                let _ = self.store.release_turn(&req.tenant, id, &stamps[1], before.last_message_at.as_ref()).await;
                return Err(e);
            }
        };
        let mut stamps = stamps.into_iter();
        let mut stamp = || stamps.next().unwrap_or_else(Timestamp::now);
        let messages = vec![
            Self::user_message(req, ids.0).into_message(&req.tenant, id, stamp()),
            Self::agent_message(&req.user, ids.1, &thought, started, None).into_message(&req.tenant, id, stamp()),
        ];
        let mut stored = self.store.put_messages(&req.tenant, id, messages).await?.into_iter();
        let (user_message, agent_message) = match (stored.next(), stored.next()) {
            (Some(u), Some(a)) => (u.message, a.message),
            _ => return Err(StoreError::Internal("put returned fewer messages than given".into()).into()),
        };
        Ok(TurnOutcome { session_id: id.clone(), user_message: Some(user_message), agent_message })
    }

    /// A turn that starts a session: the session is created only once the model has answered.
    async fn start_session_turn(
        &self,
        req: &TurnRequest,
        idle: Option<Session>,
        ids: (MessageId, MessageId),
    ) -> Result<TurnOutcome, TurnError> {
        let request = self.model_request(req.message.clone(), Vec::new(), req.context.clone());
        let ctx = Self::tool_context(&req.tenant, &req.user, req.location.as_ref());
        let started = Instant::now();
        let thought = self.think(request, &ctx, None).await?;
        // The idle session is closed, and the new one written with both messages, in one round trip.
        let close_idle = async {
            match &idle {
                Some(idle) => self.store.close_session(&req.tenant, &idle.id).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let new = NewSession {
            tenant_id: req.tenant.clone(),
            user_id: req.user.clone(),
            location_id: req.location.clone(),
            metadata: None,
        };
        let messages =
            vec![Self::user_message(req, ids.0), Self::agent_message(&req.user, ids.1, &thought, started, None)];
        let (closed, created) = tokio::join!(close_idle, self.store.create_session_with(new, messages));
        closed?;
        let (session, stored) = created?;
        let mut stored = stored.into_iter();
        let (user_message, agent_message) = match (stored.next(), stored.next()) {
            (Some(u), Some(a)) => (u, a),
            _ => return Err(StoreError::Internal("the new session has fewer messages than given".into()).into()),
        };
        Ok(TurnOutcome { session_id: session.id, user_message: Some(user_message), agent_message })
    }

    /// A streaming turn, reporting to `events`. The user message is stored first (and sent in the
    /// `Session` event); the reply is stored when the model finishes. If the client goes away
    /// mid-stream, the model call stops and the partial reply is stored with
    /// `metadata.interrupted` saying why, so the conversation never has half a turn.
    pub async fn run_streaming(&self, req: TurnRequest, events: mpsc::Sender<TurnEvent>) {
        let started = Instant::now();
        let result = self.stream_turn(&req, &events).await;
        crate::telemetry::turn(true, result.is_ok(), started.elapsed());
        if let Err(e) = result {
            let _ = events.send(TurnEvent::Error(e)).await;
        }
    }

    /// Asks every running stream to stop now and store what it has (the shutdown deadline passed).
    pub fn stop_streams(&self) {
        let _ = self.stop.send(true);
    }

    async fn stream_turn(&self, req: &TurnRequest, events: &mpsc::Sender<TurnEvent>) -> Result<(), TurnError> {
        let _claim = self.claim(req)?;
        let ids = turn_ids(&req.tenant, req.idempotency_key.as_ref().map(IdempotencyKey::as_str));
        if let Some(done) = self.replay(req, &ids).await? {
            if let Some(user_message) = done.user_message.clone() {
                let _ = events.send(TurnEvent::Session { session_id: done.session_id.clone(), user_message }).await;
            }
            let _ = events.send(TurnEvent::Delta(done.agent_message.content.clone())).await;
            let _ = events.send(TurnEvent::Done(done)).await;
            return Ok(());
        }
        let (session, idle) = self.find_session(req).await?;
        let history = self.history(session.as_ref()).await?;
        let request = self.model_request(req.message.clone(), history, req.context.clone());
        let session = match session {
            Some(s) => s,
            None => self.start_session(req, idle).await?,
        };
        let user_message = self
            .store
            .append_messages(&session.tenant_id, &session.id, vec![Self::user_message(req, ids.0)])
            .await?
            .remove(0)
            .message;
        let started = Instant::now();
        let client_gone = events
            .send(TurnEvent::Session { session_id: session.id.clone(), user_message: user_message.clone() })
            .await
            .is_err();
        let ctx = Self::tool_context(&req.tenant, &req.user, session.location_id.as_ref());
        let agent_message =
            self.stream_reply(&session, &req.user, ids.1, request, &ctx, events, started, client_gone).await?;
        let outcome = TurnOutcome { session_id: session.id, user_message: Some(user_message), agent_message };
        let _ = events.send(TurnEvent::Done(outcome)).await;
        Ok(())
    }

    /// Streams the model's reply (and tool events) to `events` and stores it, partial when the client
    /// went away or the server is shutting down.
    #[allow(clippy::too_many_arguments)]
    async fn stream_reply(
        &self,
        session: &Session,
        user: &UserId,
        id: MessageId,
        request: ModelRequest,
        ctx: &ToolContext,
        events: &mpsc::Sender<TurnEvent>,
        started: Instant,
        mut client_gone: bool,
    ) -> Result<Message, TurnError> {
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
        let progress = Deltas::new(progress_tx);
        let mut partial = String::new();
        let mut result = None;
        let mut stop = self.stop.subscribe();
        let mut stopped = *stop.borrow_and_update();
        if !client_gone && !stopped {
            let thinking = self.think(request, ctx, Some(&progress));
            tokio::pin!(thinking);
            loop {
                tokio::select! {
                    r = &mut thinking, if result.is_none() => result = Some(r),
                    Some(item) = progress_rx.recv() => {
                        let event = match item {
                            StreamItem::Delta(text) => {
                                partial.push_str(&text);
                                TurnEvent::Delta(text)
                            }
                            StreamItem::ToolCall(v) => TurnEvent::ToolCall(v),
                            StreamItem::ToolResult(v) => TurnEvent::ToolResult(v),
                        };
                        if events.send(event).await.is_err() {
                            client_gone = true;
                            break;
                        }
                    }
                    _ = events.closed() => {
                        client_gone = true;
                        break;
                    }
                    Ok(()) = stop.changed() => {
                        stopped = true;
                        break;
                    }
                    else => break,
                }
                if result.is_some() && progress_rx.is_empty() {
                    break;
                }
            }
        }
        drop(progress);
        let (thought, extra) = match result {
            Some(Ok(thought)) if !client_gone && !stopped => (thought, None),
            Some(Err(e)) if !client_gone && !stopped => return Err(e),
            _ => {
                let why = if stopped { "shutdown" } else { "client_disconnected" };
                tracing::info!(session = %session.id, reason = why, "stream interrupted; storing the partial reply");
                let reply = ModelReply { text: partial, model: String::new(), usage: None, tool_calls: Vec::new() };
                (Thought { reply, actions: Vec::new() }, Some(("interrupted", json!(why))))
            }
        };
        let agent = Self::agent_message(user, id, &thought, started, extra);
        Ok(self.store.append_messages(&session.tenant_id, &session.id, vec![agent]).await?.remove(0).message)
    }

    /// Approves (runs) or rejects a pending action, then lets the agent finish its answer, stored as a
    /// new agent message. An action is decided once: a second decision is a conflict.
    pub async fn decide(
        &self,
        tenant: &TenantId,
        session_id: &SessionId,
        user: Option<&UserId>,
        action_id: &str,
        approve: bool,
        reason: Option<String>,
    ) -> Result<TurnOutcome, TurnError> {
        let not_found = || StoreError::NotFound(format!("action {action_id} not found in session {session_id}"));
        let stored = self.store.get_session(tenant, session_id).await?;
        let session = writable_session(stored, session_id, user).map_err(|e| match e {
            StoreError::NotFound(_) => not_found(),
            other => other,
        })?;
        let recent = self
            .store
            .list_messages(tenant, session_id, MessageQuery { limit: 50, order: Order::Desc, ..Default::default() })
            .await?;
        let (message, action) = recent
            .items
            .iter()
            .filter(|m| m.role == Role::Agent)
            .find_map(|m| {
                let action = Action::all_in(m.metadata.as_ref()).into_iter().find(|a| a.id == action_id)?;
                Some((m.clone(), action))
            })
            .ok_or_else(not_found)?;
        let decided = |action: &Action| {
            StoreError::Conflict(format!("action {action_id} was already decided (status {})", action.status.as_str()))
        };
        if action.status != ActionStatus::PendingApproval {
            return Err(decided(&action).into());
        }
        let call = ToolCall { id: action.id.clone(), name: action.tool.clone(), arguments: action.arguments.clone() };
        let mut claimed = action.clone();
        claimed.status = if approve { ActionStatus::Approved } else { ActionStatus::Rejected };
        claimed.reason = reason.clone();
        if !self.store.transition_action(tenant, &message.id, ActionStatus::PendingApproval, &claimed).await? {
            return Err(decided(&claimed).into());
        }
        let ctx = Self::tool_context(tenant, &session.user_id, session.location_id.as_ref());
        let (resolved, note) = if approve {
            let result = self.run_tool(&call, &ctx).await;
            let status = if result.is_error { ActionStatus::Failed } else { ActionStatus::Done };
            let mut done = action_record(&call, status, Some(&result));
            done.approved = Some(true);
            self.store.transition_action(tenant, &message.id, ActionStatus::Approved, &done).await?;
            let note = format!(
                "[The user approved {}({}). It {}: {}]",
                call.name,
                call.arguments,
                if result.is_error { "failed" } else { "ran" },
                result.content
            );
            (done, note)
        } else {
            let note = format!(
                "[The user rejected {}({}){}. Do not run it.]",
                call.name,
                call.arguments,
                reason.as_deref().map(|r| format!(" because: {r}")).unwrap_or_default()
            );
            (claimed, note)
        };
        let history = recent_history(&*self.store, &session, self.settings.history_max_messages).await?;
        let request = self.model_request(note, history, None);
        let started = Instant::now();
        let mut thought = self.think(request, &ctx, None).await?;
        thought.actions.insert(0, resolved);
        let agent = Self::agent_message(&session.user_id, MessageId::generate(), &thought, started, None);
        let agent_message = self.store.append_messages(tenant, session_id, vec![agent]).await?.remove(0).message;
        Ok(TurnOutcome { session_id: session.id, user_message: None, agent_message })
    }
}

/// The model's final reply for a turn and every tool call it made on the way.
struct Thought {
    reply: ModelReply,
    actions: Vec<Action>,
}
