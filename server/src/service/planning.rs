//! Planning: a pipeline file and a commit become the rows of a run — tasks with their
//! edges and counters, the first attempts of the tasks that can start, and the events.
//!
//! Pure apart from id generation: it builds rows in memory, and `runs` inserts them in one
//! transaction. Readiness at planning follows the same rule as at run time
//! ([`readiness`]): a task with nothing pending runs when its `if:` says so, otherwise it is
//! skipped, and a skip counts down its dependents in turn.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::Set;
use serde_json::json;

use crate::domain::cache_key::CacheKeyInputs;
use crate::domain::{AttemptId, AttemptState, TaskId, TaskState, Transition};
use crate::pipeline::{self, JobStatus, PlannedTask};
use crate::store::entity::{attempt, task};
use crate::store::events::NewEvent;

/// The facts about a run that planning needs.
pub(crate) struct RunFacts<'a> {
    pub run_id: &'a str,
    pub tenant_id: &'a str,
    pub provider: &'a str,
    pub repository: &'a str,
    pub sha: &'a str,
    pub priority: i32,
    /// Held behind its concurrency group: no task may start until released.
    pub held: bool,
    pub now: i64,
}

/// The rows of a planned run.
pub(crate) struct PlannedRows {
    pub tasks: Vec<task::ActiveModel>,
    pub attempts: Vec<attempt::ActiveModel>,
    pub events: Vec<NewEvent>,
    pub queues: Vec<String>,
    pub skipped: i32,
    /// Tasks that reuse an earlier result: `(task id, source task id, key, ttl ms)`.
    pub cached: Vec<CachedTask>,
    /// Keys this run builds now, with the task that leads each build.
    pub flights: Vec<(String, String)>,
    /// Tasks waiting for another run's build of their key: `(key, task id)`.
    pub waiters: Vec<(String, String)>,
}

/// A task planned as a cache hit.
pub(crate) struct CachedTask {
    pub task_id: String,
    /// The task whose result (and artifacts) it reuses.
    pub source_task_id: String,
    pub key: Option<String>,
    pub ttl_ms: i64,
}

/// What the cache says about a run's tasks, looked up before planning.
#[derive(Default)]
pub(crate) struct PlanCache {
    /// Per planned task (same order): the task whose result it reuses, if any.
    pub hits: Vec<Option<String>>,
    /// Keys that a task of another run is building right now.
    pub in_flight: HashSet<String>,
    /// `noCache`: no hit, no waiting, no leading.
    pub bypass: bool,
}

/// Whether a task whose upstream tasks are all finished should run, by GitHub Actions
/// rules: the default condition is `success()`; `continue-on-error` failures count as
/// successes.
pub(crate) fn readiness(
    condition: Option<&str>,
    vars: &BTreeMap<String, String>,
    needs: &[(TaskState, bool)],
    run_cancelled: bool,
) -> bool {
    let ok = |(s, coe): &(TaskState, bool)| {
        matches!(s, TaskState::Succeeded | TaskState::Cached) || (*s == TaskState::Failed && *coe)
    };
    let status = JobStatus {
        needs_all_succeeded: needs.iter().all(ok),
        needs_any_failed: needs.iter().any(|(s, coe)| *s == TaskState::Failed && !coe),
        run_cancelled,
    };
    pipeline::expr::should_run(condition, vars, status)
}

pub(crate) fn task_event(f: &RunFacts<'_>, task_id: &str, t: Transition) -> NewEvent {
    NewEvent {
        tenant_id: f.tenant_id.to_owned(),
        run_id: f.run_id.to_owned(),
        task_id: Some(task_id.to_owned()),
        attempt_id: None,
        entity_id: task_id.to_owned(),
        transition: t,
        details: None,
    }
}

pub(crate) fn attempt_event(
    tenant_id: &str,
    run_id: &str,
    task_id: &str,
    attempt_id: &str,
    t: Transition,
    details: Option<serde_json::Value>,
) -> NewEvent {
    NewEvent {
        tenant_id: tenant_id.to_owned(),
        run_id: run_id.to_owned(),
        task_id: Some(task_id.to_owned()),
        attempt_id: Some(attempt_id.to_owned()),
        entity_id: attempt_id.to_owned(),
        transition: t,
        details,
    }
}

/// A first (or retry) attempt row, queued now or scheduled for later.
pub(crate) struct NewAttempt<'a> {
    pub task_id: &'a str,
    pub run_id: &'a str,
    pub tenant_id: &'a str,
    pub queue: &'a str,
    pub index: i32,
    pub priority: i32,
    pub scheduled_at: i64,
    pub backoff_ms: i64,
    pub now: i64,
}

impl NewAttempt<'_> {
    pub fn row(&self, id: &str, state: AttemptState) -> attempt::ActiveModel {
        attempt::ActiveModel {
            id: Set(id.to_owned()),
            task_id: Set(self.task_id.to_owned()),
            run_id: Set(self.run_id.to_owned()),
            tenant_id: Set(self.tenant_id.to_owned()),
            queue: Set(self.queue.to_owned()),
            idx: Set(self.index),
            state: Set(state.as_str().to_owned()),
            priority: Set(self.priority),
            scheduled_at: Set(self.scheduled_at),
            backoff_ms: Set(self.backoff_ms),
            worker_id: Set(None),
            lease_token: Set(None),
            lease_expires_at: Set(None),
            heartbeat_at: Set(None),
            started_at: Set(None),
            finished_at: Set(None),
            deadline_at: Set(None),
            exit_code: Set(None),
            error_kind: Set(None),
            error_message: Set(None),
            cancel_requested: Set(false),
            log_bytes: Set(0),
            created_at: Set(self.now),
        }
    }
}

/// The cache key of a planned task. The keys of its upstream tasks stand in for the
/// digests of the artifacts it consumes: a key is known at planning, before anything was
/// built, and an upstream key determines the upstream's output as far as the cache is
/// concerned (a cache hit reuses exactly the artifacts recorded under that key).
fn cache_key(f: &RunFacts<'_>, t: &PlannedTask, upstream_keys: &[String]) -> String {
    let mut spec = json!({
        "steps": t.steps,
        "env": t.env,
        "matrix": t.matrix,
        "queue": t.queue,
        "labels": t.labels,
        "artifacts": t.artifacts,
    });
    // Only trigger jobs carry the key, so that the keys of other jobs stay what they were.
    if let Some(trigger) = &t.trigger {
        spec["trigger"] = json!(trigger);
    }
    CacheKeyInputs {
        tenant: f.tenant_id,
        provider: f.provider,
        repository: f.repository,
        sha: f.sha,
        spec: &spec,
        consumed: upstream_keys,
    }
    .key()
}

/// The cache key of every planned task (in topological order), whether or not its job
/// caches: `rerunFailed` compares keys of jobs with `cache: false` too.
pub(crate) fn cache_keys(f: &RunFacts<'_>, planned: &[PlannedTask]) -> Vec<String> {
    let index: HashMap<&str, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut keys: Vec<String> = Vec::with_capacity(planned.len());
    for t in planned {
        let upstream: Vec<String> = t
            .needs
            .iter()
            .filter_map(|n| index.get(n.as_str()).and_then(|&j| keys.get(j).cloned()))
            .collect();
        keys.push(cache_key(f, t, &upstream));
    }
    keys
}

/// Builds the rows of a run from its planned tasks (in topological order), their
/// [`cache_keys`] and what the cache holds for them.
pub(crate) fn plan_rows(
    f: &RunFacts<'_>,
    planned: Vec<PlannedTask>,
    keys: Vec<String>,
    cache: &PlanCache,
) -> PlannedRows {
    let ids: Vec<String> = planned.iter().map(|_| TaskId::new().to_string()).collect();
    let index: HashMap<&str, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); planned.len()];
    for (i, t) in planned.iter().enumerate() {
        for n in &t.needs {
            if let Some(&j) = index.get(n.as_str()) {
                dependents[j].push(i);
            }
        }
    }
    let mut leading: HashSet<&str> = HashSet::new();
    let mut waiting: Vec<bool> = vec![false; planned.len()];

    // In-memory readiness: a worklist of tasks whose counters reached zero.
    let gate = i32::from(f.held);
    let mut pending: Vec<i32> = planned.iter().map(|t| t.needs.len() as i32).collect();
    let mut state: Vec<TaskState> = vec![TaskState::Blocked; planned.len()];
    let mut work: Vec<usize> = if f.held {
        Vec::new()
    } else {
        (0..planned.len()).filter(|&i| pending[i] == 0).collect()
    };
    while let Some(i) = work.pop() {
        let t = &planned[i];
        let needs: Vec<(TaskState, bool)> = t
            .needs
            .iter()
            .filter_map(|n| index.get(n.as_str()))
            .map(|&j| (state[j], planned[j].continue_on_error))
            .collect();
        if readiness(t.condition.as_deref(), &t.vars, &needs, false) {
            let caches = t.cache.enabled && !cache.bypass;
            if cache.hits.get(i).is_some_and(Option::is_some) {
                // A hit counts as a success for its dependents, at once.
                state[i] = TaskState::Cached;
                for &d in &dependents[i] {
                    pending[d] -= 1;
                    if pending[d] == 0 {
                        work.push(d);
                    }
                }
            } else if caches
                && (cache.in_flight.contains(&keys[i]) || leading.contains(keys[i].as_str()))
            {
                // Single flight: the same build is running; wait for its result.
                waiting[i] = true;
            } else {
                state[i] = TaskState::Ready;
                if caches {
                    leading.insert(keys[i].as_str());
                }
            }
        } else {
            state[i] = TaskState::Skipped;
            for &d in &dependents[i] {
                pending[d] -= 1;
                if pending[d] == 0 {
                    work.push(d);
                }
            }
        }
    }

    let mut rows = PlannedRows {
        tasks: Vec::with_capacity(planned.len()),
        attempts: Vec::new(),
        events: Vec::with_capacity(planned.len() * 2),
        queues: Vec::new(),
        skipped: 0,
        cached: Vec::new(),
        flights: Vec::new(),
        waiters: Vec::new(),
    };
    for (i, t) in planned.iter().enumerate() {
        let id = &ids[i];
        let s = state[i];
        let dependents_ids: Vec<&str> = dependents[i].iter().map(|&d| ids[d].as_str()).collect();
        let pending_now = if waiting[i] {
            // The wait is a gate, opened by the leader's end.
            1
        } else if s == TaskState::Blocked && t.needs.is_empty() {
            gate
        } else {
            pending[i]
        };
        rows.tasks.push(task::ActiveModel {
            id: Set(id.clone()),
            run_id: Set(f.run_id.to_owned()),
            tenant_id: Set(f.tenant_id.to_owned()),
            name: Set(t.name.clone()),
            job_id: Set(t.job_id.clone()),
            spec: Set(serde_json::to_string(t).unwrap_or_default()),
            queue: Set(t.queue.clone()),
            labels: Set(serde_json::to_string(&t.labels).unwrap_or_default()),
            needs: Set(serde_json::to_string(&t.needs).unwrap_or_default()),
            dependents: Set(serde_json::to_string(&dependents_ids).unwrap_or_default()),
            pending_deps: Set(pending_now),
            condition: Set(t.condition.clone()),
            continue_on_error: Set(t.continue_on_error),
            max_attempts: Set(t.retry.max_attempts as i32),
            timeout_ms: Set(t.timeout_ms as i64),
            cache_key: Set(t.cache.enabled.then(|| keys[i].clone())),
            state: Set(s.as_str().to_owned()),
            created_at: Set(f.now),
            started_at: Set(None),
            finished_at: Set(matches!(s, TaskState::Skipped | TaskState::Cached).then_some(f.now)),
            child_run_id: Set(None),
        });
        let reason = match s {
            TaskState::Cached => "planned: cache hit",
            _ if waiting[i] => "planned: waiting for a running build of the same cache key",
            _ => "planned",
        };
        rows.events
            .push(task_event(f, id, Transition::created(s, reason)));
        if waiting[i] {
            rows.waiters.push((keys[i].clone(), id.clone()));
        }
        match s {
            TaskState::Ready => {
                if t.cache.enabled && !cache.bypass {
                    rows.flights.push((keys[i].clone(), id.clone()));
                }
                let attempt_id = AttemptId::new().to_string();
                let new = NewAttempt {
                    task_id: id,
                    run_id: f.run_id,
                    tenant_id: f.tenant_id,
                    queue: &t.queue,
                    index: 1,
                    priority: f.priority,
                    scheduled_at: f.now,
                    backoff_ms: 0,
                    now: f.now,
                };
                rows.attempts
                    .push(new.row(&attempt_id, AttemptState::Queued));
                rows.events.push(attempt_event(
                    f.tenant_id,
                    f.run_id,
                    id,
                    &attempt_id,
                    Transition::created(AttemptState::Queued, "planned"),
                    None,
                ));
                if !rows.queues.contains(&t.queue) {
                    rows.queues.push(t.queue.clone());
                }
            }
            TaskState::Skipped => rows.skipped += 1,
            TaskState::Cached => rows.cached.push(CachedTask {
                task_id: id.clone(),
                source_task_id: cache.hits[i].clone().unwrap_or_default(),
                key: t.cache.enabled.then(|| keys[i].clone()),
                ttl_ms: t.cache.ttl_ms as i64,
            }),
            _ => {}
        }
    }
    rows
}
