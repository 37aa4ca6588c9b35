//! Real stores on a temporary SQLite file and on the DynamoDB emulator that `scripts/test.sh`
//! starts (moto), each DynamoDB test on tables of its own; and the macros that run a test on both.

use std::sync::Arc;

use agent_server::store::ConversationStore;
use agent_server::store::dynamodb::DynamoStore;
use agent_server::store::dynamodb::tables;
use agent_server::store::sqlite::SqliteStore;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

/// The emulator's URL, set by `scripts/test.sh`.
pub fn dynamodb_endpoint() -> String {
    std::env::var("AGENT_SERVER_TEST_DYNAMODB").expect(
        "AGENT_SERVER_TEST_DYNAMODB is not set: run the tests with ./scripts/test.sh, which starts the DynamoDB emulator",
    )
}

/// Environment variables that point the AWS SDK (and the AWS CLI) at the emulator.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", dynamodb_endpoint()),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

pub fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(dynamodb_endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// A unique prefix for table names, so tests never share tables.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Table names for one test.
pub fn table_names() -> (String, String) {
    let p = unique("t");
    (format!("{p}-sessions"), format!("{p}-messages"))
}

/// Creates the sessions and messages tables on the emulator.
pub async fn create_tables(sessions: &str, messages: &str) {
    let client = dynamodb_client();
    for spec in tables::specs(sessions, messages) {
        tables::create(&client, &spec).await.expect("create tables on the emulator");
    }
}

/// A DynamoDB store on freshly created tables.
pub async fn dynamodb_store() -> DynamoStore {
    let (sessions, messages) = table_names();
    create_tables(&sessions, &messages).await;
    DynamoStore::new(dynamodb_client(), sessions, messages)
}

/// A SQLite store in a temporary folder (kept alive by the returned guard).
pub fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("nested/agent.db")).expect("open sqlite");
    (store, dir)
}

/// Either backend, boxed, with whatever must stay alive beside it.
pub struct AnyStore {
    pub store: Arc<dyn ConversationStore>,
    _guard: Option<tempfile::TempDir>,
}

pub async fn store(backend: &str) -> AnyStore {
    match backend {
        "sqlite" => {
            let (s, dir) = sqlite_store();
            AnyStore { store: Arc::new(s), _guard: Some(dir) }
        }
        "dynamodb" => AnyStore { store: Arc::new(dynamodb_store().await), _guard: None },
        other => panic!("unknown backend {other}"),
    }
}

/// The store conformance suite: each `async fn(Arc<dyn ConversationStore>)` named here runs as
/// `sqlite::name` and `dynamodb::name`, each on a fresh store.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let s = $crate::support::store("sqlite").await;
                    super::$name(s.store.clone()).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let s = $crate::support::store("dynamodb").await;
                    super::$name(s.store.clone()).await;
                }
            )*
        }
    };
}

/// Each `async fn(backend: &str)` named here runs as `sqlite::name` and `dynamodb::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name("sqlite").await }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name("dynamodb").await }
            )*
        }
    };
}
