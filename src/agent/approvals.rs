//! Deciding a pending action, exactly once, and the turn that follows the decision.
//!
//! The decision is a conditional update of the stored action (one decision wins). An approved
//! action's tool runs once, and its result is stored on the action before the model is asked to go
//! on; the model's follow-up is stored under an id derived from the action's. So a retried decision
//! whose follow-up failed runs only the follow-up (never the tool again), and a decision whose
//! follow-up is stored answers 409.

use std::sync::Arc;
use std::time::Instant;

use super::Agent;
use super::messages;
use super::thinking::Thought;
use super::turn::{TurnError, TurnOutcome};
use crate::events::EventType;
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::{
    Action, ActionStatus, Hold, MAX_ITEM_BYTES, Message, MessageQuery, Order, Role, StoreError, TurnStatus,
    message_item_bytes, recent_history, writable_session,
};
use crate::tools::{ToolCall, action_record};

/// Shortens an action's stored result until the message holding it fits the storage limit.
fn fit_in(message: &Message, action: &mut Action) {
    loop {
        let mut m = message.clone();
        if let Some(actions) = m.metadata.as_mut().and_then(|md| md.get_mut("actions")).and_then(|a| a.as_array_mut()) {
            for slot in actions.iter_mut().filter(|a| a["id"] == serde_json::json!(action.id)) {
                *slot = action.to_json();
            }
        }
        if message_item_bytes(&m) <= MAX_ITEM_BYTES {
            return;
        }
        let Some(result) = action.result.take() else { return };
        action.result = Some(halve(&result));
        if result.chars().count() < 2 {
            return;
        }
    }
}

/// The first half of a text, marked as cut.
fn halve(text: &str) -> String {
    let keep: String = text.chars().take(text.chars().count() / 2).collect();
    format!("{keep}... [cut to fit the storage limit]")
}

/// Shortens a follow-up reply (its actions' results first, then its text) until it fits the storage
/// limit: the tool ran, so the decision must not fail for want of room.
fn fit_reply(tenant: &TenantId, session: &SessionId, reply: &mut crate::store::NewMessage) {
    let size = |r: &crate::store::NewMessage| {
        message_item_bytes(&r.clone().into_message(tenant, session, crate::timestamp::Timestamp::now()))
    };
    for _ in 0..64 {
        if size(reply) <= MAX_ITEM_BYTES {
            return;
        }
        let actions = reply.metadata.as_mut().and_then(|m| m.get_mut("actions")).and_then(|a| a.as_array_mut());
        let longest = actions.and_then(|list| {
            list.iter_mut()
                .filter_map(|a| a.get_mut("result"))
                .filter(|r| r.as_str().is_some_and(|t| t.len() > 64))
                .max_by_key(|r| r.as_str().map_or(0, str::len))
        });
        match longest {
            Some(result) => *result = serde_json::json!(halve(result.as_str().unwrap_or_default())),
            None => reply.content = halve(&reply.content),
        }
    }
}

fn decided(action_id: &str, status: ActionStatus) -> TurnError {
    TurnError::Store(StoreError::Conflict(format!(
        "action {action_id} was already decided (status {})",
        status.as_str()
    )))
}

/// How many messages one page of the search for an action reads.
const SEARCH_PAGE: usize = 100;

impl Agent {
    /// The agent message holding the action, however old the session is.
    async fn find_action(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        action_id: &str,
    ) -> Result<Option<(Message, Action)>, TurnError> {
        let mut query = MessageQuery { limit: SEARCH_PAGE, order: Order::Desc, ..Default::default() };
        loop {
            let page = self.store.list_messages(tenant, session, query.clone()).await?;
            let found = page.items.iter().filter(|m| m.role == Role::Agent).find_map(|m| {
                let action = Action::all_in(m.metadata.as_ref()).into_iter().find(|a| a.id == action_id)?;
                Some((m.clone(), action))
            });
            if found.is_some() {
                return Ok(found);
            }
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// Approves (runs) or rejects a pending action, then lets the agent finish its answer, stored as a
    /// new agent message.
    pub async fn decide(
        self: &Arc<Self>,
        tenant: &TenantId,
        session_id: &SessionId,
        user: Option<&UserId>,
        action_id: &str,
        approve: bool,
        reason: Option<String>,
    ) -> Result<TurnOutcome, TurnError> {
        let not_found = || StoreError::NotFound(format!("action {action_id} not found in session {session_id}"));
        let stored = self.store.get_session(tenant, session_id).await?;
        let session = writable_session(stored, session_id, user).map_err(|e| match e {
            StoreError::NotFound(_) => not_found(),
            other => other,
        })?;
        let (message, action) = self.find_action(tenant, session_id, action_id).await?.ok_or_else(not_found)?;
        // The answer after a decision calls the model: not over a budget.
        if action.status == ActionStatus::PendingApproval {
            self.within_budget(tenant, &session.user_id).await?;
        }
        let follow_up = messages::follow_up_id(action_id);
        // The decision and its follow-up run as a turn of this process: a concurrent decision on the
        // same action is a conflict, and the turn can be read, and is stopped by an erasure.
        let Ok(live) = self.live.register(&follow_up, tenant, &session.user_id, None) else {
            return Err(decided(action_id, action.status));
        };
        live.set_session(session_id);
        // The agent that proposed the action decides which tools run and answers after the
        // decision; under `reject`, that turn holds the session like any other.
        let result = match self.agents.exact(tenant, messages::agent_in(message.metadata.as_ref()).as_ref()).await {
            Err(e) => Err(e.into()),
            Ok(persona) => {
                let held = match self.policy(None, &persona).holds() {
                    true => match self.hold(&live, tenant, session_id, false).await {
                        Ok(Hold::Busy(other)) => Err(TurnError::TurnInProgress(super::queue::turn_of(&other))),
                        Ok(hold) => {
                            // What waited is answered after this turn, when it lets go.
                            self.requeue(tenant, session_id, hold).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    false => Ok(()),
                };
                match held {
                    Ok(()) => {
                        let decision = (approve, reason);
                        self.decide_once(tenant, &session, (message, action), &persona, &follow_up, decision).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        self.let_go(&live, tenant).await;
        let place = super::announce::TurnPlace {
            tenant,
            user: &session.user_id,
            location: session.location_id.as_ref(),
            turn: &follow_up,
            session: Some(session.id.clone()),
        };
        self.announce_turn(place, result.as_ref(), Some(action_id)).await;
        match &result {
            Ok(outcome) => live.finish(outcome.status, Ok(outcome.clone())),
            Err(e) => live.finish(TurnStatus::Failed, Err(e.clone())),
        }
        self.live.retire(&live);
        result
    }

    /// One event about a decided action, with the ids of the turn that proposed it.
    pub(super) async fn announce_action(
        &self,
        session: &crate::store::Session,
        message: &Message,
        action: &Action,
        kind: EventType,
    ) {
        let turn = message.metadata.as_ref().and_then(|m| m.get("turnId")).and_then(|t| t.as_str()).map(str::to_string);
        let mut base = serde_json::Map::new();
        base.insert("turnId".into(), serde_json::json!(turn));
        base.insert("sessionId".into(), serde_json::json!(session.id));
        base.insert("userId".into(), serde_json::json!(session.user_id));
        if let Some(location) = &session.location_id {
            base.insert("locationId".into(), serde_json::json!(location));
        }
        let data = super::announce::action_data(&base, &message.id, action);
        let change = crate::events::Change::new(kind, Some(&session.user_id), data);
        self.events.record(&session.tenant_id, vec![change]).await;
    }

    async fn decide_once(
        &self,
        tenant: &TenantId,
        session: &crate::store::Session,
        (message, action): (Message, Action),
        persona: &crate::agents::directory::Persona,
        follow_up: &crate::ids::MessageId,
        (approve, reason): (bool, Option<String>),
    ) -> Result<TurnOutcome, TurnError> {
        let session_id = &session.id;
        let action_id = action.id.as_str();
        let decided = |status: ActionStatus| decided(action_id, status);
        let call = ToolCall { id: action.id.clone(), name: action.tool.clone(), arguments: action.arguments.clone() };
        let ctx = Self::tool_context(tenant, &session.user_id, session.location_id.as_ref());
        let resolved = match action.status {
            ActionStatus::PendingApproval => {
                let mut claimed = action.clone();
                claimed.status = if approve { ActionStatus::Approved } else { ActionStatus::Rejected };
                claimed.approved = approve.then_some(true);
                claimed.reason = reason.clone();
                if !self.store.transition_action(tenant, &message.id, ActionStatus::PendingApproval, &claimed).await? {
                    return Err(decided(claimed.status));
                }
                let kind = if approve { EventType::ActionApproved } else { EventType::ActionRejected };
                self.announce_action(session, &message, &claimed, kind).await;
                if approve {
                    let result = self.run_tool(&persona.tools, &call, &ctx).await;
                    let status = match (persona.tools.permits(&call.name), result.is_error) {
                        (false, _) => ActionStatus::Refused,
                        (true, true) => ActionStatus::Failed,
                        (true, false) => ActionStatus::Done,
                    };
                    let mut done = action_record(&call, status, Some(&result));
                    done.approved = Some(true);
                    // The tool ran: its result must be storable, so it is cut to fit the message.
                    fit_in(&message, &mut done);
                    self.announce_action(session, &message, &done, EventType::ActionExecuted).await;
                    self.store.transition_action(tenant, &message.id, ActionStatus::Approved, &done).await?;
                    done
                } else {
                    claimed
                }
            }
            // The same decision again, whose follow-up was never stored: only the follow-up runs.
            status => {
                let same = if approve { action.approved == Some(true) } else { status == ActionStatus::Rejected };
                if !same || self.store.get_message(tenant, follow_up).await?.is_some() {
                    return Err(decided(status));
                }
                action.clone()
            }
        };
        let note = match resolved.status {
            ActionStatus::Rejected => format!(
                "[The user rejected {}({}){}. Do not run it.]",
                call.name,
                call.arguments,
                resolved.reason.as_deref().map(|r| format!(" because: {r}")).unwrap_or_default()
            ),
            ActionStatus::Approved => format!(
                "[The user approved {}({}), but its result was not recorded; do not assume it ran.]",
                call.name, call.arguments
            ),
            status => format!(
                "[The user approved {}({}). It {}: {}]",
                call.name,
                call.arguments,
                if status == ActionStatus::Failed { "failed" } else { "ran" },
                resolved.result.as_deref().unwrap_or_default()
            ),
        };
        let history = recent_history(&*self.store, session, persona.history_max_messages).await?;
        let history = super::summary::after_summary(session, history);
        let request = crate::llm::ModelRequest {
            system_prompt: persona.system_prompt.clone(),
            summary: session.context_summary.as_ref().map(|s| s.text.clone()),
            history,
            message: note,
            context: None,
            tools: persona.tools.specs(),
            steps: Vec::new(),
            temperature: persona.temperature,
            max_output_tokens: persona.max_output_tokens,
        };
        let started = Instant::now();
        let mut thought: Thought = self.think(persona, request, &ctx, None).await?;
        thought.actions.insert(0, resolved);
        let pending = thought.actions.iter().any(|a| a.status == ActionStatus::PendingApproval);
        let status = if pending { TurnStatus::AwaitingApproval } else { TurnStatus::Completed };
        let mut agent =
            messages::agent_message(&session.user_id, follow_up.clone(), follow_up, status, &thought, started, None);
        if let (Some(summary), Some(metadata)) = (&session.context_summary, agent.metadata.as_mut()) {
            metadata.insert("contextSummary".into(), super::flow::summary_note(summary));
        }
        messages::mark_persona(&mut agent, persona);
        fit_reply(tenant, session_id, &mut agent);
        let tally = self.tally(persona, &thought);
        agent.counted = tally.clone();
        let agent_message = self.store.append_messages(tenant, session_id, vec![agent]).await?.remove(0).message;
        self.counted(tenant, &session.user_id, tally.as_ref()).await;
        // A conversation that came from a channel gets the follow-up there too.
        if let Some(channels) = self.channels.get().and_then(std::sync::Weak::upgrade) {
            channels.reply_in_session(session, &agent_message).await;
        }
        Ok(TurnOutcome {
            turn_id: follow_up.clone(),
            status,
            session_id: session.id.clone(),
            user_message: None,
            agent_message,
            answered_by: None,
            answers: Vec::new(),
        })
    }
}
