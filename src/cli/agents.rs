//! `agents`: a tenant's agents from the command line, with the HTTP API's rules (validation, the
//! write-only key, versions, one default, change events).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use agent_server::agents::manage::{self, ManageError};
use agent_server::agents::{AgentSpec, Capabilities};
use agent_server::config::Config;
use agent_server::ids::{AgentId, TenantId};

use super::fail;

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Create or replace an agent from a YAML or JSON file (the body of `PUT .../agents/{agentId}`).
    Put {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// The tenant's agents: id, version, default, name.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// One agent as JSON (without its key).
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Delete an agent (its sessions keep their messages).
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
}

fn ids(tenant: &str, id: Option<&str>) -> Result<(TenantId, Option<AgentId>), String> {
    let tenant = TenantId::parse(tenant).map_err(|e| format!("--tenant: {e}"))?;
    let id = id.map(AgentId::parse).transpose().map_err(|e| format!("--id: {e}"))?;
    Ok((tenant, id))
}

pub async fn run(config: &Config, command: AgentsCommand) -> ExitCode {
    match execute(config, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn execute(config: &Config, command: AgentsCommand) -> Result<(), String> {
    let store = agent_server::store::open(&config.storage, config.retention).await.map_err(|e| e.to_string())?;
    let endpoints = agent_server::events::endpoints::load(&config.events)?;
    let events = agent_server::events::Events::new(store.clone(), endpoints, &config.events);
    match command {
        AgentsCommand::Put { tenant, id, file } => {
            let (tenant, id) = ids(&tenant, Some(&id))?;
            let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            // YAML is a superset of JSON: one parser reads both.
            let spec: AgentSpec = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let can = Capabilities::of(&config.provider, agent_server::config::allow_private_urls());
            let id = id.expect("--id is required");
            let put = manage::put(&*store, &can, &tenant, &id, spec).await.map_err(|e| match e {
                ManageError::Invalid(f) => format!("{}: {}: {}", file.display(), f.field, f.message),
                ManageError::Conflict(m) => m,
                ManageError::Store(e) => e.to_string(),
            })?;
            events.record(&tenant, put.changes()).await;
            let verb = if put.created { "created" } else { "replaced" };
            println!("{verb} agent {id} of {tenant} (version {})", put.agent.version);
        }
        AgentsCommand::List { tenant } => {
            let (tenant, _) = ids(&tenant, None)?;
            for a in store.list_agents(&tenant).await.map_err(|e| e.to_string())? {
                let default = if a.spec.default { "default" } else { "-" };
                println!("{}\tv{}\t{default}\t{}", a.id, a.version, a.spec.name.as_deref().unwrap_or(""));
            }
        }
        AgentsCommand::Show { tenant, id } => {
            let (tenant, id) = ids(&tenant, Some(&id))?;
            let id = id.expect("--id is required");
            let agent = store.get_agent(&tenant, &id).await.map_err(|e| e.to_string())?;
            let agent = agent.ok_or_else(|| format!("{tenant} has no agent {id}"))?;
            println!("{}", serde_json::to_string_pretty(&agent.view()).unwrap_or_default());
        }
        AgentsCommand::Delete { tenant, id } => {
            let (tenant, id) = ids(&tenant, Some(&id))?;
            let id = id.expect("--id is required");
            if !manage::delete(&*store, &tenant, &id).await.map_err(|e| e.to_string())? {
                return Err(format!("{tenant} has no agent {id}"));
            }
            events.record(&tenant, vec![manage::deleted(&id)]).await;
            println!("deleted agent {id} of {tenant}");
        }
    }
    Ok(())
}
