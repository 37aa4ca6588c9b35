//! Operations against the real binary: metrics, graceful shutdown on a real SIGTERM, retention,
//! backups on the emulator and SQLite, and export/import between the backends.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    TestServer, aws_env, cli, create_key, get, http, parse_sse, request, table_names, text, turn, turn_request,
    until_event,
};

async fn metrics(s: &TestServer) -> String {
    get(s, "/metrics").await.text().await.unwrap()
}

fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_turns_model_and_storage_calls() {
    for backend in ["sqlite", "dynamodb"] {
        let s = TestServer::start(backend, &[]).await;
        turn(&s, "t1", "u1", "hello").await;
        turn(&s, "t1", "u1", "again").await;
        let m = metrics(&s).await;
        assert_eq!(
            metric_value(&m, "http_requests_total", &["route=\"/agent/process\"", "status=\"200\""]),
            2.0,
            "{m}"
        );
        assert_eq!(metric_value(&m, "agent_turn_duration_seconds_count", &["outcome=\"ok\""]), 2.0, "{m}");
        assert_eq!(metric_value(&m, "model_request_duration_seconds_count", &["provider=\"echo\""]), 2.0);
        assert!(metric_value(&m, "model_tokens_total", &["direction=\"output\""]) > 0.0);
        let backend_label = format!("backend=\"{backend}\"");
        assert!(metric_value(&m, "storage_calls_total", &[&backend_label, "outcome=\"ok\""]) >= 4.0, "{m}");
        if backend == "dynamodb" {
            // The second turn continued the session: its writes are two PutItems and one UpdateItem.
            assert_eq!(metric_value(&m, "storage_calls_total", &["operation=\"PutItem\""]), 5.0, "{m}");
        }
        assert!(m.contains("sse_streams_active"), "{m}");
    }
}

#[tokio::test]
async fn metrics_need_an_admin_key_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let keys_env = [("API_KEYS_FILE", keys.to_str().unwrap())];
    let tenant_key = create_key(dir.path(), &["--tenant", "acme"]);
    let admin_key = create_key(dir.path(), &["--admin"]);
    let s = TestServer::start("sqlite", &[("HOST", "0.0.0.0"), ("AUTH_MODE", "api-key"), keys_env[0]]).await;
    let url = s.url.replace("0.0.0.0", "127.0.0.1") + "/metrics";
    let scrape = |key: Option<String>| {
        let mut r = http().get(&url);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(scrape(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(scrape(Some(tenant_key)).await.unwrap().status(), StatusCode::FORBIDDEN);
    let r = scrape(Some(admin_key)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("http_requests_total"));
    // On loopback /metrics is open, whatever the auth mode.
    let local = TestServer::start("sqlite", &[("AUTH_MODE", "api-key"), keys_env[0]]).await;
    assert_eq!(get(&local, "/metrics").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn logs_one_json_line_per_request_with_the_request_id() {
    let s = TestServer::start("sqlite", &[("LOG_FORMAT", "json")]).await;
    let r = request(&s, "GET", "/healthz").header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let line = s.output().lines().find(|l| l.contains("trace-me-42")).map(str::to_string).expect("a log line");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "trace-me-42");
    assert_eq!(v["route"], "/healthz");
    assert_eq!(v["status"], 200);
    assert!(v["latency_ms"].is_string() || v["latency_ms"].is_number());
}

fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Starts a slow streamed turn and returns its response once the stream has begun.
async fn start_stream(s: &TestServer, message: &str) -> reqwest::Response {
    let r = turn_request(s, "t1", "u1").json(&json!({"message": message, "stream": true})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r
}

#[tokio::test]
async fn sigterm_lets_running_streams_finish_then_exits_0() {
    let mut s = TestServer::start("sqlite", &[("ECHO_CHUNK_DELAY_MS", "150")]).await;
    let r = start_stream(&s, "one two three four five six seven eight").await;
    let mut body = r.bytes_stream();
    until_event(&mut body, "session").await;
    sigterm(s.pid());
    let mut rest = String::new();
    while let Some(chunk) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(rest.contains("event: done"), "the running stream finished: {rest}");
    assert!(!rest.contains("interrupted"), "{rest}");
    assert_eq!(s.wait(Duration::from_secs(10)), Some(0), "{}", s.output());
    assert!(request(&s, "GET", "/healthz").send().await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn a_stream_cut_off_by_the_shutdown_deadline_is_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let mut s = TestServer::start(
        "sqlite",
        &[("ECHO_CHUNK_DELAY_MS", "400"), ("SHUTDOWN_GRACE_SECONDS", "1"), ("SQLITE_PATH", db.to_str().unwrap())],
    )
    .await;
    let long = "word ".repeat(40);
    let r = start_stream(&s, &long).await;
    let started = Instant::now();
    let mut body = r.bytes_stream();
    let first = until_event(&mut body, "session").await;
    let session_id = parse_sse(&first)[0].1["sessionId"].as_str().unwrap().to_string();
    sigterm(s.pid());
    let mut rest = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(s.wait(Duration::from_secs(15)), Some(0), "{}", s.output());
    assert!(started.elapsed() < Duration::from_secs(10), "the deadline was kept");
    assert!(rest.contains("event: done"), "{rest}");
    // The database holds the user message and the partial reply, marked as cut off by the shutdown.
    let store = agent_server::store::sqlite::SqliteStore::open(&db).unwrap();
    use agent_server::store::ConversationStore;
    let page = store
        .list_messages(
            &agent_server::ids::TenantId::parse("t1").unwrap(),
            &agent_server::ids::SessionId::parse(session_id).unwrap(),
            agent_server::store::MessageQuery {
                limit: 10,
                order: agent_server::store::Order::Asc,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    let reply = &page.items[1];
    assert_eq!(reply.metadata.as_ref().unwrap()["interrupted"], "shutdown");
    assert!(reply.content.len() < 100, "partial: {}", reply.content);
}

#[tokio::test]
async fn retention_stamps_expiry_and_dynamodb_ttl_is_managed() {
    // Both backends stamp expiresAt on new messages and sessions.
    for backend in ["sqlite", "dynamodb"] {
        let s = TestServer::start(backend, &[("MESSAGE_TTL_DAYS", "7")]).await;
        let r = turn(&s, "t1", "u1", "hello").await;
        let now = chrono::Utc::now().timestamp();
        let expires = r["agentMessage"]["expiresAt"].as_i64().unwrap();
        assert!((now + 7 * 86_400 - 5..=now + 7 * 86_400 + 5).contains(&expires), "{expires}");
        let path = format!("/agent/conversations/t1/sessions/{}", r["sessionId"].as_str().unwrap());
        let session: Value = get(&s, &path).await.json().await.unwrap();
        assert!(session["expiresAt"].as_i64().unwrap() >= expires);
    }
    // DynamoDB: tables made without TTL fail verify while MESSAGE_TTL_DAYS is set, until `tables ttl enable`.
    let dir = tempfile::tempdir().unwrap();
    let (sessions, messages) = table_names();
    let env = [("DYNAMODB_SESSIONS_TABLE", sessions.as_str()), ("DYNAMODB_MESSAGES_TABLE", messages.as_str())];
    assert!(cli(dir.path(), &["tables", "create"], &env).status.success());
    let ttl_env = [env[0], env[1], ("MESSAGE_TTL_DAYS", "30")];
    let verify = cli(dir.path(), &["tables", "verify"], &ttl_env);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("TTL is not enabled"), "{}", text(&verify));
    let enable = cli(dir.path(), &["tables", "ttl", "enable"], &ttl_env);
    assert!(enable.status.success(), "{}", text(&enable));
    assert!(text(&enable).contains("TTL enabled on expiresAt"));
    let verify = cli(dir.path(), &["tables", "verify"], &ttl_env);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("TTL ENABLED on \"expiresAt\""), "{}", text(&verify));
    // `tables create` with MESSAGE_TTL_DAYS turns TTL on by itself.
    let (s2, m2) = table_names();
    let env2 = [
        ("DYNAMODB_SESSIONS_TABLE", s2.as_str()),
        ("DYNAMODB_MESSAGES_TABLE", m2.as_str()),
        ("MESSAGE_TTL_DAYS", "30"),
    ];
    let create = cli(dir.path(), &["tables", "create"], &env2);
    assert!(text(&create).contains("TTL enabled on expiresAt"), "{}", text(&create));
    assert!(cli(dir.path(), &["tables", "verify"], &env2).status.success());
}

#[tokio::test]
async fn dynamodb_backups_point_in_time_restores_and_replicas() {
    let s = TestServer::start("dynamodb", &[]).await;
    turn(&s, "t1", "u1", "remember me").await;
    let (sessions, messages) = s.tables.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("STORAGE", "dynamodb"),
        ("DYNAMODB_SESSIONS_TABLE", sessions.as_str()),
        ("DYNAMODB_MESSAGES_TABLE", messages.as_str()),
    ];
    let run = |args: &[&str]| {
        let out = cli(dir.path(), args, &env);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    };
    assert!(run(&["backup", "status"]).contains("point-in-time recovery DISABLED"));
    assert!(run(&["backup", "enable-pitr"]).contains("point-in-time recovery enabled"));
    assert!(run(&["backup", "status"]).contains("point-in-time recovery ENABLED"));
    let created = run(&["backup", "create", "--name", "nightly"]);
    let arns: Vec<String> = created.lines().filter_map(|l| l.split("backup ").nth(1)).map(str::to_string).collect();
    assert_eq!(arns.len(), 2, "{created}");
    let listed = run(&["backup", "list"]);
    for arn in &arns {
        assert!(listed.contains(arn.as_str()), "{listed}");
    }
    // Restore from the backups into new tables, and serve from them.
    let restored = run(&["backup", "restore", "--backup", &arns[0], "--backup", &arns[1], "--suffix", "-restored"]);
    assert!(restored.contains(&format!("DYNAMODB_SESSIONS_TABLE={sessions}-restored")), "{restored}");
    assert!(restored.contains(&format!("DYNAMODB_MESSAGES_TABLE={messages}-restored")), "{restored}");
    let from_backup = TestServer::start(
        "sqlite",
        &aws_env()
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain([
                ("STORAGE", "dynamodb"),
                ("DYNAMODB_SESSIONS_TABLE", format!("{sessions}-restored").leak() as &str),
                ("DYNAMODB_MESSAGES_TABLE", format!("{messages}-restored").leak() as &str),
            ])
            .collect::<Vec<_>>(),
    )
    .await;
    let convs: Value = get(&from_backup, "/agent/conversations/t1/users/u1").await.json().await.unwrap();
    assert_eq!(convs[0]["messages"][0]["content"], "remember me", "{convs}");
    // Point in time.
    let pitr = run(&["backup", "restore", "--to-time", "latest", "--suffix", "-pitr"]);
    assert!(pitr.contains(&format!("DYNAMODB_MESSAGES_TABLE={messages}-pitr")), "{pitr}");
    let verify = cli(
        dir.path(),
        &["tables", "verify"],
        &[
            ("DYNAMODB_SESSIONS_TABLE", format!("{sessions}-pitr").as_str()),
            ("DYNAMODB_MESSAGES_TABLE", format!("{messages}-pitr").as_str()),
        ],
    );
    // The emulator ignores BillingModeOverride on point-in-time restores (AWS honours it), so the
    // billing mode is the one difference allowed here; keys and indexes must match.
    let report = text(&verify);
    let unexpected: Vec<&str> =
        report.lines().filter(|l| l.starts_with("difference") && !l.contains("billing mode")).collect();
    assert!(unexpected.is_empty(), "{}", text(&verify));
    assert!(!text(&verify).contains("does not exist"), "{}", text(&verify));
    // A cross-region replica (the emulator accepts the request; it keeps no replica).
    assert!(run(&["backup", "replicate", "--region", "eu-west-1"]).contains("replica in eu-west-1 requested"));
}

#[tokio::test]
async fn sqlite_backup_is_a_consistent_copy_taken_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let s = TestServer::start("sqlite", &[("SQLITE_PATH", db.to_str().unwrap())]).await;
    for i in 0..5 {
        turn(&s, "t1", "u1", &format!("m{i}")).await;
    }
    let copy = dir.path().join("copy.db");
    let out = cli(
        dir.path(),
        &["backup", "create", "--out", copy.to_str().unwrap()],
        &[("SQLITE_PATH", db.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The copy is a working database: serve from it.
    let restored = TestServer::start("sqlite", &[("SQLITE_PATH", copy.to_str().unwrap())]).await;
    let convs: Value = get(&restored, "/agent/conversations/t1/users/u1?messageLimit=100").await.json().await.unwrap();
    assert_eq!(convs[0]["messages"].as_array().unwrap().len(), 10);
    let other = cli(dir.path(), &["backup", "enable-pitr"], &[("SQLITE_PATH", db.to_str().unwrap())]);
    assert!(!other.status.success() && text(&other).contains("DynamoDB"));
}

fn sorted_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(bytes).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn export_from_sqlite_import_into_dynamodb_and_back_keeps_every_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("source.db");
    let s = TestServer::start("sqlite", &[("SQLITE_PATH", db.to_str().unwrap())]).await;
    for (tenant, user) in [("t1", "u1"), ("t1", "u2"), ("t2", "u1")] {
        for i in 0..3 {
            turn(&s, tenant, user, &format!("{tenant}/{user}: ünïcode {i}")).await;
        }
    }
    drop(s);
    let sqlite_env = [("STORAGE", "sqlite"), ("SQLITE_PATH", db.to_str().unwrap())];
    let export = cli(dir.path(), &["export"], &sqlite_env);
    assert!(export.status.success(), "{}", text(&export));
    let lines = sorted_lines(&export.stdout);
    assert_eq!(lines.len(), 3 + 18);
    assert!(text(&export).contains("exported 3 sessions, 18 messages and 0 agents"));
    // One tenant only, gzip.
    let gz = dir.path().join("t1.jsonl.gz");
    let out = cli(dir.path(), &["export", "--tenant", "t1", "--out", gz.to_str().unwrap()], &sqlite_env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(&std::fs::read(&gz).unwrap()[..2], &[0x1f, 0x8b], "gzip");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&gz).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an export is readable by its owner only");
    }
    // Into DynamoDB (twice: the second import stores nothing), then out again.
    let file = dir.path().join("all.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    let (sessions, messages) = table_names();
    let dynamo_env = [
        ("STORAGE", "dynamodb"),
        ("DYNAMODB_SESSIONS_TABLE", sessions.as_str()),
        ("DYNAMODB_MESSAGES_TABLE", messages.as_str()),
    ];
    assert!(cli(dir.path(), &["tables", "create"], &dynamo_env).status.success());
    let first = cli(dir.path(), &["import", file.to_str().unwrap()], &dynamo_env);
    assert!(text(&first).contains("imported 3 sessions, 18 messages and 0 agents"), "{}", text(&first));
    let second = cli(dir.path(), &["import", file.to_str().unwrap()], &dynamo_env);
    assert!(
        text(&second).contains("imported 0 sessions, 0 messages and 0 agents")
            && text(&second).contains("(21 already stored)"),
        "{}",
        text(&second)
    );
    let back = cli(dir.path(), &["export"], &dynamo_env);
    assert_eq!(sorted_lines(&back.stdout), lines, "the same conversations on DynamoDB");
    // And from the gzip into a fresh SQLite; the server there continues the conversations.
    let fresh = dir.path().join("fresh.db");
    let fresh_env = [("STORAGE", "sqlite"), ("SQLITE_PATH", fresh.to_str().unwrap())];
    let imported = cli(dir.path(), &["import", gz.to_str().unwrap()], &fresh_env);
    assert!(text(&imported).contains("imported 2 sessions, 12 messages and 0 agents"), "{}", text(&imported));
    let s = TestServer::start("sqlite", &[("SQLITE_PATH", fresh.to_str().unwrap())]).await;
    let r = turn(&s, "t1", "u1", "continue").await;
    assert!(r["response"].as_str().unwrap().contains("history: 6 messages"), "{r}");
}
