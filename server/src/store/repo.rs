//! Repository functions: the conditional updates that apply transitions, and the few
//! statements whose shape the hot paths depend on (claiming work, counting down).
//!
//! Every state change is `UPDATE … WHERE id = ? AND state = ?`; the boolean result says
//! whether this caller won. Callers pass `now` so that time is injectable.

use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, Statement,
};

use super::StoreError;
use super::entity::{attempt, pipeline, run, task};
use crate::domain::fairness::{Contender, FAIR_WINDOW_MS, fair_order};
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
            Func::coalesce([Expr::col(task::Column::StartedAt).into(), Expr::value(now)]).into(),
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

/// Lowers the count of unfinished upstream tasks of every task in `task_ids` by one and
/// returns those that are now blocked on nothing: two statements, however many dependents
/// a task has. The ids are distinct: a task's dependents list holds each task once (the
/// parser drops repeated needs).
pub async fn decrement_pending_many(
    db: &impl ConnectionTrait,
    task_ids: &[String],
) -> Result<Vec<task::Model>, StoreError> {
    if task_ids.is_empty() {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    let marks = vec!["?"; task_ids.len()].join(", ");
    // Only the counters come back: a wide layer counts down dozens of tasks per finish,
    // and few of them become ready.
    let sql = format!(
        "UPDATE tasks SET pending_deps = pending_deps - 1 WHERE id IN ({marks}) \
         RETURNING id, pending_deps, state"
    );
    let values = task_ids.iter().map(|id| id.as_str().into()).collect();
    let mut now_ready = Vec::new();
    for row in db.query_all(stmt(backend, &sql, values)).await? {
        let pending: i32 = row.try_get("", "pending_deps")?;
        let state: String = row.try_get("", "state")?;
        if pending == 0 && state == crate::domain::TaskState::Blocked.as_str() {
            now_ready.push(row.try_get::<String>("", "id")?);
        }
    }
    if now_ready.is_empty() {
        return Ok(Vec::new());
    }
    let mut ready = task::Entity::find()
        .filter(task::Column::Id.is_in(now_ready))
        .all(db)
        .await?;
    // Keep the order of the dependents list, so that events come out the same every time.
    let order: std::collections::HashMap<&str, usize> = task_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    ready.sort_by_key(|t| order.get(t.id.as_str()).copied().unwrap_or(usize::MAX));
    Ok(ready)
}

/// Counts finished tasks into the run and returns the run as it is now.
pub async fn count_finished(
    db: &impl ConnectionTrait,
    run_id: &str,
    finished: i32,
    failed: i32,
) -> Result<run::Model, StoreError> {
    let backend = db.get_database_backend();
    let sql = "UPDATE runs SET tasks_remaining = tasks_remaining - ?, \
               tasks_failed = tasks_failed + ? WHERE id = ? RETURNING *";
    let values = vec![finished.into(), failed.into(), run_id.into()];
    run::Model::find_by_statement(stmt(backend, sql, values))
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
    /// Only attempts of this tenant (a tenant's agent); `None` serves every tenant.
    pub tenant_id: Option<&'a str>,
}

/// A tenant with claimable work in a queue, and what it already has.
#[derive(Debug, FromQueryResult)]
struct Candidate {
    tenant_id: String,
    weight: i32,
    max_running: i32,
    /// Leased or running attempts of the tenant, in every queue (the quota).
    busy: i64,
    /// Attempts of the tenant in this queue that run or started within [`FAIR_WINDOW_MS`].
    share: i64,
}

/// Numbers `?` placeholders as `$1, $2, …` for PostgreSQL.
fn sql_for(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

fn stmt(backend: DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(backend, sql_for(backend, sql), values)
}

/// A waiting trigger job holds no worker, so it does not count against the quota (its
/// child run's tasks do); the queue name is `pipeline::TRIGGER_QUEUE`.
const BUSY: &str = "(SELECT COUNT(*) FROM attempts b WHERE b.tenant_id = t.id \
                     AND b.state IN ('leased', 'running') AND b.queue <> 'gantry:trigger')";

/// The tenants with claimable work in the queue, with their quota use and recent share
/// (unordered; `fair_order` decides).
pub async fn contenders(
    db: &impl ConnectionTrait,
    queue: &str,
    now: i64,
    only_tenant: Option<&str>,
) -> Result<Vec<Contender>, StoreError> {
    let backend = db.get_database_backend();
    let tenant: sea_orm::Value = only_tenant.map(str::to_owned).into();
    // Each count walks an index range of one tenant, never the whole backlog: the claim
    // runs inside the write lock, and a burst of thousands of queued attempts must not
    // make every claim slower. Share = started within the window, plus those holding a
    // worker that started before it (the same set as "leased or running, or started
    // within the window").
    let sql = format!(
        "SELECT t.id AS tenant_id, t.weight AS weight, t.max_running AS max_running, \
         {BUSY} AS busy, \
         (SELECT COUNT(*) FROM attempts s WHERE s.tenant_id = t.id AND s.queue = ? \
          AND s.started_at >= ?) \
         + (SELECT COUNT(*) FROM attempts r WHERE r.tenant_id = t.id \
          AND r.state IN ('leased', 'running') AND r.queue = ? \
          AND (r.started_at IS NULL OR r.started_at < ?)) AS share \
         FROM tenants t WHERE EXISTS (SELECT 1 FROM attempts a{} WHERE a.tenant_id = t.id \
           AND a.state = 'queued' AND a.queue = ? AND a.scheduled_at <= ?) \
         AND t.id = COALESCE(?, t.id)",
        claim_order(backend)
    );
    let values = vec![
        queue.into(),
        (now - FAIR_WINDOW_MS).into(),
        queue.into(),
        (now - FAIR_WINDOW_MS).into(),
        queue.into(),
        now.into(),
        tenant,
    ];
    let rows = Candidate::find_by_statement(stmt(backend, &sql, values))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Contender {
            tenant_id: r.tenant_id,
            weight: r.weight,
            max_running: r.max_running,
            busy: r.busy,
            share: r.share,
        })
        .collect())
}

/// A tenant's next queued attempt of a queue (queue, now, tenant): highest priority, then
/// oldest. The `attempts_claim_order` index holds this order, so it reads one entry.
/// SQLite is told to use it: without statistics its planner prefers the leasing index
/// and sorts the tenant's whole backlog.
fn next_queued(backend: DbBackend) -> String {
    format!(
        "SELECT id FROM attempts{} WHERE queue = ? AND state = 'queued' \
         AND scheduled_at <= ? AND tenant_id = ? ORDER BY priority DESC, scheduled_at, id LIMIT 1",
        claim_order(backend)
    )
}

/// SQLite's hint to read `attempts` through `attempts_claim_order`.
fn claim_order(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Sqlite => " INDEXED BY attempts_claim_order",
        _ => "",
    }
}

/// Claims the next queued attempt of a queue by compare-and-set `queued → leased`, and
/// starts it (`running`, with its deadline) in the same statement; exactly one caller
/// wins each attempt. The tenant is chosen fairly (the candidate with
/// the lowest recent share of the queue per unit of weight, see [`contenders`]), never one
/// at its `max_running`; within the tenant, highest priority, then oldest. When the
/// fairest tenant has nothing left to claim the next one is tried (work-conserving).
///
/// PostgreSQL: the tenant row is locked for the rest of the transaction before its quota
/// is counted, so replicas claiming for one tenant take turns and the count they see
/// includes each other's leases. Only the first lock waits; later ones skip a locked
/// tenant, so no transaction waits while holding a tenant lock (no deadlock).
pub async fn claim_attempt(
    db: &impl ConnectionTrait,
    c: Claim<'_>,
) -> Result<Option<attempt::Model>, StoreError> {
    let backend = db.get_database_backend();
    let mut first = true;
    for cand in fair_order(contenders(db, c.queue, c.now, c.tenant_id).await?) {
        if backend == DbBackend::Postgres {
            let lock = if first {
                "SELECT id FROM tenants WHERE id = ? FOR UPDATE"
            } else {
                "SELECT id FROM tenants WHERE id = ? FOR UPDATE SKIP LOCKED"
            };
            first = false;
            let locked = db
                .query_one(stmt(backend, lock, vec![cand.tenant_id.clone().into()]))
                .await?;
            if locked.is_none() {
                continue;
            }
            let busy_sql = format!("SELECT {BUSY} AS n FROM tenants t WHERE t.id = ?");
            let busy: i64 = db
                .query_one(stmt(
                    backend,
                    &busy_sql,
                    vec![cand.tenant_id.clone().into()],
                ))
                .await?
                .map(|r| r.try_get::<i64>("", "n"))
                .transpose()?
                .unwrap_or(0);
            if busy >= i64::from(cand.max_running) {
                continue;
            }
        }
        let lock_rows = if backend == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            // SQLite has one writer at a time, which makes the sub-select and the update
            // atomic.
            ""
        };
        // Leased and started in one statement: the deadline counts from now.
        let sql = format!(
            "UPDATE attempts SET state = 'running', worker_id = ?, lease_token = ?, \
             lease_expires_at = ?, heartbeat_at = ?, started_at = ?, \
             deadline_at = ? + (SELECT t.timeout_ms FROM tasks t WHERE t.id = attempts.task_id) \
             WHERE id = ({}{lock_rows}) AND state = 'queued' RETURNING *",
            next_queued(backend)
        );
        let values = vec![
            c.worker_id.into(),
            c.lease_token.into(),
            c.lease_expires_at.into(),
            c.now.into(),
            c.now.into(),
            c.now.into(),
            c.queue.into(),
            c.now.into(),
            cand.tenant_id.clone().into(),
        ];
        if let Some(row) = attempt::Model::find_by_statement(stmt(backend, &sql, values))
            .one(db)
            .await?
        {
            return Ok(Some(row));
        }
    }
    Ok(None)
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

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::next_queued;
    use crate::store::{Durability, Store};

    /// The claim takes a tenant's next attempt by reading one index entry, however many
    /// are queued: no sort of the backlog (which made every claim of a burst slower).
    #[tokio::test]
    async fn the_claim_reads_its_attempt_in_index_order_without_sorting_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url(dir.path()), Durability::Normal)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let plan = store
            .db()
            .query_all(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {}", next_queued(DbBackend::Sqlite)),
                ["q".into(), 0i64.into(), "t".into()],
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String>("", "detail").unwrap())
            .collect::<Vec<_>>()
            .join("; ");
        assert!(plan.contains("attempts_claim_order"), "{plan}");
        assert!(!plan.contains("B-TREE"), "{plan}");
    }
}
