//! Export and import of conversations as JSON Lines: one session, message or agent object per line,
//! each with a `type`, sessions before their messages, agents last. Streaming and constant memory, gzip when the file
//! name ends in `.gz`; importing is idempotent (each item is stored once), so an export from one
//! backend imported into another gives the same conversations.

use std::io::{BufRead, Write};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::agents::StoredAgent;
use crate::ids::TenantId;
use crate::store::{ConversationStore, Message, MessageQuery, Order, Session, StoreError};

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    Session(Session),
    Message(Message),
    /// A tenant's agent (its business API key only with `--include-secrets`).
    Agent(Box<StoredAgent>),
}

/// What an export wrote or an import stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub sessions: usize,
    pub messages: usize,
    pub agents: usize,
    /// Items an import found already stored.
    pub existing: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PortabilityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}")]
    BadLine { line: usize, message: String },
}

const PAGE: usize = 100;

/// A progress spinner on stderr when it is a terminal, nothing otherwise.
pub fn progress(what: &str) -> ProgressBar {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new_spinner();
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    }
}

fn write_line(out: &mut dyn Write, record: &Record) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// Writes every session (of one tenant, or all) and its messages, oldest first, then the agents of
/// the tenant (or of every tenant), their keys only when `with_secrets`.
pub async fn export(
    store: &dyn ConversationStore,
    tenant: Option<&TenantId>,
    out: &mut dyn Write,
    bar: &ProgressBar,
    with_secrets: bool,
) -> Result<Counts, PortabilityError> {
    let mut counts = Counts::default();
    let mut after = None;
    loop {
        let (sessions, next) = store.scan_sessions(tenant, after, PAGE).await?;
        for session in sessions {
            let (tenant_id, id) = (session.tenant_id.clone(), session.id.clone());
            write_line(out, &Record::Session(session))?;
            counts.sessions += 1;
            let mut cursor = None;
            loop {
                let query = MessageQuery { limit: PAGE, order: Order::Asc, cursor, ..Default::default() };
                let page = store.list_messages(&tenant_id, &id, query).await?;
                for m in page.items {
                    write_line(out, &Record::Message(m))?;
                    counts.messages += 1;
                }
                bar.set_position((counts.sessions + counts.messages) as u64);
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let agents = match tenant {
        Some(tenant) => store.list_agents(tenant).await?,
        None => store.all_agents().await?,
    };
    for agent in agents {
        let agent = if with_secrets { agent } else { agent.without_key() };
        write_line(out, &Record::Agent(Box::new(agent)))?;
        counts.agents += 1;
    }
    out.flush()?;
    Ok(counts)
}

/// Stores every line's item unless it is already stored.
pub async fn import(
    store: &dyn ConversationStore,
    input: &mut dyn BufRead,
    bar: &ProgressBar,
) -> Result<Counts, PortabilityError> {
    let mut counts = Counts::default();
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line)
            .map_err(|e| PortabilityError::BadLine { line: number, message: e.to_string() })?;
        let created = match record {
            Record::Session(s) => {
                let created = store.import_session(s).await?;
                counts.sessions += usize::from(created);
                created
            }
            Record::Message(m) => {
                let created = store.import_message(m).await?;
                counts.messages += usize::from(created);
                created
            }
            Record::Agent(a) => {
                // Servers running on this store drop what they cached of the tenant's agents.
                let created = store.put_agent(&a, None).await?;
                if created {
                    crate::agents::manage::note_change(store, &a.tenant_id).await?;
                }
                counts.agents += usize::from(created);
                created
            }
        };
        counts.existing += usize::from(!created);
        bar.inc(1);
    }
    Ok(counts)
}
