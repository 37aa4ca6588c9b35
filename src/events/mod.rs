//! Change events: every change a consumer may react to (a turn ended, an action waits for approval,
//! a session was created, a user erased) becomes one event with a stable id, recorded by the store
//! before the change is answered, readable in the tenant's feed (`GET /agent/events/{tenantId}`) and
//! delivered, at least once and signed per Standard Webhooks, to the configured endpoints.
//!
//! - `endpoints`: the webhook endpoints from the configuration;
//! - `signature`: Standard Webhooks signing;
//! - `delivery`: the deliverer, which any number of instances run side by side over the outbox.

pub mod delivery;
pub mod endpoints;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

pub use delivery::Deliverer;
pub use endpoints::Endpoint;

use crate::config::EventsConfig;
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::{ConversationStore, Delivery, StoredEvent};
use crate::timestamp::{self, Timestamp};

/// The kinds of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    TurnQueued,
    TurnCompleted,
    TurnFailed,
    TurnInterrupted,
    TurnCancelled,
    ActionApprovalRequired,
    ActionApproved,
    ActionRejected,
    ActionExecuted,
    SessionCreated,
    SessionClosed,
    SessionDeleted,
    SessionCompacted,
    UserErased,
    AgentCreated,
    AgentUpdated,
    AgentDeleted,
    BudgetWarning,
    BudgetExceeded,
    ChannelDeliveryFailed,
}

impl EventType {
    pub const ALL: [EventType; 20] = [
        EventType::TurnQueued,
        EventType::TurnCompleted,
        EventType::TurnFailed,
        EventType::TurnInterrupted,
        EventType::TurnCancelled,
        EventType::ActionApprovalRequired,
        EventType::ActionApproved,
        EventType::ActionRejected,
        EventType::ActionExecuted,
        EventType::SessionCreated,
        EventType::SessionClosed,
        EventType::SessionDeleted,
        EventType::SessionCompacted,
        EventType::UserErased,
        EventType::AgentCreated,
        EventType::AgentUpdated,
        EventType::AgentDeleted,
        EventType::BudgetWarning,
        EventType::BudgetExceeded,
        EventType::ChannelDeliveryFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TurnQueued => "turn.queued",
            EventType::TurnCompleted => "turn.completed",
            EventType::TurnFailed => "turn.failed",
            EventType::TurnInterrupted => "turn.interrupted",
            EventType::TurnCancelled => "turn.cancelled",
            EventType::ActionApprovalRequired => "action.approval_required",
            EventType::ActionApproved => "action.approved",
            EventType::ActionRejected => "action.rejected",
            EventType::ActionExecuted => "action.executed",
            EventType::SessionCreated => "session.created",
            EventType::SessionClosed => "session.closed",
            EventType::SessionDeleted => "session.deleted",
            EventType::SessionCompacted => "session.compacted",
            EventType::UserErased => "user.erased",
            EventType::AgentCreated => "agent.created",
            EventType::AgentUpdated => "agent.updated",
            EventType::AgentDeleted => "agent.deleted",
            EventType::BudgetWarning => "budget.warning",
            EventType::BudgetExceeded => "budget.exceeded",
            EventType::ChannelDeliveryFailed => "channel.delivery_failed",
        }
    }

    /// Whether a filter (`turn.completed`, `turn.*` or `*`) selects this type.
    pub fn matches(self, pattern: &str) -> bool {
        let name = self.as_str();
        match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        }
    }
}

/// One change to record: its type, the user it concerns, and its data (the ids a consumer needs).
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: EventType,
    pub user: Option<UserId>,
    pub data: Value,
}

impl Change {
    pub fn new(kind: EventType, user: Option<&UserId>, data: Value) -> Self {
        Change { kind, user: user.cloned(), data }
    }
}

/// A new event id: `evt_` + the 32 hex digits of a UUIDv7, so string order is time order.
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// Whether `text` has the form of an event id.
pub fn is_event_id(text: &str) -> bool {
    text.strip_prefix("evt_").is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The smallest event id minted at `millis` (epoch milliseconds): ids below it are older.
pub fn event_id_floor(millis: i64) -> String {
    format!("evt_{:012x}", millis.max(0))
}

/// The most an event's body may hold: with its item's other attributes, well within DynamoDB's
/// 400 KB item limit.
pub const MAX_BODY_BYTES: usize = 300 * 1024;

/// An event as JSON text. A body past `MAX_BODY_BYTES` (a long reply, or full messages) loses the
/// message objects, then has its `text` cut, and says so with `"truncated": true`.
fn body(id: &str, kind: EventType, tenant: &TenantId, mut data: Value) -> String {
    let render = |data: &Value| {
        json!({"id": id, "type": kind.as_str(), "timestamp": Timestamp::now(), "tenantId": tenant, "data": data})
            .to_string()
    };
    let mut text = render(&data);
    if text.len() <= MAX_BODY_BYTES {
        return text;
    }
    if let Some(map) = data.as_object_mut() {
        map.remove("userMessage");
        map.remove("agentMessage");
        map.insert("truncated".into(), json!(true));
        text = render(&data);
        while text.len() > MAX_BODY_BYTES {
            let Some(reply) = data.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) else { break };
            let keep: String = reply.chars().take(reply.chars().count() / 2).collect();
            data["text"] = json!(keep);
            text = render(&data);
        }
    }
    text
}

/// Records changes as events (a no-op when events are off) and wakes this process's deliverer.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<Inner>>);

struct Inner {
    store: Arc<dyn ConversationStore>,
    endpoints: Arc<Vec<Endpoint>>,
    full_payload: bool,
    retention: Duration,
    wake: Arc<Notify>,
}

impl Events {
    /// No events: nothing is recorded or delivered.
    pub fn off() -> Self {
        Events(None)
    }

    pub fn new(store: Arc<dyn ConversationStore>, endpoints: Vec<Endpoint>, config: &EventsConfig) -> Self {
        if !config.enabled {
            return Self::off();
        }
        Events(Some(Arc::new(Inner {
            store,
            endpoints: Arc::new(endpoints),
            full_payload: config.full_payload,
            retention: config.retention,
            wake: Arc::new(Notify::new()),
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// `WEBHOOK_PAYLOAD=full`: events carry the stored message objects.
    pub fn full_payload(&self) -> bool {
        self.0.as_ref().is_some_and(|i| i.full_payload)
    }

    /// How long the feed keeps an event (`EVENTS_RETENTION_DAYS`).
    pub fn retention(&self) -> Duration {
        self.0.as_ref().map_or(Duration::ZERO, |i| i.retention)
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        self.0.as_ref().map(|i| i.endpoints.as_slice()).unwrap_or_default()
    }

    /// The deliverer of this process, when there is anything to deliver to.
    pub fn deliverer(&self, config: &EventsConfig) -> Option<Deliverer> {
        let inner = self.0.as_ref().filter(|i| !i.endpoints.is_empty())?;
        Some(Deliverer::new(
            inner.store.clone(),
            inner.endpoints.clone(),
            config.retry_schedule.clone(),
            inner.wake.clone(),
            config.allow_private,
        ))
    }

    /// Records the changes of one tenant as events, with the deliveries each endpoint is owed, in one
    /// store call. A failure is logged and counted, never returned: the change itself happened.
    pub async fn record(&self, tenant: &TenantId, changes: Vec<Change>) {
        let Some(inner) = &self.0 else { return };
        if changes.is_empty() {
            return;
        }
        let now = timestamp::now_micros() / 1000;
        let expires_at = now / 1000 + inner.retention.as_secs() as i64;
        let mut events = Vec::new();
        let mut deliveries = Vec::new();
        for change in changes {
            let id = new_event_id();
            let session = change.data.get("sessionId").and_then(Value::as_str).and_then(|s| SessionId::parse(s).ok());
            let body = body(&id, change.kind, tenant, change.data);
            for endpoint in inner.endpoints.iter().filter(|e| e.wants(tenant, change.kind)) {
                deliveries.push(Delivery {
                    event_id: id.clone(),
                    tenant_id: tenant.clone(),
                    kind: change.kind.as_str().to_string(),
                    user_id: change.user.clone(),
                    session_id: session.clone(),
                    endpoint: endpoint.id.clone(),
                    body: body.clone(),
                    attempts: 0,
                    next_at: now,
                    first_at: now,
                    lease_until: 0,
                    last_error: None,
                });
            }
            metrics::counter!("events_recorded_total", "type" => change.kind.as_str()).increment(1);
            events.push(StoredEvent {
                id,
                tenant_id: tenant.clone(),
                kind: change.kind.as_str().to_string(),
                user_id: change.user,
                session_id: session,
                body,
                expires_at,
            });
        }
        match inner.store.record_events(&events, &deliveries).await {
            Ok(()) => {
                if !deliveries.is_empty() {
                    inner.wake.notify_one();
                }
            }
            Err(e) => {
                metrics::counter!("events_record_failures_total").increment(events.len() as u64);
                tracing::error!(error = %e, tenant = %tenant, count = events.len(), "change events could not be recorded");
            }
        }
    }

    /// Removes a user's events from the feed and the outbox (an erasure), before `user.erased`;
    /// with `session`, only those about that session (its deletion), before `session.deleted`.
    pub async fn forget(&self, tenant: &TenantId, user: &UserId, session: Option<&SessionId>) {
        let Some(inner) = &self.0 else { return };
        if let Err(e) = inner.store.forget_events(tenant, user, session).await {
            tracing::warn!(error = %e, %tenant, "the erased events could not be removed");
        }
    }
}
