//! Erasure of a session or a user, across every server sharing the store, and across restarts.
//!
//! An erasure removes what existed when it answered and what the turns running then write, and
//! nothing created afterwards (a session started later with a reused id stays). It is kept in the
//! store until its second pass ran:
//! 1. it is recorded first, so that every server learns of it within `ERASURES_REFRESH` (each reads
//!    the pending erasures that often) and its turns that began before it store nothing;
//! 2. the turns running here are stopped, and the erasure waits `ERASURE_FENCE` (two refreshes)
//!    for the other servers' turns to see it; then it deletes, removes the content from the feed
//!    and the outbox, and announces itself;
//! 3. once the longest turn that could have been running has surely ended (`sweep_at`), any server
//!    runs its second pass, which deletes what such a turn wrote anyway (only what was written by
//!    turns that began before the erasure: timestamps no later than `erased_at`), and forgets it.

use std::sync::Arc;
use std::time::Duration;

use super::{Agent, TurnError, announce};
use crate::events::{Change, EventType};
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::{Deleted, Erasure};
use crate::timestamp::{self, Timestamp};

/// How often a server reads the pending erasures of every server.
pub(super) const ERASURES_REFRESH: Duration = Duration::from_secs(1);
/// How long an erasure waits, once recorded, for every server's turns to have seen it.
const ERASURE_FENCE: Duration = Duration::from_secs(2);

impl Agent {
    /// Deletes a session and its messages. Erasure wins: the turns running on it, on any server,
    /// are stopped and store nothing, now or later. `None` when there was no such session.
    pub async fn erase_session(
        self: &Arc<Self>,
        tenant: &TenantId,
        session: &SessionId,
    ) -> Result<Option<usize>, TurnError> {
        // Read first: the erasure is recorded only for a session that exists, and its event names it.
        let Some(gone) = self.store.get_session(tenant, session).await? else { return Ok(None) };
        self.begin(tenant, None, vec![session.clone()]).await?;
        let running = self.live.begin_erasure(tenant, None, Some(session));
        self.fence(running).await;
        let result = self.store.delete_session(tenant, session, None).await;
        self.live.end_erasure(tenant, None, Some(session));
        let deleted = result?;
        if deleted.is_some() {
            // The session's content goes from the feed and the outbox with it; its deletion is
            // announced (ids only).
            self.events.forget(tenant, &gone.user_id, Some(session)).await;
            let change = announce::session_change(EventType::SessionDeleted, &gone);
            self.events.record(tenant, vec![change]).await;
        }
        Ok(deleted)
    }

    /// Deletes every session and message of a user, with the same guarantee as `erase_session`.
    pub async fn erase_user(self: &Arc<Self>, tenant: &TenantId, user: &UserId) -> Result<Deleted, TurnError> {
        self.begin(tenant, Some(user), Vec::new()).await?;
        let running = self.live.begin_erasure(tenant, Some(user), None);
        self.fence(running).await;
        let result = self.store.delete_user(tenant, user).await;
        self.live.end_erasure(tenant, Some(user), None);
        let deleted = result?;
        // The user's earlier events go with their data, and their channels' jobs from the outbox
        // (whether or not change events are on); the erasure itself is announced (ids only).
        if let Err(e) = self.store.forget_events(tenant, user, None).await {
            tracing::warn!(error = %e, %tenant, "the erased user's events and jobs could not be removed");
        }
        let data = serde_json::json!({"userId": user, "sessions": deleted.sessions, "messages": deleted.messages});
        self.events.record(tenant, vec![Change::new(EventType::UserErased, None, data)]).await;
        Ok(deleted)
    }

    /// Records the erasure in the store (every server learns of it) and here.
    async fn begin(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        sessions: Vec<SessionId>,
    ) -> Result<Erasure, TurnError> {
        let erased_at = Timestamp::now();
        let micros = erased_at.micros().unwrap_or_else(timestamp::now_micros);
        let erasure = Erasure {
            id: format!("{} {}", erased_at.as_str(), crate::random::uuid().simple()),
            tenant_id: tenant.clone(),
            user_id: user.cloned(),
            session_ids: sessions,
            erased_at,
            sweep_at: Timestamp::from_micros(micros + self.settings.erasure_sweep_delay.as_micros() as i64),
        };
        self.store.record_erasure(&erasure).await?;
        self.remember(vec![erasure.clone()], false);
        Ok(erasure)
    }

    /// Waits for this process's turns of the erased scope to stop, and for the other servers'
    /// turns to have seen the erasure.
    async fn fence(&self, running: Vec<Arc<super::LiveTurn>>) {
        let stopped = async {
            for turn in running {
                let _ = turn.finished().await;
            }
        };
        tokio::join!(stopped, tokio::time::sleep(ERASURE_FENCE));
    }

    fn remember(&self, erasures: Vec<Erasure>, replace: bool) {
        let mut known = self.erasures.write().unwrap_or_else(|p| p.into_inner());
        if replace {
            *known = erasures;
        } else {
            known.extend(erasures);
        }
    }

    /// Whether an erasure of any server covers a turn of `user` (in `session`) that began at
    /// `begun_at`: then the turn stores nothing.
    pub(super) fn lost_to_erasure(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: Option<&SessionId>,
        begun_at: &Timestamp,
    ) -> bool {
        let known = self.erasures.read().unwrap_or_else(|p| p.into_inner());
        known.iter().any(|e| e.covers(tenant, user, session, begun_at))
    }

    /// Reads the pending erasures of every server (every `ERASURES_REFRESH`) and runs the second
    /// passes that are due.
    pub(super) async fn keep_erasures(&self, run_due: bool) {
        let pending = match self.store.pending_erasures(1000).await {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the pending erasures");
                return;
            }
        };
        let now = Timestamp::now();
        let due: Vec<Erasure> = pending.iter().filter(|e| e.sweep_at <= now).cloned().collect();
        self.remember(pending, true);
        if !run_due {
            return;
        }
        for erasure in due {
            if let Err(e) = self.second_pass(&erasure).await {
                tracing::warn!(error = %e, erasure = erasure.id, "the second pass of an erasure failed; it runs again");
            }
        }
    }

    /// Deletes what turns that began before the erasure wrote after it, then forgets the erasure.
    async fn second_pass(&self, erasure: &Erasure) -> Result<(), crate::store::StoreError> {
        let tenant = &erasure.tenant_id;
        let mut sessions = erasure.session_ids.clone();
        // The user's sessions such a turn started (never those started after the erasure).
        if let Some(user) = &erasure.user_id {
            sessions.extend(self.user_session_ids(tenant, user, Some(&erasure.erased_at)).await);
        }
        for session in &sessions {
            self.store.delete_session(tenant, session, Some(&erasure.erased_at)).await?;
        }
        self.store.finish_erasure(erasure).await
    }

    /// The ids of a user's sessions (created no later than `created_by`, when given), for the second
    /// pass of an erasure.
    async fn user_session_ids(
        &self,
        tenant: &TenantId,
        user: &UserId,
        created_by: Option<&Timestamp>,
    ) -> Vec<SessionId> {
        let mut ids = Vec::new();
        let mut page = crate::store::PageRequest { limit: 100, cursor: None };
        while let Ok(found) = self.store.list_user_sessions(tenant, user, page.clone()).await {
            let kept = found.items.into_iter().filter(|s| created_by.is_none_or(|t| &s.created_at <= t));
            ids.extend(kept.map(|s| s.id));
            match found.next {
                Some(next) => page.cursor = Some(next),
                None => break,
            }
        }
        ids
    }

    /// Runs for as long as the server: every `ERASURES_REFRESH` it reads the pending erasures (and
    /// every `POLL_EVERY` the agents' change log);
    /// every `ORPHAN_SWEEP_EVERY` it also runs the second passes that are due and settles the turns
    /// whose server died. The first round runs at once (a restarted server catches up).
    pub async fn run_upkeep(self: Arc<Self>) {
        let every = (super::ORPHAN_SWEEP_EVERY.as_millis() / ERASURES_REFRESH.as_millis()).max(1) as u64;
        let poll = (crate::agents::directory::POLL_EVERY.as_millis() / ERASURES_REFRESH.as_millis()).max(1) as u64;
        for round in 0u64.. {
            let sweep = round % every == 0;
            if round % poll == 0 {
                self.agents.poll_changes().await;
            }
            self.keep_erasures(sweep).await;
            self.meter.flush().await;
            if sweep {
                self.settle_orphans().await;
            }
            tokio::time::sleep(ERASURES_REFRESH).await;
        }
    }
}
