//! Every error status of the API, each with its JSON body, from the real binary.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, binary, expect_error, get, request, table_names, turn_request};

#[tokio::test]
async fn client_errors_are_json_and_name_what_is_wrong() {
    let s = TestServer::start("sqlite", &[("MAX_BODY_BYTES", "4096"), ("MAX_MESSAGE_CHARS", "10")]).await;
    let (code, _) = expect_error(
        turn_request(&s, "t1", "u1").header("content-type", "application/json").body("{\"message\": "),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "invalid_json");
    let (code, msg) =
        expect_error(turn_request(&s, "t1", "u1").json(&json!({"text": "hi"})), StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "invalid_body");
    assert!(msg.contains("message"), "{msg}");
    let (code, msg) = expect_error(
        turn_request(&s, "t1", "u1").json(&json!({"message": "hi", "sessionId": 5})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "invalid_body");
    assert!(msg.contains("sessionId"), "{msg}");
    let (code, msg) = expect_error(
        request(&s, "POST", "/agent/process").header("x-user-id", "u1").json(&json!({"message": "hi"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "missing_header");
    assert!(msg.contains("x-tenant-id"), "{msg}");
    let (code, msg) = expect_error(
        request(&s, "POST", "/agent/process")
            .header("x-tenant-id", "t1")
            .header("x-user-id", "x".repeat(200))
            .json(&json!({"message": "hi"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "invalid_header");
    assert!(msg.contains("x-user-id"), "{msg}");
    let (code, _) =
        expect_error(turn_request(&s, "t1", "u1").json(&json!({"message": "   "})), StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "invalid_body");
    let (code, msg) = expect_error(
        turn_request(&s, "t1", "u1").json(
            &json!({"message": "hi", "metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}),
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(code, "invalid_body");
    assert!(msg.contains("metadata"), "{msg}");
    // Values DynamoDB cannot hold are refused the same way on every backend, before any write.
    for metadata in [json!({"n": 1e300}), json!({"": 1}), json!({"a": [{"": true}]})] {
        let (code, msg) = expect_error(
            turn_request(&s, "t1", "u1").json(&json!({"message": "hi", "metadata": metadata})),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(code, "invalid_body");
        assert!(msg.starts_with("metadata"), "{msg}");
    }
    for query in ["limit=abc", "limit=0", "limit=101", "cursor=forged", "before=yesterday", "order=sideways"] {
        let (code, _) = expect_error(
            request(&s, "GET", &format!("/agent/conversations/t1/messages?{query}")),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(code.starts_with("invalid_"), "{query}: {code}");
    }
    // 404: unknown route, unknown session.
    let (code, _) = expect_error(request(&s, "GET", "/nope"), StatusCode::NOT_FOUND).await;
    assert_eq!(code, "not_found");
    let (code, _) =
        expect_error(request(&s, "GET", "/agent/conversations/t1/sessions/missing"), StatusCode::NOT_FOUND).await;
    assert_eq!(code, "not_found");
    let (code, _) =
        expect_error(request(&s, "GET", "/agent/conversations/t1/sessions/missing/messages"), StatusCode::NOT_FOUND)
            .await;
    assert_eq!(code, "not_found");
    let (code, _) =
        expect_error(request(&s, "DELETE", "/agent/conversations/t1/sessions/missing"), StatusCode::NOT_FOUND).await;
    assert_eq!(code, "not_found");
    // 405.
    let (code, _) = expect_error(request(&s, "PUT", "/agent/process"), StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(code, "method_not_allowed");
    // 413: body over MAX_BODY_BYTES, message over MAX_MESSAGE_CHARS.
    let (code, _) = expect_error(
        turn_request(&s, "t1", "u1").json(&json!({"message": "x", "metadata": {"pad": "y".repeat(8000)}})),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(code, "payload_too_large");
    let (code, msg) = expect_error(
        turn_request(&s, "t1", "u1").json(&json!({"message": "eleven chars"})),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(code, "message_too_long");
    assert!(msg.contains("MAX_MESSAGE_CHARS"), "{msg}");
    // 415.
    let (code, _) = expect_error(
        turn_request(&s, "t1", "u1").header("content-type", "text/plain").body("hello"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert_eq!(code, "unsupported_media_type");
    // Nothing of the refused requests was stored.
    let r: Value = get(&s, "/agent/conversations/t1/users/u1").await.json().await.unwrap();
    assert_eq!(r, json!([]));
    // The request id a client sends is the one it gets back.
    let r = request(&s, "GET", "/nope").header("x-request-id", "my-id-123").send().await.unwrap();
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
    let (code, msg) = expect_error(
        turn_request(&s, "t1", "u1").json(&json!({"message": "hi [status:400]"})),
        StatusCode::BAD_GATEWAY,
    )
    .await;
    assert_eq!(code, "model_provider_error");
    assert!(msg.contains("openai") && msg.contains("400"), "{msg}");
    assert!(!msg.contains("mock failure"), "the provider's own words stay in the log: {msg}");
    let (code, msg) = expect_error(
        turn_request(&s, "t1", "u1").json(&json!({"message": "hi [slow:3000]"})),
        StatusCode::GATEWAY_TIMEOUT,
    )
    .await;
    assert_eq!(code, "model_timeout");
    assert!(msg.contains("LLM_TIMEOUT_SECONDS"), "{msg}");
    // A provider that keeps failing with 5xx is retried, then reported within the timeout.
    let (code, _) = expect_error(
        turn_request(&s, "t1", "u1").json(&json!({"message": "hi [status:503]"})),
        StatusCode::BAD_GATEWAY,
    )
    .await;
    assert_eq!(code, "model_provider_error");
    assert!(mock.calls() >= 4, "503 was retried: {} calls", mock.calls());
    // A failed turn stores nothing.
    let r: Value = get(&s, "/agent/conversations/t1/users/u1").await.json().await.unwrap();
    assert_eq!(r, json!([]));
    // An unreachable provider is a 502 that says so.
    let down = TestServer::start(
        "sqlite",
        &[("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"), ("LLM_TIMEOUT_SECONDS", "1")],
    )
    .await;
    let (code, msg) =
        expect_error(turn_request(&down, "t1", "u1").json(&json!({"message": "hi"})), StatusCode::BAD_GATEWAY).await;
    assert_eq!(code, "model_provider_error");
    assert!(msg.contains("connect"), "{msg}");
    assert!(!s.output().contains("sk-test-secret-1"), "the API key leaked into the log");
}

#[tokio::test]
async fn missing_tables_are_503_naming_the_table() {
    let s = TestServer::start("dynamodb-missing-tables", &[]).await;
    let (code, msg) =
        expect_error(turn_request(&s, "t1", "u1").json(&json!({"message": "hi"})), StatusCode::SERVICE_UNAVAILABLE)
            .await;
    assert_eq!(code, "storage_unavailable");
    assert!(msg.contains("-sessions") && msg.contains("does not exist"), "{msg}");
    let (code, _) = expect_error(request(&s, "GET", "/readyz"), StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(code, "storage_unavailable");
    let health = get(&s, "/healthz").await;
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
    let (code, msg) =
        expect_error(turn_request(&s, "t1", "u1").json(&json!({"message": "hi"})), StatusCode::SERVICE_UNAVAILABLE)
            .await;
    assert_eq!(code, "storage_unavailable");
    assert!(msg.contains("unreachable"), "{msg}");
}

#[tokio::test]
async fn invalid_configuration_stops_the_process_with_one_line() {
    for (var, value) in
        [("PORT", "eighty"), ("STORAGE", "postgres"), ("LLM_PROVIDER", "magic"), ("SESSION_IDLE_MINUTES", "-1")]
    {
        let dir = tempfile::tempdir().unwrap();
        let out = binary(dir.path()).arg("serve").env(var, value).output().unwrap();
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
    let (sessions, messages) = table_names();
    std::fs::write(
        dir.path().join(".env"),
        format!("DYNAMODB_SESSIONS_TABLE={sessions}\nDYNAMODB_MESSAGES_TABLE={messages}\nPORT=eighty\n"),
    )
    .unwrap();
    let out = binary(dir.path()).args(["tables", "cloudformation"]).output().unwrap();
    // PORT is invalid, so the whole configuration is refused, naming PORT.
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
    std::fs::write(
        dir.path().join(".env"),
        format!("DYNAMODB_SESSIONS_TABLE={sessions}\nDYNAMODB_MESSAGES_TABLE={messages}\n"),
    )
    .unwrap();
    let out = binary(dir.path()).args(["tables", "cloudformation"]).output().unwrap();
    let template = String::from_utf8_lossy(&out.stdout);
    assert!(template.contains(&format!("TableName: {sessions}")), "{template}");
}
