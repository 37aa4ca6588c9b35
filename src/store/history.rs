//! The history a model sees: the session's newest messages, read with read-your-writes.

use std::time::Duration;

use super::{ConversationStore, Message, MessageQuery, Order, Page, Session, StoreResult};

/// The session's newest `limit` messages, oldest first, with read-your-writes.
///
/// On DynamoDB the session's messages come from a GSI, which is eventually consistent. The session
/// item records the timestamp of its newest message, so a read that comes back without it is retried
/// briefly (up to about half a second) instead of handing the model an incomplete history.
pub async fn recent_history(
    store: &dyn ConversationStore,
    session: &Session,
    limit: usize,
) -> StoreResult<Vec<Message>> {
    complete_history(store, session, limit, None).await
}

/// The query `recent_history` makes, to run beside other requests.
pub fn history_query(limit: usize) -> MessageQuery {
    MessageQuery { limit, order: Order::Desc, for_model: true, ..Default::default() }
}

/// `recent_history`, starting from a first page already read with `history_query`.
pub async fn complete_history(
    store: &dyn ConversationStore,
    session: &Session,
    limit: usize,
    mut first: Option<Page<Message>>,
) -> StoreResult<Vec<Message>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut delay = Duration::from_millis(10);
    for attempt in 0.. {
        let page = match first.take() {
            Some(page) => page,
            None => store.list_messages(&session.tenant_id, &session.id, history_query(limit)).await?,
        };
        let newest = page.items.first().map(|m| m.timestamp.as_str());
        let complete = match (&session.last_message_at, newest) {
            (None, _) => true,
            (Some(expected), Some(newest)) => newest >= expected.as_str(),
            (Some(_), None) => false,
        };
        if complete || attempt >= 6 {
            if !complete {
                tracing::warn!(session = %session.id, "history still incomplete after retries");
            }
            let mut items = page.items;
            items.reverse();
            return Ok(items);
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    unreachable!()
}
