//! `search`: rebuild SQLite's full-text index.

use std::process::ExitCode;

use clap::Subcommand;

use agent_server::config::{Config, StorageConfig};
use agent_server::store::sqlite::SqliteStore;

use super::fail;

#[derive(Subcommand)]
pub enum SearchCommand {
    /// Rebuild SQLite's full-text index from the messages (the schema migration builds it once; this
    /// is for a database copied or restored by other means). DynamoDB has no index to rebuild.
    Reindex,
}

pub async fn run(config: &Config, command: SearchCommand) -> ExitCode {
    match command {
        SearchCommand::Reindex => {
            let StorageConfig::Sqlite { path } = &config.storage else {
                println!("DynamoDB is searched by a bounded scan: there is no index to rebuild (see docs/search.md)");
                return ExitCode::SUCCESS;
            };
            let store = match SqliteStore::open(path.clone()) {
                Ok(store) => store,
                Err(e) => return fail(e),
            };
            let started = std::time::Instant::now();
            match store.reindex().await {
                Ok(()) => {
                    println!(
                        "rebuilt the search index of {} in {:.1} s",
                        path.display(),
                        started.elapsed().as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}
