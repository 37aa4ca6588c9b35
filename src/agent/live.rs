//! The turns running in this process: their events (numbered, for clients that follow or reconnect
//! while they run), their stop signal, and the erasures they must give way to. A turn leaves as soon
//! as it ends: what a client reads of it afterwards is in the store (a streamed turn's events in its
//! record, a JSON turn's reply in its messages), so memory follows the turns running, not throughput.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use serde_json::Value;
use tokio::sync::watch;

use super::turn::{StopReason, TurnError, TurnOutcome};
use crate::ids::{MessageId, SessionId, TenantId, UserId};
use crate::store::{TurnEvent, TurnStatus};

struct State {
    session: Option<SessionId>,
    events: Vec<TurnEvent>,
    status: TurnStatus,
    result: Option<Result<TurnOutcome, TurnError>>,
    /// The session's context is due for a summary after this turn.
    summary_due: bool,
    /// The session this turn holds (`concurrency: reject`) and the holder's id (the turn's id and a
    /// nonce: retries of one key share the turn's id), let go when it ends.
    holds: Option<(SessionId, MessageId)>,
}

/// One running turn.
pub struct LiveTurn {
    pub turn_id: MessageId,
    pub tenant: TenantId,
    pub user: UserId,
    pub request_hash: Option<String>,
    pub started: Instant,
    state: Mutex<State>,
    /// Bumped on every event and at the end, for followers.
    changed: watch::Sender<u64>,
    stop: watch::Sender<Option<StopReason>>,
}

impl LiveTurn {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session(&self) -> Option<SessionId> {
        self.state().session.clone()
    }

    pub fn set_session(&self, session: &SessionId) {
        self.state().session = Some(session.clone());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until the turn has its session (its messages' place is fixed), or has ended.
    pub async fn placed(&self) {
        let mut changed = self.changed.subscribe();
        while self.session().is_none() && self.result().is_none() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// The session this turn holds as its one running turn, and as which holder, if it does.
    pub fn holds(&self) -> Option<(SessionId, MessageId)> {
        self.state().holds.clone()
    }

    pub fn set_holds(&self, session: &SessionId, holder: &MessageId) {
        self.state().holds = Some((session.clone(), holder.clone()));
    }

    /// What the turn holds, no longer held by it (it lets go).
    pub fn take_holds(&self) -> Option<(SessionId, MessageId)> {
        self.state().holds.take()
    }

    /// Marks the session's context due for a summary once this turn is stored.
    pub fn set_summary_due(&self) {
        self.state().summary_due = true;
    }

    pub fn summary_due(&self) -> bool {
        self.state().summary_due
    }

    pub fn status(&self) -> TurnStatus {
        self.state().status
    }

    /// A turn whose message waits for its session's running turn says so until it is answered.
    pub fn set_status(&self, status: TurnStatus) {
        self.state().status = status;
    }

    /// Records an event and wakes followers; its id.
    pub fn push(&self, event: &str, data: Value) -> TurnEvent {
        let mut state = self.state();
        let event = TurnEvent { id: state.events.len() as u64 + 1, event: event.to_string(), data };
        state.events.push(event.clone());
        drop(state);
        self.changed.send_modify(|n| *n += 1);
        event
    }

    /// The events after `after`, and whether the turn has ended.
    pub fn events_after(&self, after: u64) -> (Vec<TurnEvent>, bool) {
        let state = self.state();
        let events = state.events.iter().filter(|e| e.id > after).cloned().collect();
        (events, state.result.is_some())
    }

    /// Whether the newest event is an `error` (a failed turn sends one).
    pub fn ended_with_error(&self) -> bool {
        self.state().events.last().is_some_and(|e| e.event == "error")
    }

    pub fn last_event_id(&self) -> u64 {
        self.state().events.len() as u64
    }

    /// Ends the turn with its result.
    pub fn finish(&self, status: TurnStatus, result: Result<TurnOutcome, TurnError>) {
        let mut state = self.state();
        state.status = status;
        state.result = Some(result);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn result(&self) -> Option<Result<TurnOutcome, TurnError>> {
        self.state().result.clone()
    }

    /// Waits for the turn's first event (its input is stored by then): a turn that failed before
    /// it began (a closed session, a budget) is its error, which a client gets as the answer
    /// instead of a stream that ends at once.
    pub async fn started(&self) -> Result<(), TurnError> {
        self.wait_after(0).await;
        let (first, _) = self.events_after(0);
        match self.result() {
            Some(Err(e)) if first.first().is_none_or(|e| e.event == "error") => Err(e),
            _ => Ok(()),
        }
    }

    /// Waits for the end of the turn.
    pub async fn finished(&self) -> Result<TurnOutcome, TurnError> {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(result) = self.result() {
                return result;
            }
            if changed.changed().await.is_err() {
                return self.result().unwrap_or(Err(TurnError::Erased));
            }
        }
    }

    /// Waits until the turn has an event after `after`, or has ended.
    pub async fn wait_after(&self, after: u64) {
        let mut changed = self.changed.subscribe();
        loop {
            let (events, done) = self.events_after(after);
            if !events.is_empty() || done || changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Asks the turn to stop (the first reason wins).
    pub fn stop(&self, reason: StopReason) {
        self.stop.send_if_modified(|r| {
            if r.is_none() && self.result().is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Resolves when the turn is asked to stop, with the reason.
    pub async fn stopped(&self) -> StopReason {
        let mut stop = self.stop.subscribe();
        loop {
            if let Some(reason) = *stop.borrow_and_update() {
                return reason;
            }
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The events after `after`, then the live ones until the turn ends.
    pub fn follow(self: &Arc<Self>, after: u64) -> impl Stream<Item = TurnEvent> + Send + 'static {
        let live = self.clone();
        futures::stream::unfold((live, after, Vec::<TurnEvent>::new()), |(live, mut after, mut pending)| async move {
            loop {
                if !pending.is_empty() {
                    let event = pending.remove(0);
                    after = event.id;
                    return Some((event, (live, after, pending)));
                }
                let (events, done) = live.events_after(after);
                if !events.is_empty() {
                    pending = events;
                    continue;
                }
                if done {
                    return None;
                }
                live.wait_after(after).await;
            }
        })
    }
}

/// An erasure in progress or recently done: turns that started before it ended store nothing.
struct Erasure {
    tenant: TenantId,
    user: Option<UserId>,
    session: Option<SessionId>,
    /// `None` while the erasure runs.
    ended: Option<Instant>,
}

/// The registry of this process's turns.
#[derive(Default)]
pub struct LiveTurns {
    turns: Mutex<HashMap<MessageId, Arc<LiveTurn>>>,
    erasures: Mutex<Vec<Erasure>>,
}

impl LiveTurns {
    /// Registers a new turn; `Err` with the running one when its id is taken.
    pub fn register(
        &self,
        turn_id: &MessageId,
        tenant: &TenantId,
        user: &UserId,
        request_hash: Option<String>,
    ) -> Result<Arc<LiveTurn>, Arc<LiveTurn>> {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = turns.get(turn_id) {
            if existing.result().is_none() {
                return Err(existing.clone());
            }
        }
        let turn = Arc::new(LiveTurn {
            turn_id: turn_id.clone(),
            tenant: tenant.clone(),
            user: user.clone(),
            request_hash,
            started: Instant::now(),
            state: Mutex::new(State {
                session: None,
                events: Vec::new(),
                status: TurnStatus::Running,
                result: None,
                summary_due: false,
                holds: None,
            }),
            changed: watch::Sender::new(0),
            stop: watch::Sender::new(None),
        });
        turns.insert(turn_id.clone(), turn.clone());
        Ok(turn)
    }

    /// A turn of this process running in a session (the oldest, when there are several).
    pub fn running_in(&self, tenant: &TenantId, session: &SessionId) -> Option<Arc<LiveTurn>> {
        let turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns
            .values()
            .filter(|t| &t.tenant == tenant && t.result().is_none() && t.session().as_ref() == Some(session))
            .min_by_key(|t| t.started)
            .cloned()
    }

    /// Forgets a finished turn (its clients hold their own reference until they have its end). The
    /// map gives back its room when it has emptied out after a burst.
    pub fn retire(&self, turn: &Arc<LiveTurn>) {
        let mut map = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        // A retry with the same id may have registered since: only this turn goes.
        if map.get(&turn.turn_id).is_some_and(|t| Arc::ptr_eq(t, turn)) {
            map.remove(&turn.turn_id);
        }
        let len = map.len();
        if map.capacity() > 256 && len * 4 < map.capacity() {
            map.shrink_to(len * 2);
        }
    }

    pub fn get(&self, turn_id: &MessageId) -> Option<Arc<LiveTurn>> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner()).get(turn_id).cloned()
    }

    fn matching(&self, keep: impl Fn(&LiveTurn) -> bool) -> Vec<Arc<LiveTurn>> {
        let turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.values().filter(|t| t.result().is_none() && keep(t)).cloned().collect()
    }

    /// The turns still running.
    pub fn running(&self) -> Vec<Arc<LiveTurn>> {
        self.matching(|_| true)
    }

    /// Stops every running turn (the shutdown deadline passed).
    pub fn stop_all(&self, reason: StopReason) {
        for turn in self.matching(|_| true) {
            turn.stop(reason);
        }
    }

    /// Marks an erasure as started and stops the turns it covers; they are returned to be waited for.
    pub fn begin_erasure(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        session: Option<&SessionId>,
    ) -> Vec<Arc<LiveTurn>> {
        self.erasures.lock().unwrap_or_else(|p| p.into_inner()).push(Erasure {
            tenant: tenant.clone(),
            user: user.cloned(),
            session: session.cloned(),
            ended: None,
        });
        let covered = self.matching(|t| {
            &t.tenant == tenant
                && (user.is_some_and(|u| &t.user == u) || session.is_some_and(|s| t.session().as_ref() == Some(s)))
        });
        for turn in &covered {
            turn.stop(StopReason::Erased);
        }
        covered
    }

    /// Marks the erasure as done (kept a while: turns that started before it must still give way).
    pub fn end_erasure(&self, tenant: &TenantId, user: Option<&UserId>, session: Option<&SessionId>) {
        let mut erasures = self.erasures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for e in erasures.iter_mut() {
            if e.ended.is_none() && &e.tenant == tenant && e.user.as_ref() == user && e.session.as_ref() == session {
                e.ended = Some(now);
            }
        }
        // Long enough for any turn (the model timeout bounds each call).
        erasures.retain(|e| e.ended.is_none_or(|t| now.duration_since(t) < Duration::from_secs(3600)));
    }

    /// Whether an erasure covers this turn: its user or session was (or is being) erased after the
    /// turn started, so it must store nothing.
    pub fn erased(&self, turn: &LiveTurn) -> bool {
        let session = turn.session();
        let erasures = self.erasures.lock().unwrap_or_else(|p| p.into_inner());
        erasures.iter().any(|e| {
            e.tenant == turn.tenant
                && (e.user.as_ref() == Some(&turn.user) || (e.session.is_some() && e.session == session))
                && e.ended.is_none_or(|ended| turn.started < ended)
        })
    }
}
