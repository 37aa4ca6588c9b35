//! WhatsApp through Meta's Cloud API: the webhook's signature (`X-Hub-Signature-256`, HMAC-SHA256
//! of the raw body with the app secret), its payload (messages, contacts and statuses under
//! `entry[].changes[].value`), and the send (`POST {base}/{version}/{phone_number_id}/messages`).

use serde_json::{Value, json};

use super::worker::{Inbound, Receipt, SendError};

/// Whether `header` (`sha256=<hex>`) is the signature of `body` with `app_secret` (constant-time).
pub fn signed(app_secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else { return false };
    let Some(tag) = decode_hex(hex) else { return false };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, app_secret.as_bytes());
    aws_lc_rs::hmac::verify(&key, body, &tag).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// What one `value` of a webhook holds for one business number.
#[derive(Debug, Default)]
pub struct Change {
    pub phone_number_id: String,
    pub messages: Vec<Inbound>,
    pub receipts: Vec<Receipt>,
}

/// The changes of a webhook body, by business number (`metadata.phone_number_id`).
pub fn changes(body: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    let entries = body["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
    for entry in entries {
        for change in entry["changes"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let value = &change["value"];
            let Some(number) = value["metadata"]["phone_number_id"].as_str() else { continue };
            let mut c = Change { phone_number_id: number.to_string(), ..Default::default() };
            let contacts = value["contacts"].as_array().map(Vec::as_slice).unwrap_or_default();
            for m in value["messages"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let (Some(from), Some(id)) = (m["from"].as_str(), m["id"].as_str()) else { continue };
                let kind = m["type"].as_str().unwrap_or("unknown");
                let name = contacts
                    .iter()
                    .find(|k| k["wa_id"].as_str() == Some(from))
                    .and_then(|k| k["profile"]["name"].as_str())
                    .map(str::to_string);
                c.messages.push(Inbound {
                    from: from.to_string(),
                    provider_id: id.to_string(),
                    text: (kind == "text").then(|| m["text"]["body"].as_str().unwrap_or_default().to_string()),
                    kind: kind.to_string(),
                    profile_name: name,
                    thread: Value::Null,
                });
            }
            for s in value["statuses"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let (Some(id), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else { continue };
                let error = s["errors"][0]["title"].as_str().or(s["errors"][0]["message"].as_str()).map(str::to_string);
                c.receipts.push(Receipt {
                    provider_id: id.to_string(),
                    status: status.to_string(),
                    message: s["biz_opaque_callback_data"].as_str().map(str::to_string),
                    error,
                });
            }
            out.push(c);
        }
    }
    out
}

/// Sends a text (or, outside the service window, a template) to `to`; the provider's message id.
/// `callback` comes back on the message's status webhooks (`biz_opaque_callback_data`).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    version: &str,
    phone_number_id: &str,
    token: &str,
    to: &str,
    content: Content<'_>,
    callback: &str,
) -> Result<String, SendError> {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "biz_opaque_callback_data": callback,
    });
    match content {
        Content::Text(text) => {
            body["type"] = json!("text");
            body["text"] = json!({"body": text, "preview_url": false});
        }
        Content::Template(t) => {
            body["type"] = json!("template");
            body["template"] = json!({"name": t.name, "language": {"code": t.language}});
        }
    }
    let url = format!("{}/{version}/{phone_number_id}/messages", base.trim_end_matches('/'));
    let response = client.post(url).bearer_auth(token).json(&body).send().await.map_err(SendError::from_reqwest)?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let why = answer["error"]["message"].as_str().unwrap_or("no error message").to_string();
        return Err(SendError::from_status(status.as_u16(), format!("WhatsApp API {status}: {why}")));
    }
    answer["messages"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| SendError::Permanent("WhatsApp API answered without a message id".into()))
}

/// What is sent.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    Text(&'a str),
    Template(&'a super::Template),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_checked_over_the_raw_body() {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"secret");
        let tag = aws_lc_rs::hmac::sign(&key, b"{\"a\":1}");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert!(signed("secret", b"{\"a\":1}", Some(&format!("sha256={hex}"))));
        assert!(!signed("secret", b"{\"a\":2}", Some(&format!("sha256={hex}"))));
        assert!(!signed("other", b"{\"a\":1}", Some(&format!("sha256={hex}"))));
        assert!(!signed("secret", b"{\"a\":1}", None));
        assert!(!signed("secret", b"{\"a\":1}", Some("sha256=zz")));
    }
}
