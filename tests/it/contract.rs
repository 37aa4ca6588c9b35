//! Schemathesis (from PyPI, installed by scripts/test.sh) fuzzes the live server from its own
//! `/openapi.json`: no 5xx and no response that breaks the documented schema.

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let s = TestServer::start("sqlite", &[("MAX_MESSAGE_CHARS", "2000"), ("EVENTS", "on")]).await;
    let url = format!("{}/openapi.json", s.url);
    let cache = tempfile::tempdir().unwrap();
    let cwd = cache.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .current_dir(cwd)
            .args(["-m", "schemathesis.cli", "run", &url])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args(["--max-examples", "300", "--generation-database", "none", "--no-color"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .output()
            .expect("run schemathesis (python3 -m schemathesis.cli); ./scripts/test.sh installs it")
    })
    .await
    .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{report}");
    assert!(report.contains("Tested: 55"), "not every operation was tested:\n{report}");
    assert!(!s.output().contains("panicked"), "the server panicked:\n{}", s.output());
}
