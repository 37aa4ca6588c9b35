//! Tools of MCP servers (`MCP_SERVERS`: streamable HTTP URLs), through the official rmcp client.
//! Each server's tools are listed at start and listed again when the server says its list changed,
//! every minute, and when the model names a tool that is not known yet.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ClientConfig, MetaObject, RequestMetaObject, Tool};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::Value;
use tokio::sync::Notify;

use super::{ToolContext, ToolError, ToolSpec};

/// Marks the tool list as changed when the server says so.
#[derive(Clone)]
struct ListChanged(Arc<Notify>);

impl ClientHandler for ListChanged {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.0.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }
}

struct Server {
    url: String,
    client: RunningService<RoleClient, ListChanged>,
    tools: RwLock<Vec<Tool>>,
}

impl Server {
    async fn refresh(&self) -> Result<(), String> {
        let tools = self
            .client
            .list_all_tools()
            .await
            .map_err(|e| crate::redact::in_text(&format!("listing the tools of {}: {e}", self.url), &self.url))?;
        *self.tools.write().unwrap_or_else(|p| p.into_inner()) = tools;
        Ok(())
    }

    fn find(&self, name: &str) -> Option<Tool> {
        self.tools.read().unwrap_or_else(|p| p.into_inner()).iter().find(|t| t.name == name).cloned()
    }
}

/// The connected MCP servers.
pub struct McpServers {
    servers: Vec<Arc<Server>>,
}

impl McpServers {
    /// Connects to each URL and lists its tools. A server that cannot be reached is left out with a
    /// warning in the log, so one broken MCP server does not keep the agent from starting.
    pub async fn connect(urls: &[String]) -> Self {
        let mut servers = Vec::new();
        for url in urls {
            let changed = Arc::new(Notify::new());
            let transport = StreamableHttpClientTransport::from_uri(url.as_str());
            let client = match ListChanged(changed.clone()).serve(transport).await {
                Ok(c) => c,
                Err(e) => {
                    let error = crate::redact::in_text(&e.to_string(), url);
                    tracing::warn!(url = %crate::redact::url(url), error, "MCP server unreachable; its tools are left out");
                    continue;
                }
            };
            let server = Arc::new(Server { url: url.clone(), client, tools: RwLock::new(Vec::new()) });
            if let Err(e) = server.refresh().await {
                tracing::warn!(error = %e, "MCP tools not listed");
            }
            tracing::info!(url = %crate::redact::url(url), tools = server.tools.read().map(|t| t.len()).unwrap_or(0), "MCP server connected");
            let watcher = server.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = changed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                    if let Err(e) = watcher.refresh().await {
                        tracing::warn!(error = %e, "MCP tools not refreshed");
                    }
                }
            });
            servers.push(server);
        }
        Self { servers }
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.servers
            .iter()
            .flat_map(|s| s.tools.read().unwrap_or_else(|p| p.into_inner()).clone())
            .map(|t| ToolSpec {
                name: t.name.to_string(),
                description: t.description.as_deref().unwrap_or_default().to_string(),
                parameters: Value::Object((*t.input_schema).clone()),
            })
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.servers.iter().any(|s| s.find(name).is_some())
    }

    /// Whether a tool may change things: anything not marked read-only by its server.
    pub fn is_write(&self, name: &str) -> bool {
        let tool = self.servers.iter().find_map(|s| s.find(name));
        !tool.and_then(|t| t.annotations).and_then(|a| a.read_only_hint).unwrap_or(false)
    }

    /// Calls a tool with the model's arguments (only those its input schema declares) and the
    /// turn's identity in the request's `_meta` (`agent-server/tenantId`, `.../userId`,
    /// `.../locationId`): one connection serves every tenant, so the MCP server must scope what it
    /// does by these, never by arguments (docs/tools.md).
    pub async fn call(&self, name: &str, arguments: &Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        let mut server = self.servers.iter().find(|s| s.find(name).is_some());
        if server.is_none() {
            // The model may know a tool added since the last listing.
            for s in &self.servers {
                let _ = s.refresh().await;
            }
            server = self.servers.iter().find(|s| s.find(name).is_some());
        }
        let server = server.ok_or_else(|| ToolError(format!("no tool named {name}")))?;
        let args = arguments.as_object().cloned().unwrap_or_default();
        if let Some(tool) = server.find(name) {
            let declared = tool.input_schema.get("properties").and_then(Value::as_object);
            if let Some(extra) = declared.and_then(|d| args.keys().find(|k| !d.contains_key(*k))) {
                return Err(ToolError(format!("argument {extra:?} is not one this tool takes")));
            }
        }
        let mut identity = serde_json::Map::new();
        identity.insert("agent-server/tenantId".into(), Value::String(ctx.tenant.to_string()));
        identity.insert("agent-server/userId".into(), Value::String(ctx.user.to_string()));
        if let Some(location) = &ctx.location {
            identity.insert("agent-server/locationId".into(), Value::String(location.to_string()));
        }
        let mut params = CallToolRequestParams::new(name.to_string()).with_arguments(args);
        params.meta = Some(RequestMetaObject(MetaObject(identity)));
        let result = server
            .client
            .call_tool(params)
            .await
            .map_err(|e| ToolError(crate::redact::in_text(&format!("MCP tool {name} failed: {e}"), &server.url)))?;
        let value = serde_json::to_value(&result).unwrap_or(Value::Null);
        if result.is_error == Some(true) {
            return Err(ToolError(format!("MCP tool {name} reported an error: {}", value["content"])));
        }
        Ok(value.get("structuredContent").cloned().unwrap_or_else(|| value["content"].clone()))
    }
}
