//! The benchmark harness: a mock OpenAI-compatible model, a load driver (closed and open loop, HDR
//! percentiles), dynalite and a counting proxy for DynamoDB, RSS and CPU sampling from /proc, and the
//! Node.js baseline. `agent-bench run` prints the figures of BENCHMARKS.md; `agent-bench smoke` is the
//! few-second version the tests run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "agent-bench", about = "Benchmarks agent-server against its targets")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every figure of BENCHMARKS.md (a few minutes), as a markdown table and JSON.
    Run {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Where dynalite and the baseline are installed (npm install in bench/).
        #[arg(long, default_value = "bench")]
        bench_dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A few seconds on SQLite, to keep the harness working (run by the tests).
    Smoke {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figure 6 (growth with the session's size and with other tenants' data).
    Growth {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only figures 3 and 4: idle memory and 1,000 concurrent streams.
    Streams {
        #[arg(long, default_value = "target/release/agent-server")]
        server: PathBuf,
    },
    /// Only the mock model, on a port.
    MockModel {
        #[arg(long, default_value_t = 8090)]
        port: u16,
        #[arg(long, default_value_t = 0)]
        ttft_ms: u64,
        #[arg(long, default_value_t = 0)]
        token_ms: u64,
        #[arg(long, default_value_t = 20)]
        tokens: usize,
    },
}

// ---- the mock model -----------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct MockModel {
    ttft: Duration,
    per_token: Duration,
    tokens: usize,
}

async fn completions(State(m): State<MockModel>, Json(body): Json<Value>) -> Response {
    let words: Vec<String> = (0..m.tokens).map(|i| format!("word{i} ")).collect();
    if body["stream"] != json!(true) {
        tokio::time::sleep(m.ttft + m.per_token * m.tokens as u32).await;
        return Json(json!({
            "model": "bench-mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": m.tokens}
        }))
        .into_response();
    }
    let stream = futures::stream::iter(words.into_iter().enumerate()).then(move |(i, w)| async move {
        tokio::time::sleep(if i == 0 { m.ttft } else { m.per_token }).await;
        let event = json!({"model": "bench-mock", "choices": [{"index": 0, "delta": {"content": w}}]});
        Ok::<_, std::io::Error>(Bytes::from(format!("data: {event}\n\n")))
    });
    let done = futures::stream::once(async { Ok(Bytes::from_static(b"data: [DONE]\n\n")) });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream.chain(done))).unwrap()
}

async fn start_mock(m: MockModel, port: u16) -> SocketAddr {
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(m);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ---- processes ----------------------------------------------------------------------------------

struct Proc {
    child: Child,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts agent-server and waits for its "listening on" line.
fn start_server(bin: &std::path::Path, env: &[(&str, String)]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::fs::canonicalize(bin)
        .unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build --release)", bin.display()));
    let mut cmd = Command::new(&bin);
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
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("agent-server started");
    Proc { child, url, _dir: Some(dir) }
}

/// Resident set size and peak, in KiB, from /proc.
fn rss_kib(pid: u32) -> (u64, u64) {
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
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

// ---- load ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    hist: Option<Histogram<u64>>,
    ok: u64,
    errors: u64,
    elapsed: f64,
    cpu: f64,
}

impl Stats {
    /// A percentile, in microseconds.
    fn p(&self, q: f64) -> f64 {
        self.hist.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64)
    }
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

/// Realistic traffic: tenants, users, sessions of several turns, messages of a few bytes to a few KB.
struct Traffic;

impl Traffic {
    fn message(n: u64) -> String {
        let len = match n % 10 {
            0..=5 => 8 + (n % 120) as usize,
            6..=8 => 200 + (n % 800) as usize,
            _ => 1000 + (n % 3000) as usize,
        };
        "hello agent ".repeat(len / 12 + 1)[..len].to_string()
    }
    fn who(n: u64) -> (String, String) {
        (format!("tenant-{}", n % 50), format!("user-{}", n % 5000))
    }
}

/// One turn; the latency in microseconds (or to the first delta when streaming), and the session.
async fn one_turn(
    client: &reqwest::Client,
    url: &str,
    n: u64,
    session: Option<&str>,
    stream: bool,
) -> Result<(u64, String), String> {
    let (tenant, user) = Traffic::who(n);
    let mut body = json!({"message": Traffic::message(n)});
    if let Some(s) = session {
        body["sessionId"] = json!(s);
    }
    if stream {
        body["stream"] = json!(true);
    }
    let started = Instant::now();
    let r = client
        .post(format!("{url}/agent/process"))
        .header("x-tenant-id", tenant)
        .header("x-user-id", user)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
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

/// Fixed concurrency for a duration; each worker runs sessions of 5 turns.
async fn closed_loop(url: &str, pid: Option<u32>, concurrency: usize, seconds: u64, stream: bool) -> Stats {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
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
                match one_turn(&client, &url, n, session.as_deref(), stream).await {
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
async fn open_loop(url: &str, rate: f64, seconds: u64) -> Stats {
    let client = reqwest::Client::new();
    let total = (rate * seconds as f64) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let r = one_turn(&client, &url, i * 7919, None, false).await;
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
async fn mock_own_latency(mock: SocketAddr, stream: bool, n: usize) -> Stats {
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

// ---- DynamoDB: dynalite and the counting proxy ---------------------------------------------------

fn start_dynalite(bench_dir: &std::path::Path) -> Proc {
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

/// (start µs, end µs, operation) of every DynamoDB request that went through the proxy.
type CallLog = Arc<Mutex<Vec<(u64, u64, String)>>>;

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

async fn start_proxy(upstream: &str) -> (String, CallLog, Arc<AtomicU64>) {
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
fn phases(calls: &[(u64, u64, String)]) -> usize {
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

fn dynamo_env(endpoint: &str, sessions: &str, messages: &str) -> Vec<(&'static str, String)> {
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

fn create_tables(bin: &std::path::Path, env: &[(&str, String)]) {
    let out = Command::new(bin)
        .args(["tables", "create"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "tables create: {}", String::from_utf8_lossy(&out.stderr));
}

// ---- figures ------------------------------------------------------------------------------------

struct Report {
    rows: Vec<(String, String, String, String)>,
    json: BTreeMap<String, Value>,
}

impl Report {
    fn row(&mut self, figure: &str, value: String, target: &str, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "-",
        };
        println!("| {figure} | {value} | {target} | {verdict} |");
        self.rows.push((figure.into(), value, target.into(), verdict.into()));
    }
}

fn model_env(mock: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("LLM_PROVIDER", "openai".into()),
        ("OPENAI_BASE_URL", format!("http://{mock}/v1")),
        ("LLM_MODEL", "bench".into()),
    ]
}

async fn run(bin: PathBuf, seconds: u64, bench_dir: PathBuf, out: Option<PathBuf>) {
    let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
    println!("| figure | measured | target | |\n|---|---|---|---|");
    let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;

    // 1 and 4: added latency at concurrency 1, idle RSS (SQLite, non-streaming).
    let s = start_server(&bin, &model_env(mock));
    let pid = s.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = rss_kib(pid);
    let own = mock_own_latency(mock, false, 2000).await;
    let c1 = closed_loop(&s.url, Some(pid), 1, seconds, false).await;
    let added = |q: f64| (c1.p(q) - own.p(0.5)).max(0.0);
    report.row(
        "1. added latency, c=1, SQLite (p50/p90/p99/p99.9)",
        format!("{:.0}/{:.0}/{:.0}/{:.0} µs", added(0.5), added(0.9), added(0.99), added(0.999)),
        "p99 ≤ 150 µs",
        Some(added(0.99) <= 150.0),
    );
    report.json.insert(
        "added_latency_us".into(),
        json!({"p50": added(0.5), "p90": added(0.9), "p99": added(0.99), "p999": added(0.999), "mock_p50": own.p(0.5)}),
    );
    report.row("4. RSS idle", format!("{:.1} MiB", idle_rss as f64 / 1024.0), "≤ 15 MiB", Some(idle_rss <= 15 * 1024));

    // 2: throughput on SQLite.
    for c in [16, 64] {
        let st = closed_loop(&s.url, Some(pid), c, seconds, false).await;
        let per_cpu = st.ok as f64 / st.cpu.max(0.001);
        let (target, met) = match c {
            16 => ("p99 < 10 ms", Some(st.p(0.99) < 10_000.0)),
            _ => ("≥ 5,000 turns/s", Some(st.rate() >= 5000.0)),
        };
        report.row(
            &format!("2. SQLite c={c}"),
            format!(
                "{:.0} turns/s, p99 {:.2} ms, {:.0} turns/CPU-s, {} errors",
                st.rate(),
                st.p(0.99) / 1000.0,
                per_cpu,
                st.errors
            ),
            target,
            met,
        );
        report.json.insert(
            format!("sqlite_c{c}"),
            json!({"turns_per_s": st.rate(), "p99_ms": st.p(0.99) / 1000.0, "turns_per_cpu_s": per_cpu}),
        );
    }
    let open = open_loop(&s.url, 1000.0, seconds).await;
    report.row(
        "2. SQLite open loop 1,000 turns/s (p50/p99)",
        format!("{:.2}/{:.2} ms, {} errors", open.p(0.5) / 1000.0, open.p(0.99) / 1000.0, open.errors),
        "-",
        None,
    );

    // 3: streaming time to first token.
    let own_stream = mock_own_latency(mock, true, 2000).await;
    let st = closed_loop(&s.url, Some(pid), 1, seconds, true).await;
    let ttft = |q: f64| (st.p(q) - own_stream.p(0.5)).max(0.0);
    report.row(
        "3. added time to first token, c=1 (p50/p99)",
        format!("{:.0}/{:.0} µs", ttft(0.5), ttft(0.99)),
        "≤ 250 µs",
        Some(ttft(0.99) <= 250.0),
    );
    drop(s);

    streams(&bin, &mut report).await;

    // 2, 5 and 7: DynamoDB on dynalite.
    if !bench_dir.join("node_modules/dynalite/cli.js").exists() {
        println!("(skipping DynamoDB figures: run `npm install` in {})", bench_dir.display());
    } else {
        let dynalite = start_dynalite(&bench_dir);
        let (proxy_url, calls, delay_us) = start_proxy(&dynalite.url).await;
        let mut env = dynamo_env(&proxy_url, "bench-sessions", "bench-messages");
        create_tables(&bin, &env);
        env.extend(model_env(mock));
        let s = start_server(&bin, &env);
        let pid = s.child.id();
        // Requests and phases per turn, at concurrency 1, from the proxy's log.
        // With 5 ms added to every call, as a network would: calls made together overlap, sequential
        // ones do not, so the proxy's log shows the round-trip phases.
        delay_us.store(5000, Ordering::Relaxed);
        let client = reqwest::Client::new();
        let mut continuing = Vec::new();
        let mut starting = Vec::new();
        for k in 0..20u64 {
            let mut session: Option<String> = None;
            for t in 0..3 {
                calls.lock().unwrap().clear();
                let (_, sid) = one_turn(&client, &s.url, 900_000 + k, session.as_deref(), false).await.unwrap();
                let log = calls.lock().unwrap().clone();
                if t == 0 {
                    starting.push(log)
                } else {
                    continuing.push(log)
                }
                session = Some(sid);
            }
        }
        delay_us.store(0, Ordering::Relaxed);
        for (name, logs) in [("continuing a session (sessionId given)", &continuing), ("starting a session", &starting)]
        {
            let mut ops: BTreeMap<String, usize> = BTreeMap::new();
            for log in logs.iter() {
                for (_, _, op) in log {
                    *ops.entry(op.clone()).or_default() += 1;
                }
            }
            let per_turn: Vec<String> =
                ops.iter().map(|(op, n)| format!("{} {op}", *n as f64 / logs.len() as f64)).collect();
            let total: f64 = ops.values().sum::<usize>() as f64 / logs.len() as f64;
            let phase = logs.iter().map(|l| phases(l)).max().unwrap_or(0);
            report.row(
                &format!("5. DynamoDB requests per turn, {name}"),
                format!("{total} ({}); {phase} sequential phases", per_turn.join(", ")),
                "≤ 5 requests; 1 phase before and 1 after the model",
                Some(total <= 5.0 && phase <= 2),
            );
            if name.starts_with("continuing") {
                let reads = ops
                    .iter()
                    .filter(|(op, _)| matches!(op.as_str(), "GetItem" | "Query"))
                    .map(|(_, n)| *n)
                    .sum::<usize>() as f64
                    / logs.len() as f64;
                let writes = total - reads;
                // On-demand list prices (us-east-1): $0.125 per million reads, $0.625 per million writes (items ≤ 1 KB / 4 KB).
                let cost = reads * 0.125 + writes * 0.625;
                report.row(
                    "5. on-demand cost per million turns (continuing)",
                    format!("${cost:.2} ({reads} reads, {writes} writes per turn)"),
                    "-",
                    None,
                );
            }
        }
        for c in [16, 64] {
            let st = closed_loop(&s.url, Some(pid), c, seconds, false).await;
            let per_cpu = st.ok as f64 / st.cpu.max(0.001);
            report.row(
                &format!("2. DynamoDB (dynalite) c={c}"),
                format!(
                    "{:.0} turns/s, p99 {:.2} ms, {:.0} turns per server CPU-s, {} errors",
                    st.rate(),
                    st.p(0.99) / 1000.0,
                    per_cpu,
                    st.errors
                ),
                "≥ 1,500 turns per server CPU-s",
                Some(per_cpu >= 1500.0),
            );
            report.json.insert(
                format!("dynamodb_c{c}"),
                json!({"turns_per_s": st.rate(), "p99_ms": st.p(0.99) / 1000.0, "turns_per_cpu_s": per_cpu}),
            );
        }
        let ours = report.json.get("dynamodb_c16").and_then(|v| v["turns_per_cpu_s"].as_f64()).unwrap_or(0.0);
        drop(s);
        // 7: the Node.js baseline on the same dynalite.
        let port = free_port();
        let baseline = Command::new("node")
            .arg(bench_dir.join("baseline/server.js"))
            .env("PORT", port.to_string())
            .env("DYNAMODB_ENDPOINT", &dynalite.url)
            .env("DYNAMODB_SESSIONS_TABLE", "bench-sessions")
            .env("DYNAMODB_MESSAGES_TABLE", "bench-messages")
            .env("MODEL_URL", format!("http://{mock}/v1/chat/completions"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(child) = baseline {
            let b = Proc { child, url: format!("http://127.0.0.1:{port}"), _dir: None };
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let st = closed_loop(&b.url, Some(b.child.id()), 16, seconds, false).await;
            let theirs = st.ok as f64 / st.cpu.max(0.001);
            report.row(
                "7. Node.js/Express + AWS SDK v3 baseline, c=16",
                format!(
                    "{:.0} turns/s, {:.0} turns per server CPU-s, {} errors; ratio {:.1}x",
                    st.rate(),
                    theirs,
                    st.errors,
                    ours / theirs.max(0.001)
                ),
                "≥ 5x",
                Some(ours / theirs.max(0.001) >= 5.0),
            );
        }
    }

    // 6: growth with data the request does not touch (SQLite).
    growth(&bin, mock, &mut report).await;
    growth_tenants(&bin, mock, &mut report).await;

    if let Some(out) = out {
        let json = json!({"rows": report.rows, "figures": report.json});
        std::fs::write(out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
}

/// Turn and read latency with 10, 1,000 and 10,000 messages in the session, and with other tenants'
/// data in the store.
async fn growth(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
    let s = start_server(bin, &model_env(mock));
    let client = reqwest::Client::new();
    let mut session: Option<String> = None;
    let mut sent = 0u64;
    for target in [10u64, 1000, 10_000] {
        while sent * 2 < target {
            let (_, sid) = one_turn(&client, &s.url, 42, session.as_deref(), false).await.unwrap();
            session = Some(sid);
            sent += 1;
        }
        let sid = session.clone().unwrap();
        let mut turn = histogram();
        let mut read = histogram();
        for _ in 0..200 {
            let (us, _) = one_turn(&client, &s.url, 42, Some(&sid), false).await.unwrap();
            turn.record(us).unwrap();
            let t = Instant::now();
            let (tenant, user) = Traffic::who(42);
            let r = client.get(format!("{}/agent/conversations/{tenant}/users/{user}", s.url)).send().await.unwrap();
            let _ = r.bytes().await;
            read.record(t.elapsed().as_micros() as u64).unwrap();
        }
        sent += 200;
        report.row(
            &format!("6. session with {target} messages: turn / conversation read p50"),
            format!(
                "{:.2} / {:.2} ms",
                turn.value_at_quantile(0.5) as f64 / 1000.0,
                read.value_at_quantile(0.5) as f64 / 1000.0
            ),
            "flat as data grows",
            None,
        );
    }
}

/// Turn and conversation-read latency when the store holds 1 and 100 tenants with 10,000 sessions
/// each (written straight into the SQLite file, then served).
async fn growth_tenants(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
    use agent_server::ids::{SessionId, TenantId, UserId};
    use agent_server::store::{ConversationStore, Session, sqlite::SqliteStore};
    for tenants in [1usize, 100] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("growth.db");
        {
            let store = Arc::new(SqliteStore::open(db.clone()).unwrap());
            let now = agent_server::timestamp::now();
            let writes = futures::stream::iter(0..tenants * 10_000).map(|i| {
                let store = store.clone();
                let now = now.clone();
                async move {
                    let session = Session {
                        id: SessionId::generate(),
                        tenant_id: TenantId::parse(format!("tenant-{}", i % tenants)).unwrap(),
                        user_id: UserId::parse(format!("filler-{}", (i / tenants) % 1000)).unwrap(),
                        location_id: None,
                        is_active: false,
                        created_at: now.clone(),
                        updated_at: now,
                        metadata: None,
                        last_message_at: None,
                        expires_at: None,
                    };
                    store.import_session(session).await.unwrap();
                }
            });
            writes.buffer_unordered(16).collect::<Vec<_>>().await;
        }
        let mut env = model_env(mock);
        env.push(("SQLITE_PATH", db.to_string_lossy().into_owned()));
        let s = start_server(bin, &env);
        let client = reqwest::Client::new();
        let mut turn = histogram();
        let mut read = histogram();
        let mut session: Option<String> = None;
        for i in 0..300u64 {
            let body = json!({"message": Traffic::message(i), "sessionId": session});
            let t = Instant::now();
            let v: Value = client
                .post(format!("{}/agent/process", s.url))
                .header("x-tenant-id", "tenant-0")
                .header("x-user-id", "filler-7")
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            turn.record(t.elapsed().as_micros() as u64).unwrap();
            session = v["sessionId"].as_str().map(str::to_string);
            let t = Instant::now();
            let _ = client
                .get(format!("{}/agent/conversations/tenant-0/users/filler-7", s.url))
                .send()
                .await
                .unwrap()
                .bytes()
                .await;
            read.record(t.elapsed().as_micros() as u64).unwrap();
        }
        report.row(
            &format!("6. {tenants} tenant(s) x 10,000 sessions: turn / conversation read p50"),
            format!(
                "{:.2} / {:.2} ms",
                turn.value_at_quantile(0.5) as f64 / 1000.0,
                read.value_at_quantile(0.5) as f64 / 1000.0
            ),
            "flat as other tenants' data grows",
            None,
        );
    }
}

/// Idle memory, and 1,000 concurrent streams held open by a slow model.
async fn streams(bin: &std::path::Path, report: &mut Report) {
    let slow = start_mock(
        MockModel { ttft: Duration::from_millis(200), per_token: Duration::from_millis(100), tokens: 20 },
        0,
    )
    .await;
    let s = start_server(bin, &model_env(slow));
    let pid = s.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, _) = rss_kib(pid);
    println!("| idle RSS before the streams | {:.1} MiB | | |", idle as f64 / 1024.0);
    let client = reqwest::Client::builder().pool_max_idle_per_host(1000).build().unwrap();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let streams = futures::future::join_all((0..1000u64).map(|i| {
        let (client, url) = (client.clone(), s.url.clone());
        async move { one_turn(&client, &url, i * 13, None, true).await }
    }))
    .await;
    sampling.abort();
    let completed = streams.iter().filter(|r| r.is_ok()).count();
    report.row(
        "3. 1,000 concurrent SSE streams (slow model, 2.1 s each)",
        format!("{completed} of 1000 complete"),
        "all complete",
        Some(completed == 1000),
    );
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    report.row("4. RSS at 1,000 concurrent streams", format!("{peak_mib:.1} MiB"), "≤ 64 MiB", Some(peak_mib <= 64.0));
    drop(s);
}

async fn smoke(bin: PathBuf) {
    let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 10 }, 0).await;
    let s = start_server(&bin, &model_env(mock));
    let pid = s.child.id();
    let st = closed_loop(&s.url, Some(pid), 4, 2, false).await;
    let streamed = closed_loop(&s.url, Some(pid), 2, 1, true).await;
    let open = open_loop(&s.url, 100.0, 1).await;
    let (rss, _) = rss_kib(pid);
    println!(
        "smoke: {} turns ({:.0}/s, p99 {:.2} ms, {:.0} turns/CPU-s), {} streamed, {} open-loop, RSS {:.1} MiB, errors {}",
        st.ok,
        st.rate(),
        st.p(0.99) / 1000.0,
        st.ok as f64 / st.cpu.max(0.001),
        streamed.ok,
        open.ok,
        rss as f64 / 1024.0,
        st.errors + streamed.errors + open.errors
    );
    assert!(st.ok > 0 && streamed.ok > 0 && open.ok > 0 && rss > 0);
    assert_eq!(st.errors + streamed.errors + open.errors, 0);
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Cmd::Run { server, seconds, bench_dir, out } => run(server, seconds, bench_dir, out).await,
        Cmd::Smoke { server } => smoke(server).await,
        Cmd::Streams { server } => {
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            streams(&server, &mut report).await;
        }
        Cmd::Growth { server } => {
            let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
            let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
            println!("| figure | measured | target | |\n|---|---|---|---|");
            growth(&server, mock, &mut report).await;
            growth_tenants(&server, mock, &mut report).await;
        }
        Cmd::MockModel { port, ttft_ms, token_ms, tokens } => {
            let addr = start_mock(
                MockModel { ttft: Duration::from_millis(ttft_ms), per_token: Duration::from_millis(token_ms), tokens },
                port,
            )
            .await;
            println!("mock model on http://{addr}/v1");
            std::future::pending::<()>().await;
        }
    }
}
