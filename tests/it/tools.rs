//! Agent tools against a mock business API (which records every call and its headers) and the
//! OpenAI mock that asks for tool calls; the echo provider's `@tool` lines for model-free turns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, get, ok, ok_json, parse_sse, request, turn_request};

const KEY: &str = "biz-secret-key-123";

#[derive(Default)]
struct Calls {
    log: Mutex<Vec<Value>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

async fn business(State(calls): State<Arc<Calls>>, request: Request) -> axum::response::Response {
    let now = calls.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    calls.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let mut headers = json!({});
    for name in ["authorization", "x-tenant-id", "x-user-id", "x-location-id"] {
        let value = request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        headers[name] = json!(value);
    }
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    calls
        .log
        .lock()
        .unwrap()
        .push(json!({"method": method, "path": path, "query": query, "headers": headers, "body": body}));
    if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    calls.in_flight.fetch_sub(1, Ordering::SeqCst);
    let answer = match (method.as_str(), path.as_str()) {
        (_, p) if p.starts_with("/resources/leaky") => json!({"echo": headers["authorization"]}),
        (_, p) if p.starts_with("/resources/big") => json!({"blob": "x".repeat(450_000)}),
        ("GET", "/resources/appointments") => json!([{"id": "a1", "time": "10:00"}, {"id": "a2", "time": "11:00"}]),
        ("GET", "/resources/customers") => json!([{"id": "c1", "name": "Ada"}]),
        ("GET", p) => json!({"id": p.rsplit('/').next().unwrap(), "found": true}),
        ("POST", _) => json!({"id": "new-1", "created": body}),
        _ => json!({"ok": true}),
    };
    axum::Json(answer).into_response()
}

async fn business_api() -> (String, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let app = axum::Router::new().fallback(business).with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

async fn server(mock: &OpenAiMock, api: &str, extra: &[(&str, &str)]) -> TestServer {
    server_on("sqlite", mock, api, extra).await
}

async fn server_on(backend: &str, mock: &OpenAiMock, api: &str, extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", mock.url.as_str()),
        ("API_SERVER_URL", api),
        ("API_SERVER_KEY", KEY),
        ("API_RESOURCE_TYPES", "appointments,customers,slow,leaky"),
    ];
    env.extend_from_slice(extra);
    TestServer::start(backend, &env).await
}

/// A turn as acme/u1 at location downtown (the business API must receive all three), which must
/// succeed.
async fn ask(s: &TestServer, message: &str) -> Value {
    ok(turn_request(s, "acme", "u1").header("x-location-id", "downtown").json(&json!({"message": message}))).await
}

fn tools(calls: Value) -> String {
    format!("please [tools:{calls}]")
}

#[tokio::test]
async fn a_read_tool_answers_within_the_turn_with_the_turns_headers() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[]).await;
    let r = ask(&s, &tools(json!([{"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"date": "2026-11-25"}}}]))).await;
    assert!(r["response"].as_str().unwrap().starts_with("tool results:"), "{r}");
    assert!(r["response"].as_str().unwrap().contains("10:00"), "{r}");
    let actions = r["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["tool"], "list_resources");
    assert_eq!(actions[0]["status"], "done");
    // The original server's fields beside ours.
    assert_eq!(actions[0]["actionType"], "list_resources");
    assert_eq!(actions[0]["success"], true);
    assert_eq!(r["decisionLevel"], "automatic");
    let log = calls.log.lock().unwrap().clone();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["method"], "GET");
    assert_eq!(log[0]["path"], "/resources/appointments");
    assert_eq!(log[0]["query"], "date=2026-11-25");
    assert_eq!(
        log[0]["headers"],
        json!({"authorization": format!("Bearer {KEY}"), "x-tenant-id": "acme", "x-user-id": "u1", "x-location-id": "downtown"})
    );
    // The results are stored with the agent message, and reach the model in the next turn's history.
    assert_eq!(r["agentMessage"]["metadata"]["actions"][0]["status"], "done");
    ask(&s, "what did you find?").await;
    let history = model.last_body()["messages"].to_string();
    assert!(history.contains("Tools used in this turn") && history.contains("10:00"), "{history}");
}

#[tokio::test]
async fn writes_wait_for_approval_and_run_exactly_once() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[]).await;
    let create =
        json!([{"name": "create_resource", "arguments": {"resourceType": "appointments", "data": {"time": "12:00"}}}]);
    let r = ask(&s, &tools(create.clone())).await;
    let action = &r["actions"][0];
    assert_eq!(action["status"], "pending_approval", "{r}");
    assert!(action.get("success").is_none(), "nothing ran, so no success is claimed: {action}");
    assert_eq!(r["decisionLevel"], "approval_required");
    assert_eq!(r["status"], "awaiting_approval");
    assert!(r["response"].as_str().unwrap().contains("approve"), "{r}");
    assert!(calls.log.lock().unwrap().is_empty(), "nothing ran before approval");
    let session = r["sessionId"].as_str().unwrap();
    let id = action["id"].as_str().unwrap();
    let approve = |id: String| {
        request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/actions/{id}/approve")).send()
    };
    let (a, b) = tokio::join!(approve(id.to_string()), approve(id.to_string()));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "approved once, the second is a conflict");
    let winner: Value = if a.status() == StatusCode::OK { a.json().await.unwrap() } else { b.json().await.unwrap() };
    assert_eq!(winner["actions"][0]["status"], "done", "{winner}");
    assert!(
        winner["response"].as_str().unwrap().contains("new-1") || winner["agentMessage"]["content"].as_str().is_some()
    );
    let log = calls.log.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "ran exactly once");
    assert_eq!(log[0]["method"], "POST");
    assert_eq!(log[0]["body"], json!({"time": "12:00"}));
    assert_eq!(log[0]["headers"]["x-tenant-id"], "acme");
    let again = approve(id.to_string()).await.unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    // The follow-up answer is stored in the session like any turn.
    let path = format!("/agent/conversations/acme/sessions/{session}/messages?order=asc");
    let msgs: Value = get(&s, &path).await.json().await.unwrap();
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["metadata"]["actions"][0]["status"], "done", "the pending action is marked done");
    assert_eq!(msgs[2]["role"], "agent");

    // Rejected: never runs.
    let r = ask(
        &s,
        &tools(json!([{"name": "delete_resource", "arguments": {"resourceType": "appointments", "resourceId": "a1"}}])),
    )
    .await;
    let id = r["actions"][0]["id"].as_str().unwrap().to_string();
    let rejected: Value =
        request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/actions/{id}/reject"))
            .json(&json!({"reason": "not today"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(rejected["actions"][0]["status"], "rejected", "{rejected}");
    assert_eq!(rejected["actions"][0]["reason"], "not today");
    assert!(model.last_body()["messages"].to_string().contains("rejected"));
    assert_eq!(calls.log.lock().unwrap().len(), 1, "the rejected delete never ran");
    // Another tenant cannot decide it.
    let r = request(&s, "POST", &format!("/agent/conversations/globex/sessions/{session}/actions/{id}/approve"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn parallel_calls_timeouts_and_failures_become_tool_results() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[("TOOL_TIMEOUT_SECONDS", "1")]).await;
    let r = ask(
        &s,
        &tools(json!([
            {"name": "list_resources", "arguments": {"resourceType": "appointments"}},
            {"name": "list_resources", "arguments": {"resourceType": "customers"}},
            {"name": "read_resource", "arguments": {"resourceType": "slow", "resourceId": "x"}}
        ])),
    )
    .await;
    let actions = r["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!(calls.max_in_flight.load(Ordering::SeqCst), 3, "the three calls ran at the same time");
    assert_eq!(actions[0]["status"], "done");
    assert_eq!(actions[2]["status"], "failed");
    assert!(actions[2]["result"].as_str().unwrap().contains("TOOL_TIMEOUT_SECONDS"), "{r}");
    // An unreachable business API is a tool error the model can explain, not a 5xx.
    let down = server(&model, "http://127.0.0.1:9", &[]).await;
    let r =
        ask(&down, &tools(json!([{"name": "list_resources", "arguments": {"resourceType": "appointments"}}]))).await;
    assert_eq!(r["actions"][0]["status"], "failed");
    assert!(r["actions"][0]["result"].as_str().unwrap().contains("could not be reached"), "{r}");
}

#[tokio::test]
async fn a_model_that_keeps_calling_tools_stops_at_the_step_limit() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[("AGENT_MAX_TOOL_STEPS", "3")]).await;
    let r = ask(&s, "go round [loop]").await;
    assert_eq!(r["actions"].as_array().unwrap().len(), 3);
    assert!(r["response"].as_str().unwrap().contains("AGENT_MAX_TOOL_STEPS"), "{r}");
    assert_eq!(calls.log.lock().unwrap().len(), 3);
    assert_eq!(model.calls(), 4, "three rounds of tools, then the model was asked once more");
}

#[tokio::test]
async fn arguments_cannot_choose_the_tenant_the_host_or_the_path() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[("TOOL_APPROVAL", "none")]).await;
    let attempts = json!([
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"x-tenant-id": "globex"}}},
        {"name": "create_resource", "arguments": {"resourceType": "appointments", "data": {"tenantId": "globex"}}},
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "url": "http://evil.example"}},
        {"name": "read_resource", "arguments": {"resourceType": "../admin", "resourceId": "1"}},
        {"name": "read_resource", "arguments": {"resourceType": "appointments", "resourceId": ".."}},
        {"name": "read_resource", "arguments": {"resourceType": "invoices", "resourceId": "1"}},
        // Names a deny-list missed: filters are plain field names naming no identity or credential,
        // and arguments are only those the tool's schema offers.
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"tenant": "globex"}}},
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"tenants": "globex"}}},
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"organization": "globex"}}},
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"x-tenant": "globex"}}},
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"userId": "u2"}}},
        {"name": "list_resources", "arguments": {"resourceType": "appointments", "filters": {"X-Api-Key": "k"}}},
        {"name": "read_resource", "arguments": {"resourceType": "appointments", "resourceId": "1", "tenant": "globex"}}
    ]);
    let r = ask(&s, &tools(attempts)).await;
    let actions = r["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 13);
    for a in actions {
        assert_eq!(a["status"], "failed", "{a}");
    }
    assert!(calls.log.lock().unwrap().is_empty(), "no attempt reached the business API");
    // An id is escaped into one path segment.
    let r = ask(&s, &tools(json!([{"name": "read_resource", "arguments": {"resourceType": "appointments", "resourceId": "a/../../b?x=1"}}]))).await;
    assert_eq!(r["actions"][0]["status"], "done");
    assert_eq!(calls.log.lock().unwrap()[0]["path"], "/resources/appointments/a%2F..%2F..%2Fb%3Fx%3D1");
    // The key never shows up, even when the business API echoes it.
    let r =
        ask(&s, &tools(json!([{"name": "read_resource", "arguments": {"resourceType": "leaky", "resourceId": "1"}}])))
            .await;
    assert!(!r.to_string().contains(KEY), "{r}");
    assert!(!s.output().contains(KEY));
}

#[tokio::test]
async fn without_resource_types_only_reads_are_offered() {
    let model = OpenAiMock::start().await;
    let (api, _calls) = business_api().await;
    let s = TestServer::start(
        "sqlite",
        &[("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", &model.url), ("API_SERVER_URL", &api)],
    )
    .await;
    ask(&s, "hello").await;
    let names: Vec<String> = model.last_body()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["list_resources", "read_resource"]);
}

#[tokio::test]
async fn tools_from_a_file_and_the_echo_provider_with_streamed_tool_events() {
    let (api, calls) = business_api().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.yaml");
    std::fs::write(
        &file,
        "tools:\n  - name: confirm_booking\n    description: Confirm a booking\n    method: POST\n    path: /bookings/{bookingId}/confirm\n    parameters:\n      type: object\n      properties:\n        bookingId: {type: string}\n        note: {type: string}\n      required: [bookingId]\n",
    )
    .unwrap();
    let s = TestServer::start(
        "sqlite",
        &[
            ("API_SERVER_URL", &api),
            ("API_SERVER_KEY", KEY),
            ("AGENT_TOOLS_FILE", file.to_str().unwrap()),
            ("TOOL_APPROVAL", "none"),
        ],
    )
    .await;
    let message = "book it\n@tool confirm_booking {\"bookingId\": \"b#7\", \"note\": \"vip\"}\n@tool list_resources {\"resourceType\": \"appointments\"}";
    let text = turn_request(&s, "acme", "u1")
        .json(&json!({"message": message, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let first_result = names.iter().position(|n| *n == "tool_result").unwrap();
    assert_eq!(names[0], "session");
    assert_eq!(&names[1..3], ["tool_call", "tool_call"]);
    assert!(names[first_result..].contains(&"delta"), "the answer streams after the tool results: {names:?}");
    assert_eq!(*names.last().unwrap(), "done");
    let done = &events.last().unwrap().1;
    assert!(done["response"].as_str().unwrap().contains("[tool results: confirm_booking"), "{done}");
    let log = calls.log.lock().unwrap().clone();
    let confirm = log.iter().find(|c| c["method"] == "POST").unwrap();
    assert_eq!(confirm["path"], "/bookings/b%237/confirm");
    assert_eq!(confirm["body"], json!({"note": "vip"}));
}

#[tokio::test]
async fn openai_streamed_tool_calls_are_assembled_from_fragments() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[]).await;
    let message =
        tools(json!([{"name": "read_resource", "arguments": {"resourceType": "customers", "resourceId": "c1"}}]));
    let text = turn_request(&s, "acme", "u1")
        .json(&json!({"message": message, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("event: tool_call") && text.contains("event: tool_result"), "{text}");
    assert!(text.contains("tool results:"), "{text}");
    assert_eq!(calls.log.lock().unwrap()[0]["path"], "/resources/customers/c1");
}

/// An approved tool ran, then the model's follow-up failed: the approval can be retried, and the
/// retry runs only the follow-up, never the tool again. Approvals also find actions however many
/// messages came after them. On both backends.
#[tokio::test]
async fn a_retried_approval_runs_only_the_follow_up_on_sqlite() {
    a_retried_approval_runs_only_the_follow_up_and_old_actions_can_be_decided("sqlite").await
}

#[tokio::test]
async fn a_retried_approval_runs_only_the_follow_up_on_dynamodb() {
    a_retried_approval_runs_only_the_follow_up_and_old_actions_can_be_decided("dynamodb").await
}

async fn a_retried_approval_runs_only_the_follow_up_and_old_actions_can_be_decided(backend: &str) {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server_on(backend, &model, &api, &[]).await;
    // The model fails once on each new text holding the marker: the turn asking for the tool, then
    // the follow-up (whose note quotes the tool's arguments).
    let create = json!([{"name": "create_resource", "arguments": {"resourceType": "appointments", "data": {"note": "[fail-once]"}}}]);
    let failed = turn_request(&s, "acme", "u1").json(&json!({"message": tools(create.clone())})).send().await.unwrap();
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    let r = ask(&s, &tools(create)).await;
    let (session, id) =
        (r["sessionId"].as_str().unwrap().to_string(), r["actions"][0]["id"].as_str().unwrap().to_string());
    // Many turns later, the action is still found.
    for i in 0..30 {
        ask(&s, &format!("filler {i}")).await;
    }
    let approve = || request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/actions/{id}/approve"));
    let first = approve().send().await.unwrap();
    assert_eq!(first.status(), StatusCode::BAD_GATEWAY, "the follow-up failed");
    assert_eq!(calls.log.lock().unwrap().len(), 1, "the tool ran");
    let retried = ok(approve()).await;
    assert_eq!(retried["actions"][0]["status"], "done", "{retried}");
    assert_eq!(retried["status"], "completed");
    assert_eq!(calls.log.lock().unwrap().len(), 1, "the tool never runs twice");
    // Now the follow-up is stored: a third approval is a conflict.
    assert_eq!(approve().send().await.unwrap().status(), StatusCode::CONFLICT);
}

/// A tool call acts for the location the turn names, even on a session started at another one.
#[tokio::test]
async fn tools_use_the_turns_location_on_a_continued_session() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[]).await;
    let first = ask(&s, "hello from downtown").await;
    let list = json!([{"name": "list_resources", "arguments": {"resourceType": "customers"}}]);
    let r = ok(turn_request(&s, "acme", "u1")
        .header("x-location-id", "uptown")
        .json(&json!({"message": tools(list), "sessionId": first["sessionId"]})))
    .await;
    assert_eq!(r["sessionId"], first["sessionId"]);
    let log = calls.log.lock().unwrap().clone();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["headers"]["x-location-id"], "uptown");
}

/// An approved tool whose result would push its message past the storage limit: the side effect
/// happened, so the result is cut to fit rather than the approval failing after it.
#[tokio::test]
async fn an_approved_tools_huge_result_is_cut_to_fit() {
    let model = OpenAiMock::start().await;
    let (api, calls) = business_api().await;
    let s = server(&model, &api, &[("API_RESOURCE_TYPES", "big"), ("TOOL_RESULT_MAX_CHARS", "1000000")]).await;
    let create = json!([{"name": "create_resource", "arguments": {"resourceType": "big", "data": {"n": 1}}}]);
    let r = ask(&s, &tools(create)).await;
    let (session, id) = (r["sessionId"].as_str().unwrap(), r["actions"][0]["id"].as_str().unwrap());
    let approved =
        ok(request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/actions/{id}/approve"))).await;
    assert_eq!(approved["actions"][0]["status"], "done");
    assert_eq!(calls.log.lock().unwrap().len(), 1);
    let msgs =
        ok_json(get(&s, &format!("/agent/conversations/acme/sessions/{session}/messages?order=asc")).await).await;
    let stored = msgs[1]["metadata"]["actions"][0]["result"].as_str().unwrap();
    assert!(stored.ends_with("[cut to fit the storage limit]") && stored.len() < 400_000, "{}", stored.len());
}
