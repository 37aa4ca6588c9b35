//! What each tenant spends: every model call's tokens and cost, counted by tenant, user, agent,
//! model and UTC day; the price table that turns tokens into micro-dollars; and the budgets that
//! refuse a turn before it would start over them.
//!
//! - `prices`: the built-in table and `MODEL_PRICES_FILE`;
//! - `budgets`: a tenant's budgets, as the API takes them;
//! - `meter`: this process's counting: one write per turn (its user's day), the tenant's totals
//!   added once a second, and the cached totals a budget is checked against.

pub mod budgets;
pub mod meter;
pub mod prices;

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

pub use budgets::{Budget, BudgetExceeded};
pub use meter::Meter;
pub use prices::Prices;

/// What was counted: tokens, model calls, turns and their cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model_calls: u64,
    pub turns: u64,
    /// The cost in millionths of a US dollar, from the price table.
    pub cost_micros: u64,
    /// Tokens of models the price table does not know (counted at no cost).
    pub unpriced_tokens: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.model_calls += other.model_calls;
        self.turns += other.turns;
        self.cost_micros += other.cost_micros;
        self.unpriced_tokens += other.unpriced_tokens;
    }

    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// The fields by their stored names, for stores that keep one number per field.
    pub fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("inputTokens", self.input_tokens),
            ("outputTokens", self.output_tokens),
            ("modelCalls", self.model_calls),
            ("turns", self.turns),
            ("costMicros", self.cost_micros),
            ("unpricedTokens", self.unpriced_tokens),
        ]
    }

    /// Sets a field by its stored name (unknown names are ignored).
    pub fn set(&mut self, field: &str, value: u64) {
        match field {
            "inputTokens" => self.input_tokens = value,
            "outputTokens" => self.output_tokens = value,
            "modelCalls" => self.model_calls = value,
            "turns" => self.turns = value,
            "costMicros" => self.cost_micros = value,
            "unpricedTokens" => self.unpriced_tokens = value,
            _ => {}
        }
    }
}

/// One agent's and model's usage (agent `""`: the server's own agent from the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEntry {
    pub agent: String,
    pub model: String,
    pub counts: Counts,
}

/// The usage a reply accounts for, written with it: on SQLite in the reply's transaction, on
/// DynamoDB as an atomic `ADD` to its user's day beside the reply's write. Never serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub day: String,
    pub entries: Vec<UsageEntry>,
}

/// A stored row: one UTC day (`YYYY-MM-DD`), one user (none for a tenant's totals), one agent and
/// one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub day: String,
    pub user: Option<UserId>,
    pub entry: UsageEntry,
}

/// Today's UTC day, `YYYY-MM-DD`.
pub fn today() -> String {
    day_of(crate::timestamp::now_micros())
}

/// The UTC day of an epoch-microseconds time.
pub fn day_of(micros: i64) -> String {
    let t = Timestamp::from_micros(micros);
    t.as_str()[..10].to_string()
}

use crate::timestamp::Timestamp;
