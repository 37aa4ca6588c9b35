//! The channels' jobs, in the store's outbox beside the webhooks' deliveries (endpoint
//! `channel <channelId>`): an inbound message becomes a turn of the channel's agent, and a reply (or a
//! business's message) is sent to the provider, each at least once, by whichever server sharing the
//! store claims it first (a lease), with retries and backoff. A job run again does nothing twice:
//! the turn is keyed by the job (a retry replays it), and a reply whose provider message id is
//! recorded (`metadata.delivery`) is not sent again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::whatsapp::Content;
use super::{ChannelKind, ChannelsConfig, StoredChannel, Template};
use crate::agent::{Agent, TurnError, TurnOutcome, TurnRequest};
use crate::events::{Change, EventType};
use crate::ids::{ChannelId, IdempotencyKey, MessageId, TenantId, UserId};
use crate::store::{
    Delivery, DeliveryStep, Metadata, NewMessage, NewSession, OutboxPart, Role, StoreError, StoreResult,
};

/// The outbox endpoint of a channel's jobs.
pub const ENDPOINT_PREFIX: &str = "channel ";
const INBOUND: &str = "channel.inbound";
const SEND: &str = "channel.send";
/// How long a claimed job is this server's: a turn (or a send, with its 15 s timeout) fits in it;
/// past it (the server died), another server runs the job again.
const INBOUND_LEASE_MS: i64 = 120_000;
const SEND_LEASE_MS: i64 = 30_000;
/// The waits between attempts (then the last one again), and when a job is given up.
const BACKOFF_MS: [i64; 6] = [1_000, 5_000, 30_000, 120_000, 600_000, 1_800_000];
const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// WhatsApp's customer-service window: a free-form message only within 24 h of the user's last one.
pub const SERVICE_WINDOW_MS: i64 = 24 * 3600 * 1000;
const BATCH: usize = 64;
/// The longest inbound text a turn is given (WhatsApp's own limit is 4,096 characters).
const MAX_TEXT_CHARS: usize = 8_192;
const CONCURRENCY: usize = 16;

/// A message a customer sent, as a provider's webhook gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The provider's address of the customer (`wa_id`, `From`).
    pub from: String,
    /// The provider's id of the message (`wamid`, `MessageSid`): a retried webhook has the same.
    pub provider_id: String,
    /// The text; `None` for a message of another type.
    pub text: Option<String>,
    /// `text`, or the provider's type (`image`, `audio`, `media`, ...).
    pub kind: String,
    pub profile_name: Option<String>,
    /// What a reply needs to continue the provider's thread (an email's subject and ids).
    pub thread: Value,
}

/// What a send job sends: the stored message's text, or its own text or template; and the
/// context of the reply (when the user last wrote, the thread it continues).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outgoing<'a> {
    pub text: Option<&'a str>,
    pub template: Option<&'a Template>,
    pub inbound_at: Option<i64>,
    pub thread: Option<&'a Value>,
    /// What makes the job unique when no stored message does (recorded twice, it is one job).
    pub key: Option<&'a str>,
}

/// A provider's receipt for a message it was given (`sent`, `delivered`, `read`, `failed`).
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub provider_id: String,
    pub status: String,
    /// Our message id, when the provider gives it back.
    pub message: Option<String>,
    pub error: Option<String>,
}

/// Why a message from the business (or its agent) could not be queued.
#[derive(Debug)]
pub enum BusinessSendError {
    NoChannel,
    Invalid(String),
    /// WhatsApp: a text to a user whose last message is more than 24 hours old.
    OutsideWindow,
    Store(StoreError),
}

impl BusinessSendError {
    pub fn message(&self) -> String {
        match self {
            BusinessSendError::NoChannel => "this tenant has no such channel".into(),
            BusinessSendError::Invalid(m) => m.clone(),
            BusinessSendError::OutsideWindow => {
                "outside_service_window: this user's last message is more than 24 hours \
                                                 old (or there is none): WhatsApp needs an approved template"
                    .into()
            }
            BusinessSendError::Store(e) => e.to_string(),
        }
    }
}

impl From<StoreError> for BusinessSendError {
    fn from(e: StoreError) -> Self {
        BusinessSendError::Store(e)
    }
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Worth trying again (a timeout, a connection error, 408, 429, 5xx).
    Transient(String),
    /// Not worth trying again.
    Permanent(String),
}

impl SendError {
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        SendError::Transient(e.without_url().to_string())
    }

    pub fn from_status(status: u16, message: String) -> Self {
        if status >= 500 || matches!(status, 408 | 429) {
            SendError::Transient(message)
        } else {
            SendError::Permanent(message)
        }
    }
}

fn now_ms() -> i64 {
    crate::timestamp::now_micros() / 1000
}

/// A short, stable id for a job from its parts (a provider's message id can be long).
fn job_id(prefix: &str, parts: &[&str]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, parts.join("\u{1f}").as_bytes());
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The order of a delivery's statuses: a receipt never takes a message back.
fn rank(status: &str) -> u8 {
    match status {
        "accepted" | "queued" => 1,
        "sent" => 2,
        "delivered" => 3,
        "read" => 4,
        "failed" => 5,
        _ => 0,
    }
}

/// The channels' side of the server: recording inbound messages and receipts, and the worker.
pub struct Channels {
    agent: Arc<Agent>,
    config: ChannelsConfig,
    client: reqwest::Client,
    wake: Arc<Notify>,
    owner: String,
}

impl Channels {
    pub fn new(agent: Arc<Agent>, config: ChannelsConfig) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("agent-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the channels' HTTP client builds");
        Arc::new(Channels {
            agent,
            config,
            client,
            wake: Arc::new(Notify::new()),
            owner: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    pub fn config(&self) -> &ChannelsConfig {
        &self.config
    }

    fn store(&self) -> &Arc<dyn crate::store::ConversationStore> {
        self.agent.store()
    }

    fn job(channel: &StoredChannel, id: String, kind: &str, user: &UserId, body: Value) -> Delivery {
        let now = now_ms();
        Delivery {
            event_id: id,
            tenant_id: channel.tenant_id.clone(),
            kind: kind.into(),
            user_id: Some(user.clone()),
            session_id: None,
            endpoint: format!("{ENDPOINT_PREFIX}{}", channel.id),
            body: body.to_string(),
            attempts: 0,
            next_at: now,
            first_at: now,
            lease_until: 0,
            last_error: None,
        }
    }

    /// Records inbound messages as jobs (durably: the provider's 200 comes after this). A message
    /// whose job is recorded already (a retried webhook) adds nothing.
    pub async fn receive(&self, channel: &StoredChannel, messages: &[Inbound]) -> StoreResult<usize> {
        let mut jobs = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let Some(user) = channel.user_for(&m.from) else {
                tracing::warn!(channel = %channel.id, "an inbound message from an address that is not a valid user id");
                continue;
            };
            let id = job_id("chin", &[channel.tenant_id.as_str(), channel.id.as_str(), &m.provider_id]);
            let body = json!({
                "from": m.from,
                "providerId": m.provider_id,
                "text": m.text,
                "kind": m.kind,
                "profileName": m.profile_name,
                "thread": m.thread,
                "receivedAt": now_ms(),
            });
            let mut job = Self::job(channel, id, INBOUND, &user, body);
            // In the order the provider gave them (the outbox is read by `next_at`).
            job.next_at += i as i64;
            job.first_at = job.next_at;
            jobs.push(job);
        }
        if jobs.is_empty() {
            return Ok(0);
        }
        self.store().record_events(&[], &jobs).await?;
        metrics::counter!("channel_messages_received_total", "type" => channel.spec.kind.as_str())
            .increment(jobs.len() as u64);
        self.wake.notify_one();
        Ok(jobs.len())
    }

    /// Records a message to send to `user` (a reply, or the business's own), by `id`: one job per
    /// message, whoever records it again.
    pub async fn queue_send(
        &self,
        channel: &StoredChannel,
        user: &UserId,
        message: Option<&MessageId>,
        out: Outgoing<'_>,
    ) -> StoreResult<()> {
        let key = match (message, out.key) {
            (Some(m), _) => m.as_str().to_string(),
            (None, Some(key)) => format!("key {key}"),
            (None, None) => uuid::Uuid::now_v7().to_string(),
        };
        let id = job_id("chout", &[channel.tenant_id.as_str(), channel.id.as_str(), &key]);
        let body = json!({
            "messageId": message,
            "text": out.text,
            "template": out.template,
            "inboundAt": out.inbound_at,
            "thread": out.thread,
        });
        self.store().record_events(&[], &[Self::job(channel, id, SEND, user, body)]).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Records a provider's receipt on the message it is for (its status never goes back).
    pub async fn receipt(&self, channel: &StoredChannel, receipt: &Receipt) -> StoreResult<()> {
        let Some(id) = receipt.message.as_deref().and_then(|m| MessageId::parse(m).ok()) else { return Ok(()) };
        let tenant = &channel.tenant_id;
        let Some(message) = self.store().get_message(tenant, &id).await? else { return Ok(()) };
        let mut delivery = message
            .metadata
            .as_ref()
            .and_then(|m| m.get("delivery"))
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({"channel": channel.id, "type": channel.spec.kind}));
        if delivery["providerMessageId"].as_str().is_some_and(|p| p != receipt.provider_id) {
            return Ok(());
        }
        let current = delivery["status"].as_str().unwrap_or_default().to_string();
        delivery[format!("{}At", receipt.status)] = json!(crate::timestamp::Timestamp::now());
        if rank(&receipt.status) > rank(&current) {
            delivery["status"] = json!(receipt.status);
            delivery["providerMessageId"] = json!(receipt.provider_id);
            if let Some(e) = &receipt.error {
                delivery["error"] = json!(e);
            }
        }
        self.store().set_delivery(tenant, &id, &delivery).await?;
        if receipt.status == "failed" && current != "failed" {
            let error = receipt.error.clone().unwrap_or_else(|| "the provider could not deliver it".into());
            self.announce_failure(channel, &message.user_id, Some(&id), &error).await;
        }
        Ok(())
    }

    async fn announce_failure(&self, channel: &StoredChannel, user: &UserId, message: Option<&MessageId>, error: &str) {
        metrics::counter!("channel_delivery_failures_total", "type" => channel.spec.kind.as_str()).increment(1);
        let data = json!({"channelId": channel.id, "type": channel.spec.kind, "userId": user, "messageId": message, "error": error});
        let change = Change::new(EventType::ChannelDeliveryFailed, Some(user), data);
        self.agent.events().record(&channel.tenant_id, vec![change]).await;
    }

    /// Runs the jobs until the process ends: the due ones are read whenever a job is recorded here,
    /// and every second, and each runs as its own task (at most `CONCURRENCY` at once), so a slow
    /// turn holds up no other message.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let running: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
        // Per user, the newest inbound job's signal that its turn has taken its place in the
        // session: the next one of that user starts its turn after it, so that a customer's
        // messages keep their order and a burst can still queue behind one turn.
        let mut placed: std::collections::HashMap<(TenantId, UserId), tokio::sync::watch::Receiver<bool>> =
            std::collections::HashMap::new();
        loop {
            let due = match self.store().pending_deliveries(Some(now_ms()), BATCH, OutboxPart::Channels).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the channels' jobs failed");
                    Vec::new()
                }
            };
            for job in due {
                if !running.lock().unwrap_or_else(|p| p.into_inner()).insert(job.event_id.clone()) {
                    continue;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (this, running) = (self.clone(), running.clone());
                let order = match (&job.user_id, job.kind == INBOUND) {
                    (Some(user), true) => {
                        let (tx, rx) = tokio::sync::watch::channel(false);
                        let before = placed.insert((job.tenant_id.clone(), user.clone()), rx);
                        Some((before, tx))
                    }
                    _ => None,
                };
                placed.retain(|_, rx| !*rx.borrow() && rx.has_changed().is_ok());
                tokio::spawn(async move {
                    let id = job.event_id.clone();
                    let mine = match order {
                        Some((before, mine)) => {
                            if let Some(mut before) = before {
                                // Its predecessor took its place (or ended, or gave up).
                                let _ = before.wait_for(|placed| *placed).await;
                            }
                            Some(mine)
                        }
                        None => None,
                    };
                    this.run_job(job, mine.as_ref()).await;
                    if let Some(mine) = mine {
                        let _ = mine.send(true);
                    }
                    running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    drop(slot);
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn run_job(&self, job: Delivery, placed: Option<&tokio::sync::watch::Sender<bool>>) {
        let now = now_ms();
        let lease = if job.kind == INBOUND { INBOUND_LEASE_MS } else { SEND_LEASE_MS };
        match self.store().claim_delivery(&job, &self.owner, now, now + lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, job = %job.event_id, "claiming a channel job failed");
                return;
            }
        }
        let result = match self.channel_of(&job).await {
            Ok(Some(channel)) => match job.kind.as_str() {
                INBOUND => self.answer(&channel, &job, placed).await,
                _ => self.send(&channel, &job).await,
            },
            // The channel was deleted: its jobs go.
            Ok(None) => Ok(()),
            Err(e) => Err(SendError::Transient(e.to_string())),
        };
        let step = match result {
            Ok(()) => DeliveryStep::Finished,
            Err(SendError::Transient(error)) => {
                let attempts = job.attempts + 1;
                let wait = BACKOFF_MS[(attempts as usize - 1).min(BACKOFF_MS.len() - 1)];
                let next_at = now_ms() + wait;
                if next_at > job.first_at + GIVE_UP_AFTER_MS {
                    self.give_up(&job, &error).await;
                    DeliveryStep::Finished
                } else {
                    tracing::info!(job = %job.event_id, %error, attempts, "a channel job failed; will retry");
                    DeliveryStep::Retry { attempts, next_at, error }
                }
            }
            Err(SendError::Permanent(error)) => {
                self.give_up(&job, &error).await;
                DeliveryStep::Finished
            }
        };
        if let Err(e) = self.store().settle_delivery(&job, &self.owner, step).await {
            tracing::warn!(error = %e, job = %job.event_id, "recording a channel job's attempt failed");
        }
    }

    async fn channel_of(&self, job: &Delivery) -> StoreResult<Option<StoredChannel>> {
        let Some(id) = job.endpoint.strip_prefix(ENDPOINT_PREFIX).and_then(|c| ChannelId::parse(c).ok()) else {
            return Ok(None);
        };
        self.store().get_channel(&job.tenant_id, &id).await
    }

    /// A job that will not be done: a send that finally failed is marked on its message and
    /// announced (`channel.delivery_failed`).
    async fn give_up(&self, job: &Delivery, error: &str) {
        tracing::warn!(job = %job.event_id, %error, kind = %job.kind, "a channel job failed for good");
        let Ok(Some(channel)) = self.channel_of(job).await else { return };
        let Some(user) = &job.user_id else { return };
        let body: Value = serde_json::from_str(&job.body).unwrap_or_default();
        let message = body["messageId"].as_str().and_then(|m| MessageId::parse(m).ok());
        if job.kind == SEND {
            if let Some(id) = &message {
                let delivery = json!({"channel": channel.id, "type": channel.spec.kind, "status": "failed", "error": error, "failedAt": crate::timestamp::Timestamp::now()});
                if let Err(e) = self.store().set_delivery(&channel.tenant_id, id, &delivery).await {
                    tracing::warn!(error = %e, "could not mark a message's delivery failed");
                }
            }
            self.announce_failure(&channel, user, message.as_ref(), error).await;
        }
    }

    /// An inbound job: the turn of the channel's agent (keyed by the job), and its reply queued.
    async fn answer(
        &self,
        channel: &StoredChannel,
        job: &Delivery,
        placed: Option<&tokio::sync::watch::Sender<bool>>,
    ) -> Result<(), SendError> {
        let Some(user) = job.user_id.clone() else { return Ok(()) };
        let body: Value = serde_json::from_str(&job.body).unwrap_or_default();
        let received_at = body["receivedAt"].as_i64();
        let tenant = &channel.tenant_id;
        let mut metadata = Metadata::new();
        metadata.insert(
            "channel".into(),
            json!({"id": channel.id, "type": channel.spec.kind, "providerMessageId": body["providerId"]}),
        );
        let Some(text) = body["text"].as_str().filter(|t| !t.trim().is_empty()) else {
            return self.not_supported(channel, job, &user, &body, metadata).await;
        };
        // A session the message starts names its channel (where a later reply, after an
        // approval, goes) and the contact's name.
        let mut session_metadata = Metadata::new();
        session_metadata.insert("channel".into(), json!({"id": channel.id, "type": channel.spec.kind}));
        if let Some(name) = body["profileName"].as_str() {
            session_metadata.insert("contact".into(), json!({"name": name, "channel": channel.id}));
        }
        let session_metadata = Some(session_metadata);
        let mut request = TurnRequest {
            tenant: tenant.clone(),
            user: user.clone(),
            location: None,
            message: text.chars().take(MAX_TEXT_CHARS).collect(),
            session_id: None,
            context: None,
            metadata: Some(metadata),
            idempotency_key: IdempotencyKey::parse(&job.event_id),
            on_disconnect: crate::agent::OnDisconnect::Continue,
            stream: false,
            agent: channel.spec.agent_id.clone(),
            concurrency: None,
            session_metadata,
        };
        let mut outcome = self.turn(request.clone(), placed).await;
        let answered = |o: &TurnOutcome| {
            matches!(o.status, crate::store::TurnStatus::Completed | crate::store::TurnStatus::AwaitingApproval)
        };
        if let Ok(o) = &outcome
            && !answered(o)
        {
            let why = o.agent_message.metadata.as_ref().and_then(|m| m.get("interrupted")).and_then(Value::as_str);
            if why == Some("superseded") {
                // A newer message's turn stopped it, and answers both.
                return Ok(());
            }
            // Cut off (its server died, or it was cancelled): the message is answered by a turn of
            // its own, once (the cut-off reply is never sent).
            request.idempotency_key = IdempotencyKey::parse(&format!("{}-again", job.event_id));
            outcome = self.turn(request, None).await;
            if outcome.as_ref().is_ok_and(|o| !answered(o)) {
                return Err(SendError::Permanent("the turn was cut off twice".into()));
            }
        }
        match outcome {
            Ok(outcome) => self.reply(channel, &user, &outcome, received_at, &body["thread"]).await,
            Err(TurnError::BudgetExceeded(_)) => {
                // Refused before the model: the channel's fallback text, once for this message.
                let Some(text) = channel.spec.fallback_text.as_deref() else { return Ok(()) };
                // Noted once per message (a webhook retried after this job ended sends nothing);
                // this job's own retries queue it again, under the same id.
                let first = self
                    .store()
                    .note_once(
                        tenant,
                        &format!("fallback {}", job.event_id),
                        crate::timestamp::epoch_seconds() + 7 * 86_400,
                    )
                    .await
                    .map_err(|e| SendError::Transient(e.to_string()))?;
                if first || job.attempts > 0 {
                    let out = Outgoing {
                        text: Some(text),
                        inbound_at: received_at,
                        thread: Some(&body["thread"]),
                        key: Some(&job.event_id),
                        ..Default::default()
                    };
                    self.queue_send(channel, &user, None, out)
                        .await
                        .map_err(|e| SendError::Transient(e.to_string()))?;
                }
                Ok(())
            }
            Err(
                e @ (TurnError::InProgress(_)
                | TurnError::TurnInProgress(_)
                | TurnError::Store(_)
                | TurnError::Model(_)
                | TurnError::AnsweredWith(_)),
            ) => Err(SendError::Transient(e.to_string())),
            Err(TurnError::Erased) => Ok(()),
            Err(e) => Err(SendError::Permanent(e.to_string())),
        }
    }

    /// Runs a JSON turn (or replays it, for a job run again) to its outcome.
    /// `placed` is told once the turn has its place in the session (its messages' order is fixed).
    async fn turn(
        &self,
        request: TurnRequest,
        placed: Option<&tokio::sync::watch::Sender<bool>>,
    ) -> Result<TurnOutcome, TurnError> {
        match self.agent.start(request).await? {
            crate::agent::Started::Live(live) => {
                if let Some(placed) = placed {
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while live.session().is_none() && live.result().is_none() && std::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let _ = placed.send(true);
                }
                live.finished().await
            }
            crate::agent::Started::Replayed(outcome) => Ok(*outcome),
            _ => Err(TurnError::InProgress(MessageId::generate())),
        }
    }

    /// Queues the reply of a finished turn, once per reply (a message answered by another turn's
    /// reply, in a burst, shares it).
    async fn reply(
        &self,
        channel: &StoredChannel,
        user: &UserId,
        outcome: &TurnOutcome,
        received_at: Option<i64>,
        thread: &Value,
    ) -> Result<(), SendError> {
        let reply = &outcome.agent_message;
        if reply.content.trim().is_empty() {
            return Ok(());
        }
        let out = Outgoing { inbound_at: received_at, thread: Some(thread), ..Default::default() };
        self.queue_send(channel, user, Some(&reply.id), out).await.map_err(|e| SendError::Transient(e.to_string()))
    }

    /// A message of a type the agent cannot read yet: a placeholder is stored, and a polite reply.
    async fn not_supported(
        &self,
        channel: &StoredChannel,
        job: &Delivery,
        user: &UserId,
        body: &Value,
        metadata: Metadata,
    ) -> Result<(), SendError> {
        let kind = body["kind"].as_str().unwrap_or("unknown");
        let tenant = &channel.tenant_id;
        let store = self.store();
        let transient = |e: StoreError| SendError::Transient(e.to_string());
        let session = match store.find_active_session(tenant, user).await.map_err(transient)? {
            Some(s) => s,
            None => {
                let new =
                    NewSession { tenant_id: tenant.clone(), user_id: user.clone(), location_id: None, metadata: None };
                store.create_session(new).await.map_err(transient)?
            }
        };
        let ids = (MessageId::parse(job.event_id.clone()), MessageId::parse(format!("{}-reply", job.event_id)));
        let (Ok(user_id), Ok(reply_id)) = ids else { return Ok(()) };
        let placeholder = NewMessage {
            id: user_id,
            user_id: user.clone(),
            role: Role::User,
            content: format!("[{kind} message]"),
            metadata: Some(metadata),
            counted: None,
        };
        let mut reply_metadata = Metadata::new();
        reply_metadata.insert("source".into(), json!("channel"));
        let reply = NewMessage {
            id: reply_id.clone(),
            user_id: user.clone(),
            role: Role::Agent,
            content: format!(
                "Sorry, I can only read text messages for now: I could not read your {kind} message. Could you write it as text?"
            ),
            metadata: Some(reply_metadata),
            counted: None,
        };
        store.append_messages(tenant, &session.id, vec![placeholder, reply]).await.map_err(transient)?;
        let out =
            Outgoing { inbound_at: body["receivedAt"].as_i64(), thread: Some(&body["thread"]), ..Default::default() };
        self.queue_send(channel, user, Some(&reply_id), out).await.map_err(transient)
    }

    /// A send job: the message's text (or the job's own text or template) to the provider, unless
    /// the message was sent already; the provider's id recorded on the message.
    async fn send(&self, channel: &StoredChannel, job: &Delivery) -> Result<(), SendError> {
        let Some(user) = &job.user_id else { return Ok(()) };
        let tenant = &channel.tenant_id;
        let body: Value = serde_json::from_str(&job.body).unwrap_or_default();
        let message_id = body["messageId"].as_str().and_then(|m| MessageId::parse(m).ok());
        let transient = |e: StoreError| SendError::Transient(e.to_string());
        let message = match &message_id {
            Some(id) => match self.store().get_message(tenant, id).await.map_err(transient)? {
                Some(m) => Some(m),
                // Erased meanwhile: nothing to send.
                None => return Ok(()),
            },
            None => None,
        };
        if message
            .as_ref()
            .and_then(|m| m.metadata.as_ref())
            .and_then(|m| m.get("delivery"))
            .is_some_and(|d| d["providerMessageId"].is_string())
        {
            return Ok(());
        }
        let template: Option<Template> = serde_json::from_value(body["template"].clone()).ok();
        let text = message.as_ref().map(|m| m.content.clone()).or_else(|| body["text"].as_str().map(str::to_string));
        let Some(to) = channel.recipient(user) else {
            return Err(SendError::Permanent(format!(
                "{user} is not a user of this {} channel",
                channel.spec.kind.as_str()
            )));
        };
        let callback = message_id.as_ref().map(|m| m.as_str().to_string()).unwrap_or_default();
        let sent = match channel.spec.kind {
            ChannelKind::Whatsapp => {
                let inbound_at = match body["inboundAt"].as_i64() {
                    Some(at) => Some(at),
                    None => self.last_inbound(tenant, user).await.map_err(transient)?,
                };
                let open = inbound_at.is_some_and(|at| now_ms() - at < SERVICE_WINDOW_MS);
                let content = match (&template, open, &text) {
                    (Some(t), _, _) => Content::Template(t),
                    (None, true, Some(text)) => Content::Text(text),
                    (None, false, Some(_)) => {
                        return Err(SendError::Permanent(
                            "outside_service_window: the user's last message is more than 24 hours old; a template is needed".into(),
                        ));
                    }
                    (None, _, None) => return Ok(()),
                };
                let spec = &channel.spec;
                super::whatsapp::send(
                    &self.client,
                    &self.config.whatsapp_base_url,
                    &self.config.whatsapp_api_version,
                    spec.phone_number_id.as_deref().unwrap_or_default(),
                    spec.access_token.as_deref().unwrap_or_default(),
                    &to,
                    content,
                    &callback,
                )
                .await
            }
            ChannelKind::Email => {
                let Some(text) = text else { return Ok(()) };
                let id = message_id.as_ref().map(|m| m.as_str().to_string()).unwrap_or_else(|| job.event_id.clone());
                super::email::send(channel, &to, &text, &body["thread"], &id).await
            }
            ChannelKind::Twilio => {
                let Some(text) = text else { return Ok(()) };
                let spec = &channel.spec;
                let status_callback = self.config.public_base_url.as_ref().map(|base| {
                    let mut url = format!("{}/channels/twilio/{}/status", base.trim_end_matches('/'), channel.id);
                    if let Some(m) = &message_id {
                        url.push_str("?messageId=");
                        url.push_str(
                            &percent_encoding::utf8_percent_encode(m.as_str(), percent_encoding::NON_ALPHANUMERIC)
                                .to_string(),
                        );
                    }
                    url
                });
                super::twilio::send(
                    &self.client,
                    &self.config.twilio_base_url,
                    spec.account_sid.as_deref().unwrap_or_default(),
                    spec.auth_token.as_deref().unwrap_or_default(),
                    spec.from.as_deref().unwrap_or_default(),
                    &to,
                    &text,
                    status_callback.as_deref(),
                )
                .await
            }
        };
        let provider_id = sent?;
        metrics::counter!("channel_messages_sent_total", "type" => channel.spec.kind.as_str()).increment(1);
        if let Some(id) = &message_id {
            let delivery = json!({
                "channel": channel.id,
                "type": channel.spec.kind,
                "status": "accepted",
                "providerMessageId": provider_id,
                "acceptedAt": crate::timestamp::Timestamp::now(),
            });
            // A receipt may have come first (Twilio's can): what it said stays.
            let mut delivery = delivery;
            if let Ok(Some(now)) = self.store().get_message(tenant, id).await
                && let Some(seen) = now.metadata.as_ref().and_then(|m| m.get("delivery")).and_then(Value::as_object)
            {
                for (k, v) in seen {
                    if k != "status" || rank(v.as_str().unwrap_or_default()) > rank("accepted") {
                        delivery[k] = v.clone();
                    }
                }
                delivery["providerMessageId"] = json!(provider_id);
            }
            // Sent: a failure to record it is logged (a run of this job again would send twice).
            if let Err(e) = self.store().set_delivery(tenant, id, &delivery).await {
                tracing::warn!(error = %e, message = %id, "could not record a sent message's delivery");
            }
        }
        Ok(())
    }

    /// A message from the business (`source`: `business`, or `agent` for the `send_message` tool)
    /// to `to` on a channel: stored in the user's session (role `agent`, `metadata.source`) and
    /// queued to send. On WhatsApp a text needs the user to have written within 24 hours.
    pub async fn send_business(
        &self,
        tenant: &TenantId,
        channel: &ChannelId,
        to: &str,
        text: Option<&str>,
        template: Option<&Template>,
        source: &str,
    ) -> Result<crate::store::Message, BusinessSendError> {
        let invalid = |m: &str| BusinessSendError::Invalid(m.to_string());
        let found = self.store().get_channel(tenant, channel).await?.ok_or(BusinessSendError::NoChannel)?;
        let user = found.user_for(to).ok_or_else(|| invalid("to: not a valid address"))?;
        let text = text.map(str::trim).filter(|t| !t.is_empty());
        if text.is_none() == template.is_none() {
            return Err(invalid("give one of text and template"));
        }
        if text.is_some_and(|t| t.chars().count() > 4096) {
            return Err(invalid("text: at most 4096 characters"));
        }
        if template.is_some() && found.spec.kind != ChannelKind::Whatsapp {
            return Err(invalid("template: only WhatsApp channels send templates"));
        }
        if found.spec.kind == ChannelKind::Whatsapp && template.is_none() {
            let last = self.last_inbound(tenant, &user).await?;
            if last.is_none_or(|at| now_ms() - at >= SERVICE_WINDOW_MS) {
                return Err(BusinessSendError::OutsideWindow);
            }
        }
        let content = match (text, template) {
            (Some(t), _) => t.to_string(),
            (None, Some(t)) => format!("[template {} ({})]", t.name, t.language),
            (None, None) => String::new(),
        };
        let session = match self.store().find_active_session(tenant, &user).await? {
            Some(s) => s,
            None => {
                let new =
                    NewSession { tenant_id: tenant.clone(), user_id: user.clone(), location_id: None, metadata: None };
                self.store().create_session(new).await?
            }
        };
        let mut metadata = Metadata::new();
        metadata.insert("source".into(), json!(source));
        metadata.insert("channel".into(), json!({"id": found.id, "type": found.spec.kind}));
        if let Some(t) = template {
            metadata.insert("template".into(), json!(t));
        }
        let message = NewMessage {
            id: MessageId::generate(),
            user_id: user.clone(),
            role: Role::Agent,
            content,
            metadata: Some(metadata),
            counted: None,
        };
        let stored = self.store().append_messages(tenant, &session.id, vec![message]).await?.remove(0).message;
        self.queue_send(&found, &user, Some(&stored.id), Outgoing { template, ..Default::default() }).await?;
        Ok(stored)
    }

    /// Sends a reply the agent wrote outside an inbound message's turn (its follow-up after an
    /// approval decision) on the channel the session came from, if it came from one.
    pub async fn reply_in_session(&self, session: &crate::store::Session, reply: &crate::store::Message) {
        let Some(id) = session
            .metadata
            .as_ref()
            .and_then(|m| m.get("channel"))
            .and_then(|c| c["id"].as_str())
            .and_then(|c| ChannelId::parse(c).ok())
        else {
            return;
        };
        if reply.content.trim().is_empty() {
            return;
        }
        let queued = match self.store().get_channel(&session.tenant_id, &id).await {
            Ok(Some(channel)) if channel.recipient(&session.user_id).is_some() => {
                self.queue_send(&channel, &session.user_id, Some(&reply.id), Outgoing::default()).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            tracing::warn!(error = %e, session = %session.id, "could not queue a follow-up reply on its channel");
        }
    }

    /// When `user` last wrote (epoch ms), from their most recent session's newest user message.
    pub async fn last_inbound(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Option<i64>> {
        // The newest few sessions: one the business started holds no message of the user.
        let page = crate::store::PageRequest { limit: 5, cursor: None };
        for session in self.store().list_user_sessions(tenant, user, page).await?.items {
            let query =
                crate::store::MessageQuery { limit: 50, order: crate::store::Order::Desc, ..Default::default() };
            let messages = self.store().list_messages(tenant, &session.id, query).await?;
            if let Some(m) = messages.items.iter().find(|m| m.role == Role::User) {
                return Ok(m.timestamp.micros().map(|t| t / 1000));
            }
        }
        Ok(None)
    }
}
