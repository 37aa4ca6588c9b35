//! `GET /openapi.json` describes every route, and every route it describes exists.

use serde_json::Value;

use crate::support::{TestServer, get, request};

const ROUTES: &[(&str, &str)] = &[
    ("post", "/agent/process"),
    ("get", "/agent/conversations/{tenantId}/users/{userId}"),
    ("delete", "/agent/conversations/{tenantId}/users/{userId}"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}"),
    ("delete", "/agent/conversations/{tenantId}/sessions/{sessionId}"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/close"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}/messages"),
    ("get", "/agent/conversations/{tenantId}/messages"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/approve"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/reject"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/events"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/cancel"),
    ("get", "/healthz"),
    ("get", "/readyz"),
];

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_exists() {
    let s = TestServer::start("sqlite", &[]).await;
    let spec: Value = get(&s, "/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"), "{}", spec["openapi"]);
    let paths = spec["paths"].as_object().unwrap();
    for (method, path) in ROUTES {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is missing from /openapi.json"
        );
    }
    // Every documented operation answers something other than "no such route".
    let mut documented = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented += 1;
            let concrete = path
                .replace("{tenantId}", "t1")
                .replace("{userId}", "u1")
                .replace("{sessionId}", "s1")
                .replace("{actionId}", "a1");
            let r = request(&s, &method.to_uppercase(), &concrete).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let no_route =
                status == 404 && body["error"]["message"].as_str().is_some_and(|m| m.starts_with("no route"));
            assert!(!no_route && status != 405, "{method} {path} is documented but not served ({status})");
        }
    }
    assert_eq!(documented, ROUTES.len(), "undocumented or unexpected operations in the spec");
}
