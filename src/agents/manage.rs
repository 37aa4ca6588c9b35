//! Creating, replacing and deleting a tenant's agents: validation, the write-only key, versions,
//! the one default agent, and conditional writes (two writers racing on one agent: one wins, the
//! other is told to retry).

use serde_json::json;

use super::{AgentSpec, Capabilities, FieldError, StoredAgent};
use crate::events::{Change, EventType};
use crate::ids::{AgentId, TenantId};
use crate::store::{ConversationStore, StoreError};
use crate::timestamp::Timestamp;

/// The most agents a tenant may have.
pub const MAX_AGENTS: usize = 100;

#[derive(Debug)]
pub enum ManageError {
    Invalid(FieldError),
    /// Another write changed the agent meanwhile, or the tenant has `MAX_AGENTS` agents.
    Conflict(String),
    Store(StoreError),
}

impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> Self {
        ManageError::Store(e)
    }
}

/// What a put did.
pub struct Put {
    pub agent: StoredAgent,
    pub created: bool,
    /// Agents that were the tenant's default and no longer are (their version moved on).
    pub undefaulted: Vec<StoredAgent>,
}

/// Creates or replaces an agent. A key left out keeps the stored one; `""` removes it.
pub async fn put(
    store: &dyn ConversationStore,
    can: &Capabilities,
    tenant: &TenantId,
    id: &AgentId,
    mut spec: AgentSpec,
) -> Result<Put, ManageError> {
    spec.validate(can).await.map_err(ManageError::Invalid)?;
    let existing = store.get_agent(tenant, id).await?;
    if existing.is_none() && store.list_agents(tenant).await?.len() >= MAX_AGENTS {
        return Err(ManageError::Conflict(format!("a tenant has at most {MAX_AGENTS} agents")));
    }
    // The key is write-only: left out, the stored one stays, but only for the same origin (a key
    // must never follow a URL to another host); `""` removes it.
    let stored = existing.as_ref().and_then(|a| a.spec.business_api.clone()).filter(|b| b.key.is_some());
    if let Some(api) = spec.business_api.as_mut() {
        match api.key.as_deref() {
            Some("") => api.key = None,
            Some(_) => {}
            None => {
                if let Some(stored) = stored {
                    if !same_origin(stored.url.as_deref(), api.url.as_deref()) {
                        return Err(ManageError::Invalid(FieldError {
                            field: "businessApi.key",
                            message: "businessApi.url is on another host now: give its key again (or \"\" for none)"
                                .into(),
                        }));
                    }
                    api.key = stored.key;
                }
            }
        }
    }
    let now = Timestamp::now();
    let agent = StoredAgent {
        tenant_id: tenant.clone(),
        id: id.clone(),
        version: existing.as_ref().map_or(1, |a| a.version + 1),
        created_at: existing.as_ref().map_or_else(|| now.clone(), |a| a.created_at.clone()),
        updated_at: now.clone(),
        spec,
    };
    if !store.put_agent(&agent, existing.as_ref().map(|a| a.version)).await? {
        return Err(ManageError::Conflict("the agent was changed at the same time; read it and try again".into()));
    }
    let mut undefaulted = Vec::new();
    if agent.spec.default {
        // One default per tenant: setting one clears the others.
        for mut other in store.list_agents(tenant).await? {
            if other.id == agent.id || !other.spec.default {
                continue;
            }
            let previous = other.version;
            other.spec.default = false;
            other.version += 1;
            other.updated_at = now.clone();
            if store.put_agent(&other, Some(previous)).await? {
                undefaulted.push(other);
            }
        }
    }
    // Every server drops what it cached of the tenant's agents.
    note_change(store, tenant).await?;
    Ok(Put { agent, created: existing.is_none(), undefaulted })
}

impl Put {
    /// The change events of the put: the agent created or updated, and the agents it undefaulted.
    pub fn changes(&self) -> Vec<Change> {
        let kind = if self.created { EventType::AgentCreated } else { EventType::AgentUpdated };
        let mut changes = vec![change(kind, &self.agent)];
        changes.extend(self.undefaulted.iter().map(|a| change(EventType::AgentUpdated, a)));
        changes
    }
}

/// An agent's change event: its id, version and name (never its key or instructions).
fn change(kind: EventType, agent: &StoredAgent) -> Change {
    Change::new(kind, None, json!({"agentId": agent.id, "version": agent.version, "name": agent.spec.name}))
}

/// The change event of a deleted agent.
pub fn deleted(id: &AgentId) -> Change {
    Change::new(EventType::AgentDeleted, None, json!({"agentId": id}))
}

/// Notes the change for the other servers, trying three times (the agent is written already: a
/// change they never learn of would be served stale).
pub async fn note_change(store: &dyn ConversationStore, tenant: &TenantId) -> Result<(), StoreError> {
    let mut last = None;
    for attempt in 0..3u64 {
        match store.record_agent_change(tenant, &Timestamp::now()).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100 * (attempt + 1))).await;
    }
    Err(last.expect("three attempts"))
}

/// Whether two URLs have one scheme, host and port.
fn same_origin(a: Option<&str>, b: Option<&str>) -> bool {
    let origin =
        |u: Option<&str>| u.and_then(|u| reqwest::Url::parse(u).ok()).map(|u| u.origin().ascii_serialization());
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// Deletes an agent (its sessions keep their messages and their `agentId`); false when none.
pub async fn delete(store: &dyn ConversationStore, tenant: &TenantId, id: &AgentId) -> Result<bool, StoreError> {
    let deleted = store.delete_agent(tenant, id).await?;
    if deleted {
        note_change(store, tenant).await?;
    }
    Ok(deleted)
}
