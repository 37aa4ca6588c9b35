//! The accept loop: hyper connections with a header read timeout, and a graceful shutdown on
//! SIGINT or SIGTERM that interrupts the streams still running at the deadline.

use std::time::Duration;

use tokio::net::TcpListener;

use crate::agent::Agent;

/// How long the server waits for slow clients and, at shutdown, for running requests.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `HEADER_READ_TIMEOUT_SECONDS`: a connection that has not sent its headers by then is closed.
    pub header_read: Duration,
    /// `SHUTDOWN_GRACE_SECONDS`: how long running requests and streams may go on after a signal.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until SIGINT or SIGTERM, then lets running requests finish within
/// the grace period; past it, the agent's streams are interrupted.
pub async fn run(listener: TcpListener, app: axum::Router, agent: &Agent, timeouts: Timeouts) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // hyper directly, for the header read timeout that stops slowloris clients.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeouts.header_read)
                    // Generous parser limits, so that the stricter ones of `access::header_limits`
                    // answer with a JSON error (hyper's own answers have no body).
                    .max_headers(super::access::PARSER_MAX_HEADERS)
                    .max_buf_size(super::access::PARSER_MAX_HEAD_BYTES)
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(app.clone()),
                    );
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting up to {:?} for running requests", timeouts.shutdown_grace);
    // Connections, and the turns whose clients went away (they run on), finish within the grace.
    let drained = async {
        graceful.shutdown().await;
        agent.turns_finished().await;
        // The tenants' usage totals counted here since the last second.
        agent.meter().flush().await;
    };
    tokio::pin!(drained);
    tokio::select! {
        _ = &mut drained => {}
        _ = tokio::time::sleep(timeouts.shutdown_grace) => {
            // Turns still running store what they have (marked interrupted) and end.
            tracing::warn!("shutdown deadline passed: interrupting running turns");
            agent.stop_streams();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut drained).await;
        }
    }
    tracing::info!("agent-server stopped");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
