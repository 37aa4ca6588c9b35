//! Figures 19 and 20: the client protocol adapter and the channels, against a native turn.
//!
//! - 19: instructions per JSON turn through `POST /v1/responses` against `POST /agent/process`
//!   (callgrind, the mock model, 200 turns of one conversation): what the adapter adds.
//! - 20: a WhatsApp message's path, from Meta's signed webhook to the reply's send reaching a fake
//!   Graph API, one message at a time, on SQLite with the mock model: the webhook's answer (the
//!   message stored as a job) and the reply's arrival.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::figures::{Report, instructions_for};
use crate::load::{Mode, histogram};
use crate::mock_model::model_env;
use crate::processes::start_server;

pub async fn openai_against_native(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
    const TURNS: u64 = 200;
    let per_turn = |base: u64, with: u64| with.saturating_sub(base) as f64 / TURNS as f64;
    let model = model_env(mock);
    let base = instructions_for(bin, 0, &model, Mode::Json, None, false).await;
    let native = per_turn(base, instructions_for(bin, TURNS, &model, Mode::Json, None, false).await);
    let openai = per_turn(base, instructions_for(bin, TURNS, &model, Mode::OpenAi, None, false).await);
    report.row(
        "19. instructions per JSON turn, mock model: OpenAI Responses / native",
        format!("{:.0} / {:.0} thousand = {:.3}x", openai / 1000.0, native / 1000.0, openai / native),
        "≤ 1.1x",
        Some(openai / native <= 1.1),
    );
    report.json.insert("protocols".into(), json!({"native": native, "openai": openai}));
}

const SECRET: &str = "bench-app-secret";
const NUMBER: &str = "100200300";

fn signature(body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body.as_bytes());
    format!("sha256={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn inbound(n: u64) -> String {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": NUMBER},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": format!("1555{:07}", n % 20)}],
            "messages": [{"from": format!("1555{:07}", n % 20), "id": format!("wamid.bench-{n}"),
                          "timestamp": "1733300000", "type": "text", "text": {"body": "where is my order?"}}]
        }}]}]
    })
    .to_string()
}

/// A fake Graph API: every send is reported on `sent` when it arrives.
async fn fake_graph_api() -> (String, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move || {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Instant::now());
            axum::Json(json!({"messaging_product": "whatsapp", "messages": [{"id": "wamid.out"}]}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

pub async fn channel_path(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
    const MESSAGES: u64 = 200;
    let (graph, mut sent) = fake_graph_api().await;
    let mut env = model_env(mock);
    env.push(("WHATSAPP_API_BASE_URL", graph));
    let s = start_server(bin, &env);
    let client = reqwest::Client::new();
    let channel = json!({"type": "whatsapp", "phoneNumberId": NUMBER, "accessToken": "token", "appSecret": SECRET,
                         "verifyToken": "verify"});
    let r = client.put(format!("{}/agent/tenants/tenant-1/channels/wa", s.url)).json(&channel).send().await;
    assert!(r.is_ok_and(|r| r.status().is_success()), "the channel is created");
    let (mut accepted, mut replied) = (histogram(), histogram());
    for n in 0..MESSAGES {
        let body = inbound(n);
        let started = Instant::now();
        let r = client
            .post(format!("{}/channels/whatsapp/webhook", s.url))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature(&body))
            .body(body)
            .send()
            .await
            .expect("the webhook answers");
        assert!(r.status().is_success(), "the webhook is accepted: {}", r.status());
        accepted.record(started.elapsed().as_micros() as u64).unwrap();
        let at = tokio::time::timeout(Duration::from_secs(10), sent.recv()).await.expect("a reply is sent").unwrap();
        replied.record(at.duration_since(started).as_micros() as u64).unwrap();
    }
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    report.row(
        "20. WhatsApp message, webhook answered / reply sent (p50, p99), SQLite, mock model",
        format!(
            "{:.2}, {:.2} / {:.2}, {:.2} ms ({MESSAGES} messages, one at a time)",
            ms(&accepted, 0.5),
            ms(&accepted, 0.99),
            ms(&replied, 0.5),
            ms(&replied, 0.99)
        ),
        "-",
        None,
    );
    report.json.insert(
        "channel".into(),
        json!({"accepted_p50_ms": ms(&accepted, 0.5), "accepted_p99_ms": ms(&accepted, 0.99),
               "replied_p50_ms": ms(&replied, 0.5), "replied_p99_ms": ms(&replied, 0.99)}),
    );
}
