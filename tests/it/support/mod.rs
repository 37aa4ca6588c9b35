//! What the integration tests share.
//!
//! - [`server`]: the real `agent-server` binary, as a server on port 0 ([`TestServer`]) or a CLI
//!   run ([`cli`]), and the app in-process ([`in_process_app`]);
//! - [`client`]: one client API: a turn, a generic request, Link headers, the JSON error shape,
//!   server-sent events;
//! - [`stores`]: real stores on SQLite and on the DynamoDB emulator, and the macros that run a test
//!   on both backends;
//! - [`openai_mock`]: a local OpenAI-compatible Chat Completions server;
//! - [`webhooks`]: a webhook receiver, and signature checks with the `standardwebhooks` package;
//! - [`providers`]: fakes of the channels' provider APIs, and the providers' signatures.

#[macro_use]
pub mod stores;
pub mod client;
pub mod openai_mock;
pub mod providers;
pub mod server;
pub mod webhooks;

pub use client::*;
pub use server::*;
pub use stores::*;
