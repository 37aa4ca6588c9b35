use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agent_server::config::Config;
use agent_server::store::dynamodb::tables;

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
    /// Back up and restore the configured store.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Write sessions and messages as JSON Lines (gzip when FILE ends in .gz).
    Export {
        /// Only this tenant's conversations.
        #[arg(long)]
        tenant: Option<String>,
        /// The file to write (standard output when left out).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Load a JSON Lines export into the configured store; items already stored are skipped.
    Import { file: std::path::PathBuf },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Turn on point-in-time recovery for both tables (dynamodb:UpdateContinuousBackups).
    EnablePitr,
    /// Show point-in-time recovery for both tables (dynamodb:DescribeContinuousBackups).
    Status,
    /// DynamoDB: an on-demand backup of both tables (dynamodb:CreateBackup). SQLite: a consistent copy to --out.
    Create {
        #[arg(long)]
        name: Option<String>,
        /// SQLite only: the file to write.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// List the on-demand backups of both tables (dynamodb:ListBackups).
    List,
    /// Restore into new tables named <table><suffix>, from backups or to a point in time.
    Restore {
        /// Backup ARNs (one per table) from `backup list`.
        #[arg(long = "backup", required_unless_present = "to_time", conflicts_with = "to_time")]
        backups: Vec<String>,
        /// An RFC 3339 time to restore both tables to, or `latest` (needs point-in-time recovery).
        #[arg(long)]
        to_time: Option<String>,
        /// Appended to each table name, for example `-restored`.
        #[arg(long, allow_hyphen_values = true)]
        suffix: String,
    },
    /// Add a replica of both tables in another region (global tables; dynamodb:UpdateTable).
    Replicate {
        #[arg(long)]
        region: String,
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
    /// DynamoDB TTL on the `expiresAt` attribute.
    Ttl {
        #[command(subcommand)]
        command: TtlCommand,
    },
}

#[derive(Subcommand)]
enum TtlCommand {
    /// Turn TTL on for `expiresAt` on both tables (dynamodb:UpdateTimeToLive).
    Enable,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("agent-server: {message}");
    ExitCode::FAILURE
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
        Command::Backup { command } => run_backup(&config, command).await,
        Command::Export { tenant, out } => run_export(&config, tenant, out).await,
        Command::Import { file } => run_import(&config, file).await,
    }
}

async fn run_backup(config: &Config, command: BackupCommand) -> ExitCode {
    use agent_server::config::StorageConfig;
    use agent_server::store::dynamodb::backup;
    if let StorageConfig::Sqlite { path } = &config.storage {
        return match command {
            BackupCommand::Create { out: Some(out), .. } => {
                let store = match agent_server::store::sqlite::SqliteStore::open(path.clone()) {
                    Ok(s) => s,
                    Err(e) => return fail(e),
                };
                match store.backup_to(out.clone()).await {
                    Ok(()) => {
                        println!(
                            "copied {} to {} (restore: stop the server and copy it back)",
                            path.display(),
                            out.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
            BackupCommand::Create { out: None, .. } => fail("with SQLite storage, `backup create` needs --out FILE"),
            _ => fail(
                "this backup command is for DynamoDB storage (STORAGE=dynamodb); for SQLite use `backup create --out FILE`",
            ),
        };
    }
    let client = agent_server::store::dynamodb::client().await;
    let tables = [config.sessions_table.as_str(), config.messages_table.as_str()];
    let result: Result<(), backup::BackupError> = async {
        match command {
            BackupCommand::EnablePitr => {
                for t in tables {
                    backup::enable_pitr(&client, t).await?;
                    println!("table {t}: point-in-time recovery enabled");
                }
            }
            BackupCommand::Status => {
                for t in tables {
                    println!("{}", backup::status(&client, t).await?);
                }
            }
            BackupCommand::Create { name, .. } => {
                let name =
                    name.unwrap_or_else(|| format!("agent-server-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
                for t in tables {
                    let arn = backup::create(&client, t, &format!("{name}-{t}")).await?;
                    println!("table {t}: backup {arn}");
                }
            }
            BackupCommand::List => {
                for t in tables {
                    for (arn, name, created, status) in backup::list(&client, t).await? {
                        println!("{t}\t{name}\t{created}\t{status}\t{arn}");
                    }
                }
            }
            BackupCommand::Restore { backups, to_time, suffix } => {
                let mut restored = Vec::new();
                if let Some(time) = to_time {
                    let time = match time.as_str() {
                        "latest" => None,
                        t => Some(
                            agent_server::timestamp::parse_micros(t)
                                .map(|m| aws_sdk_dynamodb::primitives::DateTime::from_secs(m.div_euclid(1_000_000)))
                                .ok_or_else(|| {
                                    backup::BackupError(format!("--to-time {t:?} is not an RFC 3339 time"))
                                })?,
                        ),
                    };
                    for t in tables {
                        let target = format!("{t}{suffix}");
                        backup::restore_to_time(&client, t, &target, time).await?;
                        println!("table {t}: restoring into {target}");
                        restored.push((t.to_string(), target));
                    }
                } else {
                    for arn in backups {
                        let source = backup::source_table(&client, &arn).await?;
                        let target = format!("{source}{suffix}");
                        backup::restore_backup(&client, &arn, &target).await?;
                        println!("table {source}: restoring {arn} into {target}");
                        restored.push((source, target));
                    }
                }
                println!("when the new tables are ACTIVE, point the server at them:");
                for (source, target) in restored {
                    let var = if source == config.sessions_table {
                        "DYNAMODB_SESSIONS_TABLE"
                    } else {
                        "DYNAMODB_MESSAGES_TABLE"
                    };
                    println!("{var}={target}");
                }
            }
            BackupCommand::Replicate { region } => {
                for t in tables {
                    backup::replicate(&client, t, &region).await?;
                    println!("table {t}: replica in {region} requested (streams on, global table version 2019.11.21)");
                }
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn run_export(config: &Config, tenant: Option<String>, out: Option<std::path::PathBuf>) -> ExitCode {
    use std::io::Write;
    let tenant = match tenant.map(agent_server::ids::TenantId::parse).transpose() {
        Ok(t) => t,
        Err(e) => return fail(format!("--tenant: {e}")),
    };
    let store = match agent_server::store::open(&config.storage, config.retention).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut writer: Box<dyn Write> = match &out {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(path) => match std::fs::File::create(path) {
            Ok(f) if path.extension().is_some_and(|e| e == "gz") => {
                Box::new(flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::default()))
            }
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("cannot create {}: {e}", path.display())),
        },
    };
    let bar = agent_server::portability::progress("exporting");
    let result = agent_server::portability::export(&*store, tenant.as_ref(), &mut writer, &bar).await;
    bar.finish_and_clear();
    drop(writer);
    match result {
        Ok(c) => {
            eprintln!("exported {} sessions and {} messages from {}", c.sessions, c.messages, store.describe());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn run_import(config: &Config, file: std::path::PathBuf) -> ExitCode {
    use std::io::BufRead;
    let store = match agent_server::store::open(&config.storage, config.retention).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open {}: {e}", file.display())),
    };
    let mut reader: Box<dyn BufRead> = if file.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let bar = agent_server::portability::progress("importing");
    let result = agent_server::portability::import(&*store, &mut reader, &bar).await;
    bar.finish_and_clear();
    match result {
        Ok(c) => {
            println!(
                "imported {} sessions and {} messages into {} ({} already stored)",
                c.sessions,
                c.messages,
                store.describe(),
                c.existing
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
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

async fn enable_ttl(client: &aws_sdk_dynamodb::Client, spec: &tables::TableSpec) -> Result<(), tables::ProvisionError> {
    if tables::enable_ttl(client, &spec.name).await? {
        println!("table {}: TTL enabled on {}", spec.name, tables::TTL_ATTRIBUTE);
    } else {
        println!("table {}: TTL already enabled on {}", spec.name, tables::TTL_ATTRIBUTE);
    }
    Ok(())
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
            let client = agent_server::store::dynamodb::client().await;
            for spec in &specs {
                match tables::create(&client, spec).await {
                    Ok(true) => println!("created table {} (ACTIVE)", spec.name),
                    Ok(false) => {
                        println!("table {} already exists with the expected shape", spec.name)
                    }
                    Err(e) => return fail(e),
                }
                if config.retention.0.is_some()
                    && let Err(e) = enable_ttl(&client, spec).await
                {
                    return fail(e);
                }
            }
            ExitCode::SUCCESS
        }
        TablesCommand::Ttl { command: TtlCommand::Enable } => {
            let client = agent_server::store::dynamodb::client().await;
            for spec in &specs {
                if let Err(e) = enable_ttl(&client, spec).await {
                    return fail(e);
                }
            }
            ExitCode::SUCCESS
        }
        TablesCommand::Verify => {
            let client = agent_server::store::dynamodb::client().await;
            let mut differences = 0;
            for spec in &specs {
                match tables::verify(&client, spec).await {
                    Ok(diffs) if diffs.is_empty() => {
                        println!("table {}: ok", spec.name);
                        let ttl = match tables::ttl_status(&client, &spec.name).await {
                            Ok(ttl) => ttl,
                            Err(e) => return fail(e),
                        };
                        let on = ttl.as_ref().is_some_and(|(s, a)| s == "ENABLED" && a == tables::TTL_ATTRIBUTE);
                        match &ttl {
                            Some((status, attr)) => println!("table {}: TTL {status} on {attr:?}", spec.name),
                            None => println!("table {}: TTL DISABLED", spec.name),
                        }
                        if config.retention.0.is_some() && !on {
                            differences += 1;
                            println!(
                                "difference: {}: MESSAGE_TTL_DAYS is set but TTL is not enabled on {} (run `agent-server tables ttl enable`)",
                                spec.name,
                                tables::TTL_ATTRIBUTE
                            );
                        }
                    }
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
