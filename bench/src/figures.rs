//! The figures of BENCHMARKS.md: `agent-bench run` (all of them), `growth` (figure 6) and `streams`
//! (figures 3 and 4), printed as a markdown table and collected as JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::load::{Mode, Traffic, closed_loop, histogram, mock_own_latency, one_turn, open_loop};
use crate::mock_model::{MockModel, model_env, start_mock};
use crate::processes::{Proc, create_tables, dynamo_env, free_port, rss_kib, start_dynalite, start_server};
use crate::proxy::{phases, start_proxy};

/// The rows printed so far (figure, measured, target, verdict), and the figures as JSON for `--out`.
pub struct Report {
    pub rows: Vec<(String, String, String, String)>,
    pub json: BTreeMap<String, Value>,
}

impl Report {
    pub fn row(&mut self, figure: &str, value: String, target: &str, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "-",
        };
        println!("| {figure} | {value} | {target} | {verdict} |");
        self.rows.push((figure.into(), value, target.into(), verdict.into()));
    }
}

pub async fn run(bin: PathBuf, seconds: u64, bench_dir: PathBuf, out: Option<PathBuf>) {
    let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
    println!("| figure | measured | target | |\n|---|---|---|---|");
    let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;

    // 1 and 4: added latency at concurrency 1, idle RSS (SQLite, non-streaming).
    let s = start_server(&bin, &model_env(mock));
    let pid = s.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = rss_kib(pid);
    let own = mock_own_latency(mock, false, 2000).await;
    let c1 = closed_loop(&s.url, Some(pid), 1, seconds, Mode::Json).await;
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
        let st = closed_loop(&s.url, Some(pid), c, seconds, Mode::Json).await;
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
    let st = closed_loop(&s.url, Some(pid), 1, seconds, Mode::Streamed).await;
    let ttft = |q: f64| (st.p(q) - own_stream.p(0.5)).max(0.0);
    report.row(
        "3. added time to first token, c=1 (p50/p99)",
        format!("{:.0}/{:.0} µs", ttft(0.5), ttft(0.99)),
        "≤ 250 µs",
        Some(ttft(0.99) <= 250.0),
    );
    drop(s);

    streams(&bin, &mut report).await;
    memory(&bin, &bench_dir, 60, &mut report).await;

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
                let (_, sid) = one_turn(&client, &s.url, 900_000 + k, session.as_deref(), Mode::Json).await.unwrap();
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
        // The same continuing turns once every tenant has a default agent: a turn reads no agent
        // item (each server keeps them and follows their change log).
        for t in 0..50 {
            let body = json!({"systemPrompt": "You are a helpful assistant.", "default": true});
            let r = client.put(format!("{}/agent/tenants/tenant-{t}/agents/desk", s.url)).json(&body).send().await;
            assert!(r.is_ok_and(|r| r.status().is_success()), "an agent for tenant-{t}");
        }
        delay_us.store(5000, Ordering::Relaxed);
        let mut with_agent = Vec::new();
        for k in 0..20u64 {
            let mut session: Option<String> = None;
            for t in 0..3 {
                calls.lock().unwrap().clear();
                let (_, sid) = one_turn(&client, &s.url, 950_000 + k, session.as_deref(), Mode::Json).await.unwrap();
                if t > 0 {
                    with_agent.push(calls.lock().unwrap().clone());
                }
                session = Some(sid);
            }
        }
        delay_us.store(0, Ordering::Relaxed);
        let requests = with_agent.iter().map(Vec::len).sum::<usize>() as f64 / with_agent.len() as f64;
        report.row(
            "5. DynamoDB requests per turn with a tenant agent, continuing a session",
            format!("{requests}"),
            "4 (as without)",
            Some(requests <= 4.0),
        );
        // Short messages (8 to 64 bytes) too, where a turn's fixed costs show.
        for (c, mode, workload, key) in [
            (16, Mode::Json, "", "dynamodb_c16"),
            (64, Mode::Json, "", "dynamodb_c64"),
            (16, Mode::Short, ", short messages", "dynamodb_c16_short"),
        ] {
            let st = closed_loop(&s.url, Some(pid), c, seconds, mode).await;
            let per_cpu = st.ok as f64 / st.cpu.max(0.001);
            report.row(
                &format!("2. DynamoDB (dynalite) c={c}{workload}"),
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
                key.to_string(),
                json!({"turns_per_s": st.rate(), "p99_ms": st.p(0.99) / 1000.0, "turns_per_cpu_s": per_cpu}),
            );
        }
        let ours_short =
            report.json.get("dynamodb_c16_short").and_then(|v| v["turns_per_cpu_s"].as_f64()).unwrap_or(0.0);
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
            for (mode, ours, workload) in [(Mode::Json, ours, "mixed"), (Mode::Short, ours_short, "short messages")] {
                let st = closed_loop(&b.url, Some(b.child.id()), 16, seconds, mode).await;
                let theirs = st.ok as f64 / st.cpu.max(0.001);
                report.row(
                    &format!("7. Node.js/Express + AWS SDK v3 baseline, c=16, {workload}"),
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
    }

    // 6: growth with data the request does not touch (SQLite).
    growth(&bin, mock, &mut report).await;
    growth_tenants(&bin, mock, &mut report).await;

    // 9: context summaries; 10: search over a million messages.
    summaries(&bin, &mut report).await;
    burst(&bin, &mut report).await;
    usage_cost(&bin, &bench_dir, &mut report).await;
    search(&bin, mock, &mut report).await;
    // 12, 13: streamed turns and webhooks; 14: instructions per turn.
    features(&bin, mock, seconds, &mut report).await;
    instructions(&bin, mock, &mut report).await;
    crate::protocols::openai_against_native(&bin, mock, &mut report).await;
    crate::protocols::channel_path(&bin, mock, &mut report).await;

    if let Some(out) = out {
        let json = json!({"rows": report.rows, "figures": report.json});
        std::fs::write(out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
}

/// Turn and read latency with 10, 1,000 and 10,000 messages in the session, and with other tenants'
/// data in the store.
pub async fn growth(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
    let s = start_server(bin, &model_env(mock));
    let client = reqwest::Client::new();
    let mut session: Option<String> = None;
    let mut sent = 0u64;
    for target in [10u64, 1000, 10_000] {
        while sent * 2 < target {
            let (_, sid) = one_turn(&client, &s.url, 42, session.as_deref(), Mode::Json).await.unwrap();
            session = Some(sid);
            sent += 1;
        }
        let sid = session.clone().unwrap();
        let mut turn = histogram();
        let mut read = histogram();
        for _ in 0..200 {
            let (us, _) = one_turn(&client, &s.url, 42, Some(&sid), Mode::Json).await.unwrap();
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
pub async fn growth_tenants(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
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
                        context_summary: None,
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
pub async fn streams(bin: &std::path::Path, report: &mut Report) {
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
        async move { one_turn(&client, &url, i * 13, None, Mode::Streamed).await }
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

/// The sum of a Prometheus counter's samples (all label sets) in the server's `/metrics`.
async fn counter(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Figure 9, context summaries: one long session, 300 turns, with summaries off and on (window
/// 20, keep 10, so a summary every 5 turns); the turns' latency, and what a summary costs in model
/// calls and store calls. The summariser runs after the answer, so a turn's latency should not move.
pub async fn summaries(bin: &std::path::Path, report: &mut Report) {
    // A model that takes 20 ms, so a summary running in the background overlaps the next turn.
    let mock =
        start_mock(MockModel { ttft: Duration::from_millis(20), per_token: Duration::ZERO, tokens: 20 }, 0).await;
    let client = reqwest::Client::new();
    let mut figures = Vec::new();
    for on in [false, true] {
        let mut env = model_env(mock);
        env.push(("HISTORY_MAX_MESSAGES", "20".into()));
        if on {
            env.push(("CONTEXT_SUMMARY_TRIGGER_TOKENS", "1000000".into()));
            env.push(("CONTEXT_SUMMARY_KEEP_MESSAGES", "10".into()));
        }
        let s = start_server(bin, &env);
        let calls_before = crate::mock_model::CALLS.load(std::sync::atomic::Ordering::SeqCst);
        let mut latency = histogram();
        let mut session: Option<String> = None;
        let turns = 300u64;
        for _ in 0..turns {
            let (us, sid) = one_turn(&client, &s.url, 7, session.as_deref(), Mode::Json).await.unwrap();
            session = Some(sid);
            latency.record(us).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let model_calls = crate::mock_model::CALLS.load(std::sync::atomic::Ordering::SeqCst) - calls_before;
        let store_calls = counter(&s.url, "storage_calls_total").await;
        let stored = counter(&s.url, "context_summaries_total").await;
        figures.push((latency, model_calls, store_calls, stored, turns));
    }
    let (off, on) = (&figures[0], &figures[1]);
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    report.row(
        "9. turn latency, summaries off / on (p50, p99)",
        format!("{:.1}, {:.1} / {:.1}, {:.1} ms", ms(&off.0, 0.5), ms(&off.0, 0.99), ms(&on.0, 0.5), ms(&on.0, 0.99)),
        "no added latency",
        Some(ms(&on.0, 0.5) <= ms(&off.0, 0.5) * 1.1 + 0.2),
    );
    let summaries = on.3.max(1.0);
    report.row(
        "9. a summary: model calls / store calls (SQLite)",
        format!(
            "{:.2} / {:.1} ({:.0} summaries in {} turns)",
            (on.1 - on.4) as f64 / summaries,
            (on.2 - off.2) / summaries,
            on.3,
            on.4
        ),
        "1 model call",
        Some(((on.1 - on.4) as f64 / summaries - 1.0).abs() < 0.01),
    );
    report.json.insert(
        "summaries".into(),
        json!({"turn_p50_ms_off": ms(&off.0, 0.5), "turn_p50_ms_on": ms(&on.0, 0.5), "turn_p99_ms_off": ms(&off.0, 0.99),
               "turn_p99_ms_on": ms(&on.0, 0.99), "summaries": on.3, "model_calls_per_summary": (on.1 - on.4) as f64 / summaries,
               "store_calls_per_summary": (on.2 - off.2) / summaries}),
    );
}

/// Figure 10, search: a SQLite store of one million messages (10 tenants, 1,000 users, 10,000
/// sessions of 100 messages, words drawn from a 5,000-word vocabulary with a Zipf-like skew), then
/// searches through HTTP: a user's messages for a common and a rare word and a phrase, and the
/// tenant's messages for a rare word.
pub async fn search(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
    use agent_server::ids::{MessageId, TenantId, UserId};
    use agent_server::store::{ConversationStore, NewMessage, NewSession, Role, sqlite::SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("search.db");
    let vocabulary: Vec<String> = (0..5000).map(|i| format!("w{i:04}")).collect();
    // A word of rank r is drawn about 1/r as often (a cheap, deterministic Zipf-like skew).
    let word = |seed: u64| {
        let x = (seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) % 1_000_000;
        let rank = ((5000f64).powf(x as f64 / 1_000_000.0) as usize).clamp(1, 5000) - 1;
        vocabulary[rank].clone()
    };
    let started = Instant::now();
    {
        let store = Arc::new(SqliteStore::open(db.clone()).unwrap());
        let writes = futures::stream::iter(0..10_000u64).map(|session| {
            let store = store.clone();
            let texts: Vec<String> = (0..100u64)
                .map(|m| (0..12u64).map(|w| word(session * 10_000 + m * 100 + w)).collect::<Vec<_>>().join(" "))
                .collect();
            async move {
                let user = UserId::parse(format!("user-{}", session % 1000)).unwrap();
                let new = NewSession {
                    tenant_id: TenantId::parse(format!("tenant-{}", session % 10)).unwrap(),
                    user_id: user.clone(),
                    location_id: None,
                    metadata: None,
                };
                let messages = texts
                    .into_iter()
                    .enumerate()
                    .map(|(i, content)| NewMessage {
                        id: MessageId::generate(),
                        user_id: user.clone(),
                        role: if i % 2 == 0 { Role::User } else { Role::Agent },
                        content,
                        metadata: None,
                        counted: None,
                    })
                    .collect();
                store.create_session_with(new, messages).await.unwrap();
            }
        });
        writes.buffer_unordered(4).collect::<Vec<_>>().await;
    }
    let file_mib = |suffix: &str| {
        let path = format!("{}{suffix}", db.display());
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0
    };
    println!(
        "| (search store: 1,000,000 messages written in {:.0} s; database {:.0} MiB, WAL {:.0} MiB) | | | |",
        started.elapsed().as_secs_f64(),
        file_mib(""),
        file_mib("-wal")
    );
    let mut env = model_env(mock);
    env.push(("SQLITE_PATH", db.to_string_lossy().into_owned()));
    let s = start_server(bin, &env);
    let client = reqwest::Client::new();
    let queries = [
        ("a user, a common word", "/agent/conversations/tenant-3/users/user-3/search?q=w0001"),
        ("a user, a rare word", "/agent/conversations/tenant-3/users/user-3/search?q=w3999"),
        ("a user, a phrase", "/agent/conversations/tenant-3/users/user-3/search?q=%22w0002%20w0003%22"),
        ("a tenant, a rare word", "/agent/conversations/tenant-3/search?q=w4321"),
        ("a tenant, a common word, best first", "/agent/conversations/tenant-3/search?q=w0005"),
        ("a tenant, a common word, newest first", "/agent/conversations/tenant-3/search?q=w0005&order=recent"),
    ];
    // The build wrote the messages without indexing them (the server indexes in batches): the
    // first search indexes all that is pending.
    let t = Instant::now();
    let r = client.get(format!("{}{}", s.url, queries[1].1)).send().await.unwrap();
    assert!(r.status().is_success());
    let _ = r.bytes().await;
    println!(
        "| (the first search indexed the build's 1,000,000 messages in {:.1} s; database now {:.0} MiB) | | | |",
        t.elapsed().as_secs_f64(),
        file_mib("") + file_mib("-wal")
    );
    let mut all = histogram();
    let mut json_rows = Vec::new();
    for (name, path) in queries {
        let mut h = histogram();
        for _ in 0..200 {
            let t = Instant::now();
            let r = client.get(format!("{}{path}", s.url)).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            let _ = r.bytes().await;
            let us = t.elapsed().as_micros() as u64;
            h.record(us).unwrap();
            all.record(us).unwrap();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        report.row(
            &format!("10. search, 1M messages: {name} (p50/p99)"),
            format!("{:.2} / {:.2} ms", ms(0.5), ms(0.99)),
            "p99 < 50 ms",
            Some(ms(0.99) < 50.0),
        );
        json_rows.push(json!({"query": name, "p50_ms": ms(0.5), "p99_ms": ms(0.99)}));
    }
    report.json.insert("search_1m".into(), json!(json_rows));
}

/// A local webhook receiver that acknowledges every delivery and counts them.
pub(crate) struct Receiver {
    url: String,
    delivered: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<Instant>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let delivered = Arc::new(AtomicU64::new(0));
        let last = Arc::new(std::sync::Mutex::new(Instant::now()));
        let app = {
            let (delivered, last) = (delivered.clone(), last.clone());
            axum::Router::new().route(
                "/hooks",
                axum::routing::post(move || {
                    let (delivered, last) = (delivered.clone(), last.clone());
                    async move {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        *last.lock().unwrap() = Instant::now();
                        axum::http::StatusCode::NO_CONTENT
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, delivered, last }
    }

    /// The server's configuration for one webhook to this receiver.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WEBHOOK_URL", self.url.clone()),
            ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            ("WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ]
    }

    /// Waits until deliveries stop arriving; how many arrived.
    async fn drained(&self) -> u64 {
        let mut seen = 0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.delivered.load(Ordering::Relaxed);
            if now == seen && now > 0 {
                break;
            }
            seen = now;
        }
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Figures 12 and 13, the costs of this wave's turn features on SQLite at concurrency 16: server CPU
/// per turn of a streamed turn (with its resumable, persisted events) against a JSON turn, and of a
/// JSON turn with change events delivered to a webhook against one without; and how fast events
/// reach a local receiver.
pub async fn features(bin: &std::path::Path, mock: SocketAddr, seconds: u64, report: &mut Report) {
    let per_turn = |st: &crate::load::Stats| st.cpu / st.ok.max(1) as f64 * 1e6;
    let s = start_server(bin, &model_env(mock));
    let pid = s.child.id();
    let json_turns = closed_loop(&s.url, Some(pid), 16, seconds, Mode::Json).await;
    let streamed = closed_loop(&s.url, Some(pid), 16, seconds, Mode::Streamed).await;
    drop(s);
    let (j, st) = (per_turn(&json_turns), per_turn(&streamed));
    report.row(
        "12. server CPU per turn: streamed (resumable events) / JSON, SQLite, c=16",
        format!("{st:.0} / {j:.0} µs = {:.2}x", st / j),
        "≤ 1.3x",
        Some(st / j <= 1.3),
    );
    // 16. The same JSON turns with a default agent for every tenant (the same model).
    let s = start_server(bin, &model_env(mock));
    let pid = s.child.id();
    let client = reqwest::Client::new();
    for t in 0..50 {
        let body = json!({"systemPrompt": "You are a helpful assistant.", "default": true});
        let r = client.put(format!("{}/agent/tenants/tenant-{t}/agents/desk", s.url)).json(&body).send().await;
        assert!(r.is_ok_and(|r| r.status().is_success()), "an agent for tenant-{t}");
    }
    let with_agent = closed_loop(&s.url, Some(pid), 16, seconds, Mode::Json).await;
    drop(s);
    let a = per_turn(&with_agent);
    report.row(
        "16. server CPU per JSON turn: with a tenant agent / without, SQLite, c=16",
        format!("{a:.0} / {j:.0} µs = {:.2}x ({:.0} vs {:.0} turns/s)", a / j, with_agent.rate(), json_turns.rate()),
        "≤ 1.05x",
        Some(a / j <= 1.05),
    );
    let receiver = Receiver::start().await;
    let last = receiver.last.clone();
    let mut env = model_env(mock);
    env.extend(receiver.env());
    let s = start_server(bin, &env);
    let pid = s.child.id();
    let started = Instant::now();
    let hooked = closed_loop(&s.url, Some(pid), 16, seconds, Mode::Json).await;
    let events = receiver.drained().await;
    let span = last.lock().unwrap().duration_since(started).as_secs_f64();
    let w = per_turn(&hooked);
    report.row(
        "13. server CPU per JSON turn: webhooks on / off, SQLite, c=16",
        format!("{w:.0} / {j:.0} µs = {:.2}x ({:.0} vs {:.0} turns/s)", w / j, hooked.rate(), json_turns.rate()),
        "≤ 1.2x",
        Some(w / j <= 1.2),
    );
    report.row(
        "13. event delivery to a local receiver, during and after that load",
        format!(
            "{events} events in {span:.1} s: {:.0} events/s ({:.2} per turn)",
            events as f64 / span,
            events as f64 / hooked.ok.max(1) as f64
        ),
        "keeps up",
        None,
    );
    report.json.insert(
        "features".into(),
        json!({"cpu_us_json": j, "cpu_us_streamed": st, "cpu_us_webhooks": w, "cpu_us_agent": a, "events": events, "events_per_s": events as f64 / span}),
    );
}

/// Turns every instruction count starts with (see `instructions_for`).
const WARMUP_TURNS: u64 = 10;

/// Runs the server under callgrind (valgrind) on SQLite with `env` (the echo provider when it names
/// none), `WARMUP_TURNS` and then `turns` turns of short messages in one session, then stops it
/// with SIGTERM; the instructions it executed. With a `receiver`, waits for its deliveries first.
/// The difference of two runs divided by their difference in turns is a turn's cost.
pub(crate) async fn instructions_for(
    bin: &std::path::Path,
    turns: u64,
    env: &[(&str, String)],
    mode: Mode,
    receiver: Option<&Receiver>,
    agent: bool,
) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("callgrind.out");
    let bin = std::fs::canonicalize(bin).unwrap();
    let mut child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&bin)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("RUST_LOG", "warn,agent_server=info")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("valgrind runs (Debian: apt-get install valgrind)");
    let url = crate::processes::listening_url(&mut child, Duration::from_secs(120));
    let client = reqwest::Client::new();
    if agent {
        // A default agent for the tenant of the turns (tenant-1), with the environment's settings.
        let (tenant, _) = crate::load::Traffic::who(1);
        let body = json!({"systemPrompt": "You are a helpful assistant.", "default": true});
        let r = client.put(format!("{url}/agent/tenants/{tenant}/agents/desk")).json(&body).send().await;
        assert!(r.is_ok_and(|r| r.status().is_success()), "the agent is created");
    }
    let mut session: Option<String> = None;
    // Warm-up turns first, in the base run too: what a server does once (its random generator's
    // seeding, lazy statics, the first connections, the tenant's agents read) is not a turn's cost.
    for _ in 0..WARMUP_TURNS + turns {
        // One tenant, user and short message throughout: one session of `turns` turns.
        let (_, sid) = one_turn(&client, &url, 1, session.as_deref(), mode).await.unwrap();
        session = Some(sid);
    }
    if let Some(receiver) = receiver {
        receiver.drained().await;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Figure 14: instructions per turn (callgrind; SQLite, echo provider, short messages, one session):
/// a noise-free figure to track regressions, from two runs that differ only in their turns.
pub async fn instructions(bin: &std::path::Path, mock: SocketAddr, report: &mut Report) {
    const TURNS: u64 = 200;
    let per_turn = |base: u64, with: u64| with.saturating_sub(base) as f64 / TURNS as f64;
    let base = instructions_for(bin, 0, &[], Mode::Json, None, false).await;
    let echo = per_turn(base, instructions_for(bin, TURNS, &[], Mode::Json, None, false).await);
    report.row(
        "14. instructions per JSON turn (callgrind; SQLite, echo, short messages)",
        format!("{:.0} thousand", echo / 1000.0),
        "tracked",
        None,
    );
    // The same with the mock model (20 tokens), for the new features' costs without timing noise.
    let model = model_env(mock);
    let base = instructions_for(bin, 0, &model, Mode::Json, None, false).await;
    let json_turn = per_turn(base, instructions_for(bin, TURNS, &model, Mode::Json, None, false).await);
    let streamed = per_turn(base, instructions_for(bin, TURNS, &model, Mode::Streamed, None, false).await);
    let receiver = Receiver::start().await;
    let mut hooked_env = model.clone();
    hooked_env.extend(receiver.env());
    let hooked_base = instructions_for(bin, 0, &hooked_env, Mode::Json, None, false).await;
    let hooked =
        per_turn(hooked_base, instructions_for(bin, TURNS, &hooked_env, Mode::Json, Some(&receiver), false).await);
    let agent_base = instructions_for(bin, 0, &model, Mode::Json, None, true).await;
    let with_agent = per_turn(agent_base, instructions_for(bin, TURNS, &model, Mode::Json, None, true).await);
    report.row(
        "16. instructions per JSON turn, mock model: with a tenant agent / without",
        format!("{:.0} / {:.0} thousand = {:.3}x", with_agent / 1000.0, json_turn / 1000.0, with_agent / json_turn),
        "≤ 1.05x",
        Some(with_agent / json_turn <= 1.05),
    );
    report.row(
        "14. instructions per turn, mock model (20 tokens): JSON / streamed / JSON with a webhook",
        format!(
            "{:.0} / {:.0} / {:.0} thousand: streamed {:.2}x, webhook {:.2}x",
            json_turn / 1000.0,
            streamed / 1000.0,
            hooked / 1000.0,
            streamed / json_turn,
            hooked / json_turn
        ),
        "≤ 1.3x, ≤ 1.2x",
        Some(streamed / json_turn <= 1.3 && hooked / json_turn <= 1.2),
    );
    report.json.insert(
        "instructions".into(),
        json!({"echo_json": echo, "json": json_turn, "streamed": streamed, "webhook": hooked, "agent": with_agent}),
    );
}

/// Figure 15, memory under sustained load: RSS every second through a minute of JSON turns at
/// concurrency 16, on SQLite and (with dynalite) on DynamoDB. Memory should follow the turns
/// running, not the turns answered: at most 64 MiB, and flat from the second half-minute on.
pub async fn memory(bin: &std::path::Path, bench_dir: &std::path::Path, seconds: u64, report: &mut Report) {
    let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
    let dynalite = bench_dir.join("node_modules/dynalite/cli.js").exists().then(|| start_dynalite(bench_dir));
    let mut backends = vec![("SQLite", model_env(mock))];
    if let Some(d) = &dynalite {
        let mut env = dynamo_env(&d.url, "memory-sessions", "memory-messages");
        create_tables(bin, &env);
        env.extend(model_env(mock));
        backends.push(("DynamoDB (dynalite)", env));
    } else {
        println!("(skipping the DynamoDB row of figure 15: run `npm install` in {})", bench_dir.display());
    }
    for (name, env) in backends {
        let s = start_server(bin, &env);
        let pid = s.child.id();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampling = {
            let samples = samples.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    samples.lock().unwrap().push(rss_kib(pid).0);
                }
            })
        };
        let st = closed_loop(&s.url, Some(pid), 16, seconds, Mode::Json).await;
        sampling.abort();
        let samples = samples.lock().unwrap().clone();
        let mib = |kib: u64| kib as f64 / 1024.0;
        let half = samples.len() / 2;
        let (mid, end) = (samples.get(half).copied().unwrap_or(0), samples.last().copied().unwrap_or(0));
        let peak = samples.iter().copied().max().unwrap_or(0);
        let second_half_peak = samples[half.min(samples.len())..].iter().copied().max().unwrap_or(0);
        let flat = second_half_peak as f64 <= mid as f64 * 1.1 + 2048.0;
        report.row(
            &format!("15. RSS after {seconds} s of JSON turns, c=16, {name}"),
            format!(
                "{:.1} MiB at the end ({:.1} at half time, peak {:.1}) after {} turns",
                mib(end),
                mib(mid),
                mib(peak),
                st.ok
            ),
            "≤ 64 MiB, flat in the second half",
            Some(mib(peak) <= 64.0 && flat),
        );
        report.json.insert(
            format!("memory_{}", if name == "SQLite" { "sqlite" } else { "dynamodb" }),
            json!({"rss_kib": samples, "turns": st.ok}),
        );
        drop(s);
    }
    drop(dynalite);
}

/// Figure 17, a burst: "hi", "I want to move my appointment", "to Friday", 100 ms apart, into a
/// session whose model takes 800 ms to answer, under each `concurrency`: the model calls, the tokens
/// the model was sent and wrote, and the replies the client got, per burst (SQLite, 5 bursts each).
pub async fn burst(bin: &std::path::Path, report: &mut Report) {
    let mock =
        start_mock(MockModel { ttft: Duration::from_millis(800), per_token: Duration::ZERO, tokens: 20 }, 0).await;
    let s = start_server(bin, &model_env(mock));
    let client = reqwest::Client::new();
    let bursts = 5u64;
    let mut json_rows = serde_json::Map::new();
    for policy in ["parallel", "queue", "interrupt", "reject"] {
        let (mut calls, mut input, mut output, mut refused, mut replies) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for b in 0..bursts {
            let user = format!("burst-{policy}-{b}");
            let turn = |message: &str, sid: Option<&str>| {
                let mut body = json!({"message": message, "concurrency": policy});
                if let Some(sid) = sid {
                    body["sessionId"] = json!(sid);
                }
                client
                    .post(format!("{}/agent/process", s.url))
                    .header("x-tenant-id", "bench")
                    .header("x-user-id", user.as_str())
                    .json(&body)
                    .send()
            };
            let first: Value = turn("hello", None).await.unwrap().json().await.unwrap();
            let sid = first["sessionId"].as_str().unwrap().to_string();
            let before = crate::mock_model::CALLS.load(Ordering::SeqCst);
            let mut sent = Vec::new();
            for message in ["hi", "I want to move my appointment", "to Friday"] {
                sent.push(tokio::spawn(turn(message, Some(&sid))));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut answers = std::collections::HashSet::new();
            for t in sent {
                let r = t.await.unwrap().unwrap();
                if r.status() == reqwest::StatusCode::CONFLICT {
                    refused += 1;
                    continue;
                }
                let answer: Value = r.json().await.unwrap();
                answers.insert(answer["agentMessage"]["id"].as_str().unwrap_or_default().to_string());
            }
            replies += answers.len() as u64;
            tokio::time::sleep(Duration::from_millis(300)).await;
            calls += crate::mock_model::CALLS.load(Ordering::SeqCst) - before;
            let path = format!("{}/agent/conversations/bench/sessions/{sid}/messages?order=asc&limit=100", s.url);
            let msgs: Value = client.get(path).send().await.unwrap().json().await.unwrap();
            for m in msgs.as_array().unwrap().iter().skip(2) {
                input += m["metadata"]["usage"]["inputTokens"].as_u64().unwrap_or(0);
                output += m["metadata"]["usage"]["outputTokens"].as_u64().unwrap_or(0);
            }
        }
        let per = |n: u64| n as f64 / bursts as f64;
        report.row(
            &format!("17. a burst of 3 messages, {policy}: model calls / tokens in, out / replies / refused"),
            format!(
                "{:.1} / {:.0}, {:.0} / {:.1} / {:.1}",
                per(calls),
                per(input),
                per(output),
                per(replies),
                per(refused)
            ),
            "queue: 1 call per running turn, then 1 for what waited",
            (policy == "queue").then_some(per(calls) <= 2.0),
        );
        json_rows.insert(
            policy.into(),
            json!({"model_calls": per(calls), "input_tokens": per(input), "output_tokens": per(output),
                   "distinct_replies": per(replies), "refused": per(refused)}),
        );
    }
    report.json.insert("burst".into(), Value::Object(json_rows));
}

/// Figure 18, what counting usage costs a JSON turn: instructions (callgrind; SQLite, mock model)
/// and DynamoDB requests per continuing turn (dynalite, through the counting proxy), with `USAGE=on`
/// (the default) against `USAGE=off`.
pub async fn usage_cost(bin: &std::path::Path, bench_dir: &std::path::Path, report: &mut Report) {
    const TURNS: u64 = 200;
    let mock = start_mock(MockModel { ttft: Duration::ZERO, per_token: Duration::ZERO, tokens: 20 }, 0).await;
    let per_turn = |base: u64, with: u64| with.saturating_sub(base) as f64 / TURNS as f64;
    let mut off_env = model_env(mock);
    off_env.push(("USAGE", "off".into()));
    let on_env = model_env(mock);
    let mut instructions = Vec::new();
    for env in [&on_env, &off_env] {
        let base = instructions_for(bin, 0, env, Mode::Json, None, false).await;
        instructions.push(per_turn(base, instructions_for(bin, TURNS, env, Mode::Json, None, false).await));
    }
    let (on, off) = (instructions[0], instructions[1]);
    report.row(
        "18. instructions per JSON turn, mock model: usage counted / not (USAGE=off)",
        format!("{:.0} / {:.0} thousand = {:.3}x", on / 1000.0, off / 1000.0, on / off),
        "≤ 1.05x",
        Some(on / off <= 1.05),
    );
    let mut json_rows = json!({"instructions_on": on, "instructions_off": off});
    if bench_dir.join("node_modules/dynalite/cli.js").exists() {
        let dynalite = start_dynalite(bench_dir);
        let (proxy_url, calls, delay_us) = start_proxy(&dynalite.url).await;
        let mut requests = Vec::new();
        for (i, usage) in ["on", "off"].into_iter().enumerate() {
            let mut env = dynamo_env(&proxy_url, &format!("usage{i}-sessions"), &format!("usage{i}-messages"));
            create_tables(bin, &env);
            env.extend(model_env(mock));
            env.push(("USAGE", usage.into()));
            let s = start_server(bin, &env);
            let client = reqwest::Client::new();
            delay_us.store(5000, Ordering::Relaxed);
            let mut logs = Vec::new();
            for k in 0..20u64 {
                let mut session: Option<String> = None;
                for t in 0..3 {
                    calls.lock().unwrap().clear();
                    let (_, sid) =
                        one_turn(&client, &s.url, 700_000 + k, session.as_deref(), Mode::Json).await.unwrap();
                    if t > 0 {
                        logs.push(calls.lock().unwrap().clone());
                    }
                    session = Some(sid);
                }
            }
            delay_us.store(0, Ordering::Relaxed);
            let mut ops: BTreeMap<String, usize> = BTreeMap::new();
            for log in &logs {
                for (_, _, op) in log {
                    *ops.entry(op.clone()).or_default() += 1;
                }
            }
            let total = ops.values().sum::<usize>() as f64 / logs.len() as f64;
            let phase = logs.iter().map(|l| phases(l)).max().unwrap_or(0);
            let detail: Vec<String> =
                ops.iter().map(|(op, n)| format!("{} {op}", *n as f64 / logs.len() as f64)).collect();
            requests.push((total, phase, detail.join(", ")));
            drop(s);
        }
        let ((on_n, on_p, on_d), (off_n, off_p, off_d)) = (&requests[0], &requests[1]);
        report.row(
            "18. DynamoDB requests per continuing JSON turn: usage counted / not",
            format!("{on_n} ({on_d}; {on_p} phases) / {off_n} ({off_d}; {off_p} phases)"),
            "+1 write at most, no added phase",
            Some(on_n - off_n <= 1.05 && on_p <= off_p),
        );
        json_rows["requests_on"] = json!(on_n);
        json_rows["requests_off"] = json!(off_n);
    }
    report.json.insert("usage".into(), json_rows);
}
