//! The agent turn: resolve the session, give the model its history, store the message and the reply.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};
use crate::llm::{ModelError, ModelReply, ModelRequest, Provider};
use crate::store::{
    ConversationStore, Message, Metadata, NewMessage, NewSession, Role, Session, StoreError, recent_history,
};
use crate::timestamp;

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
    pub idempotency_key: Option<String>,
}

/// A finished turn: both stored messages.
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub session_id: SessionId,
    pub user_message: Message,
    pub agent_message: Message,
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
    Done(TurnOutcome),
    Error(TurnError),
}

pub struct Agent {
    store: Arc<dyn ConversationStore>,
    provider: Provider,
    settings: AgentSettings,
    /// Idempotency keys (per tenant) of turns running in this process.
    in_flight: Mutex<HashSet<(TenantId, String)>>,
    /// Set when streams must stop (shutdown deadline).
    stop: tokio::sync::watch::Sender<bool>,
}

/// Removes an idempotency key from the in-flight set when the turn ends, however it ends.
struct InFlight<'a> {
    agent: &'a Agent,
    key: Option<(TenantId, String)>,
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
        Self {
            store,
            provider,
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
            Some(agent_message) => {
                Ok(Some(TurnOutcome { session_id: user_message.session_id.clone(), user_message, agent_message }))
            }
            None => Err(TurnError::InProgress),
        }
    }

    /// The session this turn continues, or `None` when it starts a new one (created only when the
    /// turn has something to store). An idle active session is closed at that point.
    async fn find_session(&self, req: &TurnRequest) -> Result<(Option<Session>, Option<Session>), TurnError> {
        if let Some(id) = &req.session_id {
            let session = self
                .store
                .get_session(&req.tenant, id)
                .await?
                .filter(|s| s.user_id == req.user)
                .ok_or_else(|| StoreError::NotFound(format!("session {id} not found for this tenant and user")))?;
            if !session.is_active {
                return Err(StoreError::Conflict(format!(
                    "session {id} is closed; send the message without sessionId to start a new one"
                ))
                .into());
            }
            return Ok((Some(session), None));
        }
        match self.store.find_active_session(&req.tenant, &req.user).await? {
            Some(active) => {
                let idle = timestamp::parse_micros(&active.updated_at)
                    .map(|t| timestamp::now_micros().saturating_sub(t))
                    .unwrap_or(i64::MAX);
                if idle <= self.settings.session_idle.as_micros() as i64 {
                    Ok((Some(active), None))
                } else {
                    Ok((None, Some(active)))
                }
            }
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

    async fn model_request(&self, req: &TurnRequest, session: Option<&Session>) -> Result<ModelRequest, TurnError> {
        let history = self.history(session).await?;
        Ok(ModelRequest {
            system_prompt: self.settings.system_prompt.clone(),
            history,
            message: req.message.clone(),
            context: req.context.clone(),
        })
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
        req: &TurnRequest,
        id: MessageId,
        reply: &ModelReply,
        started: Instant,
        extra: Option<(&str, Value)>,
    ) -> NewMessage {
        let mut metadata = Map::new();
        metadata.insert("model".into(), json!(reply.model));
        if let Some(u) = reply.usage {
            metadata.insert("usage".into(), json!({"inputTokens": u.input_tokens, "outputTokens": u.output_tokens}));
        }
        metadata.insert("latencyMs".into(), json!(started.elapsed().as_millis() as u64));
        if let Some((k, v)) = extra {
            metadata.insert(k.into(), v);
        }
        NewMessage {
            id,
            user_id: req.user.clone(),
            role: Role::Agent,
            content: reply.text.clone(),
            metadata: Some(metadata),
        }
    }

    async fn call_model(
        &self,
        request: &ModelRequest,
        deltas: Option<&crate::llm::Deltas>,
    ) -> Result<ModelReply, ModelError> {
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
        let ids = turn_ids(&req.tenant, req.idempotency_key.as_deref());
        if let Some(done) = self.replay(&req, &ids).await? {
            return Ok(done);
        }
        let (session, idle) = self.find_session(&req).await?;
        let request = self.model_request(&req, session.as_ref()).await?;
        let started = Instant::now();
        let reply = self.call_model(&request, None).await?;
        let session = match session {
            Some(s) => s,
            None => self.start_session(&req, idle).await?,
        };
        let messages = vec![Self::user_message(&req, ids.0), Self::agent_message(&req, ids.1, &reply, started, None)];
        let mut stored = self.store.append_messages(&session.tenant_id, &session.id, messages).await?.into_iter();
        let (user_message, agent_message) = match (stored.next(), stored.next()) {
            (Some(u), Some(a)) => (u.message, a.message),
            _ => {
                return Err(StoreError::Internal("append returned fewer messages than given".into()).into());
            }
        };
        Ok(TurnOutcome { session_id: session.id, user_message, agent_message })
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
        let ids = turn_ids(&req.tenant, req.idempotency_key.as_deref());
        if let Some(done) = self.replay(req, &ids).await? {
            let _ = events
                .send(TurnEvent::Session {
                    session_id: done.session_id.clone(),
                    user_message: done.user_message.clone(),
                })
                .await;
            let _ = events.send(TurnEvent::Delta(done.agent_message.content.clone())).await;
            let _ = events.send(TurnEvent::Done(done)).await;
            return Ok(());
        }
        let (session, idle) = self.find_session(req).await?;
        let request = self.model_request(req, session.as_ref()).await?;
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
        let mut client_gone = events
            .send(TurnEvent::Session { session_id: session.id.clone(), user_message: user_message.clone() })
            .await
            .is_err();

        let (delta_tx, mut delta_rx) = mpsc::unbounded_channel();
        let mut partial = String::new();
        let mut result = None;
        let mut stop = self.stop.subscribe();
        let mut stopped = *stop.borrow_and_update();
        if !client_gone && !stopped {
            let model = self.call_model(&request, Some(&delta_tx));
            tokio::pin!(model);
            loop {
                tokio::select! {
                    r = &mut model, if result.is_none() => result = Some(r),
                    Some(text) = delta_rx.recv() => {
                        partial.push_str(&text);
                        if events.send(TurnEvent::Delta(text)).await.is_err() {
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
                if result.is_some() && delta_rx.is_empty() {
                    break;
                }
            }
        }
        drop(delta_tx);
        let (reply, extra) = match result {
            Some(Ok(reply)) if !client_gone && !stopped => (reply, None),
            Some(Err(e)) if !client_gone && !stopped => return Err(e.into()),
            _ => {
                let why = if stopped { "shutdown" } else { "client_disconnected" };
                tracing::info!(session = %session.id, reason = why, "stream interrupted; storing the partial reply");
                let reply = ModelReply { text: partial, model: String::new(), usage: None };
                (reply, Some(("interrupted", json!(why))))
            }
        };
        let agent = Self::agent_message(req, ids.1, &reply, started, extra);
        let agent_message =
            self.store.append_messages(&session.tenant_id, &session.id, vec![agent]).await?.remove(0).message;
        let _ = events.send(TurnEvent::Done(TurnOutcome { session_id: session.id, user_message, agent_message })).await;
        Ok(())
    }
}
