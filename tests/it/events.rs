//! Change events through the real binary: signed webhooks verified with the `standardwebhooks`
//! package, a refused attempt retried with the same id, a receiver that was down getting every
//! event after the server was killed (kill -9) and restarted, endpoint filters by tenant and type,
//! the pull feed (the same events as the webhooks, paged, scoped like conversations), the events
//! of actions, sessions and erasure, refused private targets, and the `webhooks` commands.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::webhooks::{Attempt, Receiver, secret, verify};
use crate::support::{TestServer, cli, create_key, expect_error, ok, ok_json, request, send, text, turn, turn_request};

on_both_backends!(
    deliveries_are_signed_and_a_refused_attempt_comes_again_with_the_same_id,
    a_receiver_that_was_down_gets_every_event_after_a_kill_and_a_restart,
    deleting_a_session_takes_its_events_out_of_the_feed_and_the_outbox,
);

/// Private targets are allowed (the receivers are on loopback), and retries come fast.
fn webhook_env<'a>(url: &'a str, secret: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("WEBHOOK_URL", url),
        ("WEBHOOK_SECRET", secret),
        ("WEBHOOK_ALLOW_PRIVATE", "true"),
        ("WEBHOOK_RETRY_SCHEDULE", "200ms"),
    ]
}

/// Every event of the tenant's feed, following `Link` pages, as `auth` (none: no credential).
async fn feed(s: &TestServer, tenant: &str, auth: Option<&str>) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = Some(format!("/agent/events/{tenant}?limit=100"));
    while let Some(p) = path {
        let r = send(s, "GET", &p, auth, &[], None).await;
        path = crate::support::next_link(&r);
        events.extend(ok_json(r).await.as_array().unwrap().clone());
    }
    events
}

/// The feed once it holds at least `count` events (events show two seconds after they happen).
async fn feed_of(s: &TestServer, tenant: &str, count: usize) -> Vec<Value> {
    for _ in 0..150 {
        let events = feed(s, tenant, None).await;
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the feed of {tenant} never held {count} events: {:#?}", feed(s, tenant, None).await);
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// A receiver answers 500 to the first attempt of each event: the retry comes with the same
/// `webhook-id`, every attempt verifies with `standardwebhooks`, the bodies say what happened, and
/// the pull feed serves the same events.
async fn deliveries_are_signed_and_a_refused_attempt_comes_again_with_the_same_id(backend: &str) {
    let receiver = Receiver::start(true).await;
    let key = secret();
    let s = TestServer::start(backend, &webhook_env(&receiver.url, &key)).await;
    let answer =
        ok(turn_request(&s, "acme", "u1").header("x-location-id", "downtown").json(&json!({"message": "hello"}))).await;
    let mut delivered = receiver.wait_for("two events", |d| d.len() >= 2).await;
    // Deliveries go at once, in any order; ids sort in time order.
    delivered.sort_by(|a, b| a.id.cmp(&b.id));
    let events: Vec<Value> = delivered.iter().map(Attempt::event).collect();
    assert_eq!(types(&events), ["session.created", "turn.completed"], "one event per change");
    let attempts = receiver.attempts();
    for d in &delivered {
        let tries: Vec<u16> = attempts.iter().filter(|a| a.id == d.id).map(|a| a.status).collect();
        assert_eq!(tries, [500, 200], "the refused attempt came again with the same webhook-id");
        assert_eq!(d.headers["content-type"], "application/json");
        assert!(d.id.starts_with("evt_"));
    }
    verify(&key, &attempts);
    let completed = &events[1];
    assert_eq!(completed["tenantId"], "acme");
    assert_eq!(completed["id"], delivered[1].id.as_str());
    let data = &completed["data"];
    assert_eq!(data["turnId"], answer["turnId"]);
    assert_eq!(data["sessionId"], answer["sessionId"]);
    assert_eq!(data["userId"], "u1");
    assert_eq!(data["locationId"], "downtown");
    assert_eq!(data["messageId"], answer["agentMessage"]["id"]);
    assert_eq!(data["userMessageId"], answer["userMessage"]["id"]);
    assert_eq!(data["text"], answer["response"]);
    assert_eq!(data["status"], "completed");
    assert!(data.get("agentMessage").is_none(), "full messages only with WEBHOOK_PAYLOAD=full");
    assert_eq!(events[0]["data"]["sessionId"], answer["sessionId"]);
    // The feed: the same ids and bodies.
    assert_eq!(feed_of(&s, "acme", 2).await, events);
    assert!(feed(&s, "globex", None).await.is_empty());
    let metrics = request(&s, "GET", "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("webhook_deliveries_total{endpoint=\"ep_"), "{metrics}");
    assert!(metrics.contains("outcome=\"retried\"") && metrics.contains("outcome=\"delivered\""));
    assert!(metrics.contains("webhook_delivery_lag_seconds"));
}

/// A port where no receiver listens yet, and the webhook URL on it.
fn receiver_down() -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    (port, format!("http://127.0.0.1:{port}/hooks"))
}

/// The receiver is down while turns run; the server answers them and is killed (kill -9). Once the
/// receiver is up and the server restarted, every event of the feed arrives, and `webhooks pending`
/// listed them while they waited.
async fn a_receiver_that_was_down_gets_every_event_after_a_kill_and_a_restart(backend: &str) {
    let (port, url) = receiver_down();
    let key = secret();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let mut env = webhook_env(&url, &key);
    env.push(("WEBHOOK_RETRY_SCHEDULE", "300ms"));
    let mut first = TestServer::start_on_store(backend, None, &db, &env).await;
    let one = turn(&first, "acme", "u1", "first").await;
    turn(&first, "acme", "u1", "second").await;
    turn(&first, "acme", "u2", "third").await;
    ok(request(
        &first,
        "POST",
        &format!("/agent/conversations/acme/sessions/{}/close", one["sessionId"].as_str().unwrap()),
    ))
    .await;
    std::process::Command::new("kill").args(["-9", &first.pid().to_string()]).status().unwrap();
    first.wait(Duration::from_secs(5));

    let cli_env = cli_env(backend, &first, &db, &env);
    let cli_env: Vec<(&str, &str)> = cli_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pending = text(&cli(dir.path(), &["webhooks", "pending"], &cli_env));
    assert_eq!(pending.lines().filter(|l| l.starts_with("evt_")).count(), 6, "{pending}");
    assert!(pending.contains("turn.completed") && pending.contains("session.closed"), "{pending}");

    let receiver = Receiver::start_on(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap(), false);
    let second = TestServer::start_on_store(backend, Some(&first), &db, &env).await;
    let events = feed_of(&second, "acme", 6).await;
    let expected: BTreeSet<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let delivered = receiver.wait_for("every event of the feed", |d| d.len() >= expected.len()).await;
    let got: BTreeSet<String> = delivered.iter().map(|a| a.id.clone()).collect();
    assert_eq!(got, expected, "every event arrived");
    let mut kinds = types(&events);
    kinds.sort();
    assert_eq!(
        kinds,
        ["session.closed", "session.created", "session.created", "turn.completed", "turn.completed", "turn.completed"]
    );
    verify(&key, &delivered);
    let pending = text(&cli(dir.path(), &["webhooks", "pending"], &cli_env));
    assert!(pending.contains("nothing waits for delivery"), "{pending}");
}

/// The environment of a command on the server's store.
fn cli_env(backend: &str, s: &TestServer, db: &std::path::Path, env: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut cli_env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    match &s.tables {
        Some((sessions, messages)) => {
            cli_env.extend(crate::support::aws_env().into_iter().map(|(k, v)| (k.to_string(), v)));
            cli_env.push(("DYNAMODB_SESSIONS_TABLE".into(), sessions.clone()));
            cli_env.push(("DYNAMODB_MESSAGES_TABLE".into(), messages.clone()));
        }
        None => cli_env.push(("SQLITE_PATH".into(), db.to_str().unwrap().into())),
    }
    cli_env.push(("STORAGE".into(), backend.into()));
    cli_env
}

/// The receiver is down; a user's session is deleted with its events still owed. The feed and the
/// outbox lose every event of that session (the reply's text with them), keep the other user's,
/// and once the receiver is up only those and `session.deleted` arrive.
async fn deleting_a_session_takes_its_events_out_of_the_feed_and_the_outbox(backend: &str) {
    let (port, url) = receiver_down();
    let key = secret();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let mut env = webhook_env(&url, &key);
    env.extend([("WEBHOOK_RETRY_SCHEDULE", "300ms"), ("WEBHOOK_PAYLOAD", "full")]);
    let s = TestServer::start_on_store(backend, None, &db, &env).await;
    turn(&s, "acme", "u1", "keep this").await;
    let gone = turn(&s, "acme", "u2", "the words of a deleted session").await;
    let session = gone["sessionId"].as_str().unwrap();
    ok(request(&s, "DELETE", &format!("/agent/conversations/acme/sessions/{session}"))).await;
    let events = feed_of(&s, "acme", 3).await;
    assert_eq!(types(&events), ["session.created", "turn.completed", "session.deleted"]);
    assert!(events.iter().all(|e| !e.to_string().contains("deleted session")), "{events:#?}");
    assert_eq!(events[2]["data"]["sessionId"], session);
    let cli_env = cli_env(backend, &s, &db, &env);
    let cli_env: Vec<(&str, &str)> = cli_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pending = text(&cli(dir.path(), &["webhooks", "pending"], &cli_env));
    let owed: BTreeSet<String> = pending
        .lines()
        .filter(|l| l.starts_with("evt_"))
        .map(|l| l.split_whitespace().next().unwrap().into())
        .collect();
    let expected: BTreeSet<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(owed, expected, "{pending}");
    let receiver = Receiver::start_on(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap(), false);
    let delivered = receiver.wait_for("the events still owed", |d| d.len() >= 3).await;
    let got: BTreeSet<String> = delivered.iter().map(|a| a.id.clone()).collect();
    assert_eq!(got, expected);
}

/// Endpoints from `WEBHOOKS_FILE`: one for tenant acme only, one for `session.*` events only; each
/// gets exactly what it asked for, signed with its own secret.
#[tokio::test]
async fn endpoints_receive_only_their_tenants_and_types() {
    let (acme_only, sessions_only) = (Receiver::start(false).await, Receiver::start(false).await);
    let (key_a, key_b) = (secret(), secret());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webhooks.yaml");
    std::fs::write(
        &file,
        format!(
            "endpoints:\n  - id: acme-crm\n    url: {}\n    secret: {key_a}\n    tenants: [acme]\n  - id: hub\n    url: {}\n    secrets: [{key_b}]\n    events: [\"session.*\"]\n",
            acme_only.url, sessions_only.url
        ),
    )
    .unwrap();
    let s =
        TestServer::start("sqlite", &[("WEBHOOKS_FILE", file.to_str().unwrap()), ("WEBHOOK_ALLOW_PRIVATE", "true")])
            .await;
    turn(&s, "acme", "u1", "hello").await;
    turn(&s, "globex", "u9", "hello").await;
    acme_only.wait_for("acme's two events", |d| d.len() >= 2).await;
    sessions_only.wait_for("both session.created", |d| d.len() >= 2).await;
    // Enough time for anything that should not come to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a: Vec<Value> = acme_only.delivered().iter().map(Attempt::event).collect();
    let b_events: Vec<Value> = sessions_only.delivered().iter().map(Attempt::event).collect();
    assert_eq!(a.len(), 2, "{a:#?}");
    assert!(a.iter().all(|e| e["tenantId"] == "acme"), "{a:#?}");
    assert_eq!(types(&b_events), ["session.created", "session.created"]);
    let tenants: BTreeSet<&str> = b_events.iter().map(|e| e["tenantId"].as_str().unwrap()).collect();
    assert_eq!(tenants, BTreeSet::from(["acme", "globex"]));
    verify(&key_a, &acme_only.delivered());
    verify(&key_b, &sessions_only.delivered());
}

/// A tiny business API: every call succeeds.
async fn business_api() -> String {
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"id": "r1", "ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// With `EVENTS=on` and no webhook, the feed records actions (waiting, approved, run), sessions
/// (created, closed, deleted) and an erasure, whose user's earlier events leave the feed.
#[tokio::test]
async fn actions_sessions_and_erasure_are_events_in_the_feed() {
    let api = business_api().await;
    let s = TestServer::start(
        "sqlite",
        &[
            ("EVENTS", "on"),
            ("API_SERVER_URL", &api),
            ("API_RESOURCE_TYPES", "appointments"),
            ("WEBHOOK_PAYLOAD", "full"),
        ],
    )
    .await;
    let message =
        "book it\n@tool create_resource {\"resourceType\": \"appointments\", \"data\": {\"time\": \"10:00\"}}";
    let first = turn(&s, "acme", "u1", message).await;
    assert_eq!(first["status"], "awaiting_approval", "{first}");
    let session = first["sessionId"].as_str().unwrap().to_string();
    let action = first["actions"][0]["id"].as_str().unwrap().to_string();
    let approved =
        ok(request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/actions/{action}/approve")))
            .await;
    ok(request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/close"))).await;
    // Closing again changes nothing, so it is no event.
    ok(request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/close"))).await;
    let other = turn(&s, "acme", "u2", "hi").await;
    ok(request(&s, "DELETE", &format!("/agent/conversations/acme/sessions/{}", other["sessionId"].as_str().unwrap())))
        .await;
    // Deleting a session takes its events with it (u2's session.created and turn.completed).
    let events = feed_of(&s, "acme", 8).await;
    assert_eq!(
        types(&events),
        [
            "session.created",
            "turn.completed",
            "action.approval_required",
            "action.approved",
            "action.executed",
            "turn.completed",
            "session.closed",
            "session.deleted",
        ]
    );
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    let waiting = of_type(&events, "action.approval_required")[0];
    assert_eq!(waiting["data"]["actionId"], action.as_str());
    assert_eq!(waiting["data"]["tool"], "create_resource");
    assert_eq!(waiting["data"]["turnId"], first["turnId"]);
    assert_eq!(waiting["data"]["messageId"], first["agentMessage"]["id"]);
    assert_eq!(waiting["data"]["sessionId"], session.as_str());
    let executed = of_type(&events, "action.executed")[0];
    assert_eq!(executed["data"]["actionId"], action.as_str());
    assert_eq!(executed["data"]["success"], true);
    let follow_up = of_type(&events, "turn.completed")[1];
    assert_eq!(follow_up["data"]["turnId"], approved["turnId"]);
    assert_eq!(follow_up["data"]["text"], approved["response"]);
    // WEBHOOK_PAYLOAD=full: the stored messages themselves.
    let full = of_type(&events, "turn.completed")[0];
    assert_eq!(full["data"]["agentMessage"], first["agentMessage"]);
    assert_eq!(full["data"]["userMessage"], first["userMessage"]);

    // Erasing u1: its events leave the feed; the erasure itself is an event with ids only.
    ok(request(&s, "DELETE", "/agent/conversations/acme/users/u1")).await;
    let after = feed_of(&s, "acme", 2).await;
    assert_eq!(types(&after), ["session.deleted", "user.erased"]);
    let erased = &after[1]["data"];
    assert_eq!(erased["userId"], "u1");
    assert_eq!(erased["sessions"], 1);
    assert!(after.iter().all(|e| e["data"]["userId"] != "u1" || e["type"] == "user.erased"));
}

/// The feed pages with `Link`, filters by type, refuses bad queries with 400, belongs to the
/// tenant's credentials only, and answers 404 when events are off.
#[tokio::test]
async fn the_feed_pages_filters_and_is_scoped_like_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let acme = create_key(dir.path(), &["--tenant", "acme"]);
    let globex = create_key(dir.path(), &["--tenant", "globex"]);
    let admin = create_key(dir.path(), &["--admin"]);
    let keys = dir.path().join("keys.json");
    let s = TestServer::start(
        "sqlite",
        &[("EVENTS", "on"), ("AUTH_MODE", "api-key"), ("API_KEYS_FILE", keys.to_str().unwrap())],
    )
    .await;
    for user in ["u1", "u2", "u3"] {
        let r = send(&s, "POST", "/agent/process", Some(&acme), &[("x-user-id", user)], Some(json!({"message": "hi"})))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Events show in the feed two seconds after they happen.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let all = feed(&s, "acme", Some(&acme)).await;
    assert_eq!(all.len(), 6);
    assert_eq!(feed(&s, "acme", Some(&admin)).await, all);
    // Pages of two, by Link, give the same events once each.
    let mut paged = Vec::new();
    let mut path = Some("/agent/events/acme?limit=2".to_string());
    while let Some(p) = path {
        let r = send(&s, "GET", &p, Some(&acme), &[], None).await;
        path = crate::support::next_link(&r);
        paged.extend(ok_json(r).await.as_array().unwrap().clone());
    }
    assert_eq!(paged, all);
    let after = all[3]["id"].as_str().unwrap();
    let rest =
        ok_json(send(&s, "GET", &format!("/agent/events/acme?after={after}"), Some(&acme), &[], None).await).await;
    assert_eq!(rest.as_array().unwrap(), &all[4..]);
    let turns = ok_json(send(&s, "GET", "/agent/events/acme?types=turn.completed", Some(&acme), &[], None).await).await;
    assert_eq!(types(turns.as_array().unwrap()), ["turn.completed"; 3]);
    let family = ok_json(send(&s, "GET", "/agent/events/acme?types=turn.*", Some(&acme), &[], None).await).await;
    assert_eq!(family, turns, "a family pattern selects its types");
    let two =
        ok_json(send(&s, "GET", "/agent/events/acme?types=session.*,turn.completed", Some(&acme), &[], None).await)
            .await;
    assert_eq!(two.as_array().unwrap(), &all);
    // Another tenant's credential, or none: refused.
    let r = send(&s, "GET", "/agent/events/acme", Some(&globex), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(feed(&s, "globex", Some(&globex)).await.is_empty());
    assert_eq!(send(&s, "GET", "/agent/events/acme", None, &[], None).await.status(), StatusCode::UNAUTHORIZED);
    for bad in ["after=evt_nope", "types=turn.done", "limit=0", "limit=101"] {
        let req = request(&s, "GET", &format!("/agent/events/acme?{bad}")).bearer_auth(&acme);
        let (code, _) = expect_error(req, StatusCode::BAD_REQUEST).await;
        assert_eq!(code, "invalid_query", "{bad}");
    }
    let off = TestServer::start("sqlite", &[]).await;
    let (code, message) = expect_error(request(&off, "GET", "/agent/events/acme"), StatusCode::NOT_FOUND).await;
    assert_eq!(code, "events_off");
    assert!(message.contains("EVENTS=on"), "{message}");
}

/// Without `WEBHOOK_ALLOW_PRIVATE`, a loopback IP literal stops the server at start, and a name
/// that resolves to loopback is refused at delivery (counted as failed, never retried).
#[tokio::test]
async fn private_targets_are_refused() {
    let key = secret();
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["serve"], &[("WEBHOOK_URL", "http://127.0.0.1:9/hooks"), ("WEBHOOK_SECRET", &key)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("WEBHOOK_ALLOW_PRIVATE"), "{}", text(&out));
    let out =
        cli(dir.path(), &["serve"], &[("WEBHOOK_URL", "https://hooks.example.com/x"), ("WEBHOOK_SECRET", "plain")]);
    assert!(text(&out).contains("whsec_"), "{}", text(&out));

    let receiver = Receiver::start(false).await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let s = TestServer::start("sqlite", &[("WEBHOOK_URL", &by_name), ("WEBHOOK_SECRET", &key)]).await;
    turn(&s, "acme", "u1", "hello").await;
    for _ in 0..50 {
        let metrics = request(&s, "GET", "/metrics").send().await.unwrap().text().await.unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("webhook_deliveries_total") && l.contains("outcome=\"failed\"") && l.ends_with(" 2"))
        {
            assert!(!metrics.contains("outcome=\"retried\""), "a refused target is not retried");
            assert!(receiver.attempts().is_empty(), "nothing reached the private address");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the deliveries were not refused:\n{}", s.output());
}

/// `webhooks test --url` sends a signed test event that `standardwebhooks` verifies; a receiver
/// that is down makes it exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_test_sends_a_signed_test_event() {
    let receiver = Receiver::start(false).await;
    let key = secret();
    let dir = tempfile::tempdir().unwrap();
    let env = [("WEBHOOK_SECRET", key.as_str()), ("WEBHOOK_ALLOW_PRIVATE", "true")];
    // The command blocks; the receiver answers from this test's runtime meanwhile.
    let out = tokio::task::block_in_place(|| cli(dir.path(), &["webhooks", "test", "--url", &receiver.url], &env));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("delivered"), "{}", text(&out));
    let got = receiver.delivered();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event()["type"], "webhook.test");
    verify(&key, &got);
    let out = cli(dir.path(), &["webhooks", "test", "--url", "http://127.0.0.1:9/down"], &env);
    assert!(!out.status.success(), "{}", text(&out));
    let fresh = text(&cli(dir.path(), &["webhooks", "new-secret"], &[]));
    assert!(fresh.trim().starts_with("whsec_"), "{fresh}");
}

/// A turn whose model fails is `turn.failed` with the error's code; a cancelled streamed turn is
/// `turn.cancelled` with its partial reply; a refused request (a closed session) is no event.
#[tokio::test]
async fn failed_and_cancelled_turns_are_events() {
    let mock = crate::support::openai_mock::OpenAiMock::start().await;
    let s = TestServer::start(
        "sqlite",
        &[("EVENTS", "on"), ("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", mock.url.as_str())],
    )
    .await;
    let first = turn(&s, "acme", "u1", "hello").await;
    let session = first["sessionId"].as_str().unwrap().to_string();
    let failed = turn_request(&s, "acme", "u1").json(&json!({"message": "fail [status:400]", "sessionId": session}));
    let (code, _) = expect_error(failed, StatusCode::BAD_GATEWAY).await;
    ok(request(&s, "POST", &format!("/agent/conversations/acme/sessions/{session}/close"))).await;
    let refused = turn_request(&s, "acme", "u1").json(&json!({"message": "again", "sessionId": session}));
    expect_error(refused, StatusCode::CONFLICT).await;
    let events = feed_of(&s, "acme", 4).await;
    assert_eq!(types(&events), ["session.created", "turn.completed", "turn.failed", "session.closed"]);
    let data = &events[2]["data"];
    assert_eq!(data["error"]["code"], code.as_str());
    assert_eq!(data["sessionId"], session.as_str());
    assert_eq!(data["userId"], "u1");
    assert!(data["turnId"].as_str().is_some_and(|t| t != first["turnId"]), "{data}");

    let slow = TestServer::start("sqlite", &[("EVENTS", "on"), ("ECHO_CHUNK_DELAY_MS", "150")]).await;
    let message = "a long answer that streams slowly in many chunks so that there is time to cancel it";
    let r = turn_request(&slow, "acme", "u2")
        .header("accept", "text/event-stream")
        .json(&json!({"message": message}))
        .send()
        .await
        .unwrap();
    let mut stream = Box::pin(r.bytes_stream());
    let seen = crate::support::until_event(&mut stream, "delta").await;
    let opened = &crate::support::parse_sse(&seen)[0].1;
    let (sid, tid) = (opened["sessionId"].as_str().unwrap(), opened["turnId"].as_str().unwrap());
    ok(request(&slow, "POST", &format!("/agent/conversations/acme/sessions/{sid}/turns/{tid}/cancel"))).await;
    let events = feed_of(&slow, "acme", 2).await;
    assert_eq!(types(&events), ["session.created", "turn.cancelled"]);
    let data = &events[1]["data"];
    assert_eq!(data["turnId"], tid);
    assert_eq!(data["status"], "cancelled");
    let partial = data["text"].as_str().unwrap();
    assert!(!partial.is_empty() && format!("Echo: {message}").starts_with(partial), "{partial:?}");
}

/// Two servers on the same DynamoDB tables, both delivering to one receiver: every event arrives,
/// and once (each claims a delivery with a conditional write before sending it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_outbox_and_deliver_each_event_once() {
    let receiver = Receiver::start(false).await;
    let key = secret();
    let env = webhook_env(&receiver.url, &key);
    let a = TestServer::start("dynamodb", &env).await;
    let b = TestServer::start_beside(&a, &env).await;
    for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        turn(server, "acme", user, "hello").await;
    }
    let events = feed_of(&a, "acme", 8).await;
    assert_eq!(events.len(), 8);
    receiver.wait_for("every event", |d| d.len() >= 8).await;
    // Time for a second delivery of anything, were there one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let delivered = receiver.delivered();
    let ids: Vec<String> = delivered.iter().map(|d| d.id.clone()).collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    let expected: BTreeSet<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(unique, expected);
    assert_eq!(ids.len(), unique.len(), "an event was delivered twice: {ids:#?}");
    verify(&key, &delivered);
}
