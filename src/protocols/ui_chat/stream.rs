//! The UI message stream's chunks: a turn's events, or a finished follow-up, as the parts the
//! SDK reads, framed as SSE with the server's stream slots and keep-alives.

use axum::http::header;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::agent::TurnEvents;
use crate::store::{Message, TurnEvent};

/// One SSE data line.
fn chunk(value: Value) -> String {
    format!("data: {value}\n\n")
}

/// The UI chunks of a turn's events: the stream the SDK reads.
pub(super) fn ui_stream(events: TurnEvents) -> impl futures::Stream<Item = String> + Send {
    let mut text_open = false;
    let mut started = false;
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_end = ended.clone();
    let mapped = events
        .map(move |e: TurnEvent| {
            let mut out = Vec::new();
            if !started {
                started = true;
                // The reply's id, as the history will name it.
                let start = match e.data["turnId"].as_str().and_then(|t| crate::ids::MessageId::parse(t).ok()) {
                    Some(turn) => json!({"type": "start", "messageId": crate::agent::Agent::reply_id_of(&turn)}),
                    None => json!({"type": "start"}),
                };
                out.push(chunk(start));
                out.push(chunk(json!({"type": "start-step"})));
            }
            let close_text = |out: &mut Vec<String>, open: &mut bool| {
                if *open {
                    out.push(chunk(json!({"type": "text-end", "id": "text-1"})));
                    *open = false;
                }
            };
            match e.event.as_str() {
                "delta" => {
                    if let Some(text) = e.data["text"].as_str().filter(|t| !t.is_empty()) {
                        if !text_open {
                            out.push(chunk(json!({"type": "text-start", "id": "text-1"})));
                            text_open = true;
                        }
                        out.push(chunk(json!({"type": "text-delta", "id": "text-1", "delta": text})));
                    }
                }
                "tool_call" => {
                    close_text(&mut out, &mut text_open);
                    out.push(chunk(json!({
                        "type": "tool-input-available",
                        "toolCallId": e.data["id"], "toolName": e.data["tool"], "input": e.data["arguments"],
                    })));
                }
                "tool_result" => out.extend(action_chunks(&e.data, true)),
                "done" => {
                    close_text(&mut out, &mut text_open);
                    let mut waiting = false;
                    for a in e.data["actions"].as_array().into_iter().flatten() {
                        if a["status"] == "pending_approval" {
                            waiting = true;
                            out.extend(action_chunks(a, false));
                        }
                    }
                    out.extend(finish(e.data["status"].as_str(), waiting));
                    ended.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                "error" => {
                    close_text(&mut out, &mut text_open);
                    let text =
                        e.data["error"]["message"].as_str().or(e.data["message"].as_str()).unwrap_or("the turn failed");
                    out.push(chunk(json!({"type": "error", "errorText": text})));
                    out.push("data: [DONE]\n\n".to_string());
                    ended.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            }
            futures::stream::iter(out)
        })
        .flatten();
    // Events that stop without an end (a server that died) still end the SDK's stream.
    let tail = futures::stream::once(async move {
        if seen_end.load(std::sync::atomic::Ordering::Relaxed) {
            Vec::new()
        } else {
            vec![
                chunk(json!({"type": "error", "errorText": "the turn's events stopped"})),
                "data: [DONE]\n\n".to_string(),
            ]
        }
    })
    .flat_map(futures::stream::iter);
    mapped.chain(tail)
}

/// The UI message stream of a turn's events; it holds a stream slot (`MAX_CONCURRENT_STREAMS`)
/// until it ends, and sends keep-alive comments like every other stream.
pub(super) fn respond(events: TurnEvents, slot: OwnedSemaphorePermit) -> Response {
    let header = header::HeaderName::from_static("x-vercel-ai-ui-message-stream");
    crate::http::sse::framed(ui_stream(events), String::new(), slot, &[(header, "v1")])
}

/// The chunks of an action: its input, then its output, its denial, its error, or the request for
/// an approval. `decided`: the client showed its input already (it answered the approval), so
/// only the outcome follows.
fn action_chunks(a: &Value, decided: bool) -> Vec<String> {
    let id = &a["id"];
    let mut out = Vec::new();
    if !decided {
        out.push(chunk(
            json!({"type": "tool-input-available", "toolCallId": id, "toolName": a["tool"], "input": a["arguments"]}),
        ));
    }
    out.push(chunk(match a["status"].as_str() {
        Some("pending_approval") => json!({"type": "tool-approval-request", "approvalId": id, "toolCallId": id}),
        Some("done") => {
            json!({"type": "tool-output-available", "toolCallId": id, "output": a.get("result").cloned().unwrap_or(Value::Null)})
        }
        Some("rejected") => json!({"type": "tool-output-denied", "toolCallId": id}),
        other => json!({"type": "tool-output-error", "toolCallId": id, "errorText": action_error(a, other)}),
    }));
    out
}

pub(super) fn action_error(a: &Value, status: Option<&str>) -> String {
    let status = status.unwrap_or("failed");
    match a["result"].as_str() {
        Some(result) => format!("{status}: {result}"),
        None => status.to_string(),
    }
}

/// The end of a turn's stream (`status`, the turn's): `finish` (`tool-calls` when an action waits
/// for approval), or `abort` for a turn that was cancelled or superseded; then `[DONE]`.
fn finish(status: Option<&str>, waiting: bool) -> Vec<String> {
    let end = match status {
        Some(reason @ ("cancelled" | "interrupted")) => json!({"type": "abort", "reason": reason}),
        _ => json!({"type": "finish", "finishReason": if waiting { "tool-calls" } else { "stop" }}),
    };
    vec![chunk(json!({"type": "finish-step"})), chunk(end), "data: [DONE]\n\n".to_string()]
}

/// Finished answers (the follow-ups of approval decisions, one per decision) as one UI message
/// stream: each decided action's outcome, the actions a follow-up proposed next, and its text.
pub(super) fn answered(answers: &[(String, Message)], slot: OwnedSemaphorePermit) -> Response {
    let first = answers.last().map(|(_, m)| m.id.to_string()).unwrap_or_default();
    let mut out = vec![chunk(json!({"type": "start", "messageId": first})), chunk(json!({"type": "start-step"}))];
    let mut waiting = false;
    for (n, (decided, message)) in answers.iter().enumerate() {
        let actions = message.tool_actions();
        for a in actions {
            out.extend(action_chunks(a, a["id"] == decided.as_str()));
        }
        if !message.content.is_empty() {
            let id = format!("text-{}", n + 1);
            out.push(chunk(json!({"type": "text-start", "id": id})));
            out.push(chunk(json!({"type": "text-delta", "id": id, "delta": message.content})));
            out.push(chunk(json!({"type": "text-end", "id": id})));
        }
        waiting = actions.iter().any(|a| a["status"] == "pending_approval");
    }
    let status = answers.last().map(|(_, m)| crate::agent::Agent::recorded_status(m).as_str());
    out.extend(finish(status, waiting));
    let header = header::HeaderName::from_static("x-vercel-ai-ui-message-stream");
    crate::http::sse::framed(futures::stream::iter(out), String::new(), slot, &[(header, "v1")])
}
