//! Search on SQLite: the FTS5 index `messages_fts` over the messages' text and scope, kept by
//! triggers in the same transactions as the messages (a deleted or erased message leaves it at
//! once), ranked with bm25. Words are folded by FTS5's `unicode61` tokenizer (case, and accents with
//! `remove_diacritics 2`), as `search::fold` folds them.

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

/// Rebuilds the index from the messages (`agent-server search reindex`, and a backup's copy, whose
/// row ids `VACUUM INTO` may have renumbered).
pub(super) fn rebuild(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch(concat!(
        "INSERT INTO messages_fts(messages_fts) VALUES ('delete-all');
         INSERT INTO messages_fts(rowid, content, scope) SELECT rowid, content, ",
        scope_sql!("messages"),
        " FROM messages;"
    ))
    .map_err(internal)
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
