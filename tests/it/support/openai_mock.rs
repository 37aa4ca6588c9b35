//! A local OpenAI-compatible Chat Completions server for the tests.
//!
//! What it does depends on the last user message:
//! - `[status:NNN]`: answers with that HTTP status and an OpenAI-style error body;
//! - `[429-once]`: the first call with this message gets 429, later ones succeed;
//! - `[fail-once]`: the first call with this message gets 400 (not retried), later ones succeed;
//! - `[huge-index]`: a streamed answer with a tool call at index 4,000,000,000;
//! - `[echo-request]`: 400 with an error message quoting the request's Authorization header;
//! - `[slow:MS]`: waits that long before answering;
//! - `[echo-system]`: answers `system said: <the system prompt it was sent>`;
//! - a model whose name contains `failing`: 400 to every call;
//! - otherwise: `mock reply to: <message> (<n> messages)`.
//!
//! Streaming answers are cut into 7-byte pieces, so events and even UTF-8 characters are split
//! across chunk boundaries.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Recorded {
    pub calls: usize,
    pub bodies: Vec<Value>,
    pub authorizations: Vec<String>,
    seen_429: HashSet<String>,
    seen_fail: HashSet<String>,
}

#[derive(Clone)]
pub struct OpenAiMock {
    pub url: String,
    pub recorded: Arc<Mutex<Recorded>>,
}

impl OpenAiMock {
    pub async fn start() -> OpenAiMock {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let app = axum::Router::new().route("/v1/chat/completions", post(completions)).with_state(recorded.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        OpenAiMock { url, recorded }
    }

    pub fn calls(&self) -> usize {
        self.recorded.lock().unwrap().calls
    }

    pub fn last_body(&self) -> Value {
        self.recorded.lock().unwrap().bodies.last().cloned().unwrap_or(Value::Null)
    }
}

fn tag_value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let start = text.find(&format!("[{tag}:"))? + tag.len() + 2;
    let end = text[start..].find(']')? + start;
    Some(&text[start..end])
}

async fn completions(
    State(recorded): State<Arc<Mutex<Recorded>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().and_then(|m| m["content"].as_str()).unwrap_or_default().to_string();
    let first_429 = {
        let mut r = recorded.lock().unwrap();
        r.calls += 1;
        r.bodies.push(body.clone());
        r.authorizations.push(headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string());
        let fail = last.contains("[fail-once]") && r.seen_fail.insert(last.clone());
        (last.contains("[429-once]") && r.seen_429.insert(last.clone()), fail)
    };
    let (first_429, first_fail) = first_429;
    if body["model"].as_str().is_some_and(|m| m.contains("failing")) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "this model always fails"}})))
            .into_response();
    }
    if first_fail {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "mock failure, once"}}))).into_response();
    }
    if first_429 {
        return (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": {"message": "slow down"}}))).into_response();
    }
    if let Some(ms) = tag_value(&last, "slow").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if last.contains("[echo-request]") {
        // A provider that echoes the request in its error, credentials included.
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let message = format!("invalid request; you sent authorization: {auth}");
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": message}}))).into_response();
    }
    if last.contains("[huge-index]") {
        let event = json!({"choices": [{"delta": {"tool_calls": [{"index": 4_000_000_000u64, "id": "x", "function": {"name": "list_resources", "arguments": "{}"}}]}}]});
        let sse = format!("data: {event}\n\ndata: [DONE]\n\n");
        return Response::builder().header("content-type", "text/event-stream").body(Body::from(sse)).unwrap();
    }
    if let Some(status) = tag_value(&last, "status").and_then(|v| v.parse::<u16>().ok()) {
        let status = StatusCode::from_u16(status).unwrap();
        return (status, Json(json!({"error": {"message": format!("mock failure {status}")}}))).into_response();
    }
    // Tool calling: `[tools:[{"name":..,"arguments":{..}}, ..]]` in the newest user message asks for
    // those calls; once tool results follow, the reply lists them. `[loop]` asks for a tool forever.
    let newest_user =
        messages.iter().rev().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or_default();
    let after_tools = messages.last().is_some_and(|m| m["role"] == "tool");
    let wanted: Option<Vec<Value>> = if newest_user.contains("[loop]") {
        Some(vec![json!({"name": "list_resources", "arguments": {"resourceType": "appointments"}})])
    } else if !after_tools {
        newest_user.find("[tools:").and_then(|i| {
            let rest = &newest_user[i + 7..];
            let end = rest.rfind("]]")?;
            serde_json::from_str(&rest[..=end]).ok()
        })
    } else {
        None
    };
    if let Some(calls) = wanted {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": c["name"], "arguments": c["arguments"].to_string()}}))
            .collect();
        if body["stream"] == json!(true) {
            let mut sse = String::new();
            for (i, c) in calls.iter().enumerate() {
                let args = c["function"]["arguments"].as_str().unwrap().to_string();
                let (a, b) = args.split_at(args.len() / 2);
                let first = json!({"choices": [{"delta": {"tool_calls": [{"index": i, "id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": a}}]}}]});
                let second =
                    json!({"choices": [{"delta": {"tool_calls": [{"index": i, "function": {"arguments": b}}]}}]});
                sse.push_str(&format!("data: {first}\n\ndata: {second}\n\n"));
            }
            sse.push_str("data: [DONE]\n\n");
            return Response::builder().header("content-type", "text/event-stream").body(Body::from(sse)).unwrap();
        }
        return Json(json!({
            "model": "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": calls}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}
        }))
        .into_response();
    }
    let reply = if after_tools {
        let results: Vec<&str> =
            messages.iter().rev().take_while(|m| m["role"] == "tool").filter_map(|m| m["content"].as_str()).collect();
        format!("tool results: {}", results.join(" | "))
    } else if last.contains("[echo-system]") {
        // What the agent was told, for tests of per-turn instructions.
        let system = messages.iter().find(|m| m["role"] == "system").and_then(|m| m["content"].as_str());
        format!("system said: {}", system.unwrap_or_default())
    } else {
        format!("mock reply to: {last} ({} messages) ✓", messages.len())
    };
    if body["stream"] != json!(true) {
        return Json(json!({
            "id": "chatcmpl-1",
            "model": "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        }))
        .into_response();
    }
    let mut sse = String::new();
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    for piece in words.chunks(2) {
        let event = json!({"model": "mock-model", "choices": [{"index": 0, "delta": {"content": piece.concat()}}]});
        sse.push_str(&format!("data: {event}\n\n"));
    }
    sse.push_str(&format!(
        "data: {}\n\n",
        json!({"model": "mock-model", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}})
    ));
    sse.push_str("data: [DONE]\n\n");
    let bytes = sse.into_bytes();
    let stream = async_stream_chunks(bytes);
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

fn async_stream_chunks(bytes: Vec<u8>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::StreamExt::then(futures::stream::iter(chunks), |c| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        c
    })
}
