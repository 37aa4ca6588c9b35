//! The counting DynamoDB proxy: forwards every request to dynalite, logs its operation and timing, and
//! can add a delay to each call so that sequential round trips become visible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

/// (start µs, end µs, operation) of every DynamoDB request that went through the proxy.
pub type CallLog = Arc<Mutex<Vec<(u64, u64, String)>>>;

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    log: CallLog,
    epoch: Instant,
    /// Added to every call (microseconds), to make round trips visible like a real network does.
    delay_us: Arc<AtomicU64>,
}

async fn forward(State(p): State<Proxy>, headers: HeaderMap, body: Bytes) -> Response {
    let start = p.epoch.elapsed().as_micros() as u64;
    let op = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_string();
    let mut req = p.client.post(&p.upstream).body(body);
    for (k, v) in &headers {
        if k != "content-length" {
            req = req.header(k, v);
        }
    }
    let delay = p.delay_us.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_micros(delay)).await;
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let ct = r.headers().get("content-type").cloned();
    let bytes = r.bytes().await.unwrap_or_default();
    p.log.lock().unwrap().push((start, p.epoch.elapsed().as_micros() as u64, op));
    let mut resp = Response::builder().status(status);
    if let Some(ct) = ct {
        resp = resp.header("content-type", ct);
    }
    resp.body(Body::from(bytes)).unwrap()
}

/// Starts the proxy to `upstream`: its URL, its call log, and the delay added to each call (µs).
pub async fn start_proxy(upstream: &str) -> (String, CallLog, Arc<AtomicU64>) {
    let log: CallLog = Arc::default();
    let epoch = Instant::now();
    let delay_us = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let proxy = Proxy { upstream: upstream.to_string(), client, log: log.clone(), epoch, delay_us: delay_us.clone() };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, log, delay_us)
}

/// Groups of overlapping calls = sequential round-trip phases.
pub fn phases(calls: &[(u64, u64, String)]) -> usize {
    let mut sorted = calls.to_vec();
    sorted.sort();
    let mut count = 0;
    let mut end = 0;
    for (s, e, _) in sorted {
        if count == 0 || s > end {
            count += 1;
            end = e;
        } else {
            end = end.max(e);
        }
    }
    count
}
