//! Table provisioning: the two tables of the original server's DynamoDB guide (docs/origin.md),
//! defined once and used to create, verify, and print them as CloudFormation and as a
//! least-privilege IAM policy.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableDescription, TableStatus, TimeToLiveSpecification,
};

pub const TENANT_USER_INDEX: &str = "TenantUserIndex";
pub const SESSION_TIMESTAMP_INDEX: &str = "SessionTimestampIndex";
pub const TENANT_TIMESTAMP_INDEX: &str = "TenantTimestampIndex";

/// The actions `serve` uses: exactly the guide's IAM policy (Scan is listed there; we never call it
/// on a request path).
pub const SERVE_ACTIONS: [&str; 6] = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:Scan",
];

/// The actions the `tables` commands use in addition.
pub const PROVISIONING_ACTIONS: [&str; 4] =
    ["dynamodb:CreateTable", "dynamodb:DescribeTable", "dynamodb:UpdateTimeToLive", "dynamodb:DescribeTimeToLive"];

/// The attribute DynamoDB's TTL reads (epoch seconds), when `MESSAGE_TTL_DAYS` is set.
pub const TTL_ATTRIBUTE: &str = "expiresAt";

/// One global secondary index (projection ALL, as in the guide).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub name: &'static str,
    pub hash: &'static str,
    pub range: &'static str,
}

/// One table of the guide's schema. Every key attribute is a string.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The CloudFormation logical id.
    pub logical_id: &'static str,
    pub name: String,
    pub hash: &'static str,
    pub range: Option<&'static str>,
    /// Attribute definitions, in the guide's order.
    pub attributes: Vec<&'static str>,
    pub indexes: Vec<IndexSpec>,
}

/// The guide's sessions and messages tables under the configured names.
pub fn specs(sessions_table: &str, messages_table: &str) -> [TableSpec; 2] {
    [
        TableSpec {
            logical_id: "SessionsTable",
            name: sessions_table.to_string(),
            hash: "id",
            range: Some("tenantId"),
            attributes: vec!["id", "tenantId", "userId"],
            indexes: vec![IndexSpec { name: TENANT_USER_INDEX, hash: "tenantId", range: "userId" }],
        },
        TableSpec {
            logical_id: "MessagesTable",
            name: messages_table.to_string(),
            hash: "id",
            range: None,
            attributes: vec!["id", "sessionId", "timestamp", "tenantId"],
            indexes: vec![
                IndexSpec { name: SESSION_TIMESTAMP_INDEX, hash: "sessionId", range: "timestamp" },
                IndexSpec { name: TENANT_TIMESTAMP_INDEX, hash: "tenantId", range: "timestamp" },
            ],
        },
    ]
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("key schema element has its required fields")
}

fn key_schema(hash: &str, range: Option<&str>) -> Vec<KeySchemaElement> {
    let mut keys = vec![key(hash, KeyType::Hash)];
    if let Some(r) = range {
        keys.push(key(r, KeyType::Range));
    }
    keys
}

/// Why a provisioning command failed, in one line that names the table and the action.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProvisionError(pub String);

fn describe_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    action: &str,
    table: &str,
    e: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> ProvisionError {
    let code = e.code().unwrap_or("").to_string();
    if code == "AccessDeniedException" {
        return ProvisionError(format!("permission denied: dynamodb:{action} on table {table} is needed"));
    }
    ProvisionError(format!("dynamodb:{action} on table {table} failed: {}", DisplayErrorContext(&e)))
}

/// Creates the table when it is missing, waits until it and its indexes are ACTIVE, and checks its
/// shape. Returns true when the table was created, false when it already existed with the right shape.
pub async fn create(client: &Client, spec: &TableSpec) -> Result<bool, ProvisionError> {
    let attributes = spec.attributes.iter().map(|a| {
        AttributeDefinition::builder()
            .attribute_name(*a)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("attribute definition has its required fields")
    });
    let indexes = spec.indexes.iter().map(|i| {
        GlobalSecondaryIndex::builder()
            .index_name(i.name)
            .set_key_schema(Some(key_schema(i.hash, Some(i.range))))
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .expect("index has its required fields")
    });
    let result = client
        .create_table()
        .table_name(&spec.name)
        .set_attribute_definitions(Some(attributes.collect()))
        .set_key_schema(Some(key_schema(spec.hash, spec.range)))
        .set_global_secondary_indexes(Some(indexes.collect()))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    let created = match result {
        Ok(_) => true,
        Err(e) if e.code() == Some("ResourceInUseException") => false,
        Err(e) => return Err(describe_error("CreateTable", &spec.name, e)),
    };
    wait_active(client, &spec.name).await?;
    let differences = verify(client, spec).await?;
    if !differences.is_empty() {
        return Err(ProvisionError(format!(
            "table {} exists with another shape:\n  {}",
            spec.name,
            differences.join("\n  ")
        )));
    }
    Ok(created)
}

async fn describe(client: &Client, table: &str) -> Result<Option<TableDescription>, ProvisionError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => Ok(out.table),
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(describe_error("DescribeTable", table, e)),
    }
}

async fn wait_active(client: &Client, table: &str) -> Result<(), ProvisionError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(t) = describe(client, table).await? {
            let indexes_active =
                t.global_secondary_indexes().iter().all(|i| i.index_status().is_none_or(|s| *s == IndexStatus::Active));
            if t.table_status() == Some(&TableStatus::Active) && indexes_active {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(ProvisionError(format!("table {table} did not become ACTIVE within 10 minutes")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Turns on DynamoDB TTL for `expiresAt`; true when it was off before.
pub async fn enable_ttl(client: &Client, table: &str) -> Result<bool, ProvisionError> {
    if ttl_status(client, table).await?.is_some_and(|(status, attr)| status == "ENABLED" && attr == TTL_ATTRIBUTE) {
        return Ok(false);
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .expect("TTL specification has its required fields");
    match client.update_time_to_live().table_name(table).time_to_live_specification(spec).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.message().is_some_and(|m| m.contains("already enabled")) => Ok(false),
        Err(e) => Err(describe_error("UpdateTimeToLive", table, e)),
    }
}

/// The table's TTL status and attribute (`None` when TTL was never configured).
pub async fn ttl_status(client: &Client, table: &str) -> Result<Option<(String, String)>, ProvisionError> {
    let out = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| describe_error("DescribeTimeToLive", table, e))?;
    Ok(out.time_to_live_description().and_then(|d| {
        Some((d.time_to_live_status()?.as_str().to_string(), d.attribute_name().unwrap_or_default().to_string()))
    }))
}

fn describe_keys(keys: &[KeySchemaElement]) -> String {
    keys.iter().map(|k| format!("{} {}", k.attribute_name(), k.key_type().as_str())).collect::<Vec<_>>().join(", ")
}

/// Compares the live table with the expected shape; one line per difference, empty when they agree.
pub async fn verify(client: &Client, spec: &TableSpec) -> Result<Vec<String>, ProvisionError> {
    let Some(table) = describe(client, &spec.name).await? else {
        return Ok(vec![format!("table {} does not exist", spec.name)]);
    };
    Ok(compare(spec, &table))
}

/// The differences between a table description and the spec.
pub fn compare(spec: &TableSpec, table: &TableDescription) -> Vec<String> {
    let mut diffs = Vec::new();
    let name = &spec.name;
    let want_keys = describe_keys(&key_schema(spec.hash, spec.range));
    let have_keys = describe_keys(table.key_schema());
    if want_keys != have_keys {
        diffs.push(format!("{name}: key schema is [{have_keys}], expected [{want_keys}]"));
    }
    let mut have_attrs: Vec<String> = table
        .attribute_definitions()
        .iter()
        .map(|a| format!("{} {}", a.attribute_name(), a.attribute_type().as_str()))
        .collect();
    let mut want_attrs: Vec<String> = spec.attributes.iter().map(|a| format!("{a} S")).collect();
    have_attrs.sort();
    want_attrs.sort();
    if have_attrs != want_attrs {
        diffs.push(format!(
            "{name}: attribute definitions are [{}], expected [{}]",
            have_attrs.join(", "),
            want_attrs.join(", ")
        ));
    }
    for want in &spec.indexes {
        match table.global_secondary_indexes().iter().find(|i| i.index_name() == Some(want.name)) {
            None => diffs.push(format!("{name}: index {} is missing", want.name)),
            Some(have) => {
                let want_keys = describe_keys(&key_schema(want.hash, Some(want.range)));
                let have_keys = describe_keys(have.key_schema());
                if want_keys != have_keys {
                    diffs.push(format!(
                        "{name}: index {} key schema is [{have_keys}], expected [{want_keys}]",
                        want.name
                    ));
                }
                let projection = have.projection().and_then(|p| p.projection_type());
                if projection != Some(&ProjectionType::All) {
                    diffs.push(format!(
                        "{name}: index {} projection is {}, expected ALL",
                        want.name,
                        projection.map_or("unset", |p| p.as_str())
                    ));
                }
            }
        }
    }
    for have in table.global_secondary_indexes() {
        let n = have.index_name().unwrap_or_default();
        if !spec.indexes.iter().any(|i| i.name == n) {
            diffs.push(format!("{name}: unexpected index {n}"));
        }
    }
    let billing = table.billing_mode_summary().and_then(|b| b.billing_mode());
    if billing != Some(&BillingMode::PayPerRequest) {
        diffs.push(format!(
            "{name}: billing mode is {}, expected PAY_PER_REQUEST",
            billing.map_or("PROVISIONED", |b| b.as_str())
        ));
    }
    diffs
}

/// A CloudFormation template equivalent to the guide's, for the configured table names.
pub fn cloudformation(specs: &[TableSpec]) -> String {
    let mut out = String::from(
        "AWSTemplateFormatVersion: '2010-09-09'\nDescription: 'AI Agent Server DynamoDB Tables'\n\nResources:\n",
    );
    let keys = |out: &mut String, indent: &str, hash: &str, range: Option<&str>| {
        let _ = writeln!(out, "{indent}KeySchema:");
        let _ = writeln!(out, "{indent}  - AttributeName: {hash}\n{indent}    KeyType: HASH");
        if let Some(r) = range {
            let _ = writeln!(out, "{indent}  - AttributeName: {r}\n{indent}    KeyType: RANGE");
        }
    };
    for spec in specs {
        let _ = writeln!(out, "  {}:\n    Type: AWS::DynamoDB::Table\n    Properties:", spec.logical_id);
        let _ = writeln!(out, "      TableName: {}\n      BillingMode: PAY_PER_REQUEST", spec.name);
        let _ = writeln!(out, "      AttributeDefinitions:");
        for a in &spec.attributes {
            let _ = writeln!(out, "        - AttributeName: {a}\n          AttributeType: S");
        }
        keys(&mut out, "      ", spec.hash, spec.range);
        let _ = writeln!(out, "      GlobalSecondaryIndexes:");
        for i in &spec.indexes {
            let _ = writeln!(out, "        - IndexName: {}", i.name);
            keys(&mut out, "          ", i.hash, Some(i.range));
            let _ = writeln!(out, "          Projection:\n            ProjectionType: ALL");
        }
        out.push('\n');
    }
    out.push_str("Outputs:\n");
    for (spec, output) in specs.iter().zip(["SessionsTableName", "MessagesTableName"]) {
        let what = if spec.logical_id == "SessionsTable" { "sessions" } else { "messages" };
        let _ = writeln!(
            out,
            "  {output}:\n    Description: Name of the {what} table\n    Value: !Ref {}\n    Export:\n      Name: !Sub \"${{AWS::StackName}}-{}\"",
            spec.logical_id, spec.logical_id
        );
    }
    out
}

/// The least-privilege IAM policy for serving (the guide's actions) on the configured tables.
pub fn iam_policy(specs: &[TableSpec]) -> serde_json::Value {
    let resources: Vec<String> = specs
        .iter()
        .flat_map(|s| {
            [format!("arn:aws:dynamodb:*:*:table/{}", s.name), format!("arn:aws:dynamodb:*:*:table/{}/index/*", s.name)]
        })
        .collect();
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": SERVE_ACTIONS,
            "Resource": resources,
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_policy_matches_the_seed_for_default_names() {
        let policy = iam_policy(&specs("ai-agent-sessions", "ai-agent-messages"));
        let expected = serde_json::json!({
          "Version": "2012-10-17",
          "Statement": [{
              "Effect": "Allow",
              "Action": ["dynamodb:GetItem","dynamodb:PutItem","dynamodb:UpdateItem","dynamodb:DeleteItem","dynamodb:Query","dynamodb:Scan"],
              "Resource": [
                "arn:aws:dynamodb:*:*:table/ai-agent-sessions",
                "arn:aws:dynamodb:*:*:table/ai-agent-sessions/index/*",
                "arn:aws:dynamodb:*:*:table/ai-agent-messages",
                "arn:aws:dynamodb:*:*:table/ai-agent-messages/index/*"
              ]
          }]
        });
        assert_eq!(policy, expected);
    }

    #[test]
    fn cloudformation_names_the_configured_tables_and_indexes() {
        let t = cloudformation(&specs("s-table", "m-table"));
        assert!(t.contains("TableName: s-table"));
        assert!(t.contains("TableName: m-table"));
        for i in [TENANT_USER_INDEX, SESSION_TIMESTAMP_INDEX, TENANT_TIMESTAMP_INDEX] {
            assert!(t.contains(&format!("IndexName: {i}")), "{i}");
        }
    }
}
