//! `webhooks`: send a signed test event, list what waits for delivery, make a secret.

use std::process::ExitCode;

use clap::Subcommand;

use agent_server::config::Config;
use agent_server::events::delivery::{self, Attempt};
use agent_server::events::endpoints::{self, Endpoint};
use agent_server::events::new_event_id;
use agent_server::events::signature::SigningKey;

use super::fail;

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Send a signed `webhook.test` event to every configured endpoint, or to --url (signed with
    /// WEBHOOK_SECRET); exits 1 when one does not acknowledge it.
    Test {
        #[arg(long)]
        url: Option<String>,
    },
    /// List the deliveries waiting in the outbox (event, endpoint, attempts, next attempt, last error).
    Pending {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print a new random secret in the Standard Webhooks form (whsec_...).
    NewSecret,
}

pub async fn run(config: &Config, command: WebhooksCommand) -> ExitCode {
    match command {
        WebhooksCommand::Test { url } => test(config, url).await,
        WebhooksCommand::Pending { limit } => pending(config, limit).await,
        WebhooksCommand::NewSecret => {
            println!("{}", SigningKey::generate());
            ExitCode::SUCCESS
        }
    }
}

async fn test(config: &Config, url: Option<String>) -> ExitCode {
    let mut events = config.events.clone();
    if let Some(url) = url {
        if events.webhook_secret.is_none() {
            return fail("--url needs WEBHOOK_SECRET to sign the test event");
        }
        events.webhook_url = Some(url);
        events.webhooks_file = None;
    }
    let targets: Vec<Endpoint> = match endpoints::load(&events) {
        Ok(list) if list.is_empty() => {
            return fail("no webhook is configured (WEBHOOK_URL or WEBHOOKS_FILE), and no --url");
        }
        Ok(list) => list,
        Err(e) => return fail(e),
    };
    let client = delivery::client(events.allow_private);
    let mut failed = false;
    for endpoint in &targets {
        let id = new_event_id();
        let body = serde_json::json!({
            "id": id,
            "type": "webhook.test",
            "timestamp": agent_server::timestamp::Timestamp::now(),
            "tenantId": null,
            "data": {"message": "a test event from agent-server webhooks test"},
        })
        .to_string();
        match delivery::send(&client, endpoint, &id, &body, events.allow_private).await {
            Attempt::Delivered(status) => println!(
                "{} {}: delivered {id} (HTTP {status})",
                endpoint.id,
                agent_server::redact::url(endpoint.url.as_str())
            ),
            Attempt::Retry(why) | Attempt::Stop(why) => {
                failed = true;
                println!("{} {}: not delivered: {why}", endpoint.id, agent_server::redact::url(endpoint.url.as_str()));
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

async fn pending(config: &Config, limit: usize) -> ExitCode {
    let store = match agent_server::store::open(&config.storage, config.retention).await {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let waiting = match store.pending_deliveries(None, limit, agent_server::store::OutboxPart::Webhooks).await {
        Ok(list) => list,
        Err(e) => return fail(e),
    };
    if waiting.is_empty() {
        println!("nothing waits for delivery");
        return ExitCode::SUCCESS;
    }
    println!("EVENT\tTYPE\tTENANT\tENDPOINT\tATTEMPTS\tNEXT ATTEMPT\tLAST ERROR");
    for d in waiting {
        let next = chrono::DateTime::from_timestamp_millis(d.next_at)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            d.event_id,
            d.kind,
            d.tenant_id,
            d.endpoint,
            d.attempts,
            next,
            d.last_error.unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}
