//! A turn's events as Server-Sent Events: every event has an `id:` (give it back as
//! `Last-Event-ID` to resume), the stream starts with a `retry:` hint and sends a comment at least
//! every 15 s, and `error` events carry the request id like every other error.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::agent::{LiveTurn, OnDisconnect, StopReason};
use crate::store::TurnEvent;

/// How long a client waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);
/// The keep-alive comment's interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Stops a live turn when its client goes away, if the client asked for that.
pub struct DisconnectGuard {
    turn: Option<Arc<LiveTurn>>,
}

impl DisconnectGuard {
    pub fn new(turn: &Arc<LiveTurn>, on_disconnect: OnDisconnect) -> Self {
        Self { turn: (on_disconnect == OnDisconnect::Cancel).then(|| turn.clone()) }
    }

    pub fn none() -> Self {
        Self { turn: None }
    }

    /// The client got its answer: nothing to stop.
    pub fn disarm(mut self) {
        self.turn = None;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if let Some(turn) = self.turn.take() {
            turn.stop(StopReason::ClientGone);
        }
    }
}

/// Appends one event in SSE framing. Its data is compact JSON (no raw line breaks), its name one of
/// the turn's event names.
fn write_event(out: &mut String, event: TurnEvent, request_id: &str) {
    use std::fmt::Write;
    let mut data = event.data;
    if event.event == "error" {
        if let Some(error) = data.get_mut("error").and_then(|e| e.as_object_mut()) {
            error.insert("requestId".into(), serde_json::json!(request_id));
        }
    }
    let _ = write!(out, "id: {}\nevent: {}\ndata: {data}\n\n", event.id, event.event);
}

/// A slot for one more open stream, or 503 when `MAX_CONCURRENT_STREAMS` are open.
pub fn slot(streams: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, ApiError> {
    streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "MAX_CONCURRENT_STREAMS event streams are open; retry shortly or ask without streaming",
        )
        .with("retryAfterSeconds", serde_json::json!(1))
    })
}

/// Events sent in one write at most: those ready together (a model's burst of tokens, a resumed
/// turn's backlog) go out as one chunk instead of a write and a wake-up each.
const MAX_BATCH: usize = 64;

/// The SSE response for a stream of turn events; it holds its stream slot until it ends. The first
/// chunk starts with the `retry:` hint; a comment goes out after `KEEP_ALIVE` without events.
pub fn respond(
    events: impl Stream<Item = TurnEvent> + Send + 'static,
    request_id: String,
    guard: DisconnectGuard,
    slot: Option<OwnedSemaphorePermit>,
) -> Response {
    let frames = events.map(move |event| {
        let mut out = String::new();
        write_event(&mut out, event, &request_id);
        out
    });
    let prelude = format!("retry: {}\n: turn events\n\n", RETRY.as_millis());
    framed(frames, prelude, (slot, guard), &[])
}

/// An SSE response of already framed events (another protocol's, such as OpenAI's or the AI SDK's):
/// `prelude` first, ready frames batched into one write, a comment after `KEEP_ALIVE` without
/// any, and `hold` (a stream slot, a disconnect guard) kept until the stream ends.
pub fn framed(
    frames: impl Stream<Item = String> + Send + 'static,
    prelude: String,
    hold: impl Send + 'static,
    headers: &[(header::HeaderName, &'static str)],
) -> Response {
    let open = (crate::telemetry::ActiveStream::open(), hold);
    let start = tokio::time::Instant::now() + KEEP_ALIVE;
    let state = (Box::pin(frames.ready_chunks(MAX_BATCH)), tokio::time::interval_at(start, KEEP_ALIVE), Some(prelude));
    let body = futures::stream::unfold(state, move |(mut frames, mut quiet, prelude)| {
        let _held = &open;
        async move {
            let mut out = prelude.unwrap_or_default();
            tokio::select! {
                batch = frames.next() => {
                    for frame in batch? {
                        out.push_str(&frame);
                    }
                    quiet.reset();
                }
                _ = quiet.tick() => out.push_str(":\n\n"),
            }
            Some((Ok::<_, Infallible>(Bytes::from(out)), (frames, quiet, None)))
        }
    });
    let mut response = (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(body),
    )
        .into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), header::HeaderValue::from_static(value));
    }
    response
}
