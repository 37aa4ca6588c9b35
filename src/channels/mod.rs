//! Channels: a tenant's agent reached where its customers write (WhatsApp through Meta's Cloud API,
//! SMS and WhatsApp through Twilio, email through an inbound-parse webhook and SMTP). A channel
//! binds an external address (a WhatsApp phone number id, a Twilio account and number, a mailbox)
//! to a tenant and one of its agents, with the provider's credentials, which are write-only.
//!
//! A message's path, with nothing lost and nothing answered twice:
//! 1. the provider's webhook is checked (its signature), and each message is recorded in the outbox
//!    as an inbound job, keyed by the provider's message id, before the provider gets its 200 (a
//!    retried webhook records nothing new);
//! 2. a worker (`worker`) takes the job and runs a turn of the channel's agent for the channel's
//!    user (`whatsapp:<wa_id>`, `sms:<From>`), keyed by the job (a job run again replays the turn);
//! 3. the reply is recorded as an outbound job and sent, at least once, with retries and backoff;
//!    the provider's message id is recorded on the reply (`metadata.delivery`), so a job run again
//!    after a send does not send again, and the provider's receipts update it.
//!
//! Each provider is an adapter (`whatsapp`, `twilio`, `email`): its webhook's check and parse, and
//! its send.

pub mod email;
pub mod twilio;
pub mod whatsapp;
pub mod worker;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::{AgentId, ChannelId, TenantId, UserId};
use crate::timestamp::Timestamp;

/// A channel's provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Meta's WhatsApp Cloud API.
    Whatsapp,
    /// Twilio's Messages API (SMS, and WhatsApp through Twilio).
    Twilio,
    /// Email: an inbound-parse webhook in, SMTP out.
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Whatsapp => "whatsapp",
            ChannelKind::Twilio => "twilio",
            ChannelKind::Email => "email",
        }
    }
}

/// An approved WhatsApp message template, for messages outside the 24-hour service window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Template {
    pub name: String,
    /// The template's language code, e.g. `en_US`.
    pub language: String,
}

/// The body of `PUT /agent/tenants/{tenantId}/channels/{channelId}`. Credentials are write-only:
/// left out on a replace, the stored ones stay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelSpec {
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// The tenant's agent that answers (the tenant's default agent when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub agent_id: Option<AgentId>,
    /// WhatsApp: the business phone number's id (Meta's `phone_number_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// WhatsApp: the access token the replies are sent with (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// WhatsApp: the app secret that signs Meta's webhooks (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    /// WhatsApp: the token Meta's verification request must carry (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token: Option<String>,
    /// Twilio: the account's SID (`AC...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_sid: Option<String>,
    /// Twilio: the auth token that signs Twilio's webhooks and authenticates the sends (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Twilio: the number messages come to and replies go from (`+14155550100`, or
    /// `whatsapp:+14155550100`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Email: the mailbox customers write to, and replies come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Email: the SMTP server replies are sent through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Email: the SMTP port (587 for `starttls`, 465 for `tls`, 25 by default for `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Email: the SMTP user (no authentication when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Email: the SMTP password (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Email: `starttls` (the default), `tls`, or `none` (a local relay only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// Email: the secret of the inbound-parse webhook's URL,
    /// `/channels/email/{channelId}/inbound/{secret}` (16 to 256 characters; write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_secret: Option<String>,
    /// WhatsApp: approved templates for messages outside the 24-hour service window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<Template>,
    /// Sent (once) instead of an answer when the tenant's budget refuses the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_text: Option<String>,
}

const SECRETS: [&str; 6] = ["accessToken", "appSecret", "verifyToken", "authToken", "password", "inboundSecret"];

impl ChannelSpec {
    /// The stored credentials a replace leaves out are kept.
    pub fn keep_secrets(&mut self, stored: &ChannelSpec) {
        if self.kind != stored.kind {
            return;
        }
        let keep = |new: &mut Option<String>, old: &Option<String>| {
            if new.is_none() {
                new.clone_from(old);
            }
        };
        keep(&mut self.access_token, &stored.access_token);
        keep(&mut self.app_secret, &stored.app_secret);
        keep(&mut self.verify_token, &stored.verify_token);
        keep(&mut self.auth_token, &stored.auth_token);
        keep(&mut self.password, &stored.password);
        keep(&mut self.inbound_secret, &stored.inbound_secret);
    }

    /// Checks every field for its kind; the first invalid field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let text = |field: &'static str, value: &Option<String>, max: usize| -> Result<(), (&'static str, String)> {
            match value {
                None => Err((field, format!("is required for a {} channel", self.kind.as_str()))),
                Some(v) if v.is_empty() || v.len() > max || v.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                    Err((field, format!("must be 1 to {max} printable characters without spaces")))
                }
                Some(_) => Ok(()),
            }
        };
        let absent = |field: &'static str, value: &Option<String>| match value {
            Some(_) => Err((field, format!("is not a field of a {} channel", self.kind.as_str()))),
            None => Ok(()),
        };
        let whatsapp_only = [
            ("phoneNumberId", &self.phone_number_id),
            ("accessToken", &self.access_token),
            ("appSecret", &self.app_secret),
            ("verifyToken", &self.verify_token),
        ];
        let twilio_only = [("accountSid", &self.account_sid), ("authToken", &self.auth_token), ("from", &self.from)];
        let email_only = [
            ("address", &self.address),
            ("host", &self.host),
            ("username", &self.username),
            ("password", &self.password),
            ("tls", &self.tls),
            ("inboundSecret", &self.inbound_secret),
        ];
        let others: Vec<(&'static str, &Option<String>)> = match self.kind {
            ChannelKind::Whatsapp => twilio_only.into_iter().chain(email_only).collect(),
            ChannelKind::Twilio => whatsapp_only.into_iter().chain(email_only).collect(),
            ChannelKind::Email => whatsapp_only.into_iter().chain(twilio_only).collect(),
        };
        for (field, value) in others {
            absent(field, value)?;
        }
        if self.port.is_some() && self.kind != ChannelKind::Email {
            return Err(("port", format!("is not a field of a {} channel", self.kind.as_str())));
        }
        match self.kind {
            ChannelKind::Email => {
                text("address", &self.address, 254)?;
                if !self.address.as_deref().is_some_and(email::is_address) {
                    return Err(("address", "must be an email address".into()));
                }
                text("host", &self.host, 253)?;
                if let Some(u) = &self.username {
                    text("username", &Some(u.clone()), 256)?;
                }
                if self.password.as_deref().is_some_and(|p| p.len() > 256 || p.chars().any(char::is_control)) {
                    return Err(("password", "must be at most 256 printable characters".into()));
                }
                if self.password.is_some() != self.username.is_some() {
                    return Err(("password", "username and password go together".into()));
                }
                if let Some(tls) = &self.tls
                    && !["starttls", "tls", "none"].contains(&tls.as_str())
                {
                    return Err(("tls", format!("{tls:?} is not one of starttls, tls, none")));
                }
                text("inboundSecret", &self.inbound_secret, 256)?;
                if self.inbound_secret.as_deref().is_some_and(|s| s.len() < 16) {
                    return Err(("inboundSecret", "must be at least 16 characters".into()));
                }
                if !self.templates.is_empty() {
                    return Err(("templates", "are WhatsApp Cloud API templates: not for an email channel".into()));
                }
            }
            ChannelKind::Whatsapp => {
                text("phoneNumberId", &self.phone_number_id, 64)?;
                text("accessToken", &self.access_token, 4096)?;
                text("appSecret", &self.app_secret, 256)?;
                text("verifyToken", &self.verify_token, 256)?;
            }
            ChannelKind::Twilio => {
                text("accountSid", &self.account_sid, 64)?;
                text("authToken", &self.auth_token, 256)?;
                text("from", &self.from, 64)?;
                if !self.templates.is_empty() {
                    return Err(("templates", "are WhatsApp Cloud API templates: not for a twilio channel".into()));
                }
            }
        }
        if self.templates.len() > 20 {
            return Err(("templates", "at most 20".into()));
        }
        for t in &self.templates {
            if t.name.is_empty() || t.name.len() > 512 || t.language.is_empty() || t.language.len() > 16 {
                return Err(("templates", "each needs a name (1-512 characters) and a language code".into()));
            }
        }
        if let Some(f) = &self.fallback_text
            && (f.trim().is_empty() || f.chars().count() > 1600)
        {
            return Err(("fallbackText", "must be 1 to 1600 characters".into()));
        }
        Ok(())
    }
}

/// A channel as stored: its spec (with the credentials) and times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredChannel {
    pub tenant_id: TenantId,
    pub id: ChannelId,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub spec: ChannelSpec,
}

/// An external address a channel claims: exclusive to the channel, or (a WhatsApp verify token,
/// which one Meta app shares between its numbers) to the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub address: String,
    pub per_tenant: bool,
}

impl StoredChannel {
    /// The channel as the API shows it: each credential replaced by `<name>Set: true`.
    pub fn view(&self) -> Value {
        let mut body = serde_json::to_value(&self.spec).unwrap_or_else(|_| json!({}));
        if let Some(map) = body.as_object_mut() {
            for name in SECRETS {
                if map.remove(name).is_some() {
                    map.insert(format!("{name}Set"), json!(true));
                }
            }
        }
        body["id"] = json!(self.id);
        body["createdAt"] = json!(self.created_at);
        body["updatedAt"] = json!(self.updated_at);
        body
    }

    /// The addresses this channel claims: where the provider's webhooks find it.
    pub fn claims(&self) -> Vec<Claim> {
        let spec = &self.spec;
        match spec.kind {
            ChannelKind::Whatsapp => {
                let mut claims = vec![Claim {
                    address: whatsapp_address(spec.phone_number_id.as_deref().unwrap_or_default()),
                    per_tenant: false,
                }];
                if let Some(token) = &spec.verify_token {
                    claims.push(Claim { address: verify_address(token), per_tenant: true });
                }
                claims
            }
            ChannelKind::Email => {
                vec![Claim { address: email_address(spec.address.as_deref().unwrap_or_default()), per_tenant: false }]
            }
            ChannelKind::Twilio => vec![Claim {
                address: twilio_address(
                    spec.account_sid.as_deref().unwrap_or_default(),
                    spec.from.as_deref().unwrap_or_default(),
                ),
                per_tenant: false,
            }],
        }
    }

    /// The user a channel's customer is: `whatsapp:<wa_id>`, `sms:<number>`, or `whatsapp:<number>`
    /// for WhatsApp through Twilio.
    pub fn user_for(&self, from: &str) -> Option<UserId> {
        let id = match self.spec.kind {
            ChannelKind::Whatsapp => format!("whatsapp:{from}"),
            ChannelKind::Twilio if from.starts_with("whatsapp:") => from.to_string(),
            ChannelKind::Email => format!("email:{}", from.to_lowercase()),
            ChannelKind::Twilio => format!("sms:{from}"),
        };
        UserId::parse(id).ok()
    }

    /// Where a reply to `user` goes (the provider's form of the address), if the user is this
    /// channel's kind of user.
    pub fn recipient(&self, user: &UserId) -> Option<String> {
        let u = user.as_str();
        match self.spec.kind {
            ChannelKind::Whatsapp => u.strip_prefix("whatsapp:").map(str::to_string),
            ChannelKind::Email => u.strip_prefix("email:").map(str::to_string),
            ChannelKind::Twilio => {
                let via_whatsapp = self.spec.from.as_deref().is_some_and(|f| f.starts_with("whatsapp:"));
                if via_whatsapp {
                    u.starts_with("whatsapp:").then(|| u.to_string())
                } else {
                    u.strip_prefix("sms:").map(str::to_string)
                }
            }
        }
    }
}

/// The address of a WhatsApp business number.
pub fn whatsapp_address(phone_number_id: &str) -> String {
    format!("whatsapp {phone_number_id}")
}

/// The address of a verify token (its SHA-256: the token itself is never a key).
pub fn verify_address(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("whatsapp-verify {hex}")
}

/// The address of a mailbox (its case folded).
pub fn email_address(mailbox: &str) -> String {
    format!("email {}", mailbox.to_lowercase())
}

/// The address of a Twilio number of an account.
pub fn twilio_address(account_sid: &str, number: &str) -> String {
    format!("twilio {account_sid} {number}")
}

/// Where the providers are reached (`WHATSAPP_API_BASE_URL`, `TWILIO_API_BASE_URL`) and the
/// server's public URL (`PUBLIC_BASE_URL`), which Twilio signs its webhooks over.
#[derive(Debug, Clone)]
pub struct ChannelsConfig {
    pub whatsapp_base_url: String,
    pub whatsapp_api_version: String,
    pub twilio_base_url: String,
    pub public_base_url: Option<String>,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            whatsapp_base_url: "https://graph.facebook.com".into(),
            whatsapp_api_version: "v21.0".into(),
            twilio_base_url: "https://api.twilio.com".into(),
            public_base_url: None,
        }
    }
}
