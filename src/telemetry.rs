//! Metrics in Prometheus text (metrics-exporter-prometheus, whose upkeep runs every few seconds so
//! its memory stays bounded). Every metric this server records is defined here.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder and starts its upkeep; the handle renders `/metrics`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ])?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("http_requests_total", "HTTP requests by method, route and status");
    describe_histogram!("http_request_duration_seconds", Unit::Seconds, "Time to the response head, by route");
    describe_histogram!("agent_turn_duration_seconds", Unit::Seconds, "Whole agent turns, by outcome and mode");
    describe_histogram!(
        "model_request_duration_seconds",
        Unit::Seconds,
        "Model provider calls, by provider and outcome"
    );
    describe_counter!("model_tokens_total", "Tokens reported by the model provider, by direction");
    describe_counter!("storage_calls_total", "Storage operations by backend, operation and outcome");
    describe_gauge!("sse_streams_active", "Server-Sent Event streams open now");
    describe_counter!("rate_limited_requests_total", "Requests refused with 429");
    describe_counter!("events_recorded_total", "Change events recorded, by type");
    describe_counter!("context_summaries_total", "Context summaries stored");
    describe_counter!("context_summary_failures_total", "Context summaries that failed (the previous one stays)");
    describe_counter!("events_record_failures_total", "Change events that could not be recorded");
    describe_counter!(
        "webhook_deliveries_total",
        "Webhook attempts by endpoint and outcome (delivered, retried, failed, expired)"
    );
    describe_histogram!(
        "webhook_delivery_lag_seconds",
        Unit::Seconds,
        "From an event being recorded to its endpoint acknowledging it"
    );
    // Shown from the start, not only once something happened.
    metrics::gauge!("sse_streams_active").set(0.0);
    metrics::counter!("rate_limited_requests_total").absolute(0);
}

pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [("method", method.to_string()), ("route", route.to_string()), ("status", status.to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method.to_string(), "route" => route.to_string())
        .record(elapsed.as_secs_f64());
}

pub fn turn(stream: bool, ok: bool, elapsed: Duration) {
    metrics::histogram!(
        "agent_turn_duration_seconds",
        "mode" => if stream { "stream" } else { "json" },
        "outcome" => if ok { "ok" } else { "error" }
    )
    .record(elapsed.as_secs_f64());
}

pub fn model_call(provider: &'static str, ok: bool, elapsed: Duration, tokens: Option<(u64, u64)>) {
    metrics::histogram!("model_request_duration_seconds", "provider" => provider, "outcome" => if ok { "ok" } else { "error" })
        .record(elapsed.as_secs_f64());
    if let Some((input, output)) = tokens {
        metrics::counter!("model_tokens_total", "provider" => provider, "direction" => "input").increment(input);
        metrics::counter!("model_tokens_total", "provider" => provider, "direction" => "output").increment(output);
    }
}

/// What a model call cost, by model (`model_cost_microdollars_total`).
pub fn model_cost(model: &str, micros: u64) {
    metrics::counter!("model_cost_microdollars_total", "model" => model.to_string()).increment(micros);
}

pub fn storage_call(backend: &'static str, operation: &str, ok: bool) {
    metrics::counter!(
        "storage_calls_total",
        "backend" => backend,
        "operation" => operation.to_string(),
        "outcome" => if ok { "ok" } else { "error" }
    )
    .increment(1);
}

pub fn rate_limited() {
    metrics::counter!("rate_limited_requests_total").increment(1);
}

/// Counts an open SSE stream while it lives.
pub struct ActiveStream;

impl ActiveStream {
    pub fn open() -> Self {
        metrics::gauge!("sse_streams_active").increment(1.0);
        ActiveStream
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics::gauge!("sse_streams_active").decrement(1.0);
    }
}
