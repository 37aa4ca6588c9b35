//! The DynamoDB client: the standard AWS configuration, with every call counted for `/metrics`.

use aws_sdk_dynamodb::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// A DynamoDB client from the standard AWS configuration, counting its calls for `/metrics`.
pub async fn client() -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(&crate::config::aws_sdk_config().await)
        .interceptor(DynamoDbCalls)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Counts every DynamoDB operation (GetItem, Query, PutItem, ...) and its outcome, after retries.
#[derive(Debug)]
pub struct DynamoDbCalls;

impl Intercept for DynamoDbCalls {
    fn name(&self) -> &'static str {
        "DynamoDbCalls"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let ok = matches!(context.output_or_error(), Some(Ok(_)));
        crate::telemetry::storage_call("dynamodb", operation, ok);
        Ok(())
    }
}
