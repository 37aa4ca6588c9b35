//! Full-text search over messages, shared by both stores: the query (words and "quoted phrases",
//! folded for case and accents), matching a message, its snippet and highlights, and the bounded
//! scan that serves search where there is no full-text index (DynamoDB). SQLite answers with its
//! FTS5 index instead (`sqlite/search.rs`).

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::{ConversationStore, Cursor, Message, MessageQuery, Order, PageRequest, Role, StoreError, StoreResult};
use crate::ids::{SessionId, TenantId, UserId};
use crate::timestamp::Timestamp;

/// The longest query, and the most terms in it.
pub const MAX_QUERY_CHARS: usize = 500;
pub const MAX_TERMS: usize = 16;
/// The deepest an index search pages (results); past it, narrow the search.
pub const MAX_OFFSET: usize = 10_000;
/// How long a snippet is (characters), around its first match.
pub const SNIPPET_CHARS: usize = 160;

/// One term of a query, folded: a word, or a phrase of words that must follow each other. Words
/// are what `words` makes of the text, so they hold only letters and digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Word(String),
    Phrase(Vec<String>),
}

/// Lowercase, without the accents of Latin letters (`Café` and `cafe` are the same word): the
/// folding of SQLite FTS5's `unicode61` tokenizer with `remove_diacritics 2`, so that both
/// backends find the same messages (`й` stays `й`, as FTS5 keeps it).
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut base_is_latin = false;
    for c in text.nfd() {
        if is_combining_mark(c) {
            if !base_is_latin {
                out.push(c);
            }
            continue;
        }
        base_is_latin = c <= '\u{024F}' || ('\u{1E00}'..='\u{1EFF}').contains(&c);
        out.extend(c.to_lowercase());
    }
    out.nfc().collect()
}

/// The words of a text: runs of letters and digits, each with its character range in the text and
/// its folded form.
pub fn words(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut start = None;
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i, fold(&chars[s..i].iter().collect::<String>())));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, chars.len(), fold(&chars[s..].iter().collect::<String>())));
    }
    out
}

/// Parses `q`: words and `"quoted phrases"`; everything else (punctuation, operators) separates
/// words and means nothing, so no input is a syntax error. All terms must match.
pub fn parse_query(q: &str) -> Result<Vec<Term>, String> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(format!("q is longer than {MAX_QUERY_CHARS} characters"));
    }
    let mut terms = Vec::new();
    let parts: Vec<&str> = q.split('"').collect();
    for (i, part) in parts.iter().enumerate() {
        let found: Vec<String> = words(part).into_iter().map(|(_, _, w)| w).collect();
        // A quoted part is a phrase; an unclosed quote only separates words.
        let quoted = i % 2 == 1 && i + 1 < parts.len();
        if quoted && found.len() > 1 {
            terms.push(Term::Phrase(found));
        } else {
            terms.extend(found.into_iter().map(Term::Word));
        }
    }
    terms.dedup();
    if terms.is_empty() {
        return Err("q must hold at least one word (letters or digits)".into());
    }
    if terms.len() > MAX_TERMS {
        return Err(format!("q may hold at most {MAX_TERMS} words and phrases"));
    }
    Ok(terms)
}

/// Where the terms occur in a text (character ranges), and a relevance score; `None` unless every
/// term occurs.
pub fn find(terms: &[Term], text: &str) -> Option<(f64, Vec<(usize, usize)>)> {
    let words = words(text);
    let mut ranges = Vec::new();
    let mut score = 0.0;
    for term in terms {
        let needle: Vec<&str> = match term {
            Term::Word(w) => vec![w.as_str()],
            Term::Phrase(ws) => ws.iter().map(String::as_str).collect(),
        };
        let hits: Vec<(usize, usize)> = words
            .windows(needle.len())
            .filter(|window| window.iter().zip(&needle).all(|((_, _, w), n)| w == n))
            .map(|window| (window[0].0, window[window.len() - 1].1))
            .collect();
        if hits.is_empty() {
            return None;
        }
        // Term frequency, damped, over the message's length (short messages that say it rank first).
        score += (1.0 + hits.len() as f64).ln() / (1.0 + (words.len() as f64).ln());
        ranges.extend(hits);
    }
    // Merged where they overlap (a word inside a phrase).
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Some((score, merged))
}

/// A snippet of the text around its first match, with the matches inside it as character offsets
/// into the snippet.
pub fn snippet(text: &str, ranges: &[(usize, usize)]) -> (String, Vec<[usize; 2]>) {
    let chars: Vec<char> = text.chars().collect();
    let first = ranges.first().map_or(0, |r| r.0);
    let start = if chars.len() <= SNIPPET_CHARS { 0 } else { first.saturating_sub(SNIPPET_CHARS / 4) };
    let end = (start + SNIPPET_CHARS).min(chars.len());
    let start = end.saturating_sub(SNIPPET_CHARS).min(start);
    let snippet: String = chars[start..end].iter().collect();
    let highlights =
        ranges.iter().filter(|(s, e)| *s >= start && *e <= end).map(|(s, e)| [s - start, e - start]).collect();
    (snippet, highlights)
}

/// Best first, or newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchOrder {
    #[default]
    Relevance,
    Recent,
}

/// A search: its terms and filters, always within one tenant.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub terms: Vec<Term>,
    pub user: Option<UserId>,
    pub session: Option<SessionId>,
    pub role: Option<Role>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub order: SearchOrder,
    pub limit: usize,
    pub cursor: Option<SearchCursor>,
    /// The most messages a scan reads for one request (`SEARCH_MAX_ITEMS`).
    pub max_items: usize,
}

impl SearchQuery {
    /// Whether a message passes the filters (the terms aside).
    pub fn admits(&self, m: &Message) -> bool {
        self.user.as_ref().is_none_or(|u| &m.user_id == u)
            && self.session.as_ref().is_none_or(|s| &m.session_id == s)
            && self.role.is_none_or(|r| m.role == r)
            && self.from.as_ref().is_none_or(|f| &m.timestamp >= f)
            && self.to.as_ref().is_none_or(|t| &m.timestamp <= t)
    }
}

/// One message found.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub message: Message,
    pub score: f64,
}

/// A page of results.
#[derive(Debug, Clone)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    pub next: Option<SearchCursor>,
    /// The scan stopped at its budget before it had read everything.
    pub partial: bool,
    /// `sqlite-fts5` or `scan`.
    pub backend: &'static str,
}

/// Where the next page of a search starts. It holds positions only; every read it leads to is
/// scoped by the request's tenant (and user), so a forged cursor moves within the caller's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchCursor {
    /// Results already given (the index's pages).
    #[serde(rename = "o", default, skip_serializing_if = "is_zero")]
    pub offset: usize,
    /// The session being scanned (the user's sessions are read newest first by creation).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The last message read (timestamp and id).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Cursor>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl SearchCursor {
    pub fn encode(&self) -> String {
        super::cursor::encode(self)
    }

    pub fn decode(value: &str) -> Result<Self, StoreError> {
        let invalid = super::cursor::invalid;
        let cursor: SearchCursor = super::cursor::decode(value)?;
        if let Some(p) = &cursor.position {
            // The same checks as a list cursor.
            Cursor::decode(&p.encode())?;
        }
        if cursor.offset > MAX_OFFSET {
            return Err(invalid());
        }
        Ok(cursor)
    }
}

fn rank(hits: &mut [SearchHit], order: SearchOrder) {
    match order {
        SearchOrder::Relevance => {
            hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| b.message.timestamp.cmp(&a.message.timestamp)))
        }
        SearchOrder::Recent => hits.sort_by(|a, b| b.message.timestamp.cmp(&a.message.timestamp)),
    }
}

/// Search without an index: the messages newest first (a user's sessions one after another, or
/// the tenant's messages by time), matched here, reading at most `max_items` messages per request.
/// A page ends when it holds `limit` results, the budget is spent (`partial`), or nothing is left;
/// its results are ranked among themselves.
pub async fn scan<S: ConversationStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    q: &SearchQuery,
) -> StoreResult<SearchPage> {
    let mut cursor = q.cursor.clone().unwrap_or_default();
    let mut hits = Vec::new();
    let mut read = 0usize;
    let page_size = 100.min(q.max_items.max(1));
    // The sessions to read: one (a `sessionId` filter, when it is the user's), or the user's, newest
    // first by creation (an order that new activity does not change between pages).
    let sessions: Option<Vec<SessionId>> = match (&q.session, &q.user) {
        (Some(s), user) => {
            let visible = store
                .get_session(tenant, s)
                .await?
                .is_some_and(|found| user.as_ref().is_none_or(|u| &found.user_id == u));
            Some(if visible { vec![s.clone()] } else { Vec::new() })
        }
        (None, Some(u)) => {
            let mut all = Vec::new();
            let mut page = PageRequest { limit: 100, cursor: None };
            loop {
                let found = store.list_user_sessions(tenant, u, page.clone()).await?;
                all.extend(found.items);
                match found.next {
                    Some(next) => page.cursor = Some(next),
                    None => break,
                }
            }
            all.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
            Some(all.into_iter().map(|s| s.id).collect())
        }
        (None, None) => None,
    };
    // Where the cursor left off: the index of its session (a session gone since: start over there).
    let mut index = match (&sessions, &cursor.session) {
        (Some(ids), Some(id)) => ids.iter().position(|s| s.as_str() == id).unwrap_or_else(|| {
            cursor.position = None;
            0
        }),
        _ => 0,
    };
    let finish = |mut hits: Vec<SearchHit>, next: Option<SearchCursor>, partial: bool| {
        rank(&mut hits, q.order);
        Ok(SearchPage { hits, partial: partial && next.is_some(), next, backend: "scan" })
    };
    loop {
        let query = MessageQuery {
            limit: page_size.min(q.max_items.saturating_sub(read)).max(1),
            order: Order::Desc,
            cursor: cursor.position.clone(),
            // Newer than `to` cannot match: not read (`~` sorts after every timestamp character,
            // so a message at `to` itself is read).
            before: q.to.as_ref().map(|t| Timestamp::stored(format!("{}~", t.as_str()))),
            for_model: false,
        };
        let page = match &sessions {
            Some(ids) => {
                let Some(id) = ids.get(index) else { return finish(hits, None, false) };
                cursor.session = Some(id.as_str().to_string());
                match store.list_messages(tenant, id, query).await {
                    Ok(page) => page,
                    // A session gone since the list was read: the next one.
                    Err(StoreError::NotFound(_)) => crate::store::Page { items: Vec::new(), next: None },
                    Err(e) => return Err(e),
                }
            }
            None => store.list_tenant_messages(tenant, query).await?,
        };
        // Whether this source (the session, or the tenant's messages) has nothing left after this page.
        let mut source_done = page.next.is_none();
        // Every read counts against the budget, an empty one too.
        if page.items.is_empty() {
            read += 1;
        }
        let count = page.items.len();
        for (i, m) in page.items.into_iter().enumerate() {
            // Older than `from`: nothing further in this source can match.
            if q.from.as_ref().is_some_and(|f| &m.timestamp < f) {
                source_done = true;
                break;
            }
            read += 1;
            let position = Cursor::new(m.timestamp.as_str(), m.id.as_str());
            if q.admits(&m)
                && let Some((score, _)) = find(&q.terms, &m.content)
            {
                hits.push(SearchHit { message: m, score });
            }
            if hits.len() == q.limit || read >= q.max_items {
                if i + 1 < count || !source_done {
                    cursor.position = Some(position);
                    return finish(hits, Some(cursor), read >= q.max_items);
                }
                break;
            }
        }
        if source_done {
            cursor.position = None;
            index += 1;
            cursor.session = sessions.as_ref().and_then(|ids| ids.get(index)).map(|id| id.as_str().to_string());
            let more = cursor.session.is_some();
            if !more {
                return finish(hits, None, false);
            }
            if hits.len() == q.limit || read >= q.max_items {
                return finish(hits, Some(cursor), read >= q.max_items);
            }
        } else {
            cursor.position = page.next;
            if read >= q.max_items {
                return finish(hits, Some(cursor), true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_words_and_phrases_and_never_syntax() {
        assert_eq!(
            parse_query(r#"Dentist "next Tuesday" ÉTÉ"#).unwrap(),
            vec![
                Term::Word("dentist".into()),
                Term::Phrase(vec!["next".into(), "tuesday".into()]),
                Term::Word("ete".into())
            ]
        );
        assert_eq!(parse_query(r#"a OR b* NEAR(c) "unclosed"#).unwrap().len(), 6);
        assert!(parse_query("  ?! \"\" ").is_err());
        assert!(parse_query(&(0..17).map(|i| format!("w{i} ")).collect::<String>()).is_err());
        assert_eq!(parse_query("x x x").unwrap().len(), 1, "repeated words are one term");
    }

    #[test]
    fn matching_folds_case_and_accents_and_highlights_characters() {
        let terms = parse_query(r#"cafe "rue de""#).unwrap();
        let text = "Rendez-vous au Café, 3 rue de la Paix";
        let (_, ranges) = find(&terms, text).unwrap();
        let (snip, highlights) = snippet(text, &ranges);
        let marked: Vec<String> = highlights.iter().map(|[s, e]| snip.chars().skip(*s).take(e - s).collect()).collect();
        assert_eq!(marked, ["Café", "rue de"]);
        assert!(find(&parse_query("cafes").unwrap(), text).is_none());
    }
}
