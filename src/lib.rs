//! agent-server: a multi-tenant AI agent conversation server on DynamoDB or embedded SQLite.

pub mod agent;
pub mod auth;
pub mod backup;
pub mod config;
pub mod http;
pub mod ids;
pub mod llm;
pub mod portability;
pub mod startup;
pub mod store;
pub mod tables;
pub mod telemetry;
pub mod timestamp;
pub mod tools;

use std::sync::Arc;

use config::StorageConfig;
use store::{ConversationStore, Retention, StoreError, dynamodb::DynamoStore, sqlite::SqliteStore};

/// The AWS SDK configuration from the standard chain: environment, profiles, SSO, instance and
/// task roles; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_DYNAMODB` point it at an emulator.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A DynamoDB client from the standard AWS configuration, counting its calls for `/metrics`.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let config =
        aws_sdk_dynamodb::config::Builder::from(&aws_config().await).interceptor(telemetry::DynamoDbCalls).build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Opens the configured store.
pub async fn open_store(
    storage: &StorageConfig,
    retention: Retention,
) -> Result<Arc<dyn ConversationStore>, StoreError> {
    Ok(match storage {
        StorageConfig::Sqlite { path } => Arc::new(SqliteStore::open(path.clone())?.with_retention(retention)),
        StorageConfig::DynamoDb { sessions_table, messages_table } => Arc::new(
            DynamoStore::new(dynamodb_client().await, sessions_table, messages_table).with_retention(retention),
        ),
    })
}
