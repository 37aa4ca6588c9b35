//! OpenAI's Responses and Conversations APIs, driven by the official `openai` Python package
//! (`tests/openai/responses_test.py`) against the real binary with a recording mock model.

use crate::support::TestServer;
use crate::support::openai_mock::OpenAiMock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_talks_to_the_server() {
    let model = OpenAiMock::start().await;
    let business = axum::Router::new().fallback(|| async { axum::Json(serde_json::json!({"id": "a1", "ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, business).await.unwrap() });
    let env = [
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", model.url.as_str()),
        ("API_SERVER_URL", api.as_str()),
        ("API_RESOURCE_TYPES", "appointments"),
        ("EVENTS", "on"),
    ];
    let s = TestServer::start("sqlite", &env).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai/responses_test.py");
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args(["120", "python3"])
            .arg(script)
            .arg(url)
            .output()
            .expect("python3 with the openai package (./scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai SDK failed:\n{report}\n--- server ---\n{}", s.output());
    assert!(report.contains("every step passed"), "{report}");
}
