//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` with the endpoint's secret, base64, as `v1,<signature>`; one per secret,
//! space-separated, so that a receiver verifies while a secret rotates.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A webhook secret: `whsec_` followed by base64 (the key is the decoded bytes).
#[derive(Clone)]
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("whsec_***")
    }
}

impl SigningKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or("a webhook secret starts with whsec_ followed by base64 (Standard Webhooks)")?;
        let key = STANDARD.decode(encoded).map_err(|_| "the part after whsec_ is not valid base64".to_string())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("a webhook secret holds 24 to 64 bytes (this one {})", key.len()));
        }
        Ok(SigningKey(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// A new random secret in the `whsec_` form.
    pub fn generate() -> String {
        let bytes = crate::random::bytes::<32>();
        format!("whsec_{}", STANDARD.encode(bytes))
    }
}

/// The `webhook-signature` header: `v1,<base64>` for each key, space-separated.
pub fn signature(keys: &[SigningKey], id: &str, timestamp: i64, body: &str) -> String {
    let content = format!("{id}.{timestamp}.{body}");
    keys.iter()
        .map(|k| format!("v1,{}", STANDARD.encode(hmac::sign(&k.0, content.as_bytes()).as_ref())))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specification_example() {
        // The example of the Standard Webhooks specification.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_secrets_not_in_the_standard_form() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err());
        assert!(SigningKey::parse(&SigningKey::generate()).is_ok());
    }
}
