//! Delivering events to webhook endpoints, at least once.
//!
//! The outbox is in the store, so every instance sharing it delivers what is pending, a restarted
//! one included. A deliverer claims a due delivery with a conditional write (a lease of 30 s) before
//! sending it, so two instances do not send one event twice in the normal case; a deliverer that
//! dies mid-attempt leaves a lease that lapses, and the event goes again (at least once). Any 2xx
//! acknowledges; timeouts, connection errors, 408, 429 and 5xx are tried again on the schedule, with
//! jitter, for up to 24 hours; other answers stop it. No redirect is followed, and targets that
//! resolve to loopback, private or link-local addresses are refused unless allowed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use super::endpoints::Endpoint;
use super::signature::signature;
use crate::outbound::{REFUSED, is_public, literal_ip};
use crate::store::{ConversationStore, Delivery, DeliveryStep, OutboxPart};

/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim lasts: past it, another deliverer may try the event again.
const LEASE_MS: i64 = 30_000;
/// How long delivery is tried.
const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// How often the outbox is read when nothing wakes the deliverer.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries read per round, and sent at once.
const BATCH: usize = 64;
const CONCURRENCY: usize = 16;

/// The HTTP client of webhooks: no redirects, no proxy (a proxy would resolve the target itself),
/// a 10 s timeout, and the address check unless private targets are allowed.
pub fn client(allow_private: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("agent-server-webhooks/", env!("CARGO_PKG_VERSION")));
    crate::outbound::guarded(builder, allow_private).build().expect("the webhook client builds")
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered(u16),
    /// Worth trying again: a timeout, a connection error, 408, 429 or 5xx.
    Retry(String),
    /// Not worth trying again: another answer, or a refused target.
    Stop(String),
}

/// Sends one signed event to an endpoint.
pub async fn send(client: &reqwest::Client, endpoint: &Endpoint, id: &str, body: &str, allow_private: bool) -> Attempt {
    if !allow_private && literal_ip(&endpoint.url).is_some_and(|ip| !is_public(ip)) {
        return Attempt::Stop(REFUSED.into());
    }
    let timestamp = crate::timestamp::epoch_seconds();
    let result = client
        .post(endpoint.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(&endpoint.keys, id, timestamp, body))
        .body(body.to_string())
        .send()
        .await;
    match result {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Attempt::Delivered(status.as_u16())
            } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                Attempt::Retry(format!("HTTP {status}"))
            } else {
                Attempt::Stop(format!("HTTP {status}"))
            }
        }
        Err(e) => {
            // Without the URL: it may hold a token, and the error is logged and stored.
            let e = e.without_url();
            let text = error_chain(&e);
            if text.contains(REFUSED) {
                Attempt::Stop(REFUSED.into())
            } else if e.is_timeout() {
                Attempt::Retry("timed out".into())
            } else {
                Attempt::Retry(text)
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn now_ms() -> i64 {
    crate::timestamp::now_micros() / 1000
}

/// Sends what the outbox holds, in this process, beside any other instance doing the same.
pub struct Deliverer {
    store: Arc<dyn ConversationStore>,
    endpoints: Arc<Vec<Endpoint>>,
    schedule: Vec<Duration>,
    wake: Arc<Notify>,
    client: reqwest::Client,
    allow_private: bool,
    /// Names this deliverer's claims.
    owner: String,
}

impl Deliverer {
    pub(super) fn new(
        store: Arc<dyn ConversationStore>,
        endpoints: Arc<Vec<Endpoint>>,
        schedule: Vec<Duration>,
        wake: Arc<Notify>,
        allow_private: bool,
    ) -> Self {
        Deliverer {
            store,
            endpoints,
            schedule,
            wake,
            client: client(allow_private),
            allow_private,
            owner: crate::random::uuid().simple().to_string(),
        }
    }

    /// Runs until the process ends: a round whenever an event is recorded here, and every second.
    pub async fn run(self) {
        loop {
            let claimed = self.round().await;
            if claimed == BATCH {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// One round: the due deliveries, sent at once; how many were read.
    pub async fn round(&self) -> usize {
        let due = match self.store.pending_deliveries(Some(now_ms()), BATCH, OutboxPart::Webhooks).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "reading the webhook outbox failed");
                return 0;
            }
        };
        let count = due.len();
        futures::stream::iter(due).for_each_concurrent(CONCURRENCY, |d| self.deliver(d)).await;
        count
    }

    /// The wait before attempt `failed + 1`, with ±20 % jitter.
    fn backoff(&self, failed: u32) -> Duration {
        let base = self.schedule[(failed as usize).saturating_sub(1).min(self.schedule.len() - 1)];
        let random = crate::random::fraction();
        base.mul_f64(0.8 + 0.4 * random)
    }

    async fn deliver(&self, d: Delivery) {
        let now = now_ms();
        match self.store.claim_delivery(&d, &self.owner, now, now + LEASE_MS).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, event = %d.event_id, "claiming a webhook delivery failed");
                return;
            }
        }
        let Some(endpoint) = self.endpoints.iter().find(|e| e.id == d.endpoint) else {
            // Owed to an endpoint only another instance has (a rolling deploy), or one removed since:
            // left for a minute, for an instance that has it, and given up after a day.
            let step = if now + 60_000 > d.first_at + GIVE_UP_AFTER_MS {
                DeliveryStep::Finished
            } else {
                DeliveryStep::Retry {
                    attempts: d.attempts,
                    next_at: now + 60_000,
                    error: format!("endpoint {} is not configured on this instance", d.endpoint),
                }
            };
            let _ = self.store.settle_delivery(&d, &self.owner, step).await;
            return;
        };
        let attempt = send(&self.client, endpoint, &d.event_id, &d.body, self.allow_private).await;
        let outcome = |o: &'static str| {
            metrics::counter!("webhook_deliveries_total", "endpoint" => d.endpoint.clone(), "outcome" => o).increment(1)
        };
        let step = match attempt {
            Attempt::Delivered(_) => {
                outcome("delivered");
                let lag = (now_ms() - d.first_at).max(0) as f64 / 1000.0;
                metrics::histogram!("webhook_delivery_lag_seconds", "endpoint" => d.endpoint.clone()).record(lag);
                DeliveryStep::Finished
            }
            Attempt::Retry(error) => {
                let attempts = d.attempts + 1;
                let next_at = now_ms() + self.backoff(attempts).as_millis() as i64;
                if next_at > d.first_at + GIVE_UP_AFTER_MS {
                    outcome("expired");
                    tracing::warn!(event = %d.event_id, endpoint = %d.endpoint, %error, attempts, "webhook delivery given up after 24 hours");
                    DeliveryStep::Finished
                } else {
                    outcome("retried");
                    tracing::info!(event = %d.event_id, endpoint = %d.endpoint, %error, attempts, "webhook delivery failed; will retry");
                    DeliveryStep::Retry { attempts, next_at, error }
                }
            }
            Attempt::Stop(error) => {
                outcome("failed");
                tracing::warn!(event = %d.event_id, endpoint = %d.endpoint, %error, "webhook delivery refused; not retried");
                DeliveryStep::Finished
            }
        };
        if let Err(e) = self.store.settle_delivery(&d, &self.owner, step).await {
            tracing::warn!(error = %e, event = %d.event_id, "recording a webhook attempt failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
