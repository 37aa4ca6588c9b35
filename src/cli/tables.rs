//! `tables`: create, verify and describe the DynamoDB tables, and turn TTL on.

use std::process::ExitCode;

use clap::Subcommand;

use agent_server::config::Config;
use agent_server::store::dynamodb::tables;

use super::fail;

#[derive(Subcommand)]
pub enum TablesCommand {
    /// Create both tables with the schema of the original server's DynamoDB guide and wait until ACTIVE (needs dynamodb:CreateTable, dynamodb:DescribeTable).
    Create,
    /// Compare the live tables with the schema of the original server's DynamoDB guide; exit 1 on any difference (needs dynamodb:DescribeTable).
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
pub enum TtlCommand {
    /// Turn TTL on for `expiresAt` on both tables (dynamodb:UpdateTimeToLive).
    Enable,
}

pub async fn run(config: &Config, command: TablesCommand) -> ExitCode {
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
                // TTL removes expired messages (MESSAGE_TTL_DAYS) and expired change events.
                if (config.retention.0.is_some() || config.events.enabled)
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
                        if (config.retention.0.is_some() || config.events.enabled) && !on {
                            differences += 1;
                            println!(
                                "difference: {}: MESSAGE_TTL_DAYS is set or events are on, but TTL is not enabled on {} (run `agent-server tables ttl enable`)",
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

async fn enable_ttl(client: &aws_sdk_dynamodb::Client, spec: &tables::TableSpec) -> Result<(), tables::ProvisionError> {
    if tables::enable_ttl(client, &spec.name).await? {
        println!("table {}: TTL enabled on {}", spec.name, tables::TTL_ATTRIBUTE);
    } else {
        println!("table {}: TTL already enabled on {}", spec.name, tables::TTL_ATTRIBUTE);
    }
    Ok(())
}
