//! The `bedrock` provider (Converse and ConverseStream) against a local endpoint
//! (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`), through the real server.

use std::sync::{Arc, Mutex};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::support::{TestServer, parse_sse, turn_request};

type Seen = Arc<Mutex<Vec<(String, Value)>>>;

fn reply_to(body: &Value) -> String {
    let last = body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
    let text = last["content"][0]["text"].as_str().unwrap_or_default().to_string();
    format!("bedrock says: {text} ({} messages)", body["messages"].as_array().map_or(0, |m| m.len()))
}

async fn converse(State(seen): State<Seen>, Path(model): Path<String>, Json(body): Json<Value>) -> Response {
    seen.lock().unwrap().push((model, body.clone()));
    Json(json!({
        "output": {"message": {"role": "assistant", "content": [{"text": reply_to(&body)}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 21, "outputTokens": 5, "totalTokens": 26},
        "metrics": {"latencyMs": 3}
    }))
    .into_response()
}

fn frame(event_type: &str, payload: Value) -> Vec<u8> {
    let message = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(":event-type", HeaderValue::String(event_type.to_string().into())))
        .add_header(Header::new(":message-type", HeaderValue::String("event".into())))
        .add_header(Header::new(":content-type", HeaderValue::String("application/json".into())));
    let mut buf = Vec::new();
    write_message_to(&message, &mut buf).unwrap();
    buf
}

async fn converse_stream(State(seen): State<Seen>, Path(model): Path<String>, Json(body): Json<Value>) -> Response {
    seen.lock().unwrap().push((model, body.clone()));
    let text = reply_to(&body);
    let mut out = frame("messageStart", json!({"role": "assistant"}));
    for piece in text.split_inclusive(' ') {
        out.extend(frame("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": piece}})));
    }
    out.extend(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
    out.extend(frame("messageStop", json!({"stopReason": "end_turn"})));
    out.extend(frame(
        "metadata",
        json!({"usage": {"inputTokens": 21, "outputTokens": 9, "totalTokens": 30}, "metrics": {"latencyMs": 4}}),
    ));
    Response::builder().header("content-type", "application/vnd.amazon.eventstream").body(Body::from(out)).unwrap()
}

async fn mock() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/model/{model}/converse", post(converse))
        .route("/model/{model}/converse-stream", post(converse_stream))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn server(url: &str) -> TestServer {
    TestServer::start(
        "sqlite",
        &[
            ("LLM_PROVIDER", "bedrock"),
            ("LLM_MODEL", "anthropic.claude-test-v1"),
            ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIATESTBEDROCK"),
            ("AWS_SECRET_ACCESS_KEY", "bedrock-secret-value"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
    .await
}

#[tokio::test]
async fn converse_answers_a_turn_with_history_and_context() {
    let (url, seen) = mock().await;
    let s = server(&url).await;
    let first: Value =
        turn_request(&s, "t1", "u1").json(&json!({"message": "hello"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["response"], "bedrock says: hello (1 messages)", "{first}");
    assert_eq!(
        first["agentMessage"]["metadata"]["usage"],
        json!({"inputTokens": 21, "outputTokens": 5, "modelCalls": 1})
    );
    assert_eq!(first["agentMessage"]["metadata"]["model"], "anthropic.claude-test-v1");
    let second: Value = turn_request(&s, "t1", "u1")
        .json(&json!({"message": "again", "context": {"plan": "gold"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["response"], "bedrock says: again (3 messages)");
    let (model, body) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(model, "anthropic.claude-test-v1");
    let roles: Vec<&str> = body["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    let system = body["system"].as_array().unwrap();
    assert_eq!(system.len(), 2);
    assert!(system[1]["text"].as_str().unwrap().contains("\"plan\":\"gold\""));
    assert!(!s.output().contains("bedrock-secret-value"));
}

#[tokio::test]
async fn converse_stream_streams_deltas() {
    let (url, _seen) = mock().await;
    let s = server(&url).await;
    let text = turn_request(&s, "t1", "u1")
        .json(&json!({"message": "stream please", "stream": true}))
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
            "error" => panic!("{data}"),
            _ => {}
        }
    }
    assert_eq!(deltas, "bedrock says: stream please (1 messages)");
    assert_eq!(done["agentMessage"]["content"], deltas.as_str());
    assert_eq!(done["agentMessage"]["metadata"]["usage"]["outputTokens"], 9);
}
