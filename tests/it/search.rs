//! Search over conversations through the real binary, on both backends (SQLite's FTS5 index, and
//! the bounded scan that DynamoDB uses): words and phrases, folded for case and accents, scoped to
//! the user or the tenant, filters, orders, snippets with highlights, erasure, and the scan's
//! budget with `partial` pages that go on by `Link`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestServer, expect_error, get, next_link, ok_json, request, turn};

on_both_backends!(words_and_phrases_are_found_in_the_callers_scope, a_bounded_scan_answers_partial_pages);

async fn search(s: &TestServer, path: &str) -> Value {
    ok_json(get(s, path).await).await
}

fn contents(answer: &Value) -> Vec<String> {
    answer["results"].as_array().unwrap().iter().map(|r| r["snippet"].as_str().unwrap().to_string()).collect()
}

/// The highlighted parts of each result's snippet.
fn highlighted(answer: &Value) -> Vec<Vec<String>> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let snippet: Vec<char> = r["snippet"].as_str().unwrap().chars().collect();
            r["highlights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| snippet[h[0].as_u64().unwrap() as usize..h[1].as_u64().unwrap() as usize].iter().collect())
                .collect()
        })
        .collect()
}

async fn words_and_phrases_are_found_in_the_callers_scope(backend: &str) {
    let s = TestServer::start(backend, &[]).await;
    let booked = turn(&s, "acme", "u1", "I booked the Dentist for next Tuesday at 10").await;
    turn(&s, "acme", "u1", "Then a café au lait at the Crème shop").await;
    turn(&s, "acme", "u2", "my dentist is far away").await;
    turn(&s, "globex", "u1", "the globex dentist").await;
    let expected_backend = if backend == "sqlite" { "sqlite-fts5" } else { "scan" };

    let found = search(&s, "/agent/conversations/acme/users/u1/search?q=dentist").await;
    assert_eq!(found["backend"], expected_backend);
    assert_eq!(found["partial"], false);
    let results = found["results"].as_array().unwrap();
    // The user message and the echo of it: u1's only, never u2's or globex's.
    assert_eq!(results.len(), 2, "{found}");
    assert!(results.iter().all(|r| r["userId"] == "u1" && r["sessionId"] == booked["sessionId"]));
    assert!(highlighted(&found).iter().all(|h| h == &["Dentist"]), "{found}");
    let first = &results.iter().find(|r| r["role"] == "user").unwrap();
    assert_eq!(first["messageId"], booked["userMessage"]["id"]);
    assert_eq!(first["timestamp"], booked["userMessage"]["timestamp"]);
    assert!(first["score"].as_f64().unwrap() > 0.0);

    // Phrases in order, case and accents folded, every term required.
    let phrase = search(&s, "/agent/conversations/acme/users/u1/search?q=%22next%20tuesday%22").await;
    assert_eq!(highlighted(&phrase)[0], ["next Tuesday"]);
    let reversed = search(&s, "/agent/conversations/acme/users/u1/search?q=%22tuesday%20next%22").await;
    assert_eq!(reversed["results"], json!([]));
    let folded = search(&s, "/agent/conversations/acme/users/u1/search?q=CAFE%20creme&role=user").await;
    assert_eq!(contents(&folded), ["Then a café au lait at the Crème shop"]);
    assert_eq!(highlighted(&folded)[0], ["café", "Crème"]);
    let none = search(&s, "/agent/conversations/acme/users/u1/search?q=dentist%20crème").await;
    assert_eq!(none["results"], json!([]), "every term must occur in one message");

    // Filters and order.
    let users_only = search(&s, "/agent/conversations/acme/users/u1/search?q=dentist&role=user").await;
    assert_eq!(users_only["results"].as_array().unwrap().len(), 1);
    let later = booked["agentMessage"]["timestamp"].as_str().unwrap();
    let after = search(&s, &format!("/agent/conversations/acme/users/u1/search?q=dentist&from={later}")).await;
    assert_eq!(after["results"].as_array().unwrap().len(), 1);
    assert_eq!(after["results"][0]["role"], "agent");
    let recent = search(&s, "/agent/conversations/acme/users/u1/search?q=at&order=recent").await;
    let times: Vec<&str> =
        recent["results"].as_array().unwrap().iter().map(|r| r["timestamp"].as_str().unwrap()).collect();
    assert!(times.len() >= 3 && times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // The tenant's search: both users, one user, never another tenant.
    let tenant = search(&s, "/agent/conversations/acme/search?q=dentist").await;
    let users: std::collections::BTreeSet<&str> =
        tenant["results"].as_array().unwrap().iter().map(|r| r["userId"].as_str().unwrap()).collect();
    assert_eq!(users, ["u1", "u2"].into());
    assert_eq!(tenant["results"].as_array().unwrap().len(), 4);
    let u2 = search(&s, "/agent/conversations/acme/search?q=dentist&userId=u2").await;
    assert!(u2["results"].as_array().unwrap().iter().all(|r| r["userId"] == "u2"));
    let globex = search(&s, "/agent/conversations/acme/search?q=globex").await;
    assert_eq!(globex["results"], json!([]));

    // Queries without words, and bad filters, are 400s; nothing reaches a query language.
    for bad in ["q=", "q=%22%22", "q=%3F%21", "q=dentist&role=bot", "q=dentist&from=yesterday", "q=dentist&limit=0"] {
        let (code, _) = expect_error(
            request(&s, "GET", &format!("/agent/conversations/acme/users/u1/search?{bad}")),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(code, "invalid_query", "{bad}");
    }
    for odd in
        ["q=dentist%20OR%20*", "q=NEAR(dentist)", "q=%22unclosed%20dentist", "q=dentist%27%3B--", "q=a%5E2%20-b%20%2Bc"]
    {
        let r = get(&s, &format!("/agent/conversations/acme/users/u1/search?{odd}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{odd}");
    }

    // A deleted session's messages leave the results at once.
    let r =
        request(&s, "DELETE", &format!("/agent/conversations/acme/sessions/{}", booked["sessionId"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let gone = search(&s, "/agent/conversations/acme/users/u1/search?q=dentist").await;
    assert_eq!(gone["results"], json!([]));
}

/// With a budget of 10 messages a request, a search over 60 says `partial` and goes on by `Link`
/// until it finds the old message, each message read once.
async fn a_bounded_scan_answers_partial_pages(backend: &str) {
    let s = TestServer::start(backend, &[("SEARCH_BACKEND", "scan"), ("SEARCH_MAX_ITEMS", "10")]).await;
    turn(&s, "acme", "u1", "the needle is here").await;
    for i in 0..29 {
        turn(&s, "acme", "u1", &format!("hay {i}")).await;
    }
    let mut path = Some("/agent/conversations/acme/users/u1/search?q=needle".to_string());
    let (mut pages, mut found, mut partial_pages) = (0, Vec::new(), 0);
    while let Some(p) = path {
        let r = get(&s, &p).await;
        path = next_link(&r);
        let answer = ok_json(r).await;
        assert_eq!(answer["backend"], "scan");
        if answer["partial"] == true {
            partial_pages += 1;
        }
        found.extend(answer["results"].as_array().unwrap().clone());
        pages += 1;
        assert!(pages <= 7, "the scan goes on");
    }
    assert_eq!(found.len(), 2, "the needle and its echo, once each: {found:?}");
    assert!(partial_pages >= 5, "{partial_pages}");
    // The tenant-wide scan the same way.
    let mut path = Some("/agent/conversations/acme/search?q=needle&role=user".to_string());
    let mut found = Vec::new();
    while let Some(p) = path {
        let r = get(&s, &p).await;
        path = next_link(&r);
        found.extend(ok_json(r).await["results"].as_array().unwrap().clone());
    }
    assert_eq!(found.len(), 1);
}
