//! The initial schema: every entity of the design, with the indexes the hot paths need —
//! ready attempts by queue, attempts by lease expiry, events by sequence.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    Weight,
    MaxRunning,
    TriggerRate,
    TriggerBurst,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    TenantId,
    Name,
    TokenHash,
    Scopes,
    CreatedAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Pipelines {
    Table,
    Id,
    TenantId,
    Name,
    Provider,
    Repository,
    File,
    WebhookSecret,
    NextNumber,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    Id,
    TenantId,
    PipelineId,
    Number,
    Provider,
    Repository,
    Sha,
    GitRef,
    TriggerKind,
    IdempotencyKey,
    ConcurrencyGroup,
    CancelInProgress,
    Priority,
    State,
    ParentTaskId,
    Held,
    TasksTotal,
    TasksRemaining,
    TasksFailed,
    CreatedAt,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    RunId,
    TenantId,
    Name,
    JobId,
    Spec,
    Queue,
    Labels,
    Needs,
    Dependents,
    PendingDeps,
    Condition,
    ContinueOnError,
    MaxAttempts,
    TimeoutMs,
    CacheKey,
    State,
    CreatedAt,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum Attempts {
    Table,
    Id,
    TaskId,
    RunId,
    TenantId,
    Queue,
    Idx,
    State,
    Priority,
    ScheduledAt,
    BackoffMs,
    WorkerId,
    LeaseToken,
    LeaseExpiresAt,
    HeartbeatAt,
    StartedAt,
    FinishedAt,
    DeadlineAt,
    ExitCode,
    ErrorKind,
    ErrorMessage,
    CancelRequested,
    LogBytes,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    At,
    TenantId,
    RunId,
    TaskId,
    AttemptId,
    Entity,
    EntityId,
    FromState,
    ToState,
    Reason,
    Node,
    Details,
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    Id,
    TenantId,
    Name,
    Node,
    Kind,
    Queues,
    Labels,
    Capacity,
    State,
    LastHeartbeatAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Artifacts {
    Table,
    Id,
    Digest,
    Name,
    Size,
    TenantId,
    RunId,
    TaskId,
    AttemptId,
    CacheKey,
    ExpiresAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum LogChunks {
    Table,
    Id,
    AttemptId,
    ByteOffset,
    Stream,
    Data,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Leases {
    Table,
    Name,
    Holder,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum CacheEntries {
    Table,
    Key,
    TenantId,
    TaskId,
    RunId,
    CreatedAt,
    ExpiresAt,
}

/// Ids are UUIDs in their 36-character text form on both databases.
fn id(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .string_len(36)
        .not_null()
        .primary_key()
        .to_owned()
}

fn index(table: impl IntoIden + 'static, name: &str, cols: &[&str]) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for c in cols {
        stmt.col(Alias::new(*c));
    }
    stmt.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Tenants::Table)
                .col(id(Tenants::Id))
                .col(string_uniq(Tenants::Name))
                .col(integer(Tenants::Weight))
                .col(integer(Tenants::MaxRunning))
                .col(double(Tenants::TriggerRate))
                .col(integer(Tenants::TriggerBurst))
                .col(big_integer(Tenants::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ApiTokens::Table)
                .col(id(ApiTokens::Id))
                .col(string_len(ApiTokens::TenantId, 36))
                .col(string(ApiTokens::Name))
                .col(string_uniq(ApiTokens::TokenHash))
                .col(string(ApiTokens::Scopes))
                .col(big_integer(ApiTokens::CreatedAt))
                .col(big_integer_null(ApiTokens::LastUsedAt))
                .col(big_integer_null(ApiTokens::RevokedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Pipelines::Table)
                .col(id(Pipelines::Id))
                .col(string_len(Pipelines::TenantId, 36))
                .col(string(Pipelines::Name))
                .col(string(Pipelines::Provider))
                .col(text(Pipelines::Repository))
                .col(text(Pipelines::File))
                .col(string_null(Pipelines::WebhookSecret))
                .col(big_integer(Pipelines::NextNumber))
                .col(big_integer(Pipelines::CreatedAt))
                .col(big_integer(Pipelines::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(
                Pipelines::Table,
                "pipelines_tenant_name",
                &["tenant_id", "name"],
            )
            .unique()
            .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Runs::Table)
                .col(id(Runs::Id))
                .col(string_len(Runs::TenantId, 36))
                .col(string_len(Runs::PipelineId, 36))
                .col(big_integer(Runs::Number))
                .col(string(Runs::Provider))
                .col(text(Runs::Repository))
                .col(string(Runs::Sha))
                .col(string(Runs::GitRef))
                .col(string(Runs::TriggerKind))
                .col(string_null(Runs::IdempotencyKey))
                .col(string_null(Runs::ConcurrencyGroup))
                .col(boolean(Runs::CancelInProgress))
                .col(integer(Runs::Priority))
                .col(string(Runs::State))
                .col(string_len_null(Runs::ParentTaskId, 36))
                .col(boolean(Runs::Held))
                .col(integer(Runs::TasksTotal))
                .col(integer(Runs::TasksRemaining))
                .col(integer(Runs::TasksFailed))
                .col(big_integer(Runs::CreatedAt))
                .col(big_integer_null(Runs::StartedAt))
                .col(big_integer_null(Runs::FinishedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(
                Runs::Table,
                "runs_pipeline_number",
                &["pipeline_id", "number"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        // NULL keys are distinct on both databases: only keyed triggers are deduplicated.
        m.create_index(
            index(
                Runs::Table,
                "runs_idempotency",
                &["pipeline_id", "sha", "git_ref", "idempotency_key"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        m.create_index(index(
            Runs::Table,
            "runs_tenant_created",
            &["tenant_id", "created_at"],
        ))
        .await?;
        m.create_index(index(
            Runs::Table,
            "runs_group_state",
            &["concurrency_group", "state"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Tasks::Table)
                .col(id(Tasks::Id))
                .col(string_len(Tasks::RunId, 36))
                .col(string_len(Tasks::TenantId, 36))
                .col(string(Tasks::Name))
                .col(string(Tasks::JobId))
                .col(text(Tasks::Spec))
                .col(string(Tasks::Queue))
                .col(text(Tasks::Labels))
                .col(text(Tasks::Needs))
                .col(text(Tasks::Dependents))
                .col(integer(Tasks::PendingDeps))
                .col(text_null(Tasks::Condition))
                .col(boolean(Tasks::ContinueOnError))
                .col(integer(Tasks::MaxAttempts))
                .col(big_integer(Tasks::TimeoutMs))
                .col(string_null(Tasks::CacheKey))
                .col(string(Tasks::State))
                .col(big_integer(Tasks::CreatedAt))
                .col(big_integer_null(Tasks::StartedAt))
                .col(big_integer_null(Tasks::FinishedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(Tasks::Table, "tasks_run_name", &["run_id", "name"])
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            Tasks::Table,
            "tasks_cache_key",
            &["cache_key", "state"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Attempts::Table)
                .col(id(Attempts::Id))
                .col(string_len(Attempts::TaskId, 36))
                .col(string_len(Attempts::RunId, 36))
                .col(string_len(Attempts::TenantId, 36))
                .col(string(Attempts::Queue))
                .col(integer(Attempts::Idx))
                .col(string(Attempts::State))
                .col(integer(Attempts::Priority))
                .col(big_integer(Attempts::ScheduledAt))
                .col(big_integer(Attempts::BackoffMs))
                .col(string_len_null(Attempts::WorkerId, 36))
                .col(string_null(Attempts::LeaseToken))
                .col(big_integer_null(Attempts::LeaseExpiresAt))
                .col(big_integer_null(Attempts::HeartbeatAt))
                .col(big_integer_null(Attempts::StartedAt))
                .col(big_integer_null(Attempts::FinishedAt))
                .col(big_integer_null(Attempts::DeadlineAt))
                .col(integer_null(Attempts::ExitCode))
                .col(string_null(Attempts::ErrorKind))
                .col(text_null(Attempts::ErrorMessage))
                .col(boolean(Attempts::CancelRequested))
                .col(big_integer(Attempts::LogBytes))
                .col(big_integer(Attempts::CreatedAt))
                .to_owned(),
        )
        .await?;
        // A double retry decision is impossible: one attempt per (task, index).
        m.create_index(
            index(Attempts::Table, "attempts_task_idx", &["task_id", "idx"])
                .unique()
                .to_owned(),
        )
        .await?;
        // Leasing: the next queued attempt of a queue, by priority then age.
        m.create_index(index(
            Attempts::Table,
            "attempts_queue_ready",
            &["queue", "state", "priority", "scheduled_at"],
        ))
        .await?;
        // The reconciler: leased or running attempts by lease expiry.
        m.create_index(index(
            Attempts::Table,
            "attempts_state_lease",
            &["state", "lease_expires_at"],
        ))
        .await?;
        m.create_index(index(Attempts::Table, "attempts_run", &["run_id"]))
            .await?;

        m.create_table(
            Table::create()
                .table(Events::Table)
                .col(big_integer(Events::Seq).auto_increment().primary_key())
                .col(big_integer(Events::At))
                .col(string_len(Events::TenantId, 36))
                .col(string_len(Events::RunId, 36))
                .col(string_len_null(Events::TaskId, 36))
                .col(string_len_null(Events::AttemptId, 36))
                .col(string(Events::Entity))
                .col(string_len(Events::EntityId, 36))
                .col(string_null(Events::FromState))
                .col(string(Events::ToState))
                .col(text(Events::Reason))
                .col(string(Events::Node))
                .col(text_null(Events::Details))
                .to_owned(),
        )
        .await?;
        m.create_index(index(Events::Table, "events_run_seq", &["run_id", "seq"]))
            .await?;

        m.create_table(
            Table::create()
                .table(Workers::Table)
                .col(id(Workers::Id))
                .col(string_len(Workers::TenantId, 36))
                .col(string(Workers::Name))
                .col(string(Workers::Node))
                .col(string(Workers::Kind))
                .col(text(Workers::Queues))
                .col(text(Workers::Labels))
                .col(integer(Workers::Capacity))
                .col(string(Workers::State))
                .col(big_integer(Workers::LastHeartbeatAt))
                .col(big_integer(Workers::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Artifacts::Table)
                .col(id(Artifacts::Id))
                .col(string(Artifacts::Digest))
                .col(text(Artifacts::Name))
                .col(big_integer(Artifacts::Size))
                .col(string_len(Artifacts::TenantId, 36))
                .col(string_len(Artifacts::RunId, 36))
                .col(string_len(Artifacts::TaskId, 36))
                .col(string_len(Artifacts::AttemptId, 36))
                .col(string_null(Artifacts::CacheKey))
                .col(big_integer_null(Artifacts::ExpiresAt))
                .col(big_integer(Artifacts::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(index(Artifacts::Table, "artifacts_task", &["task_id"]))
            .await?;
        m.create_index(index(Artifacts::Table, "artifacts_digest", &["digest"]))
            .await?;

        m.create_table(
            Table::create()
                .table(LogChunks::Table)
                .col(big_integer(LogChunks::Id).auto_increment().primary_key())
                .col(string_len(LogChunks::AttemptId, 36))
                .col(big_integer(LogChunks::ByteOffset))
                .col(string(LogChunks::Stream))
                .col(text(LogChunks::Data))
                .col(big_integer(LogChunks::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            LogChunks::Table,
            "log_chunks_attempt_offset",
            &["attempt_id", "byte_offset"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Leases::Table)
                .col(string(Leases::Name).primary_key())
                .col(string(Leases::Holder))
                .col(big_integer(Leases::ExpiresAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(CacheEntries::Table)
                .col(string(CacheEntries::Key).primary_key())
                .col(string_len(CacheEntries::TenantId, 36))
                .col(string_len(CacheEntries::TaskId, 36))
                .col(string_len(CacheEntries::RunId, 36))
                .col(big_integer(CacheEntries::CreatedAt))
                .col(big_integer(CacheEntries::ExpiresAt))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            CacheEntries::Table,
            "cache_entries_expiry",
            &["expires_at"],
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        // Forward-only: an upgrade is never rolled back by dropping data.
        Err(DbErr::Migration("migrations are forward-only".into()))
    }
}
