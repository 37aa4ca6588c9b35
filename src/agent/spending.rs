//! What a turn spends: the budget check before the model is called, and the usage it counts
//! (announcing the budgets it takes past their warning share or their limit).

use serde_json::json;

use super::Agent;
use super::thinking::Thought;
use super::turn::TurnError;
use crate::agents::directory::Persona;
use crate::events::{Change, EventType};
use crate::ids::{TenantId, UserId};
use crate::usage::budgets::used_view;

impl Agent {
    /// Refuses a turn that would start over one of the tenant's budgets (nothing is stored).
    pub(super) async fn within_budget(&self, tenant: &TenantId, user: &UserId) -> Result<(), TurnError> {
        match self.meter.check(tenant, user).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(over)) => Err(TurnError::BudgetExceeded(Box::new(over))),
            // A budget that cannot be read does not stop the tenant's turns.
            Err(e) => {
                tracing::warn!(error = %e, %tenant, "could not read the budgets; the turn goes on");
                Ok(())
            }
        }
    }

    /// Counts what a model's reply reported (`turns`: 1 for a turn, 0 for a summary).
    pub(super) async fn count_usage(
        &self,
        tenant: &TenantId,
        user: &UserId,
        persona: &Persona,
        thought: &Thought,
        turns: u64,
    ) {
        let Some(usage) = thought.reply.usage else { return };
        let model = if thought.reply.model.is_empty() { persona.provider.label() } else { &thought.reply.model };
        let tokens = (usage.input_tokens, usage.output_tokens);
        let entry = self.meter.entry(persona.agent_id(), model, tokens, thought.model_calls.max(1), turns);
        self.count(tenant, user, entry).await;
    }

    /// Counts one entry and announces the budgets it took past their warning share or limit.
    pub(super) async fn count(&self, tenant: &TenantId, user: &UserId, entry: crate::usage::UsageEntry) {
        let crossings = match self.meter.record(tenant, user, entry).await {
            Ok(crossings) => crossings,
            Err(e) => {
                tracing::warn!(error = %e, %tenant, "could not count a turn's usage");
                return;
            }
        };
        let changes: Vec<Change> = crossings
            .into_iter()
            .map(|c| {
                let kind = if c.exceeded { EventType::BudgetExceeded } else { EventType::BudgetWarning };
                let mut data = json!({
                    "budget": c.which.as_str(),
                    "period": c.period,
                    "limit": c.limit,
                    "used": used_view(&c.used),
                });
                if let Some(u) = &c.user {
                    data["userId"] = json!(u);
                }
                Change::new(kind, c.user.as_ref(), data)
            })
            .collect();
        if !changes.is_empty() {
            self.events.record(tenant, changes).await;
        }
    }
}
