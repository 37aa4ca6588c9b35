//! Tenant isolation, on both backends: with two tenants of two users each, every endpoint is tried
//! with the other tenant's (and the other user's) session ids and cursors, forged and tampered ones
//! too. Nothing of the other tenant is ever returned, changed or deleted; the answer is never a 5xx.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestServer, create_key, next_link, send};

/// One tenant's client: its API key, and every answer checked to be no 5xx.
struct Client<'a> {
    s: &'a TestServer,
    key: String,
}

impl Client<'_> {
    async fn call(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, Option<String>) {
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user-id", u)).into_iter().collect();
        let r = send(self.s, method, path, Some(&self.key), &headers, body).await;
        let status = r.status();
        let link = next_link(&r);
        let body = r.json().await.unwrap_or(Value::Null);
        assert!(status.as_u16() < 500, "{method} {path} answered {status}: {body}");
        (status, body, link)
    }
}

/// Everything a tenant can see of itself: sessions (with messages) of both users, and its messages.
async fn snapshot(c: &Client<'_>, tenant: &str) -> Value {
    let mut all = Vec::new();
    for user in ["u1", "u2"] {
        let (status, sessions, _) =
            c.call("GET", &format!("/agent/conversations/{tenant}/users/{user}?messageLimit=100"), None, None).await;
        assert_eq!(status, StatusCode::OK);
        all.push(sessions);
    }
    let (_, messages, _) =
        c.call("GET", &format!("/agent/conversations/{tenant}/messages?limit=100"), None, None).await;
    all.push(messages);
    Value::Array(all)
}

fn mentions_tenant(v: &Value, tenant: &str) -> bool {
    v.to_string().contains(&format!("\"tenantId\":\"{tenant}\""))
}

async fn isolation(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let acme_key = create_key(dir.path(), &["--tenant", "acme"]);
    let globex_key = create_key(dir.path(), &["--tenant", "globex"]);
    let keys = dir.path().join("keys.json");
    let s = TestServer::start(backend, &[("AUTH_MODE", "api-key"), ("API_KEYS_FILE", keys.to_str().unwrap())]).await;
    let acme = Client { s: &s, key: acme_key };
    let globex = Client { s: &s, key: globex_key };

    // Two users in each tenant, each with a session of a few turns.
    let mut sessions = std::collections::HashMap::new();
    for (c, tenant) in [(&acme, "acme"), (&globex, "globex")] {
        for user in ["u1", "u2"] {
            let mut sid = String::new();
            for i in 0..3 {
                let (status, r, _) = c
                    .call(
                        "POST",
                        "/agent/process",
                        Some(user),
                        Some(json!({"message": format!("{tenant} {user} {i}")})),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK);
                sid = r["sessionId"].as_str().unwrap().to_string();
            }
            sessions.insert((tenant, user), sid);
        }
    }
    let before = snapshot(&globex, "globex").await;
    let acme_before = snapshot(&acme, "acme").await;
    let victim = &sessions[&("globex", "u1")];

    // 1. The other tenant's paths: 403, whatever the ids.
    for (method, path) in [
        ("GET", "/agent/conversations/globex/users/u1".to_string()),
        ("DELETE", "/agent/conversations/globex/users/u1".to_string()),
        ("GET", format!("/agent/conversations/globex/sessions/{victim}")),
        ("DELETE", format!("/agent/conversations/globex/sessions/{victim}")),
        ("POST", format!("/agent/conversations/globex/sessions/{victim}/close")),
        ("GET", format!("/agent/conversations/globex/sessions/{victim}/messages")),
        ("GET", "/agent/conversations/globex/messages".to_string()),
        ("GET", "/agent/conversations/globex/search?q=globex".to_string()),
        ("GET", "/agent/conversations/globex/users/u1/search?q=globex".to_string()),
    ] {
        let (status, body, _) = acme.call(method, &path, None, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(!mentions_tenant(&body, "globex"));
    }
    let (status, _, _) = acme.call("POST", "/agent/process", Some("u1"), Some(json!({"message": "x"}))).await;
    assert_eq!(status, StatusCode::OK);
    let headers = [("x-tenant-id", "globex"), ("x-user-id", "u1")];
    let r = send(&s, "POST", "/agent/process", Some(&acme.key), &headers, Some(json!({"message": "x"}))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // 2. The other tenant's session ids under one's own tenant: 404.
    for (method, path) in [
        ("GET", format!("/agent/conversations/acme/sessions/{victim}")),
        ("DELETE", format!("/agent/conversations/acme/sessions/{victim}")),
        ("POST", format!("/agent/conversations/acme/sessions/{victim}/close")),
        ("GET", format!("/agent/conversations/acme/sessions/{victim}/messages")),
    ] {
        let (status, body, _) = acme.call(method, &path, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(!mentions_tenant(&body, "globex"));
    }
    // Session ids are unique per tenant: naming the other tenant's id starts a session of one's own
    // with it (as the original server's clients do with ids they choose), which holds nothing of theirs.
    let (status, body, _) =
        acme.call("POST", "/agent/process", Some("u1"), Some(json!({"message": "x", "sessionId": victim}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sessionId"], victim.as_str());
    assert_eq!(body["userMessage"]["tenantId"], "acme");
    assert!(!mentions_tenant(&body, "globex"));
    let (status, msgs, _) =
        acme.call("GET", &format!("/agent/conversations/acme/sessions/{victim}/messages"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(msgs.as_array().unwrap().len(), 2, "only acme's own turn: {msgs}");
    // The other user's session in one's own tenant cannot be continued either.
    let (status, _, _) = acme
        .call(
            "POST",
            "/agent/process",
            Some("u1"),
            Some(json!({"message": "x", "sessionId": sessions[&("acme", "u2")]})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // 3. Cursors: globex's own, used by acme; forged; tampered.
    let (_, _, globex_link) = globex.call("GET", "/agent/conversations/globex/messages?limit=2", None, None).await;
    let globex_cursor = globex_link.unwrap().split("cursor=").nth(1).unwrap().to_string();
    let forged = URL_SAFE_NO_PAD.encode(json!({"t": "9999-12-31T23:59:59.999999Z", "i": victim}).to_string());
    let mut tampered = globex_cursor.clone();
    tampered.insert(3, '!');
    for cursor in [globex_cursor.as_str(), forged.as_str(), tampered.as_str(), "", "%00", "e30"] {
        for path in [
            format!("/agent/conversations/acme/messages?cursor={cursor}"),
            format!("/agent/conversations/acme/users/u1?cursor={cursor}"),
            format!("/agent/conversations/acme/sessions/{}/messages?cursor={cursor}", sessions[&("acme", "u1")]),
            format!("/agent/conversations/acme/sessions/{victim}/messages?cursor={cursor}"),
        ] {
            let (status, body, _) = acme.call("GET", &path, None, None).await;
            assert!(
                [StatusCode::OK, StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND].contains(&status),
                "{path}: {status}"
            );
            assert!(!mentions_tenant(&body, "globex"), "{path} returned globex data: {body}");
        }
    }

    // 4. Search: the other tenant's words are never found, and the other user's only on the
    // tenant-wide search; the other tenant's cursors, forged and tampered ones move nowhere else.
    let (status, found, _) = acme.call("GET", "/agent/conversations/acme/search?q=globex", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["results"], json!([]), "{found}");
    let (_, found, _) = acme.call("GET", "/agent/conversations/acme/users/u1/search?q=u2", None, None).await;
    assert_eq!(found["results"], json!([]), "another user's words: {found}");
    let (_, found, _) = acme.call("GET", "/agent/conversations/acme/search?q=u2", None, None).await;
    assert!(!found["results"].as_array().unwrap().is_empty(), "the tenant-wide search finds u2: {found}");
    let (_, found, _) = acme.call("GET", "/agent/conversations/acme/users/u1/search?q=acme", None, None).await;
    assert!(found["results"].as_array().unwrap().iter().all(|r| r["userId"] == "u1"), "{found}");
    let (_, _, globex_link) =
        globex.call("GET", "/agent/conversations/globex/search?q=globex&limit=1", None, None).await;
    let globex_cursor = globex_link.unwrap().split("cursor=").nth(1).unwrap().to_string();
    let forged_search: Vec<String> = [
        json!({"o": 1}),
        json!({"s": 1, "p": {"t": "9999-12-31T23:59:59.999999Z", "i": victim}}),
        json!({"s": 99999}),
        json!({"o": 999999}),
    ]
    .iter()
    .map(|c| URL_SAFE_NO_PAD.encode(c.to_string()))
    .collect();
    for cursor in forged_search.iter().map(String::as_str).chain([globex_cursor.as_str(), "e30", "!!", ""]) {
        for path in [
            format!("/agent/conversations/acme/search?q=globex&cursor={cursor}"),
            format!("/agent/conversations/acme/users/u1/search?q=globex&cursor={cursor}"),
            format!("/agent/conversations/acme/users/u1/search?q=u1&sessionId={victim}&cursor={cursor}"),
        ] {
            let (status, body, _) = acme.call("GET", &path, None, None).await;
            assert!([StatusCode::OK, StatusCode::BAD_REQUEST].contains(&status), "{path}: {status}");
            assert!(!body.to_string().contains("globex"), "{path} found globex data: {body}");
        }
    }

    // 5. Erasing one's own users does not touch the other tenant's users of the same name.
    let (status, _, _) = acme.call("DELETE", "/agent/conversations/acme/users/u2", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = acme
        .call("DELETE", &format!("/agent/conversations/acme/sessions/{}", sessions[&("acme", "u1")]), None, None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Nothing of globex was changed or deleted; acme's data changed only as acme asked.
    assert_eq!(snapshot(&globex, "globex").await, before);
    assert_ne!(snapshot(&acme, "acme").await, acme_before);
    let (_, session, _) =
        globex.call("GET", &format!("/agent/conversations/globex/sessions/{victim}"), None, None).await;
    assert_eq!(session["isActive"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_on_sqlite() {
    isolation("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_on_dynamodb() {
    isolation("dynamodb").await;
}
