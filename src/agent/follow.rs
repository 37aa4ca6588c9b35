//! Reading a turn and its events, and cancelling it, wherever it runs: in this process (from
//! memory), on another server sharing the store (from its record, polled with consistent reads), or
//! ended (from its record, or from its messages for a JSON turn, which keeps no record).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};

use super::Agent;
use super::flow::{FLUSH_EVERY, now_millis, session_event};
use super::messages;
use super::thinking::Thought;
use super::turn::{StopReason, TurnAnswer, TurnError, TurnOutcome};
use crate::ids::{MessageId, SessionId, TenantId, UserId};
use crate::llm::ModelReply;
use crate::store::{Message, NewMessage, NewSession, StoreError, TurnEvent, TurnFailure, TurnRecord, TurnStatus};
use crate::timestamp::Timestamp;

/// A turn's events, in order, ending with the turn.
pub type TurnEvents = BoxStream<'static, TurnEvent>;

/// A turn as `GET .../turns/{turnId}` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnView {
    #[schema(value_type = String)]
    pub turn_id: MessageId,
    #[schema(value_type = String)]
    pub session_id: SessionId,
    pub status: TurnStatus,
    #[schema(value_type = String)]
    pub user_message_id: MessageId,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub agent_message_id: Option<MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TurnFailure>,
    /// The id of its newest event (give it as `Last-Event-ID` to follow from there).
    pub last_event_id: u64,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    /// A queued message's: the turn whose reply answers it (with the others queued beside it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub answered_by: Option<MessageId>,
    /// A turn that answered queued messages: their turns, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub answers: Vec<MessageId>,
}

/// A turn found for a caller, wherever it is.
enum Found {
    Live(Arc<super::LiveTurn>),
    Recorded(TurnRecord),
    /// A JSON turn, known from its messages.
    Stored(TurnOutcome),
}

fn not_found(turn: &MessageId) -> TurnError {
    TurnError::Store(StoreError::NotFound(format!("turn {turn} not found in this session")))
}

fn view_of_outcome(o: &TurnOutcome, created_at: Timestamp) -> TurnView {
    TurnView {
        turn_id: o.turn_id.clone(),
        session_id: o.session_id.clone(),
        status: o.status,
        user_message_id: o.turn_id.clone(),
        agent_message_id: Some(o.agent_message.id.clone()),
        error: None,
        last_event_id: 3,
        created_at,
        updated_at: o.agent_message.timestamp.clone(),
        answered_by: o.answered_by.clone(),
        answers: o.answers.clone(),
    }
}

fn record_view(r: TurnRecord) -> TurnView {
    TurnView {
        // An answering turn has no user message of its own: its reply is its id.
        user_message_id: if r.answers.is_empty() { r.turn_id.clone() } else { messages::agent_message_id(&r.turn_id) },
        turn_id: r.turn_id,
        session_id: r.session_id,
        status: r.status,
        agent_message_id: r.agent_message_id,
        error: r.error,
        last_event_id: r.last_event_id,
        created_at: r.created_at,
        updated_at: r.updated_at,
        answered_by: r.answered_by,
        answers: r.answers,
    }
}

/// A finished turn told as events from its messages: `session`, one `delta` with the whole reply,
/// and `done`, the same `done` its own stream sent.
pub fn replayed_events(outcome: TurnOutcome, after: u64) -> TurnEvents {
    let events = vec![
        TurnEvent {
            id: 1,
            event: "session".into(),
            data: session_event(&outcome.session_id, &outcome.turn_id, outcome.user_message.as_ref()),
        },
        TurnEvent { id: 2, event: "delta".into(), data: json!({"text": outcome.agent_message.content}) },
        TurnEvent { id: 3, event: "done".into(), data: json!(TurnAnswer::from(outcome)) },
    ];
    futures::stream::iter(events.into_iter().filter(move |e| e.id > after)).boxed()
}

/// How often a server looks for running turns whose server died.
pub const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Agent {
    /// Settles the running turns of every tenant whose server died (their lease lapsed), so that
    /// their sessions go on without waiting for a reader; a server runs it at start and every
    /// `ORPHAN_SWEEP_EVERY`. The number settled here (another server may settle one first).
    pub async fn settle_orphans(self: &Arc<Self>) -> usize {
        let before = Timestamp::from_micros(crate::timestamp::now_micros() - super::flow::LEASE.as_micros() as i64);
        let running = match self.store.running_turns(&before, 100).await {
            Ok(running) => running,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for turns whose server stopped");
                return 0;
            }
        };
        let mut settled = 0;
        for record in &running {
            // Queued messages whose server died: answered here, or queued again behind the holder.
            let done = match (record.status, &record.answered_by) {
                (TurnStatus::Queued, _) => self.rescue_queued(record.clone()).await,
                (_, Some(_)) => self.settle_answered(record.clone()).await,
                _ => Ok(()),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, turn = %record.turn_id, "could not answer a queued message whose server stopped");
            }
        }
        for record in running.into_iter().filter(|r| self.abandoned(r)) {
            let turn = record.turn_id.clone();
            match self.settle_abandoned(record).await {
                Ok(r) if r.status == TurnStatus::Interrupted => settled += 1,
                Ok(_) | Err(TurnError::Erased) => {}
                Err(e) => tracing::warn!(error = %e, %turn, "could not settle a turn whose server stopped"),
            }
        }
        if settled > 0 {
            tracing::info!(settled, "settled turns whose server stopped as interrupted");
        }
        settled
    }

    /// Whether a running record's process stopped renewing its lease (it died).
    pub(super) fn abandoned(&self, record: &TurnRecord) -> bool {
        // A queued message's record follows the turn that answers it.
        record.status == TurnStatus::Running && record.answered_by.is_none() && record.lease_until < now_millis()
    }

    async fn find(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        viewer: Option<&UserId>,
    ) -> Result<Found, TurnError> {
        let visible = |s: &SessionId, u: &UserId| s == session && viewer.is_none_or(|v| v == u);
        if let Some(live) = self.live.get(turn).filter(|l| &l.tenant == tenant) {
            if live.session().is_some_and(|s| visible(&s, &live.user)) {
                // A finished turn here is read from the store, like on any other server.
                if live.result().is_none() {
                    return Ok(Found::Live(live));
                }
            } else {
                return Err(not_found(turn));
            }
        }
        if let Some(record) = self.store.get_turn(tenant, turn).await? {
            if !visible(&record.session_id, &record.user_id) {
                return Err(not_found(turn));
            }
            let record = if self.abandoned(&record) { self.settle_abandoned(record).await? } else { record };
            return Ok(Found::Recorded(record));
        }
        let first = self.store.get_message(tenant, turn).await?;
        let first = first.filter(|m| visible(&m.session_id, &m.user_id));
        let Some(user) = first else { return Err(not_found(turn)) };
        let own_turn =
            user.metadata.as_ref().and_then(|m| m.get("turnId")).and_then(Value::as_str) == Some(turn.as_str());
        if user.role == crate::store::Role::Agent && own_turn {
            // The turn that followed an approval decision has no user message: its reply is its id.
            return Ok(Found::Stored(messages::outcome(turn.clone(), None, user)));
        }
        if user.role != crate::store::Role::User {
            return Err(not_found(turn));
        }
        match self.store.get_message(tenant, &messages::agent_message_id(turn)).await? {
            Some(agent) => Ok(Found::Stored(messages::outcome(turn.clone(), Some(user), agent))),
            None => Err(not_found(turn)),
        }
    }

    fn past_retention(&self, created_at: &Timestamp) -> bool {
        let ttl = self.settings.turn_events_ttl.as_micros() as i64;
        created_at.micros().is_some_and(|t| t + ttl < crate::timestamp::now_micros())
    }

    /// The turn, for a caller of its tenant (and, when bound to a user, that user's).
    pub async fn turn(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        viewer: Option<&UserId>,
    ) -> Result<TurnView, TurnError> {
        Ok(match self.find(tenant, session, turn, viewer).await? {
            // A queued message's turn is what its record says (which turn answers it).
            Found::Live(live) if live.status() == TurnStatus::Queued => {
                let record = self.store.get_turn(tenant, turn).await?.ok_or_else(|| not_found(turn))?;
                return Ok(record_view(record));
            }
            Found::Live(live) => {
                let now = Timestamp::now();
                TurnView {
                    turn_id: live.turn_id.clone(),
                    session_id: live.session().unwrap_or_else(|| session.clone()),
                    status: live.status(),
                    user_message_id: live.turn_id.clone(),
                    agent_message_id: None,
                    error: None,
                    last_event_id: live.last_event_id(),
                    created_at: Timestamp::from_micros(
                        now.micros().unwrap_or(0) - live.started.elapsed().as_micros() as i64,
                    ),
                    updated_at: now,
                    answered_by: None,
                    answers: Vec::new(),
                }
            }
            Found::Recorded(r) => record_view(r),
            Found::Stored(o) => {
                let created = o.user_message.as_ref().map(|m| m.timestamp.clone()).unwrap_or_else(Timestamp::now);
                view_of_outcome(&o, created)
            }
        })
    }

    /// The turn's events after `after`, then the live ones until it ends. A JSON turn (which keeps
    /// no events) gives `session`, one `delta` with the whole reply and `done`, from its messages.
    pub async fn turn_events(
        self: &Arc<Self>,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        viewer: Option<&UserId>,
        after: u64,
    ) -> Result<TurnEvents, TurnError> {
        match self.find(tenant, session, turn, viewer).await? {
            Found::Live(live) => Ok(live.follow(after).boxed()),
            Found::Recorded(record) => {
                if record.status != TurnStatus::Running && self.past_retention(&record.created_at) {
                    return Err(TurnError::Gone);
                }
                Ok(self.stored_events(record, after))
            }
            Found::Stored(outcome) => {
                let created = outcome.user_message.as_ref().map(|m| m.timestamp.clone());
                if created.is_some_and(|c| self.past_retention(&c)) {
                    return Err(TurnError::Gone);
                }
                Ok(replayed_events(outcome, after))
            }
        }
    }

    /// A recorded turn's events after `after`; while it runs on another server, its record is read
    /// again every 250 ms until it ends (or its lease lapses, and it is settled as interrupted).
    pub(super) fn stored_events(self: &Arc<Self>, record: TurnRecord, after: u64) -> TurnEvents {
        let agent = self.clone();
        let state = (agent, Some(record), after, Vec::<TurnEvent>::new());
        futures::stream::unfold(state, |(agent, mut record, mut after, mut pending)| async move {
            loop {
                if !pending.is_empty() {
                    let event = pending.remove(0);
                    after = event.id;
                    return Some((event, (agent, record, after, pending)));
                }
                let current = record.take()?;
                // The stream ends with the turn's `done` or `error` event.
                if after > 0
                    && current.events.iter().any(|e| e.id == after && (e.event == "done" || e.event == "error"))
                {
                    return None;
                }
                pending = current.events.iter().filter(|e| e.id > after).cloned().collect();
                if !pending.is_empty() {
                    record = Some(TurnRecord { events: current.events.clone(), ..current });
                    continue;
                }
                // An ended turn whose last events are not stored yet (its server is writing them).
                if current.status != TurnStatus::Running
                    && current.updated_at.micros().is_some_and(|t| crate::timestamp::now_micros() - t > 10_000_000)
                {
                    return None;
                }
                tokio::time::sleep(FLUSH_EVERY).await;
                let fresh = agent.store.get_turn(&current.tenant_id, &current.turn_id).await.ok().flatten()?;
                record = Some(if agent.abandoned(&fresh) { agent.settle_abandoned(fresh).await.ok()? } else { fresh });
            }
        })
        .boxed()
    }

    /// Cancels a running turn: here it stops at once; on another server at its next write (within
    /// 250 ms). Cancelling again answers the same; a turn that ended otherwise is a conflict.
    pub async fn cancel(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
        viewer: Option<&UserId>,
    ) -> Result<TurnView, TurnError> {
        match self.find(tenant, session, turn, viewer).await? {
            Found::Live(live) => {
                live.stop(StopReason::Cancelled);
                let deadline = Instant::now() + Duration::from_secs(10);
                while live.result().is_none() && Instant::now() < deadline {
                    let _ = tokio::time::timeout(Duration::from_millis(100), live.finished()).await;
                }
            }
            // A queued message's turn on another server: answered already, cancelling it cancels the
            // turn that answers it; still waiting, it is cancelled where it waits.
            Found::Recorded(record) if record.answered_by.is_some() && !record.status.is_final() => {
                let answerer = record.answered_by.clone().unwrap_or_else(|| turn.clone());
                let _ = Box::pin(self.cancel(tenant, session, &answerer, None)).await;
                self.until_final(tenant, turn).await?;
            }
            Found::Recorded(mut record) if record.status == TurnStatus::Queued => {
                record.status = TurnStatus::Cancelled;
                record.updated_at = Timestamp::now();
                if !self.store.save_turn(&record, &[], &[TurnStatus::Queued]).await? {
                    // Claimed meanwhile: cancel the turn that answers it.
                    return Box::pin(self.cancel(tenant, session, turn, viewer)).await;
                }
                self.until_final(tenant, turn).await?;
            }
            Found::Recorded(mut record) if record.status == TurnStatus::Running => {
                record.status = TurnStatus::Cancelled;
                record.updated_at = Timestamp::now();
                self.store.save_turn(&record, &[], &[TurnStatus::Running]).await?;
                // The server running it stops at its next write (within 250 ms) and stores what it
                // has; wait for that, so the answer says how the turn really ended.
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    let now = self.store.get_turn(tenant, turn).await?.ok_or_else(|| not_found(turn))?;
                    if now.agent_message_id.is_some() || self.abandoned(&now) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Found::Recorded(record) if record.status == TurnStatus::Cancelled => {}
            Found::Recorded(record) => return Err(TurnError::Ended(record.status)),
            Found::Stored(o) if o.status == TurnStatus::Cancelled => {}
            Found::Stored(o) => return Err(TurnError::Ended(o.status)),
        }
        let view = self.turn(tenant, session, turn, viewer).await?;
        match view.status {
            TurnStatus::Cancelled | TurnStatus::Running => Ok(view),
            other => Err(TurnError::Ended(other)),
        }
    }

    /// Waits (10 s at most) until a queued message's turn has its reply recorded.
    async fn until_final(&self, tenant: &TenantId, turn: &MessageId) -> Result<(), TurnError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let now = self.store.get_turn(tenant, turn).await?.ok_or_else(|| not_found(turn))?;
            if now.agent_message_id.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A turn whose server died (its lease lapsed): it becomes `interrupted`, its partial reply (the
    /// deltas it had persisted) is stored, marked, and its `done` event is added. Exactly one reader
    /// settles it (a conditional write); the others read the result.
    pub(super) async fn settle_abandoned(&self, mut record: TurnRecord) -> Result<TurnRecord, TurnError> {
        let (tenant, turn) = (record.tenant_id.clone(), record.turn_id.clone());
        // A turn of a user or session erased meanwhile stores nothing: its record goes.
        if self.lost_to_erasure(&tenant, &record.user_id, Some(&record.session_id), &record.created_at) {
            self.store.delete_turn(&tenant, &turn, &[]).await?;
            return Err(TurnError::Erased);
        }
        let partial: String = record
            .events
            .iter()
            .filter(|e| e.event == "delta")
            .filter_map(|e| e.data.get("text").and_then(Value::as_str))
            .collect();
        let reply = ModelReply { text: partial, model: String::new(), usage: None, tool_calls: Vec::new() };
        let thought = Thought { reply, actions: Vec::new(), model_calls: 0 };
        let agent_id = messages::agent_message_id(&turn);
        let new = messages::agent_message(
            &record.user_id,
            agent_id,
            &turn,
            TurnStatus::Interrupted,
            &thought,
            Instant::now(),
            Some("server_stopped"),
        );
        let claim = |record: &mut TurnRecord| {
            record.status = TurnStatus::Interrupted;
            record.updated_at = Timestamp::now();
        };
        // Messages with fixed ids and places are stored first (a repeat stores nothing twice, and a
        // failure leaves the turn running, for the next sweep); a first turn whose session does not
        // exist yet is claimed first, so that one settler starts it.
        let places_fixed = record.pending_user.is_none() || record.reserved.len() == 2;
        let agent = if places_fixed {
            let agent = self.store_settled(&mut record, new).await?;
            claim(&mut record);
            if !self.store.save_turn(&record, &[], &[TurnStatus::Running]).await? {
                return self.store.get_turn(&tenant, &turn).await?.ok_or_else(|| not_found(&turn));
            }
            agent
        } else {
            let mut claimed = record.clone();
            claim(&mut claimed);
            if !self.store.save_turn(&claimed, &[], &[TurnStatus::Running]).await? {
                return self.store.get_turn(&tenant, &turn).await?.ok_or_else(|| not_found(&turn));
            }
            let agent = self.store_settled(&mut record, new).await?;
            record.status = claimed.status;
            record.updated_at = claimed.updated_at;
            agent
        };
        let user = self.store.get_message(&tenant, &turn).await?;
        let mut outcome = messages::outcome(turn.clone(), user, agent);
        outcome.status = TurnStatus::Interrupted;
        // Only the reader that settled the turn announces it.
        let place = super::announce::TurnPlace {
            tenant: &tenant,
            user: &record.user_id,
            location: None,
            turn: &turn,
            session: Some(record.session_id.clone()),
        };
        self.announce_turn(place, Ok(&outcome), None).await;
        record.agent_message_id = Some(outcome.agent_message.id.clone());
        let done =
            TurnEvent { id: record.last_event_id + 1, event: "done".into(), data: json!(TurnAnswer::from(outcome)) };
        record.last_event_id = done.id;
        record.events.push(done.clone());
        self.store.save_turn(&record, &[done], &[TurnStatus::Interrupted]).await?;
        Ok(record)
    }

    /// Stores a settled turn's reply in the place the turn reserved for it (with the keyed JSON
    /// turn's own user message, which it had not stored yet): right after its user message.
    async fn store_settled(&self, record: &mut TurnRecord, reply: NewMessage) -> Result<Message, StoreError> {
        let tenant = record.tenant_id.clone();
        let session = record.session_id.clone();
        let mut stored = match (record.pending_user.take(), record.reserved.as_slice()) {
            (Some(user), [user_at, reply_at]) => {
                let messages = vec![
                    user.into_message(&tenant, &session, user_at.clone()),
                    reply.into_message(&tenant, &session, reply_at.clone()),
                ];
                self.store.put_messages(&tenant, &session, messages).await?
            }
            (Some(user), _) => {
                // The turn was to start the user's session: it starts it, with both messages.
                let new = NewSession {
                    tenant_id: tenant.clone(),
                    user_id: record.user_id.clone(),
                    location_id: None,
                    metadata: None,
                };
                let (created, stored) = self.store.create_session_with(new, vec![user, reply]).await?;
                record.session_id = created.id.clone();
                self.announce_session_start(&created, None).await;
                return stored
                    .into_iter()
                    .nth(1)
                    .ok_or_else(|| StoreError::Internal("the reply was not stored".into()));
            }
            (None, [.., reply_at]) => {
                self.store
                    .put_messages(&tenant, &session, vec![reply.into_message(&tenant, &session, reply_at.clone())])
                    .await?
            }
            (None, []) => self.store.append_messages(&tenant, &session, vec![reply]).await?,
        };
        record.reserved.clear();
        Ok(stored.pop().ok_or_else(|| StoreError::Internal("the reply was not stored".into()))?.message)
    }
}
