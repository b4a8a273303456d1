//! What follows a task reaching a terminal state, inside the same transaction: its
//! dependents count down and start or are skipped, the run's counters move, and the run
//! finishes when its last task has — releasing the next run of its concurrency group.

use std::collections::BTreeMap;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::ServiceError;
use super::planning::{NewAttempt, RunFacts, attempt_event, readiness, task_event};
use crate::domain::{AttemptId, AttemptState, RunState, TaskState, Transition};
use crate::store::entity::{run, task};
use crate::store::events::NewEvent;
use crate::store::repo;

/// What a transaction changed that must be announced after its commit.
#[derive(Default)]
pub(crate) struct Effects {
    pub events: Vec<NewEvent>,
    /// Queues that received queued attempts.
    pub queues: Vec<String>,
    /// Attempts running in some worker that must be told to stop.
    pub cancel_attempts: Vec<String>,
    /// A retry was scheduled for later: the scheduler must look again.
    pub retry_scheduled: bool,
    /// Log output written in the transaction; announced before the events so that a
    /// follower sees an attempt's last output before its end.
    pub logs: Vec<crate::events::LogRecord>,
}

impl Effects {
    pub fn wake(&mut self, queue: &str) {
        if !self.queues.iter().any(|q| q == queue) {
            self.queues.push(queue.to_owned());
        }
    }
}

pub(crate) fn parse_state<S: std::str::FromStr>(s: &str) -> Result<S, ServiceError> {
    s.parse()
        .map_err(|_| ServiceError::Internal(format!("corrupt state {s:?}")))
}

pub(crate) fn run_facts<'a>(run: &'a run::Model, now: i64) -> RunFacts<'a> {
    RunFacts {
        run_id: &run.id,
        tenant_id: &run.tenant_id,
        provider: &run.provider,
        repository: &run.repository,
        sha: &run.sha,
        priority: run.priority,
        held: run.held,
        now,
    }
}

/// Called after `finished` moved to a terminal state: counts down its dependents (and
/// theirs, for skips), then updates the run's counters and finishes it when done.
pub(crate) async fn task_finished(
    db: &impl ConnectionTrait,
    run: &run::Model,
    finished: &task::Model,
    state: TaskState,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let run_cancelled = matches!(
        parse_state::<RunState>(&run.state)?,
        RunState::Cancelling | RunState::Cancelled
    );
    let facts = run_facts(run, now);
    let mut done = 0;
    let mut failed = 0;
    let mut work: Vec<(String, TaskState, bool)> = vec![(
        finished.dependents.clone(),
        state,
        finished.continue_on_error,
    )];
    while let Some((dependents, state, continue_on_error)) = work.pop() {
        done += 1;
        if state == TaskState::Failed && !continue_on_error {
            failed += 1;
        }
        let dependents: Vec<String> = serde_json::from_str(&dependents)
            .map_err(|e| ServiceError::Internal(format!("corrupt dependents: {e}")))?;
        for dep in repo::decrement_pending_many(db, &dependents).await? {
            let to = if should_start(db, run, &dep, run_cancelled).await? {
                TaskState::Ready
            } else {
                TaskState::Skipped
            };
            let became = start_or_skip(db, &facts, &dep, to, fx).await?;
            if matches!(became, TaskState::Skipped | TaskState::Cached) {
                work.push((dep.dependents.clone(), became, dep.continue_on_error));
            }
        }
    }
    let run = repo::count_finished(db, &run.id, done, failed).await?;
    if run.tasks_remaining <= 0 {
        finish_run(db, &run, now, fx).await?;
    }
    Ok(())
}

/// Evaluates a task's `if:` against the states of its upstream tasks.
async fn should_start(
    db: &impl ConnectionTrait,
    run: &run::Model,
    t: &task::Model,
    run_cancelled: bool,
) -> Result<bool, ServiceError> {
    let needs: Vec<String> = serde_json::from_str(&t.needs)
        .map_err(|e| ServiceError::Internal(format!("corrupt needs: {e}")))?;
    // Only the two columns the condition reads: a task of a wide layer has dozens of
    // upstream tasks, each with its whole spec.
    let upstream: Vec<(String, bool)> = if needs.is_empty() {
        Vec::new()
    } else {
        task::Entity::find()
            .select_only()
            .column(task::Column::State)
            .column(task::Column::ContinueOnError)
            .filter(task::Column::RunId.eq(run.id.clone()))
            .filter(task::Column::Name.is_in(needs))
            .into_tuple()
            .all(db)
            .await?
    };
    let states = upstream
        .iter()
        .map(|(state, coe)| Ok((parse_state::<TaskState>(state)?, *coe)))
        .collect::<Result<Vec<_>, ServiceError>>()?;
    let vars: BTreeMap<String, String> = serde_json::from_str::<serde_json::Value>(&t.spec)
        .ok()
        .and_then(|v| v.get("vars").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    Ok(readiness(
        t.condition.as_deref(),
        &vars,
        &states,
        run_cancelled,
    ))
}

/// Moves a blocked task to ready (queueing its first attempt) or to skipped. A task that
/// may start asks the cache first: it may be `cached` instead, or wait (staying blocked)
/// for the same build running elsewhere. Returns the state the task is in now; a
/// `cached` one is finished, and the caller counts it down like a success.
pub(crate) async fn start_or_skip(
    db: &impl ConnectionTrait,
    facts: &RunFacts<'_>,
    t: &task::Model,
    to: TaskState,
    fx: &mut Effects,
) -> Result<TaskState, ServiceError> {
    if to == TaskState::Ready {
        match super::cache::on_runnable(db, facts, t).await? {
            super::cache::Runnable::Run => {}
            super::cache::Runnable::Wait => return Ok(TaskState::Blocked),
            super::cache::Runnable::Hit { source, key } => {
                let ev = super::cache::hit_event(facts, &t.id, TaskState::Blocked)?;
                if repo::cas_task(db, &t.id, TaskState::Blocked, TaskState::Cached, facts.now)
                    .await?
                {
                    fx.events.push(ev);
                    super::cache::record_hit(db, facts, t, &source, &key).await?;
                }
                return Ok(TaskState::Cached);
            }
        }
    }
    let transition = Transition::check(TaskState::Blocked, to, "needs finished")?;
    if !repo::cas_task(db, &t.id, TaskState::Blocked, to, facts.now).await? {
        return Ok(to);
    }
    fx.events.push(task_event(facts, &t.id, transition));
    if to == TaskState::Ready {
        let attempt_id = AttemptId::new().to_string();
        let new = NewAttempt {
            task_id: &t.id,
            run_id: facts.run_id,
            tenant_id: facts.tenant_id,
            queue: &t.queue,
            index: 1,
            priority: facts.priority,
            scheduled_at: facts.now,
            backoff_ms: 0,
            now: facts.now,
        };
        repo::insert_attempts(db, vec![new.row(&attempt_id, AttemptState::Queued)]).await?;
        fx.events.push(attempt_event(
            facts.tenant_id,
            facts.run_id,
            &t.id,
            &attempt_id,
            Transition::created(AttemptState::Queued, "task ready"),
            None,
        ));
        fx.wake(&t.queue);
    }
    Ok(to)
}

/// Finishes a run whose tasks are all terminal, unless attempts are still being stopped.
pub(crate) async fn finish_run(
    db: &impl ConnectionTrait,
    run: &run::Model,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let from = parse_state::<RunState>(&run.state)?;
    if from.is_terminal() {
        return Ok(());
    }
    let to = if from == RunState::Cancelling {
        let active =
            repo::attempts_in(db, &run.id, &[AttemptState::Leased, AttemptState::Running]).await?;
        if !active.is_empty() {
            return Ok(());
        }
        RunState::Cancelled
    } else if run.tasks_failed > 0 {
        RunState::Failed
    } else {
        RunState::Succeeded
    };
    let transition = Transition::check(from, to, "last task finished")?;
    if repo::cas_run(db, &run.id, from, to, now).await? {
        fx.events.push(run_event(run, transition));
        if run.concurrency_group.is_some() {
            release_next_in_group(db, run, now, fx).await?;
        }
        if run.parent_task_id.is_some() {
            // Boxed: the parent task's end can finish the parent run, and so on upwards.
            Box::pin(super::triggers::child_finished(db, run, to, now, fx)).await?;
        }
    }
    Ok(())
}

pub(crate) fn run_event(run: &run::Model, t: Transition) -> NewEvent {
    NewEvent {
        tenant_id: run.tenant_id.clone(),
        run_id: run.id.clone(),
        task_id: None,
        attempt_id: None,
        entity_id: run.id.clone(),
        transition: t,
        details: None,
    }
}

/// Starts the oldest run held behind `run`'s concurrency group, now that `run` is done.
async fn release_next_in_group(
    db: &impl ConnectionTrait,
    run: &run::Model,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let Some(group) = &run.concurrency_group else {
        return Ok(());
    };
    let next = run::Entity::find()
        .filter(run::Column::TenantId.eq(run.tenant_id.clone()))
        .filter(run::Column::ConcurrencyGroup.eq(group.clone()))
        .filter(run::Column::Held.eq(true))
        .filter(run::Column::State.eq(RunState::Queued.as_str()))
        .order_by_asc(run::Column::CreatedAt)
        .order_by_asc(run::Column::Id)
        .one(db)
        .await?;
    if let Some(next) = next {
        // Boxed: releasing a run can finish it, which can release the next one.
        Box::pin(release_run(db, &next, now, fx)).await?;
    }
    Ok(())
}

/// Opens the gate of a held run: its root tasks count down their gate and start.
pub(crate) async fn release_run(
    db: &impl ConnectionTrait,
    held: &run::Model,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    run::Entity::update_many()
        .col_expr(run::Column::Held, sea_orm::sea_query::Expr::value(false))
        .filter(run::Column::Id.eq(held.id.clone()))
        .exec(db)
        .await?;
    let mut released = held.clone();
    released.held = false;
    let facts = run_facts(&released, now);
    let roots = task::Entity::find()
        .filter(task::Column::RunId.eq(held.id.clone()))
        .filter(task::Column::Needs.eq("[]"))
        .filter(task::Column::State.eq(TaskState::Blocked.as_str()))
        .all(db)
        .await?;
    let mut skipped = Vec::new();
    for root in roots {
        let t = repo::decrement_pending(db, &root.id).await?;
        if t.pending_deps == 0 {
            let to = if should_start(db, &released, &t, false).await? {
                TaskState::Ready
            } else {
                TaskState::Skipped
            };
            let became = start_or_skip(db, &facts, &t, to, fx).await?;
            if matches!(became, TaskState::Skipped | TaskState::Cached) {
                skipped.push((t, became));
            }
        }
    }
    for (t, became) in skipped {
        let current = run::Entity::find_by_id(held.id.clone())
            .one(db)
            .await?
            .ok_or(ServiceError::not_found("run"))?;
        Box::pin(task_finished(db, &current, &t, became, now, fx)).await?;
    }
    Ok(())
}
