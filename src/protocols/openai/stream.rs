//! A turn's events as the Responses API's streaming events, in OpenAI's order.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::responses::response_view;
use crate::agent::TurnEvents;
use crate::ids::MessageId;

/// The Responses API's events of a turn's events.
/// `starting_after`: only the events after that sequence number (the mapping is the same every
/// time, so a resumed stream numbers its events as the first one did).
pub(super) fn stream_response(events: TurnEvents, model: String, starting_after: Option<u64>) -> Response {
    let mut seq = 0u64;
    let mut head: Option<Value> = None;
    let mut text = String::new();
    let mut item_id = String::new();
    let body = events
        .map(move |e| {
            let mut out: Vec<(String, Value)> = Vec::new();
            if head.is_none() {
                let turn = e.data["turnId"].as_str().unwrap_or_default().to_string();
                item_id = MessageId::parse(turn.clone()).map(|t| format!("msg_{}", crate::agent::Agent::reply_id_of(&t))).unwrap_or_default();
                let response = json!({
                    "id": format!("resp_{turn}"), "object": "response", "created_at": crate::timestamp::epoch_seconds(),
                    "status": "in_progress", "model": model, "output": [], "parallel_tool_calls": false,
                    "tool_choice": "auto", "tools": [], "metadata": {}, "error": null, "incomplete_details": null,
                    "conversation": e.data["sessionId"].as_str().map(|s| json!({"id": format!("conv_{s}")})),
                });
                out.push(("response.created".into(), json!({"response": response})));
                out.push(("response.in_progress".into(), json!({"response": response})));
                let item = json!({"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []});
                out.push(("response.output_item.added".into(), json!({"output_index": 0, "item": item})));
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                out.push(("response.content_part.added".into(), json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part})));
                head = Some(response);
            }
            match e.event.as_str() {
                "delta" => {
                    if let Some(delta) = e.data["text"].as_str().filter(|t| !t.is_empty()) {
                        text.push_str(delta);
                        out.push(("response.output_text.delta".into(), json!({
                            "item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": [],
                        })));
                    }
                }
                "done" => {
                    let answer = &e.data;
                    {
                        let final_text = answer["response"].as_str().unwrap_or(&text).to_string();
                        out.push(("response.output_text.done".into(), json!({
                            "item_id": item_id, "output_index": 0, "content_index": 0, "text": final_text, "logprobs": [],
                        })));
                        let part = json!({"type": "output_text", "text": final_text, "annotations": []});
                        out.push(("response.content_part.done".into(), json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part.clone()})));
                        let item = json!({"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part]});
                        out.push(("response.output_item.done".into(), json!({"output_index": 0, "item": item})));
                        let response = response_view(answer, &model);
                        out.push(("response.completed".into(), json!({"response": response})));
                    }
                }
                "error" => {
                    let mut response = head.clone().unwrap_or_default();
                    response["status"] = json!("failed");
                    let message = e.data["error"]["message"].as_str().or(e.data["message"].as_str()).unwrap_or("the turn failed");
                    let code = e.data["error"]["code"].as_str().unwrap_or("server_error");
                    response["error"] = json!({"code": code, "message": message});
                    out.push(("response.failed".into(), json!({"response": response})));
                }
                _ => {}
            }
            let lines: Vec<String> = out
                .into_iter()
                .filter_map(|(kind, mut data)| {
                    let n = seq;
                    seq += 1;
                    if starting_after.is_some_and(|after| n <= after) {
                        return None;
                    }
                    data["type"] = json!(kind);
                    data["sequence_number"] = json!(n);
                    Some(format!("event: {kind}\ndata: {data}\n\n"))
                })
                .collect();
            futures::stream::iter(lines)
        })
        .flatten()
        .map(Ok::<_, std::convert::Infallible>);
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body))
        .into_response()
}
