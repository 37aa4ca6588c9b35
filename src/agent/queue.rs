//! A session's one running turn, and the messages that arrive while it runs (`concurrency`).
//!
//! A turn under `queue`, `interrupt` or `reject` holds its session while it runs (a conditional
//! write on the session, renewed every few seconds, so it holds across servers). A `queue` message
//! that finds the session held is stored at once, with a record of its own (`queued`), and its id is
//! queued on the session; when the running turn lets go, whoever holds the session next takes the
//! queue and one turn, the *answering turn*, answers every queued message with one model call. Each
//! queued message's turn then resolves to it (`answeredBy`). A message whose server died waiting is
//! found by the sweep of running records and answered the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use super::flow::{FLUSH_EVERY, LEASE, Thinking, now_millis, session_agent, summary_note};
use super::live::LiveTurn;
use super::messages;
use super::thinking::Thought;
use super::turn::{Concurrency, StopReason, TurnAnswer, TurnError, TurnOutcome, TurnRequest};
use super::{Agent, announce::TurnPlace};
use crate::agents::directory::Persona;
use crate::ids::{MessageId, SessionId, TenantId, UserId};
use crate::llm::{ModelReply, ModelRequest};
use crate::store::{
    Action, ActionStatus, Hold, HoldLease, HoldRequest, Message, NewMessage, Session, StoreError, TurnEvent,
    TurnFailure, TurnRecord, TurnStatus, complete_history, history_query,
};
use crate::timestamp::Timestamp;

/// The longest a debounce lets a burst keep a turn waiting, however long the burst goes on.
const DEBOUNCE_AT_MOST: Duration = Duration::from_secs(30);

fn lease() -> HoldLease {
    let now = now_millis();
    HoldLease { until: now + LEASE.as_millis() as i64, now }
}

/// A holder's id: its turn's id and a nonce (retries of one `Idempotency-Key` share the turn's id:
/// each attempt holds as itself).
pub(super) fn holder_for(turn: &MessageId) -> MessageId {
    let nonce = crate::random::uuid().simple().to_string();
    MessageId::parse(format!("{turn}~{}", &nonce[..12])).unwrap_or_else(|_| turn.clone())
}

/// The turn a holder's id names.
pub(super) fn turn_of(holder: &MessageId) -> MessageId {
    let turn = holder.as_str().split('~').next().unwrap_or(holder.as_str());
    MessageId::parse(turn).unwrap_or_else(|_| holder.clone())
}

/// The session a queued turn answers in, and the answering turn's holder and queue.
struct Answering {
    tenant: TenantId,
    session: SessionId,
    holder: MessageId,
    queued: Vec<MessageId>,
    /// How long the newest message must go without another before the model is called.
    debounce: Duration,
}

impl Agent {
    /// What a turn does when its session has a running turn: the request's, the agent's, or the
    /// server's policy.
    pub(super) fn policy(&self, requested: Option<Concurrency>, persona: &Persona) -> Concurrency {
        requested.or(persona.concurrency).unwrap_or(self.settings.turn_concurrency)
    }

    /// Makes this turn the session's one running turn (`take_over`: whoever held it; that turn
    /// stops, superseded), renewed every few seconds until the turn ends or hands it on.
    pub(super) async fn hold(
        &self,
        live: &Arc<LiveTurn>,
        tenant: &TenantId,
        session: &SessionId,
        take_over: bool,
    ) -> Result<Hold, TurnError> {
        let holder = holder_for(&live.turn_id);
        let hold = self.store.hold_session(tenant, session, &holder, lease(), take_over).await?;
        self.after_hold(live, tenant, session, &holder, &hold);
        Ok(hold)
    }

    /// A turn's start with its reserved timestamps, and the session's hold when `holder` is given
    /// (one write).
    pub(super) async fn begin_turn_held(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        user: &UserId,
        count: usize,
        holder: Option<&MessageId>,
        take_over: bool,
    ) -> Result<(Session, Vec<Timestamp>, Option<Hold>), StoreError> {
        match holder {
            Some(holder) => {
                let request = HoldRequest { holder, lease: lease(), take_over };
                let (session, stamps, hold) =
                    self.store.begin_held_turn(tenant, session, Some(user), count, request).await?;
                Ok((session, stamps, Some(hold)))
            }
            None => {
                let (session, stamps) = self.store.begin_turn(tenant, session, Some(user), count).await?;
                Ok((session, stamps, None))
            }
        }
    }

    /// What holding the session means for `live`: the turn it was taken from stops (here at once,
    /// on another server at its next renewal), and the hold is renewed while `live` runs.
    pub(super) fn after_hold(
        &self,
        live: &Arc<LiveTurn>,
        tenant: &TenantId,
        session: &SessionId,
        holder: &MessageId,
        hold: &Hold,
    ) {
        if let Hold::Held { taken_from, .. } = hold {
            if let Some(running) = taken_from.as_ref().and_then(|h| self.live.get(&turn_of(h))) {
                running.stop(StopReason::Superseded);
            }
            self.keep_holding(live, tenant, session, holder);
        }
    }

    /// Renews `live`'s hold on the session every few seconds while it has it (at most as long as
    /// the longest turn); a turn whose hold was taken over stops, superseded.
    fn keep_holding(&self, live: &Arc<LiveTurn>, tenant: &TenantId, session: &SessionId, holder: &MessageId) {
        live.set_holds(session, holder);
        let (store, live, tenant, session, holder) =
            (self.store.clone(), live.clone(), tenant.clone(), session.clone(), holder.clone());
        let longest = self.settings.erasure_sweep_delay;
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < longest {
                tokio::select! {
                    _ = live.finished() => break,
                    _ = tokio::time::sleep(LEASE / 4) => {
                        if live.holds().is_none_or(|(_, h)| h != holder) {
                            break;
                        }
                        // A store error is tried again at the next round.
                        let until = now_millis() + LEASE.as_millis() as i64;
                        if let Ok(false) = store.renew_session_hold(&tenant, &session, &holder, until).await {
                            if live.holds().is_some_and(|(_, h)| h == holder) {
                                live.stop(StopReason::Superseded);
                            }
                            break;
                        }
                    }
                }
            }
        });
    }

    /// `interrupt`: a new message supersedes the actions still waiting for a person's decision in
    /// the session's recent replies (the history the model is given); they are rejected
    /// (`superseded by a newer message`), in the store and in that history.
    pub(super) async fn supersede_pending(&self, session: &Session, history: &mut [Message]) {
        let tenant = &session.tenant_id;
        for reply in history.iter_mut().filter(|m| m.role == crate::store::Role::Agent) {
            let mut changed = false;
            for action in Action::all_in(reply.metadata.as_ref()) {
                if action.status != ActionStatus::PendingApproval {
                    continue;
                }
                let mut rejected = action.clone();
                rejected.status = ActionStatus::Rejected;
                rejected.reason = Some("superseded by a newer message".into());
                match self.store.transition_action(tenant, &reply.id, ActionStatus::PendingApproval, &rejected).await {
                    Ok(true) => {
                        changed = true;
                        self.announce_action(session, reply, &rejected, crate::events::EventType::ActionRejected).await;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, action = %action.id, "could not supersede a pending action"),
                }
            }
            if changed && let Ok(Some(fresh)) = self.store.get_message(tenant, &reply.id).await {
                *reply = fresh;
            }
        }
    }

    /// Puts back on the session what a hold took from its queue, for a turn that answers only its
    /// own message: answered when it lets go.
    pub(super) async fn requeue(&self, tenant: &TenantId, session: &SessionId, hold: Hold) {
        let Hold::Held { queued, .. } = hold else { return };
        for turn in queued {
            if let Err(e) = self.store.queue_turn(tenant, session, &turn, now_millis()).await {
                tracing::warn!(error = %e, %turn, "could not queue a message again; the sweep answers it");
            }
        }
    }

    /// Lets go of the session this turn holds, if it does (before its answer goes out). Messages
    /// queued meanwhile are answered at once, by a turn that takes the session over.
    pub(super) async fn let_go(self: &Arc<Self>, live: &LiveTurn, tenant: &TenantId) {
        let Some((session, holder)) = live.take_holds() else { return };
        let next = holder_for(&MessageId::generate());
        match self.store.let_go_session(tenant, &session, &holder, &next, lease().until).await {
            Ok(queued) if queued.is_empty() => {}
            Ok(queued) => {
                let answering =
                    Answering { tenant: tenant.clone(), session, holder: next, queued, debounce: Duration::ZERO };
                self.answer_queued(answering);
            }
            Err(e) => {
                tracing::warn!(error = %e, turn = %live.turn_id, "could not let go of the session; its lease lapses")
            }
        }
    }

    /// A message that waits: stored now (after the running turn's reply, its arrival time in
    /// `metadata.receivedAt`), recorded as `queued` and queued on the session, then answered with
    /// the others that waited by one turn; its own turn ends with that turn's reply. `hold` is what
    /// this turn's hold gave: the session held by another turn, or by this one with messages queued
    /// before it (or a debounce to wait out).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn wait_in_queue(
        self: &Arc<Self>,
        live: &Arc<LiveTurn>,
        req: &TurnRequest,
        session: &Session,
        stamps: &[Timestamp],
        (mut user_new, resumed): (NewMessage, Option<Message>),
        hash: Option<&str>,
        hold: Hold,
        debounce: Duration,
    ) -> Result<TurnOutcome, TurnError> {
        let (tenant, turn) = (&req.tenant, &live.turn_id);
        user_new.metadata.get_or_insert_with(Default::default).insert("receivedAt".into(), json!(Timestamp::now()));
        // A retried key's message was stored by its failed attempt (whose record gives way).
        let message = match &resumed {
            Some(stored) => stored.clone(),
            None => user_new.clone().into_message(tenant, &session.id, stamps[0].clone()),
        };
        if resumed.is_some() {
            self.store.delete_turn(tenant, turn, &[]).await?;
        }
        live.set_session(&session.id);
        live.set_status(TurnStatus::Queued);
        let mut record = self.new_record(live, req, session.id.clone(), hash);
        record.status = TurnStatus::Queued;
        record.pending_user = Some(user_new);
        // Its message's place, and its reply's right after it (taken only if it is cancelled
        // before a turn answers it).
        record.reserved = stamps.to_vec();
        // The `session` event goes out once the message is stored and queued (a client that saw it
        // can count on an answer); the record has it from the start, for followers elsewhere.
        let data =
            json!({"sessionId": session.id, "turnId": turn, "status": TurnStatus::Queued, "userMessage": message});
        record.last_event_id = 1;
        record.events = vec![TurnEvent { id: 1, event: "session".into(), data: data.clone() }];
        if !self.store.create_turn(&record).await? {
            return Err(TurnError::InProgress(turn.clone()));
        }
        record.events.clear();
        let message = match resumed {
            Some(stored) => stored,
            None => self.store.put_messages(tenant, &session.id, vec![message]).await?.remove(0).message,
        };
        match hold {
            Hold::Held { mut queued, .. } => {
                let Some((_, holder)) = live.take_holds() else {
                    return Err(StoreError::Internal("the turn's hold went missing".into()).into());
                };
                queued.push(turn.clone());
                let answering =
                    Answering { tenant: tenant.clone(), session: session.id.clone(), holder, queued, debounce };
                self.answer_queued(answering);
            }
            Hold::Busy(_) => {
                // Stored and recorded: a failure here leaves it to the waiting below (and the sweep).
                if let Err(e) = self.join_queue(tenant, &session.id, turn).await {
                    tracing::warn!(error = %e, %turn, "could not queue the message yet; it waits for the session");
                }
            }
        }
        live.push("session", data);
        let place = TurnPlace {
            tenant,
            user: &req.user,
            location: req.location.as_ref(),
            turn,
            session: Some(session.id.clone()),
        };
        self.announce_queued(place, &message).await;
        self.await_answer(live, record, message).await
    }

    /// When nothing holds the session (its holder let go, or died and its lease lapsed), this
    /// server holds it and answers what was queued on it, then `turns`; false when another turn
    /// holds it.
    async fn answer_if_free(
        self: &Arc<Self>,
        tenant: &TenantId,
        session: &SessionId,
        turns: &[MessageId],
    ) -> Result<bool, StoreError> {
        let holder = holder_for(&MessageId::generate());
        match self.store.hold_session(tenant, session, &holder, lease(), false).await? {
            Hold::Held { mut queued, .. } => {
                queued.extend(turns.iter().cloned());
                let (tenant, session, debounce) = (tenant.clone(), session.clone(), Duration::ZERO);
                self.answer_queued(Answering { tenant, session, holder, queued, debounce });
                Ok(true)
            }
            Hold::Busy(_) => Ok(false),
        }
    }

    /// Queues `turn` behind the session's running turn; when none runs any more, this server holds
    /// the session and answers what is queued, `turn` last.
    async fn join_queue(
        self: &Arc<Self>,
        tenant: &TenantId,
        session: &SessionId,
        turn: &MessageId,
    ) -> Result<(), TurnError> {
        for _ in 0..5 {
            if self.store.queue_turn(tenant, session, turn, now_millis()).await? {
                return Ok(());
            }
            if self.answer_if_free(tenant, session, std::slice::from_ref(turn)).await? {
                return Ok(());
            }
        }
        Err(StoreError::Conflict(format!("session {session} is being held and let go too often; retry")).into())
    }

    /// Waits until a turn answers this queued message, relays that turn's progress, and ends with
    /// its reply. Meanwhile the record's lease is renewed (so that the sweep leaves it to this
    /// server), and a session whose holder died is taken over, to answer what waits.
    async fn await_answer(
        self: &Arc<Self>,
        live: &Arc<LiveTurn>,
        mut record: TurnRecord,
        message: Message,
    ) -> Result<TurnOutcome, TurnError> {
        let (tenant, session, turn) = (record.tenant_id.clone(), record.session_id.clone(), record.turn_id.clone());
        let mut renewed = Instant::now();
        let mut rounds = 0u32;
        // A stop this waiting does not end at (a shutdown: the message stays queued for the next
        // turn, on any server; a take-over of a hold it never had) is seen once.
        let mut heeded = false;
        let answerer = loop {
            tokio::select! {
                reason = live.stopped(), if !heeded => match reason {
                    StopReason::Erased => return Err(TurnError::Erased),
                    StopReason::Cancelled | StopReason::ClientGone => {
                        record.status = TurnStatus::Cancelled;
                        record.updated_at = Timestamp::now();
                        if self.store.save_turn(&record, &[], &[TurnStatus::Queued]).await? {
                            return self.cancelled_in_queue(live, record, message).await;
                        }
                        heeded = true;
                    }
                    StopReason::Shutdown => {
                        return Err(StoreError::Unavailable(
                            "the server is stopping; the message stays queued and the next turn answers it".into(),
                        )
                        .into());
                    }
                    _ => heeded = true,
                },
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
            }
            let now = match self.store.get_turn(&tenant, &turn).await {
                Ok(Some(now)) => now,
                Ok(None) => return Err(TurnError::Erased),
                Err(e) => {
                    tracing::warn!(error = %e, %turn, "could not read a queued message's record; trying again");
                    continue;
                }
            };
            if let Some(answerer) = now.answered_by.clone() {
                break answerer;
            }
            if now.status == TurnStatus::Cancelled {
                return self.cancelled_in_queue(live, now, message).await;
            }
            if renewed.elapsed() >= LEASE / 4 {
                renewed = Instant::now();
                rounds += 1;
                record.lease_until = now_millis() + LEASE.as_millis() as i64;
                record.updated_at = Timestamp::now();
                let _ = self.store.save_turn(&record, &[], &[TurnStatus::Queued]).await;
                // The running turn's server died (its hold lapsed): this server answers. A session
                // held all along gets this message queued again now and then, in case a hold took
                // the queue and lost it (the answering turn leaves out repeats).
                match self.answer_if_free(&tenant, &session, std::slice::from_ref(&turn)).await {
                    Ok(false) if rounds % 4 == 0 => {
                        let _ = self.store.queue_turn(&tenant, &session, &turn, now_millis()).await;
                    }
                    _ => {}
                }
            }
        };
        let mut events = self.answering_events(&tenant, &answerer).await?;
        let mut relayed = Vec::new();
        let cancelled = live.stopped();
        tokio::pin!(cancelled);
        let mut cancel_sent = false;
        let end = loop {
            let event = tokio::select! {
                event = events.next() => event,
                reason = &mut cancelled, if !cancel_sent => {
                    cancel_sent = true;
                    // Cancelling a message's turn cancels the turn that answers it (for every message
                    // it answers); its client going away does not (the others still wait for it).
                    if reason == StopReason::Cancelled {
                        let _ = self.cancel(&tenant, &session, &answerer, None).await;
                    }
                    continue;
                }
            };
            let Some(event) = event else { break None };
            match event.event.as_str() {
                "done" | "error" => break Some(event),
                "session" => {}
                name => relayed.push(live.push(name, event.data)),
            }
        };
        let outcome = match end {
            Some(e) if e.event == "done" => {
                let agent: Message = serde_json::from_value(e.data["agentMessage"].clone())
                    .map_err(|e| StoreError::Internal(format!("the answering turn's reply: {e}")))?;
                let status = serde_json::from_value(e.data["status"].clone()).unwrap_or(TurnStatus::Completed);
                Ok(TurnOutcome {
                    turn_id: turn.clone(),
                    status,
                    session_id: session.clone(),
                    user_message: Some(message),
                    agent_message: agent,
                    answered_by: Some(answerer.clone()),
                    answers: Vec::new(),
                })
            }
            Some(e) => {
                let failure = serde_json::from_value(e.data["error"].clone()).unwrap_or(TurnFailure {
                    code: "model_provider_error".into(),
                    message: "the answering turn failed".into(),
                });
                Err(TurnError::AnsweredWith(failure))
            }
            None => Err(TurnError::Erased),
        };
        // This message's record ends as its answer did.
        record.answered_by = Some(answerer);
        record.pending_user = None;
        record.reserved.clear();
        let done = match &outcome {
            Ok(o) => {
                record.status = o.status;
                record.agent_message_id = Some(o.agent_message.id.clone());
                live.push("done", json!(TurnAnswer::from(o.clone())))
            }
            Err(e) => {
                record.status = TurnStatus::Failed;
                record.error = Some(TurnFailure { code: e.code().into(), message: e.public_message() });
                live.push("error", e.event_data())
            }
        };
        relayed.push(done);
        self.save_record(&mut record, relayed).await;
        outcome
    }

    /// The events of the turn that answers a queued message: from memory when it runs here, else
    /// from its record (which it writes before it claims the message).
    async fn answering_events(
        self: &Arc<Self>,
        tenant: &TenantId,
        answerer: &MessageId,
    ) -> Result<super::TurnEvents, TurnError> {
        for _ in 0..40 {
            if let Some(live) = self.live.get(answerer) {
                return Ok(live.follow(0).boxed());
            }
            if let Some(record) = self.store.get_turn(tenant, answerer).await? {
                return Ok(self.stored_events(record, 0));
            }
            tokio::time::sleep(FLUSH_EVERY).await;
        }
        Err(StoreError::NotFound(format!("the turn {answerer} that answers this message")).into())
    }

    /// A queued message cancelled before a turn answered it: its reply is empty, marked
    /// `interrupted: cancelled`, and the answering turn leaves it out.
    async fn cancelled_in_queue(
        &self,
        live: &LiveTurn,
        mut record: TurnRecord,
        message: Message,
    ) -> Result<TurnOutcome, TurnError> {
        let (why, status) = StopReason::Cancelled.marks();
        let reply = ModelReply { text: String::new(), model: String::new(), usage: None, tool_calls: Vec::new() };
        let thought = Thought { reply, actions: Vec::new(), model_calls: 0 };
        let new = messages::agent_message(
            &record.user_id,
            messages::agent_message_id(&record.turn_id),
            &record.turn_id,
            status,
            &thought,
            live.started,
            Some(why),
        );
        let agent =
            self.store.append_messages(&record.tenant_id, &record.session_id, vec![new]).await?.remove(0).message;
        let outcome = TurnOutcome {
            turn_id: record.turn_id.clone(),
            status,
            session_id: record.session_id.clone(),
            user_message: Some(message),
            agent_message: agent,
            answered_by: None,
            answers: Vec::new(),
        };
        record.agent_message_id = Some(outcome.agent_message.id.clone());
        record.pending_user = None;
        let done = live.push("done", json!(TurnAnswer::from(outcome.clone())));
        self.save_record(&mut record, vec![done]).await;
        Ok(outcome)
    }

    /// Answers what is queued on a session this server holds, in a task of its own: one turn, then
    /// another for what was queued while it ran, until nothing waits.
    fn answer_queued(self: &Arc<Self>, answering: Answering) {
        let agent = self.clone();
        tokio::spawn(async move {
            let mut next = Some(answering);
            while let Some(answering) = next.take() {
                let (tenant, session, holder) =
                    (answering.tenant.clone(), answering.session.clone(), answering.holder.clone());
                match agent.answer(answering).await {
                    Ok(more) => next = more,
                    Err(e) => {
                        tracing::warn!(error = %e, %session, "could not answer the queued messages; the next turn or sweep does");
                        // Let go: a later turn, a waiting client or the sweep answers what waits.
                        let _ = agent.hand_on(&tenant, &session, &holder).await.map(|more| {
                            if let Some(more) = more {
                                agent.answer_queued(more);
                            }
                        });
                    }
                }
            }
        });
    }

    /// Gives `queued` back to the session's queue (another turn holds it now); when nothing holds
    /// the session any more, this server holds it and answers them.
    async fn give_back_queue(self: &Arc<Self>, tenant: &TenantId, session: &SessionId, queued: &[MessageId]) {
        for (i, turn) in queued.iter().enumerate() {
            match self.store.queue_turn(tenant, session, turn, now_millis()).await {
                Ok(true) => {}
                Ok(false) => {
                    if let Ok(true) = self.answer_if_free(tenant, session, &queued[i..]).await {
                        return;
                    }
                    // Held again meanwhile: queued behind that holder.
                    let _ = self.store.queue_turn(tenant, session, turn, now_millis()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %turn, "could not queue a message again; its client or the sweep does")
                }
            }
        }
    }

    /// One answering turn. It holds the session as itself (taking what was queued meanwhile),
    /// waits out a debounce, claims the queued messages still waiting (each queued record then says
    /// `answeredBy` it), calls the model once with all of them, stores its reply after the newest,
    /// and lets go of the session (handing it, with what was queued meanwhile, to the next one).
    async fn answer(self: &Arc<Self>, answering: Answering) -> Result<Option<Answering>, TurnError> {
        let Answering { tenant, session, holder, mut queued, debounce } = answering;
        let turn = MessageId::generate();
        let own = holder_for(&turn);
        // The session goes from the holder that took the queue to this turn, without a moment
        // when nobody holds it (another answering turn could start in it).
        match self.store.hand_over(&tenant, &session, &holder, &own, lease().until).await? {
            Some(more) => queued.extend(more),
            None => {
                // That hold lapsed and another turn has the session: what was gathered waits
                // behind it.
                self.give_back_queue(&tenant, &session, &queued).await;
                return Ok(None);
            }
        }
        let Some(first) = self.first_waiting(&tenant, &session, &queued).await? else {
            return self.hand_on(&tenant, &session, &own).await;
        };
        let Ok(live) = self.live.register(&turn, &tenant, &first.user_id, None) else {
            self.give_back_queue(&tenant, &session, &queued).await;
            return self.hand_on(&tenant, &session, &own).await;
        };
        live.set_session(&session);
        self.keep_holding(&live, &tenant, &session, &own);
        // A debounce: the newest message must go that long without another (renewing the hold and
        // taking what was queued meanwhile, every few seconds at most).
        let (started, mut quiet_since) = (Instant::now(), Instant::now());
        while !debounce.is_zero() && quiet_since.elapsed() < debounce && started.elapsed() < DEBOUNCE_AT_MOST {
            tokio::time::sleep(debounce.saturating_sub(quiet_since.elapsed()).min(LEASE / 4)).await;
            match self.store.hold_session(&tenant, &session, &own, lease(), false).await {
                Ok(Hold::Held { queued: more, .. }) if !more.is_empty() => {
                    queued.extend(more);
                    quiet_since = Instant::now();
                }
                Ok(Hold::Busy(_)) => live.stop(StopReason::Superseded),
                _ => {}
            }
            if live.holds().is_none() {
                break;
            }
        }
        let result = self.answer_as(&live, &tenant, &session, &first.user_id, queued).await;
        // Handed on before the answer goes out, like any turn's let-go.
        let more = match live.take_holds() {
            Some((_, holder)) => self.hand_on(&tenant, &session, &holder).await,
            None => Ok(None),
        };
        match result {
            Ok((outcome, mut record)) => {
                let done = live.push("done", json!(TurnAnswer::from(outcome.clone())));
                self.save_record(&mut record, vec![done]).await;
                live.finish(outcome.status, Ok(outcome));
            }
            Err(e) => {
                if !live.ended_with_error() {
                    live.push("error", e.event_data());
                }
                live.finish(TurnStatus::Failed, Err(e));
            }
        }
        self.live.retire(&live);
        more
    }

    /// The first of these queued messages still waiting in this session (its record).
    async fn first_waiting(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        queued: &[MessageId],
    ) -> Result<Option<TurnRecord>, TurnError> {
        for id in queued {
            if let Some(r) = self.store.get_turn(tenant, id).await?
                && &r.session_id == session
                && r.status == TurnStatus::Queued
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Lets go of the session, or hands it on with what was queued meanwhile.
    async fn hand_on(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        holder: &MessageId,
    ) -> Result<Option<Answering>, TurnError> {
        let next = holder_for(&MessageId::generate());
        let queued = self.store.let_go_session(tenant, session, holder, &next, lease().until).await?;
        Ok((!queued.is_empty()).then(|| Answering {
            tenant: tenant.clone(),
            session: session.clone(),
            holder: next,
            queued,
            debounce: Duration::ZERO,
        }))
    }

    /// The answering turn's work: its reply's place, its record, its claims, the model call and its
    /// reply. After its record is written, a failure is written to it (its waiting clients get the
    /// error) and its reply's place is given back.
    async fn answer_as(
        self: &Arc<Self>,
        live: &Arc<LiveTurn>,
        tenant: &TenantId,
        session_id: &SessionId,
        user: &UserId,
        mut queued: Vec<MessageId>,
    ) -> Result<(TurnOutcome, TurnRecord), TurnError> {
        // The reply's place first: after every message queued so far (theirs were reserved before),
        // then what was queued until now, taken with the hold renewed.
        let (session, stamps) = self.store.begin_turn(tenant, session_id, None, 1).await?;
        if let Some((_, own)) = live.holds()
            && let Hold::Held { queued: more, .. } =
                self.store.hold_session(tenant, session_id, &own, lease(), false).await?
        {
            queued.extend(more);
        }
        let turn = live.turn_id.clone();
        let mut record = self.record_for(&turn, tenant, session_id, user, None);
        record.reserved = stamps.clone();
        let mut unique: Vec<MessageId> = Vec::new();
        for id in queued {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        record.answers = unique.clone();
        let event = live.push(
            "session",
            json!({"sessionId": session_id, "turnId": turn, "status": TurnStatus::Running, "answers": record.answers}),
        );
        record.last_event_id = event.id;
        record.events = vec![event];
        self.store.create_turn(&record).await?;
        record.events.clear();
        match self.answer_claimed(live, &session, &stamps[0], &mut record, unique).await {
            Ok(outcome) => Ok((outcome, record)),
            Err(e) => {
                if !matches!(e, TurnError::Erased) {
                    let back_to = session.last_message_at.as_ref();
                    let _ = self.store.release_turn(tenant, session_id, &stamps[0], back_to).await;
                    record.status = TurnStatus::Failed;
                    record.error = Some(TurnFailure { code: e.code().into(), message: e.public_message() });
                    let event = live.push("error", e.event_data());
                    self.save_record(&mut record, vec![event]).await;
                }
                Err(e)
            }
        }
    }

    /// Claims each message once (a conditional write from `queued`; stored in its place if its
    /// server died before it could), then calls the model with them all and stores the reply.
    async fn answer_claimed(
        self: &Arc<Self>,
        live: &Arc<LiveTurn>,
        session: &Session,
        reply_at: &Timestamp,
        record: &mut TurnRecord,
        unique: Vec<MessageId>,
    ) -> Result<TurnOutcome, TurnError> {
        let started = Instant::now();
        let begun_at = Timestamp::now();
        let (tenant, session_id, user) = (&session.tenant_id, &session.id, &record.user_id.clone());
        let turn = live.turn_id.clone();
        let mut answered: Vec<Message> = Vec::new();
        for id in &unique {
            let Some(mut queued) = self.store.get_turn(tenant, id).await? else { continue };
            if &queued.session_id != session_id || queued.status != TurnStatus::Queued {
                continue;
            }
            queued.status = TurnStatus::Running;
            queued.answered_by = Some(turn.clone());
            queued.lease_until = now_millis() + LEASE.as_millis() as i64;
            queued.updated_at = Timestamp::now();
            if !self.store.save_turn(&queued, &[], &[TurnStatus::Queued]).await? {
                continue;
            }
            let stored = match (queued.pending_user.clone(), queued.reserved.first()) {
                (Some(user_new), Some(at)) => {
                    let m = user_new.into_message(tenant, session_id, at.clone());
                    self.store.put_messages(tenant, session_id, vec![m]).await?.into_iter().next().map(|a| a.message)
                }
                _ => self.store.get_message(tenant, &queued.turn_id).await?,
            };
            answered.extend(stored);
        }
        // In the order they are stored (the queue's order is the order they were queued in).
        answered.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        record.answers = answered.iter().map(|m| m.id.clone()).collect();
        let Some(last) = answered.last().cloned() else {
            return Err(StoreError::NotFound("no queued message was left to answer".into()).into());
        };
        let persona = self.agents.pick(tenant, None, session_agent(session).as_ref()).await?;
        // The history has room for every message answered, and nothing stored after the reply's place.
        let limit = persona.history_max_messages.max(answered.len());
        let page = self.store.list_messages(tenant, session_id, history_query(limit)).await?;
        let history = complete_history(&*self.store, session, limit, Some(page)).await?;
        let mut history = super::summary::after_summary(session, history);
        history.retain(|m| m.id != last.id && &m.timestamp < reply_at);
        let ctx = Self::tool_context(tenant, user, session.location_id.as_ref());
        let summary = session.context_summary.clone();
        let request = ModelRequest {
            system_prompt: persona.system_prompt.clone(),
            summary: summary.as_ref().map(|s| s.text.clone()),
            history,
            message: last.content.clone(),
            context: None,
            tools: persona.tools.specs(),
            steps: Vec::new(),
            temperature: persona.temperature,
            max_output_tokens: persona.max_output_tokens,
        };
        let thinking = self.follow_model(&persona, live, true, request, &ctx, Some(record)).await;
        let (thought, status, interrupted) = match thinking {
            Thinking::Done(thought) => {
                let pending = thought.actions.iter().any(|a| a.status == crate::store::ActionStatus::PendingApproval);
                (thought, if pending { TurnStatus::AwaitingApproval } else { TurnStatus::Completed }, None)
            }
            Thinking::Stopped(StopReason::Erased, _) => return Err(TurnError::Erased),
            Thinking::Stopped(StopReason::SettledElsewhere, _) => {
                return Err(StoreError::Conflict("settled as interrupted by another server".into()).into());
            }
            Thinking::Stopped(reason, partial) => {
                let (why, status) = reason.marks();
                let reply = ModelReply { text: partial, model: String::new(), usage: None, tool_calls: Vec::new() };
                (Thought { reply, actions: Vec::new(), model_calls: 0 }, status, Some(why))
            }
            Thinking::Failed(e) => return Err(e),
        };
        if self.live.erased(live) || self.lost_to_erasure(tenant, user, Some(session_id), &begun_at) {
            self.store.delete_turn(tenant, &turn, &[]).await?;
            return Err(TurnError::Erased);
        }
        let mut agent_new = messages::agent_message(
            user,
            messages::agent_message_id(&turn),
            &turn,
            status,
            &thought,
            started,
            interrupted,
        );
        if let Some(metadata) = agent_new.metadata.as_mut() {
            metadata.insert("answers".into(), json!(record.answers));
            if let Some(summary) = &summary {
                metadata.insert("contextSummary".into(), summary_note(summary));
            }
        }
        messages::mark_persona(&mut agent_new, &persona);
        let tally = self.tally(&persona, &thought);
        agent_new.counted = tally.clone();
        let reply = agent_new.into_message(tenant, session_id, reply_at.clone());
        let agent_message = self.store.put_messages(tenant, session_id, vec![reply]).await?.remove(0).message;
        self.counted(tenant, user, tally.as_ref()).await;
        let outcome = TurnOutcome {
            turn_id: turn.clone(),
            status,
            session_id: session_id.clone(),
            user_message: None,
            agent_message,
            answered_by: None,
            answers: record.answers.clone(),
        };
        let place = TurnPlace {
            tenant,
            user,
            location: session.location_id.as_ref(),
            turn: &turn,
            session: Some(session_id.clone()),
        };
        self.announce_turn(place, Ok(&outcome), None).await;
        record.status = status;
        record.agent_message_id = Some(outcome.agent_message.id.clone());
        Ok(outcome)
    }

    /// A queued message's record whose server died while it waited (the sweep found its lease
    /// lapsed): answered here when nothing holds its session, else queued again behind the holder.
    pub(super) async fn rescue_queued(self: &Arc<Self>, mut record: TurnRecord) -> Result<(), TurnError> {
        let (tenant, session, turn) = (record.tenant_id.clone(), record.session_id.clone(), record.turn_id.clone());
        // Taken by this server for a lease (the sweep leaves it alone meanwhile).
        record.lease_until = now_millis() + LEASE.as_millis() as i64;
        if !self.store.save_turn(&record, &[], &[TurnStatus::Queued]).await? {
            return Ok(());
        }
        // Held: its holder hands it on when it lets go (one that died lets its lease lapse first).
        if !self.answer_if_free(&tenant, &session, std::slice::from_ref(&turn)).await? {
            self.store.queue_turn(&tenant, &session, &turn, now_millis()).await?;
        }
        Ok(())
    }

    /// A queued message's record whose answering turn ended but whose own server died before it
    /// wrote the end: it ends as that turn did.
    pub(super) async fn settle_answered(&self, mut record: TurnRecord) -> Result<(), TurnError> {
        let Some(answerer) = record.answered_by.clone() else { return Ok(()) };
        let ended = self.store.get_turn(&record.tenant_id, &answerer).await?;
        let Some(ended) = ended.filter(|r| r.status.is_final()) else { return Ok(()) };
        record.status = ended.status;
        record.agent_message_id = ended.agent_message_id.clone();
        record.error = ended.error.clone();
        record.pending_user = None;
        record.reserved.clear();
        let answer = ended.events.iter().rev().find(|e| e.event == "done" || e.event == "error").cloned();
        let mut events: Vec<TurnEvent> = Vec::new();
        if let Some(mut end) = answer {
            if let Some(data) = end.data.as_object_mut() {
                data.insert("turnId".into(), json!(record.turn_id));
                data.insert("answeredBy".into(), Value::String(answerer.to_string()));
            }
            end.id = record.last_event_id + 1;
            events.push(end);
        }
        self.save_record(&mut record, events).await;
        Ok(())
    }
}
