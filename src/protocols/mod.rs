//! Client protocols: adapters that speak other servers' APIs over the same turns.

pub mod openai;
pub mod ui_chat;

use crate::agent::Agent;
use crate::ids::{LocationId, SessionId, TenantId, UserId};
use crate::store::{NewSession, Retention, Session, StoreResult};

/// Creates the session `id` for the user unless it exists, beside the user's other sessions (a
/// client that keeps several chats, or OpenAI's conversations, closes none by starting another),
/// and announces it (`session.created`).
pub(crate) async fn open_session(
    agent: &Agent,
    tenant: &TenantId,
    user: &UserId,
    location: Option<&LocationId>,
    id: &SessionId,
) -> StoreResult<()> {
    let store = agent.store();
    if store.get_session(tenant, id).await?.is_some() {
        return Ok(());
    }
    let new =
        NewSession { tenant_id: tenant.clone(), user_id: user.clone(), location_id: location.cloned(), metadata: None };
    let mut session = Session::new(new, Retention::default());
    session.id = id.clone();
    // Conditional: two requests naming the same new id create it once (and announce it once).
    if store.import_session(session.clone()).await? {
        agent.announce_session_created(&session).await;
    }
    Ok(())
}
