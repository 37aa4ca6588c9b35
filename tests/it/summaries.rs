//! Context summaries of long sessions, on both backends through the real binary, with a mock model
//! that records its requests: a fact from the first message of a 100-message session reaches the
//! model through the summary while every message stays readable; a failing summariser leaves the
//! previous summary; two summarisers racing store one; export and import carry the summary.

use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, cli, get, ok, ok_json, request, text, turn_request};

on_both_backends!(
    a_fact_from_the_first_message_reaches_the_model_through_the_summary,
    a_failing_summariser_leaves_the_previous_summary,
    two_summarisers_racing_store_one_summary,
);

/// A turn on the user's active session.
async fn say(s: &TestServer, message: &str) -> Value {
    ok(turn_request(s, "acme", "u1").json(&json!({"message": message}))).await
}

async fn session(s: &TestServer, id: &str) -> Value {
    ok_json(get(s, &format!("/agent/conversations/acme/sessions/{id}")).await).await
}

/// Every message of the session, by pages.
async fn all_messages(s: &TestServer, id: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    let mut path = Some(format!("/agent/conversations/acme/sessions/{id}/messages?order=asc&limit=100"));
    while let Some(p) = path {
        let r = get(s, &p).await;
        path = crate::support::next_link(&r);
        messages.extend(ok_json(r).await.as_array().unwrap().clone());
    }
    messages
}

fn summarize(s: &TestServer, id: &str) -> reqwest::RequestBuilder {
    request(s, "POST", &format!("/agent/conversations/acme/sessions/{id}/summarize"))
}

/// The chat messages of the mock's last request whose newest message is `message`.
fn request_for(mock: &OpenAiMock, message: &str) -> Vec<Value> {
    let bodies = mock.recorded.lock().unwrap().bodies.clone();
    let body = bodies
        .iter()
        .rev()
        .find(|b| b["messages"].as_array().unwrap().last().unwrap()["content"] == message)
        .unwrap_or_else(|| panic!("no request ended with {message:?}"))
        .clone();
    body["messages"].as_array().unwrap().clone()
}

const FACT: &str = "My name is Zebulon Quade, booking B-7731 for 4 people on 2026-12-24 at 19:30.";

async fn a_fact_from_the_first_message_reaches_the_model_through_the_summary(backend: &str) {
    let mock = OpenAiMock::start().await;
    let s = TestServer::start(
        backend,
        &[
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", mock.url.as_str()),
            ("HISTORY_MAX_MESSAGES", "30"),
            ("CONTEXT_SUMMARY_TRIGGER_TOKENS", "100000"),
            ("CONTEXT_SUMMARY_KEEP_MESSAGES", "10"),
            ("EVENTS", "on"),
        ],
    )
    .await;
    let first = say(&s, FACT).await;
    let id = first["sessionId"].as_str().unwrap().to_string();
    for i in 1..50 {
        let answer = say(&s, &format!("message number {i}")).await;
        assert_eq!(answer["sessionId"], id.as_str());
    }
    // Summaries are written in the background after turns; wait until one covers message 60.
    let messages = all_messages(&s, &id).await;
    assert_eq!(messages.len(), 100, "every message stays");
    let mut covered = None;
    for _ in 0..100 {
        let summary = session(&s, &id).await["contextSummary"].clone();
        let through = summary["coversThroughTimestamp"].as_str().map(str::to_string);
        if through.as_deref().is_some_and(|t| t >= messages[60]["timestamp"].as_str().unwrap()) {
            covered = Some(summary);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let summary = covered.expect("a summary covering the older messages");
    assert!(summary["text"].as_str().unwrap().contains("B-7731"), "{summary}");
    assert!(summary["tokensBefore"].as_u64().unwrap() > 0 && summary["model"].is_string(), "{summary}");

    let last = say(&s, "what is my booking?").await;
    let sent = request_for(&mock, "what is my booking?");
    let summary_block = sent
        .iter()
        .find(|m| m["role"] == "system" && m["content"].as_str().unwrap().contains("<conversation_summary>"))
        .expect("the summary is given to the model");
    let block = summary_block["content"].as_str().unwrap();
    assert!(block.contains("Zebulon Quade") && block.contains("B-7731") && block.contains("2026-12-24"), "{block}");
    let shown: Vec<&Value> = sent.iter().filter(|m| m["role"] != "system").collect();
    assert!(shown.len() <= 31, "at most HISTORY_MAX_MESSAGES and the message: {}", shown.len());
    assert!(!shown.iter().any(|m| m["content"] == FACT), "covered messages are not repeated");
    let through = summary["coversThroughMessageId"].as_str().unwrap();
    let position = messages.iter().position(|m| m["id"] == through).unwrap();
    assert!(shown.iter().all(|m| messages[..=position].iter().all(|c| c["content"] != m["content"])));
    // The reply says which summary it was given; every message is still there, unchanged.
    assert!(last["agentMessage"]["metadata"]["contextSummary"]["createdAt"].is_string(), "{last}");
    let after = all_messages(&s, &id).await;
    assert_eq!(after.len(), 102);
    assert_eq!(&after[..100], &messages[..]);
    assert_eq!(after[0]["content"], FACT);
    // The change event.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let events = ok_json(get(&s, "/agent/events/acme?types=session.compacted").await).await;
    let compacted = events.as_array().unwrap();
    assert!(!compacted.is_empty());
    assert_eq!(compacted[0]["data"]["sessionId"], id.as_str());
}

async fn a_failing_summariser_leaves_the_previous_summary(backend: &str) {
    let mock = OpenAiMock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let env =
        [("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", mock.url.as_str()), ("CONTEXT_SUMMARY_KEEP_MESSAGES", "4")];
    let a = TestServer::start_on_store(backend, None, &db, &env).await;
    let id = say(&a, FACT).await["sessionId"].as_str().unwrap().to_string();
    for i in 1..6 {
        say(&a, &format!("message number {i}")).await;
    }
    let first = ok(summarize(&a, &id)).await;
    assert_eq!(first["summarized"], true, "{first}");
    let stored = first["contextSummary"].clone();
    assert!(stored["text"].as_str().unwrap().contains("B-7731"));
    for i in 6..10 {
        say(&a, &format!("message number {i}")).await;
    }
    let mut failing_env = env.to_vec();
    failing_env.push(("CONTEXT_SUMMARY_MODEL", "failing-model"));
    let b = TestServer::start_on_store(backend, Some(&a), &db, &failing_env).await;
    let r = summarize(&b, &id).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::BAD_GATEWAY);
    assert_eq!(session(&b, &id).await["contextSummary"], stored, "the previous summary stays");
    let metrics = request(&b, "GET", "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("context_summary_failures_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The next turn still runs, with the previous summary.
    say(&b, "still there?").await;
    let sent = request_for(&mock, "still there?");
    assert!(sent.iter().any(|m| m["content"].as_str().unwrap().contains("B-7731")));
}

async fn two_summarisers_racing_store_one_summary(backend: &str) {
    let mock = OpenAiMock::start().await;
    let s = TestServer::start(
        backend,
        &[("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", mock.url.as_str()), ("CONTEXT_SUMMARY_KEEP_MESSAGES", "2")],
    )
    .await;
    // The mock answers slowly when the text it is given holds `[slow:MS]`: so does the summariser.
    let id = say(&s, "remember B-7731 [slow:700]").await["sessionId"].as_str().unwrap().to_string();
    for i in 1..4 {
        say(&s, &format!("message number {i}")).await;
    }
    // Twice: racing to store the first summary, then to replace it.
    for round in 0..2 {
        let (x, y) = tokio::join!(ok(summarize(&s, &id)), ok(summarize(&s, &id)));
        let won: Vec<&Value> = [&x, &y].into_iter().filter(|r| r["summarized"] == true).collect();
        assert_eq!(won.len(), 1, "round {round}: one summary is stored: {x} {y}");
        assert_eq!(x["contextSummary"], y["contextSummary"], "the other answers the stored one");
        assert_eq!(session(&s, &id).await["contextSummary"], won[0]["contextSummary"]);
        for i in 0..3 {
            say(&s, &format!("more [slow:700] {round} {i}")).await;
        }
    }
}

/// The echo provider summarises without a model; export and import carry the summary.
#[tokio::test]
async fn the_echo_provider_summarises_and_export_carries_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let s =
        TestServer::start("sqlite", &[("SQLITE_PATH", db.to_str().unwrap()), ("CONTEXT_SUMMARY_KEEP_MESSAGES", "2")])
            .await;
    let id = say(&s, FACT).await["sessionId"].as_str().unwrap().to_string();
    say(&s, "second").await;
    say(&s, "third").await;
    let r = ok(summarize(&s, &id)).await;
    assert_eq!(r["summarized"], true);
    let summary = &r["contextSummary"];
    assert_eq!(summary["model"], "echo");
    assert!(summary["text"].as_str().unwrap().contains(FACT));
    let again = ok(summarize(&s, &id)).await;
    assert_eq!(again["summarized"], false, "nothing new to fold");
    let reply = say(&s, "and now?").await;
    assert!(reply["response"].as_str().unwrap().contains("[summary: "), "{reply}");
    assert!(reply["response"].as_str().unwrap().contains("[history: 2 messages"), "{reply}");
    let out = dir.path().join("export.jsonl");
    let env = [("SQLITE_PATH", db.to_str().unwrap())];
    let exported = cli(dir.path(), &["export", "--out", out.to_str().unwrap()], &env);
    assert!(exported.status.success(), "{}", text(&exported));
    assert!(std::fs::read_to_string(&out).unwrap().contains("\"contextSummary\""));
    let copy = dir.path().join("copy.db");
    let imported = cli(dir.path(), &["import", out.to_str().unwrap()], &[("SQLITE_PATH", copy.to_str().unwrap())]);
    assert!(imported.status.success(), "{}", text(&imported));
    let t = TestServer::start("sqlite", &[("SQLITE_PATH", copy.to_str().unwrap())]).await;
    assert_eq!(session(&t, &id).await["contextSummary"], *summary);
}

/// The token trigger with the echo provider's estimate: once the history passes it, the session is
/// summarised after the turn, and a streamed turn then says so with a `summary` event (and its
/// reply's metadata names the summary).
#[tokio::test]
async fn the_token_trigger_summarises_and_a_streamed_turn_says_so() {
    let s = TestServer::start(
        "sqlite",
        &[("CONTEXT_SUMMARY_TRIGGER_TOKENS", "300"), ("CONTEXT_SUMMARY_KEEP_MESSAGES", "4")],
    )
    .await;
    let id = say(&s, FACT).await["sessionId"].as_str().unwrap().to_string();
    let long = "a message long enough that a few of them pass the trigger of three hundred tokens. ".repeat(3);
    let mut summary = Value::Null;
    for _ in 0..12 {
        say(&s, &long).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        summary = session(&s, &id).await["contextSummary"].clone();
        if summary.is_object() {
            break;
        }
    }
    assert!(summary["text"].as_str().is_some_and(|t| t.contains("B-7731")), "no summary: {summary}");
    let r = turn_request(&s, "acme", "u1")
        .header("accept", "text/event-stream")
        .json(&json!({"message": "streamed"}))
        .send()
        .await
        .unwrap();
    let events = crate::support::parse_sse(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(&names[..2], ["session", "summary"], "{names:?}");
    let note = &events[1].1;
    let current = session(&s, &id).await["contextSummary"].clone();
    assert_eq!(note["createdAt"], current["createdAt"]);
    assert_eq!(note["coversThroughMessageId"], current["coversThroughMessageId"]);
    let done = &events.last().unwrap().1;
    assert_eq!(done["agentMessage"]["metadata"]["contextSummary"], *note);
}

/// The turn that follows an approval is given the summary too, and says so in its metadata.
#[tokio::test]
async fn an_approvals_follow_up_is_given_the_summary() {
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"id": "r1"})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let s = TestServer::start(
        "sqlite",
        &[("API_SERVER_URL", &api), ("API_RESOURCE_TYPES", "appointments"), ("CONTEXT_SUMMARY_KEEP_MESSAGES", "2")],
    )
    .await;
    let id = say(&s, FACT).await["sessionId"].as_str().unwrap().to_string();
    say(&s, "second").await;
    let summary = ok(summarize(&s, &id)).await["contextSummary"].clone();
    assert!(summary.is_object());
    let waiting = say(&s, "book it\n@tool create_resource {\"resourceType\": \"appointments\", \"data\": {}}").await;
    let action = waiting["actions"][0]["id"].as_str().unwrap().to_string();
    let approved =
        ok(request(&s, "POST", &format!("/agent/conversations/acme/sessions/{id}/actions/{action}/approve"))).await;
    let note = &approved["agentMessage"]["metadata"]["contextSummary"];
    assert_eq!(note["createdAt"], summary["createdAt"], "{approved}");
    assert!(approved["response"].as_str().unwrap().contains("[summary: "), "{approved}");
}
