//! `keys`: API keys for `AUTH_MODE=api-key`, kept in `API_KEYS_FILE`.

use std::process::ExitCode;

use clap::Subcommand;

use agent_server::auth::api_keys;
use agent_server::config::Config;

use super::fail;

#[derive(Subcommand)]
pub enum KeysCommand {
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

pub fn run(config: &Config, command: KeysCommand) -> ExitCode {
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
