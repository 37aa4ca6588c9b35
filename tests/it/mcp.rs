//! Tools of an MCP server (rmcp, streamable HTTP) started by the test: listed at start, read-only
//! ones run at once, others wait for approval.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::Value;

use crate::support::{TestServer, ok, request, turn, turn_request};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct HoursRequest {
    location: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SmsRequest {
    to: String,
    text: String,
}

#[derive(Debug, Clone)]
struct Shop {
    tool_router: ToolRouter<Self>,
    sms_sent: Arc<AtomicUsize>,
}

#[tool_router]
impl Shop {
    #[tool(description = "Opening hours of a location", annotations(read_only_hint = true))]
    fn opening_hours(&self, Parameters(HoursRequest { location }): Parameters<HoursRequest>) -> String {
        format!("{location} is open 9:00-17:00")
    }

    #[tool(description = "Who the call is for, as the client says in _meta", annotations(read_only_hint = true))]
    fn whoami(&self, context: RequestContext<RoleServer>) -> String {
        serde_json::to_string(&context.meta.0.0).unwrap()
    }

    #[tool(description = "Send a text message to a customer")]
    fn send_sms(&self, Parameters(SmsRequest { to, text }): Parameters<SmsRequest>) -> String {
        self.sms_sent.fetch_add(1, Ordering::SeqCst);
        format!("sent {text:?} to {to}")
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Shop {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

async fn mcp_server(sms_sent: Arc<AtomicUsize>) -> String {
    let service: StreamableHttpService<Shop, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(Shop { tool_router: Shop::tool_router(), sms_sent: sms_sent.clone() }),
        Default::default(),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_are_listed_run_and_approved() {
    let sms_sent = Arc::new(AtomicUsize::new(0));
    let url = mcp_server(sms_sent.clone()).await;
    let s = TestServer::start("sqlite", &[("MCP_SERVERS", &url)]).await;
    assert!(s.output().contains("MCP server connected"), "{}", s.output());

    // A read-only MCP tool runs within the turn (the echo provider asks for it).
    let r = turn(&s, "acme", "u1", "hours?\n@tool opening_hours {\"location\": \"Downtown\"}").await;
    assert_eq!(r["actions"][0]["status"], "done", "{r}");
    assert!(r["response"].as_str().unwrap().contains("Downtown is open 9:00-17:00"), "{r}");

    // The turn's identity travels with every call, in the request's `_meta`.
    let r = ok(turn_request(&s, "acme", "u7")
        .header("x-location-id", "uptown")
        .json(&serde_json::json!({"message": "who?\n@tool whoami {}"})))
    .await;
    // The action's result is the tool's content (a list of text parts) as JSON text.
    let content: Value = serde_json::from_str(r["actions"][0]["result"].as_str().unwrap()).unwrap();
    let meta: Value = serde_json::from_str(content[0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(meta["agent-server/tenantId"], "acme", "{meta}");
    assert_eq!(meta["agent-server/userId"], "u7", "{meta}");
    assert_eq!(meta["agent-server/locationId"], "uptown", "{meta}");
    // Arguments the tool's schema does not declare are refused before the call.
    let r = turn(&s, "acme", "u1", "hours?\n@tool opening_hours {\"location\": \"Downtown\", \"tenant\": \"globex\"}")
        .await;
    assert_eq!(r["actions"][0]["status"], "failed", "{r}");

    // One without the read-only hint waits for approval, then runs once.
    let r = turn(&s, "acme", "u1", "text her\n@tool send_sms {\"to\": \"+100\", \"text\": \"ready\"}").await;
    assert_eq!(r["actions"][0]["status"], "pending_approval", "{r}");
    assert_eq!(sms_sent.load(Ordering::SeqCst), 0);
    let (session, id) = (r["sessionId"].as_str().unwrap(), r["actions"][0]["id"].as_str().unwrap());
    let approved: Value =
        request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/actions/{id}/approve"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(approved["actions"][0]["status"], "done", "{approved}");
    assert!(approved["actions"][0]["result"].as_str().unwrap().contains("sent"), "{approved}");
    assert_eq!(sms_sent.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_mcp_server_does_not_stop_the_agent() {
    let s = TestServer::start("sqlite", &[("MCP_SERVERS", "http://127.0.0.1:9/mcp")]).await;
    assert!(s.output().contains("MCP server unreachable"), "{}", s.output());
    let r = turn(&s, "acme", "u1", "hello").await;
    assert!(r["response"].as_str().unwrap().starts_with("Echo: hello"));
}
