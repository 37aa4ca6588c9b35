//! Durable turns, on both backends through the real binary: ids and statuses, resumable events,
//! cancel, `onDisconnect`, idempotency bound to user and request, retries of failed and interrupted
//! turns, erasure that wins over a running turn, one active session per user, and (on DynamoDB) a
//! turn followed, cancelled and settled through a second server process.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use axum::body::Bytes;

use crate::support::openai_mock::OpenAiMock;

use crate::support::{TestServer, expect_error, get, ok, ok_json, parse_sse_ids, request, turn_request, until_event};

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>;

on_both_backends!(
    json_turns_carry_their_id_and_status_and_replay_as_events,
    a_dropped_stream_goes_on_and_resumes_from_its_last_event,
    cancel_stops_a_running_turn_and_keeps_its_partial_reply,
    idempotency_keys_belong_to_one_user_and_one_request,
    a_failed_streamed_turn_runs_again_on_its_stored_message,
    an_interrupted_turn_is_never_replayed_as_completed,
    erasure_wins_over_a_running_turn,
    concurrent_first_turns_of_a_user_end_in_one_session,
    a_streamed_first_turn_keeps_its_reply_next_to_its_message,
    events_past_their_retention_are_gone,
    retries_of_a_running_turn_wait_or_follow_it,
);

/// While a keyed turn runs, a JSON retry answers 409 with its turnId, a streamed retry follows it
/// to the same `done`, and a JSON client that hangs up does not stop it.
async fn retries_of_a_running_turn_wait_or_follow_it(backend: &str) {
    let s = TestServer::start(backend, &[SLOW]).await;
    let post = |body: Value| turn_request(&s, "t1", "u1").header("idempotency-key", "k-run").json(&body);
    let hung_up = post(json!({"message": LONG})).timeout(Duration::from_millis(300)).send().await;
    assert!(hung_up.is_err(), "the client gave up before the answer");
    let r = post(json!({"message": LONG})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "idempotency_in_progress");
    let turn = error["error"]["turnId"].as_str().unwrap().to_string();
    let followed =
        parse_sse_ids(&events_text(post(json!({"message": LONG, "stream": true})).send().await.unwrap()).await);
    let done = &followed.last().unwrap().2;
    assert_eq!(followed.last().unwrap().1, "done");
    assert_eq!(done["turnId"], turn.as_str());
    assert_eq!(done["status"], "completed");
    // The turn whose client hung up completed and is stored; the retry now gets its answer.
    let answer = ok(post(json!({"message": LONG}))).await;
    assert_eq!(&answer, done);
}

/// With `TURN_EVENTS_TTL_HOURS=0`, a finished turn's events are gone at once (410); the turn and its
/// messages stay readable.
async fn events_past_their_retention_are_gone(backend: &str) {
    let s = TestServer::start(backend, &[("TURN_EVENTS_TTL_HOURS", "0")]).await;
    let answer = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let (turn, sid) = (answer["turnId"].as_str().unwrap(), answer["sessionId"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (code, _) = expect_error(request(&s, "GET", &(turn_path("t1", sid, turn) + "/events")), StatusCode::GONE).await;
    assert_eq!(code, "gone");
    assert_eq!(ok_json(get(&s, &turn_path("t1", sid, turn)).await).await["status"], "completed");
    // A streamed turn's record too.
    let r = turn_request(&s, "t1", "u1").json(&json!({"message": "again", "stream": true})).send().await.unwrap();
    let events = parse_sse_ids(&events_text(r).await);
    let turn = events[0].2["turnId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    expect_error(request(&s, "GET", &(turn_path("t1", sid, &turn) + "/events")), StatusCode::GONE).await;
}

const SLOW: (&str, &str) = ("ECHO_CHUNK_DELAY_MS", "150");

fn turn_path(t: &str, session: &str, turn: &str) -> String {
    format!("/agent/conversations/{t}/sessions/{session}/turns/{turn}")
}

async fn events_text(r: reqwest::Response) -> String {
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

async fn json_turns_carry_their_id_and_status_and_replay_as_events(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let answer = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let (turn, sid) = (answer["turnId"].as_str().unwrap(), answer["sessionId"].as_str().unwrap());
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["decisionLevel"], "automatic");
    assert_eq!(answer["userMessage"]["id"], turn, "a turn's id is its user message's");
    assert_eq!(answer["userMessage"]["metadata"]["turnId"], turn);
    assert_eq!(answer["agentMessage"]["metadata"]["turnId"], turn);
    assert_eq!(answer["agentMessage"]["metadata"]["turnStatus"], "completed");
    let view = ok_json(get(&s, &turn_path("t1", sid, turn)).await).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(view["userMessageId"], turn);
    assert_eq!(view["agentMessageId"], answer["agentMessage"]["id"]);
    // Its events: session, the whole reply, and a `done` identical to the JSON answer.
    let text = events_text(get(&s, &(turn_path("t1", sid, turn) + "/events")).await).await;
    assert!(text.starts_with("retry: ") && text.find("id: 1").is_some(), "a retry hint first: {text}");
    let events = parse_sse_ids(&text);
    let names: Vec<_> = events.iter().map(|(id, e, _)| (*id, e.as_str())).collect();
    assert_eq!(names, [(1, "session"), (2, "delta"), (3, "done")]);
    assert_eq!(events[2].2, answer);
    let after = request(&s, "GET", &(turn_path("t1", sid, turn) + "/events")).header("last-event-id", "2");
    let rest = parse_sse_ids(&events_text(after.send().await.unwrap()).await);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1, "done");
    // Another session's path, another tenant or an unknown turn: 404.
    let other = ok(turn_request(&s, "t1", "u2").json(&json!({"message": "mine"}))).await;
    let osid = other["sessionId"].as_str().unwrap();
    for path in [turn_path("t1", osid, turn), turn_path("t2", sid, turn), turn_path("t1", sid, "nope")] {
        expect_error(request(&s, "GET", &path), StatusCode::NOT_FOUND).await;
        expect_error(request(&s, "GET", &(path.clone() + "/events")), StatusCode::NOT_FOUND).await;
        expect_error(request(&s, "POST", &(path + "/cancel")), StatusCode::NOT_FOUND).await;
    }
    // A finished turn cannot be cancelled.
    let (code, _) =
        expect_error(request(&s, "POST", &(turn_path("t1", sid, turn) + "/cancel")), StatusCode::CONFLICT).await;
    assert_eq!(code, "turn_ended");
}

/// Starts a slow streamed turn of `u1` and reads it until its first delta: (session id, turn id,
/// last event id seen, the rest of the body).
async fn slow_stream(s: &TestServer, body: Value) -> (String, String, u64, Body) {
    slow_stream_as(s, "u1", body).await
}

const LONG: &str = "a long answer that streams slowly in many chunks so that there is time";

/// Event ids 1, 2, 3, ... without a gap, and the text of their deltas.
fn contiguous_text(events: &[(u64, String, Value)]) -> String {
    let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "event ids without gaps or repeats");
    events.iter().filter(|e| e.1 == "delta").map(|e| e.2["text"].as_str().unwrap()).collect()
}

async fn a_dropped_stream_goes_on_and_resumes_from_its_last_event(backend: &str) {
    let s = TestServer::start(backend, &[SLOW]).await;
    let r = turn_request(&s, "t1", "u1").header("accept", "text/event-stream").json(&json!({"message": LONG}));
    let mut stream: Body = Box::pin(r.send().await.unwrap().bytes_stream());
    let before = parse_sse_ids(&until_event(&mut stream, "delta").await);
    let (sid, turn) = (before[0].2["sessionId"].as_str().unwrap(), before[0].2["turnId"].as_str().unwrap());
    let (sid, turn, last) = (sid.to_string(), turn.to_string(), before.last().unwrap().0);
    drop(stream); // the connection drops; the turn goes on (onDisconnect: continue)
    let resumed = request(&s, "GET", &(turn_path("t1", &sid, &turn) + "/events"))
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let events = parse_sse_ids(&events_text(resumed).await);
    assert!(events.first().unwrap().0 == last + 1, "resumed right after {last}: {events:?}");
    let done = &events.last().unwrap().2;
    assert_eq!(events.last().unwrap().1, "done");
    assert_eq!(done["status"], "completed");
    let full = format!("Echo: {LONG} [history: 0 messages; context: none]");
    assert_eq!(done["response"], full.as_str());
    // What the client saw before the drop and after the resume joins up: every event once, in
    // order, and the deltas make the whole reply.
    let seen: Vec<(u64, String, Value)> = before.iter().cloned().chain(events.iter().cloned()).collect();
    assert_eq!(contiguous_text(&seen), full);
    let msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc")).await).await;
    assert_eq!(msgs.as_array().unwrap().len(), 2);
    assert_eq!(msgs[1]["content"], full.as_str());
    assert!(msgs[1]["metadata"].get("interrupted").is_none());
    // The whole stream again, from the start, ends with the same `done`.
    let again = parse_sse_ids(&events_text(get(&s, &(turn_path("t1", &sid, &turn) + "/events")).await).await);
    assert_eq!(contiguous_text(&again), full);
    assert_eq!(&again.last().unwrap().2, done);
    let view = ok_json(get(&s, &turn_path("t1", &sid, &turn)).await).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(view["lastEventId"], again.last().unwrap().0);
}

async fn cancel_stops_a_running_turn_and_keeps_its_partial_reply(backend: &str) {
    let s = TestServer::start(backend, &[SLOW]).await;
    let (sid, turn, _, mut stream) = slow_stream(&s, json!({"message": LONG})).await;
    let cancel = turn_path("t1", &sid, &turn) + "/cancel";
    let view = ok(request(&s, "POST", &cancel)).await;
    assert_eq!(view["status"], "cancelled");
    // The stream ends with `done` saying so.
    let mut rest = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let done = parse_sse_ids(&rest).into_iter().find(|(_, e, _)| e == "done").expect("a done event").2;
    assert_eq!(done["status"], "cancelled");
    let msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc")).await).await;
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1]["metadata"]["interrupted"], "cancelled");
    assert_eq!(msgs[1]["metadata"]["turnStatus"], "cancelled");
    let full = format!("Echo: {LONG} [history: 0 messages; context: none]");
    let partial = msgs[1]["content"].as_str().unwrap();
    assert!(full.starts_with(partial) && partial.len() < full.len(), "{partial:?}");
    // Cancelling again answers the same.
    assert_eq!(ok(request(&s, "POST", &cancel)).await["status"], "cancelled");
    assert_eq!(ok_json(get(&s, &turn_path("t1", &sid, &turn)).await).await["status"], "cancelled");
}

async fn idempotency_keys_belong_to_one_user_and_one_request(backend: &str) {
    // A recording model: a retry that ran the turn again would call it again.
    let mock = OpenAiMock::start().await;
    let s = TestServer::start(backend, &[("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", &mock.url)]).await;
    let post = |user: &'static str, key: &'static str, body: Value| {
        turn_request(&s, "t1", user).header("idempotency-key", key).json(&body)
    };
    let first = ok(post("u1", "k-1", json!({"message": "my secret plan"}))).await;
    // Another user with the same key gets a turn of their own, never the first user's.
    let theirs = ok(post("u2", "k-1", json!({"message": "my secret plan"}))).await;
    assert_ne!(theirs["turnId"], first["turnId"]);
    assert_ne!(theirs["sessionId"], first["sessionId"]);
    assert_eq!(theirs["userMessage"]["userId"], "u2");
    // The same key with another request is refused, and says nothing of the first.
    for body in [
        json!({"message": "something else"}),
        json!({"message": "my secret plan", "context": {"a": 1}}),
        json!({"message": "my secret plan", "sessionId": first["sessionId"]}),
    ] {
        let r = post("u1", "k-1", body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let text = r.text().await.unwrap();
        assert!(text.contains("idempotency_key_reused") && !text.contains("secret"), "{text}");
    }
    // The same request again: the first answer, and the model is not asked again.
    let calls = mock.calls();
    assert_eq!(ok(post("u1", "k-1", json!({"message": "my secret plan"}))).await, first);
    // Streamed, the retry replays it as events ending with the same `done`.
    let r = post("u1", "k-1", json!({"message": "my secret plan", "stream": true})).send().await.unwrap();
    let events = parse_sse_ids(&events_text(r).await);
    assert_eq!(events.last().unwrap().2, first);
    assert_eq!(mock.calls(), calls, "a retry replays; it never runs the turn again");
}

async fn a_failed_streamed_turn_runs_again_on_its_stored_message(backend: &str) {
    let mock = OpenAiMock::start().await;
    let s = TestServer::start(
        backend,
        &[
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", &mock.url),
            ("OPENAI_API_KEY", "sk-test"),
            ("LLM_MODEL", "m"),
        ],
    )
    .await;
    let body = json!({"message": "book it [fail-once]", "stream": true});
    let post = || turn_request(&s, "t1", "u1").header("idempotency-key", "k-fail").json(&body);
    // The model fails after the stream began: the user message is stored, the stream ends in `error`.
    let events = parse_sse_ids(&events_text(post().send().await.unwrap()).await);
    assert_eq!(events.first().unwrap().1, "session");
    let last = events.last().unwrap();
    assert_eq!(last.1, "error");
    assert_eq!(last.2["error"]["code"], "model_provider_error");
    assert!(last.2["error"]["requestId"].is_string(), "{:?}", last.2);
    let sid = events[0].2["sessionId"].as_str().unwrap().to_string();
    let turn = events[0].2["turnId"].as_str().unwrap().to_string();
    assert_eq!(ok_json(get(&s, &turn_path("t1", &sid, &turn)).await).await["status"], "failed");
    // The retry runs the turn again on the same stored message, which is never stored twice.
    let events = parse_sse_ids(&events_text(post().send().await.unwrap()).await);
    let done = &events.last().unwrap().2;
    assert_eq!(events.last().unwrap().1, "done", "{events:?}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["turnId"], turn.as_str());
    let msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc")).await).await;
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0]["id"], turn.as_str());
    assert_eq!(msgs[1]["role"], "agent");
    assert_eq!(ok_json(get(&s, &turn_path("t1", &sid, &turn)).await).await["status"], "completed");
}

async fn an_interrupted_turn_is_never_replayed_as_completed(backend: &str) {
    let s = TestServer::start(backend, &[SLOW]).await;
    let r = turn_request(&s, "t1", "u1")
        .header("idempotency-key", "k-cut")
        .json(&json!({"message": LONG, "stream": true, "onDisconnect": "cancel"}))
        .send()
        .await
        .unwrap();
    let mut stream: Body = Box::pin(r.bytes_stream());
    let seen = until_event(&mut stream, "delta").await;
    let sid = parse_sse_ids(&seen)[0].2["sessionId"].as_str().unwrap().to_string();
    drop(stream);
    let mut msgs = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc")).await).await;
        if msgs.as_array().unwrap().len() == 2 {
            break;
        }
    }
    assert_eq!(msgs[1]["metadata"]["interrupted"], "client_disconnected");
    // The retry gives the stored partial result with its status, never as completed.
    let retry =
        ok(turn_request(&s, "t1", "u1").header("idempotency-key", "k-cut").json(&json!({"message": LONG}))).await;
    assert_eq!(retry["status"], "interrupted");
    assert_eq!(retry["response"], msgs[1]["content"]);
    assert_eq!(retry["agentMessage"]["id"], msgs[1]["id"]);
}

async fn erasure_wins_over_a_running_turn(backend: &str) {
    let s = TestServer::start(backend, &[("ECHO_CHUNK_DELAY_MS", "200")]).await;
    // A JSON turn that starts a session, still running when the user is erased.
    let running = tokio::spawn({
        let req = turn_request(&s, "t1", "u1").json(&json!({"message": LONG}));
        async move { req.send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    ok(request(&s, "DELETE", "/agent/conversations/t1/users/u1")).await;
    let answer = running.await.unwrap();
    assert_eq!(answer.status(), StatusCode::CONFLICT);
    // A streamed turn on an existing session, still running when the session is deleted.
    let first = ok(turn_request(&s, "t1", "u2").json(&json!({"message": "hi"}))).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    let (_, _, _, stream) = slow_stream_as(&s, "u2", json!({"message": LONG, "sessionId": sid})).await;
    ok(request(&s, "DELETE", &format!("/agent/conversations/t1/sessions/{sid}"))).await;
    drop(stream);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for user in ["u1", "u2"] {
        let sessions = ok_json(get(&s, &format!("/agent/conversations/t1/users/{user}")).await).await;
        assert_eq!(sessions.as_array().unwrap().len(), 0, "{user}: {sessions}");
    }
    let messages = ok_json(get(&s, "/agent/conversations/t1/messages").await).await;
    assert_eq!(messages.as_array().unwrap().len(), 0, "nothing came back: {messages}");
}

async fn slow_stream_as(s: &TestServer, user: &str, body: Value) -> (String, String, u64, Body) {
    let r = turn_request(s, "t1", user).header("accept", "text/event-stream").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut stream: Body = Box::pin(r.bytes_stream());
    let seen = until_event(&mut stream, "delta").await;
    let events = parse_sse_ids(&seen);
    assert_eq!(events[0].1, "session");
    let sid = events[0].2["sessionId"].as_str().unwrap().to_string();
    let turn = events[0].2["turnId"].as_str().unwrap().to_string();
    (sid, turn, events.last().unwrap().0, stream)
}

async fn concurrent_first_turns_of_a_user_end_in_one_session(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    // `parallel`: each is a turn of its own (under `queue` they would be answered together).
    let body = |i| json!({"message": format!("hello {i}"), "concurrency": "parallel"});
    let turns = (0..5).map(|i| ok(turn_request(&s, "t1", "u1").json(&body(i))));
    let answers = futures::future::join_all(turns).await;
    let sessions: std::collections::HashSet<_> = answers.iter().map(|a| a["sessionId"].clone()).collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let listed = ok_json(get(&s, "/agent/conversations/t1/users/u1").await).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["messages"].as_array().unwrap().len(), 10);
}

/// A new user's first turn streams slowly while three JSON turns of the user arrive, `parallel`: they
/// continue its session, and its reply still sits right after its own message (the conversation
/// alternates, each reply right after the message it answers).
async fn a_streamed_first_turn_keeps_its_reply_next_to_its_message(backend: &str) {
    let s = TestServer::start(backend, &[SLOW]).await;
    let r = turn_request(&s, "t1", "new-user").json(&json!({"message": LONG, "stream": true})).send().await.unwrap();
    let mut body: Body = Box::pin(r.bytes_stream());
    let seen = until_event(&mut body, "session").await;
    let session = crate::support::parse_sse(&seen).into_iter().find(|(e, _)| e == "session").unwrap().1;
    let sid = session["sessionId"].as_str().unwrap().to_string();
    for i in 0..3 {
        let body = json!({"message": format!("meanwhile {i}"), "concurrency": "parallel"});
        let answer = ok(turn_request(&s, "t1", "new-user").json(&body)).await;
        assert_eq!(answer["sessionId"], sid.as_str());
    }
    until_event(&mut body, "done").await;
    let path = format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc&limit=100");
    let messages = ok_json(get(&s, &path).await).await;
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 8, "{messages:#?}");
    for pair in messages.chunks(2) {
        assert_eq!(
            (pair[0]["role"].as_str(), pair[1]["role"].as_str()),
            (Some("user"), Some("agent")),
            "{messages:#?}"
        );
        assert_eq!(pair[1]["metadata"]["turnId"], pair[0]["id"], "each reply follows its own message");
    }
    assert_eq!(messages[0]["content"], LONG);
}

/// Two server processes on the same tables: a turn running on one is followed from its last event,
/// and cancelled, through the other; a turn whose server dies is settled as interrupted.
#[tokio::test]
async fn a_turn_on_one_server_is_followed_and_cancelled_through_another() {
    let a = TestServer::start("dynamodb", &[SLOW]).await;
    let b = TestServer::start_beside(&a, &[SLOW]).await;
    let (sid, turn, last, stream) = slow_stream(&a, json!({"message": LONG})).await;
    drop(stream);
    let resumed = request(&b, "GET", &(turn_path("t1", &sid, &turn) + "/events"))
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let events = parse_sse_ids(&events_text(resumed).await);
    assert!(events.first().unwrap().0 > last, "{events:?}");
    assert_eq!(events.last().unwrap().1, "done");
    let full = format!("Echo: {LONG} [history: 0 messages; context: none]");
    assert_eq!(events.last().unwrap().2["response"], full.as_str());
    // Cancelled through the other server: it stops within a write or two.
    let (sid, turn, _, mut stream) = slow_stream(&a, json!({"message": LONG, "sessionId": sid})).await;
    let view = ok(request(&b, "POST", &(turn_path("t1", &sid, &turn) + "/cancel"))).await;
    assert_eq!(view["status"], "cancelled");
    let mut rest = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let done = parse_sse_ids(&rest).into_iter().find(|(_, e, _)| e == "done").expect("done").2;
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["agentMessage"]["metadata"]["interrupted"], "cancelled");
    assert!(done["response"].as_str().unwrap().len() < full.len());
    // A server that dies mid-turn: once its lease lapses, the turn reads as interrupted, with the
    // partial reply it had persisted stored and marked.
    let (sid, turn, _, _stream) = slow_stream(&a, json!({"message": LONG, "sessionId": sid})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::process::Command::new("kill").args(["-KILL", &a.pid().to_string()]).status().unwrap();
    let mut view = Value::Null;
    for _ in 0..40 {
        view = ok_json(get(&b, &turn_path("t1", &sid, &turn)).await).await;
        if view["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(view["status"], "interrupted", "{view}");
    let msgs = ok_json(get(&b, &format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc")).await).await;
    let last = msgs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "agent");
    assert_eq!(last["metadata"]["interrupted"], "server_stopped");
    assert!(!last["content"].as_str().unwrap().is_empty(), "the persisted deltas were kept: {last}");
}

/// An open stream holds a slot of its own until it ends (`MAX_CONCURRENT_STREAMS`): one more is
/// refused with 503 and starts no turn; once the first ends, streams are served again.
#[tokio::test]
async fn open_streams_hold_their_slot_until_they_end() {
    let s = TestServer::start("sqlite", &[SLOW, ("MAX_CONCURRENT_STREAMS", "1")]).await;
    let (sid, _, _, mut first) = slow_stream(&s, json!({"message": LONG})).await;
    let (code, _) = expect_error(
        turn_request(&s, "t1", "u2").json(&json!({"message": "me too", "stream": true})),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(code, "too_many_streams");
    assert_eq!(ok_json(get(&s, "/agent/conversations/t1/users/u2").await).await.as_array().unwrap().len(), 0);
    // JSON turns are not streams.
    ok(turn_request(&s, "t1", "u2").json(&json!({"message": "plain"}))).await;
    while let Some(Ok(_)) = first.next().await {}
    drop(first);
    let mut served = false;
    for _ in 0..20 {
        let r = turn_request(&s, "t1", "u1")
            .json(&json!({"message": "next", "stream": true, "sessionId": sid}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the slot came back");
}

/// A keyed JSON turn running on one server: a retry through another answers 409 with its turnId
/// (the model and its tools never run twice), and once it ends the retry gets its answer.
#[tokio::test]
async fn a_keyed_json_turn_is_not_run_twice_across_servers() {
    let a = TestServer::start("dynamodb", &[SLOW]).await;
    let b = TestServer::start_beside(&a, &[SLOW]).await;
    let body = json!({"message": LONG});
    let first = tokio::spawn({
        let req = turn_request(&a, "t1", "u1").header("idempotency-key", "k-x").json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = turn_request(&b, "t1", "u1").header("idempotency-key", "k-x").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "idempotency_in_progress");
    let answer = first.await.unwrap();
    assert_eq!(error["error"]["turnId"], answer["turnId"]);
    let again = ok(turn_request(&b, "t1", "u1").header("idempotency-key", "k-x").json(&body)).await;
    assert_eq!(again, answer);
    let sid = answer["sessionId"].as_str().unwrap();
    let msgs = ok_json(get(&b, &format!("/agent/conversations/t1/sessions/{sid}/messages")).await).await;
    assert_eq!(msgs.as_array().unwrap().len(), 2, "stored once");
}
