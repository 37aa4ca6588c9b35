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
    /// Manage API keys for AUTH_MODE=api-key (in API_KEYS_FILE; the server picks up changes).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the DynamoDB tables (uses DYNAMODB_SESSIONS_TABLE / DYNAMODB_MESSAGES_TABLE).
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it once (the last line of output is the key alone).
    Create {
        /// The tenant the key may act for.
        #[arg(long, required_unless_present = "admin")]
        tenant: Option<String>,
        /// A name to recognise the key by.
        #[arg(long)]
        name: Option<String>,
        /// An admin key acts for every tenant and may read /metrics.
        #[arg(long)]
        admin: bool,
    },
    /// List keys (ids, names, tenants; never secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
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
        Command::Keys { command } => run_keys(&config, command),
    }
}

fn run_keys(config: &Config, command: KeysCommand) -> ExitCode {
    use agent_server::auth::api_keys;
    let path = &config.api_keys_file;
    match command {
        KeysCommand::Create { tenant, name, admin } => {
            let tenant = match tenant.map(agent_server::ids::TenantId::parse).transpose() {
                Ok(t) => t,
                Err(e) => return fail(format!("--tenant: {e}")),
            };
            match api_keys::create(path, tenant.as_ref(), name, admin) {
                Ok((secret, record)) => {
                    let scope = if admin {
                        "all tenants (admin)".to_string()
                    } else {
                        format!("tenant {}", record.tenant.unwrap_or_default())
                    };
                    println!("created key {} for {scope} in {}", record.id, path.display());
                    println!("store it now: it is not shown again");
                    println!("{secret}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("cannot write {}: {e}", path.display())),
            }
        }
        KeysCommand::List => match api_keys::list(path) {
            Ok(keys) => {
                println!("{:<18} {:<24} {:<24} created", "id", "name", "tenant");
                for k in keys {
                    let tenant = if k.admin { "(admin: all)".to_string() } else { k.tenant.unwrap_or_default() };
                    println!("{:<18} {:<24} {:<24} {}", k.id, k.name.unwrap_or_default(), tenant, k.created_at);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("cannot read {}: {e}", path.display())),
        },
        KeysCommand::Revoke { id } => match api_keys::revoke(path, &id) {
            Ok(true) => {
                println!("revoked key {id}");
                ExitCode::SUCCESS
            }
            Ok(false) => fail(format!("no key with id {id}")),
            Err(e) => fail(format!("cannot write {}: {e}", path.display())),
        },
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
            if differences == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}
