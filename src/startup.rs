//! Wiring the application: the store and its upkeep, the model provider, the tools, the agent,
//! and the HTTP state and limits; `http::server` then runs the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentSettings};
use crate::auth::Authenticator;
use crate::config::{AuthConfig, Config};
use crate::http::server::{self, Timeouts};
use crate::http::{self, AppState, Limits, TenantRateLimit};
use crate::llm::Provider;
use crate::tools::{McpServers, Toolbox};

/// Starts the server and runs it until SIGINT or SIGTERM, then lets running requests and streams
/// finish within `SHUTDOWN_GRACE_SECONDS`.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = crate::telemetry::install()?;
    // The random generator seeds itself on first use (aws-lc's jitter entropy: about 400 million
    // instructions, a tenth of a second or more): here, not in the first turn or TLS handshake.
    tokio::task::spawn_blocking(crate::random::bytes::<1>).await?;
    let store = crate::store::open(&config.storage, config.retention).await?;
    // Expired messages (with MESSAGE_TTL_DAYS) and turn records past TURN_EVENTS_TTL_HOURS.
    {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                match store.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "deleted expired sessions and messages"),
                    Err(e) => tracing::warn!(error = %e, "purging expired items failed"),
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            give_memory_back();
        }
    });
    let provider = Provider::from_config(&config.provider, config.llm_timeout).await;
    let settings = AgentSettings {
        system_prompt: config.system_prompt.clone(),
        history_max_messages: config.history_max_messages,
        session_idle: config.session_idle,
        llm_timeout: config.llm_timeout,
        turn_events_ttl: config.turn_events_ttl,
        summary_trigger_tokens: config.summary.trigger_tokens,
        summary_keep_messages: config.summary.keep_messages,
        turn_concurrency: config.turn_concurrency,
        erasure_sweep_delay: config.erasure_sweep_delay.unwrap_or(
            config.llm_timeout * (config.tools.max_steps as u32 + 2)
                + config.tools.timeout * config.tools.max_steps as u32
                + Duration::from_secs(30),
        ),
    };
    let storage = store.describe();
    let rate_limit = config.rate_limit_per_minute.and_then(TenantRateLimit::per_minute);
    if let Some(limit) = rate_limit.clone() {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                limit.forget_idle();
            }
        });
    }
    if let AuthConfig::None { exposed: true } = config.auth {
        tracing::warn!(
            "AUTH_MODE=none on {}: every request is trusted with the tenant it names; only run this behind a trusted gateway",
            config.host
        );
    }
    let mut tools = Toolbox::from_config(&config.tools)?;
    if !config.tools.mcp_servers.is_empty() {
        tools = tools.with_mcp(McpServers::connect(&config.tools.mcp_servers).await);
    }
    let endpoints = crate::events::endpoints::load(&config.events).map_err(anyhow::Error::msg)?;
    let events = crate::events::Events::new(store.clone(), endpoints, &config.events);
    if let Some(deliverer) = events.deliverer(&config.events) {
        tracing::info!(endpoints = events.endpoints().len(), "delivering change events to webhooks");
        tokio::spawn(deliverer.run());
    }
    let file_tools = match &config.tools.tools_file {
        Some(path) => crate::tools::read_tools_file(path).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let mut agent = Agent::with_tools(store, provider, settings, tools)
        .with_server_config(
            config.provider.clone(),
            config.tools.clone(),
            file_tools,
            crate::config::allow_private_urls(),
        )
        .with_events(events)
        .with_usage(config.prices.clone(), config.usage);
    if let Some(model) = &config.summary.model {
        agent =
            agent.with_summarizer(Provider::from_config(&config.provider.with_model(model), config.llm_timeout).await);
    }
    let agent = Arc::new(agent);
    // Turns whose server died (this one before a restart, or a peer) are settled without a reader;
    // every server's pending erasures are known here, and their second passes run.
    tokio::spawn(agent.clone().run_upkeep());
    let channels = crate::channels::worker::Channels::new(agent.clone(), config.channels.clone());
    agent.set_channels(&channels);
    tokio::spawn(channels.clone().run());
    let state = AppState {
        channels,
        store: agent.store().clone(),
        agent: agent.clone(),
        auth: Arc::new(Authenticator::from_config(&config.auth)),
        rate_limit,
        metrics_open: config.host.is_loopback(),
        metrics: Some(metrics),
        max_message_chars: config.max_message_chars,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_streams)),
        search: config.search,
        console: config.console,
    };
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
        max_concurrent_requests: config.max_concurrent_requests,
        request_queue_timeout: config.request_queue_timeout,
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.host, config.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "agent-server listening on http://{addr} (storage: {storage}; model provider: {}; auth: {})",
        config.provider.name(),
        config.auth.name(),
    );
    let timeouts = Timeouts { header_read: config.header_read_timeout, shutdown_grace: config.shutdown_grace };
    server::run(listener, http::app(state, limits), &agent, timeouts).await;
    Ok(())
}

/// Returns the allocator's free memory to the system (after a burst of turns, glibc keeps it in its
/// arenas, and the process's RSS would stay at its peak).
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
