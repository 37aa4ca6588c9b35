//! Every error status of the API, each with its JSON body, from the real binary.

mod common;

use common::TestServer;
use common::openai_mock::OpenAiMock;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// Sends the request and checks the JSON error shape; returns (code, message).
async fn expect_error(req: RequestBuilder, status: StatusCode) -> (String, String) {
    let r = req.send().await.unwrap();
    let got = r.status();
    let request_id = r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(body["error"]["requestId"].as_str(), request_id.as_deref(), "{body}");
    (body["error"]["code"].as_str().unwrap().to_string(), body["error"]["message"].as_str().unwrap().to_string())
}

fn turn(s: &TestServer) -> RequestBuilder {
    common::http().post(format!("{}/agent/process", s.url)).header("x-tenant-id", "t1").header("x-user-id", "u1")
}

#[tokio::test]
async fn client_errors_are_json_and_name_what_is_wrong() {
    let s = TestServer::start("sqlite", &[("MAX_BODY_BYTES", "4096"), ("MAX_MESSAGE_CHARS", "10")]).await;
    let c = common::http();
    let (code, _) = expect_error(
        turn(&s).header("content-type", "application/json").body("{\"message\": "),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "invalid_json");
    let (code, msg) = expect_error(turn(&s).json(&json!({"text": "hi"})), StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "invalid_body");
    assert!(msg.contains("message"), "{msg}");
    let (code, msg) =
        expect_error(turn(&s).json(&json!({"message": "hi", "sessionId": 5})), StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "invalid_body");
    assert!(msg.contains("sessionId"), "{msg}");
    let (code, msg) = expect_error(
        c.post(format!("{}/agent/process", s.url)).header("x-user-id", "u1").json(&json!({"message": "hi"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "missing_header");
    assert!(msg.contains("x-tenant-id"), "{msg}");
    let (code, msg) = expect_error(
        c.post(format!("{}/agent/process", s.url))
            .header("x-tenant-id", "t1")
            .header("x-user-id", "x".repeat(200))
            .json(&json!({"message": "hi"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "invalid_header");
    assert!(msg.contains("x-user-id"), "{msg}");
    let (code, _) = expect_error(turn(&s).json(&json!({"message": "   "})), StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "invalid_body");
    let (code, msg) = expect_error(
        turn(&s).json(
            &json!({"message": "hi", "metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}),
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "invalid_body");
    assert!(msg.contains("metadata"), "{msg}");
    // Values DynamoDB cannot hold are refused the same way on every backend, before any write.
    for metadata in [json!({"n": 1e300}), json!({"": 1}), json!({"a": [{"": true}]})] {
        let (code, msg) =
            expect_error(turn(&s).json(&json!({"message": "hi", "metadata": metadata})), StatusCode::BAD_REQUEST).await;
        assert_eq!(code, "invalid_body");
        assert!(msg.starts_with("metadata"), "{msg}");
    }
    for query in ["limit=abc", "limit=0", "limit=101", "cursor=forged", "before=yesterday", "order=sideways"] {
        let (code, _) =
            expect_error(c.get(format!("{}/agent/conversations/t1/messages?{query}", s.url)), StatusCode::BAD_REQUEST)
                .await;
        assert!(code.starts_with("invalid_"), "{query}: {code}");
    }
    // 404: unknown route, unknown session.
    let (code, _) = expect_error(c.get(format!("{}/nope", s.url)), StatusCode::NOT_FOUND).await;
    assert_eq!(code, "not_found");
    let (code, _) =
        expect_error(c.get(format!("{}/agent/conversations/t1/sessions/missing", s.url)), StatusCode::NOT_FOUND).await;
    assert_eq!(code, "not_found");
    let (code, _) = expect_error(
        c.get(format!("{}/agent/conversations/t1/sessions/missing/messages", s.url)),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(code, "not_found");
    let (code, _) =
        expect_error(c.delete(format!("{}/agent/conversations/t1/sessions/missing", s.url)), StatusCode::NOT_FOUND)
            .await;
    assert_eq!(code, "not_found");
    // 405.
    let (code, _) = expect_error(c.put(format!("{}/agent/process", s.url)), StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(code, "method_not_allowed");
    // 413: body over MAX_BODY_BYTES, message over MAX_MESSAGE_CHARS.
    let (code, _) = expect_error(
        turn(&s).json(&json!({"message": "x", "metadata": {"pad": "y".repeat(8000)}})),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(code, "payload_too_large");
    let (code, msg) =
        expect_error(turn(&s).json(&json!({"message": "eleven chars"})), StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(code, "message_too_long");
    assert!(msg.contains("MAX_MESSAGE_CHARS"), "{msg}");
    // 415.
    let (code, _) =
        expect_error(turn(&s).header("content-type", "text/plain").body("hello"), StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .await;
    assert_eq!(code, "unsupported_media_type");
    // Nothing of the refused requests was stored.
    let r: Value =
        c.get(format!("{}/agent/conversations/t1/users/u1", s.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(r, json!([]));
    // The request id a client sends is the one it gets back.
    let r = c.get(format!("{}/nope", s.url)).header("x-request-id", "my-id-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "my-id-123");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["requestId"], "my-id-123");
}

#[tokio::test]
async fn model_failures_are_502_and_timeouts_504() {
    let mock = OpenAiMock::start().await;
    let s = TestServer::start(
        "sqlite",
        &[
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", &mock.url),
            ("OPENAI_API_KEY", "sk-test-secret-1"),
            ("LLM_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    let (code, msg) =
        expect_error(turn(&s).json(&json!({"message": "hi [status:400]"})), StatusCode::BAD_GATEWAY).await;
    assert_eq!(code, "model_provider_error");
    assert!(msg.contains("openai") && msg.contains("400") && msg.contains("mock failure"), "{msg}");
    let (code, msg) =
        expect_error(turn(&s).json(&json!({"message": "hi [slow:3000]"})), StatusCode::GATEWAY_TIMEOUT).await;
    assert_eq!(code, "model_timeout");
    assert!(msg.contains("LLM_TIMEOUT_SECONDS"), "{msg}");
    // A provider that keeps failing with 5xx is retried, then reported within the timeout.
    let (code, _) = expect_error(turn(&s).json(&json!({"message": "hi [status:503]"})), StatusCode::BAD_GATEWAY).await;
    assert_eq!(code, "model_provider_error");
    assert!(mock.calls() >= 4, "503 was retried: {} calls", mock.calls());
    // A failed turn stores nothing.
    let r: Value = common::http()
        .get(format!("{}/agent/conversations/t1/users/u1", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!([]));
    // An unreachable provider is a 502 that says so.
    let down = TestServer::start(
        "sqlite",
        &[("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"), ("LLM_TIMEOUT_SECONDS", "1")],
    )
    .await;
    let (code, msg) = expect_error(turn(&down).json(&json!({"message": "hi"})), StatusCode::BAD_GATEWAY).await;
    assert_eq!(code, "model_provider_error");
    assert!(msg.contains("connect"), "{msg}");
    assert!(!s.output().contains("sk-test-secret-1"), "the API key leaked into the log");
}

#[tokio::test]
async fn missing_tables_are_503_naming_the_table() {
    let s = TestServer::start("dynamodb-missing-tables", &[]).await;
    let (code, msg) = expect_error(turn(&s).json(&json!({"message": "hi"})), StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(code, "storage_unavailable");
    assert!(msg.contains("-sessions") && msg.contains("does not exist"), "{msg}");
    let (code, _) =
        expect_error(common::http().get(format!("{}/readyz", s.url)), StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(code, "storage_unavailable");
    let health = common::http().get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn unreachable_dynamodb_is_503() {
    let s = TestServer::start(
        "sqlite",
        &[
            ("STORAGE", "dynamodb"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "y"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
    .await;
    let (code, msg) = expect_error(turn(&s).json(&json!({"message": "hi"})), StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(code, "storage_unavailable");
    assert!(msg.contains("unreachable"), "{msg}");
}

#[tokio::test]
async fn invalid_configuration_stops_the_process_with_one_line() {
    for (var, value) in
        [("PORT", "eighty"), ("STORAGE", "postgres"), ("LLM_PROVIDER", "magic"), ("SESSION_IDLE_MINUTES", "-1")]
    {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-server"))
            .arg("serve")
            .env_clear()
            .env(var, value)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(var), "{err}");
    }
}

#[tokio::test]
async fn a_dotenv_file_configures_the_server() {
    // The seed's .env names the tables, which selects DynamoDB: no silent local file.
    let dir = tempfile::tempdir().unwrap();
    let (sessions, messages) = common::table_names();
    std::fs::write(
        dir.path().join(".env"),
        format!("DYNAMODB_SESSIONS_TABLE={sessions}\nDYNAMODB_MESSAGES_TABLE={messages}\nPORT=eighty\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-server"))
        .args(["tables", "cloudformation"])
        .env_clear()
        .current_dir(dir.path())
        .output()
        .unwrap();
    // PORT is invalid, so the whole configuration is refused, naming PORT.
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
    std::fs::write(
        dir.path().join(".env"),
        format!("DYNAMODB_SESSIONS_TABLE={sessions}\nDYNAMODB_MESSAGES_TABLE={messages}\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-server"))
        .args(["tables", "cloudformation"])
        .env_clear()
        .current_dir(dir.path())
        .output()
        .unwrap();
    let template = String::from_utf8_lossy(&out.stdout);
    assert!(template.contains(&format!("TableName: {sessions}")), "{template}");
}
