//! A message that arrives while its session has a running turn, on both backends, with two server
//! processes on one store: `concurrency: reject` (per request, per agent, or `TURN_CONCURRENCY`)
//! refuses it with 409 `turn_in_progress` and the running turn's id, whichever server runs it, and
//! stores nothing; once the turn ends the session takes the next one; `parallel` runs beside it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestServer, get, ok, ok_json, request, turn_request};

on_both_backends!(a_rejecting_session_has_one_running_turn_across_servers);

const LONG: &str = "a long answer that streams slowly in many chunks so that there is time";

async fn count(s: &TestServer, sid: &str) -> usize {
    let path = format!("/agent/conversations/t1/sessions/{sid}/messages?limit=100");
    ok_json(get(s, &path).await).await.as_array().unwrap().len()
}

async fn a_rejecting_session_has_one_running_turn_across_servers(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    // A business API that is not there: its write tools wait for approval.
    let env = [
        ("ECHO_CHUNK_DELAY_MS", "150"),
        ("API_SERVER_URL", "http://127.0.0.1:9"),
        ("API_RESOURCE_TYPES", "appointments"),
    ];
    let x = TestServer::start_on_store(backend, None, &path, &env).await;
    let mut y_env = env.to_vec();
    y_env.push(("TURN_CONCURRENCY", "reject"));
    let y = TestServer::start_on_store(backend, Some(&x), &path, &y_env).await;
    let first = ok(turn_request(&x, "t1", "u1").json(&json!({"message": "hi"}))).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    let running = tokio::spawn({
        let req =
            turn_request(&x, "t1", "u1").json(&json!({"message": LONG, "sessionId": sid, "concurrency": "reject"}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Through the other server: refused by the request's policy, and by the server's default.
    let mut refused = Vec::new();
    for body in [
        json!({"message": "me too", "sessionId": sid, "concurrency": "reject"}),
        json!({"message": "me too", "sessionId": sid}),
    ] {
        let r = turn_request(&y, "t1", "u1").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "turn_in_progress", "{e}");
        refused.push(e["error"]["turnId"].clone());
    }
    // `parallel` runs beside it.
    let beside =
        ok(turn_request(&y, "t1", "u1")
            .json(&json!({"message": "beside", "sessionId": sid, "concurrency": "parallel"})))
        .await;
    assert_eq!(beside["status"], "completed");
    let answer = running.await.unwrap();
    assert_eq!(answer["status"], "completed", "{answer}");
    assert!(refused.iter().all(|t| *t == answer["turnId"]), "the running turn's id: {refused:?}");
    assert_eq!(count(&y, &sid).await, 6, "nothing of the refused messages was stored");
    // Once it ended, the session takes the next turn.
    let next = ok(turn_request(&y, "t1", "u1").json(&json!({"message": "now", "sessionId": sid}))).await;
    assert_eq!(next["status"], "completed");
    // A streamed first turn holds the session it creates, from its `session` event on.
    let r = turn_request(&x, "t1", "u3")
        .header("accept", "text/event-stream")
        .json(&json!({"message": LONG, "concurrency": "reject"}))
        .send()
        .await
        .unwrap();
    let mut stream = Box::pin(r.bytes_stream());
    let seen = crate::support::parse_sse_ids(&crate::support::until_event(&mut stream, "delta").await);
    let new_sid = seen[0].2["sessionId"].as_str().unwrap().to_string();
    let streamed_turn = seen[0].2["turnId"].clone();
    let r =
        turn_request(&y, "t1", "u3").json(&json!({"message": "me too", "sessionId": new_sid})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["turnId"], streamed_turn);
    // Its `done` comes after it let go: the next turn right after it runs.
    let mut rest = String::new();
    while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.contains("event: done"), "{rest}");
    let after = ok(turn_request(&y, "t1", "u3").json(&json!({"message": "after", "sessionId": new_sid}))).await;
    assert_eq!(after["status"], "completed");
    // An agent's setting: its turns are refused while one runs.
    let agent = json!({"systemPrompt": "One at a time.", "default": true, "concurrency": "reject"});
    let r = request(&x, "PUT", "/agent/tenants/t1/agents/serial").json(&agent).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let bad = json!({"systemPrompt": "x", "concurrency": "sometimes"});
    let r = request(&x, "PUT", "/agent/tenants/t1/agents/bad").json(&bad).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let started = ok(turn_request(&x, "t1", "u2").json(&json!({"message": "hello"}))).await;
    let sid2 = started["sessionId"].as_str().unwrap().to_string();
    let slow = tokio::spawn({
        let req = turn_request(&x, "t1", "u2").json(&json!({"message": LONG, "sessionId": sid2}));
        async move { req.send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = turn_request(&x, "t1", "u2").json(&json!({"message": "again", "sessionId": sid2})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "the agent's policy");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    // The turn after an approval decision holds the session too: deciding while a turn runs is
    // refused, and the action stays pending until the session is free.
    let tool = json!({"message": "@tool create_resource {\"resourceType\": \"appointments\", \"data\": {}}", "sessionId": sid2});
    let asked = ok(turn_request(&x, "t1", "u2").json(&tool)).await;
    assert_eq!(asked["status"], "awaiting_approval", "{asked}");
    let approve = format!(
        "/agent/conversations/t1/sessions/{sid2}/actions/{}/approve",
        asked["actions"][0]["id"].as_str().unwrap()
    );
    let slow = tokio::spawn({
        let req = turn_request(&x, "t1", "u2").json(&json!({"message": LONG, "sessionId": sid2}));
        async move { req.send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = request(&y, "POST", &approve).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "turn_in_progress");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let decided = ok(request(&y, "POST", &approve)).await;
    assert_eq!(decided["actions"][0]["approved"], true, "{decided}");
}
