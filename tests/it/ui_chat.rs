//! The Vercel AI SDK's UI message stream, driven by the SDK itself (npm `ai` v6 in Node,
//! `tests/ui/chat_test.mjs`): a streamed reply, an approval round trip, a resumed stream and a stop, over
//! the real binary with a recording mock model and a business API for the tool.

use serde_json::json;

use crate::support::TestServer;
use crate::support::openai_mock::OpenAiMock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_sdks_own_chat_streams_approves_and_resumes() {
    let model = OpenAiMock::start().await;
    let business = axum::Router::new().fallback(|| async { axum::Json(json!({"id": "a1", "ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, business).await.unwrap() });
    let s = TestServer::start(
        "sqlite",
        &[
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", model.url.as_str()),
            ("API_SERVER_URL", api.as_str()),
            ("API_RESOURCE_TYPES", "appointments"),
        ],
    )
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/chat_test.mjs");
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args(["120", "node"])
            .arg(script)
            .arg(url)
            .output()
            .expect("node (./scripts/test.sh installs the ai package in tests/ui)")
    })
    .await
    .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the AI SDK's chat failed:\n{report}\n--- server ---\n{}", s.output());
    assert!(report.contains("every step passed"), "{report}");
}
