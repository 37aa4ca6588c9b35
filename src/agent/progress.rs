//! A turn while the model works: a streamed turn's start (its user message and its record), the
//! model's progress as events, persisted every 250 ms with the turn's lease, and the stop signals
//! that end it early, from this process or (through the record) from another server.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::sync::mpsc;

use super::Agent;
use super::flow::{FLUSH_EVERY, LEASE, Place, Thinking, now_millis, session_event};
use super::live::LiveTurn;
use super::turn::{StopReason, TurnError, TurnRequest};
use crate::ids::SessionId;
use crate::llm::{Deltas, ModelRequest, StreamItem};
use crate::store::{Message, NewMessage, StoreError, TurnEvent, TurnRecord, TurnStatus};
use crate::timestamp::{self, Timestamp};
use crate::tools::ToolContext;

impl Agent {
    /// A streamed turn's start: its user message (in a new session when it starts one) and its record
    /// are stored, then the `session` event is sent.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open_stream(
        &self,
        live: &Arc<LiveTurn>,
        req: &TurnRequest,
        place: &mut Place,
        user_new: &NewMessage,
        stamps: &mut Vec<Timestamp>,
        resumed: bool,
        hash: Option<&str>,
        agent: Option<&crate::ids::AgentId>,
        holds: bool,
    ) -> Result<(Message, TurnRecord), TurnError> {
        let turn_id = &live.turn_id;
        let message = match place {
            Place::Continue(id) if resumed => {
                self.store.get_message(&req.tenant, turn_id).await?.ok_or_else(|| StoreError::session_not_found(id))?
            }
            Place::Continue(id) => {
                let m = user_new.clone().into_message(&req.tenant, id, stamps[0].clone());
                self.store.put_messages(&req.tenant, id, vec![m]).await?.remove(0).message
            }
            Place::New { idle, .. } => {
                let idle = idle.take();
                if let Some(idle) = &idle {
                    self.store.close_session(&req.tenant, &idle.id).await?;
                }
                let (session, mut stored) =
                    self.store.create_session_with(Self::new_session(req, agent), vec![user_new.clone()]).await?;
                live.set_session(&session.id);
                let message = stored.remove(0);
                // The reply's place, right after the user message, is reserved while the user's other
                // first turns still wait: they continue the session after it, so the conversation
                // alternates however long this stream runs.
                let (_, reply) = self.store.begin_turn(&req.tenant, &session.id, Some(&req.user), 1).await?;
                *stamps = vec![message.timestamp.clone(), reply[0].clone()];
                self.announce_session_start(&session, idle.as_deref()).await;
                // It holds the session it created before the user's other first turns, waiting for
                // the lock, can find it (they queue behind it).
                if holds {
                    let hold = self.hold(live, &req.tenant, &session.id, false).await?;
                    self.requeue(&req.tenant, &session.id, hold).await;
                }
                // The session exists now: later first turns of the user continue it.
                *place = Place::Continue(session.id);
                message
            }
        };
        let record = self.new_record(live, req, message.session_id.clone(), hash);
        if resumed {
            // The failed attempt's record and events give way to this attempt's.
            self.store.delete_turn(&req.tenant, turn_id, &[]).await?;
        }
        let session = live.push("session", session_event(&message.session_id, turn_id, Some(&message)));
        let mut record = record;
        // The reply's reserved place (a resumed turn reserved only it; a new one, its message's too).
        record.reserved =
            stamps.last().filter(|s| stamps.len() == 2 || message.timestamp < **s).cloned().into_iter().collect();
        record.last_event_id = session.id;
        record.events = vec![session];
        self.store.create_turn(&record).await?;
        record.events.clear();
        Ok((message, record))
    }

    /// A running turn's record, as it is first written.
    pub(super) fn new_record(
        &self,
        live: &LiveTurn,
        req: &TurnRequest,
        session: SessionId,
        hash: Option<&str>,
    ) -> TurnRecord {
        self.record_for(&live.turn_id, &req.tenant, &session, &req.user, hash)
    }

    /// A running record of `turn`, as it is first written.
    pub(super) fn record_for(
        &self,
        turn: &crate::ids::MessageId,
        tenant: &crate::ids::TenantId,
        session: &SessionId,
        user: &crate::ids::UserId,
        hash: Option<&str>,
    ) -> TurnRecord {
        let now = Timestamp::now();
        TurnRecord {
            turn_id: turn.clone(),
            tenant_id: tenant.clone(),
            session_id: session.clone(),
            user_id: user.clone(),
            status: TurnStatus::Running,
            agent_message_id: None,
            error: None,
            last_event_id: 0,
            created_at: now.clone(),
            updated_at: now,
            request_hash: hash.map(str::to_string),
            pending_user: None,
            reserved: Vec::new(),
            answered_by: None,
            answers: Vec::new(),
            lease_until: now_millis() + LEASE.as_millis() as i64,
            expires_at: timestamp::epoch_seconds() + self.settings.turn_events_ttl.as_secs().max(3600) as i64,
            events: Vec::new(),
        }
    }

    /// Follows the model: its progress becomes events (persisted every 250 ms for a streamed turn,
    /// which also learns there that it was cancelled or erased elsewhere), and a stop ends it.
    pub(super) async fn follow_model(
        &self,
        persona: &crate::agents::directory::Persona,
        live: &Arc<LiveTurn>,
        stream: bool,
        request: ModelRequest,
        ctx: &ToolContext,
        mut record: Option<&mut TurnRecord>,
    ) -> Thinking {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let progress = Deltas::new(tx);
        let thinking = self.think(persona, request, ctx, stream.then_some(&progress));
        tokio::pin!(thinking);
        let stopped = live.stopped();
        tokio::pin!(stopped);
        let mut partial = String::new();
        let mut unsaved: Vec<TurnEvent> = Vec::new();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_write = Instant::now();
        let record_event = |item: StreamItem, partial: &mut String, unsaved: &mut Vec<TurnEvent>| {
            let event = match item {
                StreamItem::Delta(text) => {
                    partial.push_str(&text);
                    live.push("delta", json!({"text": text}))
                }
                StreamItem::ToolCall(v) => live.push("tool_call", v),
                StreamItem::ToolResult(v) => live.push("tool_result", v),
            };
            unsaved.push(event);
        };
        let result = loop {
            tokio::select! {
                biased;
                reason = &mut stopped => {
                    while let Ok(item) = rx.try_recv() {
                        record_event(item, &mut partial, &mut unsaved);
                    }
                    break Thinking::Stopped(reason, partial);
                }
                Some(item) = rx.recv() => record_event(item, &mut partial, &mut unsaved),
                result = &mut thinking => {
                    while let Ok(item) = rx.try_recv() {
                        record_event(item, &mut partial, &mut unsaved);
                    }
                    break match result {
                        Ok(thought) => Thinking::Done(thought),
                        Err(e) => Thinking::Failed(e),
                    };
                }
                _ = tick.tick(), if record.is_some() => {
                    let due = !unsaved.is_empty() || last_write.elapsed() >= LEASE / 4;
                    if let (true, Some(rec)) = (due, record.as_deref_mut()) {
                        last_write = Instant::now();
                        if let Some(reason) = self.flush(rec, &mut unsaved).await {
                            live.stop(reason);
                        }
                    }
                }
            }
        };
        if let Some(rec) = record {
            rec.events = unsaved;
        }
        result
    }

    /// Persists a running turn's new events and renews its lease. When the stored record no longer
    /// says `running`, why the turn must stop: cancelled through another server, or erased.
    async fn flush(&self, record: &mut TurnRecord, events: &mut Vec<TurnEvent>) -> Option<StopReason> {
        if let Some(last) = events.last() {
            record.last_event_id = last.id;
        }
        record.updated_at = Timestamp::now();
        record.lease_until = now_millis() + LEASE.as_millis() as i64;
        // A running turn's record outlives TURN_EVENTS_TTL_HOURS until the turn ends.
        record.expires_at = timestamp::epoch_seconds() + self.settings.turn_events_ttl.as_secs().max(3600) as i64;
        match self.store.save_turn(record, events, &[TurnStatus::Running]).await {
            Ok(true) => {
                events.clear();
                None
            }
            Ok(false) => match self.store.get_turn(&record.tenant_id, &record.turn_id).await {
                Ok(Some(stored)) if stored.status == TurnStatus::Running => None,
                // Settled there as interrupted (our lease lapsed): that is the turn's result.
                Ok(Some(stored)) if stored.status == TurnStatus::Interrupted => Some(StopReason::SettledElsewhere),
                // Cancelled through another server.
                Ok(Some(_)) => Some(StopReason::Cancelled),
                Ok(None) => match self.store.get_session(&record.tenant_id, &record.session_id).await {
                    // The record is gone but its session is not: it expired; write it again.
                    Ok(Some(_)) => {
                        let mut again = record.clone();
                        again.events = std::mem::take(events);
                        let _ = self.store.create_turn(&again).await;
                        None
                    }
                    Ok(None) => Some(StopReason::Erased),
                    Err(_) => None,
                },
                Err(_) => None,
            },
            Err(e) => {
                // Too large, or the store failing: the events stay in memory for followers here, and
                // the lease is renewed alone so other servers do not take the turn for dead.
                tracing::warn!(error = %e, turn = %record.turn_id, "could not persist the turn's events");
                events.clear();
                let _ = self.store.save_turn(record, &[], &[TurnStatus::Running]).await;
                None
            }
        }
    }

    /// Saves a turn record's final state with its last events (a record cancelled elsewhere keeps
    /// that status).
    pub(super) async fn save_record(&self, record: &mut TurnRecord, new: Vec<TurnEvent>) {
        let mut events = std::mem::take(&mut record.events);
        events.extend(new);
        if let Some(last) = events.last() {
            record.last_event_id = last.id;
        }
        record.updated_at = Timestamp::now();
        record.expires_at = timestamp::epoch_seconds() + self.settings.turn_events_ttl.as_secs() as i64;
        let from = [TurnStatus::Running, TurnStatus::Cancelled];
        if let Err(e) = self.store.save_turn(record, &events, &from).await {
            tracing::warn!(error = %e, turn = %record.turn_id, "could not save the turn's record");
        }
    }
}
