//! Authentication modes, tenant binding, rate limits, header limits, slow clients and secrets,
//! against the real binary.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::{TestServer, binary, create_key, http, keys, send};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn without_auth_the_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    for auth in [None, Some("none")] {
        let mut cmd = binary(dir.path());
        cmd.arg("serve").env("HOST", "0.0.0.0").env("PORT", "0");
        if let Some(a) = auth {
            cmd.env("AUTH_MODE", a);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("AUTH_MODE=api-key") && err.contains("ALLOW_UNAUTHENTICATED=true"), "{err}");
    }
}

#[tokio::test]
async fn an_explicitly_unauthenticated_server_on_all_interfaces_warns() {
    let s =
        TestServer::start("sqlite", &[("HOST", "0.0.0.0"), ("AUTH_MODE", "none"), ("ALLOW_UNAUTHENTICATED", "true")])
            .await;
    assert!(s.output().contains("only run this behind a trusted gateway"), "{}", s.output());
    // Off loopback the default rate limit applies; the server still answers.
    let r = http().get(s.url.replace("0.0.0.0", "127.0.0.1") + "/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_keys_bind_requests_to_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let acme = create_key(dir.path(), &["--tenant", "acme", "--name", "acme-backend"]);
    let admin = create_key(dir.path(), &["--admin", "--name", "ops"]);
    assert!(acme.starts_with("ask_") && acme.len() > 40);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let stored = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
    assert!(!stored.contains(&acme) && !stored.contains(&admin), "only hashes are stored");
    let list = String::from_utf8(keys(dir.path(), &["list"]).stdout).unwrap();
    assert!(list.contains("acme-backend") && list.contains("ops") && !list.contains("ask_"), "{list}");

    let keys_file = dir.path().join("keys.json");
    let s =
        TestServer::start("sqlite", &[("AUTH_MODE", "api-key"), ("API_KEYS_FILE", keys_file.to_str().unwrap())]).await;
    let turn = json!({"message": "hello"});
    // No credential: 401 with a challenge. A wrong one: 401 too.
    let r =
        send(&s, "POST", "/agent/process", None, &[("x-user-id", "u1"), ("x-tenant-id", "acme")], Some(turn.clone()))
            .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let r = send(&s, "POST", "/agent/process", Some("ask_wrong"), &[("x-user-id", "u1")], Some(turn.clone())).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // The key's tenant is used when the header is left out, and must match when it is given.
    let r = send(&s, "POST", "/agent/process", Some(&acme), &[("x-user-id", "u1")], Some(turn.clone())).await;
    assert_eq!(r.status(), StatusCode::OK);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["userMessage"]["tenantId"], "acme");
    let r = send(
        &s,
        "POST",
        "/agent/process",
        Some(&acme),
        &[("x-user-id", "u1"), ("x-tenant-id", "globex")],
        Some(turn.clone()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&s, "GET", "/agent/conversations/globex/users/u1", Some(&acme), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&s, "GET", "/agent/conversations/glob%65x/messages", Some(&acme), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "percent-encoding does not get around the check");
    // Nor do the original server's paths without `/agent`.
    let r = send(&s, "GET", "/conversations/globex/users/u1", Some(&acme), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&s, "GET", "/conversations/glob%65x/sessions/s1/messages", Some(&acme), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // x-api-key works too.
    let r = send(&s, "GET", "/agent/conversations/acme/users/u1", None, &[("x-api-key", acme.as_str())], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let sessions: Value = r.json().await.unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    // An admin key acts for any tenant.
    let r = send(&s, "GET", "/agent/conversations/globex/users/u1", Some(&admin), &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Health stays open.
    assert_eq!(send(&s, "GET", "/healthz", None, &[], None).await.status(), StatusCode::OK);
    assert_eq!(send(&s, "GET", "/readyz", None, &[], None).await.status(), StatusCode::OK);
    // Revoking and creating keys takes effect without a restart.
    let id = list.lines().find(|l| l.contains("acme-backend")).unwrap().split_whitespace().next().unwrap().to_string();
    assert!(keys(dir.path(), &["revoke", &id]).status.success());
    let r = send(&s, "GET", "/agent/conversations/acme/users/u1", Some(&acme), &[], None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let fresh = create_key(dir.path(), &["--tenant", "acme"]);
    let r = send(&s, "GET", "/agent/conversations/acme/users/u1", Some(&fresh), &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let log = s.output();
    for secret in [&acme, &admin, &fresh] {
        assert!(!log.contains(secret.as_str()), "a key reached the log");
    }
}

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn hs256(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

#[tokio::test]
async fn jwt_with_a_shared_secret_enforces_claims() {
    let s = TestServer::start(
        "sqlite",
        &[
            ("AUTH_MODE", "jwt"),
            ("JWT_SECRET", SECRET),
            ("JWT_ISSUER", "https://issuer.test"),
            ("JWT_AUDIENCE", "agent-server"),
        ],
    )
    .await;
    let good = json!({"sub": "u1", "tenant_id": "acme", "exp": now() + 600, "iss": "https://issuer.test", "aud": "agent-server"});
    let turn = Some(json!({"message": "hi"}));
    let r = send(&s, "POST", "/agent/process", Some(&hs256(good.clone())), &[], turn.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["userMessage"]["tenantId"], "acme");
    assert_eq!(reply["userMessage"]["userId"], "u1");
    let mut bad = Vec::new();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    bad.push(("expired", hs256(with("exp", json!(now() - 3600)))));
    bad.push(("not yet valid", hs256(with("nbf", json!(now() + 3600)))));
    bad.push(("wrong issuer", hs256(with("iss", json!("https://evil.test")))));
    bad.push(("wrong audience", hs256(with("aud", json!("other")))));
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    bad.push(("no issuer, when one is configured", hs256(without("iss"))));
    bad.push(("no audience, when one is configured", hs256(without("aud"))));
    bad.push((
        "no tenant",
        hs256(json!({"sub": "u1", "exp": now() + 600, "iss": "https://issuer.test", "aud": "agent-server"})),
    ));
    bad.push((
        "other secret",
        encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"another-secret-of-enough-length-000"),
        )
        .unwrap(),
    ));
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(good.to_string());
    bad.push(("alg none", format!("{none_header}.{claims}.")));
    for (why, token) in bad {
        let r = send(&s, "POST", "/agent/process", Some(&token), &[], turn.clone()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{why}");
    }
    // The token's tenant and user bind the request.
    let token = hs256(good);
    let r = send(&s, "POST", "/agent/process", Some(&token), &[("x-user-id", "u2")], turn.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&s, "GET", "/agent/conversations/globex/messages", Some(&token), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&s, "GET", "/agent/conversations/acme/users/u2", Some(&token), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(&s, "GET", "/agent/conversations/acme/users/u1", Some(&token), &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!s.output().contains(&token));
    // A token for one user sees only that user's sessions, not the tenant's other users'.
    let sid = reply["sessionId"].as_str().unwrap().to_string();
    let other = hs256(
        json!({"sub": "u2", "tenant_id": "acme", "exp": now() + 600, "iss": "https://issuer.test", "aud": "agent-server"}),
    );
    for (method, path) in [
        ("GET", format!("/agent/conversations/acme/sessions/{sid}")),
        ("GET", format!("/agent/conversations/acme/sessions/{sid}/messages")),
        ("POST", format!("/agent/conversations/acme/sessions/{sid}/close")),
        ("DELETE", format!("/agent/conversations/acme/sessions/{sid}")),
        ("POST", format!("/agent/conversations/acme/sessions/{sid}/actions/a1/approve")),
        ("GET", format!("/agent/conversations/acme/sessions/{sid}/turns/{}", reply["turnId"].as_str().unwrap())),
        ("GET", format!("/agent/conversations/acme/sessions/{sid}/turns/{}/events", reply["turnId"].as_str().unwrap())),
        (
            "POST",
            format!("/agent/conversations/acme/sessions/{sid}/turns/{}/cancel", reply["turnId"].as_str().unwrap()),
        ),
    ] {
        let r = send(&s, method, &path, Some(&other), &[], None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    let r = send(&s, "GET", "/agent/conversations/acme/messages", Some(&other), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "the tenant-wide list is not for one user's token");
    let r =
        send(&s, "GET", &format!("/agent/conversations/acme/sessions/{sid}/messages"), Some(&token), &[], None).await;
    assert_eq!(r.status(), StatusCode::OK, "the owner still reads it");
    let r = send(&s, "GET", &format!("/agent/conversations/acme/sessions/{sid}"), Some(&token), &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// A credential bound to one user reaches its own routes only, whatever the tenant is called: the
/// matched route decides, not the URL's text (a tenant named `sessions` once read every user's
/// messages), and every tenant-wide route of the tenant's data is refused the same way.
#[tokio::test]
async fn a_user_bound_credential_reaches_only_its_own_routes_whatever_the_tenant_is_named() {
    let s = TestServer::start("sqlite", &[("AUTH_MODE", "jwt"), ("JWT_SECRET", SECRET)]).await;
    let token = |sub: &str| hs256(json!({"sub": sub, "tenant_id": "sessions", "exp": now() + 600}));
    let (u1, u2) = (token("u1"), token("u2"));
    let turn = Some(json!({"message": "the secret of u2"}));
    let r = send(&s, "POST", "/agent/process", Some(&u2), &[], turn).await;
    assert_eq!(r.status(), StatusCode::OK);
    for path in [
        "/agent/conversations/sessions/messages",
        "/agent/conversations/sessions/search?q=secret",
        "/agent/conversations/sessions/search?q=secret&userId=u1",
        "/agent/events/sessions",
        "/agent/conversations/sessions/users/u2",
        "/agent/conversations/sessions/users/u2/search?q=secret",
    ] {
        let r = send(&s, "GET", path, Some(&u1), &[], None).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{path}");
        assert!(!body.to_string().contains("secret of u2"), "{path}");
    }
    // Its own user's routes answer, and show only its own data.
    let r = send(&s, "GET", "/agent/conversations/sessions/users/u1/search?q=secret", Some(&u1), &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["results"].as_array().unwrap().len(), 0, "{found}");
    let r = send(&s, "GET", "/agent/conversations/sessions/users/u2/search?q=secret", Some(&u2), &[], None).await;
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["results"].as_array().unwrap().len(), 2, "its message and the echo: {found}");
}

struct EcKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl EcKey {
    fn new(kid: &str) -> Self {
        Self { kid: kid.into(), pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap() }
    }
    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
               "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }
    fn sign(&self, claims: &Value) -> String {
        let der = self.pair.to_pkcs8v1().unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &EncodingKey::from_ec_der(der.as_ref())).unwrap()
    }
}

#[tokio::test]
async fn jwt_with_a_jwks_refreshes_on_unknown_kid_and_refuses_algorithm_confusion() {
    let jwks = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": []})));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (served, counted) = (jwks.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (served, counted) = (served.clone(), counted.clone());
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                axum::Json(served.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let k1 = EcKey::new("k1");
    jwks.lock().unwrap()["keys"] = json!([k1.jwk()]);
    let s =
        TestServer::start("sqlite", &[("AUTH_MODE", "jwt"), ("JWT_JWKS_URL", &url), ("JWT_TENANT_CLAIM", "org")]).await;
    let claims = json!({"sub": "u1", "org": "acme", "exp": now() + 600});
    let turn = Some(json!({"message": "hi"}));
    let r = send(&s, "POST", "/agent/process", Some(&k1.sign(&claims)), &[], turn.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A rotated key appears in the JWKS; a token signed with it is accepted without a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let k2 = EcKey::new("k2");
    jwks.lock().unwrap()["keys"] = json!([k1.jwk(), k2.jwk()]);
    let r = send(&s, "POST", "/agent/process", Some(&k2.sign(&claims)), &[], turn.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Algorithm confusion: an HS256 token whose "secret" is the public key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let public = serde_json::to_vec(&k1.jwk()).unwrap();
    let forged = encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap();
    let r = send(&s, "POST", "/agent/process", Some(&forged), &[], turn.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A key nobody published.
    let r = send(&s, "POST", "/agent/process", Some(&EcKey::new("k9").sign(&claims)), &[], turn.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Many concurrent tokens with a newly published kid: one fetch serves them all.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let k3 = EcKey::new("k3");
    jwks.lock().unwrap()["keys"] = json!([k1.jwk(), k2.jwk(), k3.jwk()]);
    let before = fetches.load(std::sync::atomic::Ordering::SeqCst);
    let token = k3.sign(&claims);
    let sends = (0..10).map(|_| send(&s, "GET", "/agent/conversations/acme/users/u1", Some(&token), &[], None));
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst) - before, 1, "one JWKS fetch for them all");
}

#[tokio::test]
async fn tenants_are_rate_limited_separately_with_retry_after() {
    let s = TestServer::start("sqlite", &[("RATE_LIMIT_PER_MINUTE", "3")]).await;
    for _ in 0..3 {
        let r = send(&s, "GET", "/agent/conversations/acme/messages", None, &[("x-tenant-id", "acme")], None).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = send(&s, "GET", "/agent/conversations/acme/messages", None, &[("x-tenant-id", "acme")], None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let r = send(&s, "GET", "/agent/conversations/globex/messages", None, &[("x-tenant-id", "globex")], None).await;
    assert_eq!(r.status(), StatusCode::OK, "another tenant is not affected");
    assert_eq!(send(&s, "GET", "/healthz", None, &[], None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let s = TestServer::start("sqlite", &[]).await;
    let big = "x".repeat(9000);
    let r = send(&s, "GET", "/agent/conversations/acme/messages", None, &[("x-custom", &big)], None).await;
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "header_too_large");
    // More than 100 headers, and a 32 KB URI: JSON errors too, with the request id. (Past 64 KB the
    // URI cannot be parsed at all, and the HTTP stack answers 414 without a body: docs/api.md.)
    let names: Vec<String> = (0..150).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = send(&s, "GET", "/healthz", None, &headers, None).await;
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_headers");
    assert!(body["error"]["requestId"].is_string(), "{body}");
    let long = format!("/agent/conversations/acme/messages?q={}", "a".repeat(32 * 1024));
    let r = send(&s, "GET", &long, None, &[], None).await;
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "uri_too_long");
}

#[tokio::test]
async fn a_client_that_sends_headers_slowly_is_cut_off() {
    let s = TestServer::start("sqlite", &[("HEADER_READ_TIMEOUT_SECONDS", "1")]).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf); // the server closes the connection
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "the connection stayed open {elapsed:?}");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // A normal client is unaffected.
    assert_eq!(send(&s, "GET", "/healthz", None, &[], None).await.status(), StatusCode::OK);
}

/// Slow-body clients hold every request slot: health probes still answer at once, and a request
/// that gets no slot within `REQUEST_QUEUE_TIMEOUT_MS` is a JSON 503 with `Retry-After`, not a wait
/// without end. Once the slot is free, requests are served again.
#[tokio::test]
async fn health_probes_skip_the_request_queue_and_a_request_without_a_slot_gets_503() {
    let s = TestServer::start("sqlite", &[("MAX_CONCURRENT_REQUESTS", "1"), ("REQUEST_QUEUE_TIMEOUT_MS", "300")]).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    let head = "POST /agent/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                x-tenant-id: acme\r\nx-user-id: u1\r\nContent-Length: 21\r\n\r\n{\"message\"";
    slow.write_all(head.as_bytes()).unwrap();
    // The slow request holds the one slot once the server reads it: wait until a request is refused.
    let mut refused = None;
    for _ in 0..100 {
        let r = send(&s, "GET", "/agent/conversations/acme/users/u1", None, &[], None).await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a request without a slot is refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    for probe in ["/healthz", "/readyz"] {
        let started = Instant::now();
        assert_eq!(send(&s, "GET", probe, None, &[], None).await.status(), StatusCode::OK, "{probe}");
        assert!(started.elapsed() < Duration::from_millis(300), "{probe} waited for a slot");
    }
    // The slow client finishes; its turn is answered and the slot is free again.
    slow.write_all(b": \"slow\"}  ").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let r = send(&s, "GET", "/agent/conversations/acme/users/u1", None, &[], None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Credentials inside a configured URL (a proxy's userinfo, a gateway's query key) reach neither a
/// client (502 bodies, SSE `error` events) nor the log, while the error still names the host.
#[tokio::test]
async fn credentials_inside_configured_urls_are_redacted_in_errors_and_logs() {
    let base = "http://proxyuser:proxy-pass-4321@127.0.0.1:9/v1?api-key=query-key-5678";
    let s = TestServer::start(
        "sqlite",
        &[
            ("LLM_PROVIDER", "openai"),
            ("OPENAI_BASE_URL", base),
            ("LLM_TIMEOUT_SECONDS", "1"),
            ("MCP_SERVERS", "http://mcpuser:mcp-pass-9876@127.0.0.1:9/mcp"),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;
    let secrets = ["proxyuser", "proxy-pass-4321", "query-key-5678", "mcpuser", "mcp-pass-9876"];
    for body in [json!({"message": "hi"}), json!({"message": "stream", "stream": true})] {
        let r =
            send(&s, "POST", "/agent/process", None, &[("x-tenant-id", "acme"), ("x-user-id", "u1")], Some(body)).await;
        let text = r.text().await.unwrap();
        assert!(text.contains("127.0.0.1:9"), "the error names the provider: {text}");
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} reached a response: {text}");
        }
    }
    let log = s.output();
    assert!(log.contains("127.0.0.1:9"), "the log names the provider");
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), &["--tenant", "acme"]);
    let mock = OpenAiMock::start().await;
    let secrets = [
        ("OPENAI_API_KEY", "sk-live-openai-secret-777"),
        ("API_SERVER_KEY", "business-api-secret-888"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key-999"),
        ("AWS_ACCESS_KEY_ID", "AKIASECRETID000"),
        ("WEBHOOK_SECRET", "whsec_c2VjcmV0LXdlYmhvb2stc2VjcmV0LTEyMzQ1Njc4"),
    ];
    let keys_file = dir.path().join("keys.json");
    let mut env = vec![
        ("AUTH_MODE", "api-key"),
        ("API_KEYS_FILE", keys_file.to_str().unwrap()),
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", mock.url.as_str()),
        ("API_SERVER_URL", "http://127.0.0.1:9"),
        // Deliveries to a port where nothing listens: they fail and are logged.
        ("WEBHOOK_URL", "http://127.0.0.1:9/hooks"),
        ("WEBHOOK_ALLOW_PRIVATE", "true"),
        ("RUST_LOG", "debug"),
        ("AWS_REGION", "us-east-1"),
    ];
    env.extend(secrets.iter().copied());
    let s = TestServer::start("sqlite", &env).await;
    for auth in [Some(key.as_str()), Some("ask_not_a_real_key"), None] {
        for body in [
            json!({"message": "hi"}),
            json!({"message": "fail [status:401]"}),
            json!({"message": "stream", "stream": true}),
        ] {
            let r = send(&s, "POST", "/agent/process", auth, &[("x-user-id", "u1")], Some(body)).await;
            let text = r.text().await.unwrap();
            for (_, secret) in secrets {
                assert!(!text.contains(secret), "a secret reached a response");
            }
            assert!(!text.contains(&key));
        }
    }
    let log = s.output();
    assert!(log.contains("request"), "the log was captured");
    for (name, secret) in secrets {
        assert!(!log.contains(secret), "{name} reached the log");
    }
    assert!(!log.contains(&key), "the API key reached the log");
}
