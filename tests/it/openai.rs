//! The `openai` provider against a local OpenAI-compatible mock, through the real server.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, get, parse_sse, turn_request};

async fn server(mock: &OpenAiMock) -> TestServer {
    TestServer::start(
        "sqlite",
        &[
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", &mock.url),
            ("OPENAI_API_KEY", "sk-test-key-42"),
            ("LLM_MODEL", "gpt-test"),
            ("AGENT_SYSTEM_PROMPT", "You are the test agent."),
        ],
    )
    .await
}

#[tokio::test]
async fn non_streaming_turns_send_history_context_and_key() {
    let mock = OpenAiMock::start().await;
    let s = server(&mock).await;
    let first: Value =
        turn_request(&s, "t1", "u1").json(&json!({"message": "hello"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["response"], "mock reply to: hello (2 messages) ✓");
    let meta = &first["agentMessage"]["metadata"];
    assert_eq!(meta["model"], "mock-model");
    assert_eq!(meta["usage"], json!({"inputTokens": 11, "outputTokens": 7, "modelCalls": 1}));
    assert!(meta["latencyMs"].is_u64());
    let second: Value = turn_request(&s, "t1", "u1")
        .json(&json!({"message": "again", "context": {"plan": "gold"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["response"], "mock reply to: again (5 messages) ✓");
    let body = mock.last_body();
    assert_eq!(body["model"], "gpt-test");
    let messages = body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "system", "user", "assistant", "user"]);
    assert_eq!(messages[0]["content"], "You are the test agent.");
    assert!(messages[1]["content"].as_str().unwrap().contains("\"plan\":\"gold\""));
    assert_eq!(messages[2]["content"], "hello");
    assert_eq!(messages[3]["content"], first["response"]);
    assert_eq!(mock.recorded.lock().unwrap().authorizations[0], "Bearer sk-test-key-42");
    assert!(!s.output().contains("sk-test-key-42"));
}

#[tokio::test]
async fn streaming_survives_odd_chunk_boundaries() {
    let mock = OpenAiMock::start().await;
    let s = server(&mock).await;
    let text = turn_request(&s, "t1", "u1")
        .json(&json!({"message": "stream ünïcödé please", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut deltas = String::new();
    let mut done = Value::Null;
    for (event, data) in parse_sse(&text) {
        match event.as_str() {
            "delta" => deltas.push_str(data["text"].as_str().unwrap()),
            "done" => done = data,
            _ => {}
        }
    }
    let expected = "mock reply to: stream ünïcödé please (2 messages) ✓";
    assert_eq!(deltas, expected);
    assert_eq!(done["agentMessage"]["content"], expected);
    assert_eq!(done["agentMessage"]["metadata"]["usage"]["outputTokens"], 7);
    assert_eq!(mock.last_body()["stream"], true);
}

#[tokio::test]
async fn a_429_is_retried_and_then_succeeds() {
    let mock = OpenAiMock::start().await;
    let s = server(&mock).await;
    let r = turn_request(&s, "t1", "u1").json(&json!({"message": "busy [429-once]"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body["response"].as_str().unwrap().starts_with("mock reply to: busy"));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_call_the_model_once() {
    let mock = OpenAiMock::start().await;
    let s = server(&mock).await;
    let send = || {
        turn_request(&s, "t1", "u1")
            .json(&json!({"message": "slow one [slow:800]"}))
            .header("idempotency-key", "abc")
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let (winner, loser) = if a.status() == StatusCode::OK { (a, b) } else { (b, a) };
    let loser: Value = loser.json().await.unwrap();
    assert_eq!(loser["error"]["code"], "idempotency_in_progress");
    let first: Value = winner.json().await.unwrap();
    let retry: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(first, retry);
    assert_eq!(mock.calls(), 1, "the model was called once");
}

/// A provider's tool-call index is bounded before it sizes anything: a huge one is a provider
/// error (502), and the server goes on serving.
#[tokio::test]
async fn a_huge_tool_call_index_is_refused_not_allocated() {
    let mock = OpenAiMock::start().await;
    let s = server(&mock).await;
    let r =
        turn_request(&s, "t1", "u1").json(&json!({"message": "go [huge-index]", "stream": true})).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("model_provider_error") && text.contains("tool call index"), "{text}");
    assert_eq!(get(&s, "/healthz").await.status(), StatusCode::OK);
}

/// A provider error that echoes the request reaches neither the client nor the log with the key in
/// it: the client gets a short summary, the log the masked detail.
#[tokio::test]
async fn provider_errors_never_show_the_api_key() {
    let mock = OpenAiMock::start().await;
    let s = server(&mock).await;
    let r = turn_request(&s, "t1", "u1").json(&json!({"message": "[echo-request]"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body = r.text().await.unwrap();
    assert!(body.contains("model_provider_error") && body.contains("400"), "{body}");
    assert!(!body.contains("sk-test-key-42") && !body.contains("authorization"), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let log = s.output();
    assert!(log.contains("model provider refused the request"), "{log}");
    assert!(!log.contains("sk-test-key-42"), "the key reached the log");
}
