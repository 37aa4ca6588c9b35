//! Turns whose server died (kill -9), on both backends through the real binary, restarted on the same
//! store: the server that comes up settles them by itself (no reader needed), each ends with one
//! final status everywhere (its answer to a retry, its record, its stored reply, the feed), and its
//! reply sits right after its own user message whatever the session did meanwhile.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestServer, get, ok, ok_json, parse_sse_ids, turn_request, until_event};

on_both_backends!(
    a_keyed_json_turn_cut_off_by_kill_9_ends_interrupted_everywhere,
    an_orphaned_stream_is_settled_without_a_reader_next_to_its_message
);

const SLOW: (&str, &str) = ("ECHO_CHUNK_DELAY_MS", "150");
const EVENTS: (&str, &str) = ("EVENTS", "on");
const LONG: &str = "a long answer that streams slowly in many chunks so that there is time";

fn kill_9(s: &TestServer) {
    std::process::Command::new("kill").args(["-KILL", &s.pid().to_string()]).status().unwrap();
}

async fn messages(s: &TestServer, sid: &str) -> Vec<Value> {
    let path = format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc");
    ok_json(get(s, &path).await).await.as_array().unwrap().clone()
}

/// The session's messages once `done` holds (the sweep runs every 5 s once a lease of 10 s lapsed).
async fn messages_once(s: &TestServer, sid: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..120 {
        let msgs = messages(s, sid).await;
        if done(&msgs) {
            return msgs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the session never got there: {:#?}", messages(s, sid).await);
}

fn assert_in_order(msgs: &[Value]) {
    let stamps: Vec<&str> = msgs.iter().map(|m| m["timestamp"].as_str().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "timestamps out of order: {stamps:?}");
}

async fn feed(s: &TestServer) -> Vec<Value> {
    ok_json(get(s, "/agent/events/t1?limit=100").await).await.as_array().unwrap().clone()
}

/// A keyed JSON turn's server is killed while the model works. The server started on the same
/// store settles it as `interrupted` by itself: the user message and an empty reply, in that order;
/// the retry with the same key answers `interrupted` (the model does not run again), the turn
/// reads `interrupted`, and the feed has `turn.interrupted` and no `turn.completed` for it.
async fn a_keyed_json_turn_cut_off_by_kill_9_ends_interrupted_everywhere(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let db_path = db.path().join("agent.db");
    let a = TestServer::start_on_store(backend, None, &db_path, &[SLOW, EVENTS]).await;
    let first = ok(turn_request(&a, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    let body = json!({"message": LONG, "sessionId": sid});
    let cut = tokio::spawn({
        let req = turn_request(&a, "t1", "u1").header("idempotency-key", "k-cut").json(&body);
        async move { req.send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    kill_9(&a);
    assert!(cut.await.unwrap().is_err(), "the client lost its connection");
    let b = TestServer::start_on_store(backend, Some(&a), &db_path, &[SLOW, EVENTS]).await;
    let msgs = messages_once(&b, &sid, |m| m.len() == 4).await;
    assert_in_order(&msgs);
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(msgs[2]["content"], LONG);
    assert_eq!(msgs[3]["role"], "agent");
    assert_eq!(msgs[3]["content"], "");
    assert_eq!(msgs[3]["metadata"]["interrupted"], "server_stopped");
    let turn = msgs[2]["id"].as_str().unwrap();
    let retry = turn_request(&b, "t1", "u1").header("idempotency-key", "k-cut").json(&body).send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["status"], "interrupted", "{retry}");
    assert_eq!(retry["turnId"], turn);
    assert_eq!(retry["response"], "");
    let view = ok_json(get(&b, &format!("/agent/conversations/t1/sessions/{sid}/turns/{turn}")).await).await;
    assert_eq!(view["status"], "interrupted", "{view}");
    assert_eq!(messages(&b, &sid).await.len(), 4, "the retry ran nothing");
    let mut ends = Vec::new();
    for _ in 0..50 {
        let events = feed(&b).await;
        ends = events
            .iter()
            .filter(|e| e["data"]["turnId"] == turn)
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        if !ends.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ends, ["turn.interrupted"], "one final status in the feed");
}

/// A streamed turn's server is killed mid-reply; the user goes on through the server started on
/// the same store before anyone reads the old turn. That server settles the orphan by itself, and
/// its partial reply is stored right after its own message, before the newer turn.
async fn an_orphaned_stream_is_settled_without_a_reader_next_to_its_message(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let db_path = db.path().join("agent.db");
    let a = TestServer::start_on_store(backend, None, &db_path, &[SLOW]).await;
    let r = turn_request(&a, "t1", "u1").header("accept", "text/event-stream").json(&json!({"message": LONG}));
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut stream = Box::pin(r.bytes_stream());
    let seen = parse_sse_ids(&until_event(&mut stream, "delta").await);
    let sid = seen[0].2["sessionId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill_9(&a);
    drop(stream);
    let b = TestServer::start_on_store(backend, Some(&a), &db_path, &[]).await;
    let next = ok(turn_request(&b, "t1", "u1").json(&json!({"message": "still there?", "sessionId": sid}))).await;
    assert_eq!(next["status"], "completed");
    let msgs = messages_once(&b, &sid, |m| m.len() == 4).await;
    assert_in_order(&msgs);
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "agent", "user", "agent"]);
    assert_eq!(msgs[0]["content"], LONG);
    assert_eq!(msgs[1]["metadata"]["interrupted"], "server_stopped");
    let partial = msgs[1]["content"].as_str().unwrap();
    assert!(!partial.is_empty() && !partial.contains("[history"), "the persisted deltas, not a whole reply: {partial}");
    assert_eq!(msgs[2]["content"], "still there?");
    assert_eq!(msgs[3]["id"], next["agentMessage"]["id"]);
}
