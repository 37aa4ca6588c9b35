//! An erasure that still has work to do, kept in the store so that every server sharing it knows
//! (and refuses the late writes of its own turns) and a restart does not lose its second pass.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TenantId, UserId};
use crate::timestamp::Timestamp;

/// A session's or a user's erasure, from the moment it is decided until its second pass ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Erasure {
    /// Unique, time-ordered (`<erasedAt> <random>`): the erasure's key in the store.
    pub id: String,
    pub tenant_id: TenantId,
    /// The user erased, for a user's erasure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The sessions erased (for a user's erasure, those it had when it was erased).
    #[serde(default)]
    pub session_ids: Vec<SessionId>,
    /// When the erasure was decided: what was written before it (and by turns running then) goes,
    /// what was created after it stays.
    pub erased_at: Timestamp,
    /// When the second pass is due (every turn running at `erased_at` has ended by then).
    pub sweep_at: Timestamp,
}

impl Erasure {
    /// Whether a turn of `user` in `session` that began at `begun_at` lost to this erasure.
    pub fn covers(&self, tenant: &TenantId, user: &UserId, session: Option<&SessionId>, begun_at: &Timestamp) -> bool {
        &self.tenant_id == tenant
            && begun_at < &self.erased_at
            && (self.user_id.as_ref() == Some(user) || session.is_some_and(|s| self.session_ids.contains(s)))
    }
}
