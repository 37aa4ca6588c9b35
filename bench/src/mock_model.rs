//! The mock model: OpenAI-compatible chat completions, streaming and not, with a configurable delay
//! before the first token and between tokens.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Clone, Copy)]
pub struct MockModel {
    pub ttft: Duration,
    pub per_token: Duration,
    pub tokens: usize,
}

/// Calls answered by every mock of this process.
pub static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn completions(State(m): State<MockModel>, Json(body): Json<Value>) -> Response {
    CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // About four characters a token, as providers count them.
    let prompt_chars: usize = body["messages"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["content"].as_str()).map(str::len).sum())
        .unwrap_or(0);
    let prompt_tokens = prompt_chars / 4 + 1;
    let words: Vec<String> = (0..m.tokens).map(|i| format!("word{i} ")).collect();
    if body["stream"] != json!(true) {
        tokio::time::sleep(m.ttft + m.per_token * m.tokens as u32).await;
        return Json(json!({
            "model": "bench-mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": m.tokens}
        }))
        .into_response();
    }
    let stream = futures::stream::iter(words.into_iter().enumerate()).then(move |(i, w)| async move {
        tokio::time::sleep(if i == 0 { m.ttft } else { m.per_token }).await;
        let event = json!({"model": "bench-mock", "choices": [{"index": 0, "delta": {"content": w}}]});
        Ok::<_, std::io::Error>(Bytes::from(format!("data: {event}\n\n")))
    });
    // The usage chunk OpenAI sends last when asked (`stream_options.include_usage`).
    let tokens = m.tokens;
    let usage = json!({"model": "bench-mock", "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens}});
    let done = futures::stream::once(async move { Ok(Bytes::from(format!("data: {usage}\n\ndata: [DONE]\n\n"))) });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream.chain(done))).unwrap()
}

pub async fn start_mock(m: MockModel, port: u16) -> SocketAddr {
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(m);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The server's environment to use the mock model.
pub fn model_env(mock: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("LLM_PROVIDER", "openai".into()),
        ("OPENAI_BASE_URL", format!("http://{mock}/v1")),
        ("LLM_MODEL", "bench".into()),
    ]
}
