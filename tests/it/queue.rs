//! Messages that arrive while their session's turn runs, on both backends, through the real binary
//! with two server processes on one store: `queue` (the default) stores them at once and answers
//! them together in one model call after the running turn; `interrupt` stops the running turn and
//! answers the new message; a debounce makes a burst one turn; a server killed with queued messages
//! leaves them answered by the server that takes over.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, get, ok, ok_json, parse_sse_ids, request, turn_request, until_event};

on_both_backends!(
    a_burst_of_three_messages_is_two_model_calls_in_the_order_the_model_saw,
    interrupt_stops_the_running_turn_and_answers_the_new_message,
    a_debounce_makes_a_burst_one_turn,
    queued_messages_of_a_killed_server_are_answered_after_it,
    a_waiting_action_is_superseded_by_interrupt_not_by_queue,
    cancelling_the_answering_turn_cancels_every_message_and_erasure_drops_queued_ones,
);

const LONG: &str = "a long answer that streams slowly in many chunks so that there is time";

async fn messages(s: &TestServer, sid: &str) -> Vec<Value> {
    let path = format!("/agent/conversations/t1/sessions/{sid}/messages?order=asc&limit=100");
    ok_json(get(s, &path).await).await.as_array().unwrap().clone()
}

fn roles(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(|m| m["role"].as_str().unwrap()).collect()
}

fn contents(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| m["content"].as_str().unwrap().to_string()).collect()
}

async fn turn(s: &TestServer, sid: &str, turn: &Value) -> Value {
    ok_json(get(s, &format!("/agent/conversations/t1/sessions/{sid}/turns/{}", turn.as_str().unwrap())).await).await
}

fn kill_9(s: &TestServer) {
    std::process::Command::new("kill").args(["-KILL", &s.pid().to_string()]).status().unwrap();
}

/// A streamed answer's body.
type Sse = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>;

/// Opens a streamed turn and reads up to its `session` event.
async fn open_stream(s: &TestServer, body: Value) -> (Value, Sse) {
    let r = turn_request(s, "t1", "u1").header("accept", "text/event-stream").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut stream: Sse = Box::pin(r.bytes_stream());
    let seen = parse_sse_ids(&until_event(&mut stream, "session").await);
    (seen.into_iter().find(|e| e.1 == "session").unwrap().2, stream)
}

async fn rest_of(mut stream: Sse) -> Vec<(u64, String, Value)> {
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    parse_sse_ids(&text)
}

/// "first" (slow), then "second" and "third" 100 ms apart, through two servers: the model is called
/// twice (the first message, then the other two together), every client gets the reply that
/// answered its message, and the session's stored order is the order the model saw.
async fn a_burst_of_three_messages_is_two_model_calls_in_the_order_the_model_saw(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let model = OpenAiMock::start().await;
    let env = [("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", model.url.as_str()), ("EVENTS", "on")];
    let x = TestServer::start_on_store(backend, None, &path, &env).await;
    let y = TestServer::start_on_store(backend, Some(&x), &path, &env).await;
    let hello = ok(turn_request(&x, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let sid = hello["sessionId"].as_str().unwrap().to_string();
    let before = model.calls();
    let first = tokio::spawn({
        let req = turn_request(&x, "t1", "u1").json(&json!({"message": "first [slow:1500]", "sessionId": sid}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn({
        let req = turn_request(&y, "t1", "u1").json(&json!({"message": "second", "sessionId": sid}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A streamed one says at once that it waits, with its turn's id.
    let (session_event, stream) = open_stream(&x, json!({"message": "third", "sessionId": sid})).await;
    assert_eq!(session_event["status"], "queued", "{session_event}");
    assert_eq!(session_event["userMessage"]["content"], "third");
    let third_turn = session_event["turnId"].clone();
    let third_events = rest_of(stream).await;
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(model.calls() - before, 2, "the first message, then the other two together");
    // The second call saw both waiting messages, in order, after the first one's reply.
    let body = model.last_body();
    let sent: Vec<(String, String)> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect();
    let tail: Vec<(&str, &str)> = sent.iter().rev().take(3).rev().map(|(r, c)| (r.as_str(), c.as_str())).collect();
    assert_eq!(tail[0].0, "assistant");
    assert!(tail[0].1.contains("first [slow:1500]"), "{sent:?}");
    assert_eq!(&tail[1..], &[("user", "second"), ("user", "third")], "{sent:?}");
    // Both waiting clients got the one reply, and say which turn gave it.
    let answering = second["answeredBy"].clone();
    assert!(answering.is_string(), "{second}");
    assert_ne!(answering, second["turnId"]);
    assert_eq!(second["userMessage"]["content"], "second");
    let done = third_events.iter().find(|e| e.1 == "done").expect("the third stream's done").2.clone();
    assert_eq!(done["answeredBy"], answering, "{done}");
    assert_eq!(done["turnId"], third_turn);
    assert_eq!(done["response"], second["response"]);
    assert!(third_events.iter().any(|e| e.1 == "delta"), "the stream relays the answer's deltas: {third_events:?}");
    // Stored in the order the model saw: user, agent, user, user, agent.
    let msgs = messages(&y, &sid).await;
    assert_eq!(roles(&msgs[2..]), ["user", "agent", "user", "user", "agent"], "{:?}", contents(&msgs));
    assert_eq!(contents(&msgs[2..])[2..4], ["second", "third"]);
    assert!(msgs[4]["metadata"]["receivedAt"].is_string(), "a queued message keeps its arrival: {}", msgs[4]);
    assert_eq!(msgs[6]["metadata"]["answers"], json!([second["turnId"], third_turn]));
    // Each queued message's turn resolves to the answering one, from either server.
    for s in [&x, &y] {
        let view = turn(s, &sid, &second["turnId"]).await;
        assert_eq!(view["answeredBy"], answering, "{view}");
        assert_eq!(view["status"], "completed");
        let answer = turn(s, &sid, &answering).await;
        assert_eq!(answer["answers"], json!([second["turnId"], third_turn]), "{answer}");
        assert_eq!(answer["status"], "completed");
    }
    // The feed (which shows events once they are 2 s old): each queued message, and the answering
    // turn with every message it answered.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let feed = ok_json(get(&x, "/agent/events/t1?limit=100").await).await;
    let feed = feed.as_array().unwrap();
    let queued: Vec<&Value> =
        feed.iter().filter(|e| e["type"] == "turn.queued").map(|e| &e["data"]["turnId"]).collect();
    assert_eq!(queued, [&second["turnId"], &third_turn], "{feed:#?}");
    let types: Vec<(&Value, &Value)> = feed.iter().map(|e| (&e["type"], &e["data"]["turnId"])).collect();
    let completed = feed.iter().find(|e| e["type"] == "turn.completed" && e["data"]["turnId"] == answering);
    let completed = completed.unwrap_or_else(|| panic!("no turn.completed of {answering}: {types:?}"));
    assert_eq!(completed["data"]["answeredMessageIds"], json!([second["turnId"], third_turn]));
    // Deleting the session deletes the answering turn's record too (its events held the reply).
    ok(request(&x, "DELETE", &format!("/agent/conversations/t1/sessions/{sid}"))).await;
    let path = format!("/agent/conversations/t1/sessions/{sid}/turns/{}", answering.as_str().unwrap());
    assert_eq!(get(&y, &path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&y, &format!("{path}/events")).await.status(), StatusCode::NOT_FOUND);
}

/// `interrupt`: the running turn, on the other server, stops with its partial reply marked
/// `interrupted: superseded`, and the new message is answered after it.
async fn interrupt_stops_the_running_turn_and_answers_the_new_message(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let env = [("ECHO_CHUNK_DELAY_MS", "600")];
    let x = TestServer::start_on_store(backend, None, &path, &env).await;
    let y = TestServer::start_on_store(backend, Some(&x), &path, &env).await;
    let hello = ok(turn_request(&x, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let sid = hello["sessionId"].as_str().unwrap().to_string();
    // A streamed turn: its partial reply is what it had sent.
    let (_, stream) = open_stream(&x, json!({"message": LONG, "sessionId": sid})).await;
    let running = tokio::spawn(rest_of(stream));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let newer = ok(turn_request(&y, "t1", "u1")
        .json(&json!({"message": "never mind, this instead", "sessionId": sid, "concurrency": "interrupt"})))
    .await;
    assert_eq!(newer["status"], "completed", "{newer}");
    let events = running.await.unwrap();
    let stopped = events.iter().find(|e| e.1 == "done").expect("the stopped turn's done").2.clone();
    assert_eq!(stopped["status"], "interrupted", "{stopped}");
    assert_eq!(stopped["agentMessage"]["metadata"]["interrupted"], "superseded");
    let partial = stopped["response"].as_str().unwrap();
    assert!(!partial.is_empty() && LONG.len() + 40 > partial.len(), "a partial reply: {partial}");
    let msgs = messages(&x, &sid).await;
    assert_eq!(roles(&msgs[2..]), ["user", "agent", "user", "agent"], "{:?}", contents(&msgs));
    assert_eq!(msgs[3]["metadata"]["interrupted"], "superseded");
    assert_eq!(msgs[4]["content"], "never mind, this instead");
    // On one server, the same at once.
    let running = tokio::spawn({
        let req = turn_request(&x, "t1", "u1").json(&json!({"message": LONG, "sessionId": sid}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r =
        turn_request(&x, "t1", "u1").json(&json!({"message": "again", "sessionId": sid, "concurrency": "interrupt"}));
    assert_eq!(ok(r).await["status"], "completed");
    let stopped = running.await.unwrap();
    assert_eq!(stopped["status"], "interrupted", "{stopped}");
    assert_eq!(stopped["agentMessage"]["metadata"]["interrupted"], "superseded");
    // A bad policy says which there are.
    let r =
        turn_request(&x, "t1", "u1").json(&json!({"message": "x", "concurrency": "sometimes"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("queue, interrupt, parallel, reject"));
}

/// An agent's `debounceMs`: two messages 100 ms apart with nothing running are one model call
/// that sees both.
async fn a_debounce_makes_a_burst_one_turn(backend: &str) {
    let model = OpenAiMock::start().await;
    let env = [("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", model.url.as_str())];
    let s = TestServer::start(backend, &env).await;
    let agent = json!({"systemPrompt": "Patient.", "default": true, "debounceMs": 700});
    let r = request(&s, "PUT", "/agent/tenants/t1/agents/patient").json(&agent).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let bad = json!({"systemPrompt": "x", "debounceMs": 60_000});
    let r = request(&s, "PUT", "/agent/tenants/t1/agents/bad").json(&bad).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let hello = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let sid = hello["sessionId"].as_str().unwrap().to_string();
    let before = model.calls();
    let a = tokio::spawn({
        let req =
            turn_request(&s, "t1", "u1").json(&json!({"message": "I want to move my appointment", "sessionId": sid}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "to Friday", "sessionId": sid}))).await;
    let a = a.await.unwrap();
    assert_eq!(model.calls() - before, 1, "one model call for the burst");
    assert_eq!(a["response"], b["response"], "{a} {b}");
    assert_eq!(a["answeredBy"], b["answeredBy"]);
    let sent = model.last_body()["messages"].as_array().unwrap().clone();
    let users: Vec<&str> = sent.iter().filter(|m| m["role"] == "user").filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(users[users.len() - 2..], ["I want to move my appointment", "to Friday"]);
    let msgs = messages(&s, &sid).await;
    assert_eq!(roles(&msgs[2..]), ["user", "user", "agent"]);
}

/// A server is killed (kill -9) while a turn runs with two messages queued behind it: the server
/// started on the same store settles the turn and answers both messages with one reply.
async fn queued_messages_of_a_killed_server_are_answered_after_it(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let env = [("ECHO_CHUNK_DELAY_MS", "300")];
    let a = TestServer::start_on_store(backend, None, &path, &env).await;
    let hello = ok(turn_request(&a, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let sid = hello["sessionId"].as_str().unwrap().to_string();
    let (running, _r) = open_stream(&a, json!({"message": LONG, "sessionId": sid})).await;
    assert_eq!(running["status"], "running");
    let (q1, _s1) = open_stream(&a, json!({"message": "are you there?", "sessionId": sid})).await;
    let (q2, _s2) = open_stream(&a, json!({"message": "hello?", "sessionId": sid})).await;
    assert_eq!((q1["status"].as_str(), q2["status"].as_str()), (Some("queued"), Some("queued")));
    kill_9(&a);
    let b = TestServer::start_on_store(backend, Some(&a), &path, &env).await;
    let mut msgs = Vec::new();
    for _ in 0..160 {
        msgs = messages(&b, &sid).await;
        if msgs.len() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(roles(&msgs), ["user", "agent", "user", "agent", "user", "user", "agent"], "{:?}", contents(&msgs));
    assert_eq!(msgs[3]["metadata"]["interrupted"], "server_stopped");
    assert_eq!(contents(&msgs)[4..6], ["are you there?", "hello?"]);
    let q2_view = turn(&b, &sid, &q2["turnId"]).await;
    assert_eq!(msgs[6]["metadata"]["answers"], json!([q1["turnId"], q2["turnId"]]), "{q2_view} {}", b.output());
    let mut view = Value::Null;
    for _ in 0..40 {
        view = turn(&b, &sid, &q2["turnId"]).await;
        if view["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["answeredBy"], msgs[6]["metadata"]["turnId"]);
}

/// An action waiting for a person's decision does not make its turn running: a new message is
/// answered at once; under `queue` the action still waits, under `interrupt` it is rejected as
/// superseded.
async fn a_waiting_action_is_superseded_by_interrupt_not_by_queue(backend: &str) {
    let env = [("API_SERVER_URL", "http://127.0.0.1:9"), ("API_RESOURCE_TYPES", "appointments")];
    let s = TestServer::start(backend, &env).await;
    let tool = json!({"message": "@tool create_resource {\"resourceType\": \"appointments\", \"data\": {}}"});
    let asked = ok(turn_request(&s, "t1", "u1").json(&tool)).await;
    assert_eq!(asked["status"], "awaiting_approval", "{asked}");
    let sid = asked["sessionId"].as_str().unwrap().to_string();
    let action = |msgs: &[Value]| msgs[1]["metadata"]["actions"][0].clone();
    let later = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "also, hi", "sessionId": sid}))).await;
    assert_eq!(later["status"], "completed", "{later}");
    assert_eq!(action(&messages(&s, &sid).await)["status"], "pending_approval", "queue leaves it waiting");
    let body = json!({"message": "forget that", "sessionId": sid, "concurrency": "interrupt"});
    assert_eq!(ok(turn_request(&s, "t1", "u1").json(&body)).await["status"], "completed");
    let action = action(&messages(&s, &sid).await);
    assert_eq!(action["status"], "rejected", "{action}");
    assert_eq!(action["reason"], "superseded by a newer message");
}

/// Cancelling a queued message's turn once a turn answers it, through another server, cancels that
/// turn, for every message it answers; erasing a session drops the messages queued on it, never
/// answered.
async fn cancelling_the_answering_turn_cancels_every_message_and_erasure_drops_queued_ones(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let env = [("ECHO_CHUNK_DELAY_MS", "300")];
    let s = TestServer::start_on_store(backend, None, &path, &env).await;
    let other = TestServer::start_on_store(backend, Some(&s), &path, &env).await;
    let hello = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let sid = hello["sessionId"].as_str().unwrap().to_string();
    let send = |text: &str, sid: &str| {
        let req = turn_request(&s, "t1", "u1").json(&json!({"message": text, "sessionId": sid}));
        tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        })
    };
    let first = send("one two three", &sid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (q1, _s1) = open_stream(&s, json!({"message": "second", "sessionId": sid})).await;
    let q2 = send("third", &sid);
    // Once a turn answers them, cancel it through the first queued message's turn.
    let mut view = Value::Null;
    for _ in 0..100 {
        view = turn(&s, &sid, &q1["turnId"]).await;
        if view["answeredBy"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(view["answeredBy"].is_string(), "{view}");
    let cancel = format!("/agent/conversations/t1/sessions/{sid}/turns/{}/cancel", q1["turnId"].as_str().unwrap());
    let r = request(&other, "POST", &cancel).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(first.await.unwrap().1["status"], "completed");
    let (status, q2) = q2.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{q2}");
    assert_eq!(q2["status"], "cancelled", "the other message's turn too: {q2}");
    assert_eq!(q2["agentMessage"]["metadata"]["interrupted"], "cancelled");
    let answering = turn(&s, &sid, &view["answeredBy"]).await;
    assert_eq!(answering["status"], "cancelled", "{answering}");
    // A queued message of an erased session is never answered.
    let other = ok(turn_request(&s, "t1", "u2").json(&json!({"message": "hello"}))).await;
    let sid2 = other["sessionId"].as_str().unwrap().to_string();
    let req = turn_request(&s, "t1", "u2").json(&json!({"message": "one two three four five", "sessionId": sid2}));
    let running = tokio::spawn(async move { req.send().await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let req = turn_request(&s, "t1", "u2").json(&json!({"message": "queued", "sessionId": sid2}));
    let queued = tokio::spawn(async move {
        let r = req.send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(request(&s, "DELETE", &format!("/agent/conversations/t1/sessions/{sid2}"))).await;
    assert_eq!(running.await.unwrap(), StatusCode::CONFLICT);
    let (status, answer) = queued.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "erased");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let gone = get(&s, &format!("/agent/conversations/t1/sessions/{sid2}/messages")).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}
