//! The server under test: the real `agent-server` binary (as a server on port 0, or one CLI run),
//! and the app in-process, for tests that call it without a socket.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use agent_server::agent::{Agent, AgentSettings};
use agent_server::auth::Authenticator;
use agent_server::http::{AppState, Limits, app};
use agent_server::llm::{EchoProvider, Provider};
use agent_server::store::sqlite::SqliteStore;

use super::stores::{aws_env, create_tables, table_names};

/// The real binary, run in `dir` with an empty environment: callers add what they need.
pub fn binary(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-server"));
    cmd.env_clear().current_dir(dir);
    cmd
}

/// The real `agent-server serve` binary on port 0, with its output captured.
pub struct TestServer {
    pub url: String,
    /// The DynamoDB tables it uses (sessions, messages), when on DynamoDB.
    pub tables: Option<(String, String)>,
    child: std::process::Child,
    output: Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts the server with the given environment (over a clean one) on SQLite or DynamoDB.
    pub async fn start(backend: &str, env: &[(&str, &str)]) -> TestServer {
        Self::start_with(backend, None, env).await
    }

    /// A second server process on the same DynamoDB tables as `other`.
    pub async fn start_beside(other: &TestServer, env: &[(&str, &str)]) -> TestServer {
        Self::start_with("dynamodb", other.tables.clone(), env).await
    }

    /// A server on a store that outlives it: the SQLite file `db`, or on DynamoDB the tables of
    /// `other` (new tables without it), for a restart or a second instance.
    pub async fn start_on_store(
        backend: &str,
        other: Option<&TestServer>,
        db: &Path,
        env: &[(&str, &str)],
    ) -> TestServer {
        match (backend, other) {
            ("dynamodb", Some(other)) => Self::start_beside(other, env).await,
            _ => {
                let mut env = env.to_vec();
                env.push(("SQLITE_PATH", db.to_str().unwrap()));
                Self::start(backend, &env).await
            }
        }
    }

    async fn start_with(backend: &str, tables: Option<(String, String)>, env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = binary(dir.path());
        cmd.arg("serve")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut tables_used = None;
        match backend {
            "sqlite" => {
                cmd.env("STORAGE", "sqlite");
            }
            "dynamodb" => {
                let (sessions, messages) = match tables {
                    Some(shared) => shared,
                    None => {
                        let (sessions, messages) = table_names();
                        create_tables(&sessions, &messages).await;
                        (sessions, messages)
                    }
                };
                tables_used = Some((sessions.clone(), messages.clone()));
                cmd.envs(aws_env())
                    .env("STORAGE", "dynamodb")
                    .env("DYNAMODB_SESSIONS_TABLE", sessions)
                    .env("DYNAMODB_MESSAGES_TABLE", messages);
            }
            "dynamodb-missing-tables" => {
                let (sessions, messages) = table_names();
                cmd.envs(aws_env()).env("DYNAMODB_SESSIONS_TABLE", sessions).env("DYNAMODB_MESSAGES_TABLE", messages);
            }
            other => panic!("unknown backend {other}"),
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start agent-server");
        let output = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split_once("listening on ").map(|(_, r)| r) {
                        let url = rest.split_whitespace().next().unwrap_or_default().to_string();
                        let _ = tx.send(url);
                    }
                    output.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("agent-server did not start:\n{}", output.lock().unwrap());
            }
        };
        TestServer { url, tables: tables_used, child, output, _dir: dir }
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (after a signal) and returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real binary once (not `serve`) in `dir`, with the emulator's AWS settings and `env`.
pub fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    binary(dir)
        .args(args)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(if std::env::var("AGENT_SERVER_TEST_DYNAMODB").is_ok() { aws_env() } else { Vec::new() })
        .envs(env.iter().copied())
        .output()
        .expect("run agent-server")
}

/// Standard output and error of a finished command, for assertions.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `agent-server keys <args>` on the keys file `dir/keys.json`.
pub fn keys(dir: &Path, args: &[&str]) -> Output {
    let file = dir.join("keys.json");
    let all: Vec<&str> = ["keys"].into_iter().chain(args.iter().copied()).collect();
    cli(dir, &all, &[("API_KEYS_FILE", file.to_str().unwrap())])
}

/// Creates an API key in `dir/keys.json` with `keys create <args>` and returns it (the last line
/// of the output).
pub fn create_key(dir: &Path, args: &[&str]) -> String {
    let all: Vec<&str> = ["create"].into_iter().chain(args.iter().copied()).collect();
    let out = keys(dir, &all);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string()
}

/// The app in-process (echo provider, SQLite in `dir`, no auth), to call without a socket.
pub fn in_process_app(dir: &Path) -> axum::Router {
    let store = Arc::new(SqliteStore::open(dir.join("p.db")).unwrap());
    let settings = AgentSettings {
        history_max_messages: 10,
        session_idle: Duration::from_secs(60),
        llm_timeout: Duration::from_secs(5),
        ..AgentSettings::new("test")
    };
    let agent = Arc::new(Agent::new(store.clone(), Provider::Echo(EchoProvider::new(Duration::ZERO)), settings));
    let state = AppState {
        channels: agent_server::channels::worker::Channels::new(agent.clone(), Default::default()),
        agent,
        store,
        auth: Arc::new(Authenticator::None),
        rate_limit: None,
        metrics_open: true,
        metrics: None,
        max_message_chars: 1000,
        streams: Arc::new(tokio::sync::Semaphore::new(64)),
        search: Default::default(),
        console: true,
    };
    app(
        state,
        Limits {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 64,
            request_queue_timeout: Duration::from_secs(5),
        },
    )
}
