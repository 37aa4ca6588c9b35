//! The bodies of the command-line commands; `main.rs` parses the arguments and dispatches here.

pub mod agents;
pub mod backup;
pub mod keys;
pub mod search;
pub mod tables;
pub mod transfer;
pub mod webhooks;

use std::process::ExitCode;

use agent_server::config::Config;

/// Prints `agent-server: <message>` to standard error; the command exits with status 1.
pub fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("agent-server: {message}");
    ExitCode::FAILURE
}

/// `serve`: runs the HTTP API until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> ExitCode {
    init_logging();
    match agent_server::startup::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Logs to stdout: `LOG_FORMAT=json` for JSON lines, otherwise human-readable; `RUST_LOG` filters.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).init();
    }
}
