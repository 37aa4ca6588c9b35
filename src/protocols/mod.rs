//! Client protocols: adapters that speak other servers' APIs over the same turns.

pub mod openai;
pub mod ui_chat;
