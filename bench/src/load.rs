//! The load driver: realistic traffic, one turn, closed loop (fixed concurrency) and open loop (fixed
//! arrival rate), and the latency statistics (HDR histograms).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::processes::cpu_seconds;

#[derive(Default)]
pub struct Stats {
    pub hist: Option<Histogram<u64>>,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: f64,
    pub cpu: f64,
}

impl Stats {
    /// A percentile, in microseconds.
    pub fn p(&self, q: f64) -> f64 {
        self.hist.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64)
    }
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

/// What the load sends: JSON turns of the mixed workload, the same streamed, or JSON turns of short
/// messages only (8 to 64 bytes, where a turn's fixed costs show).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Json,
    Streamed,
    Short,
    /// A JSON turn through the OpenAI Responses adapter (`POST /v1/responses` in a conversation).
    OpenAi,
}

/// Realistic traffic: tenants, users, sessions of several turns, messages of a few bytes to a few KB.
pub struct Traffic;

impl Traffic {
    pub fn message(n: u64) -> String {
        Self::message_for(Mode::Json, n)
    }
    pub fn message_for(mode: Mode, n: u64) -> String {
        let len = match (mode, n % 10) {
            (Mode::Short, _) => 8 + (n % 57) as usize,
            (_, 0..=5) => 8 + (n % 120) as usize,
            (_, 6..=8) => 200 + (n % 800) as usize,
            _ => 1000 + (n % 3000) as usize,
        };
        "hello agent ".repeat(len / 12 + 1)[..len].to_string()
    }
    /// A turn's tenant and user. `n` carries its run in the billions (see `first_turn`): each run
    /// has users of its own, so a run does not continue (and read the longer histories of) the
    /// sessions an earlier run left active.
    pub fn who(n: u64) -> (String, String) {
        (format!("tenant-{}", n % 50), format!("user-{}-{}", n / RUN_SPAN, n % 5000))
    }
}

/// A turn's request as a tenant's user; a status other than 2xx is an error.
async fn post(
    client: &reqwest::Client,
    url: &str,
    (tenant, user): (&str, &str),
    body: &Value,
) -> Result<reqwest::Response, String> {
    let r = client
        .post(url)
        .header("x-tenant-id", tenant)
        .header("x-user-id", user)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match r.status().is_success() {
        true => Ok(r),
        false => Err(format!("status {}", r.status())),
    }
}

/// A turn as a Responses API request (`POST /v1/responses`, in the conversation of `session`, or a
/// new one); the latency and the session.
async fn openai_turn(
    client: &reqwest::Client,
    url: &str,
    (tenant, user): (&str, &str),
    message: String,
    session: Option<&str>,
) -> Result<(u64, String), String> {
    let mut body = json!({"model": "any-model", "input": message});
    if let Some(s) = session {
        body["conversation"] = json!(format!("conv_{s}"));
    }
    let started = Instant::now();
    let r = post(client, &format!("{url}/v1/responses"), (tenant, user), &body).await?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    let us = started.elapsed().as_micros() as u64;
    let conv = v["conversation"]["id"].as_str().unwrap_or_default();
    Ok((us, conv.strip_prefix("conv_").unwrap_or(conv).to_string()))
}

/// One turn; the latency in microseconds (or to the first delta when streaming), and the session.
pub async fn one_turn(
    client: &reqwest::Client,
    url: &str,
    n: u64,
    session: Option<&str>,
    mode: Mode,
) -> Result<(u64, String), String> {
    let stream = mode == Mode::Streamed;
    let (tenant, user) = Traffic::who(n);
    if mode == Mode::OpenAi {
        return openai_turn(client, url, (&tenant, &user), Traffic::message_for(mode, n), session).await;
    }
    let mut body = json!({"message": Traffic::message_for(mode, n)});
    if let Some(s) = session {
        body["sessionId"] = json!(s);
    }
    if stream {
        body["stream"] = json!(true);
    }
    let started = Instant::now();
    let r = post(client, &format!("{url}/agent/process"), (&tenant, &user), &body).await?;
    if !stream {
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        let us = started.elapsed().as_micros() as u64;
        return Ok((us, v["sessionId"].as_str().unwrap_or_default().to_string()));
    }
    let mut first = None;
    let mut text = String::new();
    let mut chunks = r.bytes_stream();
    while let Some(c) = chunks.next().await {
        text.push_str(&String::from_utf8_lossy(&c.map_err(|e| e.to_string())?));
        if first.is_none() && text.contains("event: delta") {
            first = Some(started.elapsed().as_micros() as u64);
        }
    }
    if !text.contains("event: done") {
        return Err("stream ended without done".into());
    }
    let sid = text.split("\"sessionId\":\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or_default().to_string();
    Ok((first.unwrap_or(0), sid))
}

/// Turn numbers per run: users repeat within a run only after 5,000 sessions, and runs never share
/// users below a billion turns (an open loop spreads its turns 7,919 apart: 126,000 turns a run).
const RUN_SPAN: u64 = 1_000_000_000;
static RUNS: AtomicU64 = AtomicU64::new(1);

/// The first turn number of a new run (its users are the run's own).
fn first_turn() -> u64 {
    RUNS.fetch_add(1, Ordering::Relaxed) * RUN_SPAN
}

/// Fixed concurrency for a duration; each worker runs sessions of 5 turns.
pub async fn closed_loop(url: &str, pid: Option<u32>, concurrency: usize, seconds: u64, mode: Mode) -> Stats {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let counter = Arc::new(AtomicU64::new(first_turn()));
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = pid.map(cpu_seconds).unwrap_or(0.0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, counter, hist, errors) =
            (client.clone(), url.to_string(), counter.clone(), hist.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut session: Option<String> = None;
            let mut turn_in_session = 0;
            // Each session belongs to one (tenant, user) and lasts five turns.
            let mut n = counter.fetch_add(1, Ordering::Relaxed);
            while Instant::now() < deadline {
                match one_turn(&client, &url, n, session.as_deref(), mode).await {
                    Ok((us, sid)) => {
                        let _ = local.record(us.max(1));
                        turn_in_session += 1;
                        session = Some(sid);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        turn_in_session = 5;
                    }
                }
                if turn_in_session >= 5 {
                    turn_in_session = 0;
                    session = None;
                    n = counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist.lock().unwrap().add(&local).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hist = Arc::try_unwrap(hist).ok().unwrap().into_inner().unwrap();
    Stats {
        ok: hist.len(),
        hist: Some(hist),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        cpu: pid.map(cpu_seconds).unwrap_or(0.0) - cpu0,
    }
}

/// Fixed arrival rate: latency counts from when each request was due, so a slow server cannot hide
/// its queueing (no coordinated omission).
pub async fn open_loop(url: &str, rate: f64, seconds: u64) -> Stats {
    let client = reqwest::Client::new();
    let total = (rate * seconds as f64) as u64;
    let base = first_turn();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let r = one_turn(&client, &url, base + i * 7919, None, Mode::Json).await;
            r.map(|_| due.elapsed().as_micros() as u64)
        }));
    }
    let mut hist = histogram();
    let mut errors = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(us) => hist.record(us.max(1)).unwrap(),
            Err(_) => errors += 1,
        }
    }
    Stats { ok: hist.len(), hist: Some(hist), errors, elapsed: started.elapsed().as_secs_f64(), cpu: 0.0 }
}

/// The mock model's own latency, measured directly (to subtract from the server's).
pub async fn mock_own_latency(mock: SocketAddr, stream: bool, n: usize) -> Stats {
    let client = reqwest::Client::new();
    let mut hist = histogram();
    let started = Instant::now();
    for i in 0..n {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": Traffic::message(i as u64)}], "stream": stream});
        let t = Instant::now();
        let r = client.post(format!("http://{mock}/v1/chat/completions")).json(&body).send().await.unwrap();
        if stream {
            let mut s = r.bytes_stream();
            let _ = s.next().await;
            hist.record(t.elapsed().as_micros() as u64).unwrap();
            while s.next().await.is_some() {}
        } else {
            let _ = r.bytes().await;
            hist.record(t.elapsed().as_micros() as u64).unwrap();
        }
    }
    Stats { ok: n as u64, hist: Some(hist), errors: 0, elapsed: started.elapsed().as_secs_f64(), cpu: 0.0 }
}
