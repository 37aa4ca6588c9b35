//! SQLite keeps every acknowledged write when the process is killed with SIGKILL mid-write.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use agent_server::ids::{MessageId, SessionId, TenantId, UserId};
use agent_server::store::sqlite::SqliteStore;
use agent_server::store::{ConversationStore, MessageQuery, NewMessage, NewSession, Order, Role};

const CHILD_DB: &str = "AGENT_SERVER_DURABILITY_CHILD_DB";
/// The child's test name in this binary, for `--exact`.
const WRITER_CHILD: &str = "sqlite_durability::writer_child";

/// The child: appends messages forever, printing each id once the append has returned.
#[tokio::test]
#[ignore = "run by sqlite_survives_kill_9 as a child process"]
async fn writer_child() {
    let path = std::env::var(CHILD_DB).expect("only run as a child of sqlite_survives_kill_9");
    let store = SqliteStore::open(path).unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    let user = UserId::parse("u1").unwrap();
    let s = store
        .create_session(NewSession {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            location_id: None,
            metadata: None,
        })
        .await
        .unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "session {}", s.id).unwrap();
    out.flush().unwrap();
    for i in 0.. {
        let id = MessageId::generate();
        let m = NewMessage {
            id: id.clone(),
            user_id: user.clone(),
            role: Role::User,
            content: format!("m{i}"),
            metadata: None,
            counted: None,
        };
        store.append_messages(&tenant, &s.id, vec![m]).await.unwrap();
        writeln!(out, "ack {id}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test]
async fn sqlite_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", WRITER_CHILD, "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut session = None;
    let mut acked = HashSet::new();
    while acked.len() < 300 {
        let line = lines.next().expect("child output").unwrap();
        // The test harness may print its own text before ours on the same line.
        if let Some(id) = line.split_once("session ").map(|(_, id)| id) {
            session = Some(SessionId::parse(id).unwrap());
        } else if let Some(id) = line.strip_prefix("ack ") {
            acked.insert(id.to_string());
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write
    child.wait().unwrap();
    let store = SqliteStore::open(&db).unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    let page = store
        .list_messages(
            &tenant,
            &session.unwrap(),
            MessageQuery { limit: 100_000, order: Order::Asc, ..Default::default() },
        )
        .await
        .unwrap();
    let stored: HashSet<String> = page.items.iter().map(|m| m.id.to_string()).collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost after kill -9: {lost:?}");
    assert!(stored.len() >= acked.len());
}

#[tokio::test]
async fn the_purge_deletes_expired_rows_in_batches() {
    use agent_server::store::ConversationStore;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    let user = UserId::parse("u1").unwrap();
    let s = store
        .create_session(NewSession {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            location_id: None,
            metadata: None,
        })
        .await
        .unwrap();
    let past = agent_server::timestamp::epoch_seconds() - 1;
    for i in 0..1200 {
        let m = agent_server::store::Message {
            id: MessageId::generate(),
            tenant_id: tenant.clone(),
            session_id: s.id.clone(),
            user_id: user.clone(),
            content: format!("old {i}"),
            role: Role::User,
            timestamp: agent_server::timestamp::now(),
            metadata: None,
            expires_at: Some(past),
            counted: None,
        };
        store.import_message(m).await.unwrap();
    }
    assert_eq!(store.purge_expired().await.unwrap(), 1200);
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    assert!(store.get_session(&tenant, &s.id).await.unwrap().is_some(), "the live session stays");
}

#[tokio::test]
async fn the_wal_stays_bounded_under_sustained_writes() {
    use agent_server::store::ConversationStore;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let store = std::sync::Arc::new(SqliteStore::open(&db).unwrap());
    let tenant = TenantId::parse("acme").unwrap();
    let user = UserId::parse("u1").unwrap();
    let s = store
        .create_session(NewSession {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            location_id: None,
            metadata: None,
        })
        .await
        .unwrap();
    let big = "x".repeat(4000);
    // Four writers of 100 KB transactions that never pause (a background checkpoint must not starve
    // behind them), and a sampler of the WAL's size.
    let writers = (0..4).map(|_| {
        let (store, tenant, sid, user, big) = (store.clone(), tenant.clone(), s.id.clone(), user.clone(), big.clone());
        tokio::spawn(async move {
            for _ in 0..100 {
                let batch = (0..25)
                    .map(|_| NewMessage {
                        id: MessageId::generate(),
                        user_id: user.clone(),
                        role: Role::User,
                        content: big.clone(),
                        metadata: None,
                        counted: None,
                    })
                    .collect();
                store.append_messages(&tenant, &sid, batch).await.unwrap();
            }
        })
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, wal) = (done.clone(), dir.path().join("w.db-wal"));
        tokio::spawn(async move {
            let mut max_wal = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                max_wal = max_wal.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            max_wal
        })
    };
    futures::future::try_join_all(writers).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_wal = sampler.await.unwrap();
    // 10,000 messages of 4 KB is 40 MB of pages; the WAL is checkpointed and restarted along the way.
    assert!(max_wal < 32 * 1024 * 1024, "WAL grew to {max_wal} bytes");
}

/// The database, its WAL and shared-memory files, and a backup of it are readable by their owner
/// only, whatever the umask (conversations are personal data).
#[cfg(unix)]
#[tokio::test]
async fn the_database_its_wal_and_its_backups_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/agent.db");
    let store = SqliteStore::open(&db).unwrap();
    let (tenant, user) = (TenantId::parse("t1").unwrap(), UserId::parse("u1").unwrap());
    let s = store
        .create_session(NewSession {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            location_id: None,
            metadata: None,
        })
        .await
        .unwrap();
    let m = NewMessage {
        id: MessageId::generate(),
        user_id: user,
        role: Role::User,
        content: "private".into(),
        metadata: None,
        counted: None,
    };
    store.append_messages(&tenant, &s.id, vec![m]).await.unwrap();
    let backup = dir.path().join("backup.db");
    store.backup_to(backup.clone()).await.unwrap();
    let wal = dir.path().join("data/agent.db-wal");
    let shm = dir.path().join("data/agent.db-shm");
    for file in [&db, &wal, &shm, &backup] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
}

/// Files that were there before, with a wider mode (a database, its WAL and shared memory from an
/// earlier run, an export or a backup target someone created), are owner-only once we write them.
#[cfg(unix)]
#[tokio::test]
async fn files_that_existed_with_a_wider_mode_become_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    std::fs::write(&db, b"").unwrap();
    let wal = dir.path().join("agent.db-wal");
    let shm = dir.path().join("agent.db-shm");
    let backup = dir.path().join("backup.db");
    let export = dir.path().join("export.jsonl");
    std::fs::write(&wal, b"").unwrap();
    std::fs::write(&shm, b"").unwrap();
    std::fs::write(&backup, b"").unwrap();
    std::fs::write(&export, b"old").unwrap();
    let wide = |file: &std::path::Path| std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for file in [&db, &wal, &shm, &backup, &export] {
        wide(file);
    }
    let store = SqliteStore::open(&db).unwrap();
    store.backup_to(backup.clone()).await.unwrap();
    drop(store);
    let env = [("STORAGE", "sqlite"), ("SQLITE_PATH", db.to_str().unwrap())];
    let out = crate::support::cli(dir.path(), &["export", "--out", export.to_str().unwrap()], &env);
    assert!(out.status.success(), "{}", crate::support::text(&out));
    for file in [&db, &wal, &shm, &backup, &export] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
}

/// `.env` is read from the working directory only, never from a parent folder.
#[test]
fn only_the_working_directorys_env_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("nested");
    std::fs::create_dir(&nested).unwrap();
    std::fs::write(dir.path().join(".env"), "STORAGE=not-a-backend\n").unwrap();
    let out = crate::support::cli(&nested, &["tables", "iam-policy"], &[]);
    assert!(out.status.success(), "the parent's .env was read: {}", crate::support::text(&out));
    std::fs::write(nested.join(".env"), "STORAGE=not-a-backend\n").unwrap();
    let out = crate::support::cli(&nested, &["tables", "iam-policy"], &[]);
    assert!(!out.status.success(), "the working directory's .env is read");
    assert!(crate::support::text(&out).contains("STORAGE"), "{}", crate::support::text(&out));
}
