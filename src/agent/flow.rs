//! The one flow of a turn, JSON or streamed: find where it goes, give the model its history, follow
//! the model (recording events, persisting them for a streamed turn, obeying a stop), and store the
//! result with the store's one write protocol.
//!
//! What each ending leaves stored:
//! - completed / awaiting approval: the user message and the reply;
//! - failed: nothing for a JSON turn (its timestamps are given back); for a streamed turn the user
//!   message (sent in the `session` event) and the turn record with the error;
//! - interrupted / cancelled: the user message and the partial reply, marked `interrupted`;
//! - erased: nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::OwnedMutexGuard;

use super::live::LiveTurn;
use super::messages;
use super::thinking::Thought;
use super::turn::{Concurrency, StopReason, TurnAnswer, TurnError, TurnOutcome, TurnRequest};
use super::{Agent, Started};
use crate::agents::directory::Persona;
use crate::ids::{AgentId, MessageId, SessionId};
use crate::llm::{ModelReply, ModelRequest};
use crate::store::{
    Hold, Message, NewMessage, NewSession, Session, StoreError, TurnStatus, complete_history, history_query,
};
use crate::timestamp::{self, Timestamp};

/// How often a streamed turn persists its new events (and renews its lease).
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How long a turn's lease lasts past its last write: past it, the turn counts as abandoned.
pub(super) const LEASE: Duration = Duration::from_secs(10);

/// Where a turn goes.
pub(super) enum Place {
    /// An existing session (given, the user's active one, or the one of a retried user message).
    Continue(SessionId),
    /// A new session, closing the user's idle one; the lock keeps other first turns of the user out.
    New { idle: Option<Box<Session>>, _lock: OwnedMutexGuard<()> },
}

/// How the model's part ended.
pub(super) enum Thinking {
    Done(Thought),
    Failed(TurnError),
    Stopped(StopReason, String),
}

pub(super) fn now_millis() -> i64 {
    timestamp::now_micros() / 1000
}

impl Agent {
    /// Starts a turn in a task of its own, so that it ends the same way whatever its client does.
    /// A retried `Idempotency-Key` gets what its first request left instead.
    pub async fn start(self: &Arc<Self>, req: TurnRequest) -> Result<Started, TurnError> {
        let hash = req.idempotency_key.as_ref().map(|_| messages::request_hash(&req));
        let turn_id = messages::turn_id(&req.tenant, &req.user, req.idempotency_key.as_ref());
        let mut resume = None;
        if req.idempotency_key.is_some() {
            match self.prior(&req, &turn_id, hash.as_deref()).await? {
                super::idempotency::Prior::None => {}
                super::idempotency::Prior::Started(started) => return Ok(started),
                super::idempotency::Prior::Rerun(user_message) => resume = Some(*user_message),
            }
        }
        let live = match self.live.register(&turn_id, &req.tenant, &req.user, hash.clone()) {
            Ok(live) => live,
            Err(running) => return self.follow_running(&req, running, hash.as_deref()),
        };
        let agent = self.clone();
        let task = live.clone();
        tokio::spawn(async move { agent.run(task, req, hash, resume).await });
        Ok(Started::Live(live))
    }

    async fn run(
        self: Arc<Self>,
        live: Arc<LiveTurn>,
        req: TurnRequest,
        hash: Option<String>,
        resume: Option<Message>,
    ) {
        let started = Instant::now();
        let result = self.execute(&live, &req, hash.as_deref(), resume).await;
        // The session's next turn may run (its lease would lapse anyway).
        self.let_go(&live, &req.tenant).await;
        crate::telemetry::turn(req.stream, result.is_ok(), started.elapsed());
        if result.is_err() {
            // Recorded before the turn's error is given (a turn that ended announced itself).
            self.announce_turn(self.turn_place(&req, &live), result.as_ref(), None).await;
        }
        match result {
            Ok(outcome) => {
                let session = outcome.session_id.clone();
                live.finish(outcome.status, Ok(outcome));
                // After the answer, off its path: the next turn uses the summary.
                if live.summary_due() {
                    self.summarize_when_due(&req.tenant, &session);
                }
            }
            Err(e) => {
                if !live.ended_with_error() {
                    live.push("error", e.event_data());
                }
                live.finish(TurnStatus::Failed, Err(e));
            }
        }
        self.live.retire(&live);
    }

    /// Who and where a turn is, for its change events.
    fn turn_place<'a>(&self, req: &'a TurnRequest, live: &'a LiveTurn) -> super::announce::TurnPlace<'a> {
        super::announce::TurnPlace {
            tenant: &req.tenant,
            user: &req.user,
            location: req.location.as_ref(),
            turn: &live.turn_id,
            session: live.session(),
        }
    }

    pub(super) fn is_idle(&self, session: &Session) -> bool {
        let idle = session.updated_at.micros().map(|t| timestamp::now_micros().saturating_sub(t)).unwrap_or(i64::MAX);
        idle > self.settings.session_idle.as_micros() as i64
    }

    /// The one session-resolution path: the given session, the retried message's, the user's
    /// active one, or a new one (decided under the user's lock).
    async fn place(&self, req: &TurnRequest, resume: Option<&Message>) -> Result<Place, TurnError> {
        if let Some(m) = resume {
            return Ok(Place::Continue(m.session_id.clone()));
        }
        if let Some(id) = &req.session_id {
            return Ok(Place::Continue(id.clone()));
        }
        let lock = self.session_start_lock(&req.tenant, &req.user).lock_owned().await;
        // A turn naming another agent than the active session's starts a session of its own.
        let fits = |s: &Session| req.agent.is_none() || session_agent(s).is_none_or(|a| Some(&a) == req.agent.as_ref());
        match self.store.find_active_session(&req.tenant, &req.user).await? {
            Some(active) if !self.is_idle(&active) && fits(&active) => Ok(Place::Continue(active.id)),
            other => Ok(Place::New { idle: other.map(Box::new), _lock: lock }),
        }
    }

    fn model_request(persona: &Persona, message: String, history: Vec<Message>, req: &TurnRequest) -> ModelRequest {
        let system_prompt = match &req.instructions {
            Some(extra) => format!("{}\n\n{extra}", persona.system_prompt),
            None => persona.system_prompt.clone(),
        };
        ModelRequest {
            system_prompt,
            summary: None,
            history,
            message,
            context: req.context.clone(),
            tools: persona.tools.specs(),
            steps: Vec::new(),
            temperature: persona.temperature,
            max_output_tokens: persona.max_output_tokens,
        }
    }

    /// Creates the session a client named when no session of the tenant has that id (one of another
    /// user stays theirs: the turn then answers 404). The user's other active session is closed.
    async fn create_chosen_session(
        &self,
        req: &TurnRequest,
        id: &SessionId,
        agent: Option<&AgentId>,
    ) -> Result<bool, TurnError> {
        let _lock = self.session_start_lock(&req.tenant, &req.user).lock_owned().await;
        if self.store.get_session(&req.tenant, id).await?.is_some() {
            return Ok(false);
        }
        let mut closed = None;
        if let Some(active) = self.store.find_active_session(&req.tenant, &req.user).await? {
            closed = self.store.close_session(&req.tenant, &active.id).await?;
        }
        let mut session = Session::new(Self::new_session(req, agent), crate::store::Retention::default());
        session.id = id.clone();
        // Conditional: two first turns naming the same new id create it once.
        if self.store.import_session(session.clone()).await? {
            self.announce_session_start(&session, closed.as_ref()).await;
        }
        Ok(true)
    }

    /// A session a turn starts; it records the agent it runs as (`metadata.agentId`).
    pub(super) fn new_session(req: &TurnRequest, agent: Option<&AgentId>) -> NewSession {
        NewSession {
            tenant_id: req.tenant.clone(),
            user_id: req.user.clone(),
            location_id: req.location.clone(),
            metadata: match (agent, &req.session_metadata) {
                (None, None) => None,
                (agent, given) => {
                    let mut m = given.clone().unwrap_or_default();
                    if let Some(a) = agent {
                        m.insert("agentId".into(), json!(a));
                    }
                    Some(m)
                }
            },
        }
    }

    async fn execute(
        self: &Arc<Self>,
        live: &Arc<LiveTurn>,
        req: &TurnRequest,
        hash: Option<&str>,
        resume: Option<Message>,
    ) -> Result<TurnOutcome, TurnError> {
        let turn_id = live.turn_id.clone();
        let started = Instant::now();
        let begun_at = Timestamp::now();
        // A turn that would start over a budget is refused before anything is stored.
        self.within_budget(&req.tenant, &req.user).await?;
        // The agent the turn names, else the tenant's default (a continuing session's own agent
        // decides once the session is read).
        let mut persona = self.agents.pick(&req.tenant, req.agent.as_ref(), None).await?;
        let mut place = self.place(req, resume.as_ref()).await?;
        let user_new = messages::user_message(req, &turn_id, hash);
        // Before the model: reserve the turn's timestamps beside the history read (one round trip).
        let mut stamps = Vec::new();
        let mut before: Option<Session> = None;
        let mut history = Vec::new();
        if let Place::Continue(id) = &place {
            let limit = persona.history_max_messages;
            let count = if resume.is_some() { 1 } else { 2 };
            let page = async {
                if limit == 0 {
                    Ok(None)
                } else {
                    self.store.list_messages(&req.tenant, id, history_query(limit)).await.map(Some)
                }
            };
            // A turn under a policy that holds asks for the hold in the same write.
            let asked = self.policy(req.concurrency, &persona);
            let holder = asked.holds().then(|| super::queue::holder_for(&live.turn_id));
            let take_over = asked == Concurrency::Interrupt;
            let begin = || self.begin_turn_held(&req.tenant, id, &req.user, count, holder.as_ref(), take_over);
            let (begun, page) = tokio::join!(begin(), page);
            let (begun, page) = match begun {
                // A client-chosen id for a session that does not exist yet (the original server's
                // clients choose session ids): it is created for this user, then the turn goes on.
                Err(StoreError::NotFound(_))
                    if resume.is_none() && self.create_chosen_session(req, id, persona.agent_id()).await? =>
                {
                    let page = page.map(|_| None);
                    (begin().await, page)
                }
                other => (other, page),
            };
            let (session, reserved, begun_hold) = begun?;
            if let (Some(holder), Some(hold)) = (&holder, &begun_hold) {
                self.after_hold(live, &req.tenant, &session.id, holder, hold);
            }
            live.set_session(&session.id);
            stamps = reserved;
            let mut page = page;
            if let Some(had) = session_agent(&session) {
                // The session runs as the agent it started with (naming another is refused).
                match self.agents.pick(&req.tenant, req.agent.as_ref(), Some(&had)).await {
                    Ok(own) => persona = own,
                    Err(e) => {
                        self.give_back(req, &place, &stamps, Some(&session), None).await;
                        return Err(e.into());
                    }
                }
                if persona.history_max_messages != limit {
                    let limit = persona.history_max_messages;
                    page = match limit {
                        0 => Ok(None),
                        _ => self.store.list_messages(&req.tenant, id, history_query(limit)).await.map(Some),
                    };
                }
            }
            // `queue`, `interrupt` and `reject`: the session's one running turn, or a message that
            // waits for it (refused under `reject`, nothing stored).
            let policy = self.policy(req.concurrency, &persona);
            if !policy.holds() && begun_hold.is_some() {
                // The session's own agent runs its turns side by side: the hold goes (what waited
                // is answered).
                self.let_go(live, &req.tenant).await;
            }
            if policy.holds() {
                let held = match begun_hold {
                    Some(hold) => Ok(hold),
                    None => self.hold(live, &req.tenant, &session.id, policy == Concurrency::Interrupt).await,
                };
                let waits = match &held {
                    Ok(Hold::Held { queued, .. }) => !queued.is_empty() || !persona.debounce.is_zero(),
                    Ok(Hold::Busy(_)) => policy != Concurrency::Reject,
                    Err(_) => false,
                };
                match held {
                    Ok(hold) if waits => {
                        let waiting = (user_new, resume);
                        return self
                            .wait_in_queue(live, req, &session, &stamps, waiting, hash, hold, persona.debounce)
                            .await;
                    }
                    Ok(Hold::Busy(other)) => {
                        self.give_back(req, &place, &stamps, Some(&session), None).await;
                        return Err(TurnError::TurnInProgress(super::queue::turn_of(&other)));
                    }
                    Err(e) => {
                        self.give_back(req, &place, &stamps, Some(&session), None).await;
                        return Err(e);
                    }
                    Ok(Hold::Held { .. }) => {}
                }
            }
            let limit = persona.history_max_messages;
            let read = match page {
                Ok(page) => complete_history(&*self.store, &session, limit, page).await,
                Err(e) => Err(e),
            };
            history = match read {
                Ok(history) => super::summary::after_summary(&session, history),
                Err(e) => {
                    self.give_back(req, &place, &stamps, Some(&session), None).await;
                    return Err(e.into());
                }
            };
            if policy == Concurrency::Interrupt {
                self.supersede_pending(&session, &mut history).await;
            }
            before = Some(session);
            history.retain(|m| m.id != turn_id);
        }
        if resume.is_some() && !req.stream {
            // The failed attempt's record gives way to this attempt (whose messages record it).
            self.store.delete_turn(&req.tenant, &turn_id, &[]).await?;
        }
        // A streamed turn stores its user message and its record first, and says so.
        let mut user_message = resume.clone();
        let mut record = None;
        if req.stream {
            // A streamed first turn holds the session it creates (under a policy that holds).
            let holds = self.policy(req.concurrency, &persona).holds() && live.holds().is_none();
            let (resumed, agent) = (resume.is_some(), persona.agent_id());
            let written =
                self.open_stream(live, req, &mut place, &user_new, &mut stamps, resumed, hash, agent, holds).await;
            match written {
                Ok((message, rec)) => {
                    user_message = Some(message);
                    record = Some(rec);
                }
                Err(e) => {
                    self.give_back(req, &place, &stamps, before.as_ref(), None).await;
                    return Err(e);
                }
            }
        } else if hash.is_some() {
            // A keyed JSON turn keeps a record while it runs, so that a retry on another server
            // answers 409 instead of running the model and its tools again (its messages are still
            // its record once it ends). The conditional create settles a race between two servers.
            let session = live
                .session()
                .unwrap_or_else(|| SessionId::parse(turn_id.as_str()).unwrap_or_else(|_| SessionId::generate()));
            let mut rec = self.new_record(live, req, session, hash);
            // What settles the turn if this server dies before its one write.
            if resume.is_none() {
                rec.pending_user = Some(user_new.clone());
            }
            rec.reserved = stamps.clone();
            let created = self.store.create_turn(&rec).await;
            if !matches!(created, Ok(true)) {
                self.give_back(req, &place, &stamps, before.as_ref(), None).await;
                return Err(match created {
                    Err(e) => e.into(),
                    _ => TurnError::InProgress(turn_id.clone()),
                });
            }
            record = Some(rec);
        }
        // Tools act for the location this turn names; the session's own when the turn names none.
        let location = req.location.clone().or_else(|| before.as_ref().and_then(|s| s.location_id.clone()));
        let ctx = Self::tool_context(&req.tenant, &req.user, location.as_ref());
        let summary = before.as_ref().and_then(|s| s.context_summary.clone());
        if let Some(summary) = summary.as_ref().filter(|_| req.stream) {
            // The model is given the session's summary in place of the messages it covers.
            live.push("summary", summary_note(summary));
        }
        let window = persona.history_max_messages;
        let window_full = window > 0 && history.len() >= window;
        let mut request = Self::model_request(&persona, req.message.clone(), history, req);
        request.summary = summary.as_ref().map(|s| s.text.clone());
        let (fixed_chars, history_chars) = request_chars(&request);
        let thinking = self.follow_model(&persona, live, req.stream, request, &ctx, record.as_mut()).await;
        if let Some(trigger) = persona.summary_trigger_tokens {
            // Due when the history filled the window (older messages would drop out unsummarised)
            // or passed the trigger: the provider's count of the request less the fixed part (system
            // prompt and summary, estimated), else an estimate. The summary itself never counts, so
            // a summary is not summarised again for its own size.
            let estimate = super::summary::estimate_tokens;
            let history_tokens = match &thinking {
                Thinking::Done(t) => t.reply.usage.map(|u| u.input_tokens.saturating_sub(estimate(fixed_chars))),
                _ => None,
            }
            .unwrap_or_else(|| estimate(history_chars));
            if window_full || history_tokens > trigger {
                live.set_summary_due();
            }
        }
        let (thought, status, interrupted) = match thinking {
            Thinking::Done(thought) => {
                let pending = thought.actions.iter().any(|a| a.status == crate::store::ActionStatus::PendingApproval);
                let status = if pending { TurnStatus::AwaitingApproval } else { TurnStatus::Completed };
                (thought, status, None)
            }
            Thinking::Stopped(StopReason::SettledElsewhere, _) => {
                // Another server settled this turn (it took it for dead): its stored result stands,
                // announced there once.
                tracing::warn!(turn = %turn_id, "the turn was settled as interrupted by another server; it ends so");
                let agent = self.store.get_message(&req.tenant, &messages::agent_message_id(&turn_id)).await?;
                let agent = agent.ok_or_else(missing)?;
                let user = self.store.get_message(&req.tenant, &turn_id).await?;
                let mut outcome = messages::outcome(turn_id.clone(), user, agent);
                outcome.status = TurnStatus::Interrupted;
                self.let_go(live, &req.tenant).await;
                live.push("done", json!(TurnAnswer::from(outcome.clone())));
                return Ok(outcome);
            }
            Thinking::Stopped(StopReason::Erased, _) => {
                self.forget(req, &turn_id, user_message.as_ref(), None).await;
                return Err(TurnError::Erased);
            }
            Thinking::Stopped(reason, partial) => {
                let (why, status) = reason.marks();
                tracing::info!(turn = %turn_id, reason = why, "turn stopped; storing the partial reply");
                let reply = ModelReply { text: partial, model: String::new(), usage: None, tool_calls: Vec::new() };
                (Thought { reply, actions: Vec::new(), model_calls: 0 }, status, Some(why))
            }
            Thinking::Failed(e) => {
                let user_stamp = user_message.as_ref().map(|m| &m.timestamp);
                self.give_back(req, &place, &stamps, before.as_ref(), user_stamp).await;
                if let Some(mut rec) = record {
                    rec.status = TurnStatus::Failed;
                    rec.error = Some(crate::store::TurnFailure { code: e.code().into(), message: e.public_message() });
                    let event = live.push("error", e.event_data());
                    self.save_record(&mut rec, vec![event]).await;
                }
                return Err(e);
            }
        };
        if self.erased(live, req, &begun_at) {
            self.forget(req, &turn_id, user_message.as_ref(), None).await;
            return Err(TurnError::Erased);
        }
        let mut agent_new = messages::agent_message(
            &req.user,
            messages::agent_message_id(&turn_id),
            &turn_id,
            status,
            &thought,
            started,
            interrupted,
        );
        if let (Some(summary), Some(metadata)) = (&summary, agent_new.metadata.as_mut()) {
            metadata.insert("contextSummary".into(), summary_note(summary));
        }
        messages::mark_persona(&mut agent_new, &persona);
        let own_stamp = user_message.as_ref().map(|m| m.timestamp.clone());
        // The usage is written with the reply (one more write on DynamoDB: its user's day).
        let tally = self.tally(&persona, &thought);
        agent_new.counted = tally.clone();
        let written = self.write(req, &place, &stamps, (user_new, agent_new), user_message, persona.agent_id()).await;
        let (session_id, user_message, agent_message) = match written {
            Ok(written) => {
                self.counted(&req.tenant, &req.user, tally.as_ref()).await;
                written
            }
            Err(e) => {
                self.give_back(req, &place, &stamps, before.as_ref(), own_stamp.as_ref()).await;
                return Err(e);
            }
        };
        if self.erased(live, req, &begun_at) {
            self.forget(req, &turn_id, user_message.as_ref(), Some(&agent_message.id)).await;
            return Err(TurnError::Erased);
        }
        let outcome = TurnOutcome {
            turn_id: turn_id.clone(),
            status,
            session_id,
            user_message,
            agent_message,
            answered_by: None,
            answers: Vec::new(),
        };
        let mut events = Vec::new();
        if !req.stream {
            live.set_session(&outcome.session_id);
            events.push(
                live.push("session", session_event(&outcome.session_id, &turn_id, outcome.user_message.as_ref())),
            );
            events.push(live.push("delta", json!({"text": outcome.agent_message.content})));
        }
        // The change events are recorded before the answer (`done`) goes out.
        self.announce_turn(self.turn_place(req, live), Ok(&outcome), None).await;
        self.let_go(live, &req.tenant).await;
        events.push(live.push("done", json!(TurnAnswer::from(outcome.clone()))));
        if let Some(mut rec) = record {
            rec.status = status;
            rec.session_id = outcome.session_id.clone();
            rec.agent_message_id = Some(outcome.agent_message.id.clone());
            self.save_record(&mut rec, events).await;
        }
        Ok(outcome)
    }

    /// The one write of a turn's result.
    async fn write(
        &self,
        req: &TurnRequest,
        place: &Place,
        stamps: &[Timestamp],
        (user_new, agent_new): (NewMessage, NewMessage),
        user_message: Option<Message>,
        agent: Option<&AgentId>,
    ) -> Result<(SessionId, Option<Message>, Message), TurnError> {
        let tenant = &req.tenant;
        match place {
            // A JSON turn on an existing session: both messages at once, with the reserved times.
            Place::Continue(id) if user_message.is_none() => {
                let messages = vec![
                    user_new.into_message(tenant, id, stamps[0].clone()),
                    agent_new.into_message(tenant, id, stamps[1].clone()),
                ];
                let mut stored = self.store.put_messages(tenant, id, messages).await?.into_iter().map(|a| a.message);
                match (stored.next(), stored.next()) {
                    (Some(u), Some(a)) => Ok((id.clone(), Some(u), a)),
                    _ => Err(missing().into()),
                }
            }
            // The user message is stored already: the reply goes after it.
            Place::Continue(id) => {
                let stored = match stamps.last() {
                    Some(stamp) if stamps.len() == 2 || user_message.as_ref().is_some_and(|u| &u.timestamp < stamp) => {
                        let m = agent_new.into_message(tenant, id, stamp.clone());
                        self.store.put_messages(tenant, id, vec![m]).await?
                    }
                    _ => self.store.append_messages(tenant, id, vec![agent_new]).await?,
                };
                Ok((id.clone(), user_message, stored.into_iter().next().map(|a| a.message).ok_or_else(missing)?))
            }
            // A JSON turn that starts a session: the idle one is closed, the new one written with both
            // messages, in one round trip.
            Place::New { idle, .. } => {
                let close_idle = async {
                    match idle {
                        Some(idle) => self.store.close_session(tenant, &idle.id).await.map(|_| ()),
                        None => Ok(()),
                    }
                };
                let (closed, created) = tokio::join!(
                    close_idle,
                    self.store.create_session_with(Self::new_session(req, agent), vec![user_new, agent_new])
                );
                closed?;
                let (session, stored) = created?;
                self.announce_session_start(&session, idle.as_deref()).await;
                let mut stored = stored.into_iter();
                match (stored.next(), stored.next()) {
                    (Some(u), Some(a)) => Ok((session.id, Some(u), a)),
                    _ => Err(missing().into()),
                }
            }
        }
    }

    /// Gives back the timestamps a turn reserved and will not use.
    async fn give_back(
        &self,
        req: &TurnRequest,
        place: &Place,
        stamps: &[Timestamp],
        before: Option<&Session>,
        user_stamp: Option<&Timestamp>,
    ) {
        let (Place::Continue(id), Some(last)) = (place, stamps.last()) else { return };
        // Back to the turn's own user message when it used the first reserved time, else to where
        // the session was before the turn.
        let own = user_stamp.filter(|u| stamps.len() == 2 && **u == stamps[0]);
        let back_to = own.or(before.and_then(|b| b.last_message_at.as_ref()));
        let _ = self.store.release_turn(&req.tenant, id, last, back_to).await;
    }

    /// Whether an erasure, here or on another server, covers the turn: it then stores nothing.
    fn erased(&self, live: &LiveTurn, req: &TurnRequest, begun_at: &Timestamp) -> bool {
        self.live.erased(live) || self.lost_to_erasure(&req.tenant, &req.user, live.session().as_ref(), begun_at)
    }

    /// Removes what a turn that lost to an erasure may have written.
    async fn forget(&self, req: &TurnRequest, turn: &MessageId, user: Option<&Message>, agent: Option<&MessageId>) {
        let ids: Vec<MessageId> = user.map(|m| m.id.clone()).into_iter().chain(agent.cloned()).collect();
        if let Err(e) = self.store.delete_turn(&req.tenant, turn, &ids).await {
            tracing::warn!(error = %e, %turn, "could not remove the writes of an erased turn");
        }
    }
}

/// The agent a session started with (`metadata.agentId`).
pub(super) fn session_agent(session: &Session) -> Option<AgentId> {
    messages::agent_in(session.metadata.as_ref())
}

fn missing() -> StoreError {
    StoreError::Internal("the store returned fewer messages than given".into())
}

/// The characters of a model request (for token estimates): its fixed part (system prompt and
/// summary) and its conversation (history and message).
fn request_chars(request: &ModelRequest) -> (usize, usize) {
    let fixed = request.system_prompt.chars().count() + request.summary.as_ref().map_or(0, |s| s.chars().count());
    let conversation =
        request.history.iter().map(|m| m.content.chars().count()).sum::<usize>() + request.message.chars().count();
    (fixed, conversation)
}

/// Which summary a turn was given: the `summary` event and the agent message's `contextSummary`.
pub(super) fn summary_note(summary: &crate::store::ContextSummary) -> serde_json::Value {
    json!({
        "createdAt": summary.created_at,
        "coversThroughMessageId": summary.covers_through_message_id,
        "tokensAfter": summary.tokens_after,
    })
}

/// The `session` event: the turn's session and its stored user message.
pub(super) fn session_event(
    session: &SessionId,
    turn: &MessageId,
    user_message: Option<&Message>,
) -> serde_json::Value {
    json!({"sessionId": session, "turnId": turn, "status": TurnStatus::Running, "userMessage": user_message})
}
