mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agent_server::config::Config;

/// A multi-tenant AI agent conversation server on DynamoDB or an embedded SQLite store.
#[derive(Parser)]
#[command(name = "agent-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (HOST, PORT; storage and model provider from the environment).
    Serve,
    /// Manage API keys for AUTH_MODE=api-key (in API_KEYS_FILE; the server picks up changes).
    Keys {
        #[command(subcommand)]
        command: cli::keys::KeysCommand,
    },
    /// Manage the DynamoDB tables (uses DYNAMODB_SESSIONS_TABLE / DYNAMODB_MESSAGES_TABLE).
    Tables {
        #[command(subcommand)]
        command: cli::tables::TablesCommand,
    },
    /// Back up and restore the configured store.
    Backup {
        #[command(subcommand)]
        command: cli::backup::BackupCommand,
    },
    /// Search: rebuild SQLite's full-text index.
    Search {
        #[command(subcommand)]
        command: cli::search::SearchCommand,
    },
    /// Webhooks of change events: send a signed test event, list pending deliveries, make a secret.
    Webhooks {
        #[command(subcommand)]
        command: cli::webhooks::WebhooksCommand,
    },
    /// Manage a tenant's agents (as the HTTP API does): put from a YAML or JSON file, list, show, delete.
    Agents {
        #[command(subcommand)]
        command: cli::agents::AgentsCommand,
    },
    /// Write sessions and messages as JSON Lines (gzip when FILE ends in .gz).
    Export {
        /// Only this tenant's conversations.
        #[arg(long)]
        tenant: Option<String>,
        /// The file to write (standard output when left out).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Include the agents' business API keys (left out by default).
        #[arg(long)]
        include_secrets: bool,
    },
    /// Load a JSON Lines export into the configured store; items already stored are skipped.
    Import { file: std::path::PathBuf },
}

fn main() -> ExitCode {
    // SQLite calls run on the blocking pool behind one writer lock: a small pool is enough, and
    // keeps memory flat when many requests wait at once (Tokio's default allows 512 threads).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
        .expect("the Tokio runtime starts");
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => return cli::fail(e),
    };
    match cli.command {
        Command::Serve => cli::serve(config).await,
        Command::Tables { command } => cli::tables::run(&config, command).await,
        Command::Keys { command } => cli::keys::run(&config, command),
        Command::Backup { command } => cli::backup::run(&config, command).await,
        Command::Search { command } => cli::search::run(&config, command).await,
        Command::Webhooks { command } => cli::webhooks::run(&config, command).await,
        Command::Export { tenant, out, include_secrets } => {
            cli::transfer::export(&config, tenant, out, include_secrets).await
        }
        Command::Agents { command } => cli::agents::run(&config, command).await,
        Command::Import { file } => cli::transfer::import(&config, file).await,
    }
}
