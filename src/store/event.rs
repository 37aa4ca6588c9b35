//! Change events as the store keeps them: the tenant's feed (kept `EVENTS_RETENTION_DAYS`) and the
//! deliveries still owed to webhook endpoints (the outbox). The bodies are JSON text, built once by
//! `crate::events` and served as they are by the feed and the webhooks.

use crate::ids::{SessionId, TenantId, UserId};

/// One event of a tenant's feed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// `evt_` + 32 hex digits of a UUIDv7: string order is time order.
    pub id: String,
    pub tenant_id: TenantId,
    /// `turn.completed`, `session.created`, ...
    pub kind: String,
    /// The user the event is about, if any (an erasure removes the user's events).
    pub user_id: Option<UserId>,
    /// The session the event is about, if any (deleting the session removes its events).
    pub session_id: Option<SessionId>,
    /// The whole event as JSON text.
    pub body: String,
    /// Epoch seconds after which the feed no longer returns it.
    pub expires_at: i64,
}

/// One event owed to one webhook endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub event_id: String,
    pub tenant_id: TenantId,
    pub kind: String,
    pub user_id: Option<UserId>,
    pub session_id: Option<SessionId>,
    /// The endpoint's id (from its configuration).
    pub endpoint: String,
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Epoch milliseconds: not to be attempted before.
    pub next_at: i64,
    /// Epoch milliseconds: when the event happened (delivery gives up 24 h later).
    pub first_at: i64,
    /// Epoch milliseconds: claimed by a deliverer until then.
    pub lease_until: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// The endpoint prefix of the channels' jobs (`channel <channelId>`), which share the outbox.
pub const CHANNEL_ENDPOINT_PREFIX: &str = "channel ";

/// Which of the outbox's deliveries a reader wants: each reader reads its own part, so a backlog
/// of one never hides the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxPart {
    All,
    /// The webhooks' deliveries.
    Webhooks,
    /// The channels' jobs.
    Channels,
}

/// What became of a claimed delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryStep {
    /// Acknowledged, or given up for good: it leaves the outbox.
    Finished,
    /// Failed for now: try again at `next_at` (epoch milliseconds).
    Retry { attempts: u32, next_at: i64, error: String },
}

/// The outbox partition of an event (DynamoDB spreads the outbox over a few partitions).
pub fn outbox_shard(event_id: &str, shards: u32) -> u32 {
    event_id.bytes().last().map_or(0, |b| b as u32 % shards)
}
