//! SMS and WhatsApp through Twilio: the webhook's signature (`X-Twilio-Signature`: base64 of
//! HMAC-SHA1, keyed with the auth token, over the public URL followed by each form parameter's name
//! and value in name order), the form Twilio posts, and the send (the Messages resource, basic auth).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::worker::{Inbound, Receipt, SendError};

/// The form of a webhook, as name and value pairs.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Whether `header` is Twilio's signature of a request to `url` with `form` (constant-time).
pub fn signed(auth_token: &str, url: &str, form: &[(String, String)], header: Option<&str>) -> bool {
    let Some(tag) = header.and_then(|h| STANDARD.decode(h.trim()).ok()) else { return false };
    let mut pairs: Vec<&(String, String)> = form.iter().collect();
    pairs.sort();
    let mut data = url.to_string();
    for (k, v) in pairs {
        data.push_str(k);
        data.push_str(v);
    }
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    aws_lc_rs::hmac::verify(&key, data.as_bytes(), &tag).is_ok()
}

/// The message of an inbound webhook (`MessageSid`, `From`, `Body`, `NumMedia`, `ProfileName`).
pub fn inbound(form: &[(String, String)]) -> Option<Inbound> {
    let id = field(form, "MessageSid").or(field(form, "SmsSid"))?;
    let from = field(form, "From")?;
    let media = field(form, "NumMedia").and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    let body = field(form, "Body").unwrap_or_default();
    let (text, kind) = if media > 0 && body.is_empty() { (None, "media") } else { (Some(body.to_string()), "text") };
    Some(Inbound {
        from: from.to_string(),
        provider_id: id.to_string(),
        text,
        kind: kind.to_string(),
        profile_name: field(form, "ProfileName").map(str::to_string),
        thread: Value::Null,
    })
}

/// A status callback (`MessageSid`, `MessageStatus`, `ErrorCode`), for the reply `message`.
pub fn receipt(form: &[(String, String)], message: Option<String>) -> Option<Receipt> {
    let status = field(form, "MessageStatus").or(field(form, "SmsStatus"))?;
    Some(Receipt {
        provider_id: field(form, "MessageSid").or(field(form, "SmsSid"))?.to_string(),
        status: match status {
            "undelivered" => "failed".to_string(),
            other => other.to_string(),
        },
        message,
        error: field(form, "ErrorCode").map(|c| format!("Twilio error {c}")),
    })
}

/// Sends `text` from `from` to `to`; the provider's message id (`sid`). Twilio posts the message's
/// statuses to `status_callback`.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    account_sid: &str,
    auth_token: &str,
    from: &str,
    to: &str,
    text: &str,
    status_callback: Option<&str>,
) -> Result<String, SendError> {
    let url = format!("{}/2010-04-01/Accounts/{account_sid}/Messages.json", base.trim_end_matches('/'));
    let mut params = vec![("To", to), ("From", from), ("Body", text)];
    if let Some(callback) = status_callback {
        params.push(("StatusCallback", callback));
    }
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let response = client
        .post(url)
        .basic_auth(account_sid, Some(auth_token))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(SendError::from_reqwest)?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let why = answer["message"].as_str().unwrap_or("no error message").to_string();
        return Err(SendError::from_status(status.as_u16(), format!("Twilio API {status}: {why}")));
    }
    answer["sid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| SendError::Permanent("Twilio API answered without a message sid".into()))
}

/// The empty TwiML answer: the reply goes out through the REST API, not in the webhook's answer.
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's documented example (its security page): this URL, these parameters and this token
    /// sign to this value.
    #[test]
    fn twilios_documented_example_verifies() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ];
        let form: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(signed("12345", url, &form, Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=")));
        assert!(!signed("12346", url, &form, Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=")));
    }
}
