//! Identifiers that arrive from outside (headers, paths, bodies), parsed once at the edge.
//!
//! A value of one of these types is known to be 1..=128 printable characters with no whitespace or
//! control characters, so it can be used as a DynamoDB key or an SQL parameter without further checks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest id we accept, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_CHARS} characters")]
    TooLong,
    #[error("must contain only printable characters without spaces")]
    NotPrintable,
    #[error("must be at most 64 characters")]
    AgentTooLong,
    #[error("must contain only letters, digits, '.', '_' and '-'")]
    AgentCharacters,
}

fn check(value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    // Nearly every id is printable ASCII: one pass over the bytes (ids are checked on every read).
    if value.len() <= MAX_ID_CHARS && value.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Ok(());
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(IdError::TooLong);
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdError::NotPrintable);
    }
    Ok(())
}

/// An agent's or a channel's id: 1 to 64 of `[A-Za-z0-9._-]`.
fn check_slug(value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > 64 {
        return Err(IdError::AgentTooLong);
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(IdError::AgentCharacters);
    }
    Ok(())
}

/// An id type: a `String` checked by `check` (by default the printable-id rule) when parsed.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        id_type!($(#[$doc])* $name, check);
    };
    ($(#[$doc:meta])* $name:ident, $check:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                $check(&value)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A tenant: the business whose data this is.
    TenantId
);
id_type!(
    /// A user of one tenant.
    UserId
);
id_type!(
    /// A location of one tenant (optional on a session).
    LocationId
);
id_type!(
    /// A conversation session.
    SessionId
);
id_type!(
    /// One stored message.
    MessageId
);

impl SessionId {
    /// A new time-ordered session id (UUIDv7).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl MessageId {
    /// A new time-ordered message id (UUIDv7).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

/// The `Idempotency-Key` header: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &str) -> Option<Self> {
        (!value.is_empty() && value.len() <= 255 && value.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| IdempotencyKey(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_refuses_bad_ones() {
        assert!(TenantId::parse("acme-corp_1:eu").is_ok());
        assert!(TenantId::parse("ünïcode").is_ok());
        assert_eq!(TenantId::parse(""), Err(IdError::Empty));
        assert_eq!(TenantId::parse("a b"), Err(IdError::NotPrintable));
        assert_eq!(TenantId::parse("a\u{0}b"), Err(IdError::NotPrintable));
        assert_eq!(TenantId::parse("x".repeat(129)), Err(IdError::TooLong));
        assert!(TenantId::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn generated_ids_sort_by_creation() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert!(a.as_str() < b.as_str());
    }
}

id_type!(
    /// A tenant's agent: 1 to 64 of `[A-Za-z0-9._-]`.
    AgentId,
    check_slug
);
id_type!(
    /// A tenant's channel (a WhatsApp number, a Twilio number, a mailbox): 1 to 64 of `[A-Za-z0-9._-]`.
    ChannelId,
    check_slug
);
