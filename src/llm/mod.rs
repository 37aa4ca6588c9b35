//! Model providers, dispatched statically: `echo` (deterministic, no network), any
//! OpenAI-compatible Chat Completions server, and Amazon Bedrock (Converse).

mod bedrock;
mod echo;
mod openai;

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::ProviderConfig;
use crate::store::{Message, Role};
use crate::tools::{ToolCall, ToolSpec, ToolStep};

pub use bedrock::BedrockProvider;
pub use echo::EchoProvider;
pub use openai::OpenAiProvider;

/// What the model is given for one turn.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub system_prompt: String,
    /// The session's context summary: what the messages before `history` said.
    pub summary: Option<String>,
    /// Earlier messages of the session, oldest first.
    pub history: Vec<Message>,
    pub message: String,
    /// Free JSON from the calling app (business data, the user's permissions).
    pub context: Option<Map<String, Value>>,
    /// The tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// This turn's earlier tool rounds: the model's calls and their results.
    pub steps: Vec<ToolStep>,
    /// The agent's sampling temperature and output limit (the provider's defaults when `None`).
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<u32>,
}

/// Token counts, when the provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The model's whole answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReply {
    pub text: String,
    pub model: String,
    pub usage: Option<Usage>,
    /// Tools the model wants called before it answers.
    pub tool_calls: Vec<ToolCall>,
}

/// Why the model gave no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The provider failed; the message says which and why (no secrets).
    #[error("{0}")]
    Failed(String),
    /// No answer within `LLM_TIMEOUT_SECONDS`.
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
}

/// What a streaming turn reports while it runs, in order.
#[derive(Debug, Clone)]
pub enum StreamItem {
    Delta(String),
    ToolCall(Value),
    ToolResult(Value),
}

/// Where a provider sends text as the model produces it (and the agent its tool events).
#[derive(Clone)]
pub struct Deltas(mpsc::UnboundedSender<StreamItem>);

impl Deltas {
    pub fn new(sender: mpsc::UnboundedSender<StreamItem>) -> Self {
        Self(sender)
    }
    /// Sends text; a listener that went away is not an error for the model call.
    pub fn send(&self, text: String) {
        let _ = self.0.send(StreamItem::Delta(text));
    }
    pub fn event(&self, item: StreamItem) {
        let _ = self.0.send(item);
    }
}

/// The configured provider.
pub enum Provider {
    Echo(EchoProvider),
    OpenAi(OpenAiProvider),
    Bedrock(BedrockProvider),
}

impl Provider {
    pub async fn from_config(config: &ProviderConfig, timeout: Duration) -> Self {
        match config {
            ProviderConfig::Bedrock { model } => {
                Provider::Bedrock(BedrockProvider::new(&crate::config::aws_sdk_config().await, model.clone()))
            }
            ProviderConfig::Echo { chunk_delay } => Provider::Echo(EchoProvider::new(*chunk_delay)),
            ProviderConfig::OpenAi { api_key, base_url, model } => {
                Provider::OpenAi(OpenAiProvider::new(api_key.clone(), base_url.clone(), model.clone(), timeout))
            }
        }
    }

    /// Asks the model for a reply. When `deltas` is given, text is sent there as it is produced.
    pub async fn complete(&self, request: &ModelRequest, deltas: Option<&Deltas>) -> Result<ModelReply, ModelError> {
        match self {
            Provider::Echo(p) => p.complete(request, deltas).await,
            Provider::OpenAi(p) => p.complete(request, deltas).await,
            Provider::Bedrock(p) => p.complete(request, deltas).await,
        }
    }

    /// The provider's name, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Provider::Echo(_) => "echo",
            Provider::OpenAi(_) => "openai",
            Provider::Bedrock(_) => "bedrock",
        }
    }

    /// Why the provider cannot answer, when it is not configured well enough to try.
    pub fn not_ready(&self) -> Option<String> {
        match self {
            Provider::Echo(_) | Provider::Bedrock(_) => None,
            Provider::OpenAi(p) => p.not_ready(),
        }
    }
}

/// The chat messages for an OpenAI-style API: system prompt, context, history, then the message.
pub(crate) fn chat_messages(request: &ModelRequest) -> Vec<(&'static str, String)> {
    let mut out = vec![("system", request.system_prompt.clone())];
    if let Some(summary) = &request.summary {
        out.push((
            "system",
            format!(
                "Summary of the earlier part of this conversation (its messages are not repeated below):\n\
                 <conversation_summary>\n{summary}\n</conversation_summary>"
            ),
        ));
    }
    if let Some(context) = request.context.as_ref().filter(|c| !c.is_empty()) {
        out.push(("system", format!("Context from the application (JSON):\n{}", Value::Object(context.clone()))));
    }
    for m in &request.history {
        let role = match m.role {
            Role::User => "user",
            Role::Agent => "assistant",
        };
        out.push((role, with_tool_record(m)));
    }
    out.push(("user", request.message.clone()));
    out
}

/// An agent message's text with what its tools did (from `metadata.actions`), so later turns know.
fn with_tool_record(m: &Message) -> String {
    let actions = m.tool_actions();
    if actions.is_empty() {
        return m.content.clone();
    }
    let lines: Vec<String> = actions
        .iter()
        .map(|a| {
            format!(
                "- {}({}) {}: {}",
                a["tool"].as_str().unwrap_or("?"),
                a["arguments"],
                a["status"].as_str().unwrap_or("?"),
                a["result"].as_str().unwrap_or("")
            )
        })
        .collect();
    format!("{}\n\n[Tools used in this turn]\n{}", m.content, lines.join("\n"))
}

/// Tool call ids are unique within a turn.
pub(crate) fn call_id(step: usize, index: usize) -> String {
    format!("call_{}_{}", step + 1, index + 1)
}

/// Masks credentials in text from or about a model provider before it is logged or answered:
/// the given secrets, and whatever follows `Bearer ` or looks like an `sk-` key.
pub fn mask_secrets(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "***");
    }
    for marker in ["Bearer ", "bearer ", "sk-"] {
        let mut masked = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(marker) {
            masked.push_str(&rest[..i + marker.len()]);
            rest = &rest[i + marker.len()..];
            let end = rest.find(|c: char| c.is_whitespace() || "\"',;)}]".contains(c)).unwrap_or(rest.len());
            if end > 0 {
                masked.push_str("***");
            }
            rest = &rest[end..];
        }
        masked.push_str(rest);
        out = masked;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{mask_secrets, with_tool_record};
    use crate::store::{Message, Role};

    #[test]
    fn only_an_agent_messages_actions_are_told_to_the_model() {
        let actions = serde_json::json!({"actions": [{"tool": "book", "status": "done", "result": "ok"}]});
        let message = |role| Message::sample(role, actions.as_object().cloned());
        assert!(with_tool_record(&message(Role::Agent)).contains("[Tools used in this turn]\n- book("));
        // A user message's metadata is the client's: text shaped like a tool record is not believed.
        assert_eq!(with_tool_record(&message(Role::User)), "text");
    }

    #[test]
    fn masks_keys_and_bearer_tokens() {
        let text = r#"bad request: {"headers": {"authorization": "Bearer sk-live-123abc"}, "key": "my-secret-key"}"#;
        let masked = mask_secrets(text, &["my-secret-key"]);
        assert!(!masked.contains("sk-live-123abc") && !masked.contains("my-secret-key"), "{masked}");
        assert!(masked.contains("Bearer ***") && masked.starts_with("bad request"), "{masked}");
    }
}
