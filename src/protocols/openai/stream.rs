//! A turn's events as the Responses API's streaming events, in OpenAI's order.
//!
//! Output items get their `output_index` in the order they appear: the assistant message when its
//! first text arrives (or at the end), each tool call the server ran when its result arrives (an
//! `mcp_call`), each action waiting for approval at the end (an `mcp_approval_request`).

use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::action_output;
use super::view::response_view;
use crate::agent::TurnEvents;
use crate::ids::MessageId;
use crate::store::TurnEvent;

/// What the stream has said so far about one response.
struct ResponseStream {
    model: String,
    head: Option<Value>,
    /// The output items, as they are now.
    items: Vec<Value>,
    /// The assistant message's index in `items`, once it is open.
    message: Option<usize>,
    message_id: String,
    text: String,
    /// The actions already streamed (as their tools answered).
    shown: Vec<Value>,
}

type Events = Vec<(&'static str, Value)>;

impl ResponseStream {
    fn start(&mut self, e: &TurnEvent, out: &mut Events) {
        let turn = e.data["turnId"].as_str().unwrap_or_default().to_string();
        self.message_id = MessageId::parse(turn.clone())
            .map(|t| format!("msg_{}", crate::agent::Agent::reply_id_of(&t)))
            .unwrap_or_default();
        let response = json!({
            "id": format!("resp_{turn}"), "object": "response", "created_at": crate::timestamp::epoch_seconds(),
            "status": "in_progress", "model": self.model, "output": [], "parallel_tool_calls": false,
            "tool_choice": "auto", "tools": [], "metadata": {}, "error": null, "incomplete_details": null,
            "conversation": e.data["sessionId"].as_str().map(|s| json!({"id": format!("conv_{s}")})),
        });
        out.push(("response.created", json!({"response": response})));
        out.push(("response.in_progress", json!({"response": response})));
        self.head = Some(response);
    }

    /// The assistant message's index, opening it (`output_item.added`, `content_part.added`) first.
    fn open_message(&mut self, out: &mut Events) -> usize {
        if let Some(index) = self.message {
            return index;
        }
        let index = self.items.len();
        let item = json!({"type": "message", "id": self.message_id, "status": "in_progress", "role": "assistant", "content": []});
        out.push(("response.output_item.added", json!({"output_index": index, "item": item})));
        let part = json!({"type": "output_text", "text": "", "annotations": []});
        out.push((
            "response.content_part.added",
            json!({"item_id": self.message_id, "output_index": index, "content_index": 0, "part": part}),
        ));
        self.items.push(item);
        self.message = Some(index);
        index
    }

    /// A whole item at the next index (`output_item.added` and `.done`).
    fn add_item(&mut self, item: Value, out: &mut Events) {
        let index = self.items.len();
        out.push(("response.output_item.added", json!({"output_index": index, "item": item})));
        out.push(("response.output_item.done", json!({"output_index": index, "item": item})));
        self.items.push(item);
    }

    fn event(&mut self, e: &TurnEvent) -> Events {
        let mut out = Vec::new();
        if self.head.is_none() {
            self.start(e, &mut out);
        }
        match e.event.as_str() {
            "delta" => {
                if let Some(delta) = e.data["text"].as_str().filter(|t| !t.is_empty()) {
                    let index = self.open_message(&mut out);
                    self.text.push_str(delta);
                    out.push((
                        "response.output_text.delta",
                        json!({"item_id": self.message_id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
                    ));
                }
            }
            "tool_result" => {
                self.shown.push(e.data["id"].clone());
                self.add_item(action_output(&e.data), &mut out);
            }
            "done" => self.finish(&e.data, &mut out),
            "error" => {
                let mut response = self.head.clone().unwrap_or_default();
                response["status"] = json!("failed");
                response["output"] = json!(self.items);
                let message =
                    e.data["error"]["message"].as_str().or(e.data["message"].as_str()).unwrap_or("the turn failed");
                let code = e.data["error"]["code"].as_str().unwrap_or("server_error");
                response["error"] = json!({"code": code, "message": message});
                out.push(("response.failed", json!({"response": response})));
            }
            _ => {}
        }
        out
    }

    fn finish(&mut self, answer: &Value, out: &mut Events) {
        // What the events did not show: actions waiting for approval, and a follow-up's decided
        // action (a follow-up is stored whole before it is streamed).
        for a in answer["actions"].as_array().into_iter().flatten() {
            if !self.shown.contains(&a["id"]) {
                self.add_item(action_output(a), out);
            }
        }
        if self.message.is_none()
            && let Some(id) = answer["agentMessage"]["id"].as_str()
        {
            self.message_id = format!("msg_{id}");
        }
        let index = self.open_message(out);
        let text = answer["response"].as_str().unwrap_or(&self.text).to_string();
        let id = &self.message_id;
        if self.text.is_empty() && !text.is_empty() {
            out.push((
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
            ));
        }
        out.push((
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
        ));
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        out.push((
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
        ));
        let item = json!({"type": "message", "id": id, "status": "completed", "role": "assistant", "content": [part]});
        out.push(("response.output_item.done", json!({"output_index": index, "item": item})));
        self.items[index] = item;
        let mut response = response_view(answer, &self.model);
        // The items as the stream numbered them.
        response["output"] = json!(self.items);
        let end = match response["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            Some("failed") => "response.failed",
            _ => "response.completed",
        };
        out.push((end, json!({"response": response})));
    }
}

/// The Responses API's events of a turn's events, holding `slot` (`MAX_CONCURRENT_STREAMS`) until
/// the stream ends. `starting_after`: only the events after that sequence number (the mapping is
/// the same every time, so a resumed stream numbers its events as the first one did).
pub(super) fn stream_response(
    events: TurnEvents,
    model: String,
    starting_after: Option<u64>,
    slot: OwnedSemaphorePermit,
) -> Response {
    let mut state = ResponseStream {
        model,
        head: None,
        items: Vec::new(),
        message: None,
        message_id: String::new(),
        text: String::new(),
        shown: Vec::new(),
    };
    let mut seq = 0u64;
    let frames = events
        .map(move |e| {
            let lines: Vec<String> = state
                .event(&e)
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
        .flatten();
    crate::http::sse::framed(frames, String::new(), slot, &[])
}
