//! `backup`: point-in-time recovery, on-demand backups, restores and replicas of the DynamoDB
//! tables, or a consistent copy of the SQLite file.

use std::process::ExitCode;

use clap::Subcommand;

use agent_server::config::{Config, StorageConfig};
use agent_server::store::dynamodb::backup;

use super::fail;

#[derive(Subcommand)]
pub enum BackupCommand {
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

pub async fn run(config: &Config, command: BackupCommand) -> ExitCode {
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
