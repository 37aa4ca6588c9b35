//! Agent tools: the built-in tools on the tenant's business API (`API_SERVER_URL`), tools declared in
//! `AGENT_TOOLS_FILE`, and the tools of MCP servers. The model asks for tool calls; this module says
//! which tools exist, which of them change things (and so may need approval), and runs them.

mod business_api;
mod mcp;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use business_api::{BusinessApi, FileTool, read_tools_file};
pub use mcp::McpServers;

// Which tool calls wait for a human: a setting, so it is defined with the configuration.
pub use crate::config::ApprovalPolicy;

use crate::config::ToolsConfig;
use crate::ids::{LocationId, TenantId, UserId};
use crate::store::{Action, ActionStatus};

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: Value,
}

/// One call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// What a tool call gave back (or why it failed), as the model will read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub call_id: String,
    pub content: String,
    pub is_error: bool,
}

/// One round of the tool loop within a turn: the model's calls and their results.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolStep {
    pub text: String,
    pub calls: Vec<ToolCall>,
    pub results: Vec<ToolResult>,
}

/// Who a tool acts for: always the turn's own tenant, user and location, never the model's choice.
#[derive(Debug, Clone)]
pub struct ToolContext {
    pub tenant: TenantId,
    pub user: UserId,
    pub location: Option<LocationId>,
}

/// The built-in tool that messages a customer on one of the tenant's channels (`docs/channels.md`):
/// offered only to an agent whose `tools.allow` names it, and a write (it waits for approval
/// unless the agent's policy is `none`). The agent runs it (it needs the channels).
pub const SEND_MESSAGE: &str = "send_message";

fn send_message_spec() -> ToolSpec {
    ToolSpec {
        name: SEND_MESSAGE.into(),
        description: "Send a message to a customer on one of the business's channels (WhatsApp, SMS, email). \
                      Use it only when asked to contact someone."
            .into(),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {
                "channelId": {"type": "string", "description": "The channel's id"},
                "to": {"type": "string", "description": "The customer's address on the channel (phone number, WhatsApp id or email)"},
                "text": {"type": "string", "description": "The message"}
            },
            "required": ["channelId", "to", "text"]
        }),
    }
}

/// The tools available to the agent.
pub struct Toolbox {
    api: Option<BusinessApi>,
    mcp: Option<Arc<McpServers>>,
    /// An agent's `tools.allow`: only these are offered and run (all when `None`).
    allow: Option<Vec<String>>,
    /// An agent's `tools.deny`: never offered, a call to one is refused.
    deny: Vec<String>,
    timeout: Duration,
    pub policy: ApprovalPolicy,
    pub max_steps: usize,
    pub result_max_chars: usize,
}

/// A tool call refused or failed; the message is for the model (and the user), never a 5xx.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// Why the configured tools cannot be set up; the process stops at start with this line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolboxError {
    /// `AGENT_TOOLS_FILE` cannot be read, or is not a valid tools file.
    #[error("invalid configuration: AGENT_TOOLS_FILE: {0}")]
    ToolsFile(String),
    /// `AGENT_TOOLS_FILE` is set but `API_SERVER_URL` is not.
    #[error("invalid configuration: AGENT_TOOLS_FILE: needs API_SERVER_URL: its tools call paths under it")]
    ToolsFileWithoutApi,
}

impl Toolbox {
    pub fn new(
        api: Option<BusinessApi>,
        timeout: Duration,
        policy: ApprovalPolicy,
        max_steps: usize,
        result_max_chars: usize,
    ) -> Self {
        Self { api, mcp: None, allow: None, deny: Vec::new(), timeout, policy, max_steps, result_max_chars }
    }

    /// The configured toolbox, without MCP servers (see [`Toolbox::with_mcp`]); reads `AGENT_TOOLS_FILE`.
    pub fn from_config(config: &ToolsConfig) -> Result<Self, ToolboxError> {
        let api = match &config.api_server_url {
            None => None,
            Some(url) => {
                let file_tools = match &config.tools_file {
                    Some(path) => read_tools_file(path).map_err(ToolboxError::ToolsFile)?,
                    None => Vec::new(),
                };
                Some(BusinessApi::new(
                    url.clone(),
                    config.api_server_key.clone(),
                    config.resource_types.clone(),
                    file_tools,
                ))
            }
        };
        if api.is_none() && config.tools_file.is_some() {
            return Err(ToolboxError::ToolsFileWithoutApi);
        }
        Ok(Self::new(api, config.timeout, config.approval, config.max_steps, config.result_max_chars))
    }

    /// Adds the tools of MCP servers (the business API's tools win a name clash).
    pub fn with_mcp(mut self, mcp: McpServers) -> Self {
        self.mcp = Some(Arc::new(mcp));
        self
    }

    /// The MCP servers, to share with an agent's toolbox.
    pub fn mcp(&self) -> Option<Arc<McpServers>> {
        self.mcp.clone()
    }

    /// The toolbox of a tenant's agent: its business API, policy and allowed tools, with the
    /// server's MCP servers, timeout, steps and result size.
    pub fn for_agent(
        &self,
        api: Option<BusinessApi>,
        policy: ApprovalPolicy,
        allow: Option<Vec<String>>,
        deny: Vec<String>,
    ) -> Self {
        Self {
            api,
            mcp: self.mcp.clone(),
            allow,
            deny,
            timeout: self.timeout,
            policy,
            max_steps: self.max_steps,
            result_max_chars: self.result_max_chars,
        }
    }

    /// Whether the agent may use this tool at all.
    pub fn permits(&self, name: &str) -> bool {
        !self.deny.iter().any(|d| d == name) && self.allow.as_ref().is_none_or(|a| a.iter().any(|t| t == name))
    }

    /// No tools at all.
    pub fn empty() -> Self {
        let none = ToolsConfig::none();
        Self::new(None, none.timeout, none.approval, none.max_steps, none.result_max_chars)
    }

    /// The tools offered to the model (only those the agent may use).
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = self.api.as_ref().map(|a| a.specs()).unwrap_or_default();
        if let Some(mcp) = &self.mcp {
            for spec in mcp.specs() {
                if !specs.iter().any(|s| s.name == spec.name) {
                    specs.push(spec);
                }
            }
        }
        specs.retain(|s| self.permits(&s.name));
        if self.offers_send_message() {
            specs.push(send_message_spec());
        }
        specs
    }

    pub fn is_empty(&self) -> bool {
        self.api.is_none() && self.mcp.is_none() && !self.offers_send_message()
    }

    /// Whether the agent may message customers on channels (`tools.allow` names `send_message`).
    pub fn offers_send_message(&self) -> bool {
        self.allow.as_ref().is_some_and(|a| a.iter().any(|t| t == SEND_MESSAGE)) && self.permits(SEND_MESSAGE)
    }

    fn is_business_tool(&self, name: &str) -> bool {
        self.api.as_ref().is_some_and(|a| a.has(name))
    }

    /// Whether a call must wait for approval under the policy.
    pub fn needs_approval(&self, call: &ToolCall) -> bool {
        if call.name == SEND_MESSAGE {
            return self.policy != ApprovalPolicy::None;
        }
        match self.policy {
            ApprovalPolicy::None => false,
            ApprovalPolicy::All => true,
            ApprovalPolicy::Writes => match (&self.api, &self.mcp) {
                (Some(api), _) if self.is_business_tool(&call.name) => api.is_write(&call.name),
                (_, Some(mcp)) => mcp.is_write(&call.name),
                _ => true,
            },
        }
    }

    /// Runs one call within `TOOL_TIMEOUT_SECONDS`; the result is JSON text for the model.
    pub async fn run(&self, call: &ToolCall, ctx: &ToolContext) -> Result<String, ToolError> {
        if !self.permits(&call.name) {
            return Err(ToolError(format!("refused: this agent may not use the tool {}", call.name)));
        }
        let work = async {
            match (&self.api, &self.mcp) {
                (Some(api), _) if self.is_business_tool(&call.name) => api.call(&call.name, &call.arguments, ctx).await,
                (_, Some(mcp)) => mcp.call(&call.name, &call.arguments, ctx).await,
                _ => Err(ToolError(format!("no tool named {}", call.name))),
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map(|v| self.bounded(v.to_string())),
            Err(_) => {
                Err(ToolError(format!("{} did not answer within {:?} (TOOL_TIMEOUT_SECONDS)", call.name, self.timeout)))
            }
        }
    }

    /// Cuts text over `TOOL_RESULT_MAX_CHARS`, saying so.
    pub fn bounded(&self, text: String) -> String {
        if text.chars().count() <= self.result_max_chars {
            return text;
        }
        let cut: String = text.chars().take(self.result_max_chars).collect();
        format!("{cut} [truncated: the result was longer than {} characters]", self.result_max_chars)
    }
}

/// The record of one tool call, as stored in the agent message's `metadata.actions` and returned in
/// the response's `actions`.
pub fn action_record(call: &ToolCall, status: ActionStatus, result: Option<&ToolResult>) -> Action {
    Action {
        id: call.id.clone(),
        tool: call.name.clone(),
        arguments: call.arguments.clone(),
        status,
        result: result.map(|r| r.content.clone()),
        summary: result.map(|r| r.content.chars().take(200).collect()),
        approved: None,
        reason: None,
    }
}
