//! Table provisioning against the emulator: tables made with the seed's own AWS CLI commands and its
//! CloudFormation template work with the store, and `tables create` / `tables verify` agree with them.

use std::process::{Command, Output};

use agent_server::ids::{MessageId, TenantId, UserId};
use agent_server::store::dynamodb::DynamoStore;
use agent_server::store::{ConversationStore, MessageQuery, NewMessage, NewSession, Order, Role};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};

use crate::support::{aws_env, cli, dynamodb_client, dynamodb_endpoint, table_names, text, unique};

/// Runs the real binary (in a folder of its own) with the emulator's AWS settings and the given
/// table names.
fn agent_server(args: &[&str], sessions: &str, messages: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path(), args, &[("DYNAMODB_SESSIONS_TABLE", sessions), ("DYNAMODB_MESSAGES_TABLE", messages)])
}

/// Runs the AWS CLI (v1 from PyPI) against the emulator.
fn aws(args: &[&str]) {
    let out = Command::new("python3")
        .args(["-m", "awscli"])
        .args(args)
        .args(["--endpoint-url", &dynamodb_endpoint(), "--output", "json"])
        .envs(aws_env())
        .output()
        .expect("run the AWS CLI (python3 -m awscli)");
    assert!(out.status.success(), "aws {args:?} failed: {}", text(&out));
}

/// The seed's two `aws dynamodb create-table` commands, verbatim but for the table names.
fn create_tables_like_the_seed(sessions: &str, messages: &str) {
    aws(&[
        "dynamodb",
        "create-table",
        "--table-name",
        sessions,
        "--attribute-definitions",
        "AttributeName=id,AttributeType=S",
        "AttributeName=tenantId,AttributeType=S",
        "AttributeName=userId,AttributeType=S",
        "--key-schema",
        "AttributeName=id,KeyType=HASH",
        "AttributeName=tenantId,KeyType=RANGE",
        "--global-secondary-indexes",
        "IndexName=TenantUserIndex,KeySchema=[{AttributeName=tenantId,KeyType=HASH},{AttributeName=userId,KeyType=RANGE}],Projection={ProjectionType=ALL}",
        "--billing-mode",
        "PAY_PER_REQUEST",
    ]);
    aws(&[
        "dynamodb",
        "create-table",
        "--table-name",
        messages,
        "--attribute-definitions",
        "AttributeName=id,AttributeType=S",
        "AttributeName=sessionId,AttributeType=S",
        "AttributeName=timestamp,AttributeType=S",
        "AttributeName=tenantId,AttributeType=S",
        "--key-schema",
        "AttributeName=id,KeyType=HASH",
        "--global-secondary-indexes",
        "IndexName=SessionTimestampIndex,KeySchema=[{AttributeName=sessionId,KeyType=HASH},{AttributeName=timestamp,KeyType=RANGE}],Projection={ProjectionType=ALL}",
        "IndexName=TenantTimestampIndex,KeySchema=[{AttributeName=tenantId,KeyType=HASH},{AttributeName=timestamp,KeyType=RANGE}],Projection={ProjectionType=ALL}",
        "--billing-mode",
        "PAY_PER_REQUEST",
    ]);
}

async fn store_works_on(sessions: &str, messages: &str) {
    let store = DynamoStore::new(dynamodb_client(), sessions, messages);
    store.check().await.unwrap();
    let tenant = TenantId::parse("test-tenant").unwrap();
    let user = UserId::parse("test-user").unwrap();
    let s = store
        .create_session(NewSession {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            location_id: None,
            metadata: None,
        })
        .await
        .unwrap();
    let m = NewMessage {
        id: MessageId::generate(),
        user_id: user,
        role: Role::User,
        content: "Hello".into(),
        metadata: None,
        counted: None,
    };
    store.append_messages(&tenant, &s.id, vec![m]).await.unwrap();
    let page = store
        .list_messages(&tenant, &s.id, MessageQuery { limit: 10, order: Order::Asc, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].content, "Hello");
}

#[tokio::test]
async fn tables_from_the_seeds_cli_commands_work_and_verify() {
    let (sessions, messages) = table_names();
    create_tables_like_the_seed(&sessions, &messages);
    let verify = agent_server(&["tables", "verify"], &sessions, &messages);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains(&format!("table {sessions}: ok")));
    let create = agent_server(&["tables", "create"], &sessions, &messages);
    assert!(create.status.success(), "{}", text(&create));
    assert!(text(&create).contains("already exists with the expected shape"), "{}", text(&create));
    store_works_on(&sessions, &messages).await;
}

#[tokio::test]
async fn tables_create_makes_tables_that_verify() {
    let (sessions, messages) = table_names();
    let create = agent_server(&["tables", "create"], &sessions, &messages);
    assert!(create.status.success(), "{}", text(&create));
    assert!(text(&create).contains(&format!("created table {messages}")));
    let verify = agent_server(&["tables", "verify"], &sessions, &messages);
    assert!(verify.status.success(), "{}", text(&verify));
    store_works_on(&sessions, &messages).await;
}

#[tokio::test]
async fn verify_names_each_difference_and_exits_1() {
    let (sessions, messages) = table_names();
    let client = dynamodb_client();
    // A messages table without TenantTimestampIndex and with provisioned billing; no sessions table.
    let key = |n: &str, k: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(k).build().unwrap();
    let attr = |n: &str| {
        AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
    };
    client
        .create_table()
        .table_name(&messages)
        .attribute_definitions(attr("id"))
        .attribute_definitions(attr("sessionId"))
        .attribute_definitions(attr("timestamp"))
        .key_schema(key("id", KeyType::Hash))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("SessionTimestampIndex")
                .key_schema(key("sessionId", KeyType::Hash))
                .key_schema(key("timestamp", KeyType::Range))
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let verify = agent_server(&["tables", "verify"], &sessions, &messages);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let out = text(&verify);
    assert!(out.contains(&format!("table {sessions} does not exist")), "{out}");
    assert!(out.contains("index TenantTimestampIndex is missing"), "{out}");
    assert!(out.contains("attribute definitions"), "{out}");
    // `tables create` refuses to call a wrongly shaped table good.
    let create = agent_server(&["tables", "create"], &sessions, &messages);
    assert!(!create.status.success(), "{}", text(&create));
    assert!(text(&create).contains("exists with another shape"), "{}", text(&create));
}

#[tokio::test]
async fn the_seeds_cloudformation_template_and_ours_both_verify() {
    // The seed's template, verbatim (it fixes the default table names, so clear them first when
    // the emulator is reused).
    let client = dynamodb_client();
    for t in ["ai-agent-sessions", "ai-agent-messages"] {
        let _ = client.delete_table().table_name(t).send().await;
    }
    aws(&[
        "cloudformation",
        "create-stack",
        "--stack-name",
        &unique("seed"),
        "--template-body",
        &format!("file://{}/tests/fixtures/seed-cloudformation.yaml", env!("CARGO_MANIFEST_DIR")),
    ]);
    let verify = agent_server(&["tables", "verify"], "ai-agent-sessions", "ai-agent-messages");
    assert!(verify.status.success(), "{}", text(&verify));
    store_works_on("ai-agent-sessions", "ai-agent-messages").await;

    // Ours, for other names.
    let (sessions, messages) = table_names();
    let template = agent_server(&["tables", "cloudformation"], &sessions, &messages);
    assert!(template.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("template.yaml");
    std::fs::write(&path, &template.stdout).unwrap();
    aws(&[
        "cloudformation",
        "create-stack",
        "--stack-name",
        &unique("ours"),
        "--template-body",
        &format!("file://{}", path.display()),
    ]);
    let verify = agent_server(&["tables", "verify"], &sessions, &messages);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn iam_policy_command_prints_the_configured_tables() {
    let out = agent_server(&["tables", "iam-policy"], "my-sessions", "my-messages");
    assert!(out.status.success());
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resources = policy["Statement"][0]["Resource"].as_array().unwrap();
    assert!(resources.contains(&serde_json::json!("arn:aws:dynamodb:*:*:table/my-messages/index/*")));
    assert!(!policy.to_string().contains("BatchWriteItem"));
}
