//! Item size accounting shared by both backends, so that both refuse the same oversized messages
//! before anything is written.

use serde_json::Value;

use super::{Message, Metadata};

/// DynamoDB's maximum item size, in bytes (names and values, UTF-8).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Whether DynamoDB can store a JSON value as it is (both backends apply the same rules, so a value
/// is accepted or refused the same way everywhere): numbers within DynamoDB's range, map keys not empty.
pub fn check_storable(value: &Value) -> Result<(), String> {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let a = f.abs();
            if !f.is_finite() || a >= 1e126 || (a != 0.0 && a < 1e-130) {
                return Err(format!("number {n} is outside DynamoDB's range (1e-130 to 1e125)"));
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_storable),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.is_empty() {
                return Err("an empty key is not allowed".to_string());
            }
            check_storable(v)
        }),
        _ => Ok(()),
    }
}

/// DynamoDB's size of a JSON value stored as an attribute value.
pub(crate) fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 1,
        Value::Number(n) => n.to_string().len().div_ceil(2) + 1,
        Value::String(s) => s.len(),
        Value::Array(items) => 3 + items.iter().map(|v| 1 + value_bytes(v)).sum::<usize>(),
        Value::Object(map) => 3 + map_bytes(map) + map.len(),
    }
}

fn map_bytes(map: &Metadata) -> usize {
    map.iter().map(|(k, v)| k.len() + value_bytes(v)).sum()
}

/// Refuses a message that either backend could not store: metadata DynamoDB cannot hold, or an
/// item over the storage limit (DynamoDB's, applied on both backends).
pub fn check_message(m: &Message) -> Result<(), super::StoreError> {
    if let Some(metadata) = &m.metadata {
        for value in metadata.values() {
            check_storable(value).map_err(|e| super::StoreError::Invalid(format!("metadata: {e}")))?;
        }
    }
    check_size(m)
}

/// Refuses a message over the storage limit (DynamoDB's item limit, applied on both backends).
pub fn check_size(m: &Message) -> Result<(), super::StoreError> {
    let size = message_item_bytes(m);
    if size > MAX_ITEM_BYTES {
        return Err(super::StoreError::TooLarge(format!(
            "message {} is {size} bytes; the storage limit is {MAX_ITEM_BYTES} bytes per message",
            m.id
        )));
    }
    Ok(())
}

/// The size of a message item as DynamoDB counts it (our extra attributes included).
pub fn message_item_bytes(m: &Message) -> usize {
    let strings = [
        ("id", m.id.as_str()),
        ("tenantId", m.tenant_id.as_str()),
        ("sessionId", m.session_id.as_str()),
        ("userId", m.user_id.as_str()),
        ("content", m.content.as_str()),
        ("role", m.role.as_str()),
        ("timestamp", m.timestamp.as_str()),
    ];
    let base: usize = strings.iter().map(|(k, v)| k.len() + v.len()).sum();
    let metadata = m.metadata.as_ref().map_or(0, |md| "metadata".len() + 3 + map_bytes(md) + md.len());
    // room for `expiresAt` (a number) that retention may add
    base + metadata + "expiresAt".len() + 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_strings_by_utf8_bytes() {
        assert_eq!(value_bytes(&Value::String("é".into())), 2);
        assert_eq!(value_bytes(&serde_json::json!({"ab": "cd"})), 3 + 4 + 1);
    }
}
