//! One client API for the tests: turns, generic requests, Link headers, the JSON error shape and
//! server-sent events.

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use super::server::TestServer;

/// An HTTP client for the tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap()
}

/// A request for `path` on the server, to be completed by the caller.
pub fn request(s: &TestServer, method: &str, path: &str) -> RequestBuilder {
    http().request(method.parse().unwrap(), format!("{}{path}", s.url))
}

/// Sends a request with an optional bearer token, extra headers and an optional JSON body.
pub async fn send(
    s: &TestServer,
    method: &str,
    path: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Response {
    let mut req = request(s, method, path);
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// `GET path`, without credentials.
pub async fn get(s: &TestServer, path: &str) -> Response {
    send(s, "GET", path, None, &[], None).await
}

/// A turn, `POST /agent/process` as `tenant`/`user`: the caller adds the body (and any headers).
pub fn turn_request(s: &TestServer, tenant: &str, user: &str) -> RequestBuilder {
    request(s, "POST", "/agent/process").header("x-tenant-id", tenant).header("x-user-id", user)
}

/// Posts `{"message": message}` as `tenant`/`user` and returns the reply, which must be a 200.
pub async fn turn(s: &TestServer, tenant: &str, user: &str, message: &str) -> Value {
    ok(turn_request(s, tenant, user).json(&json!({"message": message}))).await
}

/// Sends the request and returns its JSON body, which must come with a 200.
pub async fn ok(req: RequestBuilder) -> Value {
    ok_json(req.send().await.unwrap()).await
}

/// The JSON body of a 200 response.
pub async fn ok_json(r: Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The next page's path and query, from the `Link: <...>; rel="next"` header.
pub fn next_link(r: &Response) -> Option<String> {
    let link = r.headers().get("link")?.to_str().unwrap();
    let start = link.find('<')? + 1;
    let end = link.find('>')?;
    assert!(link.ends_with("rel=\"next\""), "{link}");
    Some(link[start..end].to_string())
}

/// Sends the request and checks the JSON error shape: the status, a non-empty message, and the
/// request id of the `x-request-id` header; returns (code, message).
pub async fn expect_error(req: RequestBuilder, status: StatusCode) -> (String, String) {
    let r = req.send().await.unwrap();
    let got = r.status();
    let request_id = r.headers().get("x-request-id").expect("an x-request-id header").to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let error = &body["error"];
    let message = error["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{body}");
    assert_eq!(error["requestId"], json!(request_id), "{body}");
    (error["code"].as_str().unwrap().to_string(), message)
}

/// Server-sent events as (event, data) pairs; blocks without an event or JSON data are skipped.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Some((event?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

/// Reads an SSE response (which must say so in its content type) into (event, data) pairs.
pub async fn sse_events(r: Response) -> Vec<(String, Value)> {
    assert_eq!(r.headers().get("content-type").unwrap(), "text/event-stream");
    let text = r.text().await.unwrap();
    parse_sse(&text)
}

/// Reads a streamed body until an event named `name` has arrived whole; all the text read so far.
pub async fn until_event<S, B, E>(body: &mut S, name: &str) -> String
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Debug,
{
    use futures::StreamExt;
    let mut seen = String::new();
    while !parse_sse(&seen).iter().any(|(e, _)| e == name) {
        let chunk = body.next().await.unwrap_or_else(|| panic!("the stream ended before `{name}`: {seen}"));
        seen.push_str(&String::from_utf8_lossy(chunk.unwrap().as_ref()));
    }
    seen
}

/// The (id, event, data) of every event of an SSE text that has an id.
pub fn parse_sse_ids(text: &str) -> Vec<(u64, String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Some((id?, event?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}
