//! Black-box tests of the real `agent-server serve` binary over HTTP, on both storage backends.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    TestServer, expect_error, get, next_link, ok, ok_json, parse_sse, send, sse_events, turn_request,
};

/// The seed's two curl commands, verbatim.
async fn the_seeds_curl_commands_work(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let port = s.url.rsplit(':').next().unwrap().to_string();
    let post = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", &format!("http://localhost:{port}/agent/process")])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", "x-tenant-id: test-tenant", "-H", "x-user-id: test-user", "-H", "x-location-id: test-location"])
        .args(["-d", r#"{"message": "Hello, this is a test message"}"#])
        .output()
        .unwrap();
    let reply: Value = serde_json::from_slice(&post.stdout).unwrap();
    assert!(reply["response"].as_str().unwrap().contains("Hello, this is a test message"), "{reply}");
    let session_id = reply["sessionId"].as_str().unwrap();
    assert_eq!(reply["userMessage"]["role"], "user");
    assert_eq!(reply["agentMessage"]["role"], "agent");
    assert_eq!(reply["agentMessage"]["sessionId"], json!(session_id));
    let list = std::process::Command::new("curl")
        .args(["-s", "-X", "GET", &format!("http://localhost:{port}/agent/conversations/test-tenant/users/test-user")])
        .output()
        .unwrap();
    let sessions: Value = serde_json::from_slice(&list.stdout).unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(session["id"], json!(session_id));
    assert_eq!(session["tenantId"], "test-tenant");
    assert_eq!(session["userId"], "test-user");
    assert_eq!(session["locationId"], "test-location");
    assert_eq!(session["isActive"], true);
    assert!(session["createdAt"].as_str().unwrap().ends_with('Z'));
    let messages = session["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["content"], "Hello, this is a test message");
    assert_eq!(messages[1]["content"], reply["response"]);
}

async fn history_and_context_reach_the_model(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let mut session = None;
    for (i, text) in ["first", "second", "third"].iter().enumerate() {
        let r =
            ok(turn_request(&s, "t1", "u1")
                .json(&json!({"message": text, "context": {"plan": "gold", "role": "owner"}})))
            .await;
        assert_eq!(r["response"], json!(format!("Echo: {text} [history: {} messages; context: plan, role]", i * 2)));
        let id = r["sessionId"].as_str().unwrap().to_string();
        assert_eq!(session.get_or_insert(id.clone()), &id, "one session across the three turns");
    }
    // The stored conversation is in order, newest first by default.
    let id = session.unwrap();
    let msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{id}/messages")).await).await;
    let contents: Vec<&str> = msgs
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["third", "second", "first"]);
    // HISTORY_MAX_MESSAGES bounds what the model sees.
    let s2 = TestServer::start(backend, &[("HISTORY_MAX_MESSAGES", "3")]).await;
    for _ in 0..3 {
        ok(turn_request(&s2, "t1", "u1").json(&json!({"message": "x"}))).await;
    }
    let r = ok(turn_request(&s2, "t1", "u1").json(&json!({"message": "y"}))).await;
    assert!(r["response"].as_str().unwrap().contains("history: 3 messages"), "{r}");
}

async fn sessions_are_reused_until_idle_and_explicit_ids_are_checked(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let a = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "one"}))).await;
    let b = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "two"}))).await;
    assert_eq!(a["sessionId"], b["sessionId"]);
    let sid = a["sessionId"].as_str().unwrap();
    // Another user of the same tenant gets a session of their own, and cannot use this one.
    let c = ok(turn_request(&s, "t1", "u2").json(&json!({"message": "hi"}))).await;
    assert_ne!(c["sessionId"], a["sessionId"]);
    let r = turn_request(&s, "t1", "u2").json(&json!({"message": "hi", "sessionId": sid}));
    assert_eq!(expect_error(r, StatusCode::NOT_FOUND).await.0, "not_found");
    // A well-formed id that no session of the tenant has: the session is created with it (the
    // original server's clients choose their session ids), and the user's active one is closed.
    let chosen =
        ok(turn_request(&s, "t1", "u1").json(&json!({"message": "mine", "sessionId": "client-chosen-1"}))).await;
    assert_eq!(chosen["sessionId"], "client-chosen-1");
    let again =
        ok(turn_request(&s, "t1", "u1").json(&json!({"message": "again", "sessionId": "client-chosen-1"}))).await;
    assert_eq!(again["sessionId"], "client-chosen-1");
    let old = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}")).await).await;
    assert_eq!(old["isActive"], false, "one active session per user");
    let r = turn_request(&s, "t1", "u2").json(&json!({"message": "hi", "sessionId": "client-chosen-1"}));
    assert_eq!(expect_error(r, StatusCode::NOT_FOUND).await.0, "not_found", "another user's id stays theirs");
    let next = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "no id"}))).await;
    assert_eq!(next["sessionId"], "client-chosen-1", "the chosen session is the user's active one");
    // Closing it: continuing it explicitly is 409, and the next message starts a new session.
    let closed = send(&s, "POST", &format!("/agent/conversations/t1/sessions/{sid}/close"), None, &[], None).await;
    assert_eq!(ok_json(closed).await["isActive"], false);
    let r = turn_request(&s, "t1", "u1").json(&json!({"message": "three", "sessionId": sid}));
    assert_eq!(expect_error(r, StatusCode::CONFLICT).await.0, "conflict");
    let d = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "four"}))).await;
    assert_ne!(d["sessionId"], a["sessionId"]);
    // With SESSION_IDLE_MINUTES=0 every message after a pause starts a new session, and the old one is closed.
    let idle = TestServer::start(backend, &[("SESSION_IDLE_MINUTES", "0")]).await;
    let x = ok(turn_request(&idle, "t1", "u1").json(&json!({"message": "one"}))).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let y = ok(turn_request(&idle, "t1", "u1").json(&json!({"message": "two"}))).await;
    assert_ne!(x["sessionId"], y["sessionId"]);
    let old =
        ok_json(get(&idle, &format!("/agent/conversations/t1/sessions/{}", x["sessionId"].as_str().unwrap())).await)
            .await;
    assert_eq!(old["isActive"], false);
    // An explicit sessionId still continues the idle session... unless it was closed, as here.
    let r = turn_request(&idle, "t1", "u1").json(&json!({"message": "three", "sessionId": y["sessionId"]}));
    assert_eq!(ok(r).await["sessionId"], y["sessionId"]);
}

async fn pages_through_250_messages_by_link_and_by_before(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let mut sid = String::new();
    for i in 0..125 {
        let r = ok(turn_request(&s, "t1", "u1").json(&json!({"message": format!("m{i}")}))).await;
        sid = r["sessionId"].as_str().unwrap().to_string();
    }
    // By Link headers.
    let mut ids = Vec::new();
    let mut next = Some(format!("/agent/conversations/t1/sessions/{sid}/messages?limit=40&order=asc"));
    while let Some(path) = next {
        let r = get(&s, &path).await;
        next = next_link(&r);
        let page = ok_json(r).await;
        ids.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|m| (m["id"].as_str().unwrap().to_string(), m["timestamp"].as_str().unwrap().to_string())),
        );
    }
    assert_eq!(ids.len(), 250);
    let unique: std::collections::HashSet<_> = ids.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(unique.len(), 250, "no message repeated");
    assert!(ids.windows(2).all(|w| w[0].1 < w[1].1), "oldest first, strictly increasing");
    // By `before`, newest first, as the original server's clients page.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            None => format!("/agent/conversations/t1/sessions/{sid}/messages?limit=33"),
            Some(b) => format!("/agent/conversations/t1/sessions/{sid}/messages?limit=33&before={}", urlencode(b)),
        };
        let page = ok_json(get(&s, &path).await).await;
        let page = page.as_array().unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|m| m["id"].as_str().unwrap().to_string()));
        before = Some(page.last().unwrap()["timestamp"].as_str().unwrap().to_string());
    }
    let mut expected: Vec<String> = ids.into_iter().map(|(id, _)| id).collect();
    expected.reverse();
    assert_eq!(seen, expected);
    // The tenant's messages page the same way.
    let mut count = 0;
    let mut next = Some("/agent/conversations/t1/messages?limit=100".to_string());
    while let Some(path) = next {
        let r = get(&s, &path).await;
        next = next_link(&r);
        count += ok_json(r).await.as_array().unwrap().len();
    }
    assert_eq!(count, 250);
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn streams_session_deltas_and_done(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let r = turn_request(&s, "t1", "u1")
        .json(&json!({"message": "stream this reply please", "stream": true}))
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names[0], "session");
    assert_eq!(*names.last().unwrap(), "done");
    let deltas: Vec<&str> =
        events.iter().filter(|(e, _)| e == "delta").map(|(_, d)| d["text"].as_str().unwrap()).collect();
    assert!(deltas.len() >= 3, "several chunks: {deltas:?}");
    let done = &events.last().unwrap().1;
    assert_eq!(deltas.concat(), done["agentMessage"]["content"].as_str().unwrap());
    assert_eq!(events[0].1["userMessage"]["content"], "stream this reply please");
    assert_eq!(events[0].1["sessionId"], done["sessionId"]);
    // Accept: text/event-stream chooses streaming too; both turns are stored.
    let r = turn_request(&s, "t1", "u1")
        .header("accept", "text/event-stream")
        .json(&json!({"message": "again"}))
        .send()
        .await
        .unwrap();
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap().0, "done");
    let sid = done["sessionId"].as_str().unwrap();
    let msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc")).await).await;
    assert_eq!(msgs.as_array().unwrap().len(), 4);
    // A problem known before the stream starts is an HTTP error with the JSON error body.
    let req = turn_request(&s, "t1", "u2").json(&json!({"message": "x", "stream": true, "sessionId": sid}));
    let (code, _) = expect_error(req, StatusCode::NOT_FOUND).await;
    assert_eq!(code, "not_found");
}

async fn a_client_that_disconnects_mid_stream_leaves_a_whole_turn(backend: &str) {
    let s = TestServer::start(backend, &[("ECHO_CHUNK_DELAY_MS", "150")]).await;
    let r = turn_request(&s, "t1", "u1")
        .json(&json!({"message": "a long answer that streams slowly in many chunks", "stream": true, "onDisconnect": "cancel"}))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: delta") {
        seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
    }
    let sid = parse_sse(&seen)[0].1["sessionId"].as_str().unwrap().to_string();
    drop(body); // the client goes away
    let mut msgs = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc")).await).await;
        if msgs.as_array().unwrap().len() == 2 {
            break;
        }
    }
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[1]["role"], "agent");
    assert_eq!(msgs[1]["metadata"]["interrupted"], "client_disconnected");
    let full = "Echo: a long answer that streams slowly in many chunks [history: 0 messages; context: none]";
    let partial = msgs[1]["content"].as_str().unwrap();
    assert!(full.starts_with(partial) && partial.len() < full.len(), "partial reply: {partial:?}");
}

async fn idempotent_retries_return_the_first_result(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let post = |key: &'static str, msg: &'static str| {
        turn_request(&s, "t1", "u1").header("idempotency-key", key).json(&json!({"message": msg}))
    };
    let first = ok(post("key-1", "hello")).await;
    let retry = ok(post("key-1", "hello")).await;
    assert_eq!(first, retry);
    let other = ok(post("key-2", "hello")).await;
    assert_ne!(other["agentMessage"]["id"], first["agentMessage"]["id"]);
    let sid = first["sessionId"].as_str().unwrap();
    let msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}/messages")).await).await;
    assert_eq!(msgs.as_array().unwrap().len(), 4, "the retry stored nothing");
    // The same key from another tenant is another request.
    let r = turn_request(&s, "t2", "u1").header("idempotency-key", "key-1").json(&json!({"message": "hello"}));
    let t2 = ok(r).await;
    assert_ne!(t2["sessionId"], first["sessionId"]);
}

on_both_backends!(
    the_seeds_curl_commands_work,
    history_and_context_reach_the_model,
    sessions_are_reused_until_idle_and_explicit_ids_are_checked,
    pages_through_250_messages_by_link_and_by_before,
    streams_session_deltas_and_done,
    a_client_that_disconnects_mid_stream_leaves_a_whole_turn,
    idempotent_retries_return_the_first_result,
);
