//! Backup and recovery of the DynamoDB tables (point-in-time recovery, on-demand backups, restores
//! into new tables, a cross-region replica), and of the SQLite file.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    BillingMode, CreateReplicationGroupMemberAction, PointInTimeRecoverySpecification, ReplicationGroupUpdate,
    StreamSpecification, StreamViewType,
};

/// A failed backup call, naming the action (and so the IAM permission) it needed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackupError(pub String);

fn failed<E, R>(action: &str, table: &str, e: SdkError<E, R>) -> BackupError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match e.code() {
        Some("AccessDeniedException") => {
            BackupError(format!("permission denied: dynamodb:{action} on table {table} is needed"))
        }
        _ => BackupError(format!("dynamodb:{action} on table {table} failed: {}", DisplayErrorContext(&e))),
    }
}

/// Turns on point-in-time recovery (continuous backups).
pub async fn enable_pitr(client: &Client, table: &str) -> Result<(), BackupError> {
    let spec = PointInTimeRecoverySpecification::builder().point_in_time_recovery_enabled(true).build().expect("spec");
    client
        .update_continuous_backups()
        .table_name(table)
        .point_in_time_recovery_specification(spec)
        .send()
        .await
        .map_err(|e| failed("UpdateContinuousBackups", table, e))?;
    Ok(())
}

/// One line on the table's continuous backups and point-in-time recovery.
pub async fn status(client: &Client, table: &str) -> Result<String, BackupError> {
    let out = client
        .describe_continuous_backups()
        .table_name(table)
        .send()
        .await
        .map_err(|e| failed("DescribeContinuousBackups", table, e))?;
    let d = out.continuous_backups_description();
    let pitr = d
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .map_or("DISABLED", |s| s.as_str());
    let window = d
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|p| Some((p.earliest_restorable_date_time()?, p.latest_restorable_date_time()?)))
        .map(|(a, b)| format!(", restorable from {a} to {b}"))
        .unwrap_or_default();
    Ok(format!("table {table}: point-in-time recovery {pitr}{window}"))
}

/// An on-demand backup; its ARN.
pub async fn create(client: &Client, table: &str, name: &str) -> Result<String, BackupError> {
    let out = client
        .create_backup()
        .table_name(table)
        .backup_name(name)
        .send()
        .await
        .map_err(|e| failed("CreateBackup", table, e))?;
    Ok(out.backup_details().map(|d| d.backup_arn().to_string()).unwrap_or_default())
}

/// The table's on-demand backups: (ARN, name, created, status).
pub async fn list(client: &Client, table: &str) -> Result<Vec<(String, String, String, String)>, BackupError> {
    let mut backups = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let out = client
            .list_backups()
            .table_name(table)
            .set_exclusive_start_backup_arn(start.take())
            .send()
            .await
            .map_err(|e| failed("ListBackups", table, e))?;
        for b in out.backup_summaries() {
            backups.push((
                b.backup_arn().unwrap_or_default().to_string(),
                b.backup_name().unwrap_or_default().to_string(),
                b.backup_creation_date_time().map(|t| t.to_string()).unwrap_or_default(),
                b.backup_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            ));
        }
        match out.last_evaluated_backup_arn() {
            Some(arn) => start = Some(arn.to_string()),
            None => return Ok(backups),
        }
    }
}

/// The table a backup was taken of.
pub async fn source_table(client: &Client, arn: &str) -> Result<String, BackupError> {
    let out = client.describe_backup().backup_arn(arn).send().await.map_err(|e| failed("DescribeBackup", arn, e))?;
    out.backup_description()
        .and_then(|d| d.source_table_details())
        .map(|s| s.table_name().to_string())
        .ok_or_else(|| BackupError(format!("backup {arn} names no source table")))
}

/// Restores a backup into a new table.
pub async fn restore_backup(client: &Client, arn: &str, target: &str) -> Result<(), BackupError> {
    client
        .restore_table_from_backup()
        .backup_arn(arn)
        .target_table_name(target)
        .billing_mode_override(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| failed("RestoreTableFromBackup", target, e))?;
    Ok(())
}

/// Restores a table as it was at `time` (or at the latest restorable time) into a new table.
pub async fn restore_to_time(
    client: &Client,
    source: &str,
    target: &str,
    time: Option<aws_sdk_dynamodb::primitives::DateTime>,
) -> Result<(), BackupError> {
    client
        .restore_table_to_point_in_time()
        .source_table_name(source)
        .target_table_name(target)
        .set_restore_date_time(time)
        .set_use_latest_restorable_time(Some(time.is_none()))
        .billing_mode_override(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| failed("RestoreTableToPointInTime", source, e))?;
    Ok(())
}

/// Adds a replica in another region (global tables, version 2019.11.21). The table needs a stream
/// with new and old images, which is turned on first when missing.
pub async fn replicate(client: &Client, table: &str, region: &str) -> Result<(), BackupError> {
    let described =
        client.describe_table().table_name(table).send().await.map_err(|e| failed("DescribeTable", table, e))?;
    let streaming = described
        .table()
        .and_then(|t| t.stream_specification())
        .is_some_and(|s| s.stream_enabled() && s.stream_view_type() == Some(&StreamViewType::NewAndOldImages));
    if !streaming {
        let spec = StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(StreamViewType::NewAndOldImages)
            .build()
            .expect("stream specification");
        client
            .update_table()
            .table_name(table)
            .stream_specification(spec)
            .send()
            .await
            .map_err(|e| failed("UpdateTable", table, e))?;
    }
    let create = CreateReplicationGroupMemberAction::builder().region_name(region).build().expect("replica");
    client
        .update_table()
        .table_name(table)
        .replica_updates(ReplicationGroupUpdate::builder().create(create).build())
        .send()
        .await
        .map_err(|e| failed("UpdateTable", table, e))?;
    Ok(())
}
