//! Local fakes of the channels' provider APIs, on one port: Meta's Graph API (`POST
//! /{version}/{phone_number_id}/messages`) and Twilio's Messages resource (`POST
//! /2010-04-01/Accounts/{sid}/Messages.json`). Each send is recorded; `fail_next` makes the next
//! sends fail with a status. And the providers' signatures: Meta's HMAC-SHA256 of the body, and
//! Twilio's own `RequestValidator` (PyPI `twilio`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Sent {
    pub path: String,
    pub authorization: String,
    /// The JSON body (Graph API), or the form as a JSON object (Twilio).
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    sent: Vec<Sent>,
    /// Answers for the next sends, in order (then success).
    failures: Vec<u16>,
    attempts: usize,
}

#[derive(Clone)]
pub struct FakeProviders {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeProviders {
    pub async fn start() -> FakeProviders {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener)
    }

    pub fn start_on(listener: tokio::net::TcpListener) -> FakeProviders {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new().fallback(record).with_state(inner.clone());
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeProviders { url, inner }
    }

    /// The next sends answer these statuses (then they succeed).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().failures = statuses.to_vec();
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.inner.lock().unwrap().sent.clone()
    }

    pub fn attempts(&self) -> usize {
        self.inner.lock().unwrap().attempts
    }

    /// Waits until `n` sends succeeded (20 s at most).
    pub async fn wait_for(&self, n: usize) -> Vec<Sent> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let sent = self.sent();
            if sent.len() >= n {
                return sent;
            }
            assert!(Instant::now() < deadline, "waited for {n} sends, got {}: {sent:?}", sent.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn record(State(inner): State<Arc<Mutex<Inner>>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let twilio = path.starts_with("/2010-04-01/");
    let body = if twilio {
        let form: serde_json::Map<String, Value> =
            form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), json!(v.into_owned()))).collect();
        Value::Object(form)
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let mut inner = inner.lock().unwrap();
    inner.attempts += 1;
    if !inner.failures.is_empty() {
        let status = inner.failures.remove(0);
        let error = json!({"error": {"message": "fake failure", "code": status}, "message": "fake failure"});
        return (StatusCode::from_u16(status).unwrap(), axum::Json(error)).into_response();
    }
    inner.sent.push(Sent { path, authorization, body });
    let n = inner.sent.len();
    if twilio {
        axum::Json(json!({"sid": format!("SM{n:032}"), "status": "queued"})).into_response()
    } else {
        axum::Json(json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.fake-{n}")}]}))
            .into_response()
    }
}

/// Meta's `X-Hub-Signature-256` of a body.
pub fn meta_signature(app_secret: &str, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, app_secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body.as_bytes());
    format!("sha256={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Twilio's signature of a form posted to `url`, by Twilio's own library.
pub fn twilio_signature(auth_token: &str, url: &str, form: &[(&str, &str)]) -> String {
    let params: serde_json::Map<String, Value> = form.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let script = "import json, sys\nfrom twilio.request_validator import RequestValidator\n\
                  token, url, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n\
                  print(RequestValidator(token).compute_signature(url, params))";
    let out = std::process::Command::new("python3")
        .args(["-c", script, auth_token, url, &Value::Object(params).to_string()])
        .output()
        .expect("python3 with PyPI twilio (./scripts/test.sh installs it)");
    assert!(out.status.success(), "twilio's RequestValidator: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A WhatsApp webhook body with one text message (or another type) from `wa_id` to the number.
pub fn whatsapp_message(phone_number_id: &str, wa_id: &str, wamid: &str, kind: &str, text: &str) -> String {
    let mut message = json!({"from": wa_id, "id": wamid, "timestamp": "1733300000", "type": kind});
    if kind == "text" {
        message["text"] = json!({"body": text});
    } else {
        message[kind] = json!({"id": "media-1", "mime_type": "image/jpeg"});
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": wa_id}],
            "messages": [message]
        }}]}]
    })
    .to_string()
}

/// A WhatsApp status webhook for a message we sent.
pub fn whatsapp_status(phone_number_id: &str, wamid: &str, status: &str, ours: &str) -> String {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
            "statuses": [{"id": wamid, "status": status, "timestamp": "1733300100", "recipient_id": "15551234567",
                          "biz_opaque_callback_data": ours}]
        }}]}]
    })
    .to_string()
}
