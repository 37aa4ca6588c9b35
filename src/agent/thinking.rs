//! The model's side of a turn: the model call with its timeout and metrics, and the tool loop.

use std::time::Instant;

use serde_json::json;

use super::Agent;
use super::turn::TurnError;
use crate::agents::directory::Persona;
use crate::ids::{LocationId, TenantId, UserId};
use crate::llm::{Deltas, ModelError, ModelReply, ModelRequest, Provider, StreamItem, Usage};
use crate::store::{Action, ActionStatus};
use crate::tools::{ToolCall, ToolContext, ToolResult, ToolStep, Toolbox, action_record};

/// The model's final reply for a turn and every tool call it made on the way.
pub(super) struct Thought {
    pub reply: ModelReply,
    pub actions: Vec<Action>,
    /// The model calls it took (one per tool round).
    pub model_calls: u64,
}

impl Agent {
    pub(super) async fn call_model(
        &self,
        provider: &Provider,
        request: &ModelRequest,
        deltas: Option<&Deltas>,
    ) -> Result<ModelReply, ModelError> {
        let timeout = self.settings.llm_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, provider.complete(request, deltas)).await {
            Ok(result) => result,
            Err(_) => Err(ModelError::Timeout(timeout)),
        };
        let tokens = result.as_ref().ok().and_then(|r| r.usage).map(|u| (u.input_tokens, u.output_tokens));
        crate::telemetry::model_call(provider.label(), result.is_ok(), started.elapsed(), tokens);
        result
    }

    /// The model's answer, with the tool loop: tool calls are run (in parallel) and their results
    /// given back, up to `AGENT_MAX_TOOL_STEPS` rounds; calls that need approval stop the turn.
    pub(super) async fn think(
        &self,
        persona: &Persona,
        mut request: ModelRequest,
        ctx: &ToolContext,
        progress: Option<&Deltas>,
    ) -> Result<Thought, TurnError> {
        let mut actions = Vec::new();
        let mut usage: Option<Usage> = None;
        for step in 0.. {
            let mut reply = self.call_model(&persona.provider, &request, progress).await?;
            if let Some(u) = reply.usage {
                let total = usage.get_or_insert_with(Usage::default);
                total.input_tokens += u.input_tokens;
                total.output_tokens += u.output_tokens;
            }
            reply.usage = usage;
            if reply.tool_calls.is_empty() {
                return Ok(Thought { reply, actions, model_calls: step as u64 + 1 });
            }
            let tools = &persona.tools;
            if step >= tools.max_steps {
                let note = format!(
                    "I stopped after {} rounds of tool calls (AGENT_MAX_TOOL_STEPS) without a final answer.",
                    tools.max_steps
                );
                reply.text = if reply.text.is_empty() { note } else { format!("{}\n\n{note}", reply.text) };
                reply.tool_calls.clear();
                return Ok(Thought { reply, actions, model_calls: step as u64 + 1 });
            }
            for (i, call) in reply.tool_calls.iter_mut().enumerate() {
                if call.id.is_empty() {
                    call.id = format!("call_{}_{}", step + 1, i + 1);
                }
                // Action ids are unique across turns, so approvals can find them.
                call.id = format!("{}-{}", uuid::Uuid::now_v7().simple(), call.id);
            }
            let calls = std::mem::take(&mut reply.tool_calls);
            // A call to a tool the agent may not use never waits: it is refused, and recorded so.
            let (pending, runnable): (Vec<_>, Vec<_>) =
                calls.iter().cloned().partition(|c| tools.permits(&c.name) && tools.needs_approval(c));
            for c in &calls {
                if let Some(p) = progress {
                    p.event(StreamItem::ToolCall(json!({"id": c.id, "tool": c.name, "arguments": c.arguments})));
                }
            }
            let results = futures::future::join_all(runnable.iter().map(|c| self.run_tool(tools, c, ctx))).await;
            for (c, r) in runnable.iter().zip(&results) {
                let status = match (tools.permits(&c.name), r.is_error) {
                    (false, _) => ActionStatus::Refused,
                    (true, true) => ActionStatus::Failed,
                    (true, false) => ActionStatus::Done,
                };
                let action = action_record(c, status, Some(r));
                if let Some(p) = progress {
                    p.event(StreamItem::ToolResult(action.to_json()));
                }
                actions.push(action);
            }
            if !pending.is_empty() {
                let wanted: Vec<String> = pending.iter().map(|c| format!("{}({})", c.name, c.arguments)).collect();
                let note = format!("I would like to run {}. Please approve or reject.", wanted.join(", "));
                // Streamed as stored, so a client's deltas add up to the reply.
                let added = if reply.text.is_empty() { note } else { format!("\n\n{note}") };
                reply.text.push_str(&added);
                if let Some(p) = progress {
                    p.send(added);
                }
                actions.extend(pending.iter().map(|c| action_record(c, ActionStatus::PendingApproval, None)));
                return Ok(Thought { reply, actions, model_calls: step as u64 + 1 });
            }
            request.steps.push(ToolStep { text: reply.text.clone(), calls: runnable, results });
        }
        unreachable!("the loop returns")
    }

    pub(super) async fn run_tool(&self, tools: &Toolbox, call: &ToolCall, ctx: &ToolContext) -> ToolResult {
        let ran = if call.name == crate::tools::SEND_MESSAGE && tools.offers_send_message() {
            self.send_message(call, ctx).await
        } else {
            tools.run(call, ctx).await
        };
        match ran {
            Ok(content) => ToolResult { call_id: call.id.clone(), content, is_error: false },
            Err(e) => {
                ToolResult { call_id: call.id.clone(), content: json!({"error": e.0}).to_string(), is_error: true }
            }
        }
    }

    /// The `send_message` tool: a message to a customer on one of the turn's tenant's channels,
    /// stored in their conversation and sent through the outbox.
    async fn send_message(&self, call: &ToolCall, ctx: &ToolContext) -> Result<String, crate::tools::ToolError> {
        use crate::tools::ToolError;
        let channels = self.channels.get().and_then(std::sync::Weak::upgrade);
        let channels = channels.ok_or_else(|| ToolError("channels are not available on this server".into()))?;
        let arg = |name: &str| call.arguments[name].as_str().map(str::trim).filter(|v| !v.is_empty());
        let (Some(channel), Some(to), Some(text)) = (arg("channelId"), arg("to"), arg("text")) else {
            return Err(ToolError("send_message needs channelId, to and text".into()));
        };
        let channel = crate::ids::ChannelId::parse(channel).map_err(|e| ToolError(format!("channelId: {e}")))?;
        let sent = channels
            .send_business(&ctx.tenant, &channel, to, Some(text), None, "agent")
            .await
            .map_err(|e| ToolError(e.message().to_string()))?;
        Ok(json!({"sent": true, "messageId": sent.id, "to": to, "channelId": channel}).to_string())
    }

    pub(super) fn tool_context(tenant: &TenantId, user: &UserId, location: Option<&LocationId>) -> ToolContext {
        ToolContext { tenant: tenant.clone(), user: user.clone(), location: location.cloned() }
    }
}
