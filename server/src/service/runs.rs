//! Triggering, cancelling and retrying runs.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set, TryIntoModel,
};
use tracing::instrument;

use super::auth::Scope;
use super::planning::{self, NewAttempt, RunFacts, attempt_event, task_event};
use super::progress::{self, Effects, parse_state, run_event, run_facts};
use super::{Caller, Service, ServiceError};
use crate::domain::{AttemptId, AttemptState, RunId, RunState, TaskState, Transition, dag};
use crate::pipeline::{self, PlanContext};
use crate::store::entity::{attempt, run, task};
use crate::store::{StoreError, repo};

/// Input of `triggerRun`.
#[derive(Debug, Clone, Default)]
pub struct TriggerInput {
    pub pipeline: String,
    pub sha: String,
    pub git_ref: String,
    /// The same `(pipeline, sha, ref, key)` returns the run it created first.
    pub idempotency_key: Option<String>,
    /// Ignore cache hits and run every task.
    pub no_cache: bool,
    pub priority: Option<i32>,
    /// `api`, `webhook`, `schedule`, `upstream` or `retry`.
    pub trigger_kind: Option<String>,
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), ServiceError> {
    if value.is_empty()
        || value.len() > max
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ServiceError::BadInput(format!(
            "{what} must be 1 to {max} characters without spaces"
        )));
    }
    Ok(())
}

impl Service {
    /// Plans and stores a run: the DAG, its tasks, the first attempts of the tasks that can
    /// start, and the events, in one transaction. Nothing is written when planning fails.
    #[instrument(skip_all, fields(pipeline_id = %input.pipeline, run_id = tracing::field::Empty))]
    pub async fn trigger_run(
        &self,
        caller: &Caller,
        input: TriggerInput,
    ) -> Result<run::Model, ServiceError> {
        caller.require(Scope::Write)?;
        let pipeline = self.pipeline(caller, &input.pipeline).await?;
        check_text("sha", &input.sha, 200)?;
        check_text("ref", &input.git_ref, 500)?;
        if let Some(key) = &input.idempotency_key
            && (key.is_empty() || key.len() > 200)
        {
            return Err(ServiceError::BadInput(
                "idempotencyKey must be 1 to 200 characters".into(),
            ));
        }
        // A repeated idempotent trigger is an answer, not new work: it takes no token.
        if let Some(existing) = self.find_idempotent(&pipeline.id, &input).await? {
            return Ok(existing);
        }
        self.admit_trigger(&pipeline.tenant_id).await?;
        self.trigger_planned(&pipeline, &input, None).await
    }

    /// Plans and stores a run of `pipeline`; `reuse` names the tasks of an earlier run
    /// whose results count as cache hits (`rerunFailed`).
    pub(crate) async fn trigger_planned(
        &self,
        pipeline: &crate::store::entity::pipeline::Model,
        input: &TriggerInput,
        reuse: Option<&HashMap<String, super::cache::Reusable>>,
    ) -> Result<run::Model, ServiceError> {
        let file = pipeline::parse(&pipeline.file).map_err(ServiceError::InvalidPipeline)?;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.plan_run(pipeline, &file, input, reuse).await {
                // Another node took the flight of one of our keys while we planned: plan
                // again, and wait for its build this time.
                Err(ServiceError::Conflict(m)) if m == super::cache::FLIGHT_RACE && tries < 10 => {
                    continue;
                }
                // A concurrent trigger with the same idempotency key won the insert.
                Err(ServiceError::Conflict(_)) if input.idempotency_key.is_some() => {
                    return self
                        .find_idempotent(&pipeline.id, input)
                        .await?
                        .ok_or_else(|| ServiceError::Conflict("concurrent trigger".into()));
                }
                other => return other,
            }
        }
    }

    async fn find_idempotent(
        &self,
        pipeline_id: &str,
        input: &TriggerInput,
    ) -> Result<Option<run::Model>, ServiceError> {
        find_idempotent_in(self.store().db(), pipeline_id, input).await
    }

    async fn plan_run(
        &self,
        pipeline: &crate::store::entity::pipeline::Model,
        file: &pipeline::PipelineFile,
        input: &TriggerInput,
        reuse: Option<&HashMap<String, super::cache::Reusable>>,
    ) -> Result<run::Model, ServiceError> {
        let wtx = self.store().write().await?;
        let now = self.now_ms();
        let mut fx = Effects::default();
        let run = plan_run_in(&wtx.tx, pipeline, file, input, reuse, None, now, &mut fx).await?;
        self.commit(wtx, now, fx).await?;
        // As committed: the caller sees the run its trigger made, even if it moved since.
        Ok(run)
    }

    /// Appends the events, commits, then announces what changed.
    pub(crate) async fn commit(
        &self,
        wtx: crate::store::WriteTx<'_>,
        now: i64,
        fx: Effects,
    ) -> Result<(), ServiceError> {
        // Trigger jobs are started by the scheduler, not leased by a worker.
        let scheduler =
            fx.retry_scheduled || fx.queues.iter().any(|q| q == pipeline::TRIGGER_QUEUE);
        let appended =
            crate::store::events::append_ordered(&wtx.tx, self.node(), now, fx.events).await?;
        let order = wtx.commit_ordered().await?;
        super::metrics::count_committed(&appended.records);
        self.bus().publish_commit(crate::events::Commit {
            node: self.node().to_owned(),
            prev: Some(appended.prev),
            events: appended.records,
            logs: fx.logs,
            cancels: fx.cancel_attempts.clone(),
            queues: fx.queues.clone(),
            scheduler,
        });
        drop(order);
        for q in &fx.queues {
            self.wakeups().wake_queue(q);
        }
        for attempt_id in fx.cancel_attempts {
            self.bus()
                .signal(crate::events::Signal::Cancel { attempt_id });
        }
        if scheduler {
            self.wakeups().wake_scheduler();
        }
        Ok(())
    }

    /// Cancels a run: queued work is cancelled at once, running attempts are told to stop.
    #[instrument(skip_all, fields(run_id = %id))]
    pub async fn cancel_run(&self, caller: &Caller, id: &str) -> Result<run::Model, ServiceError> {
        caller.require(Scope::Write)?;
        let run = self.run(caller, id).await?;
        if parse_state::<RunState>(&run.state)?.is_terminal() {
            return Err(ServiceError::InvalidTransition(format!(
                "run is {} already",
                run.state
            )));
        }
        let wtx = self.store().write().await?;
        let now = self.now_ms();
        let current = run::Entity::find_by_id(run.id.clone())
            .one(&wtx.tx)
            .await?
            .ok_or(ServiceError::not_found("run"))?;
        let mut fx = Effects::default();
        cancel_in_tx(&wtx.tx, &current, now, "cancelled by user", &mut fx).await?;
        self.commit(wtx, now, fx).await?;
        self.run(caller, id).await
    }

    /// Retries a failed task by hand: a new attempt, and the tasks skipped because of its
    /// failure are planned again. The one way out of a terminal state, and only by hand.
    #[instrument(skip_all, fields(task_id = %id))]
    pub async fn retry_task(&self, caller: &Caller, id: &str) -> Result<task::Model, ServiceError> {
        caller.require(Scope::Write)?;
        let t = self.task(caller, id).await?;
        if t.state != TaskState::Failed.as_str() {
            return Err(ServiceError::InvalidTransition(format!(
                "only a failed task can be retried; this one is {}",
                t.state
            )));
        }
        let wtx = self.store().write().await?;
        let db = &wtx.tx;
        let now = self.now_ms();
        let run = run::Entity::find_by_id(t.run_id.clone())
            .one(db)
            .await?
            .ok_or(ServiceError::not_found("run"))?;
        let run_state = parse_state::<RunState>(&run.state)?;
        if matches!(run_state, RunState::Cancelling | RunState::Cancelled) {
            return Err(ServiceError::InvalidTransition(
                "the run was cancelled".into(),
            ));
        }
        let mut fx = Effects::default();
        let reopened = reopen(db, &run, &t, now, &mut fx).await?;
        run::Entity::update_many()
            .col_expr(
                run::Column::TasksRemaining,
                Expr::col(run::Column::TasksRemaining).add(reopened),
            )
            .col_expr(
                run::Column::TasksFailed,
                Expr::col(run::Column::TasksFailed).sub(1),
            )
            .col_expr(run::Column::State, Expr::value(RunState::Running.as_str()))
            .col_expr(run::Column::FinishedAt, Expr::value(Option::<i64>::None))
            .filter(run::Column::Id.eq(run.id.clone()))
            .exec(db)
            .await?;
        if run_state != RunState::Running {
            fx.events.push(run_event(
                &run,
                Transition {
                    entity: crate::domain::Entity::Run,
                    from: Some(run_state.as_str()),
                    to: RunState::Running.as_str(),
                    reason: "task retried by hand".into(),
                },
            ));
        }
        self.commit(wtx, now, fx).await?;
        self.task(caller, id).await
    }

    /// A new run of the same commit in which every task that succeeded (or was cached)
    /// before is a cache hit, so that only the failed subgraph runs again. A task whose
    /// inputs changed since (the pipeline file was updated) runs as well.
    #[instrument(skip_all, fields(run_id = %run_id))]
    pub async fn rerun_failed(
        &self,
        caller: &Caller,
        run_id: &str,
    ) -> Result<run::Model, ServiceError> {
        caller.require(Scope::Write)?;
        let old = self.run(caller, run_id).await?;
        if !parse_state::<RunState>(&old.state)?.is_terminal() {
            return Err(ServiceError::InvalidTransition(format!(
                "run is {}; only a finished run can be rerun",
                old.state
            )));
        }
        let pipeline = self.pipeline(caller, &old.pipeline_id).await?;
        let reuse: HashMap<String, super::cache::Reusable> = task::Entity::find()
            .filter(task::Column::RunId.eq(old.id.clone()))
            .filter(
                task::Column::State
                    .is_in([TaskState::Succeeded.as_str(), TaskState::Cached.as_str()]),
            )
            .all(self.store().db())
            .await?
            .into_iter()
            .map(|t| {
                (
                    t.name.clone(),
                    super::cache::Reusable {
                        task_id: t.id,
                        cache_key: t.cache_key,
                        spec: t.spec,
                    },
                )
            })
            .collect();
        let input = TriggerInput {
            pipeline: pipeline.id.clone(),
            sha: old.sha.clone(),
            git_ref: old.git_ref.clone(),
            idempotency_key: None,
            no_cache: false,
            priority: Some(old.priority),
            trigger_kind: Some("retry".into()),
        };
        self.trigger_planned(&pipeline, &input, Some(&reuse)).await
    }
}

/// The trigger task that starts a run, and the depth the run will have.
#[derive(Clone, Copy)]
pub(crate) struct ParentTask<'a> {
    pub task_id: &'a str,
    pub depth: i32,
}

pub(crate) async fn find_idempotent_in(
    db: &impl ConnectionTrait,
    pipeline_id: &str,
    input: &TriggerInput,
) -> Result<Option<run::Model>, ServiceError> {
    let Some(key) = &input.idempotency_key else {
        return Ok(None);
    };
    Ok(run::Entity::find()
        .filter(run::Column::PipelineId.eq(pipeline_id))
        .filter(run::Column::Sha.eq(input.sha.clone()))
        .filter(run::Column::GitRef.eq(input.git_ref.clone()))
        .filter(run::Column::IdempotencyKey.eq(key.clone()))
        .one(db)
        .await?)
}

/// Plans and inserts a run inside the caller's transaction; what it changed goes to `fx`
/// for the caller to announce after its commit.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn plan_run_in(
    db: &impl ConnectionTrait,
    pipeline: &crate::store::entity::pipeline::Model,
    file: &pipeline::PipelineFile,
    input: &TriggerInput,
    reuse: Option<&HashMap<String, super::cache::Reusable>>,
    parent: Option<ParentTask<'_>>,
    now: i64,
    fx: &mut Effects,
) -> Result<run::Model, ServiceError> {
    if let Some(existing) = find_idempotent_in(db, &pipeline.id, input).await? {
        return Ok(existing);
    }
    let number = repo::next_run_number(db, &pipeline.id).await?;
    let ctx = PlanContext {
        repository: pipeline.repository.clone(),
        sha: input.sha.clone(),
        r#ref: input.git_ref.clone(),
        run_number: number,
    };
    let mut planned = pipeline::plan(file, &ctx).map_err(ServiceError::InvalidPipeline)?;
    let nodes: Vec<(String, Vec<String>)> = planned
        .iter()
        .map(|t| (t.name.clone(), t.needs.clone()))
        .collect();
    let order = dag::topo_order(&nodes).map_err(|e| ServiceError::BadInput(e.to_string()))?;
    let mut slots: Vec<Option<pipeline::PlannedTask>> = planned.drain(..).map(Some).collect();
    let planned: Vec<pipeline::PlannedTask> =
        order.into_iter().filter_map(|i| slots[i].take()).collect();

    let run_id = RunId::new().to_string();
    tracing::Span::current().record("run_id", run_id.as_str());
    let (group, cancel_in_progress) = match &file.concurrency {
        Some(c) => {
            let mut vars = ctx.vars();
            vars.extend(
                file.env
                    .iter()
                    .map(|(k, v)| (format!("env.{k}"), v.clone())),
            );
            let group = pipeline::expr::substitute(&c.group, &vars)
                .map_err(|e| ServiceError::BadInput(format!("concurrency.group: {e}")))?;
            (Some(group), c.cancel_in_progress)
        }
        None => (None, false),
    };
    let mut held = false;
    if let Some(group) = &group {
        let active = run::Entity::find()
            .filter(run::Column::TenantId.eq(pipeline.tenant_id.clone()))
            .filter(run::Column::ConcurrencyGroup.eq(group.clone()))
            .filter(run::Column::State.is_in([
                RunState::Queued.as_str(),
                RunState::Running.as_str(),
                RunState::Cancelling.as_str(),
            ]))
            .all(db)
            .await?;
        if cancel_in_progress {
            for other in active {
                if other.state != RunState::Cancelling.as_str() {
                    cancel_in_tx(
                        db,
                        &other,
                        now,
                        "superseded by a newer run of its concurrency group",
                        fx,
                    )
                    .await?;
                }
            }
        } else {
            held = !active.is_empty();
        }
    }

    let total = planned.len() as i32;
    let model = run::ActiveModel {
        id: Set(run_id.clone()),
        tenant_id: Set(pipeline.tenant_id.clone()),
        pipeline_id: Set(pipeline.id.clone()),
        number: Set(number),
        provider: Set(pipeline.provider.clone()),
        repository: Set(pipeline.repository.clone()),
        sha: Set(input.sha.clone()),
        git_ref: Set(input.git_ref.clone()),
        trigger_kind: Set(input.trigger_kind.clone().unwrap_or_else(|| "api".into())),
        idempotency_key: Set(input.idempotency_key.clone()),
        concurrency_group: Set(group),
        cancel_in_progress: Set(cancel_in_progress),
        priority: Set(input.priority.unwrap_or(0)),
        state: Set(RunState::Queued.as_str().to_owned()),
        parent_task_id: Set(parent.map(|p| p.task_id.to_owned())),
        trigger_depth: Set(parent.map_or(0, |p| p.depth)),
        held: Set(held),
        tasks_total: Set(total),
        tasks_remaining: Set(total),
        tasks_failed: Set(0),
        created_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        no_cache: Set(input.no_cache),
    };
    // Every column is set: the row is known without reading it back.
    run::Entity::insert(model.clone())
        .exec_without_returning(db)
        .await
        .map_err(StoreError::from)?;
    let run = model.try_into_model().map_err(StoreError::from)?;
    fx.events.push(run_event(
        &run,
        Transition::created(RunState::Queued, "triggered"),
    ));
    let facts = RunFacts {
        run_id: &run.id,
        tenant_id: &run.tenant_id,
        provider: &run.provider,
        repository: &run.repository,
        sha: &run.sha,
        priority: run.priority,
        held,
        now,
    };
    let keys = planning::cache_keys(&facts, &planned);
    let cache = super::cache::plan_lookup(
        db,
        &run.tenant_id,
        &planned,
        &keys,
        input.no_cache,
        reuse,
        now,
    )
    .await?;
    let rows = planning::plan_rows(&facts, planned, keys, &cache);
    let finished = rows.skipped + rows.cached.len() as i32;
    super::cache::apply_plan(db, &facts, &rows).await?;
    fx.events.extend(rows.events);
    for q in &rows.queues {
        fx.wake(q);
    }
    repo::insert_tasks(db, rows.tasks).await?;
    repo::insert_attempts(db, rows.attempts).await?;
    let run = if finished > 0 {
        let run = repo::count_finished(db, &run.id, finished, 0).await?;
        if run.tasks_remaining <= 0 {
            progress::finish_run(db, &run, now, fx).await?;
            // Finished at once (every task cached or skipped): as that left it.
            return Ok(run::Entity::find_by_id(run.id.clone())
                .one(db)
                .await?
                .unwrap_or(run));
        }
        run
    } else {
        run
    };
    Ok(run)
}

/// Reopens a failed task with a new attempt and re-blocks the tasks that were skipped
/// downstream of it. Returns how many tasks are unfinished again.
async fn reopen(
    db: &impl ConnectionTrait,
    run: &run::Model,
    failed: &task::Model,
    now: i64,
    fx: &mut Effects,
) -> Result<i32, ServiceError> {
    let facts = run_facts(run, now);
    let last = attempt::Entity::find()
        .filter(attempt::Column::TaskId.eq(failed.id.clone()))
        .order_by_desc(attempt::Column::Idx)
        .one(db)
        .await?;
    let index = last.map(|a| a.idx).unwrap_or(0) + 1;
    task::Entity::update_many()
        .col_expr(task::Column::State, Expr::value(TaskState::Ready.as_str()))
        .col_expr(task::Column::FinishedAt, Expr::value(Option::<i64>::None))
        .filter(task::Column::Id.eq(failed.id.clone()))
        .filter(task::Column::State.eq(TaskState::Failed.as_str()))
        .exec(db)
        .await?;
    fx.events.push(task_event(
        &facts,
        &failed.id,
        manual(TaskState::Failed, TaskState::Ready),
    ));
    let attempt_id = AttemptId::new().to_string();
    let new = NewAttempt {
        task_id: &failed.id,
        run_id: &run.id,
        tenant_id: &run.tenant_id,
        queue: &failed.queue,
        index,
        priority: run.priority,
        scheduled_at: now,
        backoff_ms: 0,
        now,
    };
    repo::insert_attempts(db, vec![new.row(&attempt_id, AttemptState::Queued)]).await?;
    fx.events.push(attempt_event(
        &run.tenant_id,
        &run.id,
        &failed.id,
        &attempt_id,
        Transition::created(AttemptState::Queued, "retried by hand"),
        Some(serde_json::json!({ "index": index })),
    ));
    fx.wake(&failed.queue);

    // Walk the skipped tasks downstream; each waits again for its reopened needs.
    let mut reopened: HashSet<String> = HashSet::from([failed.name.clone()]);
    let mut count = 1;
    let mut frontier: Vec<String> = serde_json::from_str(&failed.dependents).unwrap_or_default();
    while let Some(id) = frontier.pop() {
        let Some(t) = task::Entity::find_by_id(id).one(db).await? else {
            continue;
        };
        if t.state != TaskState::Skipped.as_str() || reopened.contains(&t.name) {
            continue;
        }
        let needs: Vec<String> = serde_json::from_str(&t.needs).unwrap_or_default();
        let pending = needs.iter().filter(|n| reopened.contains(*n)).count() as i32;
        task::Entity::update_many()
            .col_expr(
                task::Column::State,
                Expr::value(TaskState::Blocked.as_str()),
            )
            .col_expr(task::Column::PendingDeps, Expr::value(pending.max(1)))
            .col_expr(task::Column::FinishedAt, Expr::value(Option::<i64>::None))
            .filter(task::Column::Id.eq(t.id.clone()))
            .exec(db)
            .await?;
        fx.events.push(task_event(
            &facts,
            &t.id,
            manual(TaskState::Skipped, TaskState::Blocked),
        ));
        reopened.insert(t.name.clone());
        count += 1;
        frontier.extend(serde_json::from_str::<Vec<String>>(&t.dependents).unwrap_or_default());
    }
    Ok(count)
}

/// A transition made by hand outside the automatic tables (see `retry_task`).
fn manual(from: TaskState, to: TaskState) -> Transition {
    Transition {
        entity: crate::domain::Entity::Task,
        from: Some(from.as_str()),
        to: to.as_str(),
        reason: "retried by hand".into(),
    }
}

/// Cancels a run inside a transaction.
pub(crate) async fn cancel_in_tx(
    db: &impl ConnectionTrait,
    run: &run::Model,
    now: i64,
    reason: &str,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let from = parse_state::<RunState>(&run.state)?;
    if from.is_terminal() || from == RunState::Cancelling {
        return Ok(());
    }
    let t = Transition::check(from, RunState::Cancelling, reason)?;
    if !repo::cas_run(db, &run.id, from, RunState::Cancelling, now).await? {
        return Ok(());
    }
    fx.events.push(run_event(run, t));
    let run = run::Entity::find_by_id(run.id.clone())
        .one(db)
        .await?
        .ok_or(ServiceError::not_found("run"))?;
    let facts = run_facts(&run, now);

    // Stop the attempts: queued ones now, running ones through their worker.
    let active = repo::attempts_in(
        db,
        &run.id,
        &[
            AttemptState::Scheduled,
            AttemptState::Queued,
            AttemptState::Leased,
            AttemptState::Running,
        ],
    )
    .await?;
    for a in &active {
        let state = parse_state::<AttemptState>(&a.state)?;
        match state {
            AttemptState::Scheduled | AttemptState::Queued => {
                let t = Transition::check(state, AttemptState::Cancelled, reason)?;
                let done =
                    repo::cas_attempt(db, &a.id, None, &[state], AttemptState::Cancelled, |u| {
                        u.col_expr(attempt::Column::FinishedAt, Expr::value(now))
                            .col_expr(attempt::Column::ErrorKind, Expr::value("cancelled"))
                    })
                    .await?;
                if done {
                    fx.events.push(attempt_event(
                        &run.tenant_id,
                        &run.id,
                        &a.task_id,
                        &a.id,
                        t,
                        None,
                    ));
                }
            }
            AttemptState::Running if a.queue == pipeline::TRIGGER_QUEUE => {
                super::triggers::cancel_trigger_attempt(db, &run, a, now, reason, fx).await?;
            }
            _ => {
                attempt::Entity::update_many()
                    .col_expr(attempt::Column::CancelRequested, Expr::value(true))
                    .filter(attempt::Column::Id.eq(a.id.clone()))
                    .exec(db)
                    .await?;
                fx.cancel_attempts.push(a.id.clone());
            }
        }
    }

    // Cancel the tasks, except blocked ones that asked to run anyway (`always()`,
    // `cancelled()`): they start when their needs are done, as in GitHub Actions.
    let tasks = task::Entity::find()
        .filter(task::Column::RunId.eq(run.id.clone()))
        .filter(task::Column::State.is_in([
            TaskState::Blocked.as_str(),
            TaskState::Ready.as_str(),
            TaskState::Running.as_str(),
            TaskState::Retrying.as_str(),
        ]))
        .all(db)
        .await?;
    let mut cancelled = Vec::new();
    for t in tasks {
        let state = parse_state::<TaskState>(&t.state)?;
        let runs_anyway = state == TaskState::Blocked
            && t.condition
                .as_deref()
                .is_some_and(|c| c.contains("always()") || c.contains("cancelled()"));
        if runs_anyway {
            continue;
        }
        let tr = Transition::check(state, TaskState::Cancelled, reason)?;
        if repo::cas_task(db, &t.id, state, TaskState::Cancelled, now).await? {
            fx.events.push(task_event(&facts, &t.id, tr));
            cancelled.push(t);
        }
    }
    for t in cancelled {
        let current = run::Entity::find_by_id(run.id.clone())
            .one(db)
            .await?
            .ok_or(ServiceError::not_found("run"))?;
        progress::task_finished(db, &current, &t, TaskState::Cancelled, now, fx).await?;
        super::cache::task_settled(db, &current, &t, TaskState::Cancelled, false, now, fx).await?;
    }
    // A run with nothing left to cancel finishes at once.
    let current = run::Entity::find_by_id(run.id.clone())
        .one(db)
        .await?
        .ok_or(ServiceError::not_found("run"))?;
    if current.tasks_remaining <= 0 {
        progress::finish_run(db, &current, now, fx).await?;
    }
    Ok(())
}
