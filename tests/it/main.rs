//! The integration tests, in one binary: one module per area, and `support` for what they share
//! (the real server and CLI, the HTTP client helpers, the stores on both backends, the OpenAI mock).
//!
//! Tests needing DynamoDB use the emulator at `AGENT_SERVER_TEST_DYNAMODB`, which
//! `scripts/test.sh` starts.

#[macro_use]
mod support;

mod agents;
mod api;
mod bedrock;
mod channels;
mod concurrency;
mod console;
mod contract;
mod erasure;
mod errors;
mod events;
mod isolation;
mod mcp;
mod openai;
mod openai_compat;
mod openapi;
mod operations;
mod orphans;
mod properties;
mod queue;
mod search;
mod security;
mod sqlite_durability;
mod store;
mod summaries;
mod tables;
mod tools;
mod turns;
mod ui_chat;
mod usage;
