use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agent_server::config::Config;
use agent_server::tables;

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
    /// Manage the DynamoDB tables (uses DYNAMODB_SESSIONS_TABLE / DYNAMODB_MESSAGES_TABLE).
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
}

#[derive(Subcommand)]
enum TablesCommand {
    /// Create both tables with the seed's schema and wait until ACTIVE (needs dynamodb:CreateTable, dynamodb:DescribeTable).
    Create,
    /// Compare the live tables with the seed's schema; exit 1 on any difference (needs dynamodb:DescribeTable).
    Verify,
    /// Print a CloudFormation template for the tables.
    Cloudformation,
    /// Print the least-privilege IAM policy that `serve` needs.
    IamPolicy,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("agent-server: {message}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cli.command {
        Command::Serve => {
            init_logging();
            match agent_server::http::serve(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Tables { command } => run_tables(&config, command).await,
    }
}

/// Logs to stdout: `LOG_FORMAT=json` for JSON lines, otherwise human-readable; `RUST_LOG` filters.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
    }
}

async fn run_tables(config: &Config, command: TablesCommand) -> ExitCode {
    let specs = tables::specs(&config.sessions_table, &config.messages_table);
    match command {
        TablesCommand::Cloudformation => {
            print!("{}", tables::cloudformation(&specs));
            ExitCode::SUCCESS
        }
        TablesCommand::IamPolicy => {
            println!("{:#}", tables::iam_policy(&specs));
            ExitCode::SUCCESS
        }
        TablesCommand::Create => {
            let client = agent_server::dynamodb_client().await;
            for spec in &specs {
                match tables::create(&client, spec).await {
                    Ok(true) => println!("created table {} (ACTIVE)", spec.name),
                    Ok(false) => {
                        println!("table {} already exists with the expected shape", spec.name)
                    }
                    Err(e) => return fail(e),
                }
            }
            ExitCode::SUCCESS
        }
        TablesCommand::Verify => {
            let client = agent_server::dynamodb_client().await;
            let mut differences = 0;
            for spec in &specs {
                match tables::verify(&client, spec).await {
                    Ok(diffs) if diffs.is_empty() => println!("table {}: ok", spec.name),
                    Ok(diffs) => {
                        differences += diffs.len();
                        for d in diffs {
                            println!("difference: {d}");
                        }
                    }
                    Err(e) => return fail(e),
                }
            }
            if differences == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
