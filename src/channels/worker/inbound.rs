//! An inbound message's job: the turn of the channel's agent (keyed by the job), and its reply
//! queued; a message of a type the agent cannot read gets a placeholder and a polite reply.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Channels, MAX_TEXT_CHARS, Outgoing, SendError};
use crate::agent::{TurnError, TurnOutcome, TurnRequest};
use crate::channels::StoredChannel;
use crate::ids::{IdempotencyKey, MessageId, UserId};
use crate::store::{Delivery, Metadata, NewMessage, NewSession, Role, StoreError};

impl Channels {
    /// An inbound job: the turn of the channel's agent (keyed by the job), and its reply queued.
    pub(super) async fn answer(
        &self,
        channel: &StoredChannel,
        job: &Delivery,
        placed: Option<&tokio::sync::watch::Sender<bool>>,
    ) -> Result<(), SendError> {
        let Some(user) = job.user_id.clone() else { return Ok(()) };
        let body: Value = serde_json::from_str(&job.body).unwrap_or_default();
        let received_at = body["receivedAt"].as_i64();
        let tenant = &channel.tenant_id;
        let mut metadata = Metadata::new();
        metadata.insert(
            "channel".into(),
            json!({"id": channel.id, "type": channel.spec.kind, "providerMessageId": body["providerId"]}),
        );
        let Some(text) = body["text"].as_str().filter(|t| !t.trim().is_empty()) else {
            return self.not_supported(channel, job, &user, &body, metadata).await;
        };
        // A session the message starts names its channel (where a later reply, after an
        // approval, goes) and the contact's name.
        let mut session_metadata = Metadata::new();
        session_metadata.insert("channel".into(), json!({"id": channel.id, "type": channel.spec.kind}));
        if let Some(name) = body["profileName"].as_str() {
            session_metadata.insert("contact".into(), json!({"name": name, "channel": channel.id}));
        }
        let session_metadata = Some(session_metadata);
        let mut request = TurnRequest {
            tenant: tenant.clone(),
            user: user.clone(),
            location: None,
            message: text.chars().take(MAX_TEXT_CHARS).collect(),
            session_id: None,
            context: None,
            metadata: Some(metadata),
            idempotency_key: IdempotencyKey::parse(&job.event_id),
            on_disconnect: crate::agent::OnDisconnect::Continue,
            stream: false,
            agent: channel.spec.agent_id.clone(),
            concurrency: None,
            session_metadata,
            instructions: None,
        };
        let mut outcome = self.turn(request.clone(), placed).await;
        let answered = |o: &TurnOutcome| {
            matches!(o.status, crate::store::TurnStatus::Completed | crate::store::TurnStatus::AwaitingApproval)
        };
        if let Ok(o) = &outcome
            && !answered(o)
        {
            let why = o.agent_message.metadata.as_ref().and_then(|m| m.get("interrupted")).and_then(Value::as_str);
            if why == Some("superseded") {
                // A newer message's turn stopped it, and answers both.
                return Ok(());
            }
            // Cut off (its server died, or it was cancelled): the message is answered by a turn of
            // its own, once (the cut-off reply is never sent).
            request.idempotency_key = IdempotencyKey::parse(&format!("{}-again", job.event_id));
            outcome = self.turn(request, None).await;
            if outcome.as_ref().is_ok_and(|o| !answered(o)) {
                return Err(SendError::Permanent("the turn was cut off twice".into()));
            }
        }
        match outcome {
            Ok(outcome) => self.reply(channel, &user, &outcome, received_at, &body["thread"]).await,
            Err(TurnError::BudgetExceeded(_)) => {
                // Refused before the model: the channel's fallback text, once for this message.
                let Some(text) = channel.spec.fallback_text.as_deref() else { return Ok(()) };
                // Noted once per message (a webhook retried after this job ended sends nothing);
                // this job's own retries queue it again, under the same id.
                let first = self
                    .store()
                    .note_once(
                        tenant,
                        &format!("fallback {}", job.event_id),
                        crate::timestamp::epoch_seconds() + 7 * 86_400,
                    )
                    .await
                    .map_err(|e| SendError::Transient(e.to_string()))?;
                if first || job.attempts > 0 {
                    let out = Outgoing {
                        text: Some(text),
                        inbound_at: received_at,
                        thread: Some(&body["thread"]),
                        key: Some(&job.event_id),
                        ..Default::default()
                    };
                    self.queue_send(channel, &user, None, out)
                        .await
                        .map_err(|e| SendError::Transient(e.to_string()))?;
                }
                Ok(())
            }
            Err(
                e @ (TurnError::InProgress(_)
                | TurnError::TurnInProgress(_)
                | TurnError::Store(_)
                | TurnError::Model(_)
                | TurnError::AnsweredWith(_)),
            ) => Err(SendError::Transient(e.to_string())),
            Err(TurnError::Erased) => Ok(()),
            Err(e) => Err(SendError::Permanent(e.to_string())),
        }
    }

    /// Runs a JSON turn (or replays it, for a job run again) to its outcome.
    /// `placed` is told once the turn has its place in the session (its messages' order is fixed).
    async fn turn(
        &self,
        request: TurnRequest,
        placed: Option<&tokio::sync::watch::Sender<bool>>,
    ) -> Result<TurnOutcome, TurnError> {
        match self.agent.start(request).await? {
            crate::agent::Started::Live(live) => {
                if let Some(placed) = placed {
                    let _ = tokio::time::timeout(Duration::from_secs(10), live.placed()).await;
                    let _ = placed.send(true);
                }
                live.finished().await
            }
            crate::agent::Started::Replayed(outcome) => Ok(*outcome),
            _ => Err(TurnError::InProgress(MessageId::generate())),
        }
    }

    /// Queues the reply of a finished turn, once per reply (a message answered by another turn's
    /// reply, in a burst, shares it).
    async fn reply(
        &self,
        channel: &StoredChannel,
        user: &UserId,
        outcome: &TurnOutcome,
        received_at: Option<i64>,
        thread: &Value,
    ) -> Result<(), SendError> {
        let reply = &outcome.agent_message;
        if reply.content.trim().is_empty() {
            return Ok(());
        }
        let out = Outgoing { inbound_at: received_at, thread: Some(thread), ..Default::default() };
        self.queue_send(channel, user, Some(&reply.id), out).await.map_err(|e| SendError::Transient(e.to_string()))
    }

    /// A message of a type the agent cannot read yet: a placeholder is stored, and a polite reply.
    async fn not_supported(
        &self,
        channel: &StoredChannel,
        job: &Delivery,
        user: &UserId,
        body: &Value,
        metadata: Metadata,
    ) -> Result<(), SendError> {
        let kind = body["kind"].as_str().unwrap_or("unknown");
        let tenant = &channel.tenant_id;
        let store = self.store();
        let transient = |e: StoreError| SendError::Transient(e.to_string());
        let session = match store.find_active_session(tenant, user).await.map_err(transient)? {
            Some(s) => s,
            None => {
                let new =
                    NewSession { tenant_id: tenant.clone(), user_id: user.clone(), location_id: None, metadata: None };
                store.create_session(new).await.map_err(transient)?
            }
        };
        let ids = (MessageId::parse(job.event_id.clone()), MessageId::parse(format!("{}-reply", job.event_id)));
        let (Ok(user_id), Ok(reply_id)) = ids else { return Ok(()) };
        let placeholder = NewMessage {
            id: user_id,
            user_id: user.clone(),
            role: Role::User,
            content: format!("[{kind} message]"),
            metadata: Some(metadata),
            counted: None,
        };
        let mut reply_metadata = Metadata::new();
        reply_metadata.insert("source".into(), json!("channel"));
        let reply = NewMessage {
            id: reply_id.clone(),
            user_id: user.clone(),
            role: Role::Agent,
            content: format!(
                "Sorry, I can only read text messages for now: I could not read your {kind} message. Could you write it as text?"
            ),
            metadata: Some(reply_metadata),
            counted: None,
        };
        store.append_messages(tenant, &session.id, vec![placeholder, reply]).await.map_err(transient)?;
        let out =
            Outgoing { inbound_at: body["receivedAt"].as_i64(), thread: Some(&body["thread"]), ..Default::default() };
        self.queue_send(channel, user, Some(&reply_id), out).await.map_err(transient)
    }
}
