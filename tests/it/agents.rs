//! Tenant agents through the real binary, on both backends: the resource (versions, the default,
//! the write-only key, field errors), which agent a turn runs as (named, the session's, the
//! tenant's default, the environment's) and what it changes (prompt, model, temperature and
//! output limit at a recording model; tools refused in code), who may manage agents, and how soon
//! a change made through one server is seen by another.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, create_key, get, ok, ok_json, request, send, turn_request};

on_both_backends!(
    agents_are_versioned_resources_with_a_write_only_key,
    a_turn_runs_as_the_agent_it_names_or_its_sessions_or_the_default,
    each_tenants_agent_reaches_the_model_with_its_own_prompt_and_model,
    a_customer_facing_agent_cannot_run_a_write_tool_even_when_the_model_asks,
    a_change_made_through_one_server_reaches_the_others_within_five_seconds,
);

const KEY: &str = "agent-biz-key-do-not-leak";

fn agent_path(tenant: &str, id: &str) -> String {
    format!("/agent/tenants/{tenant}/agents/{id}")
}

async fn put(s: &TestServer, tenant: &str, id: &str, body: Value) -> (StatusCode, Value) {
    let r = request(s, "PUT", &agent_path(tenant, id)).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn unprocessable(s: &TestServer, body: Value, field: &str) {
    let (status, answer) = put(s, "t1", "bad", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_agent");
    assert!(answer["error"]["message"].as_str().unwrap().contains(field), "names {field}: {answer}");
}

async fn agents_are_versioned_resources_with_a_write_only_key(backend: &str) {
    let s = TestServer::start(backend, &[("EVENTS", "on")]).await;
    let front = json!({"name": "Front desk", "systemPrompt": "You are the front desk.", "default": true,
        "model": {"provider": "echo"}, "businessApi": {"url": "https://api.example.com/v1", "key": KEY},
        "metadata": {"team": "desk"}});
    let (status, created) = put(&s, "t1", "front", front.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    assert_eq!(created["default"], true);
    assert_eq!(created["businessApi"], json!({"url": "https://api.example.com/v1", "keySet": true}));
    assert_eq!(created["metadata"]["team"], "desk");
    // Replaced without the key: the key stays (write-only), the version moves on.
    let mut edit = front.clone();
    edit["businessApi"] = json!({"url": "https://api.example.com/v2"});
    edit["systemPrompt"] = json!("You are the front desk, version two.");
    let (status, replaced) = put(&s, "t1", "front", edit).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["createdAt"], created["createdAt"]);
    assert_eq!(replaced["businessApi"]["keySet"], true);
    // A key never follows the URL to another host: a new origin needs its key again.
    let mut moved = front.clone();
    moved["businessApi"] = json!({"url": "https://elsewhere.example.net/v1"});
    let (status, refused) = put(&s, "t1", "front", moved).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["field"], "businessApi.key");
    let staff = json!({"name": "Staff", "systemPrompt": "You help the staff.", "default": true});
    assert_eq!(put(&s, "t1", "staff", staff).await.0, StatusCode::CREATED);
    // One default: the new one cleared the old one (a change: its version moved on).
    let shown = ok_json(get(&s, &agent_path("t1", "front")).await).await;
    assert_eq!((shown["default"].clone(), shown["version"].clone()), (json!(false), json!(3)));
    let list = ok_json(get(&s, "/agent/tenants/t1/agents?limit=1").await).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let all = ok_json(get(&s, "/agent/tenants/t1/agents").await).await;
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["front", "staff"]);
    assert_eq!(ok_json(get(&s, "/agent/tenants/t2/agents").await).await, json!([]), "another tenant's agents");
    let r = get(&s, &agent_path("t2", "front")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Every invalid field is a 422 naming it.
    unprocessable(&s, json!({"systemPrompt": ""}), "systemPrompt").await;
    unprocessable(&s, json!({"systemPrompt": "x", "model": {"provider": "openai"}}), "model.provider").await;
    unprocessable(&s, json!({"systemPrompt": "x", "model": {"provider": "gpt"}}), "model.provider").await;
    unprocessable(&s, json!({"systemPrompt": "x", "model": {"temperature": 3}}), "model.temperature").await;
    unprocessable(&s, json!({"systemPrompt": "x", "tools": {"approval": "sometimes"}}), "tools.approval").await;
    unprocessable(&s, json!({"systemPrompt": "x", "history": {"maxMessages": 5000}}), "history.maxMessages").await;
    unprocessable(&s, json!({"systemPrompt": "x", "colour": "red"}), "colour").await;
    for (body, field) in [
        (json!({"systemPrompt": "x", "model": {"temperature": "hot"}}), "model.temperature"),
        (json!({"name": "no prompt"}), "systemPrompt"),
        (json!({"systemPrompt": "x", "tools": {"deny": ["a b"]}}), "tools.deny"),
    ] {
        let (status, answer) = put(&s, "t1", "bad", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    for url in ["http://127.0.0.1:9/api", "http://169.254.169.254/latest", "http://[::1]/", "http://localhost/x"] {
        unprocessable(&s, json!({"systemPrompt": "x", "businessApi": {"url": url}}), "businessApi.url").await;
    }
    let r = request(&s, "PUT", &agent_path("t1", "bad%20id")).json(&json!({"systemPrompt": "x"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        request(&s, "DELETE", &agent_path("t1", "front")).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(&s, &agent_path("t1", "front")).await.status(), StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let feed = ok_json(get(&s, "/agent/events/t1?types=agent.*").await).await;
    let kinds: Vec<&str> = feed.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["agent.created", "agent.updated", "agent.created", "agent.updated", "agent.deleted"]);
    assert!(!feed.to_string().contains(KEY) && !s.output().contains(KEY), "the key never leaves the server");
}

async fn a_turn_runs_as_the_agent_it_names_or_its_sessions_or_the_default(backend: &str) {
    // A business API that is not there: its write tools wait for approval, and then fail.
    let env = [("API_SERVER_URL", "http://127.0.0.1:9"), ("API_RESOURCE_TYPES", "appointments")];
    let s = TestServer::start(backend, &env).await;
    // No agents: the environment's agent, as before.
    let plain = ok(turn_request(&s, "t1", "u0").json(&json!({"message": "hi"}))).await;
    assert!(plain["agentMessage"]["metadata"].get("agentId").is_none(), "{plain}");
    put(&s, "t1", "front", json!({"systemPrompt": "Front.", "default": true})).await;
    put(&s, "t1", "staff", json!({"systemPrompt": "Staff.", "history": {"maxMessages": 0}})).await;
    let first = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "hello"}))).await;
    assert_eq!(first["agentMessage"]["metadata"]["agentId"], "front");
    assert_eq!(first["agentMessage"]["metadata"]["agentVersion"], 1);
    let sid = first["sessionId"].as_str().unwrap();
    let session = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid}")).await).await;
    assert_eq!(session["metadata"]["agentId"], "front", "{session}");
    // Naming another agent than the session's: 409; an unknown one: 404; nothing stored.
    let body = json!({"message": "as staff", "sessionId": sid, "agentId": "staff"});
    let r = turn_request(&s, "t1", "u1").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["error"]["code"].clone(), e["error"]["sessionAgentId"].clone()),
        (json!("agent_mismatch"), json!("front"))
    );
    let r = turn_request(&s, "t1", "u2")
        .header("x-agent-id", "nobody")
        .json(&json!({"message": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "agent_not_found");
    assert!(ok_json(get(&s, "/agent/conversations/t1/users/u2").await).await.as_array().unwrap().is_empty());
    // The session goes on as its agent (no name needed), and a named agent starts its own.
    let next = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "again", "sessionId": sid}))).await;
    assert_eq!(next["agentMessage"]["metadata"]["agentId"], "front");
    assert!(next["response"].as_str().unwrap().contains("[history: 2 messages"), "{next}");
    let staff = ok(turn_request(&s, "t1", "u3").header("x-agent-id", "staff").json(&json!({"message": "hi"}))).await;
    assert_eq!(staff["agentMessage"]["metadata"]["agentId"], "staff");
    let staff2 = ok(turn_request(&s, "t1", "u3").json(&json!({"message": "more"}))).await;
    assert_eq!(staff2["agentMessage"]["metadata"]["agentId"], "staff", "the session's agent");
    assert!(staff2["response"].as_str().unwrap().contains("[history: 0 messages"), "its own history setting: {staff2}");
    // Naming another agent than the active session's, without a sessionId: a session of its own.
    let other =
        ok(turn_request(&s, "t1", "u1").header("x-agent-id", "staff").json(&json!({"message": "staff?"}))).await;
    assert_ne!(other["sessionId"], first["sessionId"]);
    assert_eq!(other["agentMessage"]["metadata"]["agentId"], "staff");
    // The turn after an approval runs as the agent that proposed the action, not the default;
    // once that agent is gone, the action waits.
    let pending = |user: &'static str| {
        let req = turn_request(&s, "t1", user)
            .header("x-agent-id", "staff")
            .json(&json!({"message": "@tool create_resource {\"resourceType\": \"appointments\", \"data\": {}}"}));
        async move {
            let r = ok(req).await;
            assert_eq!(r["status"], "awaiting_approval", "{r}");
            format!(
                "/agent/conversations/t1/sessions/{}/actions/{}/approve",
                r["sessionId"].as_str().unwrap(),
                r["actions"][0]["id"].as_str().unwrap()
            )
        }
    };
    let (approve4, approve5) = (pending("u4").await, pending("u5").await);
    let decided = ok(request(&s, "POST", &approve4)).await;
    assert_eq!(decided["agentMessage"]["metadata"]["agentId"], "staff", "{decided}");
    // A deleted agent: its session keeps its messages, and goes on as the tenant's default.
    request(&s, "DELETE", &agent_path("t1", "staff")).send().await.unwrap();
    let sid3 = staff2["sessionId"].as_str().unwrap();
    let msgs = ok_json(get(&s, &format!("/agent/conversations/t1/sessions/{sid3}/messages")).await).await;
    assert_eq!(msgs.as_array().unwrap().len(), 4);
    let after = ok(turn_request(&s, "t1", "u3").json(&json!({"message": "still?", "sessionId": sid3}))).await;
    assert_eq!(after["agentMessage"]["metadata"]["agentId"], "front");
    let r = request(&s, "POST", &approve5).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "agent_not_found");
}

async fn each_tenants_agent_reaches_the_model_with_its_own_prompt_and_model(backend: &str) {
    let model = OpenAiMock::start().await;
    let env = [
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", model.url.as_str()),
        ("LLM_MODEL", "env-model"),
        ("AGENT_SYSTEM_PROMPT", "The environment's prompt."),
    ];
    let s = TestServer::start(backend, &env).await;
    put(
        &s,
        "clinic",
        "desk",
        json!({"systemPrompt": "You are a dental clinic's desk.", "default": true,
        "model": {"name": "clinic-model", "temperature": 0.2}}),
    )
    .await;
    put(
        &s,
        "hotel",
        "desk",
        json!({"systemPrompt": "You are a hotel's concierge.", "default": true,
        "model": {"provider": "openai", "name": "hotel-model", "maxOutputTokens": 77}}),
    )
    .await;
    let mut seen = Vec::new();
    for tenant in ["clinic", "hotel", "shop"] {
        ok(turn_request(&s, tenant, "u1").json(&json!({"message": format!("hello from {tenant}")}))).await;
        seen.push(model.last_body());
    }
    let (clinic, hotel, shop) = (&seen[0], &seen[1], &seen[2]);
    assert_eq!(clinic["model"], "clinic-model");
    assert_eq!(clinic["messages"][0]["content"], "You are a dental clinic's desk.");
    assert_eq!(clinic["temperature"], 0.2);
    assert!(clinic.get("max_completion_tokens").is_none());
    assert_eq!(hotel["model"], "hotel-model");
    assert_eq!(hotel["messages"][0]["content"], "You are a hotel's concierge.");
    assert_eq!(hotel["max_completion_tokens"], 77);
    assert!(hotel.get("temperature").is_none());
    assert_eq!(shop["model"], "env-model", "a tenant without agents: the environment's");
    assert_eq!(shop["messages"][0]["content"], "The environment's prompt.");
}

async fn a_customer_facing_agent_cannot_run_a_write_tool_even_when_the_model_asks(backend: &str) {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let api = {
        let calls = calls.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let calls = calls.clone();
            async move {
                let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                calls.lock().unwrap().push(format!("{} {} {auth}", req.method(), req.uri().path()));
                axum::Json(json!({"id": "r1", "ok": true}))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    let model = OpenAiMock::start().await;
    let env = [
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", model.url.as_str()),
        ("ALLOW_PRIVATE_URLS", "true"),
        ("API_SERVER_URL", "http://127.0.0.1:9/unused"),
        ("API_RESOURCE_TYPES", "appointments"),
    ];
    let s = TestServer::start(backend, &env).await;
    let business = json!({"url": api, "key": KEY});
    put(
        &s,
        "t1",
        "customer",
        json!({"systemPrompt": "Customers.", "default": true, "businessApi": business,
        "tools": {"allow": ["list_resources", "read_resource"], "approval": "none"}}),
    )
    .await;
    put(
        &s,
        "t1",
        "staff",
        json!({"systemPrompt": "Staff.", "businessApi": business,
        "tools": {"approval": "none", "deny": ["delete_resource"]}}),
    )
    .await;
    let write = json!([{"name": "update_resource", "arguments": {"resourceType": "appointments", "resourceId": "a1", "data": {"time": "12:00"}}}]);
    let asked = format!("move it [tools:{write}]");
    let customer = ok(turn_request(&s, "t1", "u1").json(&json!({"message": asked}))).await;
    let offered: Vec<String> = model.recorded.lock().unwrap().bodies[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offered, ["list_resources", "read_resource"], "only its tools are offered");
    let action = &customer["actions"][0];
    assert_eq!(
        (action["tool"].clone(), action["status"].clone()),
        (json!("update_resource"), json!("refused")),
        "{customer}"
    );
    assert!(calls.lock().unwrap().is_empty(), "the business API got no call: {:?}", calls.lock().unwrap());
    let stored = ok_json(
        get(&s, &format!("/agent/conversations/t1/sessions/{}/messages", customer["sessionId"].as_str().unwrap()))
            .await,
    )
    .await;
    assert!(stored.to_string().contains("\"refused\""), "recorded as refused");
    // The staff agent of the same business may: the call reaches the agent's API with its key.
    let staff = ok(turn_request(&s, "t1", "u2").header("x-agent-id", "staff").json(&json!({"message": asked}))).await;
    assert_eq!(staff["actions"][0]["status"], "done", "{staff}");
    let made = calls.lock().unwrap().clone();
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(
        made[0].starts_with("PUT /resources/appointments/a1") && made[0].ends_with(&format!("Bearer {KEY}")),
        "{made:?}"
    );
    let prompt = model.last_body().to_string();
    assert!(!prompt.contains(KEY), "the key is never shown to the model");
}

/// Another server, which keeps what it read of a tenant's agents, sees a change made through the
/// first within five seconds (it polls the store's change log every two).
async fn a_change_made_through_one_server_reaches_the_others_within_five_seconds(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let x = TestServer::start_on_store(backend, None, &path, &[]).await;
    let y = TestServer::start_on_store(backend, Some(&x), &path, &[]).await;
    let before = ok(turn_request(&y, "t1", "u1").json(&json!({"message": "before"}))).await;
    assert!(before["agentMessage"]["metadata"].get("agentId").is_none());
    // Y keeps what it read past five seconds (it follows the change log, so it need not read again).
    tokio::time::sleep(Duration::from_secs(6)).await;
    put(&x, "t1", "front", json!({"systemPrompt": "Front.", "default": true})).await;
    let changed = Instant::now();
    let mut user = 0;
    loop {
        user += 1;
        let r = ok(turn_request(&y, "t1", &format!("n{user}")).json(&json!({"message": "now?"}))).await;
        if r["agentMessage"]["metadata"]["agentId"] == "front" {
            break;
        }
        assert!(changed.elapsed() < Duration::from_secs(5), "still not seen after {:?}", changed.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tenant keys and admin keys manage agents; an end user's token reads ids and names only and
/// changes nothing; another tenant's key is refused.
#[tokio::test]
async fn only_the_tenants_keys_manage_its_agents_and_end_users_see_names() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = create_key(dir.path(), &["--tenant", "t1", "--name", "t1"]);
    let t2 = create_key(dir.path(), &["--tenant", "t2", "--name", "t2"]);
    let admin = create_key(dir.path(), &["--admin", "--name", "ops"]);
    let keys_file = dir.path().join("keys.json");
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    // API keys on one server, end users' tokens on another, on one SQLite file.
    let db = dir.path().join("agent.db");
    let s = TestServer::start_on_store(
        "sqlite",
        None,
        &db,
        &[("AUTH_MODE", "api-key"), ("API_KEYS_FILE", keys_file.to_str().unwrap())],
    )
    .await;
    let users = TestServer::start_on_store("sqlite", None, &db, &[("AUTH_MODE", "jwt"), ("JWT_SECRET", secret)]).await;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": "u1", "tenant_id": "t1", "exp": exp});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let user =
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap();
    let body = json!({"name": "Desk", "systemPrompt": "Private instructions.", "businessApi": {"url": "https://api.example.com", "key": KEY}});
    let path = agent_path("t1", "desk");
    assert_eq!(send(&s, "PUT", &path, Some(&t1), &[], Some(body.clone())).await.status(), StatusCode::CREATED);
    assert_eq!(send(&s, "PUT", &path, Some(&admin), &[], Some(body.clone())).await.status(), StatusCode::OK);
    // Another tenant's agents do not exist for a credential; an end user changes nothing.
    for (server, who, method, status) in [
        (&s, &t2, "GET", StatusCode::NOT_FOUND),
        (&s, &t2, "PUT", StatusCode::NOT_FOUND),
        (&s, &t2, "DELETE", StatusCode::NOT_FOUND),
        (&users, &user, "PUT", StatusCode::FORBIDDEN),
        (&users, &user, "DELETE", StatusCode::FORBIDDEN),
    ] {
        let r = send(server, method, &path, Some(who), &[], (method == "PUT").then(|| body.clone())).await;
        assert_eq!(r.status(), status, "{method}");
        assert!(!r.text().await.unwrap().contains("Private"), "{method}");
    }
    let r = send(&users, "GET", "/agent/tenants/t2/agents", Some(&user), &[], None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "another tenant");
    // An end user cannot choose the agent its turn runs as.
    let turn = Some(json!({"message": "hi", "agentId": "desk"}));
    let r = send(&users, "POST", "/agent/process", Some(&user), &[], turn).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        send(&users, "POST", "/agent/process", Some(&user), &[("x-agent-id", "desk")], Some(json!({"message": "hi"})))
            .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let listed: Value =
        send(&users, "GET", "/agent/tenants/t1/agents", Some(&user), &[], None).await.json().await.unwrap();
    assert_eq!(listed, json!([{"id": "desk", "name": "Desk"}]), "an end user sees ids and names only");
    let one: Value = send(&users, "GET", &path, Some(&user), &[], None).await.json().await.unwrap();
    assert_eq!(one, json!({"id": "desk", "name": "Desk"}));
    let full: Value = send(&s, "GET", &path, Some(&t1), &[], None).await.json().await.unwrap();
    assert_eq!(full["systemPrompt"], "Private instructions.");
    assert_eq!(full["version"], 2);
    assert!(!full.to_string().contains(KEY));
}

/// `agents put --file` (YAML), `list`, `show`, `delete` on a store a server then serves from; export
/// carries agents without their keys unless `--include-secrets`, and import brings them back.
#[tokio::test]
async fn agents_are_managed_and_carried_by_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let env = [("STORAGE", "sqlite"), ("SQLITE_PATH", db.to_str().unwrap())];
    let file = dir.path().join("desk.yaml");
    let yaml = format!(
        "name: Desk\nsystemPrompt: From YAML.\ndefault: true\nbusinessApi:\n  url: https://api.example.com\n  key: {KEY}\n"
    );
    std::fs::write(&file, yaml).unwrap();
    let cli = |args: &[&str]| crate::support::cli(dir.path(), args, &env);
    let put = cli(&["agents", "put", "--tenant", "t1", "--id", "desk", "--file", file.to_str().unwrap()]);
    assert!(put.status.success(), "{}", crate::support::text(&put));
    let list = crate::support::text(&cli(&["agents", "list", "--tenant", "t1"]));
    assert!(list.contains("desk\tv1\tdefault\tDesk"), "{list}");
    let shown = crate::support::text(&cli(&["agents", "show", "--tenant", "t1", "--id", "desk"]));
    assert!(shown.contains("\"keySet\": true") && !shown.contains(KEY), "{shown}");
    std::fs::write(&file, "systemPrompt: x\nmodel:\n  temperature: 9\n").unwrap();
    let bad = cli(&["agents", "put", "--tenant", "t1", "--id", "desk", "--file", file.to_str().unwrap()]);
    assert!(!bad.status.success() && crate::support::text(&bad).contains("model.temperature"));
    let plain = dir.path().join("plain.jsonl");
    let secret = dir.path().join("secret.jsonl");
    assert!(cli(&["export", "--out", plain.to_str().unwrap()]).status.success());
    assert!(
        cli(&["export", "--tenant", "t1", "--include-secrets", "--out", secret.to_str().unwrap()]).status.success()
    );
    let (plain_text, secret_text) =
        (std::fs::read_to_string(&plain).unwrap(), std::fs::read_to_string(&secret).unwrap());
    assert!(plain_text.contains("\"type\":\"agent\"") && !plain_text.contains(KEY), "{plain_text}");
    assert!(secret_text.contains(KEY));
    let copy = dir.path().join("copy.db");
    let copy_env = [("STORAGE", "sqlite"), ("SQLITE_PATH", copy.to_str().unwrap())];
    let import = crate::support::cli(dir.path(), &["import", secret.to_str().unwrap()], &copy_env);
    assert!(crate::support::text(&import).contains("1 agents"), "{}", crate::support::text(&import));
    let s = TestServer::start_on_store("sqlite", None, &copy, &[]).await;
    let turn = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "hi"}))).await;
    assert_eq!(turn["agentMessage"]["metadata"]["agentId"], "desk", "the imported agent answers");
    let deleted = cli(&["agents", "delete", "--tenant", "t1", "--id", "desk"]);
    assert!(deleted.status.success());
    assert!(!crate::support::text(&cli(&["agents", "list", "--tenant", "t1"])).contains("desk"));
}

/// A session's context summary follows its agent's settings: the agent's history window triggers
/// it, and it keeps the agent's `summary.keepMessages` newest messages verbatim.
#[tokio::test]
async fn a_sessions_summary_follows_its_agents_settings() {
    let s = TestServer::start("sqlite", &[]).await;
    let agent = json!({"systemPrompt": "Brief.", "default": true, "history": {"maxMessages": 10},
        "summary": {"triggerTokens": 100000, "keepMessages": 4}});
    put(&s, "t1", "brief", agent).await;
    let first = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "turn 0"}))).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    for i in 1..20 {
        ok(turn_request(&s, "t1", "u1").json(&json!({"message": format!("turn {i}"), "sessionId": sid}))).await;
    }
    let path = format!("/agent/conversations/t1/sessions/{sid}");
    ok(request(&s, "POST", &format!("{path}/summarize"))).await;
    let messages = ok_json(get(&s, &format!("{path}/messages?order=asc&limit=100")).await).await;
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 40);
    let session = ok_json(get(&s, &path).await).await;
    assert_eq!(
        session["contextSummary"]["coversThroughMessageId"], messages[35]["id"],
        "the 4 newest messages stay verbatim (the server's default would keep 20): {session}"
    );
}
