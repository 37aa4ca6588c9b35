//! What a turn spends: the budget check before the model is called, and the usage it counts
//! (announcing the budgets it takes past their warning share or their limit).

use serde_json::json;

use super::Agent;
use super::thinking::Thought;
use super::turn::TurnError;
use crate::agents::directory::Persona;
use crate::events::{Change, EventType};
use crate::ids::{TenantId, UserId};
use crate::usage::Tally;
use crate::usage::budgets::used_view;
use crate::usage::meter::Crossing;

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

    /// What a model's reply reported, for the store to count with the reply (`Message::counted`).
    pub(super) fn tally(&self, persona: &Persona, thought: &Thought) -> Option<Tally> {
        let usage = thought.reply.usage?;
        let model = if thought.reply.model.is_empty() { persona.provider.label() } else { &thought.reply.model };
        let tokens = (usage.input_tokens, usage.output_tokens);
        self.meter.tally(self.meter.entry(persona.agent_id(), model, tokens, thought.model_calls.max(1), 1))
    }

    /// After a reply and its tally are stored: takes the tally into this process's view and
    /// announces the budgets it took past their warning share or limit.
    pub(super) async fn counted(&self, tenant: &TenantId, user: &UserId, tally: Option<&Tally>) {
        let Some(tally) = tally else { return };
        let crossings = self.meter.counted(tenant, user, tally).await;
        self.announce_crossings(tenant, crossings).await;
    }

    /// Counts a summary's usage and announces the budgets it took past their warning share or limit.
    pub(super) async fn count(&self, tenant: &TenantId, user: &UserId, entry: crate::usage::UsageEntry) {
        match self.meter.record(tenant, user, entry).await {
            Ok(crossings) => self.announce_crossings(tenant, crossings).await,
            Err(e) => tracing::warn!(error = %e, %tenant, "could not count a summary's usage"),
        }
    }

    async fn announce_crossings(&self, tenant: &TenantId, crossings: Vec<Crossing>) {
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
