//! SDK errors as store errors that name the table and the action (and so the IAM permission).

use std::fmt::Debug;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::store::{StoreError, StoreResult};

/// A conditional write's outcome: true when it happened, false when its condition did not hold.
pub(super) fn written<T, E, R>(result: Result<T, SdkError<E, R>>, table: &str, action: &str) -> StoreResult<bool>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_conditional_failure(&e) => Ok(false),
        Err(e) => Err(map_err(table, action, e)),
    }
}

pub(super) fn is_conditional_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(se) if se.err().code() == Some("ConditionalCheckFailedException"))
}

/// Turns an SDK error into a store error that names the table, the action or the endpoint.
/// Throttling and 5xx have already been retried by the SDK's standard retry policy by now.
pub(super) fn map_err<E, R>(table: &str, action: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            let message = se.err().message().unwrap_or_default();
            match code {
                "ResourceNotFoundException" => StoreError::Unavailable(format!(
                    "DynamoDB table {table} does not exist (create it with `agent-server tables create`)"
                )),
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "MissingAuthenticationTokenException" => StoreError::Unavailable(format!(
                    "DynamoDB denied dynamodb:{action} on table {table} ({code}): grant it (see `agent-server tables iam-policy`) or fix the AWS credentials"
                )),
                "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded" => {
                    StoreError::Unavailable(format!(
                        "DynamoDB is throttling dynamodb:{action} on table {table}; retry later"
                    ))
                }
                "ValidationException" if message.contains("size") => {
                    StoreError::TooLarge(format!("item too large for DynamoDB table {table}: {message}"))
                }
                _ => {
                    tracing::error!(table, action, code, message, "DynamoDB error");
                    StoreError::Internal(format!("DynamoDB {action} on {table} failed: {code}"))
                }
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            tracing::error!(table, action, error = %logged(&e), "DynamoDB unreachable");
            StoreError::Unavailable(format!("DynamoDB endpoint is unreachable (dynamodb:{action} on table {table})"))
        }
        _ => {
            tracing::error!(table, action, error = %logged(&e), "DynamoDB request failed");
            StoreError::Unavailable(format!(
                "DynamoDB request dynamodb:{action} on table {table} could not be made (check AWS region and credentials)"
            ))
        }
    }
}

/// The SDK's whole error chain for the log, with the credentials of any URL in it (a custom
/// endpoint's userinfo or query) masked.
fn logged<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    crate::redact::in_text(&aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(), "")
}
