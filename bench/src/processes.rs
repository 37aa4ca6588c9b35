//! The processes under test: agent-server and dynalite, and their RSS and CPU from /proc.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// With `--pin`: the core the server runs on.
pub static SERVER_CORE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Starts agent-server and waits for its "listening on" line.
pub fn start_server(bin: &std::path::Path, env: &[(&str, String)]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::fs::canonicalize(bin)
        .unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build --release)", bin.display()));
    // `--pin`: the server alone on core 0 (the harness, the mock and the emulator on core 1).
    let mut cmd = match SERVER_CORE.get() {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("RUST_LOG", "warn,agent_server=info")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child =
        cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e} (build it: cargo build --release)", bin.display()));
    let url = listening_url(&mut child, Duration::from_secs(30));
    Proc { child, url, _dir: Some(dir) }
}

/// The URL of a started agent-server, from its "listening on" line (standard output, piped).
pub fn listening_url(child: &mut Child, within: Duration) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split_once("listening on ").map(|(_, r)| r) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    rx.recv_timeout(within).expect("agent-server started")
}

/// Resident set size and peak, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) the process used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Starts dynalite (installed by npm install in bench/) on a free port.
pub fn start_dynalite(bench_dir: &std::path::Path) -> Proc {
    let port = free_port();
    let cli = bench_dir.join("node_modules/dynalite/cli.js");
    let child = Command::new("node")
        .arg(&cli)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start dynalite ({}): {e}; run npm install in bench/", cli.display()));
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc { child, url, _dir: None }
}

/// The server's environment for DynamoDB at `endpoint`.
pub fn dynamo_env(endpoint: &str, sessions: &str, messages: &str) -> Vec<(&'static str, String)> {
    vec![
        ("STORAGE", "dynamodb".into()),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("DYNAMODB_SESSIONS_TABLE", sessions.into()),
        ("DYNAMODB_MESSAGES_TABLE", messages.into()),
    ]
}

/// `agent-server tables create` with that environment.
pub fn create_tables(bin: &std::path::Path, env: &[(&str, String)]) {
    let out = Command::new(bin)
        .args(["tables", "create"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "tables create: {}", String::from_utf8_lossy(&out.stderr));
}
