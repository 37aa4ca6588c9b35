//! Erasure across servers sharing one store (two processes on one SQLite file, or on the same
//! DynamoDB tables) and across a server's death: a turn running on another server when the erasure
//! answers stores nothing, in sessions old or new, and records no event; an erasure whose server
//! died before it deleted anything still happens, run by the server that comes up on the store.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestServer, get, ok, ok_json, request, turn_request};

on_both_backends!(
    an_erasure_through_one_server_wins_over_turns_running_on_another,
    a_recorded_erasure_survives_the_death_of_its_server
);

const LONG: &str = "a long answer that streams slowly in many chunks so that there is time";

async fn sessions_of(s: &TestServer, user: &str) -> Vec<Value> {
    ok_json(get(s, &format!("/agent/conversations/t1/users/{user}")).await).await.as_array().unwrap().clone()
}

async fn tenant_messages(s: &TestServer) -> Vec<Value> {
    ok_json(get(s, "/agent/conversations/t1/messages?limit=100").await).await.as_array().unwrap().clone()
}

/// X runs two JSON turns (one on u1's session, one that starts u2's first) when both users are
/// erased through Y. Both turns answer 409 `turn_erased`-like conflicts; neither server then shows
/// anything of them: no session, no message in the tenant's list or search, no turn event.
async fn an_erasure_through_one_server_wins_over_turns_running_on_another(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let env = [("ECHO_CHUNK_DELAY_MS", "250"), ("EVENTS", "on")];
    let x = TestServer::start_on_store(backend, None, &path, &env).await;
    let y = TestServer::start_on_store(backend, Some(&x), &path, &env).await;
    let first = ok(turn_request(&y, "t1", "u1").json(&json!({"message": "hi"}))).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    ok(turn_request(&y, "t1", "u3").json(&json!({"message": "bystander"}))).await;
    let on_x = |user: &'static str, body: Value| {
        let req = turn_request(&x, "t1", user).json(&body);
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    let continuing = on_x("u1", json!({"message": LONG, "sessionId": sid}));
    let starting = on_x("u2", json!({"message": LONG}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a, b) = tokio::join!(
        ok(request(&y, "DELETE", "/agent/conversations/t1/users/u1")),
        ok(request(&y, "DELETE", "/agent/conversations/t1/users/u2"))
    );
    assert_eq!(a["deleted"]["sessions"], 1, "{a}");
    assert_eq!(b["deleted"]["sessions"], 0, "u2's first session was not written yet: {b}");
    assert_eq!(continuing.await.unwrap(), StatusCode::CONFLICT);
    assert_eq!(starting.await.unwrap(), StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_secs(3)).await; // events show two seconds after they happen
    for s in [&x, &y] {
        for user in ["u1", "u2"] {
            assert!(sessions_of(s, user).await.is_empty(), "{user} has no session");
        }
        let left = tenant_messages(s).await;
        assert!(left.iter().all(|m| m["userId"] == "u3"), "only the bystander's messages: {left:#?}");
        let found = ok_json(get(s, "/agent/conversations/t1/search?q=streams").await).await;
        assert_eq!(found["results"].as_array().map(Vec::len), Some(0), "{found}");
        let feed = ok_json(get(s, "/agent/events/t1?limit=100").await).await;
        let turns: Vec<&Value> = feed
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("turn.") && e["data"]["userId"] != "u3")
            .collect();
        assert!(turns.is_empty(), "no turn event of an erased user: {turns:#?}");
    }
}

/// The server is killed while an erasure waits for the other servers to see it (it had recorded
/// it, and deleted nothing yet). The server started on the same store runs its second pass: the
/// user's sessions from before the erasure go; a session the user starts afterwards stays.
async fn a_recorded_erasure_survives_the_death_of_its_server(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let env = [("ERASURE_SWEEP_DELAY_SECONDS", "1")];
    let y = TestServer::start_on_store(backend, None, &path, &env).await;
    ok(turn_request(&y, "t1", "u1").json(&json!({"message": "hi"}))).await;
    let erasing = tokio::spawn(request(&y, "DELETE", "/agent/conversations/t1/users/u1").send());
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::process::Command::new("kill").args(["-KILL", &y.pid().to_string()]).status().unwrap();
    assert!(erasing.await.unwrap().is_err(), "the erasure never answered");
    let z = TestServer::start_on_store(backend, Some(&y), &path, &env).await;
    let mut left = sessions_of(&z, "u1").await;
    for _ in 0..60 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = sessions_of(&z, "u1").await;
    }
    assert!(left.is_empty(), "the erasure ran after the restart: {left:#?}");
    assert!(tenant_messages(&z).await.is_empty());
    let later = ok(turn_request(&z, "t1", "u1").json(&json!({"message": "I am back"}))).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // a sweep round later
    let sessions = sessions_of(&z, "u1").await;
    assert_eq!(sessions.len(), 1, "the later session stays");
    assert_eq!(sessions[0]["id"], later["sessionId"]);
}
