//! Search on SQLite: the FTS5 index `messages_fts` over the messages' text and scope, ranked with
//! bm25. Words are folded by FTS5's `unicode61` tokenizer (case, and accents with `remove_diacritics
//! 2`), as `search::fold` folds them.
//!
//! New messages are indexed in batches, not in the transaction that stores them: FTS5 writes a
//! segment per transaction, which cost a turn about 170 µs of CPU (BENCHMARKS.md), while a batch
//! of a hundred messages costs each a fraction of that. `messages_fts_mark.upto` is the highest row
//! id indexed; the store's background thread indexes what lies above it every 200 ms, and every
//! search first indexes whatever is still pending, so a search sees every message stored before it.
//! Deletions leave the index at once (a trigger in the deleting transaction), so erased text is
//! never found.

use rusqlite::{Connection, params};

use super::internal;
use super::rows::message_from_row;
use crate::ids::TenantId;
use crate::store::StoreResult;
use crate::store::search::{MAX_OFFSET, SearchCursor, SearchHit, SearchOrder, SearchPage, SearchQuery, Term};

/// A message's scope as index tokens: its tenant, its user within the tenant, its session within
/// the tenant, and its role. A search names its scope in the same tokens, so the index itself keeps
/// to one tenant (or user) instead of a join sifting every tenant's matches.
macro_rules! scope_sql {
    ($row:literal) => {
        concat!(
            "'t' || lower(hex(",
            $row,
            ".tenant_id)) || ' u' || lower(hex(",
            $row,
            ".tenant_id || char(10) || ",
            $row,
            ".user_id)) || ' s' || lower(hex(",
            $row,
            ".tenant_id || char(10) || ",
            $row,
            ".session_id)) || ' r' || ",
            $row,
            ".role"
        )
    };
}

/// The index (contentless: the text stays in `messages` alone), its triggers, and its first build
/// from the messages already stored.
pub(super) const SCHEMA: &str = concat!(
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
        content, scope, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content, scope) VALUES (new.rowid, new.content, ",
    scope_sql!("new"),
    ");
    END;
    CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
        DELETE FROM messages_fts WHERE rowid = old.rowid;
    END;
    CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        DELETE FROM messages_fts WHERE rowid = old.rowid;
        INSERT INTO messages_fts(rowid, content, scope) VALUES (new.rowid, new.content, ",
    scope_sql!("new"),
    ");
    END;
    INSERT INTO messages_fts(rowid, content, scope) SELECT rowid, content, ",
    scope_sql!("messages"),
    " FROM messages;"
);

/// Version 7: indexing moves out of the messages' transactions (see the module's comment). The
/// index was complete under version 6's triggers, so the mark starts at the newest message. A new
/// message's row id is one past the highest in the table, so the mark is kept at or below that
/// highest on every delete: a row id freed at the top and taken again is then above the mark and
/// indexed again.
pub(super) const SCHEMA_V7: &str = concat!(
    "DROP TRIGGER IF EXISTS messages_fts_insert;
    DROP TRIGGER IF EXISTS messages_fts_delete;
    DROP TRIGGER IF EXISTS messages_fts_update;
    CREATE TABLE IF NOT EXISTS messages_fts_mark (id INTEGER PRIMARY KEY CHECK (id = 0), upto INTEGER NOT NULL);
    INSERT OR REPLACE INTO messages_fts_mark (id, upto) VALUES (0, coalesce((SELECT max(rowid) FROM messages), 0));
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        DELETE FROM messages_fts WHERE rowid = old.rowid AND old.rowid <= (SELECT upto FROM messages_fts_mark);
        UPDATE messages_fts_mark SET upto = coalesce((SELECT max(rowid) FROM messages), 0)
        WHERE upto > coalesce((SELECT max(rowid) FROM messages), 0);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
    WHEN old.rowid <= (SELECT upto FROM messages_fts_mark) BEGIN
        DELETE FROM messages_fts WHERE rowid = old.rowid;
        INSERT INTO messages_fts(rowid, content, scope) VALUES (new.rowid, new.content, ",
    scope_sql!("new"),
    ");
    END;"
);

/// Messages indexed per transaction by the background thread, so that it holds the write lock for
/// a millisecond or two at a time.
pub(super) const BATCH: usize = 100;

/// Indexes up to `limit` messages above the mark, in one transaction; returns how many.
pub(super) fn index_pending(conn: &mut Connection, limit: usize) -> StoreResult<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(internal)?;
    let upto: i64 = tx.query_row("SELECT upto FROM messages_fts_mark", [], |r| r.get(0)).map_err(internal)?;
    let last: Option<i64> = tx
        .query_row(
            "SELECT max(rowid) FROM (SELECT rowid FROM messages WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)",
            params![upto, limit as i64],
            |r| r.get(0),
        )
        .map_err(internal)?;
    let Some(last) = last else { return Ok(0) };
    let n = tx
        .prepare_cached(concat!(
            "INSERT INTO messages_fts(rowid, content, scope) SELECT rowid, content, ",
            scope_sql!("messages"),
            " FROM messages WHERE rowid > ?1 AND rowid <= ?2"
        ))
        .and_then(|mut s| s.execute(params![upto, last]))
        .map_err(internal)?;
    tx.execute("UPDATE messages_fts_mark SET upto = ?1", params![last]).map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(n)
}

/// Whether messages above the mark wait to be indexed.
pub(super) fn has_pending(conn: &Connection) -> StoreResult<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE rowid > (SELECT upto FROM messages_fts_mark))",
        [],
        |r| r.get(0),
    )
    .map_err(internal)
}

/// Rebuilds the index from the messages (`agent-server search reindex`, and a backup's copy, whose
/// row ids `VACUUM INTO` may have renumbered).
pub(super) fn rebuild(conn: &Connection) -> StoreResult<()> {
    // A failed statement rolls the whole rebuild back (the transaction ends when dropped).
    let tx = conn.unchecked_transaction().map_err(internal)?;
    tx.execute_batch(concat!(
        "INSERT INTO messages_fts(messages_fts) VALUES ('delete-all');
         INSERT INTO messages_fts(rowid, content, scope) SELECT rowid, content, ",
        scope_sql!("messages"),
        " FROM messages;
         UPDATE messages_fts_mark SET upto = coalesce((SELECT max(rowid) FROM messages), 0);"
    ))
    .map_err(internal)?;
    tx.commit().map_err(internal)
}

/// How many of the newest matches a best-first search ranks.
const RANKED: usize = 5_000;

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The FTS5 query: the scope tokens, then each word or phrase quoted (they hold only letters and
/// digits, and a quote would be doubled), all required. User input never reaches FTS5's syntax.
fn match_expression(tenant: &TenantId, q: &SearchQuery) -> String {
    let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
    let mut parts: Vec<String> = q
        .terms
        .iter()
        .map(|t| match t {
            Term::Word(w) => format!("content : {}", quote(w)),
            Term::Phrase(ws) => format!("content : {}", quote(&ws.join(" "))),
        })
        .collect();
    // The narrowest scope token last: FTS5 then seeks through the longer lists by its rows.
    parts.push(format!("scope : {}", quote(&format!("t{}", hex(tenant.as_str())))));
    if let Some(role) = q.role {
        parts.push(format!("scope : {}", quote(&format!("r{}", role.as_str()))));
    }
    if let Some(user) = &q.user {
        parts.push(format!(
            "scope : {}",
            quote(&format!("u{}", hex(&format!("{}\n{}", tenant.as_str(), user.as_str()))))
        ));
    }
    if let Some(session) = &q.session {
        parts.push(format!(
            "scope : {}",
            quote(&format!("s{}", hex(&format!("{}\n{}", tenant.as_str(), session.as_str()))))
        ));
    }
    parts.join(" AND ")
}

pub(super) fn search(conn: &Connection, tenant: &TenantId, q: &SearchQuery) -> StoreResult<SearchPage> {
    let offset = q.cursor.as_ref().map_or(0, |c| c.offset);
    // Relevance: bm25 on the text alone; recent: the newest stored first (row ids grow as messages
    // are stored). Without time filters the index ranks and pages by itself and only the page is
    // read from `messages`; with them, every match in the scope is read so that pages stay full.
    let (inner, outer) = match q.order {
        SearchOrder::Relevance => ("rank, rowid DESC", "f.rank, f.rowid DESC"),
        SearchOrder::Recent => ("rowid DESC", "f.rowid DESC"),
    };
    let columns =
        "m.id, m.tenant_id, m.session_id, m.user_id, m.content, m.role, m.timestamp, m.metadata, m.expires_at";
    let live = "(m.expires_at IS NULL OR m.expires_at > unixepoch())";
    let expression = match_expression(tenant, q);
    let (limit, skip) = (q.limit as i64 + 1, offset as i64);
    let read = |r: &rusqlite::Row<'_>| Ok((message_from_row(r)?, r.get::<_, f64>(9)?));
    let rows = if q.from.is_some() || q.to.is_some() {
        let sql = format!(
            "SELECT {columns}, f.rank FROM (SELECT rowid, bm25(messages_fts, 1.0, 0.0) AS rank FROM messages_fts \
             WHERE messages_fts MATCH ?1) f JOIN messages m ON m.rowid = f.rowid \
             WHERE (?4 IS NULL OR m.timestamp >= ?4) AND (?5 IS NULL OR m.timestamp <= ?5) AND {live} \
             ORDER BY {outer} LIMIT ?2 OFFSET ?3"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
        stmt.query_map(params![expression, limit, skip, q.from, q.to], read)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    } else {
        // Best first ranks the newest `RANKED` matches: bm25 is computed for every match it orders,
        // and a common word has tens of thousands in a tenant. (Newest first needs no ranking.)
        let window = match q.order {
            SearchOrder::Relevance => format!(
                "AND rowid >= coalesce((SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?1 \
                 ORDER BY rowid DESC LIMIT 1 OFFSET {RANKED}), 0)"
            ),
            SearchOrder::Recent => String::new(),
        };
        let sql = format!(
            "SELECT {columns}, f.rank FROM (SELECT rowid, bm25(messages_fts, 1.0, 0.0) AS rank FROM messages_fts \
             WHERE messages_fts MATCH ?1 {window} ORDER BY {inner} LIMIT ?2 OFFSET ?3) f \
             JOIN messages m ON m.rowid = f.rowid WHERE {live} ORDER BY {outer}"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
        stmt.query_map(params![expression, limit, skip], read)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    }
    .map_err(internal)?;
    let more = rows.len() > q.limit;
    // bm25 is lower for better matches; the answer's score is higher for better ones.
    let hits: Vec<SearchHit> =
        rows.into_iter().take(q.limit).map(|(message, rank)| SearchHit { message, score: -rank }).collect();
    let next_offset = offset + q.limit;
    let next = (more && next_offset <= MAX_OFFSET).then(|| SearchCursor { offset: next_offset, ..Default::default() });
    Ok(SearchPage { hits, next, partial: false, backend: "sqlite-fts5" })
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, params};

    use super::{has_pending, index_pending};

    fn store_message(conn: &Connection, id: &str, content: &str) -> i64 {
        conn.execute(
            "INSERT INTO messages (id, tenant_id, session_id, user_id, content, role, timestamp) \
             VALUES (?1, 't', 's', 'u', ?2, 'user', ?1)",
            params![id, content],
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    fn found(conn: &Connection, word: &str) -> Vec<i64> {
        let mut stmt =
            conn.prepare("SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?1 ORDER BY rowid").unwrap();
        stmt.query_map(params![format!("content : \"{word}\"")], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    fn database(dir: &std::path::Path) -> Connection {
        let path = dir.join("store.db");
        let mut conn = Connection::open(&path).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        conn
    }

    #[test]
    fn new_messages_are_found_once_indexed_and_deleted_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = database(dir.path());
        store_message(&conn, "m1", "alpha one");
        let second = store_message(&conn, "m2", "beta two");
        assert!(has_pending(&conn).unwrap());
        assert!(found(&conn, "alpha").is_empty(), "indexing happens in batches, not in the write");
        assert_eq!(index_pending(&mut conn, 100).unwrap(), 2);
        assert!(!has_pending(&conn).unwrap());
        assert_eq!(found(&conn, "beta"), vec![second]);

        // The newest message deleted: its row id is free and the next message takes it again.
        conn.execute("DELETE FROM messages WHERE id = 'm2'", []).unwrap();
        assert!(found(&conn, "beta").is_empty(), "a deletion leaves the index at once");
        let third = store_message(&conn, "m3", "gamma three");
        assert_eq!(third, second, "SQLite reuses the freed row id");
        assert!(has_pending(&conn).unwrap(), "the reused row id is above the mark");
        assert_eq!(index_pending(&mut conn, 100).unwrap(), 1);
        assert_eq!(found(&conn, "gamma"), vec![third]);
        assert!(found(&conn, "beta").is_empty());

        // A message deleted before it was indexed is never indexed.
        store_message(&conn, "m4", "delta four");
        conn.execute("DELETE FROM messages WHERE id = 'm4'", []).unwrap();
        assert_eq!(index_pending(&mut conn, 100).unwrap(), 0);
        assert!(found(&conn, "delta").is_empty());

        // Batches stop at their limit and the rest follows.
        for i in 0..5 {
            store_message(&conn, &format!("n{i}"), "epsilon");
        }
        assert_eq!(index_pending(&mut conn, 3).unwrap(), 3);
        assert_eq!(index_pending(&mut conn, 3).unwrap(), 2);
        assert_eq!(found(&conn, "epsilon").len(), 5);
    }

    #[test]
    fn a_version_6_database_keeps_its_index_and_indexes_later_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let mut conn = database(dir.path());
            // Back to version 6: the insert trigger indexes in the write.
            conn.execute_batch("DROP TABLE messages_fts_mark; PRAGMA user_version = 5;").unwrap();
            conn.execute_batch(
                "DROP TRIGGER messages_fts_delete; DROP TRIGGER messages_fts_update; DROP TABLE messages_fts;",
            )
            .unwrap();
            super::super::schema::migrate_to(&mut conn, &path, 6).unwrap();
            store_message(&conn, "old", "kappa");
            assert_eq!(found(&conn, "kappa").len(), 1, "version 6 indexes in the write");
        }
        let mut conn = database(dir.path());
        assert!(!has_pending(&conn).unwrap(), "what version 6 indexed is not indexed again");
        assert_eq!(found(&conn, "kappa").len(), 1);
        store_message(&conn, "new", "kappa");
        assert_eq!(index_pending(&mut conn, 100).unwrap(), 1);
        assert_eq!(found(&conn, "kappa").len(), 2);
    }
}
