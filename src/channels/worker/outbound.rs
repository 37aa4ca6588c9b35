//! Sending: a send job's message to its provider (once: the provider's id is recorded on it), the
//! business's own messages, and where WhatsApp's service window stands.

use serde_json::{Value, json};

use super::{BusinessSendError, Channels, Outgoing, SERVICE_WINDOW_MS, SendError, now_ms, rank};
use crate::channels::whatsapp::Content;
use crate::channels::{ChannelKind, StoredChannel, Template};
use crate::ids::{ChannelId, MessageId, TenantId, UserId};
use crate::store::{Delivery, Metadata, NewMessage, NewSession, Role, StoreError, StoreResult};

impl Channels {
    /// A send job: the message's text (or the job's own text or template) to the provider, unless
    /// the message was sent already; the provider's id recorded on the message.
    pub(super) async fn send(&self, channel: &StoredChannel, job: &Delivery) -> Result<(), SendError> {
        let Some(user) = &job.user_id else { return Ok(()) };
        let tenant = &channel.tenant_id;
        let body: Value = serde_json::from_str(&job.body).unwrap_or_default();
        let message_id = body["messageId"].as_str().and_then(|m| MessageId::parse(m).ok());
        let transient = |e: StoreError| SendError::Transient(e.to_string());
        let message = match &message_id {
            Some(id) => match self.store().get_message(tenant, id).await.map_err(transient)? {
                Some(m) => Some(m),
                // Erased meanwhile: nothing to send.
                None => return Ok(()),
            },
            None => None,
        };
        if message
            .as_ref()
            .and_then(|m| m.metadata.as_ref())
            .and_then(|m| m.get("delivery"))
            .is_some_and(|d| d["providerMessageId"].is_string())
        {
            return Ok(());
        }
        let template: Option<Template> = serde_json::from_value(body["template"].clone()).ok();
        let text = message.as_ref().map(|m| m.content.clone()).or_else(|| body["text"].as_str().map(str::to_string));
        let Some(to) = channel.recipient(user) else {
            return Err(SendError::Permanent(format!(
                "{user} is not a user of this {} channel",
                channel.spec.kind.as_str()
            )));
        };
        let callback = message_id.as_ref().map(|m| m.as_str().to_string()).unwrap_or_default();
        let sent = match channel.spec.kind {
            ChannelKind::Whatsapp => {
                let inbound_at = match body["inboundAt"].as_i64() {
                    Some(at) => Some(at),
                    None => self.last_inbound(tenant, user).await.map_err(transient)?,
                };
                let open = inbound_at.is_some_and(|at| now_ms() - at < SERVICE_WINDOW_MS);
                let content = match (&template, open, &text) {
                    (Some(t), _, _) => Content::Template(t),
                    (None, true, Some(text)) => Content::Text(text),
                    (None, false, Some(_)) => {
                        return Err(SendError::Permanent(
                            "outside_service_window: the user's last message is more than 24 hours old; a template is needed".into(),
                        ));
                    }
                    (None, _, None) => return Ok(()),
                };
                let spec = &channel.spec;
                crate::channels::whatsapp::send(
                    &self.client,
                    &self.config.whatsapp_base_url,
                    &self.config.whatsapp_api_version,
                    spec.phone_number_id.as_deref().unwrap_or_default(),
                    spec.access_token.as_deref().unwrap_or_default(),
                    &to,
                    content,
                    &callback,
                )
                .await
            }
            ChannelKind::Email => {
                let Some(text) = text else { return Ok(()) };
                let id = message_id.as_ref().map(|m| m.as_str().to_string()).unwrap_or_else(|| job.event_id.clone());
                crate::channels::email::send(channel, &to, &text, &body["thread"], &id).await
            }
            ChannelKind::Twilio => {
                let Some(text) = text else { return Ok(()) };
                let spec = &channel.spec;
                let status_callback = self.config.public_base_url.as_ref().map(|base| {
                    let mut url = format!("{}/channels/twilio/{}/status", base.trim_end_matches('/'), channel.id);
                    if let Some(m) = &message_id {
                        url.push_str("?messageId=");
                        url.push_str(
                            &percent_encoding::utf8_percent_encode(m.as_str(), percent_encoding::NON_ALPHANUMERIC)
                                .to_string(),
                        );
                    }
                    url
                });
                crate::channels::twilio::send(
                    &self.client,
                    &self.config.twilio_base_url,
                    spec.account_sid.as_deref().unwrap_or_default(),
                    spec.auth_token.as_deref().unwrap_or_default(),
                    spec.from.as_deref().unwrap_or_default(),
                    &to,
                    &text,
                    status_callback.as_deref(),
                )
                .await
            }
        };
        let provider_id = sent?;
        metrics::counter!("channel_messages_sent_total", "type" => channel.spec.kind.as_str()).increment(1);
        if let Some(id) = &message_id {
            let delivery = json!({
                "channel": channel.id,
                "type": channel.spec.kind,
                "status": "accepted",
                "providerMessageId": provider_id,
                "acceptedAt": crate::timestamp::Timestamp::now(),
            });
            // A receipt may have come first (Twilio's can): what it said stays.
            let mut delivery = delivery;
            if let Ok(Some(now)) = self.store().get_message(tenant, id).await
                && let Some(seen) = now.metadata.as_ref().and_then(|m| m.get("delivery")).and_then(Value::as_object)
            {
                for (k, v) in seen {
                    if k != "status" || rank(v.as_str().unwrap_or_default()) > rank("accepted") {
                        delivery[k] = v.clone();
                    }
                }
                delivery["providerMessageId"] = json!(provider_id);
            }
            // Sent: a failure to record it is logged (a run of this job again would send twice).
            if let Err(e) = self.store().set_delivery(tenant, id, &delivery).await {
                tracing::warn!(error = %e, message = %id, "could not record a sent message's delivery");
            }
        }
        Ok(())
    }

    /// A message from the business (`source`: `business`, or `agent` for the `send_message` tool)
    /// to `to` on a channel: stored in the user's session (role `agent`, `metadata.source`) and
    /// queued to send. On WhatsApp a text needs the user to have written within 24 hours.
    pub async fn send_business(
        &self,
        tenant: &TenantId,
        channel: &ChannelId,
        to: &str,
        text: Option<&str>,
        template: Option<&Template>,
        source: &str,
    ) -> Result<crate::store::Message, BusinessSendError> {
        let invalid = |m: &str| BusinessSendError::Invalid(m.to_string());
        let found = self.store().get_channel(tenant, channel).await?.ok_or(BusinessSendError::NoChannel)?;
        let user = found.user_for(to).ok_or_else(|| invalid("to: not a valid address"))?;
        let text = text.map(str::trim).filter(|t| !t.is_empty());
        if text.is_none() == template.is_none() {
            return Err(invalid("give one of text and template"));
        }
        if text.is_some_and(|t| t.chars().count() > 4096) {
            return Err(invalid("text: at most 4096 characters"));
        }
        if template.is_some() && found.spec.kind != ChannelKind::Whatsapp {
            return Err(invalid("template: only WhatsApp channels send templates"));
        }
        if found.spec.kind == ChannelKind::Whatsapp && template.is_none() {
            let last = self.last_inbound(tenant, &user).await?;
            if last.is_none_or(|at| now_ms() - at >= SERVICE_WINDOW_MS) {
                return Err(BusinessSendError::OutsideWindow);
            }
        }
        let content = match (text, template) {
            (Some(t), _) => t.to_string(),
            (None, Some(t)) => format!("[template {} ({})]", t.name, t.language),
            (None, None) => String::new(),
        };
        let session = match self.store().find_active_session(tenant, &user).await? {
            Some(s) => s,
            None => {
                let new =
                    NewSession { tenant_id: tenant.clone(), user_id: user.clone(), location_id: None, metadata: None };
                self.store().create_session(new).await?
            }
        };
        let mut metadata = Metadata::new();
        metadata.insert("source".into(), json!(source));
        metadata.insert("channel".into(), json!({"id": found.id, "type": found.spec.kind}));
        if let Some(t) = template {
            metadata.insert("template".into(), json!(t));
        }
        let message = NewMessage {
            id: MessageId::generate(),
            user_id: user.clone(),
            role: Role::Agent,
            content,
            metadata: Some(metadata),
            counted: None,
        };
        let stored = self.store().append_messages(tenant, &session.id, vec![message]).await?.remove(0).message;
        self.queue_send(&found, &user, Some(&stored.id), Outgoing { template, ..Default::default() }).await?;
        Ok(stored)
    }

    /// Sends a reply the agent wrote outside an inbound message's turn (its follow-up after an
    /// approval decision) on the channel the session came from, if it came from one.
    pub async fn reply_in_session(&self, session: &crate::store::Session, reply: &crate::store::Message) {
        let Some(id) = session
            .metadata
            .as_ref()
            .and_then(|m| m.get("channel"))
            .and_then(|c| c["id"].as_str())
            .and_then(|c| ChannelId::parse(c).ok())
        else {
            return;
        };
        if reply.content.trim().is_empty() {
            return;
        }
        let queued = match self.store().get_channel(&session.tenant_id, &id).await {
            Ok(Some(channel)) if channel.recipient(&session.user_id).is_some() => {
                self.queue_send(&channel, &session.user_id, Some(&reply.id), Outgoing::default()).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            tracing::warn!(error = %e, session = %session.id, "could not queue a follow-up reply on its channel");
        }
    }

    /// When `user` last wrote (epoch ms), from their most recent session's newest user message.
    pub async fn last_inbound(&self, tenant: &TenantId, user: &UserId) -> StoreResult<Option<i64>> {
        // The newest few sessions: one the business started holds no message of the user.
        let page = crate::store::PageRequest { limit: 5, cursor: None };
        for session in self.store().list_user_sessions(tenant, user, page).await?.items {
            let query =
                crate::store::MessageQuery { limit: 50, order: crate::store::Order::Desc, ..Default::default() };
            let messages = self.store().list_messages(tenant, &session.id, query).await?;
            if let Some(m) = messages.items.iter().find(|m| m.role == Role::User) {
                return Ok(m.timestamp.micros().map(|t| t / 1000));
            }
        }
        Ok(None)
    }
}
