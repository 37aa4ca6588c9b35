//! Email: an inbound-parse webhook in (the common form of such services: `from`, `to`, `subject`,
//! `text`, `Message-ID`, `In-Reply-To`, `References`; the URL carries the channel's secret) and
//! SMTP out, with `lettre` (a well-kept client with STARTTLS and TLS): a reply is threaded with
//! `In-Reply-To` and `References` and its own `Message-ID`.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::{Value, json};

use super::StoredChannel;
use super::worker::{Inbound, SendError};

/// Whether `text` is one email address (`local@domain`, no spaces or brackets).
pub fn is_address(text: &str) -> bool {
    text.parse::<lettre::Address>().is_ok()
}

/// The addresses in a header such as `Ana <ana@example.com>, bob@example.com`, lowercased.
pub fn addresses(header: &str) -> Vec<String> {
    header
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let inner = match (part.rfind('<'), part.rfind('>')) {
                (Some(a), Some(b)) if a < b => &part[a + 1..b],
                _ => part,
            };
            let inner = inner.trim();
            is_address(inner).then(|| inner.to_lowercase())
        })
        .collect()
}

/// A message id without its angle brackets.
fn bare_id(id: &str) -> String {
    id.trim().trim_start_matches('<').trim_end_matches('>').to_string()
}

/// The inbound message of a parsed email, with its threading (kept for the reply).
pub fn inbound(fields: &[(String, String)]) -> Option<Inbound> {
    let field = |name: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let from = addresses(field("from")?).into_iter().next()?;
    let subject = field("subject").unwrap_or_default().to_string();
    let text = field("text").unwrap_or_default().trim().to_string();
    let message_id = field("Message-ID").map(bare_id).filter(|id| !id.is_empty()).unwrap_or_else(|| {
        // Without a Message-ID, the message itself is its identity (a retry is the same message).
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{from}\u{1f}{subject}\u{1f}{text}").as_bytes(),
        );
        digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    });
    let references = field("References").unwrap_or_default().split_whitespace().map(bare_id).collect::<Vec<_>>();
    Some(Inbound {
        from,
        provider_id: message_id.clone(),
        text: (!text.is_empty()).then_some(text),
        kind: "text".into(),
        profile_name: None,
        thread: json!({"subject": subject, "messageId": message_id, "references": references}),
    })
}

/// `Re: <subject>`, once.
fn reply_subject(subject: &str) -> String {
    let s = subject.trim();
    if s.is_empty() {
        "Re: your message".into()
    } else if s.len() >= 3 && s[..3].eq_ignore_ascii_case("re:") {
        s.to_string()
    } else {
        format!("Re: {s}")
    }
}

/// Sends `text` to `to` from the channel's mailbox, threaded after the message `thread` describes;
/// `id` becomes the reply's `Message-ID` (`<id@agent-server>`), which is returned.
pub async fn send(
    channel: &StoredChannel,
    to: &str,
    text: &str,
    thread: &Value,
    id: &str,
) -> Result<String, SendError> {
    let spec = &channel.spec;
    let permanent = |m: String| SendError::Permanent(m);
    let from: lettre::message::Mailbox =
        spec.address.as_deref().unwrap_or_default().parse().map_err(|e| permanent(format!("from: {e}")))?;
    let to: lettre::message::Mailbox = to.parse().map_err(|e| permanent(format!("to: {e}")))?;
    let domain = spec.address.as_deref().and_then(|a| a.split('@').nth(1)).unwrap_or("agent-server");
    let message_id = format!("<{id}@{domain}>");
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(reply_subject(thread["subject"].as_str().unwrap_or_default()))
        .message_id(Some(message_id.clone()))
        .header(ContentType::TEXT_PLAIN);
    if let Some(parent) = thread["messageId"].as_str() {
        let mut references: Vec<String> = thread["references"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|r| format!("<{r}>"))
            .collect();
        references.push(format!("<{parent}>"));
        builder = builder.in_reply_to(format!("<{parent}>")).references(references.join(" "));
    }
    let email = builder.body(text.to_string()).map_err(|e| permanent(format!("the reply: {e}")))?;
    let host = spec.host.as_deref().unwrap_or_default();
    let transport = match spec.tls.as_deref().unwrap_or("starttls") {
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map(|b| b.port(spec.port.unwrap_or(465))),
        "none" => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(spec.port.unwrap_or(25))),
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map(|b| b.port(spec.port.unwrap_or(587))),
    }
    .map_err(|e| permanent(format!("SMTP {host}: {e}")))?;
    let transport = match (&spec.username, &spec.password) {
        (Some(u), Some(p)) => transport.credentials(Credentials::new(u.clone(), p.clone())),
        _ => transport,
    };
    let transport = transport.timeout(Some(Duration::from_secs(15))).build();
    match transport.send(email).await {
        Ok(_) => Ok(message_id),
        Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("SMTP {host}: {e}"))),
        Err(e) => Err(SendError::Transient(format!("SMTP {host}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_headers_and_subjects_get_one_re() {
        assert_eq!(
            addresses("Ana <Ana@Example.com>, bob@example.com, not an address"),
            ["ana@example.com", "bob@example.com"]
        );
        assert_eq!(reply_subject("Order 7"), "Re: Order 7");
        assert_eq!(reply_subject("RE: Order 7"), "RE: Order 7");
        assert_eq!(reply_subject(""), "Re: your message");
    }
}
