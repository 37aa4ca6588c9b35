//! A tenant's budgets: a monthly one for the tenant and a daily one for each of its users, in
//! tokens, in US dollars or both; `warnAt` is the share at which `budget.warning` is sent.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Counts;

/// A limit in tokens, in US dollars, or both (whichever is reached first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl Limit {
    fn check(&self, field: &str) -> Result<(), String> {
        if self.tokens.is_none() && self.cost_usd.is_none() {
            return Err(format!("{field} needs tokens, costUsd or both"));
        }
        if self.tokens == Some(0) {
            return Err(format!("{field}.tokens must be at least 1"));
        }
        if self.cost_usd.is_some_and(|c| !c.is_finite() || c <= 0.0 || c > 1e9) {
            return Err(format!("{field}.costUsd must be a number above 0 (at most 1e9)"));
        }
        Ok(())
    }

    /// The share of the limit used (the larger of tokens and cost).
    pub fn share(&self, used: &Counts) -> f64 {
        let tokens = self.tokens.map_or(0.0, |t| used.tokens() as f64 / t as f64);
        let cost = self.cost_usd.map_or(0.0, |c| used.cost_micros as f64 / 1e6 / c);
        tokens.max(cost)
    }
}

/// A tenant's budgets, as `PUT /agent/budgets/{tenantId}` takes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// The tenant's limit per calendar month (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<Limit>,
    /// Each user's limit per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user_daily: Option<Limit>,
    /// The share of a limit at which `budget.warning` is sent (0.8 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<f64>,
}

impl Budget {
    /// What is wrong with it, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = &self.monthly {
            m.check("monthly")?;
        }
        if let Some(d) = &self.per_user_daily {
            d.check("perUserDaily")?;
        }
        if self.warn_at.is_some_and(|w| !(w > 0.0 && w <= 1.0)) {
            return Err("warnAt must be above 0 and at most 1".into());
        }
        Ok(())
    }

    pub fn warn_at(&self) -> f64 {
        self.warn_at.unwrap_or(0.8)
    }
}

/// Which budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Monthly,
    PerUserDaily,
}

impl Which {
    pub fn as_str(self) -> &'static str {
        match self {
            Which::Monthly => "monthly",
            Which::PerUserDaily => "perUserDaily",
        }
    }
}

/// A turn refused because a budget is used up: which, how much of it, and when it resets.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetExceeded {
    pub which: Which,
    pub limit: Limit,
    pub used: Counts,
    /// When the period ends (RFC 3339, UTC).
    pub resets_at: String,
    /// Seconds until then.
    pub retry_after: u64,
}

impl BudgetExceeded {
    /// The error's details in the API's answer.
    pub fn details(&self) -> Value {
        json!({
            "budget": self.which.as_str(),
            "limit": self.limit,
            "used": used_view(&self.used),
            "resetsAt": self.resets_at,
        })
    }
}

/// Usage as the budgets API shows it: tokens and US dollars.
pub fn used_view(used: &Counts) -> Value {
    json!({"tokens": used.tokens(), "costUsd": used.cost_micros as f64 / 1e6})
}
