//! Context summaries for long sessions: the older messages of a session folded into a summary that
//! the model is given in their place. The messages themselves are never deleted, hidden or changed.
//!
//! A summary is written after a turn is stored, off the turn's path, once the history the model would
//! see passes `CONTEXT_SUMMARY_TRIGGER_TOKENS` (the provider's reported input tokens, or an estimate)
//! or holds more messages than `HISTORY_MAX_MESSAGES` (which would otherwise drop the oldest). The
//! newest `CONTEXT_SUMMARY_KEEP_MESSAGES` stay verbatim, the cut falls before a user message (so a
//! turn, its tool calls and their results stay together), and the previous summary is folded into the
//! next. A failed summariser leaves the previous summary; of two instances racing, one summary is
//! stored (a conditional write).

use std::sync::Arc;

use serde_json::json;

use super::Agent;
use super::turn::TurnError;
use crate::agents::directory::Persona;
use crate::events::{Change, EventType};
use crate::ids::{SessionId, TenantId};
use crate::llm::{ModelError, ModelRequest, Provider};
use crate::store::{ContextSummary, MAX_SUMMARY_CHARS, Message, MessageQuery, Order, Role, Session, StoreError};
use crate::timestamp::Timestamp;

/// The most messages one summary folds, and the most text (characters of transcript) it sends the
/// summariser: later runs go on from there.
const FOLD_MAX: usize = 200;
const FOLD_MAX_CHARS: usize = 60_000;
/// The longest a message is in the summariser's transcript (characters).
const MESSAGE_MAX_CHARS: usize = 2_000;

/// The summariser's instructions.
pub const SUMMARY_PROMPT: &str = "You summarise the earlier part of a conversation between a user and an \
assistant, so that the assistant can continue it without the messages. Keep every name, number, date, time, \
address, id, amount, decision, preference and open request, and what tools did. Fold the previous summary in \
when there is one. Write plain, dense notes in the conversation's language, at most 800 words. Do not add \
anything that was not said.";

/// Roughly four characters a token: the estimate used when the provider reports no counts.
pub fn estimate_tokens(text_chars: usize) -> u64 {
    text_chars.div_ceil(4) as u64
}

/// The messages the model sees of a session: those after its summary.
pub fn after_summary(session: &Session, mut history: Vec<Message>) -> Vec<Message> {
    if let Some(summary) = &session.context_summary {
        history.retain(|m| m.timestamp > summary.covers_through_timestamp);
    }
    history
}

/// What a summarising run did.
#[derive(Debug, Clone)]
pub enum Summarized {
    /// A new summary is stored.
    Stored(ContextSummary),
    /// Nothing to fold (too few messages past the summary); the current summary, if any.
    Unchanged(Option<ContextSummary>),
    /// Another summariser stored one first; the session's summary now.
    Lost(Option<ContextSummary>),
}

fn transcript_line(m: &Message) -> String {
    let who = match m.role {
        Role::User => "User",
        Role::Agent => "Assistant",
    };
    let mut text: String = m.content.chars().take(MESSAGE_MAX_CHARS).collect();
    for a in m.tool_actions() {
        text.push_str(&format!(
            "\n  (tool {} {} {}: {})",
            a["tool"].as_str().unwrap_or("?"),
            a["arguments"],
            a["status"].as_str().unwrap_or("?"),
            a["result"].as_str().unwrap_or("").chars().take(300).collect::<String>()
        ));
    }
    format!("[{}] {who}: {text}", m.timestamp.as_str())
}

/// The echo provider's summary: the previous one and a line per message, cut to the limit from the
/// end (the oldest facts stay). Deterministic, so tests and demos need no model.
fn echo_summary(previous: Option<&str>, folded: &[Message]) -> String {
    let mut text = previous.map(|p| format!("{p}\n")).unwrap_or_default();
    for m in folded {
        text.push_str(&transcript_line(m));
        text.push('\n');
    }
    text.trim_end().chars().take(MAX_SUMMARY_CHARS).collect()
}

impl Agent {
    /// `CONTEXT_SUMMARY_MODEL`'s provider, else the session's agent's.
    fn summarizer<'a>(&'a self, persona: &'a Persona) -> &'a Provider {
        self.summarizer.as_ref().unwrap_or(&persona.provider)
    }

    /// After a turn that found its context due (the history filled the window or passed the
    /// trigger): summarises the session in the background, unless this process already is.
    pub(super) fn summarize_when_due(self: &Arc<Self>, tenant: &TenantId, session: &SessionId) {
        {
            let mut running = self.summarizing.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert((tenant.clone(), session.clone())) {
                return;
            }
        }
        let agent = self.clone();
        let (tenant, session) = (tenant.clone(), session.clone());
        tokio::spawn(async move {
            // A run in the background folds at least half of what it keeps: a summary is never
            // rewritten for a message or two.
            let result = agent.fold(&tenant, &session, None).await;
            if result.is_err() {
                metrics::counter!("context_summary_failures_total").increment(1);
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, %session, "summarising a session failed; its previous summary stays");
            }
            agent.summarizing.lock().unwrap_or_else(|p| p.into_inner()).remove(&(tenant, session));
        });
    }

    /// The newest messages a summary leaves verbatim: `CONTEXT_SUMMARY_KEEP_MESSAGES`, but at most
    /// half the history window, so that what is kept is always shown and the window does not fill
    /// again at once.
    fn keep(persona: &Persona) -> usize {
        let window = persona.history_max_messages;
        let keep = persona.summary_keep_messages;
        if window == 0 { keep } else { keep.min((window / 2).max(2)) }
    }

    /// Folds the session's messages past its summary (all but the newest kept ones) into a new
    /// summary, when there are at least `min_fold` to fold; on demand, any.
    pub async fn summarize(&self, tenant: &TenantId, session_id: &SessionId) -> Result<Summarized, TurnError> {
        self.fold(tenant, session_id, Some(1)).await.inspect_err(|_| {
            metrics::counter!("context_summary_failures_total").increment(1);
        })
    }

    /// `min_fold`: `None` for half of what is kept (at least 2).
    async fn fold(
        &self,
        tenant: &TenantId,
        session_id: &SessionId,
        min_fold: Option<usize>,
    ) -> Result<Summarized, TurnError> {
        let session = self
            .store
            .get_session(tenant, session_id)
            .await?
            .ok_or_else(|| StoreError::session_not_found(session_id))?;
        // The session's agent decides what is kept, and its model writes the summary.
        let persona = self.agents.pick(tenant, None, super::flow::session_agent(&session).as_ref()).await?;
        let previous = session.context_summary.clone();
        let keep = Self::keep(&persona);
        let min_fold = min_fold.unwrap_or((keep / 2).max(2));
        // The messages past the summary, oldest first, as many as one run folds and keeps.
        let mut query = MessageQuery { limit: 100, order: Order::Asc, ..Default::default() };
        if let Some(p) = &previous {
            query.cursor =
                Some(crate::store::Cursor::new(&p.covers_through_timestamp, p.covers_through_message_id.as_str()));
        }
        let mut pending: Vec<Message> = Vec::new();
        loop {
            let page = self.store.list_messages(tenant, session_id, query.clone()).await?;
            pending.extend(page.items);
            match page.next {
                Some(next) if pending.len() < FOLD_MAX + keep => query.cursor = Some(next),
                _ => break,
            }
        }
        // Keep the newest `keep`, and fold no more than the summariser is sent at once.
        let mut cut = pending.len().saturating_sub(keep).min(FOLD_MAX);
        let mut chars = 0;
        if let Some(over) = pending[..cut].iter().position(|m| {
            chars += m.content.chars().count().min(MESSAGE_MAX_CHARS) + 40;
            chars > FOLD_MAX_CHARS
        }) {
            cut = over.max(1);
        }
        // Cut before a user message, so no turn (its tool calls and results, an approval's
        // follow-up) is split.
        while cut > 0 && pending.get(cut).is_some_and(|m| m.role != Role::User) {
            cut -= 1;
        }
        if cut == 0 || cut < min_fold {
            return Ok(Summarized::Unchanged(previous));
        }
        let folded = &pending[..cut];
        let folded_chars: usize = folded.iter().map(|m| m.content.chars().count()).sum();
        let tokens_before = previous.as_ref().map_or(0, |p| p.tokens_after) + estimate_tokens(folded_chars);
        let mut usage = None;
        let (text, model, reported_out) = match self.summarizer(&persona) {
            Provider::Echo(_) => {
                (echo_summary(previous.as_ref().map(|p| p.text.as_str()), folded), "echo".to_string(), None)
            }
            provider => {
                let mut message = String::new();
                if let Some(p) = &previous {
                    message.push_str(&format!("Previous summary:\n{}\n\n", p.text));
                }
                message.push_str("Messages to fold in:\n");
                for m in folded {
                    message.push_str(&transcript_line(m));
                    message.push('\n');
                }
                let request = ModelRequest {
                    system_prompt: SUMMARY_PROMPT.into(),
                    summary: None,
                    history: Vec::new(),
                    message,
                    context: None,
                    tools: Vec::new(),
                    steps: Vec::new(),
                    temperature: None,
                    max_output_tokens: None,
                };
                let reply = tokio::time::timeout(self.settings.llm_timeout, provider.complete(&request, None))
                    .await
                    .map_err(|_| ModelError::Timeout(self.settings.llm_timeout))
                    .and_then(|r| r)?;
                // A summary's call counts as the session's user's (no turn).
                if let Some(u) = reply.usage {
                    let model = if reply.model.is_empty() { provider.label() } else { &reply.model };
                    let tokens = (u.input_tokens, u.output_tokens);
                    let entry = self.meter.entry(persona.agent_id(), model, tokens, 1, 0);
                    self.count(tenant, &session.user_id, entry).await;
                    usage = Some(serde_json::json!({"inputTokens": u.input_tokens, "outputTokens": u.output_tokens}));
                }
                (reply.text, reply.model, reply.usage.map(|u| u.output_tokens))
            }
        };
        let text: String = text.trim().chars().take(MAX_SUMMARY_CHARS).collect();
        if text.is_empty() {
            return Err(ModelError::Failed("the summariser answered with nothing".into()).into());
        }
        let last = &folded[folded.len() - 1];
        let summary = ContextSummary {
            tokens_after: reported_out.unwrap_or_else(|| estimate_tokens(text.chars().count())),
            text,
            covers_through_message_id: last.id.clone(),
            covers_through_timestamp: last.timestamp.clone(),
            tokens_before,
            model,
            created_at: Timestamp::now(),
            usage,
        };
        let stored = self
            .store
            .save_context_summary(tenant, session_id, &summary, previous.as_ref().map(|p| &p.created_at))
            .await?;
        if !stored {
            let now = self.store.get_session(tenant, session_id).await?.and_then(|s| s.context_summary);
            return Ok(Summarized::Lost(now));
        }
        metrics::counter!("context_summaries_total").increment(1);
        let data = json!({
            "sessionId": session_id,
            "userId": session.user_id,
            "coversThroughMessageId": summary.covers_through_message_id,
            "messagesFolded": folded.len(),
            "tokensBefore": summary.tokens_before,
            "tokensAfter": summary.tokens_after,
        });
        self.events.record(tenant, vec![Change::new(EventType::SessionCompacted, Some(&session.user_id), data)]).await;
        Ok(Summarized::Stored(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::transcript_line;
    use crate::store::{Message, Role};

    #[test]
    fn only_an_agent_messages_actions_go_into_the_transcript() {
        let actions = serde_json::json!({"actions": [{"tool": "book", "status": "done", "result": "ok"}]});
        let message = |role| Message::sample(role, actions.as_object().cloned());
        assert!(transcript_line(&message(Role::Agent)).contains("(tool book"));
        assert!(!transcript_line(&message(Role::User)).contains("tool"));
    }
}
