//! Usage and budgets, on both backends, through the real binary with a recording mock model: what
//! the usage routes say adds up to what the model reported, grouped every way and as CSV; budgets
//! refuse the next turn with the documented 429 and their events fire once; two servers on one
//! store count into one total, and a restart keeps it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, create_key, get, ok, ok_json, request, send, turn_request};

on_both_backends!(
    usage_adds_up_to_what_the_model_reported_grouped_every_way,
    two_servers_count_into_one_total_and_a_restart_keeps_it,
    budgets_refuse_the_next_turn_and_their_events_fire_once,
);

async fn messages(s: &TestServer, tenant: &str) -> Vec<Value> {
    let path = format!("/agent/conversations/{tenant}/messages?limit=100");
    ok_json(get(s, &path).await).await.as_array().unwrap().clone()
}

/// The sum of the stored replies' `metadata.usage`: input, output, model calls.
fn stored_usage(msgs: &[Value]) -> (u64, u64, u64) {
    let n = |m: &Value, f: &str| m["metadata"]["usage"][f].as_u64().unwrap_or(0);
    msgs.iter()
        .fold((0, 0, 0), |(i, o, c), m| (i + n(m, "inputTokens"), o + n(m, "outputTokens"), c + n(m, "modelCalls")))
}

async fn usage(s: &TestServer, path: &str) -> Value {
    ok_json(get(s, path).await).await
}

async fn usage_adds_up_to_what_the_model_reported_grouped_every_way(backend: &str) {
    let model = OpenAiMock::start().await;
    let env = [
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", model.url.as_str()),
        ("LLM_MODEL", "gpt-4o-mini"),
        ("API_SERVER_URL", "http://127.0.0.1:9"),
        ("API_RESOURCE_TYPES", "appointments"),
        ("CONTEXT_SUMMARY_KEEP_MESSAGES", "2"),
    ];
    let s = TestServer::start(backend, &env).await;
    let agent = json!({"systemPrompt": "Front desk.", "model": {"name": "my-own-model"}});
    let r = request(&s, "PUT", "/agent/tenants/t1/agents/desk").json(&agent).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    // u1 with the environment's agent (a tool round: two model calls), u2 with the tenant's agent,
    // and a context summary of u1's session.
    let first = ok(turn_request(&s, "t1", "u1").json(&json!({"message": "hello"}))).await;
    let sid = first["sessionId"].as_str().unwrap().to_string();
    let tools = r#"[tools:[{"name":"list_resources","arguments":{"resourceType":"appointments"}}]]"#;
    ok(turn_request(&s, "t1", "u1").json(&json!({"message": format!("what is booked? {tools}"), "sessionId": sid})))
        .await;
    ok(turn_request(&s, "t1", "u2").json(&json!({"message": "hi", "agentId": "desk"}))).await;
    let streamed = turn_request(&s, "t1", "u2").header("accept", "text/event-stream");
    let body = streamed.json(&json!({"message": "and again", "agentId": "desk"})).send().await.unwrap();
    assert!(body.text().await.unwrap().contains("event: done"));
    let path = format!("/agent/conversations/t1/sessions/{sid}/summarize");
    let summarized = ok_json(request(&s, "POST", &path).send().await.unwrap()).await;
    assert_eq!(summarized["summarized"], true, "{summarized}");
    let msgs = messages(&s, "t1").await;
    let (input, output, calls) = stored_usage(&msgs);
    assert_eq!(calls, 5, "two rounds for the tool turn, one for each other turn");
    // The summary is one more call, its usage stored with it.
    let stored = &summarized["contextSummary"]["usage"];
    let summary = (stored["inputTokens"].as_u64().unwrap(), stored["outputTokens"].as_u64().unwrap());
    let (input, output, calls) = (input + summary.0, output + summary.1, calls + 1);
    assert_eq!(model.calls() as u64, calls, "every call the mock saw is counted");
    let report = usage(&s, "/agent/usage/t1").await;
    let totals = &report["totals"];
    assert_eq!(
        (totals["inputTokens"].as_u64(), totals["outputTokens"].as_u64()),
        (Some(input), Some(output)),
        "{report}"
    );
    assert_eq!(totals["modelCalls"], calls);
    assert_eq!(totals["turns"], 4);
    // The mock reports its model as `mock-model`, which the built-in table does not price.
    let by_model = usage(&s, "/agent/usage/t1?groupBy=model").await;
    let rows = by_model["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{by_model}");
    assert_eq!(rows[0]["key"], "mock-model");
    assert_eq!((rows[0]["costMicros"].as_u64(), rows[0]["unpricedTokens"].as_u64()), (Some(0), Some(input + output)));
    // By user, agent and day: the same totals, split.
    for (group, keys) in [("user", vec!["u1", "u2"]), ("agent", vec!["", "desk"])] {
        let report = usage(&s, &format!("/agent/usage/t1?groupBy={group}")).await;
        let got: Vec<&str> = report["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
        assert_eq!(got, keys, "{report}");
        let sum: u64 = report["rows"].as_array().unwrap().iter().map(|r| r["inputTokens"].as_u64().unwrap()).sum();
        assert_eq!(sum, input);
    }
    let by_day = usage(&s, "/agent/usage/t1?groupBy=day").await;
    assert_eq!(by_day["rows"].as_array().unwrap().len(), 1);
    let u2 = usage(&s, "/agent/usage/t1/users/u2").await;
    assert_eq!(u2["totals"]["turns"], 2);
    let csv = get(&s, "/agent/usage/t1?groupBy=user&format=csv").await;
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "user,inputTokens,outputTokens,modelCalls,turns,costUsd,unpricedTokens");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[2].starts_with("u2,"), "{csv}");
    // Bad queries say what is wrong; another tenant has nothing.
    for bad in ["from=yesterday", "from=+10000-01-01", "groupBy=tenant", "format=xml", "from=2026-01-01&to=2025-01-01"]
    {
        let r = get(&s, &format!("/agent/usage/t1?{bad}")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_query");
    }
    assert_eq!(usage(&s, "/agent/usage/t2").await["totals"]["modelCalls"], 0);
    // A price file prices it: USD per million tokens, so micro-dollars per token.
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.yaml");
    std::fs::write(&prices, "models:\n  mock-model:\n    inputPerMillion: 0.15\n    outputPerMillion: 0.60\n").unwrap();
    let mut priced_env = env.to_vec();
    priced_env.push(("MODEL_PRICES_FILE", prices.to_str().unwrap()));
    let p = TestServer::start(backend, &priced_env).await;
    ok(turn_request(&p, "t9", "u1").json(&json!({"message": "hello"}))).await;
    let totals = usage(&p, "/agent/usage/t9").await["totals"].clone();
    let cost = (11.0f64 * 0.15 + 7.0 * 0.60).round() as u64;
    assert_eq!((totals["costMicros"].as_u64(), totals["unpricedTokens"].as_u64()), (Some(cost), Some(0)), "{totals}");
    assert_eq!(totals["costUsd"].as_f64(), Some(cost as f64 / 1e6));
    // The cost metric counts what was spent.
    let metrics = get(&p, "/metrics").await.text().await.unwrap();
    assert!(metrics.contains("model_cost_microdollars_total{model=\"mock-model\"}"), "{metrics}");
}

async fn two_servers_count_into_one_total_and_a_restart_keeps_it(backend: &str) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("agent.db");
    let model = OpenAiMock::start().await;
    let env = [("LLM_PROVIDER", "openai"), ("OPENAI_BASE_URL", model.url.as_str()), ("LLM_MODEL", "gpt-4o-mini")];
    let x = TestServer::start_on_store(backend, None, &path, &env).await;
    let y = TestServer::start_on_store(backend, Some(&x), &path, &env).await;
    for (i, s) in [&x, &y, &x, &y].into_iter().enumerate() {
        ok(turn_request(s, "t1", &format!("u{i}")).json(&json!({"message": "hello"}))).await;
    }
    for s in [&x, &y] {
        let report = usage(s, "/agent/usage/t1").await;
        assert_eq!(report["totals"]["turns"], 4, "{report}");
        assert_eq!(report["totals"]["inputTokens"], 44);
    }
    // The tenant's month, as budgets see it: the totals each server adds once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let budget = json!({"monthly": {"tokens": 1000}});
    assert_eq!(request(&x, "PUT", "/agent/budgets/t1").json(&budget).send().await.unwrap().status(), StatusCode::OK);
    let view = ok_json(get(&y, "/agent/budgets/t1").await).await;
    assert_eq!(view["used"]["monthly"]["tokens"], 72, "{view}");
    drop(x);
    let z = TestServer::start_on_store(backend, Some(&y), &path, &env).await;
    assert_eq!(usage(&z, "/agent/usage/t1").await["totals"]["turns"], 4, "kept across a restart");
    // The overshoot bound docs/usage.md states: y has read t2's month (nothing spent) and z spends
    // the whole budget; y goes on only until its view is 5 s old and z's one-second flush is in it,
    // so what y spends past the limit is bounded by what it spends in those seconds.
    let budget = json!({"monthly": {"tokens": 150}});
    assert_eq!(request(&z, "PUT", "/agent/budgets/t2").json(&budget).send().await.unwrap().status(), StatusCode::OK);
    ok(turn_request(&y, "t2", "b").json(&json!({"message": "hi"}))).await;
    let mut spent = 0;
    while turn_request(&z, "t2", "a").json(&json!({"message": "hi"})).send().await.unwrap().status() == StatusCode::OK {
        spent += 18;
        assert!(spent <= 150 + 18, "one server never starts a turn over a limit it knows");
    }
    let over_at = std::time::Instant::now();
    let mut past_limit = 0;
    loop {
        let r = turn_request(&y, "t2", "b").json(&json!({"message": "hi"})).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
        past_limit += 18;
        assert!(
            over_at.elapsed() < metered_view_bound(),
            "y went on past the limit for {:?} ({past_limit} tokens)",
            over_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // At most one turn each 200 ms over the bound's seconds, and all of it counted.
    assert!(past_limit <= 18 * (metered_view_bound().as_millis() as u64 / 200 + 1), "{past_limit}");
    let month = usage(&y, "/agent/usage/t2").await;
    assert_eq!(
        month["totals"]["inputTokens"].as_u64().unwrap() + month["totals"]["outputTokens"].as_u64().unwrap(),
        18 + spent + past_limit
    );
}

/// How long another server's spending can stay unseen: a 5 s view and a one-second flush (and
/// slack for a loaded machine).
fn metered_view_bound() -> Duration {
    Duration::from_millis(5_000 + 1_000 + 1_500)
}

/// Budgets: only admin keys set them; a tenant's monthly budget and a user's daily one refuse the
/// next turn (429 `budget_exceeded`, which budget, used, limit, when it resets; nothing stored); a
/// turn that crosses one finishes; `budget.warning` and `budget.exceeded` fire once each.
async fn budgets_refuse_the_next_turn_and_their_events_fire_once(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let tenant_key = create_key(dir.path(), &["--tenant", "t1", "--name", "t1"]);
    let admin = create_key(dir.path(), &["--admin", "--name", "ops"]);
    let keys = dir.path().join("keys.json");
    let model = OpenAiMock::start().await;
    let env = [
        ("AUTH_MODE", "api-key"),
        ("API_KEYS_FILE", keys.to_str().unwrap()),
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", model.url.as_str()),
        ("EVENTS", "on"),
    ];
    let s = TestServer::start(backend, &env).await;
    let turn = |user: &str, key: &str| {
        turn_request(&s, "t1", user).bearer_auth(key.to_string()).json(&json!({"message": "hello"}))
    };
    // Each turn is 18 tokens (11 in, 7 out): u1's day allows two turns' worth and a bit.
    let budget = json!({"perUserDaily": {"tokens": 40}, "monthly": {"tokens": 100}, "warnAt": 0.5});
    let path = "/agent/budgets/t1";
    let r = send(&s, "PUT", path, Some(&tenant_key), &[], Some(budget.clone())).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a tenant key reads its budgets, only admins set them");
    let bad = json!({"monthly": {"tokens": 0}});
    let r = send(&s, "PUT", path, Some(&admin), &[], Some(bad)).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = send(&s, "PUT", path, Some(&admin), &[], Some(budget)).await;
    assert_eq!(r.status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(turn("u1", &tenant_key).send().await.unwrap().status(), StatusCode::OK);
    }
    // 54 tokens: over u1's day (the third turn crossed it and finished); the next is refused.
    let r = turn("u1", &tenant_key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 86_400, "{retry}");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "budget_exceeded", "{e}");
    assert_eq!(e["error"]["budget"], "perUserDaily");
    assert_eq!(e["error"]["used"]["tokens"], 54);
    assert_eq!(e["error"]["limit"]["tokens"], 40);
    assert!(e["error"]["resetsAt"].as_str().unwrap().ends_with("T00:00:00Z"));
    let listed = ok_json(send(&s, "GET", "/agent/conversations/t1/users/u1", Some(&tenant_key), &[], None).await).await;
    assert_eq!(listed[0]["messages"].as_array().unwrap().len(), 6, "the refused turn stored nothing");
    // Other users go on until the tenant's month is used up: 100 tokens.
    let mut statuses = Vec::new();
    for user in ["u2", "u2", "u3", "u3"] {
        statuses.push(turn(user, &tenant_key).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "54 + 3 x 18 = 108 tokens: the fourth is refused");
    let e: Value = turn("u4", &tenant_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(e["error"]["budget"], "monthly", "{e}");
    assert!(e["error"]["resetsAt"].as_str().unwrap().ends_with("-01T00:00:00Z"));
    let view = ok_json(send(&s, "GET", "/agent/budgets/t1?userId=u1", Some(&tenant_key), &[], None).await).await;
    assert_eq!(view["used"]["monthly"]["tokens"], 108, "{view}");
    assert_eq!(view["used"]["perUserDaily"]["tokens"], 54);
    // The events: once per budget and period.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let feed = ok_json(send(&s, "GET", "/agent/events/t1?limit=100", Some(&tenant_key), &[], None).await).await;
    let kinds: Vec<(String, String, String)> = feed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("budget."))
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (text(&e["type"]), text(&e["data"]["budget"]), text(&e["data"]["userId"]))
        })
        .collect();
    // u1 crossed its day's half and its limit; u2 its half (36 of 40); the month both.
    let expected = [
        ("budget.warning", "perUserDaily", "u1"),
        ("budget.exceeded", "perUserDaily", "u1"),
        ("budget.warning", "perUserDaily", "u2"),
        ("budget.warning", "monthly", ""),
        ("budget.exceeded", "monthly", ""),
    ];
    assert_eq!(kinds.len(), expected.len(), "{kinds:?}");
    for (kind, budget, user) in expected {
        let n = kinds.iter().filter(|(k, b, u)| k == kind && b == budget && u == user).count();
        assert_eq!(n, 1, "{kind} {budget} {user} once: {kinds:?}");
    }
}
