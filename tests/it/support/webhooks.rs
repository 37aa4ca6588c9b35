//! A webhook receiver for the tests: records every attempt (headers and body) and answers 200, or
//! 500 to the first attempt of each event; `verify` checks recorded deliveries with the
//! `standardwebhooks` package from PyPI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// One attempt as the receiver saw it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub status: u16,
}

impl Attempt {
    pub fn event(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Log {
    attempts: Mutex<Vec<Attempt>>,
    fail_first: bool,
}

pub struct Receiver {
    pub url: String,
    log: Arc<Log>,
}

async fn receive(State(log): State<Arc<Log>>, headers: HeaderMap, body: String) -> StatusCode {
    let headers: HashMap<String, String> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("webhook-") || k.as_str() == "content-type")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let id = headers.get("webhook-id").cloned().unwrap_or_default();
    let mut attempts = log.attempts.lock().unwrap();
    let seen = attempts.iter().any(|a| a.id == id);
    let status = if log.fail_first && !seen { 500 } else { 200 };
    attempts.push(Attempt { id, headers, body, status });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    /// A receiver on a free port.
    pub async fn start(fail_first: bool) -> Receiver {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), fail_first)
    }

    /// A receiver on a listener the caller bound (a port that was down until now).
    pub fn start_on(listener: tokio::net::TcpListener, fail_first: bool) -> Receiver {
        let log = Arc::new(Log { attempts: Mutex::new(Vec::new()), fail_first });
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/hooks", axum::routing::post(receive)).with_state(log.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, log }
    }

    /// Every attempt so far, in arrival order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.log.attempts.lock().unwrap().clone()
    }

    /// The acknowledged deliveries (one per event unless an event came twice).
    pub fn delivered(&self) -> Vec<Attempt> {
        self.attempts().into_iter().filter(|a| a.status == 200).collect()
    }

    /// Waits until `done` holds for the acknowledged deliveries, for up to 45 s (a deliverer that
    /// died mid-attempt holds its claim for 30 s).
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Attempt]) -> bool) -> Vec<Attempt> {
        for _ in 0..450 {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the receiver never got {what}; attempts: {:#?}", self.attempts());
    }
}

/// A new secret in the Standard Webhooks form.
pub fn secret() -> String {
    agent_server::events::signature::SigningKey::generate()
}

/// Verifies the attempts' signatures with `standardwebhooks` (Python); panics when one fails.
pub fn verify(secret: &str, attempts: &[Attempt]) {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/verify_webhooks.py");
    let input: Vec<Value> = attempts.iter().map(|a| json!({"headers": a.headers, "body": a.body})).collect();
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(json!(input).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "standardwebhooks refused a delivery: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), attempts.len().to_string(), "every delivery was verified");
}
