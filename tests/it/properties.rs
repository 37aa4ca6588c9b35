//! Property tests of the request parsers and cursors: arbitrary input never panics, never yields a
//! 5xx, and what is accepted is what the contract says.

use agent_server::ids::TenantId;
use agent_server::store::Cursor;
use agent_server::timestamp;
use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use tower::ServiceExt;

use crate::support::in_process_app;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| serde_json::json!(f)),
        ".{0,20}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(10, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn cursors_never_panic_and_round_trip(s in ".{0,200}") {
        let _ = Cursor::decode(&s);
    }

    #[test]
    fn valid_cursors_round_trip(micros in 0i64..4_000_000_000_000_000, id in "[a-zA-Z0-9-]{1,64}") {
        let c = Cursor::new(timestamp::format_micros(micros), id);
        prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn ids_accept_exactly_printable_strings_up_to_128_chars(s in "\\PC{0,140}|[ \t\n]{0,3}") {
        let ok = !s.is_empty() && s.chars().count() <= 128 && !s.chars().any(|c| c.is_control() || c.is_whitespace());
        prop_assert_eq!(TenantId::parse(s.clone()).is_ok(), ok);
    }

    #[test]
    fn timestamps_normalise_to_fixed_width(s in ".{0,40}", micros in 0i64..4_000_000_000_000_000) {
        let _ = timestamp::normalize(&s);
        let formatted = timestamp::format_micros(micros);
        prop_assert_eq!(formatted.len(), 27);
        prop_assert_eq!(timestamp::normalize(&formatted), Some(formatted.clone()));
    }

    #[test]
    fn storable_check_never_panics(v in json_value()) {
        let _ = agent_server::store::check_storable(&v);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Arbitrary bodies, headers and query strings: always a JSON answer, never a 5xx.
    #[test]
    fn the_api_answers_any_input_without_a_server_error(
        body in prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,100}"],
        message in json_value(),
        tenant in "\\PC{0,10}",
        query in "[a-zA-Z0-9=&%._-]{0,40}",
        path in prop::sample::select(vec!["messages", "users/u1", "sessions/s1", "sessions/s1/messages", "search", "users/u1/search"]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let app = in_process_app(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let requests = [
                Request::post("/agent/process")
                    .header("content-type", "application/json")
                    .header("x-tenant-id", tenant.as_str())
                    .header("x-user-id", "u1")
                    .body(Body::from(body.clone())),
                Request::post("/agent/process")
                    .header("content-type", "application/json")
                    .header("x-tenant-id", "t1")
                    .header("x-user-id", "u1")
                    .body(Body::from(serde_json::json!({"message": message, "metadata": message, "context": message}).to_string())),
                Request::get(format!("/agent/conversations/t1/{path}?{query}")).body(Body::empty()),
            ];
            for request in requests {
                let Ok(request) = request else { continue };
                let response = app.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
                assert!(status.as_u16() < 500, "{status}: {}", String::from_utf8_lossy(&bytes));
                assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(), "not JSON: {}", String::from_utf8_lossy(&bytes));
            }
        });
    }
}

/// Arbitrary search text at both backends (SQLite's FTS5 index and the scan): `q` either parses
/// (then the search answers) or is refused as the API's 400; it never reaches a query language.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_search_text_never_breaks_either_backend() {
    use agent_server::ids::{TenantId, UserId};
    use agent_server::store::search::{SearchOrder, SearchQuery, parse_query, scan};
    use agent_server::store::{NewMessage, NewSession, Role};
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let tenant = TenantId::parse("acme").unwrap();
    let user = UserId::parse("u1").unwrap();
    let mut stores = Vec::new();
    for backend in ["sqlite", "dynamodb"] {
        let s = crate::support::store(backend).await;
        let new = NewSession { tenant_id: tenant.clone(), user_id: user.clone(), location_id: None, metadata: None };
        let texts =
            ["plain words here", "\"quoted\" AND OR NOT * ^ : ( )", "café Crème NEAR(x y)", "日本語のテキスト 123"];
        let messages = texts
            .iter()
            .map(|t| NewMessage {
                id: agent_server::ids::MessageId::generate(),
                user_id: user.clone(),
                role: Role::User,
                content: t.to_string(),
                metadata: None,
                counted: None,
            })
            .collect();
        s.store.create_session_with(new, messages).await.unwrap();
        stores.push(s);
    }
    let mut runner = TestRunner::default();
    let text = prop_oneof!["\\PC{0,60}", "[\"*()^:+\\-. a-zA-Z]{0,30}", ".{0,40}"];
    for _ in 0..200 {
        let q = text.new_tree(&mut runner).unwrap().current();
        let Ok(terms) = parse_query(&q) else { continue };
        let query = SearchQuery {
            terms,
            user: Some(user.clone()),
            session: None,
            role: None,
            from: None,
            to: None,
            order: SearchOrder::Relevance,
            limit: 20,
            cursor: None,
            max_items: 100,
        };
        for s in &stores {
            let found = s.store.search_messages(&tenant, &query).await;
            assert!(found.is_ok(), "{q:?}: {found:?}");
            assert!(scan(&*s.store, &tenant, &query).await.is_ok(), "{q:?}");
        }
    }
}
