//! Why a store operation failed, and the messages every backend gives for the same failure.

use super::Session;
use crate::ids::{SessionId, UserId};

/// Why a store operation failed. Small on purpose: the HTTP layer maps each kind to one status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The session does not exist for this tenant.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the stored state (closed session, id used elsewhere).
    #[error("{0}")]
    Conflict(String),
    /// An item would exceed the storage limit.
    #[error("{0}")]
    TooLarge(String),
    /// A value the store cannot hold (bad cursor, bad metadata).
    #[error("{0}")]
    Invalid(String),
    /// The storage is not reachable, a table is missing or a permission is denied: the message names it.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else; details are logged, not shown.
    #[error("{0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The error's code in API answers and turn events.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::TooLarge(_) => "too_large",
            StoreError::Invalid(_) => "invalid_request",
            StoreError::Unavailable(_) => "storage_unavailable",
            StoreError::Internal(_) => "internal_error",
        }
    }

    /// What a client may be told: everything but internal details, which stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            StoreError::Internal(_) => "internal error; the request id identifies it in the server log".into(),
            other => other.to_string(),
        }
    }

    /// The session does not exist for this tenant (or is not this user's: the answer is the same,
    /// so that a caller learns nothing about other users' sessions).
    pub fn session_not_found(id: &SessionId) -> Self {
        StoreError::NotFound(format!("session {id} not found for this tenant and user"))
    }

    /// The session exists but no longer takes messages.
    pub fn session_closed(id: &SessionId) -> Self {
        StoreError::Conflict(format!("session {id} is closed; send the message without sessionId to start a new one"))
    }

    /// An id that is already taken by another item.
    pub fn id_taken(what: &str, id: impl std::fmt::Display) -> Self {
        StoreError::Conflict(format!("{what} id {id} is already used"))
    }
}

/// The one rule for writing to a session, used by the agent and both backends: it exists (and has
/// not expired), it is `owner`'s when an owner is given, and it is active.
pub fn writable_session(session: Option<Session>, id: &SessionId, owner: Option<&UserId>) -> StoreResult<Session> {
    let session = session
        .filter(|s| owner.is_none_or(|u| &s.user_id == u) && !super::is_expired(s.expires_at))
        .ok_or_else(|| StoreError::session_not_found(id))?;
    if !session.is_active {
        return Err(StoreError::session_closed(id));
    }
    Ok(session)
}
