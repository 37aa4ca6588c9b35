//! agent-server: a multi-tenant AI agent conversation server on DynamoDB or embedded SQLite.

pub mod agent;
pub mod agents;
pub mod auth;
pub mod channels;
pub mod config;
pub mod events;
pub mod http;
pub mod ids;
pub mod llm;
pub mod outbound;
pub mod portability;
pub mod private_file;
pub mod protocols;
pub mod random;
pub mod redact;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod timestamp;
pub mod tools;
pub mod usage;
