//! The channels' jobs, in the store's outbox beside the webhooks' deliveries (endpoint
//! `channel <channelId>`): an inbound message becomes a turn of the channel's agent, and a reply (or a
//! business's message) is sent to the provider, each at least once, by whichever server sharing the
//! store claims it first (a lease), with retries and backoff. A job run again does nothing twice:
//! the turn is keyed by the job (a retry replays it), and a reply whose provider message id is
//! recorded (`metadata.delivery`) is not sent again.
//!
//! `inbound`: an inbound message's turn and its reply; `outbound`: sends, and the business's own
//! messages.

mod inbound;
mod outbound;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{ChannelsConfig, StoredChannel, Template};
use crate::agent::Agent;
use crate::events::{Change, EventType};
use crate::ids::{ChannelId, MessageId, TenantId, UserId};
use crate::store::{Delivery, DeliveryStep, OutboxPart, StoreError, StoreResult};

/// The outbox endpoint of a channel's jobs.
pub const ENDPOINT_PREFIX: &str = crate::store::CHANNEL_ENDPOINT_PREFIX;
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
            owner: crate::random::uuid().simple().to_string(),
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
}
