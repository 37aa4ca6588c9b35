//! The `echo` provider: no network, deterministic. Its reply shows what it was given, so tests and
//! demos can see that history and context reach the model:
//! `Echo: <message> [history: N messages; context: key1, key2]`.
//!
//! It asks for tools deterministically: each line `@tool NAME {json arguments}` in the message is a
//! tool call of its first step (several lines: parallel calls). Once results are in, it answers
//! `Echo: ... [tool results: NAME: <result>; ...]`.

use std::time::Duration;

use super::{Deltas, ModelError, ModelReply, ModelRequest, Usage};
use crate::tools::ToolCall;

pub struct EchoProvider {
    chunk_delay: Duration,
}

impl EchoProvider {
    pub fn new(chunk_delay: Duration) -> Self {
        Self { chunk_delay }
    }

    /// The `@tool NAME {json}` lines of a message, as calls.
    fn requested_tools(request: &ModelRequest) -> Vec<ToolCall> {
        request
            .message
            .lines()
            .filter_map(|l| l.trim().strip_prefix("@tool "))
            .enumerate()
            .map(|(i, rest)| {
                let (name, args) = rest.trim().split_once(' ').unwrap_or((rest.trim(), "{}"));
                let arguments = serde_json::from_str(args).unwrap_or_else(|_| serde_json::json!({}));
                ToolCall { id: super::call_id(0, i), name: name.to_string(), arguments }
            })
            .collect()
    }

    pub fn reply_text(request: &ModelRequest) -> String {
        let keys = request
            .context
            .as_ref()
            .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "none".into());
        let mut text =
            format!("Echo: {} [history: {} messages; context: {}]", request.message, request.history.len(), keys);
        let results: Vec<String> = request
            .steps
            .iter()
            .flat_map(|s| s.calls.iter().zip(&s.results))
            .map(|(c, r)| format!("{}: {}", c.name, r.content))
            .collect();
        if !results.is_empty() {
            text.push_str(&format!(" [tool results: {}]", results.join("; ")));
        }
        if let Some(summary) = &request.summary {
            text.push_str(&format!(" [summary: {} chars]", summary.chars().count()));
        }
        text
    }

    pub async fn complete(&self, request: &ModelRequest, deltas: Option<&Deltas>) -> Result<ModelReply, ModelError> {
        if request.steps.is_empty() && !request.tools.is_empty() {
            let calls = Self::requested_tools(request);
            if !calls.is_empty() {
                return Ok(ModelReply { text: String::new(), model: "echo".into(), usage: None, tool_calls: calls });
            }
        }
        let text = Self::reply_text(request);
        // Several chunks, split on word boundaries, so clients see a real stream; the chunk delay
        // (ECHO_CHUNK_DELAY_MS) makes a slow model for demos and tests, streamed or not.
        let send = |chunk: &str| {
            if let Some(deltas) = deltas {
                deltas.send(chunk.to_string());
            }
        };
        let mut start = 0;
        for (i, _) in text.match_indices(' ').filter(|(i, _)| *i > 0) {
            if i - start >= 12 {
                send(&text[start..i]);
                start = i;
                self.pause().await;
            }
        }
        send(&text[start..]);
        let words = |s: &str| s.split_whitespace().count() as u64;
        let input = words(&request.message) + request.history.iter().map(|m| words(&m.content)).sum::<u64>();
        Ok(ModelReply {
            usage: Some(Usage { input_tokens: input, output_tokens: words(&text) }),
            text,
            model: "echo".into(),
            tool_calls: Vec::new(),
        })
    }

    async fn pause(&self) {
        if self.chunk_delay.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(self.chunk_delay).await;
        }
    }
}
