//! The benchmark harness's smoke mode (a few seconds), so that it cannot silently rot.

use std::path::PathBuf;

/// The server binary built into the same target directory as this test (target/<profile>/deps/smoke-*
/// → target/<profile>/agent-server). `cargo test --workspace` builds it; `cargo test -p agent-bench`
/// alone does not, since it is another package's binary.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let server = profile_dir.join(format!("agent-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        server.is_file(),
        "{} not found: build the server first (cargo build -p agent-server, or cargo test --workspace)",
        server.display()
    );
    server
}

#[test]
fn the_benchmark_harness_runs() {
    let server = server_binary();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-bench"))
        .arg("smoke")
        .arg("--server")
        .arg(&server)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("smoke:") && text.contains("errors 0"), "{text}");
}
