//! Search on SQLite: the FTS5 index `messages_fts` over the messages' text, kept by triggers in the
//! same transactions as the messages (a deleted or erased message leaves it at once), ranked with
//! bm25. Words are folded by FTS5's `unicode61` tokenizer (case, and accents with
//! `remove_diacritics 2`), as `search::fold` folds them.

use rusqlite::{Connection, params};

use super::internal;
use super::rows::message_from_row;
use crate::ids::TenantId;
use crate::store::StoreResult;
use crate::store::search::{SearchCursor, SearchHit, SearchOrder, SearchPage, SearchQuery, Term};

/// The index, its triggers, and its first build from the messages already stored.
pub(super) const SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    content, content='messages', content_rowid='rowid', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
END;
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
";

/// Rebuilds the index from the messages (`agent-server search reindex`, and a backup's copy, whose
/// row ids `VACUUM INTO` may have renumbered).
pub(super) fn rebuild(conn: &Connection) -> StoreResult<()> {
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')", []).map(|_| ()).map_err(internal)
}

/// The FTS5 query for parsed terms: each word or phrase quoted (they hold only letters and digits,
/// and a quote would be doubled), all required. User input never reaches FTS5's syntax.
fn match_expression(terms: &[Term]) -> String {
    let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
    terms
        .iter()
        .map(|t| match t {
            Term::Word(w) => quote(w),
            Term::Phrase(ws) => quote(&ws.join(" ")),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn search(conn: &Connection, tenant: &TenantId, q: &SearchQuery) -> StoreResult<SearchPage> {
    let offset = q.cursor.as_ref().map_or(0, |c| c.offset);
    let order = match q.order {
        SearchOrder::Relevance => "rank, m.timestamp DESC",
        SearchOrder::Recent => "m.timestamp DESC, m.id DESC",
    };
    let sql = format!(
        "SELECT m.id, m.tenant_id, m.session_id, m.user_id, m.content, m.role, m.timestamp, m.metadata, m.expires_at, \
         bm25(messages_fts) AS rank \
         FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid \
         WHERE messages_fts MATCH ?1 AND m.tenant_id = ?2 AND (?3 IS NULL OR m.user_id = ?3) \
         AND (?4 IS NULL OR m.session_id = ?4) AND (?5 IS NULL OR m.role = ?5) \
         AND (?6 IS NULL OR m.timestamp >= ?6) AND (?7 IS NULL OR m.timestamp <= ?7) \
         AND (m.expires_at IS NULL OR m.expires_at > unixepoch()) \
         ORDER BY {order} LIMIT ?8 OFFSET ?9"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(internal)?;
    let rows = stmt
        .query_map(
            params![
                match_expression(&q.terms),
                tenant.as_str(),
                q.user.as_ref().map(|u| u.as_str()),
                q.session.as_ref().map(|s| s.as_str()),
                q.role.map(|r| r.as_str()),
                q.from,
                q.to,
                q.limit as i64 + 1,
                offset as i64
            ],
            |r| Ok((message_from_row(r)?, r.get::<_, f64>(9)?)),
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(internal)?;
    let more = rows.len() > q.limit;
    let hits = rows
        .into_iter()
        .take(q.limit)
        // bm25 is lower for better matches; the answer's score is higher for better ones.
        .map(|(message, rank)| SearchHit { message, score: -rank })
        .collect::<Vec<_>>();
    let next = more.then(|| SearchCursor { offset: offset + q.limit, ..Default::default() });
    Ok(SearchPage { hits, next, partial: false, backend: "sqlite-fts5" })
}
