//! agent-server: a multi-tenant AI agent conversation server on DynamoDB or embedded SQLite.

pub mod agent;
pub mod auth;
pub mod config;
pub mod http;
pub mod ids;
pub mod llm;
pub mod store;
pub mod tables;
pub mod timestamp;

use std::sync::Arc;

use config::StorageConfig;
use store::{ConversationStore, StoreError, dynamodb::DynamoStore, sqlite::SqliteStore};

/// The AWS SDK configuration from the standard chain: environment, profiles, SSO, instance and
/// task roles; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_DYNAMODB` point it at an emulator.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A DynamoDB client from the standard AWS configuration.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&aws_config().await)
}

/// Opens the configured store.
pub async fn open_store(storage: &StorageConfig) -> Result<Arc<dyn ConversationStore>, StoreError> {
    Ok(match storage {
        StorageConfig::Sqlite { path } => Arc::new(SqliteStore::open(path.clone())?),
        StorageConfig::DynamoDb { sessions_table, messages_table } => {
            Arc::new(DynamoStore::new(dynamodb_client().await, sessions_table, messages_table))
        }
    })
}
