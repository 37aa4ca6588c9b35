//! A turn's events as Server-Sent Events: every event has an `id:` (give it back as
//! `Last-Event-ID` to resume), the stream starts with a `retry:` hint and sends a comment at least
//! every 15 s, and `error` events carry the request id like every other error.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

use axum::http::StatusCode;
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

fn sse_event(event: TurnEvent, request_id: &str) -> Event {
    let mut data = event.data;
    if event.event == "error" {
        if let Some(error) = data.get_mut("error").and_then(|e| e.as_object_mut()) {
            error.insert("requestId".into(), serde_json::json!(request_id));
        }
    }
    Event::default().id(event.id.to_string()).event(event.event).data(data.to_string())
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

/// The SSE response for a stream of turn events; it holds its stream slot until it ends.
pub fn respond(
    events: impl Stream<Item = TurnEvent> + Send + 'static,
    request_id: String,
    guard: DisconnectGuard,
    slot: Option<OwnedSemaphorePermit>,
) -> Response {
    let open = (crate::telemetry::ActiveStream::open(), slot);
    let hint =
        futures::stream::once(async { Ok::<_, Infallible>(Event::default().retry(RETRY).comment("turn events")) });
    let events = events.map(move |event| {
        let _held = (&open, &guard);
        Ok::<_, Infallible>(sse_event(event, &request_id))
    });
    Sse::new(hint.chain(events)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}
