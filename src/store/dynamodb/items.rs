//! Sessions and messages as DynamoDB items, and JSON as attribute values.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Number, Value};

use super::Item;
use crate::ids::{LocationId, MessageId, SessionId, TenantId, UserId};
use crate::store::{Message, Metadata, Role, Session, StoreError, StoreResult};
use crate::timestamp::Timestamp;

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// JSON to a DynamoDB attribute value, applying DynamoDB's rules for numbers.
pub(crate) fn to_attribute(value: &Value) -> StoreResult<AttributeValue> {
    Ok(match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => {
            crate::store::check_storable(value).map_err(|e| StoreError::Invalid(format!("metadata: {e}")))?;
            AttributeValue::N(n.to_string())
        }
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attribute).collect::<StoreResult<_>>()?),
        Value::Object(map) => AttributeValue::M(to_attribute_map(map)?),
    })
}

fn to_attribute_map(map: &Metadata) -> StoreResult<HashMap<String, AttributeValue>> {
    map.iter().map(|(k, v)| Ok((k.clone(), to_attribute(v)?))).collect()
}

/// A DynamoDB attribute value to JSON (sets become arrays, binary becomes base64 text).
fn from_attribute(value: &AttributeValue) -> Value {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match value {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number(n),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::L(items) => Value::Array(items.iter().map(from_attribute).collect()),
        AttributeValue::M(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), from_attribute(v))).collect()),
        AttributeValue::Ss(items) => Value::Array(items.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(items) => Value::Array(items.iter().map(|n| number(n)).collect()),
        AttributeValue::B(b) => Value::String(b64(b.as_ref())),
        AttributeValue::Bs(items) => Value::Array(items.iter().map(|b| Value::String(b64(b.as_ref()))).collect()),
        _ => Value::Null,
    }
}

fn number(n: &str) -> Value {
    if let Ok(i) = n.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = n.parse::<u64>() {
        return Value::Number(u.into());
    }
    n.parse::<f64>().ok().and_then(Number::from_f64).map_or_else(|| Value::String(n.to_string()), Value::Number)
}

fn get_s(item: &Item, name: &str) -> StoreResult<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::Internal(format!("stored item has no string attribute {name}"))),
    }
}

fn get_opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn get_metadata(item: &Item) -> Option<Metadata> {
    match item.get("metadata") {
        Some(AttributeValue::M(m)) => Some(m.iter().map(|(k, v)| (k.clone(), from_attribute(v))).collect()),
        _ => None,
    }
}

/// `expiresAt`: epoch seconds (DynamoDB's TTL format).
fn get_epoch(item: &Item) -> Option<i64> {
    match item.get("expiresAt") {
        Some(AttributeValue::N(n)) => n.parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} is not valid"))
}

pub(crate) fn session_item(s: &Session) -> StoreResult<Item> {
    let mut item = HashMap::from([
        ("id".to_string(), AttributeValue::S(s.id.to_string())),
        ("tenantId".to_string(), AttributeValue::S(s.tenant_id.to_string())),
        ("userId".to_string(), AttributeValue::S(s.user_id.to_string())),
        ("isActive".to_string(), AttributeValue::Bool(s.is_active)),
        ("createdAt".to_string(), AttributeValue::S(s.created_at.clone().into())),
        ("updatedAt".to_string(), AttributeValue::S(s.updated_at.clone().into())),
    ]);
    if let Some(l) = &s.location_id {
        item.insert("locationId".into(), AttributeValue::S(l.to_string()));
    }
    if let Some(m) = &s.metadata {
        item.insert("metadata".into(), AttributeValue::M(to_attribute_map(m)?));
    }
    if let Some(t) = &s.last_message_at {
        item.insert("lastMessageAt".into(), AttributeValue::S(t.into()));
    }
    if let Some(at) = s.expires_at {
        item.insert("expiresAt".into(), AttributeValue::N(at.to_string()));
    }
    if let Some(summary) = &s.context_summary {
        item.insert("contextSummary".into(), summary_attribute(summary)?);
    }
    Ok(item)
}

/// A context summary as a map attribute (`contextSummary`).
pub(crate) fn summary_attribute(summary: &crate::store::ContextSummary) -> StoreResult<AttributeValue> {
    let value = serde_json::to_value(summary).map_err(|e| StoreError::Internal(format!("context summary: {e}")))?;
    to_attribute(&value)
}

pub(crate) fn session_from_item(item: Item) -> StoreResult<Session> {
    Ok(Session {
        id: SessionId::parse(get_s(&item, "id")?).map_err(|_| bad("session id"))?,
        tenant_id: TenantId::parse(get_s(&item, "tenantId")?).map_err(|_| bad("tenant id"))?,
        user_id: UserId::parse(get_s(&item, "userId")?).map_err(|_| bad("user id"))?,
        location_id: get_opt_s(&item, "locationId").and_then(|l| LocationId::parse(l).ok()),
        is_active: matches!(item.get("isActive"), Some(AttributeValue::Bool(true))),
        created_at: Timestamp::stored(get_s(&item, "createdAt")?),
        updated_at: Timestamp::stored(get_s(&item, "updatedAt")?),
        last_message_at: get_opt_s(&item, "lastMessageAt").map(Timestamp::stored),
        metadata: get_metadata(&item),
        expires_at: get_epoch(&item),
        context_summary: item.get("contextSummary").and_then(|v| serde_json::from_value(from_attribute(v)).ok()),
    })
}

pub(crate) fn message_item(m: &Message) -> StoreResult<Item> {
    let mut item = HashMap::from([
        ("id".to_string(), AttributeValue::S(m.id.to_string())),
        ("tenantId".to_string(), AttributeValue::S(m.tenant_id.to_string())),
        ("sessionId".to_string(), AttributeValue::S(m.session_id.to_string())),
        ("userId".to_string(), AttributeValue::S(m.user_id.to_string())),
        ("content".to_string(), AttributeValue::S(m.content.clone())),
        ("role".to_string(), AttributeValue::S(m.role.as_str().to_string())),
        ("timestamp".to_string(), AttributeValue::S(m.timestamp.clone().into())),
    ]);
    if let Some(md) = &m.metadata {
        item.insert("metadata".into(), AttributeValue::M(to_attribute_map(md)?));
    }
    if let Some(at) = m.expires_at {
        item.insert("expiresAt".into(), AttributeValue::N(at.to_string()));
    }
    Ok(item)
}

pub(crate) fn message_from_item(item: Item) -> StoreResult<Message> {
    Ok(Message {
        id: MessageId::parse(get_s(&item, "id")?).map_err(|_| bad("message id"))?,
        tenant_id: TenantId::parse(get_s(&item, "tenantId")?).map_err(|_| bad("tenant id"))?,
        session_id: SessionId::parse(get_s(&item, "sessionId")?).map_err(|_| bad("session id"))?,
        user_id: UserId::parse(get_s(&item, "userId")?).map_err(|_| bad("user id"))?,
        content: get_s(&item, "content")?,
        role: Role::parse(&get_s(&item, "role")?).ok_or_else(|| bad("role"))?,
        timestamp: Timestamp::stored(get_s(&item, "timestamp")?),
        metadata: get_metadata(&item),
        expires_at: get_epoch(&item),
        counted: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_round_trips_through_attribute_values() {
        let v = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -7}});
        assert_eq!(from_attribute(&to_attribute(&v).unwrap()), v);
    }

    #[test]
    fn numbers_outside_dynamodb_range_are_refused() {
        assert!(to_attribute(&json!(1e300)).is_err());
        assert!(to_attribute(&json!(1e-200)).is_err());
        assert!(to_attribute(&json!(1e100)).is_ok());
    }
}
