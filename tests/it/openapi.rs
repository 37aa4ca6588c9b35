//! `GET /openapi.json` describes every route, and every route it describes exists.

use serde_json::Value;

use crate::support::{TestServer, get, request};

const ROUTES: &[(&str, &str)] = &[
    ("post", "/agent/process"),
    ("get", "/agent/usage/{tenantId}"),
    ("get", "/agent/usage/{tenantId}/users/{userId}"),
    ("get", "/agent/budgets/{tenantId}"),
    ("put", "/agent/budgets/{tenantId}"),
    ("get", "/agent/conversations/{tenantId}/users/{userId}"),
    ("delete", "/agent/conversations/{tenantId}/users/{userId}"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}"),
    ("delete", "/agent/conversations/{tenantId}/sessions/{sessionId}"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/close"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/summarize"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}/messages"),
    ("get", "/agent/conversations/{tenantId}/messages"),
    ("get", "/agent/conversations/{tenantId}/search"),
    ("get", "/agent/conversations/{tenantId}/users/{userId}/search"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/approve"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/actions/{actionId}/reject"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}"),
    ("get", "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/events"),
    ("post", "/agent/conversations/{tenantId}/sessions/{sessionId}/turns/{turnId}/cancel"),
    ("get", "/agent/events/{tenantId}"),
    ("get", "/agent/tenants/{tenantId}/agents"),
    ("get", "/agent/tenants/{tenantId}/agents/{agentId}"),
    ("put", "/agent/tenants/{tenantId}/agents/{agentId}"),
    ("delete", "/agent/tenants/{tenantId}/agents/{agentId}"),
    ("get", "/agent/tenants/{tenantId}/channels"),
    ("get", "/agent/tenants/{tenantId}/channels/{channelId}"),
    ("put", "/agent/tenants/{tenantId}/channels/{channelId}"),
    ("delete", "/agent/tenants/{tenantId}/channels/{channelId}"),
    ("post", "/agent/tenants/{tenantId}/channels/{channelId}/messages"),
    ("get", "/channels/whatsapp/webhook"),
    ("post", "/channels/whatsapp/webhook"),
    ("post", "/channels/twilio/{channelId}/webhook"),
    ("post", "/channels/twilio/{channelId}/status"),
    ("post", "/channels/email/{channelId}/inbound/{secret}"),
    ("post", "/agent/ui/chat"),
    ("get", "/agent/ui/chat/{id}/stream"),
    ("post", "/agent/ui/chat/{id}/stop"),
    ("get", "/agent/ui/chat/{id}/messages"),
    ("post", "/v1/conversations"),
    ("get", "/v1/conversations/{conversation_id}"),
    ("post", "/v1/conversations/{conversation_id}"),
    ("delete", "/v1/conversations/{conversation_id}"),
    ("get", "/v1/conversations/{conversation_id}/items"),
    ("post", "/v1/conversations/{conversation_id}/items"),
    ("post", "/v1/responses"),
    ("get", "/v1/responses/{response_id}"),
    ("delete", "/v1/responses/{response_id}"),
    ("post", "/v1/responses/{response_id}/cancel"),
    ("get", "/v1/responses/{response_id}/input_items"),
    ("get", "/conversations/{tenantId}/users/{userId}"),
    ("get", "/conversations/{tenantId}/sessions/{sessionId}"),
    ("get", "/conversations/{tenantId}/sessions/{sessionId}/messages"),
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
                .replace("{actionId}", "a1")
                .replace("{agentId}", "desk")
                .replace("{channelId}", "wa")
                .replace("{secret}", "x")
                .replace("{id}", "c1")
                .replace("{conversation_id}", "conv_c1")
                .replace("{response_id}", "resp_r1");
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

/// The original server's paths (without `/agent`) answer like ours, are marked deprecated, and are
/// checked like ours: a credential of one tenant cannot read another's through them.
#[tokio::test]
async fn the_original_servers_paths_answer_and_are_deprecated() {
    let s = TestServer::start("sqlite", &[]).await;
    let spec: Value = get(&s, "/openapi.json").await.json().await.unwrap();
    for path in [
        "/conversations/{tenantId}/users/{userId}",
        "/conversations/{tenantId}/sessions/{sessionId}",
        "/conversations/{tenantId}/sessions/{sessionId}/messages",
    ] {
        assert_eq!(spec["paths"][path]["get"]["deprecated"], true, "{path}");
    }
    let answer = crate::support::turn(&s, "t1", "u1", "hello").await;
    let sid = answer["sessionId"].as_str().unwrap();
    for (ours, original) in [
        ("/agent/conversations/t1/users/u1".to_string(), "/conversations/t1/users/u1".to_string()),
        (format!("/agent/conversations/t1/sessions/{sid}"), format!("/conversations/t1/sessions/{sid}")),
        (
            format!("/agent/conversations/t1/sessions/{sid}/messages"),
            format!("/conversations/t1/sessions/{sid}/messages"),
        ),
    ] {
        let a: Value = get(&s, &ours).await.json().await.unwrap();
        let b: Value = get(&s, &original).await.json().await.unwrap();
        assert_eq!(a, b, "{original}");
    }
}
