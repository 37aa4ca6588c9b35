//! Shared test helpers: real stores on a temporary SQLite file and on the DynamoDB emulator that
//! `scripts/test.sh` starts (moto), each DynamoDB test on tables of its own.
#![allow(dead_code)]

pub mod openai_mock;

use std::sync::Arc;

use agent_server::store::ConversationStore;
use agent_server::store::dynamodb::DynamoStore;
use agent_server::store::dynamodb::tables;
use agent_server::store::sqlite::SqliteStore;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

/// The emulator's URL, set by `scripts/test.sh`.
pub fn dynamodb_endpoint() -> String {
    std::env::var("AGENT_SERVER_TEST_DYNAMODB").expect(
        "AGENT_SERVER_TEST_DYNAMODB is not set: run the tests with ./scripts/test.sh, which starts the DynamoDB emulator",
    )
}

/// Environment variables that point the AWS SDK (and the AWS CLI) at the emulator.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", dynamodb_endpoint()),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

pub fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(dynamodb_endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// A unique prefix for table names, so tests never share tables.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Table names for one test.
pub fn table_names() -> (String, String) {
    let p = unique("t");
    (format!("{p}-sessions"), format!("{p}-messages"))
}

/// A DynamoDB store on freshly created tables.
pub async fn dynamodb_store() -> DynamoStore {
    let client = dynamodb_client();
    let (sessions, messages) = table_names();
    for spec in tables::specs(&sessions, &messages) {
        tables::create(&client, &spec).await.expect("create tables on the emulator");
    }
    DynamoStore::new(client, sessions, messages)
}

/// A SQLite store in a temporary folder (kept alive by the returned guard).
pub fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("nested/agent.db")).expect("open sqlite");
    (store, dir)
}

/// Either backend, boxed, with whatever must stay alive beside it.
pub struct AnyStore {
    pub store: Arc<dyn ConversationStore>,
    _guard: Option<tempfile::TempDir>,
}

pub async fn store(backend: &str) -> AnyStore {
    match backend {
        "sqlite" => {
            let (s, dir) = sqlite_store();
            AnyStore { store: Arc::new(s), _guard: Some(dir) }
        }
        "dynamodb" => AnyStore { store: Arc::new(dynamodb_store().await), _guard: None },
        other => panic!("unknown backend {other}"),
    }
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
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agent-server"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut tables_used = None;
        match backend {
            "sqlite" => {
                cmd.env("STORAGE", "sqlite");
            }
            "dynamodb" => {
                let (sessions, messages) = table_names();
                tables_used = Some((sessions.clone(), messages.clone()));
                let client = dynamodb_client();
                for spec in tables::specs(&sessions, &messages) {
                    tables::create(&client, &spec).await.unwrap();
                }
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
        let url = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
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
    pub fn wait(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
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

/// An HTTP client for the tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap()
}

/// Runs the real binary once (not `serve`) in `dir`, with the emulator's AWS settings and `env`.
pub fn cli(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_agent-server"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(if std::env::var("AGENT_SERVER_TEST_DYNAMODB").is_ok() { aws_env() } else { Vec::new() })
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("run agent-server")
}

/// Standard output and error of a finished command, for assertions.
pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
