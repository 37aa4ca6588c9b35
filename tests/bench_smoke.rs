//! The benchmark harness's smoke mode (a few seconds), so that it cannot silently rot.

#[test]
fn the_benchmark_harness_runs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-bench"))
        .args(["smoke", "--server", env!("CARGO_BIN_EXE_agent-server")])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("smoke:") && text.contains("errors 0"), "{text}");
}
