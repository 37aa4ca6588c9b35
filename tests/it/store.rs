//! One conformance suite run unchanged over both backends: SQLite and DynamoDB (on the emulator).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_server::agents::StoredAgent;
use agent_server::channels::StoredChannel;
use agent_server::ids::{AgentId, ChannelId, MessageId, SessionId, TenantId, UserId};
use agent_server::store::{
    Action, ActionStatus, Appended, ContextSummary, ConversationStore, Cursor, Deleted, Delivery, DeliveryStep,
    Erasure, Hold, HoldLease, HoldRequest, Message, MessageQuery, NewMessage, NewSession, Order, OutboxPart, Page,
    PageRequest, Role, Session, StoreError, StoreResult, StoredEvent, TurnEvent, TurnRecord, TurnStatus, history_query,
    recent_history,
};
use agent_server::timestamp::Timestamp;
use agent_server::usage::{Budget, Counts, Tally, UsageEntry, UsageRow};
use async_trait::async_trait;
use serde_json::json;

fn tenant(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}
fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

async fn new_session(store: &dyn ConversationStore, t: &str, u: &str) -> Session {
    store
        .create_session(NewSession { tenant_id: tenant(t), user_id: user(u), location_id: None, metadata: None })
        .await
        .unwrap()
}

fn msg(u: &str, role: Role, content: &str) -> NewMessage {
    NewMessage {
        id: MessageId::generate(),
        user_id: user(u),
        role,
        content: content.into(),
        metadata: None,
        counted: None,
    }
}

async fn append(store: &dyn ConversationStore, s: &Session, contents: &[&str]) -> Vec<Message> {
    let batch = contents.iter().map(|c| msg(s.user_id.as_str(), Role::User, c)).collect();
    store.append_messages(&s.tenant_id, &s.id, batch).await.unwrap().into_iter().map(|a| a.message).collect()
}

async fn all_messages(store: &dyn ConversationStore, s: &Session, order: Order, page: usize) -> Vec<Message> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let p = store
            .list_messages(&s.tenant_id, &s.id, MessageQuery { limit: page, order, cursor, ..Default::default() })
            .await
            .unwrap();
        assert!(p.items.len() <= page);
        out.extend(p.items);
        match p.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn sessions_round_trip_with_seed_fields(store: Arc<dyn ConversationStore>) {
    let created = store
        .create_session(NewSession {
            tenant_id: tenant("acme"),
            user_id: user("u1"),
            location_id: Some(agent_server::ids::LocationId::parse("loc-9").unwrap()),
            metadata: Some(json!({"channel": "web", "n": 3, "nested": {"ok": true}}).as_object().unwrap().clone()),
        })
        .await
        .unwrap();
    assert!(created.is_active);
    assert_eq!(created.created_at, created.updated_at);
    assert!(created.created_at.ends_with('Z') && created.created_at.len() == 27, "{}", created.created_at);
    let got = store.get_session(&tenant("acme"), &created.id).await.unwrap().unwrap();
    assert_eq!(got, created);
    assert!(store.get_session(&tenant("acme"), &SessionId::generate()).await.unwrap().is_none());
    let active = store.find_active_session(&tenant("acme"), &user("u1")).await.unwrap().unwrap();
    assert_eq!(active.id, created.id);
    let closed = store.close_session(&tenant("acme"), &created.id).await.unwrap().unwrap();
    assert!(!closed.is_active);
    assert!(store.find_active_session(&tenant("acme"), &user("u1")).await.unwrap().is_none());
    let err = store.append_messages(&tenant("acme"), &created.id, vec![msg("u1", Role::User, "hi")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(store.close_session(&tenant("acme"), &SessionId::generate()).await.unwrap().is_none());
}

async fn appends_are_ordered_and_idempotent(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let first = msg("u1", Role::User, "hello");
    let reply = msg("u1", Role::Agent, "hi there");
    let out = store.append_messages(&s.tenant_id, &s.id, vec![first.clone(), reply.clone()]).await.unwrap();
    assert!(out.iter().all(|a| a.created));
    assert!(out[0].message.timestamp < out[1].message.timestamp, "the reply sorts after the message it answers");
    // The same ids again: stored once, and the call says so.
    let again = store.append_messages(&s.tenant_id, &s.id, vec![first.clone()]).await.unwrap();
    assert_eq!(again, vec![Appended { message: out[0].message.clone(), created: false }]);
    let all = all_messages(&*store, &s, Order::Asc, 10).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].content, "hello");
    assert_eq!(all[1].role, Role::Agent);
    assert_eq!(store.get_message(&s.tenant_id, &out[1].message.id).await.unwrap().as_ref(), Some(&out[1].message));
    assert_eq!(store.get_message(&tenant("globex"), &out[1].message.id).await.unwrap(), None);
    // The same id in another tenant's session is refused, and reveals nothing.
    let other = new_session(&*store, "globex", "u1").await;
    let err = store.append_messages(&other.tenant_id, &other.id, vec![first]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The session's activity moved with the messages.
    let s2 = store.get_session(&s.tenant_id, &s.id).await.unwrap().unwrap();
    assert_eq!(s2.updated_at, out[1].message.timestamp);
}

async fn concurrent_appends_get_strictly_increasing_timestamps(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let batch = vec![msg("u1", Role::User, &format!("q{i}")), msg("u1", Role::Agent, &format!("a{i}"))];
            store.append_messages(&s.tenant_id, &s.id, batch).await.unwrap()
        }));
    }
    let mut pairs = Vec::new();
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out[0].message.timestamp < out[1].message.timestamp);
        pairs.push(out);
    }
    let all = all_messages(&*store, &s, Order::Asc, 100).await;
    assert_eq!(all.len(), 32);
    for w in all.windows(2) {
        assert!(w[0].timestamp < w[1].timestamp, "{} < {}", w[0].timestamp, w[1].timestamp);
    }
    // Each reply directly follows its question: batches are not interleaved.
    for w in all.chunks(2) {
        assert_eq!(w[0].content[1..], w[1].content[1..]);
    }
}

async fn pages_through_250_messages_without_loss_or_repeat(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let mut written = Vec::new();
    for chunk in 0..25 {
        let contents: Vec<String> = (0..10).map(|i| format!("m{}", chunk * 10 + i)).collect();
        let refs: Vec<&str> = contents.iter().map(|c| c.as_str()).collect();
        written.extend(append(&*store, &s, &refs).await);
    }
    let ids: Vec<_> = written.iter().map(|m| m.id.clone()).collect();
    let asc = all_messages(&*store, &s, Order::Asc, 37).await;
    assert_eq!(asc.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    let desc = all_messages(&*store, &s, Order::Desc, 37).await;
    let mut rev = ids.clone();
    rev.reverse();
    assert_eq!(desc.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), rev);
    // `before` a timestamp gives the older ones, newest first.
    let cut = &written[100].timestamp;
    let page = store
        .list_messages(&s.tenant_id, &s.id, MessageQuery { limit: 5, before: Some(cut.clone()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.items.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["m99", "m98", "m97", "m96", "m95"]);
    // The tenant's messages by time page the same way (TenantTimestampIndex).
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = store
            .list_tenant_messages(&s.tenant_id, MessageQuery { limit: 40, cursor, ..Default::default() })
            .await
            .unwrap();
        seen.extend(p.items.into_iter().map(|m| m.id));
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, rev);
}

async fn tenant_messages_merge_sessions_by_time(store: Arc<dyn ConversationStore>) {
    let a = new_session(&*store, "acme", "u1").await;
    let b = new_session(&*store, "acme", "u2").await;
    let other = new_session(&*store, "globex", "u1").await;
    let mut expected = Vec::new();
    for i in 0..6 {
        let s = if i % 2 == 0 { &a } else { &b };
        expected.extend(append(&*store, s, &[&format!("x{i}")]).await);
    }
    append(&*store, &other, &["secret"]).await;
    let p = store
        .list_tenant_messages(&tenant("acme"), MessageQuery { limit: 100, order: Order::Asc, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(p.items, expected);
    assert!(p.next.is_none());
}

async fn user_sessions_list_newest_activity_first(store: Arc<dyn ConversationStore>) {
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(new_session(&*store, "acme", "u1").await);
    }
    new_session(&*store, "acme", "u2").await;
    new_session(&*store, "globex", "u1").await;
    // Activity on the oldest session moves it to the front.
    append(&*store, &sessions[0], &["bump"]).await;
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let p = store.list_user_sessions(&tenant("acme"), &user("u1"), PageRequest { limit: 2, cursor }).await.unwrap();
        ids.extend(p.items.iter().map(|s| s.id.clone()));
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<_> = [0, 4, 3, 2, 1].iter().map(|&i| sessions[i].id.clone()).collect();
    assert_eq!(ids, expected);
    let active = store.find_active_session(&tenant("acme"), &user("u1")).await.unwrap().unwrap();
    assert_eq!(active.id, sessions[0].id);
}

/// A user's sessions whose items fill more than one 1 MB Query page still list completely and in order.
async fn user_sessions_list_is_complete_across_query_pages(store: Arc<dyn ConversationStore>) {
    let padding = json!({"notes": "n".repeat(10 * 1024)}).as_object().unwrap().clone();
    let mut created = Vec::new();
    for chunk in 0..6 {
        let batch = (0..20).map(|_| {
            store.create_session(NewSession {
                tenant_id: tenant("acme"),
                user_id: user("heavy"),
                location_id: None,
                metadata: Some(padding.clone()),
            })
        });
        for s in futures::future::join_all(batch).await {
            created.push(s.unwrap());
        }
        let _ = chunk;
    }
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let p =
            store.list_user_sessions(&tenant("acme"), &user("heavy"), PageRequest { limit: 50, cursor }).await.unwrap();
        listed.extend(p.items);
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(listed.len(), 120);
    assert!(listed.windows(2).all(|w| (&w[0].updated_at, &w[0].id) > (&w[1].updated_at, &w[1].id)));
    let mut want: Vec<_> = created.iter().map(|s| s.id.clone()).collect();
    let mut got: Vec<_> = listed.iter().map(|s| s.id.clone()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

async fn guessed_ids_and_cursors_never_cross_tenants(store: Arc<dyn ConversationStore>) {
    let mine = new_session(&*store, "acme", "u1").await;
    append(&*store, &mine, &["private", "more private"]).await;
    let theirs = tenant("globex");
    assert!(store.get_session(&theirs, &mine.id).await.unwrap().is_none());
    let p = store.list_messages(&theirs, &mine.id, MessageQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert!(p.items.is_empty());
    let err = store.append_messages(&theirs, &mine.id, vec![msg("u1", Role::User, "x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(store.close_session(&theirs, &mine.id).await.unwrap().is_none());
    assert!(store.delete_session(&theirs, &mine.id, None).await.unwrap().is_none());
    assert_eq!(store.delete_user(&theirs, &user("u1")).await.unwrap(), Deleted::default());
    // A cursor made from acme's data, used by globex, still reads only globex's data.
    let acme_page =
        store.list_tenant_messages(&tenant("acme"), MessageQuery { limit: 1, ..Default::default() }).await.unwrap();
    let forged = acme_page.next.unwrap();
    let p = store
        .list_tenant_messages(&theirs, MessageQuery { limit: 10, cursor: Some(forged.clone()), ..Default::default() })
        .await
        .unwrap();
    assert!(p.items.is_empty());
    let p = store
        .list_messages(&theirs, &mine.id, MessageQuery { limit: 10, cursor: Some(forged), ..Default::default() })
        .await
        .unwrap();
    assert!(p.items.is_empty());
    let p = store
        .list_user_sessions(
            &theirs,
            &user("u1"),
            PageRequest { limit: 10, cursor: Some(Cursor::new("9999-01-01T00:00:00.000000Z", "zzz")) },
        )
        .await
        .unwrap();
    assert!(p.items.is_empty());
    // acme's data is intact.
    assert_eq!(all_messages(&*store, &mine, Order::Asc, 10).await.len(), 2);
}

async fn large_messages_store_and_oversized_ones_are_refused_whole(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let big = "é".repeat(175 * 1024); // 350 KB of UTF-8
    let stored = append(&*store, &s, &[&big]).await;
    let back = all_messages(&*store, &s, Order::Asc, 10).await;
    assert_eq!(back, stored);
    assert_eq!(back[0].content.len(), 350 * 1024);
    let huge = "x".repeat(401 * 1024);
    let before = store.get_session(&s.tenant_id, &s.id).await.unwrap().unwrap();
    let err = store
        .append_messages(&s.tenant_id, &s.id, vec![msg("u1", Role::User, "fine"), msg("u1", Role::Agent, &huge)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge(_)), "{err:?}");
    // Nothing of the refused turn was written.
    assert_eq!(all_messages(&*store, &s, Order::Asc, 10).await.len(), 1);
    let after = store.get_session(&s.tenant_id, &s.id).await.unwrap().unwrap();
    assert_eq!(before.updated_at, after.updated_at);
}

async fn deleting_a_session_and_erasing_a_user_remove_everything(store: Arc<dyn ConversationStore>) {
    let a = new_session(&*store, "acme", "u1").await;
    let b = new_session(&*store, "acme", "u1").await;
    let keep = new_session(&*store, "acme", "u2").await;
    append(&*store, &a, &["1", "2", "3"]).await;
    append(&*store, &b, &["4"]).await;
    append(&*store, &keep, &["5"]).await;
    assert_eq!(store.delete_session(&tenant("acme"), &a.id, None).await.unwrap(), Some(3));
    assert!(store.get_session(&tenant("acme"), &a.id).await.unwrap().is_none());
    assert!(all_messages(&*store, &a, Order::Asc, 10).await.is_empty());
    assert_eq!(store.delete_session(&tenant("acme"), &a.id, None).await.unwrap(), None);
    let erased = store.delete_user(&tenant("acme"), &user("u1")).await.unwrap();
    assert_eq!(erased, Deleted { sessions: 1, messages: 1 });
    let left =
        store.list_tenant_messages(&tenant("acme"), MessageQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(left.items.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["5"]);
    let p =
        store.list_user_sessions(&tenant("acme"), &user("u1"), PageRequest { limit: 10, cursor: None }).await.unwrap();
    assert!(p.items.is_empty());
}

/// Items past their `expiresAt` are hidden from every read (DynamoDB deletes them lazily), and the
/// SQLite purge deletes them.
async fn expired_items_are_hidden_and_purged(store: Arc<dyn ConversationStore>) {
    let live = new_session(&*store, "acme", "u1").await;
    append(&*store, &live, &["still here"]).await;
    let past = agent_server::timestamp::epoch_seconds() - 10;
    let mut old = live.clone();
    old.id = SessionId::generate();
    old.expires_at = Some(past);
    assert!(store.import_session(old.clone()).await.unwrap());
    let mut expired = all_messages(&*store, &live, Order::Asc, 10).await.remove(0);
    expired.id = MessageId::generate();
    expired.session_id = old.id.clone();
    expired.expires_at = Some(past);
    assert!(store.import_message(expired.clone()).await.unwrap());
    let mut expired_in_live = expired.clone();
    expired_in_live.id = MessageId::generate();
    expired_in_live.session_id = live.id.clone();
    expired_in_live.timestamp = Timestamp::parse("2000-01-01T00:00:00Z").unwrap();
    assert!(store.import_message(expired_in_live.clone()).await.unwrap());

    assert!(store.get_session(&tenant("acme"), &old.id).await.unwrap().is_none());
    assert!(store.get_message(&tenant("acme"), &expired.id).await.unwrap().is_none());
    let listed =
        store.list_user_sessions(&tenant("acme"), &user("u1"), PageRequest { limit: 10, cursor: None }).await.unwrap();
    assert_eq!(listed.items.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![live.id.clone()]);
    let msgs = all_messages(&*store, &live, Order::Asc, 10).await;
    assert_eq!(msgs.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["still here"]);
    let tenant_msgs =
        store.list_tenant_messages(&tenant("acme"), MessageQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(tenant_msgs.items.len(), 1);
    let (scanned, _) = store.scan_sessions(Some(&tenant("acme")), None, 100).await.unwrap();
    assert_eq!(scanned.len(), 1);
    // The purge (SQLite) deletes them; DynamoDB leaves that to its TTL. Either way they stay hidden.
    store.purge_expired().await.unwrap();
    assert!(store.get_message(&tenant("acme"), &expired.id).await.unwrap().is_none());
    assert_eq!(all_messages(&*store, &live, Order::Asc, 10).await.len(), 1);
}

/// A pending action is decided exactly once, under concurrency, and only within its tenant.
async fn actions_transition_exactly_once(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let mut m = msg("u1", Role::Agent, "may I?");
    m.metadata = Some(
        json!({"actions": [{"id": "a-1", "tool": "list_resources", "status": "done"}, {"id": "a-2", "tool": "create_resource", "status": "pending_approval"}]})
            .as_object()
            .unwrap()
            .clone(),
    );
    let stored = store.append_messages(&s.tenant_id, &s.id, vec![m]).await.unwrap().remove(0).message;
    let approved: Action =
        serde_json::from_value(json!({"id": "a-2", "tool": "create_resource", "status": "approved"})).unwrap();
    let mut other = approved.clone();
    other.id = "a-9".into();
    assert!(
        !store
            .transition_action(&tenant("globex"), &stored.id, ActionStatus::PendingApproval, &approved)
            .await
            .unwrap()
    );
    let tries =
        (0..5).map(|_| store.transition_action(&s.tenant_id, &stored.id, ActionStatus::PendingApproval, &approved));
    let wins = futures::future::join_all(tries).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(wins, 1);
    assert!(!store.transition_action(&s.tenant_id, &stored.id, ActionStatus::PendingApproval, &other).await.unwrap());
    let back = store.get_message(&s.tenant_id, &stored.id).await.unwrap().unwrap();
    let actions = back.metadata.unwrap()["actions"].clone();
    assert_eq!(actions[1]["status"], "approved");
    assert_eq!(actions[0]["status"], "done", "other actions are untouched");
    assert_eq!(back.content, "may I?");
}

/// A turn on an existing session: the begin checks the user and reserves ordered timestamps, the
/// put stores the messages, and a failed turn gives its reservation back.
async fn turns_reserve_timestamps_and_release_them(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let first = append(&*store, &s, &["before"]).await.remove(0);
    let err = store.begin_turn(&s.tenant_id, &s.id, Some(&user("u2")), 2).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.begin_turn(&tenant("globex"), &s.id, Some(&user("u1")), 2).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let (before, stamps) = store.begin_turn(&s.tenant_id, &s.id, Some(&user("u1")), 2).await.unwrap();
    assert_eq!(before.last_message_at.as_deref(), Some(first.timestamp.as_str()));
    assert!(first.timestamp < stamps[0] && stamps[0] < stamps[1]);
    // A concurrent turn gets later timestamps.
    let (_, later) = store.begin_turn(&s.tenant_id, &s.id, Some(&user("u1")), 2).await.unwrap();
    assert!(later[0] > stamps[1]);
    store.release_turn(&s.tenant_id, &s.id, &later[1], Some(&stamps[1])).await.unwrap();
    let make = |content: &str, ts: &Timestamp, role| Message {
        id: MessageId::generate(),
        tenant_id: s.tenant_id.clone(),
        session_id: s.id.clone(),
        user_id: user("u1"),
        content: content.into(),
        role,
        timestamp: ts.clone(),
        metadata: None,
        expires_at: None,
        counted: None,
    };
    let q = make("question", &stamps[0], Role::User);
    let a = make("answer", &stamps[1], Role::Agent);
    let out = store.put_messages(&s.tenant_id, &s.id, vec![q.clone(), a]).await.unwrap();
    assert!(out.iter().all(|x| x.created));
    assert!(!store.put_messages(&s.tenant_id, &s.id, vec![q]).await.unwrap()[0].created, "idempotent");
    let session = store.get_session(&s.tenant_id, &s.id).await.unwrap().unwrap();
    assert_eq!(session.last_message_at.as_deref(), Some(stamps[1].as_str()), "the released turn gave its time back");
    let history = recent_history(&*store, &session, 10).await.unwrap();
    assert_eq!(history.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["before", "question", "answer"]);
    store.close_session(&s.tenant_id, &s.id).await.unwrap();
    let err = store.begin_turn(&s.tenant_id, &s.id, Some(&user("u1")), 2).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

/// The edges where the backends used to disagree: a message of another tenant or session given to
/// `put_messages`, an id already used in another session, an append to a closed session.
async fn both_backends_refuse_the_same_writes_the_same_way(store: Arc<dyn ConversationStore>) {
    let mine = new_session(&*store, "acme", "u1").await;
    let other = new_session(&*store, "acme", "u2").await;
    let (_, stamps) = store.begin_turn(&mine.tenant_id, &mine.id, None, 1).await.unwrap();
    let foreign = msg("u2", Role::User, "not yours").into_message(&other.tenant_id, &other.id, stamps[0].clone());
    let err = store.put_messages(&mine.tenant_id, &mine.id, vec![foreign.clone()]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let err = store.put_messages(&tenant("globex"), &other.id, vec![foreign.clone()]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    // An id stored in one session is a conflict in another, never a silent success.
    let stored = store.put_messages(&other.tenant_id, &other.id, vec![foreign.clone()]).await.unwrap();
    assert!(stored[0].created);
    let mut reused = foreign.clone();
    reused.session_id = mine.id.clone();
    reused.user_id = user("u1");
    let err = store.put_messages(&mine.tenant_id, &mine.id, vec![reused]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        store
            .list_messages(&mine.tenant_id, &mine.id, MessageQuery { limit: 10, ..Default::default() })
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The same answers for a closed session and another user's, whichever backend.
    store.close_session(&mine.tenant_id, &mine.id).await.unwrap();
    let closed = store.append_messages(&mine.tenant_id, &mine.id, vec![msg("u1", Role::User, "x")]).await.unwrap_err();
    assert_eq!(closed, StoreError::session_closed(&mine.id));
    let theirs = store.begin_turn(&other.tenant_id, &other.id, Some(&user("u1")), 1).await.unwrap_err();
    assert_eq!(theirs, StoreError::session_not_found(&other.id));
}

/// A session can start with its first messages, written at once, in order.
async fn sessions_start_with_their_first_messages(store: Arc<dyn ConversationStore>) {
    let (session, messages) = store
        .create_session_with(
            NewSession { tenant_id: tenant("acme"), user_id: user("u1"), location_id: None, metadata: None },
            vec![msg("u1", Role::User, "hi"), msg("u1", Role::Agent, "hello")],
        )
        .await
        .unwrap();
    assert!(messages[0].timestamp < messages[1].timestamp);
    assert!(session.created_at < messages[0].timestamp);
    let stored = store.get_session(&tenant("acme"), &session.id).await.unwrap().unwrap();
    assert_eq!(stored.last_message_at.as_deref(), Some(messages[1].timestamp.as_str()));
    assert!(stored.is_active);
    let history = recent_history(&*store, &stored, 10).await.unwrap();
    assert_eq!(history, messages);
    // The next turn continues after them.
    let (_, stamps) = store.begin_turn(&tenant("acme"), &session.id, Some(&user("u1")), 2).await.unwrap();
    assert!(stamps[0] > messages[1].timestamp);
}

/// A store whose first message query misses the newest item, as a lagging GSI can.
struct LaggingIndex {
    inner: Arc<dyn ConversationStore>,
    lagged: AtomicBool,
}

#[async_trait]
impl ConversationStore for LaggingIndex {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn create_turn(&self, turn: &TurnRecord) -> StoreResult<bool> {
        self.inner.create_turn(turn).await
    }
    async fn get_turn(&self, t: &TenantId, id: &MessageId) -> StoreResult<Option<TurnRecord>> {
        self.inner.get_turn(t, id).await
    }
    async fn put_agent(&self, agent: &StoredAgent, previous: Option<u64>) -> StoreResult<bool> {
        self.inner.put_agent(agent, previous).await
    }
    async fn get_agent(&self, t: &TenantId, id: &AgentId) -> StoreResult<Option<StoredAgent>> {
        self.inner.get_agent(t, id).await
    }
    async fn list_agents(&self, t: &TenantId) -> StoreResult<Vec<StoredAgent>> {
        self.inner.list_agents(t).await
    }
    async fn record_agent_change(&self, t: &TenantId, at: &Timestamp) -> StoreResult<()> {
        self.inner.record_agent_change(t, at).await
    }
    async fn agent_changes_since(&self, since: &Timestamp) -> StoreResult<Vec<(Timestamp, TenantId)>> {
        self.inner.agent_changes_since(since).await
    }
    async fn all_agents(&self) -> StoreResult<Vec<StoredAgent>> {
        self.inner.all_agents().await
    }
    async fn delete_agent(&self, t: &TenantId, id: &AgentId) -> StoreResult<bool> {
        self.inner.delete_agent(t, id).await
    }
    async fn hold_session(
        &self,
        t: &TenantId,
        s: &SessionId,
        turn: &MessageId,
        lease: HoldLease,
        take_over: bool,
    ) -> StoreResult<Hold> {
        self.inner.hold_session(t, s, turn, lease, take_over).await
    }
    async fn queue_turn(&self, t: &TenantId, s: &SessionId, turn: &MessageId, now: i64) -> StoreResult<bool> {
        self.inner.queue_turn(t, s, turn, now).await
    }
    async fn renew_session_hold(&self, t: &TenantId, s: &SessionId, turn: &MessageId, until: i64) -> StoreResult<bool> {
        self.inner.renew_session_hold(t, s, turn, until).await
    }
    async fn let_go_session(
        &self,
        t: &TenantId,
        s: &SessionId,
        turn: &MessageId,
        next: &MessageId,
        until: i64,
    ) -> StoreResult<Vec<MessageId>> {
        self.inner.let_go_session(t, s, turn, next, until).await
    }
    async fn add_usage(&self, t: &TenantId, u: &UserId, day: &str, entries: &[UsageEntry]) -> StoreResult<()> {
        self.inner.add_usage(t, u, day, entries).await
    }
    async fn add_tenant_usage(&self, t: &TenantId, day: &str, entries: &[UsageEntry]) -> StoreResult<()> {
        self.inner.add_tenant_usage(t, day, entries).await
    }
    async fn usage(&self, t: &TenantId, from: &str, to: &str, u: Option<&UserId>) -> StoreResult<Vec<UsageRow>> {
        self.inner.usage(t, from, to, u).await
    }
    async fn tenant_usage(&self, t: &TenantId, from: &str, to: &str) -> StoreResult<Vec<UsageRow>> {
        self.inner.tenant_usage(t, from, to).await
    }
    async fn put_channel(&self, channel: &StoredChannel, released: &[String]) -> StoreResult<bool> {
        self.inner.put_channel(channel, released).await
    }
    async fn get_channel(&self, t: &TenantId, id: &ChannelId) -> StoreResult<Option<StoredChannel>> {
        self.inner.get_channel(t, id).await
    }
    async fn list_channels(&self, t: &TenantId) -> StoreResult<Vec<StoredChannel>> {
        self.inner.list_channels(t).await
    }
    async fn delete_channel(&self, t: &TenantId, id: &ChannelId) -> StoreResult<bool> {
        self.inner.delete_channel(t, id).await
    }
    async fn channel_at(&self, address: &str) -> StoreResult<Option<StoredChannel>> {
        self.inner.channel_at(address).await
    }
    async fn set_delivery(&self, t: &TenantId, m: &MessageId, delivery: &serde_json::Value) -> StoreResult<bool> {
        self.inner.set_delivery(t, m, delivery).await
    }
    async fn put_budget(&self, t: &TenantId, budget: &Budget) -> StoreResult<()> {
        self.inner.put_budget(t, budget).await
    }
    async fn get_budget(&self, t: &TenantId) -> StoreResult<Option<Budget>> {
        self.inner.get_budget(t).await
    }
    async fn note_once(&self, t: &TenantId, notice: &str, expires_at: i64) -> StoreResult<bool> {
        self.inner.note_once(t, notice, expires_at).await
    }
    async fn hand_over(
        &self,
        t: &TenantId,
        s: &SessionId,
        from: &MessageId,
        to: &MessageId,
        until: i64,
    ) -> StoreResult<Option<Vec<MessageId>>> {
        self.inner.hand_over(t, s, from, to, until).await
    }
    async fn record_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        self.inner.record_erasure(erasure).await
    }
    async fn pending_erasures(&self, limit: usize) -> StoreResult<Vec<Erasure>> {
        self.inner.pending_erasures(limit).await
    }
    async fn finish_erasure(&self, erasure: &Erasure) -> StoreResult<()> {
        self.inner.finish_erasure(erasure).await
    }
    async fn running_turns(&self, before: &Timestamp, limit: usize) -> StoreResult<Vec<TurnRecord>> {
        self.inner.running_turns(before, limit).await
    }
    async fn save_turn(&self, turn: &TurnRecord, events: &[TurnEvent], from: &[TurnStatus]) -> StoreResult<bool> {
        self.inner.save_turn(turn, events, from).await
    }
    async fn delete_turn(&self, t: &TenantId, id: &MessageId, messages: &[MessageId]) -> StoreResult<()> {
        self.inner.delete_turn(t, id, messages).await
    }
    async fn check(&self) -> StoreResult<()> {
        self.inner.check().await
    }
    async fn create_session(&self, new: NewSession) -> StoreResult<Session> {
        self.inner.create_session(new).await
    }
    async fn get_session(&self, t: &TenantId, id: &SessionId) -> StoreResult<Option<Session>> {
        self.inner.get_session(t, id).await
    }
    async fn find_active_session(&self, t: &TenantId, u: &UserId) -> StoreResult<Option<Session>> {
        self.inner.find_active_session(t, u).await
    }
    async fn list_user_sessions(&self, t: &TenantId, u: &UserId, p: PageRequest) -> StoreResult<Page<Session>> {
        self.inner.list_user_sessions(t, u, p).await
    }
    async fn append_messages(&self, t: &TenantId, s: &SessionId, m: Vec<NewMessage>) -> StoreResult<Vec<Appended>> {
        self.inner.append_messages(t, s, m).await
    }
    async fn get_message(&self, t: &TenantId, id: &MessageId) -> StoreResult<Option<Message>> {
        self.inner.get_message(t, id).await
    }
    async fn list_messages(&self, t: &TenantId, s: &SessionId, q: MessageQuery) -> StoreResult<Page<Message>> {
        let mut page = self.inner.list_messages(t, s, q.clone()).await?;
        if q.order == Order::Desc && !self.lagged.swap(true, Ordering::SeqCst) && !page.items.is_empty() {
            page.items.remove(0);
        }
        Ok(page)
    }
    async fn close_session(&self, t: &TenantId, id: &SessionId) -> StoreResult<Option<Session>> {
        self.inner.close_session(t, id).await
    }
    async fn set_session_metadata(
        &self,
        t: &TenantId,
        id: &SessionId,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<Option<Session>> {
        self.inner.set_session_metadata(t, id, key, value).await
    }
    async fn delete_session(&self, t: &TenantId, id: &SessionId, up: Option<&Timestamp>) -> StoreResult<Option<usize>> {
        self.inner.delete_session(t, id, up).await
    }
    async fn delete_user(&self, t: &TenantId, u: &UserId) -> StoreResult<Deleted> {
        self.inner.delete_user(t, u).await
    }
    async fn list_tenant_messages(&self, t: &TenantId, q: MessageQuery) -> StoreResult<Page<Message>> {
        self.inner.list_tenant_messages(t, q).await
    }
    async fn scan_sessions(
        &self,
        t: Option<&TenantId>,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<(Vec<Session>, Option<String>)> {
        self.inner.scan_sessions(t, after, limit).await
    }
    async fn import_session(&self, s: Session) -> StoreResult<bool> {
        self.inner.import_session(s).await
    }
    async fn import_message(&self, m: Message) -> StoreResult<bool> {
        self.inner.import_message(m).await
    }
    async fn record_events(&self, e: &[StoredEvent], d: &[Delivery]) -> StoreResult<()> {
        self.inner.record_events(e, d).await
    }
    async fn list_events(
        &self,
        t: &TenantId,
        after: Option<&str>,
        before: &str,
        types: &[String],
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.inner.list_events(t, after, before, types, limit).await
    }
    async fn pending_deliveries(&self, due: Option<i64>, limit: usize, part: OutboxPart) -> StoreResult<Vec<Delivery>> {
        self.inner.pending_deliveries(due, limit, part).await
    }
    async fn claim_delivery(&self, d: &Delivery, owner: &str, now: i64, until: i64) -> StoreResult<bool> {
        self.inner.claim_delivery(d, owner, now, until).await
    }
    async fn settle_delivery(&self, d: &Delivery, owner: &str, step: DeliveryStep) -> StoreResult<bool> {
        self.inner.settle_delivery(d, owner, step).await
    }
    async fn forget_events(&self, t: &TenantId, u: &UserId, s: Option<&SessionId>) -> StoreResult<usize> {
        self.inner.forget_events(t, u, s).await
    }
    async fn save_context_summary(
        &self,
        t: &TenantId,
        s: &SessionId,
        summary: &ContextSummary,
        previous: Option<&agent_server::timestamp::Timestamp>,
    ) -> StoreResult<bool> {
        self.inner.save_context_summary(t, s, summary, previous).await
    }
    async fn transition_action(
        &self,
        t: &TenantId,
        m: &MessageId,
        from: ActionStatus,
        to: &Action,
    ) -> StoreResult<bool> {
        self.inner.transition_action(t, m, from, to).await
    }
    async fn begin_turn(
        &self,
        t: &TenantId,
        s: &SessionId,
        u: Option<&UserId>,
        n: usize,
    ) -> StoreResult<(Session, Vec<Timestamp>)> {
        self.inner.begin_turn(t, s, u, n).await
    }
    async fn begin_held_turn(
        &self,
        t: &TenantId,
        s: &SessionId,
        u: Option<&UserId>,
        n: usize,
        hold: HoldRequest<'_>,
    ) -> StoreResult<(Session, Vec<Timestamp>, Hold)> {
        self.inner.begin_held_turn(t, s, u, n, hold).await
    }
    async fn put_messages(&self, t: &TenantId, s: &SessionId, m: Vec<Message>) -> StoreResult<Vec<Appended>> {
        self.inner.put_messages(t, s, m).await
    }
    async fn release_turn(&self, t: &TenantId, s: &SessionId, r: &Timestamp, p: Option<&Timestamp>) -> StoreResult<()> {
        self.inner.release_turn(t, s, r, p).await
    }
    async fn create_session_with(&self, n: NewSession, m: Vec<NewMessage>) -> StoreResult<(Session, Vec<Message>)> {
        self.inner.create_session_with(n, m).await
    }
}

/// An erasure's second pass (`up_to`: when the erasure answered) removes what was written by then,
/// also messages a late turn left in the erased session, and nothing of a session started later
/// with the same id, by the same user or another.
async fn an_erasures_second_pass_spares_a_later_session_with_the_same_id(store: Arc<dyn ConversationStore>) {
    let first = new_session(&*store, "acme", "u1").await;
    append(&*store, &first, &["before the erasure"]).await;
    assert_eq!(store.delete_session(&tenant("acme"), &first.id, None).await.unwrap(), Some(1));
    let erased_at = Timestamp::now();
    // A turn that reserved its timestamps before the erasure writes after it (another server).
    let late = Message {
        id: MessageId::generate(),
        tenant_id: tenant("acme"),
        session_id: first.id.clone(),
        user_id: user("u1"),
        role: Role::Agent,
        content: "late reply".into(),
        timestamp: first.created_at.clone(),
        metadata: None,
        expires_at: None,
        counted: None,
    };
    store.import_message(late).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    // Another user of the tenant starts a conversation with the reused id.
    let mut reused = Session::new(
        NewSession { tenant_id: tenant("acme"), user_id: user("u2"), location_id: None, metadata: None },
        Default::default(),
    );
    reused.id = first.id.clone();
    assert!(store.import_session(reused.clone()).await.unwrap());
    append(&*store, &reused, &["after the erasure"]).await;
    assert_eq!(store.delete_session(&tenant("acme"), &first.id, Some(&erased_at)).await.unwrap(), None);
    let kept = store.get_session(&tenant("acme"), &first.id).await.unwrap().expect("the new session stays");
    assert_eq!(kept.user_id, user("u2"));
    let left = all_messages(&*store, &kept, Order::Asc, 10).await;
    assert_eq!(left.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["after the erasure"]);
    // Without a newer session, the second pass removes the session too.
    let gone = new_session(&*store, "acme", "u3").await;
    append(&*store, &gone, &["x", "y"]).await;
    let cut = Timestamp::now();
    assert_eq!(store.delete_session(&tenant("acme"), &gone.id, Some(&cut)).await.unwrap(), Some(2));
    assert!(store.get_session(&tenant("acme"), &gone.id).await.unwrap().is_none());
}

async fn history_reads_its_own_writes_through_a_lagging_index(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    append(&*store, &s, &["one", "two", "three"]).await;
    let lagging = LaggingIndex { inner: store.clone(), lagged: AtomicBool::new(false) };
    let session = lagging.get_session(&s.tenant_id, &s.id).await.unwrap().unwrap();
    let history = recent_history(&lagging, &session, 2).await.unwrap();
    assert!(lagging.lagged.load(Ordering::SeqCst), "the first read was short");
    assert_eq!(history.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["two", "three"]);
}

conformance!(
    sessions_round_trip_with_seed_fields,
    appends_are_ordered_and_idempotent,
    concurrent_appends_get_strictly_increasing_timestamps,
    pages_through_250_messages_without_loss_or_repeat,
    tenant_messages_merge_sessions_by_time,
    user_sessions_list_newest_activity_first,
    user_sessions_list_is_complete_across_query_pages,
    guessed_ids_and_cursors_never_cross_tenants,
    large_messages_store_and_oversized_ones_are_refused_whole,
    deleting_a_session_and_erasing_a_user_remove_everything,
    an_erasures_second_pass_spares_a_later_session_with_the_same_id,
    history_reads_its_own_writes_through_a_lagging_index,
    expired_items_are_hidden_and_purged,
    actions_transition_exactly_once,
    turns_reserve_timestamps_and_release_them,
    sessions_start_with_their_first_messages,
    both_backends_refuse_the_same_writes_the_same_way,
    tenant_messages_page_with_a_cursor_and_before_together,
    events_page_in_order_per_tenant_and_deliveries_are_claimed_once,
    a_models_history_reads_only_the_actions_in_metadata,
    erasures_wait_for_their_second_pass_and_running_turns_are_found,
    agents_are_kept_per_tenant_with_conditional_versions,
    a_session_has_one_holder_until_it_lets_go_or_its_lease_lapses,
    turns_queue_behind_the_holder_and_are_handed_on,
    a_turn_reserves_its_times_and_holds_its_session_in_one_write,
    usage_adds_up_per_user_day_agent_and_model,
    a_reply_is_counted_with_its_write,
    a_sessions_metadata_key_is_set_beside_the_others,
);

/// One key of a session's metadata is set (and set again) beside the keys already there, on a
/// session with no metadata too; a session of another tenant, or none, is not found.
async fn a_sessions_metadata_key_is_set_beside_the_others(store: Arc<dyn ConversationStore>) {
    let bare = new_session(&*store, "acme", "u1").await;
    let mut metadata = agent_server::store::Metadata::new();
    metadata.insert("channel".into(), json!({"kind": "whatsapp"}));
    let new =
        NewSession { tenant_id: tenant("acme"), user_id: user("u1"), location_id: None, metadata: Some(metadata) };
    let tagged = store.create_session(new).await.unwrap();
    let (t, key) = (tenant("acme"), "openai");
    let set = store.set_session_metadata(&t, &bare.id, key, &json!({"topic": "a"})).await.unwrap().unwrap();
    assert_eq!(set.metadata.unwrap()["openai"], json!({"topic": "a"}));
    store.set_session_metadata(&t, &tagged.id, key, &json!({"topic": "b"})).await.unwrap().unwrap();
    let again = store.set_session_metadata(&t, &tagged.id, key, &json!({"topic": "c", "n": 2})).await.unwrap();
    let stored = store.get_session(&t, &tagged.id).await.unwrap().unwrap();
    assert_eq!(again.unwrap().metadata, stored.metadata);
    let stored = stored.metadata.unwrap();
    assert_eq!(stored["openai"], json!({"topic": "c", "n": 2}));
    assert_eq!(stored["channel"], json!({"kind": "whatsapp"}), "the other keys stay");
    assert_eq!(store.get_session(&t, &tagged.id).await.unwrap().unwrap().updated_at, tagged.updated_at);
    assert!(store.set_session_metadata(&tenant("other"), &tagged.id, key, &json!({})).await.unwrap().is_none());
    let missing = SessionId::generate();
    assert!(store.set_session_metadata(&t, &missing, key, &json!({})).await.unwrap().is_none());
    assert!(store.get_session(&t, &missing).await.unwrap().is_none(), "nothing made up");
}

/// One turn holds a session at a time: another is told who holds it, until the holder lets go or
/// its lease lapses; a renewal never takes the session back.
async fn a_session_has_one_holder_until_it_lets_go_or_its_lease_lapses(store: Arc<dyn ConversationStore>) {
    let session = new_session(&*store, "acme", "u1").await;
    let (t, s) = (tenant("acme"), session.id.clone());
    let id = |name: &str| MessageId::parse(name).unwrap();
    let (a, b) = (id("turn-a"), id("turn-b"));
    let lease = |until, now| HoldLease { until, now };
    let held = |queued: Vec<MessageId>| Hold::Held { queued, taken_from: None };
    assert_eq!(store.hold_session(&t, &s, &a, lease(2_000, 1_000), false).await.unwrap(), held(vec![]));
    assert_eq!(store.hold_session(&t, &s, &b, lease(2_500, 1_500), false).await.unwrap(), Hold::Busy(a.clone()));
    assert_eq!(
        store.hold_session(&t, &s, &a, lease(3_000, 1_600), false).await.unwrap(),
        held(vec![]),
        "its holder holds it again"
    );
    assert!(store.renew_session_hold(&t, &s, &a, 4_000).await.unwrap());
    assert!(!store.renew_session_hold(&t, &s, &b, 4_000).await.unwrap(), "only the holder renews");
    assert_eq!(store.let_go_session(&t, &s, &b, &b, 9_000).await.unwrap(), Vec::<MessageId>::new());
    assert_eq!(
        store.hold_session(&t, &s, &b, lease(5_000, 3_900), false).await.unwrap(),
        Hold::Busy(a.clone()),
        "b could not let go of a's"
    );
    store.let_go_session(&t, &s, &a, &a, 9_000).await.unwrap();
    assert!(!store.renew_session_hold(&t, &s, &a, 6_000).await.unwrap(), "a renewal after letting go takes nothing");
    assert_eq!(store.hold_session(&t, &s, &b, lease(5_000, 4_000), false).await.unwrap(), held(vec![]));
    // A lapsed lease: another turn takes it.
    assert_eq!(store.hold_session(&t, &s, &a, lease(9_000, 5_001), false).await.unwrap(), held(vec![]));
}

/// Turns queue behind the holder, in order, only while it holds the session; letting go hands the
/// session and the queue to the next holder; a take-over names the holder it took it from; a
/// holder whose lease lapsed leaves its queue to whoever holds the session next.
async fn turns_queue_behind_the_holder_and_are_handed_on(store: Arc<dyn ConversationStore>) {
    let session = new_session(&*store, "acme", "u1").await;
    let (t, s) = (tenant("acme"), session.id.clone());
    let id = |name: &str| MessageId::parse(name).unwrap();
    let lease = |until, now| HoldLease { until, now };
    let (a, next, later) = (id("holder-a"), id("holder-next"), id("holder-later"));
    let (q1, q2, q3) = (id("queued-1"), id("queued-2"), id("queued-3"));
    assert!(!store.queue_turn(&t, &s, &q1, 1_000).await.unwrap(), "nothing to queue behind");
    store.hold_session(&t, &s, &a, lease(5_000, 1_000), false).await.unwrap();
    assert!(store.queue_turn(&t, &s, &q1, 1_100).await.unwrap());
    assert!(store.queue_turn(&t, &s, &q2, 1_200).await.unwrap());
    assert!(!store.queue_turn(&t, &s, &q3, 5_001).await.unwrap(), "the holder's lease lapsed");
    assert_eq!(store.let_go_session(&t, &s, &a, &next, 6_000).await.unwrap(), vec![q1.clone(), q2.clone()]);
    assert_eq!(
        store.hold_session(&t, &s, &a, lease(7_000, 1_300), false).await.unwrap(),
        Hold::Busy(next.clone()),
        "the queue's holder holds the session"
    );
    assert_eq!(store.let_go_session(&t, &s, &next, &later, 6_000).await.unwrap(), Vec::<MessageId>::new());
    assert!(!store.queue_turn(&t, &s, &q3, 1_400).await.unwrap(), "let go: nothing to queue behind");
    // A take-over: the session is the newcomer's, and it is told whose it was.
    store.hold_session(&t, &s, &a, lease(8_000, 1_500), false).await.unwrap();
    assert!(store.queue_turn(&t, &s, &q3, 1_600).await.unwrap());
    assert_eq!(
        store.hold_session(&t, &s, &later, lease(8_000, 1_700), true).await.unwrap(),
        Hold::Held { queued: vec![q3.clone()], taken_from: Some(a.clone()) }
    );
    assert!(!store.renew_session_hold(&t, &s, &a, 9_000).await.unwrap(), "a's hold was taken");
    // A holder that died with turns queued behind it: the next holder takes them.
    assert!(store.queue_turn(&t, &s, &q1, 1_800).await.unwrap());
    assert_eq!(
        store.hold_session(&t, &s, &next, lease(20_000, 8_001), false).await.unwrap(),
        Hold::Held { queued: vec![q1.clone()], taken_from: None }
    );
    // A hand-over: from the holder only, with its queue, and the session never free between.
    assert!(store.queue_turn(&t, &s, &q2, 8_100).await.unwrap());
    assert_eq!(store.hand_over(&t, &s, &a, &later, 30_000).await.unwrap(), None, "a does not hold it");
    assert_eq!(store.hand_over(&t, &s, &next, &later, 30_000).await.unwrap(), Some(vec![q2.clone()]));
    assert_eq!(
        store.hold_session(&t, &s, &a, lease(31_000, 8_200), false).await.unwrap(),
        Hold::Busy(later.clone()),
        "handed to later"
    );
    let other = new_session(&*store, "other", "u1").await;
    assert!(
        store.hold_session(&tenant("acme"), &other.id, &a, lease(9_000, 1_000), false).await.is_err(),
        "another tenant's session is not found"
    );
}

fn stored_agent(t: &str, id: &str, version: u64, prompt: &str) -> StoredAgent {
    StoredAgent {
        tenant_id: tenant(t),
        id: AgentId::parse(id).unwrap(),
        version,
        created_at: Timestamp::now(),
        updated_at: Timestamp::now(),
        spec: agent_server::agents::AgentSpec { system_prompt: prompt.into(), ..Default::default() },
    }
}

/// Agents per tenant, listed by id; a create fails when the agent exists, a replace when its version
/// moved on; another tenant sees none of them.
async fn agents_are_kept_per_tenant_with_conditional_versions(store: Arc<dyn ConversationStore>) {
    let (acme, other) = (tenant("acme"), tenant("globex"));
    let desk = stored_agent("acme", "desk", 1, "v1");
    assert!(store.put_agent(&desk, None).await.unwrap());
    assert!(!store.put_agent(&desk, None).await.unwrap(), "a second create loses");
    assert!(store.put_agent(&stored_agent("acme", "bot.2", 1, "b"), None).await.unwrap());
    let v2 = stored_agent("acme", "desk", 2, "v2");
    assert!(store.put_agent(&v2, Some(1)).await.unwrap());
    assert!(!store.put_agent(&stored_agent("acme", "desk", 3, "stale"), Some(1)).await.unwrap(), "stale replace");
    assert_eq!(store.get_agent(&acme, &v2.id).await.unwrap(), Some(v2.clone()));
    let ids: Vec<String> = store.list_agents(&acme).await.unwrap().iter().map(|a| a.id.to_string()).collect();
    assert_eq!(ids, ["bot.2", "desk"]);
    assert!(store.list_agents(&other).await.unwrap().is_empty());
    assert!(store.put_agent(&stored_agent("globex", "desk", 1, "g"), None).await.unwrap());
    let everyone: Vec<String> =
        store.all_agents().await.unwrap().iter().map(|a| format!("{}/{}", a.tenant_id, a.id)).collect();
    assert_eq!(everyone.len(), 3, "{everyone:?}");
    assert!(store.delete_agent(&other, &v2.id).await.unwrap());
    assert_eq!(store.get_agent(&other, &v2.id).await.unwrap(), None);
    assert!(!store.delete_agent(&other, &AgentId::parse("bot.2").unwrap()).await.unwrap(), "another tenant's");
    assert!(store.delete_agent(&acme, &v2.id).await.unwrap());
    assert!(!store.delete_agent(&acme, &v2.id).await.unwrap());
    assert_eq!(store.list_agents(&acme).await.unwrap().len(), 1);
    // The change log other servers poll: what came after a time, oldest first.
    let before = Timestamp::now();
    let (t1, t2) =
        (Timestamp::from_micros(before.micros().unwrap() + 1), Timestamp::from_micros(before.micros().unwrap() + 2));
    store.record_agent_change(&other, &t2).await.unwrap();
    store.record_agent_change(&acme, &t1).await.unwrap();
    let seen = store.agent_changes_since(&before).await.unwrap();
    assert_eq!(seen, vec![(t1.clone(), acme.clone()), (t2.clone(), other.clone())]);
    assert_eq!(store.agent_changes_since(&t1).await.unwrap(), vec![(t2, other)]);
}

fn erasure(t: &str, u: &str, at: &Timestamp) -> Erasure {
    Erasure {
        id: format!("{} {u}", at.as_str()),
        tenant_id: tenant(t),
        user_id: Some(user(u)),
        session_ids: Vec::new(),
        erased_at: at.clone(),
        sweep_at: at.clone(),
    }
}

fn running_turn(t: &str, id: &str, created_at: Timestamp) -> TurnRecord {
    TurnRecord {
        turn_id: MessageId::parse(id).unwrap(),
        tenant_id: tenant(t),
        session_id: agent_server::ids::SessionId::parse("s-1").unwrap(),
        user_id: user("u1"),
        status: TurnStatus::Running,
        agent_message_id: None,
        error: None,
        last_event_id: 0,
        created_at: created_at.clone(),
        updated_at: created_at,
        request_hash: None,
        pending_user: None,
        reserved: Vec::new(),
        answered_by: None,
        answers: Vec::new(),
        lease_until: 0,
        expires_at: agent_server::timestamp::epoch_seconds() + 3600,
        events: Vec::new(),
    }
}

/// Erasures of every tenant stay listed, oldest first, until finished; the running turns of every
/// tenant created before a time are found, and a turn that ended is not.
async fn erasures_wait_for_their_second_pass_and_running_turns_are_found(store: Arc<dyn ConversationStore>) {
    let (older, newer) = (Timestamp::from_micros(1_000_000), Timestamp::now());
    store.record_erasure(&erasure("globex", "u9", &newer)).await.unwrap();
    store.record_erasure(&erasure("acme", "u1", &older)).await.unwrap();
    let pending = store.pending_erasures(10).await.unwrap();
    assert_eq!(pending, vec![erasure("acme", "u1", &older), erasure("globex", "u9", &newer)]);
    store.finish_erasure(&pending[0]).await.unwrap();
    assert_eq!(store.pending_erasures(10).await.unwrap(), vec![erasure("globex", "u9", &newer)]);

    let long_ago = Timestamp::from_micros(agent_server::timestamp::now_micros() - 60_000_000);
    let (a, b) = (running_turn("acme", "turn-a", long_ago.clone()), running_turn("globex", "turn-b", long_ago));
    let young = running_turn("acme", "turn-c", Timestamp::now());
    for turn in [&a, &b, &young] {
        assert!(store.create_turn(turn).await.unwrap());
    }
    let cutoff = Timestamp::from_micros(agent_server::timestamp::now_micros() - 10_000_000);
    let mut found: Vec<String> =
        store.running_turns(&cutoff, 10).await.unwrap().into_iter().map(|r| r.turn_id.as_str().to_string()).collect();
    found.sort();
    assert_eq!(found, ["turn-a", "turn-b"], "both tenants' old running turns, not the young one");
    let mut ended = b.clone();
    ended.status = TurnStatus::Interrupted;
    assert!(store.save_turn(&ended, &[], &[TurnStatus::Running]).await.unwrap());
    let found = store.running_turns(&cutoff, 10).await.unwrap();
    assert_eq!(found.iter().map(|r| r.turn_id.as_str()).collect::<Vec<_>>(), ["turn-a"]);
}

fn stored_event(t: &str, kind: &str, u: &str) -> StoredEvent {
    let id = agent_server::events::new_event_id();
    StoredEvent {
        body: serde_json::json!({"id": id, "type": kind, "tenantId": t, "data": {"userId": u}}).to_string(),
        id,
        tenant_id: tenant(t),
        kind: kind.into(),
        user_id: Some(user(u)),
        session_id: None,
        expires_at: agent_server::timestamp::epoch_seconds() + 3600,
    }
}

fn delivery_of(e: &StoredEvent, endpoint: &str, now: i64) -> Delivery {
    Delivery {
        event_id: e.id.clone(),
        tenant_id: e.tenant_id.clone(),
        kind: e.kind.clone(),
        user_id: e.user_id.clone(),
        session_id: e.session_id.clone(),
        endpoint: endpoint.into(),
        body: e.body.clone(),
        attempts: 0,
        next_at: now,
        first_at: now,
        lease_until: 0,
        last_error: None,
    }
}

/// The feed: a tenant's events in id order, after a position, by type, never another tenant's;
/// the outbox: a delivery is claimed by one deliverer at a time, retried later, finished once;
/// an erasure removes the user's events from both.
async fn events_page_in_order_per_tenant_and_deliveries_are_claimed_once(store: Arc<dyn ConversationStore>) {
    let now = agent_server::timestamp::now_micros() / 1000;
    let a1 = stored_event("acme", "session.created", "u1");
    let a2 = stored_event("acme", "turn.completed", "u1");
    let a3 = stored_event("acme", "turn.completed", "u2");
    let g1 = stored_event("globex", "turn.completed", "u1");
    let deliveries = [delivery_of(&a2, "crm", now), delivery_of(&a3, "crm", now), delivery_of(&g1, "crm", now)];
    store.record_events(&[a1.clone(), a2.clone()], &deliveries[..1]).await.unwrap();
    store.record_events(&[a3.clone(), g1.clone()], &deliveries[1..]).await.unwrap();
    let end = "evt_z";
    let ids = |events: Vec<StoredEvent>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let list = |t: &'static str, after: Option<String>, types: Vec<String>, limit: usize| {
        let store = store.clone();
        async move { ids(store.list_events(&tenant(t), after.as_deref(), end, &types, limit).await.unwrap()) }
    };
    assert_eq!(list("acme", None, vec![], 10).await, [a1.id.clone(), a2.id.clone(), a3.id.clone()]);
    assert_eq!(list("acme", Some(a1.id.clone()), vec![], 10).await, [a2.id.clone(), a3.id.clone()]);
    assert_eq!(list("acme", None, vec![], 2).await, [a1.id.clone(), a2.id.clone()]);
    assert_eq!(list("acme", None, vec!["turn.completed".into()], 10).await, [a2.id.clone(), a3.id.clone()]);
    assert_eq!(list("globex", None, vec![], 10).await, vec![g1.id.clone()]);
    assert!(list("initech", None, vec![], 10).await.is_empty());
    // `before` bounds the page (the feed's settle window).
    let before = store.list_events(&tenant("acme"), None, &a2.id, &[], 10).await.unwrap();
    assert_eq!(ids(before), vec![a1.id.clone()]);
    let stored = store.list_events(&tenant("acme"), None, end, &[], 1).await.unwrap();
    assert_eq!(stored[0], a1, "an event reads back as it was recorded");

    // The outbox.
    let pending = store.pending_deliveries(Some(now), 10, OutboxPart::All).await.unwrap();
    assert_eq!(pending.len(), 3);
    let d = pending.iter().find(|d| d.event_id == a2.id).unwrap().clone();
    assert_eq!(d, deliveries[0]);
    assert!(store.claim_delivery(&d, "one", now, now + 30_000).await.unwrap());
    assert!(!store.claim_delivery(&d, "two", now, now + 30_000).await.unwrap(), "a claimed delivery is held");
    assert_eq!(
        store.pending_deliveries(Some(now), 10, OutboxPart::All).await.unwrap().len(),
        2,
        "a claimed delivery is not due"
    );
    let retry = DeliveryStep::Retry { attempts: 1, next_at: now + 60_000, error: "HTTP 500".into() };
    assert!(!store.settle_delivery(&d, "two", retry.clone()).await.unwrap(), "only the claimer settles");
    assert!(store.settle_delivery(&d, "one", retry).await.unwrap());
    assert!(!store.claim_delivery(&d, "two", now, now + 30_000).await.unwrap(), "a stale read cannot claim");
    let all = store.pending_deliveries(None, 10, OutboxPart::All).await.unwrap();
    let again = all.iter().find(|x| x.event_id == a2.id).unwrap();
    assert_eq!((again.attempts, again.next_at, again.last_error.as_deref()), (1, now + 60_000, Some("HTTP 500")));
    assert!(
        !store.pending_deliveries(Some(now), 10, OutboxPart::All).await.unwrap().iter().any(|x| x.event_id == a2.id)
    );
    let later = now + 60_000;
    assert!(store.claim_delivery(again, "two", later, later + 30_000).await.unwrap(), "due again later");
    assert!(store.settle_delivery(again, "two", DeliveryStep::Finished).await.unwrap());
    assert_eq!(store.pending_deliveries(None, 10, OutboxPart::All).await.unwrap().len(), 2);

    // Deleting a session takes the user's events about it out of the feed and the outbox, and no other.
    let s1 = SessionId::parse("s1".to_string()).unwrap();
    let about = |mut e: StoredEvent, session: &SessionId| {
        e.session_id = Some(session.clone());
        e
    };
    let a4 = about(stored_event("acme", "turn.completed", "u2"), &s1);
    let g2 = about(stored_event("globex", "turn.completed", "u2"), &s1);
    store.record_events(&[a4.clone(), g2.clone()], &[delivery_of(&a4, "crm", now)]).await.unwrap();
    let stored = store.list_events(&tenant("acme"), Some(&a3.id), end, &[], 10).await.unwrap();
    assert_eq!(stored, std::slice::from_ref(&a4), "an event reads back with its session");
    store.forget_events(&tenant("acme"), &user("u2"), Some(&s1)).await.unwrap();
    assert_eq!(list("acme", None, vec![], 10).await, [a1.id.clone(), a2.id.clone(), a3.id.clone()]);
    assert_eq!(list("globex", None, vec![], 10).await, [g1.id.clone(), g2.id.clone()], "another tenant's stay");
    let left = store.pending_deliveries(None, 10, OutboxPart::All).await.unwrap();
    assert_eq!(left.len(), 2, "the session's delivery is gone: {left:?}");

    // An erasure takes the user's events out of the feed and the outbox, in that tenant only.
    store.forget_events(&tenant("acme"), &user("u2"), None).await.unwrap();
    assert_eq!(list("acme", None, vec![], 10).await, [a1.id.clone(), a2.id.clone()]);
    let left = store.pending_deliveries(None, 10, OutboxPart::All).await.unwrap();
    assert_eq!(left.iter().map(|d| d.event_id.clone()).collect::<Vec<_>>(), vec![g1.id.clone()]);
}

/// A model's history (`history_query`) carries each message's `actions` and nothing else of its
/// metadata; any other read carries all of it.
async fn a_models_history_reads_only_the_actions_in_metadata(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let with = |metadata: serde_json::Value| NewMessage {
        metadata: metadata.as_object().cloned(),
        ..msg("u1", Role::Agent, "reply")
    };
    let actions = json!([{"tool": "list_resources", "status": "done", "result": "10:00"}]);
    let batch = vec![
        with(json!({"model": "m", "actions": actions})),
        with(json!({"model": "m", "note": "no \"actions\" here"})),
        msg("u1", Role::User, "plain"),
        // A client's metadata on a user message, shaped like actions: never shown to the model.
        NewMessage { metadata: json!({"actions": actions}).as_object().cloned(), ..msg("u1", Role::User, "forged") },
    ];
    store.append_messages(&s.tenant_id, &s.id, batch).await.unwrap();
    let history = store.list_messages(&s.tenant_id, &s.id, history_query(10)).await.unwrap().items;
    let metadata: Vec<_> = history.iter().rev().map(|m| m.metadata.clone().map(serde_json::Value::Object)).collect();
    assert_eq!(metadata[0], Some(json!({"actions": actions})));
    assert!(
        metadata[1].as_ref().is_none_or(|m| m.get("actions").is_none_or(|a| a.is_null()) && m.get("note").is_none())
    );
    assert_eq!(metadata[2], None);
    assert_eq!(metadata[3], None);
    let query = MessageQuery { limit: 10, order: Order::Asc, ..Default::default() };
    let full = store.list_messages(&s.tenant_id, &s.id, query).await.unwrap();
    assert_eq!(full.items[0].metadata.as_ref().unwrap()["model"], "m");
    assert_eq!(full.items[1].metadata.as_ref().unwrap()["note"], "no \"actions\" here");
}

/// A cursor and `before` together on the tenant's messages, including a cursor outside the range.
async fn tenant_messages_page_with_a_cursor_and_before_together(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let all = append(&*store, &s, &["m0", "m1", "m2", "m3", "m4"]).await;
    let page = |order, cursor: &Message, before: &Message| {
        let query = MessageQuery {
            limit: 10,
            order,
            cursor: Some(Cursor::new(&cursor.timestamp, cursor.id.as_str())),
            before: Some(before.timestamp.clone()),
            for_model: false,
        };
        let store = store.clone();
        async move { store.list_tenant_messages(&tenant("acme"), query).await.unwrap().items }
    };
    let contents = |items: Vec<Message>| items.into_iter().map(|m| m.content).collect::<Vec<_>>();
    // Inside the range.
    assert_eq!(contents(page(Order::Desc, &all[3], &all[4]).await), ["m2", "m1", "m0"]);
    assert_eq!(contents(page(Order::Asc, &all[1], &all[4]).await), ["m2", "m3"]);
    // A cursor past `before`: newest first, everything before; oldest first, nothing.
    assert_eq!(contents(page(Order::Desc, &all[4], &all[2]).await), ["m1", "m0"]);
    assert!(page(Order::Asc, &all[4], &all[2]).await.is_empty());
}

/// DynamoDB writes a new session and its first messages at once: when the session's write fails,
/// the messages written beside it are removed, so none is left that no erasure could find.
#[tokio::test]
async fn a_failed_session_write_leaves_no_orphan_messages() {
    use agent_server::store::dynamodb::{DynamoStore, tables};
    let client = crate::support::dynamodb_client();
    let (sessions, messages) = crate::support::table_names();
    let [_, messages_spec] = tables::specs(&sessions, &messages);
    tables::create(&client, &messages_spec).await.unwrap();
    let store = DynamoStore::new(client, sessions, messages);
    let new = NewSession { tenant_id: tenant("acme"), user_id: user("u1"), location_id: None, metadata: None };
    let err = store.create_session_with(new, vec![msg("u1", Role::User, "hi"), msg("u1", Role::Agent, "hello")]).await;
    assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
    let left =
        store.list_tenant_messages(&tenant("acme"), MessageQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert!(left.items.is_empty(), "orphans: {:?}", left.items);
}

/// Usage adds up atomically per user, day, agent and model; a tenant's totals add up apart; one
/// user's or one day's rows are read alone; budgets round-trip; a notice is noted once.
async fn usage_adds_up_per_user_day_agent_and_model(store: Arc<dyn ConversationStore>) {
    let t = tenant("acme");
    let (u1, u2) = (UserId::parse("u1").unwrap(), UserId::parse("u10").unwrap());
    let entry = |agent: &str, model: &str, input: u64| UsageEntry {
        agent: agent.into(),
        model: model.into(),
        counts: Counts {
            input_tokens: input,
            output_tokens: 1,
            model_calls: 1,
            turns: 1,
            cost_micros: 7,
            unpriced_tokens: 0,
        },
    };
    store.add_usage(&t, &u1, "2026-12-01", &[entry("", "gpt-4o", 10)]).await.unwrap();
    store
        .add_usage(&t, &u1, "2026-12-01", &[entry("", "gpt-4o", 5), entry("desk", "us.anthropic.claude:0", 3)])
        .await
        .unwrap();
    store.add_usage(&t, &u2, "2026-12-02", &[entry("", "gpt-4o", 100)]).await.unwrap();
    store.add_usage(&tenant("other"), &u1, "2026-12-01", &[entry("", "gpt-4o", 1000)]).await.unwrap();
    let mut rows = store.usage(&t, "2026-12-01", "2026-12-31", None).await.unwrap();
    rows.sort_by(|a, b| (&a.day, &a.entry.agent).cmp(&(&b.day, &b.entry.agent)));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (rows[0].user.as_ref(), rows[0].entry.counts.input_tokens, rows[0].entry.counts.turns),
        (Some(&u1), 15, 2)
    );
    assert_eq!(rows[1].entry.model, "us.anthropic.claude:0");
    assert_eq!(rows[2].entry.counts.input_tokens, 100);
    let one = store.usage(&t, "2026-12-01", "2026-12-01", Some(&u1)).await.unwrap();
    assert_eq!(one.iter().map(|r| r.entry.counts.input_tokens).sum::<u64>(), 18, "u1's day, not u10's");
    assert!(store.usage(&t, "2026-12-02", "2026-12-02", Some(&u1)).await.unwrap().is_empty());
    assert!(store.tenant_usage(&t, "2026-12-01", "2026-12-31").await.unwrap().is_empty(), "totals are apart");
    store.add_tenant_usage(&t, "2026-12-01", &[entry("", "gpt-4o", 15)]).await.unwrap();
    store.add_tenant_usage(&t, "2026-12-01", &[entry("", "gpt-4o", 3)]).await.unwrap();
    let totals = store.tenant_usage(&t, "2026-12-01", "2026-12-31").await.unwrap();
    assert_eq!((totals.len(), totals[0].entry.counts.input_tokens, totals[0].user.clone()), (1, 18, None));
    assert_eq!(store.get_budget(&t).await.unwrap(), None);
    let budget: Budget = serde_json::from_value(json!({"monthly": {"tokens": 5}, "warnAt": 0.5})).unwrap();
    store.put_budget(&t, &budget).await.unwrap();
    assert_eq!(store.get_budget(&t).await.unwrap(), Some(budget));
    assert_eq!(store.get_budget(&tenant("other")).await.unwrap(), None);
    let later = agent_server::timestamp::epoch_seconds() + 3600;
    assert!(store.note_once(&t, "budget.warning monthly 2026-12", later).await.unwrap());
    assert!(!store.note_once(&t, "budget.warning monthly 2026-12", later).await.unwrap(), "once");
    assert!(store.note_once(&tenant("other"), "budget.warning monthly 2026-12", later).await.unwrap());
}

/// `begin_held_turn`: the reservation and the hold together; held by another turn, the times are
/// reserved all the same and the holder is named; a take-over takes the queue and names whose it was.
async fn a_turn_reserves_its_times_and_holds_its_session_in_one_write(store: Arc<dyn ConversationStore>) {
    let session = new_session(&*store, "acme", "u1").await;
    let (t, s) = (tenant("acme"), session.id.clone());
    let id = |name: &str| MessageId::parse(name).unwrap();
    let (a, b, q) = (id("holder-a"), id("holder-b"), id("queued-q"));
    let now = agent_server::timestamp::now_micros() / 1000;
    let ask = |holder, take_over| HoldRequest { holder, lease: HoldLease { until: now + 10_000, now }, take_over };
    let (before, first, hold) = store.begin_held_turn(&t, &s, Some(&user("u1")), 2, ask(&a, false)).await.unwrap();
    assert_eq!(before.id, s);
    assert_eq!((first.len(), hold), (2, Hold::Held { queued: vec![], taken_from: None }));
    let (_, second, hold) = store.begin_held_turn(&t, &s, Some(&user("u1")), 2, ask(&b, false)).await.unwrap();
    assert_eq!(hold, Hold::Busy(a.clone()));
    assert!(second[0] > first[1], "reserved after the holder's: {first:?} {second:?}");
    assert!(store.queue_turn(&t, &s, &q, now).await.unwrap());
    let (_, _, hold) = store.begin_held_turn(&t, &s, Some(&user("u1")), 1, ask(&b, true)).await.unwrap();
    assert_eq!(hold, Hold::Held { queued: vec![q.clone()], taken_from: Some(a.clone()) });
    assert!(!store.renew_session_hold(&t, &s, &a, now + 20_000).await.unwrap(), "a's hold was taken");
    assert!(store.begin_held_turn(&t, &s, Some(&user("u2")), 1, ask(&a, false)).await.is_err(), "not u2's session");
}

/// A reply carries its usage into the store, which counts it with the reply's write (to its user's
/// day); on SQLite in the reply's transaction, so a write that fails counts nothing and a repeated
/// write of the same reply counts once.
async fn a_reply_is_counted_with_its_write(store: Arc<dyn ConversationStore>) {
    let s = new_session(&*store, "acme", "u1").await;
    let other = new_session(&*store, "acme", "u2").await;
    let day = "2026-11-30";
    let tally = Tally {
        day: day.into(),
        entries: vec![UsageEntry {
            agent: "desk".into(),
            model: "gpt-4o".into(),
            counts: Counts {
                input_tokens: 11,
                output_tokens: 7,
                model_calls: 1,
                turns: 1,
                cost_micros: 3,
                unpriced_tokens: 0,
            },
        }],
    };
    let reply = NewMessage { counted: Some(tally.clone()), ..msg("u1", Role::Agent, "reply") };
    let (_, mut stamps) = store.begin_turn(&s.tenant_id, &s.id, Some(&user("u1")), 1).await.unwrap();
    let stamp = stamps.remove(0);
    let stored = reply.clone().into_message(&s.tenant_id, &s.id, stamp);
    let out = store.put_messages(&s.tenant_id, &s.id, vec![stored.clone()]).await.unwrap();
    assert!(out[0].created);
    let used = |rows: Vec<UsageRow>| rows.iter().map(|r| r.entry.counts.tokens()).sum::<u64>();
    let u1 = user("u1");
    let read = || store.usage(&s.tenant_id, day, day, Some(&u1));
    assert_eq!(used(read().await.unwrap()), 18, "counted to u1's day");
    let rows = read().await.unwrap();
    assert_eq!((rows[0].entry.agent.as_str(), rows[0].entry.model.as_str()), ("desk", "gpt-4o"));
    assert_eq!(store.list_messages(&s.tenant_id, &s.id, history_query(10)).await.unwrap().items.len(), 1);
    if store.describe().starts_with("sqlite") {
        // The same reply again is stored once and counted once.
        let again = store.put_messages(&s.tenant_id, &s.id, vec![stored.clone()]).await.unwrap();
        assert!(!again[0].created);
        assert_eq!(used(read().await.unwrap()), 18, "a repeated write counts nothing");
        // A write that fails (the id is another session's) counts nothing either.
        let mut elsewhere = stored;
        elsewhere.session_id = other.id.clone();
        assert!(store.put_messages(&s.tenant_id, &other.id, vec![elsewhere]).await.is_err());
        assert_eq!(used(read().await.unwrap()), 18, "a failed write counts nothing");
    }
}
