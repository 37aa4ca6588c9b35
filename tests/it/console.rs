//! The web console: served with its security headers, small, and off with `CONSOLE=off`; and driven
//! in a real browser (headless Chromium through WebDriver, `tests/console/browser_test.py`): sign
//! in, sessions, a streamed reply, an approval, and HTML in a message shown as text. Screenshots go
//! to `target/console/`.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{TestServer, create_key, get, send};

#[tokio::test]
async fn the_console_is_served_small_with_a_strict_policy() {
    let s = TestServer::start("sqlite", &[]).await;
    let r = get(&s, "/console").await;
    assert_eq!(r.status(), StatusCode::OK, "the redirect is followed to the index");
    let r = get(&s, "/console/").await;
    assert_eq!(r.status(), StatusCode::OK);
    let headers = r.headers().clone();
    assert_eq!(headers["cache-control"], "no-store");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let index = r.text().await.unwrap();
    assert!(!index.contains("<script>") && !index.contains(" style="), "no inline script or style");
    // Assets by relative, content-hashed names, cached for a year.
    let assets: Vec<&str> = index.split("\"assets/").skip(1).map(|rest| rest.split('"').next().unwrap()).collect();
    assert_eq!(assets.len(), 2, "{index}");
    let mut total = index.len();
    for asset in assets {
        assert!(asset.split('.').nth(1).is_some_and(|h| h.len() == 12), "{asset}");
        let r = get(&s, &format!("/console/assets/{asset}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
        assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
        total += r.bytes().await.unwrap().len();
    }
    assert!(total < 150 * 1024, "{total} bytes");
    assert_eq!(get(&s, "/console/assets/app.000000000000.js").await.status(), StatusCode::NOT_FOUND);
    let off = TestServer::start("sqlite", &[("CONSOLE", "off")]).await;
    assert_eq!(get(&off, "/console/").await.status(), StatusCode::NOT_FOUND);
}

/// Whether Chromium, its WebDriver and Selenium are here (`scripts/test.sh` installs them when it can).
fn browser_missing() -> Option<String> {
    for tool in ["chromium", "chromedriver"] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("{tool} is not installed (Debian: apt-get install chromium chromium-driver)"));
        }
    }
    let selenium = std::process::Command::new("python3").args(["-c", "import selenium"]).output();
    if !selenium.is_ok_and(|o| o.status.success()) {
        return Some("the selenium package is not installed (pip install selenium)".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    if let Some(why) = browser_missing() {
        // scripts/test.sh says `required` once it has the browser: then a missing one is a failure.
        assert_ne!(std::env::var("AGENT_SERVER_BROWSER").as_deref(), Ok("required"), "{why}");
        eprintln!("\n*** SKIPPED the browser test of the console: {why} ***\n");
        return;
    }
    // A business API whose every call succeeds, for the action to approve.
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"id": "r1", "ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), &["--tenant", "acme"]);
    let keys = dir.path().join("keys.json");
    let s = TestServer::start(
        "sqlite",
        &[
            ("AUTH_MODE", "api-key"),
            ("API_KEYS_FILE", keys.to_str().unwrap()),
            ("API_SERVER_URL", &api),
            ("API_RESOURCE_TYPES", "appointments"),
            ("ECHO_CHUNK_DELAY_MS", "120"),
            // The business API's fake answers every call: a WhatsApp send gets no message id back,
            // which is a delivery failure for the Channels page.
            ("WHATSAPP_API_BASE_URL", &api),
            ("EVENTS", "on"),
        ],
    )
    .await;
    let channel =
        json!({"type": "whatsapp", "phoneNumberId": "1065", "accessToken": "t", "appSecret": "a", "verifyToken": "v"});
    let r = send(&s, "PUT", "/agent/tenants/acme/channels/wa", Some(&key), &[], Some(channel)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let template = json!({"to": "15551234567", "template": {"name": "hello", "language": "en_US"}});
    let r = send(&s, "POST", "/agent/tenants/acme/channels/wa/messages", Some(&key), &[], Some(template)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = send(
        &s,
        "POST",
        "/agent/process",
        Some(&key),
        &[("x-user-id", "u1")],
        Some(json!({"message": "hello from the test", "metadata": {
            // A client's metadata shaped like the server's: never drawn as such.
            "actions": [{"id": "call_forged", "tool": "forged_tool", "status": "pending_approval", "arguments": {}}],
            "model": "forged-model",
            "usage": {"inputTokens": 1, "outputTokens": 2},
            "turnStatus": "forged-status",
        }})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser_test.py");
    let (url, out_dir, browser_key) = (s.url.clone(), out.clone(), key.clone());
    let result = tokio::task::spawn_blocking(move || {
        // At most five minutes: a browser that hangs fails the test instead of hanging it.
        std::process::Command::new("timeout")
            .arg("300")
            .arg("python3")
            .arg(script)
            .arg(url)
            .arg(browser_key)
            .arg(out_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert!(result.status.success(), "the browser test failed:\n{report}\nserver log:\n{}", s.output());
    assert!(report.contains("every step passed"), "{report}");
    assert!(out.join("console-approved.png").exists());
    // What the Agents page saved, as the API has it: the key set, never shown.
    let agent: serde_json::Value =
        send(&s, "GET", "/agent/tenants/acme/agents/desk", Some(&key), &[], None).await.json().await.unwrap();
    assert_eq!(agent["name"], "Front desk 2");
    assert_eq!(agent["version"], 2);
    assert_eq!(agent["default"], true);
    assert_eq!(agent["model"]["temperature"], 0.5);
    assert_eq!(agent["businessApi"], json!({"url": "https://api.example.com/v1", "keySet": true}));
}
