//! What a retried `Idempotency-Key` finds. Keys are scoped to the tenant and the user (the turn's id
//! derives from all three) and bound to the request that first used them: the same key with another
//! message, session or context is refused, and reveals nothing of the first request.
//!
//! Same key, same request: a completed turn gives its first answer; a running one answers 409 with
//! its id (a streamed retry follows its events instead); a failed one runs again on the same stored
//! user message; an interrupted or cancelled one gives its stored result with that status.

use std::sync::Arc;

use serde_json::Value;

use super::live::LiveTurn;
use super::messages;
use super::turn::{TurnError, TurnRequest};
use super::{Agent, Started};
use crate::ids::MessageId;
use crate::store::{Message, TurnStatus};

pub(super) enum Prior {
    /// The key is new (or its earlier JSON attempt failed and stored nothing).
    None,
    /// What the retry answers with.
    Started(Started),
    /// The earlier attempt failed after storing its user message: run again on it.
    Rerun(Box<Message>),
}

fn same_request(stored: Option<&str>, hash: Option<&str>) -> Result<(), TurnError> {
    if stored == hash { Ok(()) } else { Err(TurnError::KeyReused) }
}

impl Agent {
    pub(super) async fn prior(
        self: &Arc<Self>,
        req: &TurnRequest,
        turn_id: &MessageId,
        hash: Option<&str>,
    ) -> Result<Prior, TurnError> {
        if let Some(live) = self.live.get(turn_id) {
            if live.result().is_none() {
                return self.follow_running(req, live, hash).map(Prior::Started);
            }
        }
        let agent_id = messages::agent_message_id(turn_id);
        let (record, user, agent) = tokio::join!(
            self.store.get_turn(&req.tenant, turn_id),
            self.store.get_message(&req.tenant, turn_id),
            self.store.get_message(&req.tenant, &agent_id)
        );
        let (record, user, agent) = (record?, user?, agent?);
        if let Some(record) = record {
            same_request(record.request_hash.as_deref(), hash)?;
            let record = match record.status {
                // Running, or a queued message waiting for (or answered by) another turn.
                TurnStatus::Running | TurnStatus::Queued if !self.abandoned(&record) => {
                    if !req.stream {
                        return Err(TurnError::InProgress(turn_id.clone()));
                    }
                    return Ok(Prior::Started(Started::Elsewhere(self.stored_events(record, 0))));
                }
                TurnStatus::Running => self.settle_abandoned(record).await?,
                _ => record,
            };
            // The stored reply decides (a record can say failed while a later retry completed it);
            // a keyed JSON turn settled just now stored its user message with its reply.
            let user = match user {
                Some(user) => Some(user),
                None => self.store.get_message(&req.tenant, turn_id).await?,
            };
            // A queued message's reply is the turn's that answered it.
            let agent_id = record.agent_message_id.clone().unwrap_or(agent_id);
            let agent = match agent {
                Some(agent) => Some(agent),
                None => self.store.get_message(&req.tenant, &agent_id).await?,
            };
            let failed = record.status == TurnStatus::Failed;
            return Ok(match (user, agent) {
                (Some(user), Some(agent)) => {
                    let mut outcome = messages::outcome(turn_id.clone(), Some(user), agent);
                    if matches!(record.status, TurnStatus::Interrupted | TurnStatus::Cancelled) {
                        outcome.status = record.status;
                    }
                    if record.answered_by.is_some() {
                        outcome.answered_by = record.answered_by.clone();
                        outcome.answers.clear();
                    }
                    Prior::Started(Started::Replayed(Box::new(outcome)))
                }
                (Some(user), _) if failed => Prior::Rerun(Box::new(user)),
                (None, _) if failed => {
                    // A JSON attempt that failed stored only its record: it gives way to this one.
                    self.store.delete_turn(&req.tenant, turn_id, &[]).await?;
                    Prior::None
                }
                // Ended but its messages are not all stored yet (it is being settled elsewhere):
                // never run again, wait.
                _ => return Err(TurnError::InProgress(turn_id.clone())),
            });
        }
        let Some(user) = user else {
            return Ok(Prior::None);
        };
        let stored_hash = user.metadata.as_ref().and_then(|m| m.get("requestHash")).and_then(Value::as_str);
        same_request(stored_hash, hash)?;
        Ok(match agent {
            Some(agent) => {
                Prior::Started(Started::Replayed(Box::new(messages::outcome(turn_id.clone(), Some(user), agent))))
            }
            None => Prior::Rerun(Box::new(user)),
        })
    }

    /// A retry of a turn running in this process: a stream follows it, a JSON request is told to wait.
    pub(super) fn follow_running(
        &self,
        req: &TurnRequest,
        live: Arc<LiveTurn>,
        hash: Option<&str>,
    ) -> Result<Started, TurnError> {
        same_request(live.request_hash.as_deref(), hash)?;
        if req.stream { Ok(Started::Following(live)) } else { Err(TurnError::InProgress(live.turn_id.clone())) }
    }
}
