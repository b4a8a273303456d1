//! Repository functions: the conditional updates that apply transitions, and the few
//! statements whose shape the hot paths depend on (claiming work, counting down).
//!
//! Every state change is `UPDATE … WHERE id = ? AND state = ?`; the boolean result says
//! whether this caller won. Callers pass `now` so that time is injectable.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, Statement,
};

use super::StoreError;
use super::entity::{attempt, pipeline, run, task};
use crate::domain::{AttemptState, RunState, TaskState};

/// Rows per multi-row INSERT, under both databases' bind-parameter limits.
const INSERT_CHUNK: usize = 200;

pub async fn insert_tasks(
    db: &impl ConnectionTrait,
    rows: Vec<task::ActiveModel>,
) -> Result<(), StoreError> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK / 4).collect();
        task::Entity::insert_many(chunk)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

pub async fn insert_attempts(
    db: &impl ConnectionTrait,
    rows: Vec<attempt::ActiveModel>,
) -> Result<(), StoreError> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK / 4).collect();
        attempt::Entity::insert_many(chunk)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Takes the next run number of a pipeline.
pub async fn next_run_number(
    db: &impl ConnectionTrait,
    pipeline_id: &str,
) -> Result<i64, StoreError> {
    pipeline::Entity::update_many()
        .col_expr(
            pipeline::Column::NextNumber,
            Expr::col(pipeline::Column::NextNumber).add(1),
        )
        .filter(pipeline::Column::Id.eq(pipeline_id))
        .exec(db)
        .await?;
    let p = pipeline::Entity::find_by_id(pipeline_id.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("pipeline {pipeline_id} vanished")))?;
    Ok(p.next_number - 1)
}

/// `task.state: from → to`, stamping start and finish times.
pub async fn cas_task(
    db: &impl ConnectionTrait,
    id: &str,
    from: TaskState,
    to: TaskState,
    now: i64,
) -> Result<bool, StoreError> {
    let mut update =
        task::Entity::update_many().col_expr(task::Column::State, Expr::value(to.as_str()));
    if to == TaskState::Running {
        update = update.col_expr(
            task::Column::StartedAt,
            // Portable: a custom SQL fragment with `?` breaks PostgreSQL's `$n` binds.
            Expr::expr(sea_orm::sea_query::Func::coalesce([
                Expr::col(task::Column::StartedAt).into(),
                Expr::val(now).into(),
            ]))
            .into(),
        );
    }
    if to.is_terminal() {
        update = update.col_expr(task::Column::FinishedAt, Expr::value(now));
    }
    let res = update
        .filter(task::Column::Id.eq(id))
        .filter(task::Column::State.eq(from.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// `run.state: from → to`, stamping start and finish times.
pub async fn cas_run(
    db: &impl ConnectionTrait,
    id: &str,
    from: RunState,
    to: RunState,
    now: i64,
) -> Result<bool, StoreError> {
    let mut update =
        run::Entity::update_many().col_expr(run::Column::State, Expr::value(to.as_str()));
    if to == RunState::Running {
        update = update.col_expr(run::Column::StartedAt, Expr::value(now));
    }
    if to.is_terminal() {
        update = update.col_expr(run::Column::FinishedAt, Expr::value(now));
    }
    let res = update
        .filter(run::Column::Id.eq(id))
        .filter(run::Column::State.eq(from.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Lowers a task's count of unfinished upstream tasks and returns the task as it is now.
pub async fn decrement_pending(
    db: &impl ConnectionTrait,
    task_id: &str,
) -> Result<task::Model, StoreError> {
    task::Entity::update_many()
        .col_expr(
            task::Column::PendingDeps,
            Expr::col(task::Column::PendingDeps).sub(1),
        )
        .filter(task::Column::Id.eq(task_id))
        .exec(db)
        .await?;
    task::Entity::find_by_id(task_id.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("task {task_id} vanished")))
}

/// Counts finished tasks into the run and returns the run as it is now.
pub async fn count_finished(
    db: &impl ConnectionTrait,
    run_id: &str,
    finished: i32,
    failed: i32,
) -> Result<run::Model, StoreError> {
    run::Entity::update_many()
        .col_expr(
            run::Column::TasksRemaining,
            Expr::col(run::Column::TasksRemaining).sub(finished),
        )
        .col_expr(
            run::Column::TasksFailed,
            Expr::col(run::Column::TasksFailed).add(failed),
        )
        .filter(run::Column::Id.eq(run_id))
        .exec(db)
        .await?;
    run::Entity::find_by_id(run_id.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("run {run_id} vanished")))
}

/// A worker's claim on the next queued attempt of `queue`.
pub struct Claim<'a> {
    pub queue: &'a str,
    pub worker_id: &'a str,
    pub lease_token: &'a str,
    pub lease_expires_at: i64,
    pub now: i64,
}

/// Claims the next queued attempt of a queue — highest priority, then oldest — by
/// compare-and-set `queued → leased`. Exactly one caller wins each attempt.
pub async fn claim_attempt(
    db: &impl ConnectionTrait,
    c: Claim<'_>,
) -> Result<Option<attempt::Model>, StoreError> {
    let backend = db.get_database_backend();
    let (sql, values): (&str, Vec<sea_orm::Value>) = match backend {
        DbBackend::Postgres => (
            "UPDATE attempts SET state = 'leased', worker_id = $1, lease_token = $2, \
             lease_expires_at = $3, heartbeat_at = $4 \
             WHERE id = (SELECT id FROM attempts WHERE queue = $5 AND state = 'queued' \
                         AND scheduled_at <= $4 \
                         ORDER BY priority DESC, scheduled_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             AND state = 'queued' RETURNING *",
            vec![
                c.worker_id.into(),
                c.lease_token.into(),
                c.lease_expires_at.into(),
                c.now.into(),
                c.queue.into(),
            ],
        ),
        // SQLite has one writer at a time, which makes the sub-select and the update atomic.
        _ => (
            "UPDATE attempts SET state = 'leased', worker_id = ?, lease_token = ?, \
             lease_expires_at = ?, heartbeat_at = ? \
             WHERE id = (SELECT id FROM attempts WHERE queue = ? AND state = 'queued' \
                         AND scheduled_at <= ? \
                         ORDER BY priority DESC, scheduled_at, id LIMIT 1) \
             AND state = 'queued' RETURNING *",
            vec![
                c.worker_id.into(),
                c.lease_token.into(),
                c.lease_expires_at.into(),
                c.now.into(),
                c.queue.into(),
                c.now.into(),
            ],
        ),
    };
    let row =
        attempt::Model::find_by_statement(Statement::from_sql_and_values(backend, sql, values))
            .one(db)
            .await?;
    Ok(row)
}

/// `attempt.state: from → to` for the holder of `lease_token`.
pub async fn cas_attempt(
    db: &impl ConnectionTrait,
    id: &str,
    lease_token: Option<&str>,
    from: &[AttemptState],
    to: AttemptState,
    set: impl FnOnce(sea_orm::UpdateMany<attempt::Entity>) -> sea_orm::UpdateMany<attempt::Entity>,
) -> Result<bool, StoreError> {
    let mut update = attempt::Entity::update_many()
        .col_expr(attempt::Column::State, Expr::value(to.as_str()))
        .filter(attempt::Column::Id.eq(id))
        .filter(attempt::Column::State.is_in(from.iter().map(|s| s.as_str())));
    if let Some(token) = lease_token {
        update = update.filter(attempt::Column::LeaseToken.eq(token));
    }
    let res = set(update).exec(db).await?;
    Ok(res.rows_affected == 1)
}

/// Ids of attempts of `run` in any of `states`.
pub async fn attempts_in(
    db: &impl ConnectionTrait,
    run_id: &str,
    states: &[AttemptState],
) -> Result<Vec<attempt::Model>, StoreError> {
    Ok(attempt::Entity::find()
        .filter(attempt::Column::RunId.eq(run_id))
        .filter(attempt::Column::State.is_in(states.iter().map(|s| s.as_str())))
        .all(db)
        .await?)
}
