//! The conversation store: sessions and messages of every tenant, on DynamoDB or embedded SQLite.
//!
//! One trait, [`ConversationStore`], with two implementations that behave the same way: the same
//! ordering, idempotency, tenant scoping, paging and error answers. The conformance suite
//! (`tests/it/store.rs`) runs one story over both.
//!
//! Writing messages has one protocol: [`ConversationStore::begin_turn`] checks the session and
//! reserves strictly increasing timestamps, [`ConversationStore::put_messages`] stores messages with
//! them, and [`ConversationStore::release_turn`] gives back what was not used. A new session is
//! written with its first messages by [`ConversationStore::create_session_with`]. Everything else
//! (`append_messages`, `create_session`) is built from these here, once for both backends.

mod cursor;
pub mod dynamodb;
mod erasure;
mod error;
mod event;
mod history;
mod item;
mod model;
pub mod search;
pub mod sqlite;
mod turn;

use std::sync::Arc;

use async_trait::async_trait;

pub use cursor::Cursor;
pub use erasure::Erasure;
pub use error::{StoreError, StoreResult, writable_session};
pub use event::{CHANNEL_ENDPOINT_PREFIX, Delivery, DeliveryStep, OutboxPart, StoredEvent, outbox_shard};
pub use history::{complete_history, history_query, recent_history};
pub use item::{MAX_ITEM_BYTES, check_message, check_size, check_storable, message_item_bytes};
pub use model::*;
pub use turn::{TurnEvent, TurnFailure, TurnRecord, TurnStatus};

use crate::config::StorageConfig;
use crate::ids::{MessageId, SessionId, TenantId, UserId};
use crate::timestamp::Timestamp;

/// Opens the configured store.
pub async fn open(storage: &StorageConfig, retention: Retention) -> StoreResult<Arc<dyn ConversationStore>> {
    Ok(match storage {
        StorageConfig::Sqlite { path } => Arc::new(sqlite::SqliteStore::open(path.clone())?.with_retention(retention)),
        StorageConfig::DynamoDb { sessions_table, messages_table } => Arc::new(
            dynamodb::DynamoStore::new(dynamodb::client().await, sessions_table, messages_table)
                .with_retention(retention),
        ),
    })
}

/// Checks messages for `put_messages` before anything is written: they belong to this tenant and
/// session, fit in an item, and get their `expiresAt` from their timestamp.
/// A hold's lease: until when (epoch milliseconds), and the time now, by which another holder's
/// lease has lapsed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLease {
    pub until: i64,
    pub now: i64,
}

/// A hold asked for with a turn's start ([`ConversationStore::begin_held_turn`]).
#[derive(Debug, Clone, Copy)]
pub struct HoldRequest<'a> {
    pub holder: &'a MessageId,
    pub lease: HoldLease,
    /// Whoever holds it (`concurrency: interrupt`).
    pub take_over: bool,
}

/// What holding a session gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// This turn holds it. `queued`: the turns that were queued on it, oldest first (this holder's
    /// to answer now); `taken_from`: the running turn it took the session from (`take_over`).
    Held { queued: Vec<MessageId>, taken_from: Option<MessageId> },
    /// Another turn holds it.
    Busy(MessageId),
}

pub(crate) fn prepare_messages(
    tenant: &TenantId,
    session: &SessionId,
    retention: Retention,
    messages: Vec<Message>,
) -> StoreResult<Vec<Message>> {
    messages
        .into_iter()
        .map(|mut m| {
            if &m.tenant_id != tenant || &m.session_id != session {
                return Err(StoreError::Invalid(format!("message {} belongs to another session", m.id)));
            }
            m.expires_at = m.timestamp.micros().and_then(|t| retention.expires_at(t));
            check_message(&m)?;
            Ok(m)
        })
        .collect()
}

/// The operations of the conversation store. Every call is scoped by tenant.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// `dynamodb` or `sqlite`, with where the data is.
    fn describe(&self) -> String;
    /// A cheap read that proves the storage answers (readiness).
    async fn check(&self) -> StoreResult<()>;
    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>>;
    /// Creates a session together with its first messages (a turn that starts a session), all
    /// written at once; the messages get strictly increasing timestamps.
    async fn create_session_with(
        &self,
        new: NewSession,
        messages: Vec<NewMessage>,
    ) -> StoreResult<(Session, Vec<Message>)>;
    /// The user's active session with the most recent activity.
    async fn find_active_session(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Option<Session>>;
    /// The user's sessions, most recent activity first.
    async fn list_user_sessions(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: PageRequest,
    ) -> StoreResult<Page<Session>>;
    /// Starts a turn on an existing session: checks that it is active (and `owner`'s when given), moves its
    /// activity forward and reserves `count` strictly increasing timestamps after its newest message,
    /// in one write. Returns the session as it was before (its `last_message_at` is what a history
    /// read must reach) and the timestamps. Messages written with them go through `put_messages`.
    async fn begin_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        owner: Option<&UserId>,
        count: usize,
    ) -> StoreResult<(Session, Vec<Timestamp>)>;
    /// `begin_turn` and `hold_session` in one write: the turn's timestamps are reserved whether or
    /// not it gets the hold (another turn holding it is `Hold::Busy`).
    async fn begin_held_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        owner: Option<&UserId>,
        count: usize,
        hold: HoldRequest<'_>,
    ) -> StoreResult<(Session, Vec<Timestamp>, Hold)>;
    /// Stores messages whose timestamps `begin_turn` reserved, all at once; a message whose id is
    /// already stored in this session is returned as stored.
    async fn put_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<Message>,
    ) -> StoreResult<Vec<Appended>>;
    /// Gives back the timestamps of a turn that did not use them all (the model failed, or ids were
    /// stored already): the session's newest-message mark moves back to `previous` (and its
    /// activity with it), unless another turn reserved after this one.
    async fn release_turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        reserved_last: &Timestamp,
        previous: Option<&Timestamp>,
    ) -> StoreResult<()>;
    /// One message by id, only when it belongs to the tenant.
    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<Message>>;
    async fn list_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        query: MessageQuery,
    ) -> StoreResult<Page<Message>>;
    /// Marks the session inactive; `None` when it does not exist.
    async fn close_session(&self, tenant: &TenantId, id: &SessionId) -> StoreResult<Option<Session>>;
    /// Sets one key of a session's metadata (a client protocol's own, such as an OpenAI
    /// conversation's `metadata`), leaving the others and the session's activity as they are; the
    /// session as it is now, `None` when there is no such session.
    async fn set_session_metadata(
        &self,
        tenant: &TenantId,
        id: &SessionId,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<Option<Session>>;
    /// Deletes the session and all its messages (also messages left behind in a session already
    /// gone); the number of messages, `None` when the session was absent. With `up_to` (an
    /// erasure's second pass), only what was written by then: messages (and their turn records)
    /// with timestamps up to it, and the session only if it was created by then, so that a later
    /// session that reuses the id keeps everything.
    async fn delete_session(
        &self,
        tenant: &TenantId,
        id: &SessionId,
        up_to: Option<&Timestamp>,
    ) -> StoreResult<Option<usize>>;
    /// Deletes every session and message of one user (erasure request).
    async fn delete_user(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Deleted>;
    /// Stores a tenant's agent, only if its stored version is `previous` (absent when `None`);
    /// false when it is not (another write came first).
    async fn put_agent(&self, agent: &crate::agents::StoredAgent, previous: Option<u64>) -> StoreResult<bool>;
    /// One agent of a tenant, read consistently.
    async fn get_agent(
        &self,
        tenant: &TenantId,
        id: &crate::ids::AgentId,
    ) -> StoreResult<Option<crate::agents::StoredAgent>>;
    /// Every agent of a tenant (at most `MAX_AGENTS`), by id, read consistently.
    async fn list_agents(&self, tenant: &TenantId) -> StoreResult<Vec<crate::agents::StoredAgent>>;
    /// Notes that a tenant's agents changed at `at`, so that every server sharing the store drops
    /// what it cached of them (kept an hour).
    async fn record_agent_change(&self, tenant: &TenantId, at: &Timestamp) -> StoreResult<()>;
    /// The agent changes noted after `since`, oldest first: (when, tenant).
    async fn agent_changes_since(&self, since: &Timestamp) -> StoreResult<Vec<(Timestamp, TenantId)>>;
    /// Every agent of every tenant, for an export (a scan of the sessions table on DynamoDB).
    async fn all_agents(&self) -> StoreResult<Vec<crate::agents::StoredAgent>>;
    /// Deletes an agent; false when there was none.
    async fn delete_agent(&self, tenant: &TenantId, id: &crate::ids::AgentId) -> StoreResult<bool>;
    /// Stores a tenant's channel and claims its addresses (`StoredChannel::claims`), releasing
    /// `released` (addresses it held and no longer has); false, and nothing changed, when another
    /// channel holds one of them (another tenant's, or another of this tenant's unless the claim is
    /// per tenant).
    async fn put_channel(&self, channel: &crate::channels::StoredChannel, released: &[String]) -> StoreResult<bool>;
    async fn get_channel(
        &self,
        tenant: &TenantId,
        id: &crate::ids::ChannelId,
    ) -> StoreResult<Option<crate::channels::StoredChannel>>;
    /// A tenant's channels, by id.
    async fn list_channels(&self, tenant: &TenantId) -> StoreResult<Vec<crate::channels::StoredChannel>>;
    /// Deletes a channel and releases its claims; false when there was none.
    async fn delete_channel(&self, tenant: &TenantId, id: &crate::ids::ChannelId) -> StoreResult<bool>;
    /// The channel that claims an external address (where a provider's webhook finds it).
    async fn channel_at(&self, address: &str) -> StoreResult<Option<crate::channels::StoredChannel>>;
    /// Sets a message's `metadata.delivery` (what became of it on its channel); false when the
    /// tenant has no such message.
    async fn set_delivery(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        delivery: &serde_json::Value,
    ) -> StoreResult<bool>;
    /// Makes `turn` the session's one running turn until `until` (epoch milliseconds), unless another
    /// turn holds it with a lease not lapsed at `now` (then `Hold::Busy` with that turn's id); with
    /// `take_over` it holds it whoever held it. Holding it again renews it. The holder takes the
    /// turns queued on the session (they are its to answer now).
    async fn hold_session(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        lease: HoldLease,
        take_over: bool,
    ) -> StoreResult<Hold>;
    /// Queues a turn behind the session's running turn, only while one holds it with a lease not
    /// lapsed at `now`; false when none does.
    async fn queue_turn(&self, tenant: &TenantId, session: &SessionId, turn: &MessageId, now: i64)
    -> StoreResult<bool>;
    /// Moves the lease of `turn`'s hold on the session to `until`, only while it holds it.
    async fn renew_session_hold(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        until: i64,
    ) -> StoreResult<bool>;
    /// Lets go of the session, if `turn` holds it. When turns are queued on it, `next` holds it
    /// instead (until `until`) and they are returned, for it to answer.
    async fn let_go_session(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        next: &MessageId,
        until: i64,
    ) -> StoreResult<Vec<MessageId>>;
    /// Adds a user's usage of one UTC day (`YYYY-MM-DD`), per agent and model, atomically (one write).
    async fn add_usage(
        &self,
        tenant: &TenantId,
        user: &UserId,
        day: &str,
        entries: &[crate::usage::UsageEntry],
    ) -> StoreResult<()>;
    /// Adds to a tenant's totals of one day (each server adds what it counted, once a second).
    async fn add_tenant_usage(
        &self,
        tenant: &TenantId,
        day: &str,
        entries: &[crate::usage::UsageEntry],
    ) -> StoreResult<()>;
    /// The users' usage of the tenant (or of one user) from day `from` to day `to`, inclusive.
    async fn usage(
        &self,
        tenant: &TenantId,
        from: &str,
        to: &str,
        user: Option<&UserId>,
    ) -> StoreResult<Vec<crate::usage::UsageRow>>;
    /// The tenant's totals per day, agent and model from `from` to `to`, inclusive.
    async fn tenant_usage(&self, tenant: &TenantId, from: &str, to: &str) -> StoreResult<Vec<crate::usage::UsageRow>>;
    async fn put_budget(&self, tenant: &TenantId, budget: &crate::usage::Budget) -> StoreResult<()>;
    async fn get_budget(&self, tenant: &TenantId) -> StoreResult<Option<crate::usage::Budget>>;
    /// Notes `notice` for the tenant once (kept until `expires_at`, epoch seconds): false when it
    /// was noted already, here or on another server.
    async fn note_once(&self, tenant: &TenantId, notice: &str, expires_at: i64) -> StoreResult<bool>;
    /// Hands the session from holder `from` to `to` (until `until`), taking its queue; `None` when
    /// `from` no longer holds it.
    async fn hand_over(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        from: &MessageId,
        to: &MessageId,
        until: i64,
    ) -> StoreResult<Option<Vec<MessageId>>>;
    /// Keeps an erasure until its second pass ran (`finish_erasure`).
    async fn record_erasure(&self, erasure: &Erasure) -> StoreResult<()>;
    /// The erasures of every tenant whose second pass has not run, oldest first, at most `limit`.
    async fn pending_erasures(&self, limit: usize) -> StoreResult<Vec<Erasure>>;
    /// Forgets an erasure whose second pass ran.
    async fn finish_erasure(&self, erasure: &Erasure) -> StoreResult<()>;
    /// The tenant's messages across sessions by time (newest first by default).
    async fn list_tenant_messages(&self, tenant: &TenantId, query: MessageQuery) -> StoreResult<Page<Message>>;
    /// Deletes items past their `expiresAt` in small batches; the number deleted. DynamoDB's own TTL
    /// does this for the DynamoDB backend.
    async fn purge_expired(&self) -> StoreResult<usize> {
        Ok(0)
    }
    /// Every session (of one tenant, or of all), page by page, for export. `after` is the opaque
    /// position the previous page returned.
    async fn scan_sessions(
        &self,
        tenant: Option<&TenantId>,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<(Vec<Session>, Option<String>)>;
    /// Replaces the action with `to.id` in the message's `metadata.actions` with `to`, only while
    /// its status is `from`; false when it is not (decided already, or absent). Used to approve a
    /// pending tool call exactly once.
    async fn transition_action(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        from: ActionStatus,
        to: &Action,
    ) -> StoreResult<bool>;
    /// Stores a new turn record with its events; false when a record with its id exists.
    async fn create_turn(&self, turn: &TurnRecord) -> StoreResult<bool>;
    /// A turn record with its events, read consistently, even past its `expiresAt` (the caller
    /// answers 410 then); `None` when there is none for this tenant.
    async fn get_turn(&self, tenant: &TenantId, id: &MessageId) -> StoreResult<Option<TurnRecord>>;
    /// Running turn records of every tenant created before `started_before` whose lease lapsed (their
    /// server died), at most `limit`: the sweep settles them without waiting for a reader.
    async fn running_turns(&self, started_before: &Timestamp, limit: usize) -> StoreResult<Vec<TurnRecord>>;
    /// Saves the record's status, ids, error, lease and last event id and appends `events`, only
    /// while the stored status is one of `from`; false when it is not, or the record is gone (the
    /// turn was cancelled or erased elsewhere).
    async fn save_turn(&self, turn: &TurnRecord, events: &[TurnEvent], from: &[TurnStatus]) -> StoreResult<bool>;
    /// Deletes a turn's record and the given messages of it (a turn that lost to an erasure).
    async fn delete_turn(&self, tenant: &TenantId, id: &MessageId, messages: &[MessageId]) -> StoreResult<()>;
    /// Stores an exported session as it is, unless one with its key exists; true when stored.
    async fn import_session(&self, session: Session) -> StoreResult<bool>;
    /// Stores an exported message as it is, unless its id exists; true when stored. Its session's
    /// `lastMessageAt` moves forward to the message's timestamp.
    async fn import_message(&self, message: Message) -> StoreResult<bool>;

    /// The tenant's messages that match a search, scoped by its filters. This default scans the
    /// messages newest first within `max_items` reads (DynamoDB); SQLite answers from its FTS5 index.
    async fn search_messages(&self, tenant: &TenantId, query: &search::SearchQuery) -> StoreResult<search::SearchPage> {
        search::scan(self, tenant, query).await
    }
    /// Stores a session's context summary, only while its current one is `previous` (by
    /// `createdAt`; none when `None`): of two summarisers racing, one wins. False when the session is
    /// gone or its summary changed.
    async fn save_context_summary(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        summary: &ContextSummary,
        previous: Option<&Timestamp>,
    ) -> StoreResult<bool>;
    /// Records change events in the tenant's feed, and the deliveries owed for them, before the
    /// change is answered.
    async fn record_events(&self, events: &[StoredEvent], deliveries: &[Delivery]) -> StoreResult<()>;
    /// The tenant's events with ids after `after` and before `before` (oldest first), of the given
    /// types (all when empty), at most `limit`; expired ones are left out.
    async fn list_events(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        before: &str,
        types: &[String],
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// Deliveries waiting in the outbox, soonest first: only those due and unclaimed at `due_at`
    /// (epoch milliseconds) when given, else all; of `part` of the outbox.
    async fn pending_deliveries(
        &self,
        due_at: Option<i64>,
        limit: usize,
        part: OutboxPart,
    ) -> StoreResult<Vec<Delivery>>;
    /// Claims a due delivery for `owner` until `until` (epoch milliseconds), unless another
    /// deliverer holds it or it changed since it was read; true when claimed.
    async fn claim_delivery(&self, delivery: &Delivery, owner: &str, now: i64, until: i64) -> StoreResult<bool>;
    /// Ends `owner`'s claim: the delivery leaves the outbox or waits for its next attempt.
    async fn settle_delivery(&self, delivery: &Delivery, owner: &str, step: DeliveryStep) -> StoreResult<bool>;
    /// Removes a user's events from the feed and the outbox (erasure), or, with `session`, only
    /// the user's events about that session (its deletion).
    async fn forget_events(&self, tenant: &TenantId, user: &UserId, session: Option<&SessionId>) -> StoreResult<usize>;

    /// A new session without messages.
    async fn create_session(&self, new: NewSession) -> StoreResult<Session> {
        Ok(self.create_session_with(new, Vec::new()).await?.0)
    }

    /// Appends messages to an active session with strictly increasing timestamps, in order. A
    /// message whose id is already stored in this session is returned as stored, not stored again.
    async fn append_messages(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Vec<Appended>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let placeholder = Timestamp::now();
        let build = |stamps: Vec<Timestamp>| -> Vec<Message> {
            messages.iter().cloned().zip(stamps).map(|(m, ts)| m.into_message(tenant, session, ts)).collect()
        };
        // Checked before the reservation, so a refused message costs no write.
        for m in build(vec![placeholder; messages.len()]) {
            check_message(&m)?;
        }
        let (before, stamps) = self.begin_turn(tenant, session, None, messages.len()).await?;
        let reserved_last = stamps[stamps.len() - 1].clone();
        let previous = before.last_message_at.clone();
        let appended = match self.put_messages(tenant, session, build(stamps)).await {
            Ok(appended) => appended,
            Err(e) => {
                let _ = self.release_turn(tenant, session, &reserved_last, previous.as_ref()).await;
                return Err(e);
            }
        };
        let newest_created = appended.iter().filter(|a| a.created).map(|a| &a.message.timestamp).max();
        if newest_created != Some(&reserved_last) {
            let back_to = newest_created.cloned().or(previous);
            self.release_turn(tenant, session, &reserved_last, back_to.as_ref()).await?;
        }
        Ok(appended)
    }
}
