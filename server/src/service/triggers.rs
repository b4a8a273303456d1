//! Trigger jobs: a task that starts a run of another pipeline of its tenant (the child
//! run) instead of running steps on a worker.
//!
//! A trigger task's attempts sit in the reserved queue [`TRIGGER_QUEUE`], which no worker
//! serves. The scheduler calls [`Service::start_triggers`]: in one transaction it takes a
//! queued attempt (compare-and-set, so one node wins), marks it running and plans the
//! child run, linked to the task by `runs.parent_task_id` and `tasks.child_run_id`. With
//! `wait: false` the attempt succeeds at once; with `wait: true` it stays running, holding
//! neither a worker nor a lease, until the transaction that finishes the child run
//! finishes it too ([`child_finished`], called from `progress::finish_run`). Nothing waits
//! in memory, so a restart loses nothing: queued attempts are taken on the next pass, and
//! the reconciler re-checks running ones against their child's state.
//!
//! This module must not run anything itself and must not admit child runs through the
//! tenant's token bucket: the parent's trigger was admitted, and its depth is bounded.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use serde_json::json;
use tracing::instrument;

use super::planning::attempt_event;
use super::progress::{Effects, parse_state};
use super::runs::{ParentTask, TriggerInput, plan_run_in};
use super::work::{attempt_started, task_and_run_of};
use super::{Service, ServiceError};
use crate::domain::{AttemptState, ErrorKind, RunState, Transition};
use crate::events::LogRecord;
use crate::pipeline::{PlannedTask, TRIGGER_QUEUE, TriggerSpec};
use crate::store::entity::{attempt, log_chunk, pipeline, run, task};
use crate::store::repo;

/// How deeply trigger jobs may nest runs by default: a run started by a trigger job of a
/// run started by a trigger job … at most this many levels below a run started otherwise.
pub const DEFAULT_MAX_TRIGGER_DEPTH: i32 = 5;

/// The error code that starts the message of a trigger refused for its depth.
pub const TRIGGER_DEPTH: &str = "TRIGGER_DEPTH";
/// The error code that starts the message of a trigger naming no pipeline of its tenant.
pub const TRIGGER_PIPELINE_NOT_FOUND: &str = "TRIGGER_PIPELINE_NOT_FOUND";
/// The error code that starts the message of a child run that was refused or failed.
pub const TRIGGER_FAILED: &str = "TRIGGER_FAILED";

/// The ref a run builds when it cannot build its parent's commit.
const DEFAULT_REF: &str = "refs/heads/main";

impl Service {
    /// Starts the child runs of trigger tasks whose attempt is queued, each in its own
    /// transaction. Returns how many attempts this node took.
    #[instrument(skip_all)]
    pub async fn start_triggers(&self, limit: u64) -> Result<usize, ServiceError> {
        let now = self.now_ms();
        let due = attempt::Entity::find()
            .filter(attempt::Column::Queue.eq(TRIGGER_QUEUE))
            .filter(attempt::Column::State.eq(AttemptState::Queued.as_str()))
            .filter(attempt::Column::ScheduledAt.lte(now))
            .order_by_desc(attempt::Column::Priority)
            .order_by_asc(attempt::Column::ScheduledAt)
            .order_by_asc(attempt::Column::Id)
            .limit(limit)
            .all(self.store().db())
            .await?;
        let mut taken = 0;
        for a in due {
            match self.start_trigger(&a).await {
                Ok(true) => taken += 1,
                Ok(false) => {}
                // One attempt's trouble must not hold up the others; it stays queued.
                Err(e) => tracing::warn!(
                    attempt_id = %a.id,
                    error = %e,
                    "trigger job not started; trying again on the next pass"
                ),
            }
        }
        Ok(taken)
    }

    /// Takes one queued trigger attempt and starts its child run; false when another
    /// node took it first.
    #[instrument(skip_all, fields(attempt_id = %queued.id, run_id = %queued.run_id))]
    async fn start_trigger(&self, queued: &attempt::Model) -> Result<bool, ServiceError> {
        let wtx = self.store().write().await?;
        let db = &wtx.tx;
        let now = self.now_ms();
        let taken = repo::cas_attempt(
            db,
            &queued.id,
            None,
            &[AttemptState::Queued],
            AttemptState::Running,
            |u| u.col_expr(attempt::Column::StartedAt, Expr::value(now)),
        )
        .await?;
        if !taken {
            return Ok(false);
        }
        let a = attempt::Entity::find_by_id(queued.id.clone())
            .one(db)
            .await?
            .ok_or_else(|| ServiceError::Internal("attempt vanished".into()))?;
        let (t, r) = task_and_run_of(db, &a).await?;
        let mut fx = Effects::default();
        attempt_started(
            db,
            &a,
            &t,
            &r,
            "taken by the server: trigger job",
            now,
            &mut fx,
        )
        .await?;
        let spec: PlannedTask = serde_json::from_str(&t.spec)
            .map_err(|e| ServiceError::Internal(format!("corrupt task spec: {e}")))?;
        let Some(trigger) = spec.trigger else {
            let message = format!("{TRIGGER_FAILED}: task {:?} is not a trigger job", t.name);
            end_trigger_attempt(db, &a, Err(message), now, &mut fx).await?;
            self.commit(wtx, now, fx).await?;
            return Ok(true);
        };
        match self
            .launch_child(db, &r, &t, &a, &trigger, now, &mut fx)
            .await?
        {
            Err(message) => end_trigger_attempt(db, &a, Err(message), now, &mut fx).await?,
            Ok(child) => {
                task::Entity::update_many()
                    .col_expr(task::Column::ChildRunId, Expr::value(child.id.clone()))
                    .filter(task::Column::Id.eq(t.id.clone()))
                    .exec(db)
                    .await?;
                let name = child_name(db, &child).await?;
                let line = if trigger.wait {
                    format!("started child run {name} ({}); waiting for it\n", child.id)
                } else {
                    format!("started child run {name} ({})\n", child.id)
                };
                let a = log_line(db, &a, &line, now, &mut fx).await?;
                let child_state = parse_state::<RunState>(&child.state)?;
                if !trigger.wait {
                    end_trigger_attempt(db, &a, Ok(None), now, &mut fx).await?;
                } else if child_state.is_terminal() {
                    // Planned finished (every task skipped or cached): nothing to wait for.
                    child_finished(db, &child, child_state, now, &mut fx).await?;
                }
            }
        }
        self.commit(wtx, now, fx).await?;
        Ok(true)
    }

    /// Plans the child run of a trigger task in a savepoint of the caller's transaction.
    /// `Err(message)` when it cannot start (too deep, no such pipeline, an invalid file):
    /// nothing of the child is written then, and the caller fails the attempt.
    #[allow(clippy::too_many_arguments)]
    async fn launch_child(
        &self,
        db: &sea_orm::DatabaseTransaction,
        parent_run: &run::Model,
        t: &task::Model,
        a: &attempt::Model,
        trigger: &TriggerSpec,
        now: i64,
        fx: &mut Effects,
    ) -> Result<Result<run::Model, String>, ServiceError> {
        let depth = parent_run.trigger_depth + 1;
        let max = self.config().max_trigger_depth;
        if depth > max {
            return Ok(Err(format!(
                "{TRIGGER_DEPTH}: starting pipeline `{}` would nest runs {depth} trigger jobs \
                 deep, past the limit of {max}; does a pipeline trigger itself, directly or \
                 through others?",
                trigger.pipeline
            )));
        }
        let Some(child_pipeline) = pipeline::Entity::find()
            .filter(pipeline::Column::TenantId.eq(parent_run.tenant_id.clone()))
            .filter(pipeline::Column::Name.eq(trigger.pipeline.clone()))
            .one(db)
            .await?
        else {
            return Ok(Err(format!(
                "{TRIGGER_PIPELINE_NOT_FOUND}: no pipeline named `{}` in this tenant",
                trigger.pipeline
            )));
        };
        let file = match crate::pipeline::parse(&child_pipeline.file) {
            Ok(f) => f,
            Err(errors) => {
                return Ok(Err(format!(
                    "{TRIGGER_FAILED}: pipeline `{}` does not validate: {}",
                    trigger.pipeline,
                    ServiceError::InvalidPipeline(errors)
                )));
            }
        };
        let input = child_input(parent_run, &child_pipeline, trigger, &a.id);
        let savepoint = db.begin().await?;
        let mut child_fx = Effects::default();
        let planned = plan_run_in(
            &savepoint,
            &child_pipeline,
            &file,
            &input,
            None,
            Some(ParentTask {
                task_id: &t.id,
                depth,
            }),
            now,
            &mut child_fx,
        )
        .await;
        match planned {
            Ok(child) => {
                savepoint.commit().await?;
                fx.events.extend(child_fx.events);
                for q in child_fx.queues {
                    fx.wake(&q);
                }
                fx.cancel_attempts.extend(child_fx.cancel_attempts);
                fx.retry_scheduled |= child_fx.retry_scheduled;
                fx.logs.extend(child_fx.logs);
                Ok(Ok(child))
            }
            Err(e) => {
                savepoint.rollback().await?;
                match e {
                    // Worth another try on the next pass: the whole transaction is dropped
                    // and the attempt stays queued.
                    ServiceError::Internal(_) | ServiceError::Conflict(_) => Err(e),
                    refused => Ok(Err(format!(
                        "{TRIGGER_FAILED}: pipeline `{}` refused the run: {refused}",
                        trigger.pipeline
                    ))),
                }
            }
        }
    }

    /// Finishes waiting trigger attempts whose child run has ended, should a child have
    /// ended without doing so itself. Returns how many it finished.
    pub(crate) async fn settle_waiting_triggers(&self, limit: u64) -> Result<usize, ServiceError> {
        let waiting = attempt::Entity::find()
            .filter(attempt::Column::Queue.eq(TRIGGER_QUEUE))
            .filter(attempt::Column::State.eq(AttemptState::Running.as_str()))
            .limit(limit)
            .all(self.store().db())
            .await?;
        let mut settled = 0;
        for a in waiting {
            let Some(child_id) = task::Entity::find_by_id(a.task_id.clone())
                .one(self.store().db())
                .await?
                .and_then(|t| t.child_run_id)
            else {
                continue;
            };
            let Some(child) = run::Entity::find_by_id(child_id)
                .one(self.store().db())
                .await?
            else {
                continue;
            };
            let state = parse_state::<RunState>(&child.state)?;
            if !state.is_terminal() {
                continue;
            }
            let wtx = self.store().write().await?;
            let now = self.now_ms();
            let mut fx = Effects::default();
            child_finished(&wtx.tx, &child, state, now, &mut fx).await?;
            let changed = !fx.events.is_empty();
            self.commit(wtx, now, fx).await?;
            if changed {
                settled += 1;
            }
        }
        Ok(settled)
    }
}

/// The child run's commit: the parent's when both pipelines build the same repository.
/// Another repository has no such commit, so the child builds its ref's head, the way a
/// scheduled run does without a known sha: the sha is the ref name and the cache is off.
fn child_input(
    parent: &run::Model,
    child: &pipeline::Model,
    trigger: &TriggerSpec,
    attempt_id: &str,
) -> TriggerInput {
    let same_repo = child.provider == parent.provider && child.repository == parent.repository;
    let git_ref = trigger
        .r#ref
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| {
            if same_repo {
                parent.git_ref.clone()
            } else {
                DEFAULT_REF.to_owned()
            }
        });
    TriggerInput {
        pipeline: child.id.clone(),
        sha: if same_repo {
            parent.sha.clone()
        } else {
            git_ref.clone()
        },
        git_ref,
        // One child per attempt, however often the attempt is looked at.
        idempotency_key: Some(format!("trigger:{attempt_id}")),
        no_cache: parent.no_cache || !same_repo,
        priority: Some(parent.priority),
        trigger_kind: Some("upstream".into()),
    }
}

/// `<pipeline name> #<number>`, for messages.
async fn child_name(db: &impl ConnectionTrait, child: &run::Model) -> Result<String, ServiceError> {
    let name = pipeline::Entity::find_by_id(child.pipeline_id.clone())
        .one(db)
        .await?
        .map_or_else(|| "?".to_owned(), |p| p.name);
    Ok(format!("{name} #{}", child.number))
}

/// Called in the transaction that moved `child` to a terminal state: the trigger task
/// waiting for it (if any, and if it still waits for this very run) takes its result.
pub(crate) async fn child_finished(
    db: &impl ConnectionTrait,
    child: &run::Model,
    state: RunState,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let Some(parent_task_id) = &child.parent_task_id else {
        return Ok(());
    };
    let Some(t) = task::Entity::find_by_id(parent_task_id.clone())
        .one(db)
        .await?
    else {
        return Ok(());
    };
    // A task retried by hand has started another child: this one's end is not its result.
    if t.child_run_id.as_deref() != Some(child.id.as_str()) {
        return Ok(());
    }
    let waits = serde_json::from_str::<PlannedTask>(&t.spec)
        .ok()
        .and_then(|s| s.trigger)
        .is_some_and(|tr| tr.wait);
    if !waits {
        return Ok(());
    }
    let Some(a) = attempt::Entity::find()
        .filter(attempt::Column::TaskId.eq(t.id.clone()))
        .filter(attempt::Column::State.eq(AttemptState::Running.as_str()))
        .order_by_desc(attempt::Column::Idx)
        .one(db)
        .await?
    else {
        return Ok(());
    };
    let name = child_name(db, child).await?;
    let result = match state {
        RunState::Succeeded => Ok(format!("child run {name} ({}) succeeded", child.id)),
        RunState::Cancelled => Err(format!(
            "{TRIGGER_FAILED}: child run {name} ({}) was cancelled",
            child.id
        )),
        _ => Err(format!(
            "{TRIGGER_FAILED}: child run {name} ({}) failed",
            child.id
        )),
    };
    let line = match &result {
        Ok(m) | Err(m) => format!("{m}\n"),
    };
    let a = log_line(db, &a, &line, now, fx).await?;
    end_trigger_attempt(db, &a, result.map(Some), now, fx).await
}

/// Ends a running trigger attempt: succeeded, or failed with `message` (kind `exit`: the
/// job's own work, the child run, failed), then what follows as for any attempt.
async fn end_trigger_attempt(
    db: &impl ConnectionTrait,
    a: &attempt::Model,
    result: Result<Option<String>, String>,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let (to, message) = match &result {
        Ok(_) => (AttemptState::Succeeded, None),
        Err(m) => (AttemptState::Failed, Some(m.clone())),
    };
    let transition = Transition::check(
        AttemptState::Running,
        to,
        match &result {
            Ok(Some(m)) => m.clone(),
            Ok(None) => "child run accepted".to_owned(),
            Err(m) => m.clone(),
        },
    )?;
    let kind = message.as_ref().map(|_| ErrorKind::Exit);
    let won = repo::cas_attempt(db, &a.id, None, &[AttemptState::Running], to, |u| {
        u.col_expr(attempt::Column::FinishedAt, Expr::value(now))
            .col_expr(
                attempt::Column::ErrorKind,
                Expr::value(kind.map(|k| k.as_str())),
            )
            .col_expr(attempt::Column::ErrorMessage, Expr::value(message.clone()))
    })
    .await?;
    if !won {
        return Ok(());
    }
    let details = message
        .as_ref()
        .map(|m| json!({ "errorKind": "exit", "message": m }));
    fx.events.push(attempt_event(
        &a.tenant_id,
        &a.run_id,
        &a.task_id,
        &a.id,
        transition,
        details,
    ));
    Box::pin(super::work::after_attempt(db, a, kind, None, now, fx)).await
}

/// Appends one line to a trigger attempt's log, as a worker would for its output.
async fn log_line(
    db: &impl ConnectionTrait,
    a: &attempt::Model,
    line: &str,
    now: i64,
    fx: &mut Effects,
) -> Result<attempt::Model, ServiceError> {
    let current = attempt::Entity::find_by_id(a.id.clone())
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::Internal("attempt vanished".into()))?;
    log_chunk::Entity::insert(log_chunk::ActiveModel {
        id: sea_orm::NotSet,
        attempt_id: Set(a.id.clone()),
        byte_offset: Set(current.log_bytes),
        stream: Set("stdout".into()),
        data: Set(line.to_owned()),
        created_at: Set(now),
    })
    .exec_without_returning(db)
    .await?;
    attempt::Entity::update_many()
        .col_expr(
            attempt::Column::LogBytes,
            Expr::value(current.log_bytes + line.len() as i64),
        )
        .filter(attempt::Column::Id.eq(a.id.clone()))
        .exec(db)
        .await?;
    fx.logs.push(LogRecord {
        attempt_id: a.id.clone(),
        offset: current.log_bytes,
        stream: "stdout".into(),
        data: line.to_owned(),
    });
    Ok(attempt::Model {
        log_bytes: current.log_bytes + line.len() as i64,
        ..current
    })
}

/// Called when `run` is cancelled, for each of its trigger attempts that is running: the
/// attempt is cancelled at once (no worker to tell), and a child run it waits for is
/// cancelled with it.
pub(crate) async fn cancel_trigger_attempt(
    db: &impl ConnectionTrait,
    run: &run::Model,
    a: &attempt::Model,
    now: i64,
    reason: &str,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let tr = Transition::check(AttemptState::Running, AttemptState::Cancelled, reason)?;
    let done = repo::cas_attempt(
        db,
        &a.id,
        None,
        &[AttemptState::Running],
        AttemptState::Cancelled,
        |u| {
            u.col_expr(attempt::Column::FinishedAt, Expr::value(now))
                .col_expr(attempt::Column::ErrorKind, Expr::value("cancelled"))
        },
    )
    .await?;
    if !done {
        return Ok(());
    }
    fx.events.push(attempt_event(
        &run.tenant_id,
        &run.id,
        &a.task_id,
        &a.id,
        tr,
        None,
    ));
    let Some(t) = task::Entity::find_by_id(a.task_id.clone()).one(db).await? else {
        return Ok(());
    };
    let waits = serde_json::from_str::<PlannedTask>(&t.spec)
        .ok()
        .and_then(|s| s.trigger)
        .is_some_and(|tr| tr.wait);
    let Some(child_id) = t.child_run_id.filter(|_| waits) else {
        return Ok(());
    };
    if let Some(child) = run::Entity::find_by_id(child_id).one(db).await? {
        Box::pin(super::runs::cancel_in_tx(
            db,
            &child,
            now,
            "its parent run was cancelled",
            fx,
        ))
        .await?;
    }
    Ok(())
}
