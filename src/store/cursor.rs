//! Opaque page cursors: the position of the last item a caller saw.
//!
//! A cursor holds only a position (a timestamp and an id), never a tenant or a key of its own: every
//! query that uses one is still scoped by the tenant (and session) of the request, so a forged cursor
//! can at most move within the caller's own data.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort value of the last item seen (a message timestamp, or a session's `updatedAt`).
    #[serde(rename = "t")]
    pub timestamp: String,
    /// The id of the last item seen.
    #[serde(rename = "i")]
    pub id: String,
}

impl Cursor {
    pub fn new(timestamp: impl Into<String>, id: impl Into<String>) -> Self {
        Self { timestamp: timestamp.into(), id: id.into() }
    }

    pub fn encode(&self) -> String {
        encode(self)
    }

    pub fn decode(value: &str) -> Result<Self, StoreError> {
        let cursor: Cursor = decode(value)?;
        if crate::timestamp::parse_micros(&cursor.timestamp).is_none()
            || crate::ids::MessageId::parse(cursor.id.clone()).is_err()
        {
            return Err(invalid());
        }
        Ok(cursor)
    }
}

/// The answer to a cursor that is not one of ours.
pub(crate) fn invalid() -> StoreError {
    StoreError::Invalid("cursor is not valid: use the Link header of the previous page".into())
}

/// A cursor as opaque text: its JSON, base64url.
pub(crate) fn encode<T: Serialize>(value: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// The cursor `encode` made, or `invalid` (at most 1 KB is read).
pub(crate) fn decode<T: DeserializeOwned>(value: &str) -> Result<T, StoreError> {
    if value.len() > 1024 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(value).map_err(|_| invalid())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let c = Cursor::new("2026-11-25T10:00:00.000001Z", "abc");
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("not-a-cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(b"{\"t\":\"x\",\"i\":\"y\"}")).is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(b"{\"t\":\"2026-11-25T10:00:00Z\",\"i\":\"a b\"}")).is_err());
    }
}
