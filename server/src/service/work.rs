//! The worker calls: register, lease, heartbeat, log, complete — the same for the
//! in-process pool and for remote agents.
//!
//! A lease is a compare-and-set `queued → leased` that hands out a fresh lease token; the
//! token is a fencing token: every later call must carry it, and once the attempt has been
//! decided (lost, timed out, cancelled, finished) a call with it is refused with CONFLICT.

use std::time::Duration;

use rand::RngCore;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    Set,
};
use serde_json::json;
use tracing::instrument;

use super::auth::Scope;
use super::group_commit::GroupOp;
use super::planning::{NewAttempt, attempt_event, task_event};
use super::progress::{self, Effects, parse_state, run_event, run_facts};
use super::{Caller, Service, ServiceError};
use crate::domain::retry::seed_from_bytes;
use crate::domain::{
    AttemptId, AttemptState, ErrorKind, RetryDecision, RetryPolicy, RunState, TaskState,
    Transition, WorkerId,
};
use crate::events::LogRecord;
use crate::pipeline::{PlannedTask, TRIGGER_QUEUE};
use crate::store::entity::{attempt, log_chunk, run, task, worker};
use crate::store::repo::{self, Claim};

/// Input of `registerWorker`.
#[derive(Debug, Clone, Default)]
pub struct WorkerInput {
    pub name: String,
    pub queues: Vec<String>,
    pub labels: Vec<String>,
    pub capacity: i32,
    /// `agent` for remote agents, `in_process` for the server's own pool.
    pub kind: String,
}

/// An attempt handed to a worker, with everything it needs to run it.
#[derive(Debug, Clone)]
pub struct LeasedAttempt {
    pub attempt: attempt::Model,
    pub task: task::Model,
    pub run: run::Model,
    pub spec: PlannedTask,
    pub lease_token: String,
    /// Secret values injected into the spec, for the worker to mask in the log.
    pub masks: Vec<String>,
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Stop the attempt: its run was cancelled.
    pub cancel: bool,
    pub lease_expires_at: i64,
}

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Succeeded,
    Failed {
        kind: ErrorKind,
        exit_code: Option<i32>,
        message: String,
    },
}

/// One piece of output sent by a worker.
#[derive(Debug, Clone)]
pub struct LogPiece {
    pub stream: String,
    pub data: String,
}

/// A reported completion, applied in a group commit.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    pub attempt_id: String,
    pub lease_token: String,
    pub outcome: AttemptOutcome,
    pub last_log: Vec<LogPiece>,
}

#[async_trait::async_trait]
impl GroupOp for Completion {
    type Output = ();

    async fn apply(
        &self,
        service: &Service,
        tx: &DatabaseTransaction,
        now: i64,
        fx: &mut Effects,
    ) -> Result<(), ServiceError> {
        service.complete_in(tx, self, now, fx).await
    }
}

/// One lease try on one queue, applied in a group commit.
#[derive(Debug, Clone)]
pub(crate) struct LeaseRequest {
    worker_id: String,
    queue: String,
    tenant_id: Option<String>,
}

/// What a lease try claimed, before the secrets are resolved after the commit.
pub(crate) struct Claimed {
    attempt: attempt::Model,
    task: task::Model,
    run: run::Model,
    lease_token: String,
}

#[async_trait::async_trait]
impl GroupOp for LeaseRequest {
    type Output = Option<Claimed>;

    async fn apply(
        &self,
        service: &Service,
        tx: &DatabaseTransaction,
        now: i64,
        fx: &mut Effects,
    ) -> Result<Option<Claimed>, ServiceError> {
        service.lease_in(tx, self, now, fx).await
    }
}

fn new_lease_token() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn stale() -> ServiceError {
    ServiceError::Conflict("the lease token is stale: this attempt was decided without you".into())
}

impl Service {
    /// Registers a worker (or renews one with the same name on the same node).
    pub async fn register_worker(
        &self,
        caller: &Caller,
        input: WorkerInput,
    ) -> Result<worker::Model, ServiceError> {
        caller.require(Scope::Agent)?;
        if input.name.is_empty() || input.name.len() > 200 {
            return Err(ServiceError::BadInput(
                "worker name must be 1 to 200 characters".into(),
            ));
        }
        let queues = if input.queues.is_empty() {
            vec!["default".to_owned()]
        } else {
            input.queues
        };
        if queues.iter().any(|q| q == TRIGGER_QUEUE) {
            return Err(ServiceError::BadInput(format!(
                "queue {TRIGGER_QUEUE:?} is reserved: the server runs trigger jobs itself"
            )));
        }
        let now = self.now_ms();
        Ok(worker::ActiveModel {
            id: Set(WorkerId::new().to_string()),
            tenant_id: Set(caller.tenant_id.to_string()),
            name: Set(input.name),
            node: Set(self.node().to_owned()),
            kind: Set(if input.kind.is_empty() {
                "agent".into()
            } else {
                input.kind
            }),
            queues: Set(serde_json::to_string(&queues).unwrap_or_default()),
            labels: Set(serde_json::to_string(&input.labels).unwrap_or_default()),
            capacity: Set(input.capacity.max(1)),
            state: Set("idle".into()),
            last_heartbeat_at: Set(now),
            created_at: Set(now),
        }
        .insert(self.store().db())
        .await?)
    }

    /// NOT_FOUND unless the attempt exists and belongs to a tenant the caller sees.
    async fn visible_attempt(&self, caller: &Caller, attempt_id: &str) -> Result<(), ServiceError> {
        attempt::Entity::find_by_id(attempt_id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|a| caller.sees(&a.tenant_id))
            .map(|_| ())
            .ok_or(ServiceError::not_found("attempt"))
    }

    fn resolve_secrets_empty(&self, spec: &mut PlannedTask) {
        let none = std::collections::BTreeMap::new();
        let fix = |v: &mut String| *v = crate::pipeline::expr::resolve_secret_markers(v, &none);
        spec.env.values_mut().for_each(fix);
        for s in &mut spec.steps {
            s.env.values_mut().for_each(fix);
            if let crate::pipeline::StepKind::Run { script, .. } = &mut s.kind {
                fix(script);
            }
        }
    }

    async fn worker_of(
        &self,
        caller: &Caller,
        worker_id: &str,
    ) -> Result<worker::Model, ServiceError> {
        worker::Entity::find_by_id(worker_id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|w| caller.sees(&w.tenant_id))
            .ok_or(ServiceError::not_found("worker"))
    }

    /// Leases the next attempt of one of `queues`, waiting up to `wait` for one to arrive.
    /// Waiting is pushed, not polled: a commit that queues work wakes the waiters at once.
    ///
    /// A tenant's agent token leases only its tenant's attempts; an admin-scoped worker
    /// (the in-process pool, or an agent started with an admin token) serves every
    /// tenant.
    pub async fn lease_attempt(
        &self,
        caller: &Caller,
        worker_id: &str,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<LeasedAttempt>, ServiceError> {
        caller.require(Scope::Agent)?;
        let worker = self.worker_of(caller, worker_id).await?;
        self.lease_for_worker(caller, &worker, queues, wait).await
    }

    /// `lease_attempt` for a worker the caller registered and holds (the in-process
    /// pool): no lookup of the worker's row at each lease.
    pub(crate) async fn lease_for_worker(
        &self,
        caller: &Caller,
        worker: &worker::Model,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<LeasedAttempt>, ServiceError> {
        caller.require(Scope::Agent)?;
        let queues: Vec<String> = if queues.is_empty() {
            serde_json::from_str(&worker.queues).unwrap_or_default()
        } else {
            queues.to_vec()
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut touched = tokio::time::Instant::now();
        self.touch_worker(&worker.id, Some("idle")).await?;
        loop {
            // A long-polling worker is alive: its liveness is renewed while it waits.
            if touched.elapsed() >= Duration::from_secs(2) {
                self.touch_worker(&worker.id, None).await?;
                touched = tokio::time::Instant::now();
            }
            let notifiers: Vec<_> = queues.iter().map(|q| self.wakeups().queue(q)).collect();
            let mut waits: Vec<_> = notifiers.iter().map(|n| Box::pin(n.notified())).collect();
            for w in waits.iter_mut() {
                w.as_mut().enable();
            }
            for q in &queues {
                let tenant =
                    (!caller.scopes.has(Scope::Admin)).then(|| caller.tenant_id.to_string());
                if let Some(leased) = self.try_lease_for(&worker.id, q, tenant.as_deref()).await? {
                    return Ok(Some(leased));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            // Other nodes' commits do not reach these notifiers (yet): poll as a fallback.
            let poll = tokio::time::sleep(Duration::from_millis(500));
            tokio::select! {
                _ = futures::future::select_all(waits) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = poll => {}
            }
        }
    }

    /// One lease try on one queue: claims an attempt and starts it, in one transaction.
    pub async fn try_lease(
        &self,
        worker_id: &str,
        queue: &str,
    ) -> Result<Option<LeasedAttempt>, ServiceError> {
        self.try_lease_for(worker_id, queue, None).await
    }

    /// One lease try on one queue, restricted to one tenant's attempts when given. Tries
    /// made at about the same time share a write transaction (see `group_commit`).
    #[instrument(skip_all, fields(queue = %queue, tenant_id = ?tenant_id))]
    pub async fn try_lease_for(
        &self,
        worker_id: &str,
        queue: &str,
        tenant_id: Option<&str>,
    ) -> Result<Option<LeasedAttempt>, ServiceError> {
        if queue == TRIGGER_QUEUE {
            // Trigger jobs are the server's own work (`start_triggers`).
            return Ok(None);
        }
        let request = LeaseRequest {
            worker_id: worker_id.to_owned(),
            queue: queue.to_owned(),
            tenant_id: tenant_id.map(str::to_owned),
        };
        let Some(c) = self.leases().submit(self, request).await? else {
            return Ok(None);
        };
        crate::metrics::global().leases.with(&[queue]).inc();
        let mut spec: PlannedTask = serde_json::from_str(&c.task.spec)
            .map_err(|e| ServiceError::Internal(format!("corrupt task spec: {e}")))?;
        // After the commit: the stored spec keeps markers, only the worker sees values.
        // A secret that cannot be decrypted leaves its variable empty (logged), like an
        // undefined one, rather than stranding the leased attempt.
        let masks = match self.resolve_secrets(&c.run, &mut spec).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(attempt_id = %c.attempt.id, error = %e, "secrets could not be resolved");
                self.resolve_secrets_empty(&mut spec);
                Vec::new()
            }
        };
        Ok(Some(LeasedAttempt {
            attempt: c.attempt,
            task: c.task,
            run: c.run,
            spec,
            lease_token: c.lease_token,
            masks,
        }))
    }

    /// Claims an attempt and starts it inside the caller's write transaction.
    async fn lease_in(
        &self,
        db: &DatabaseTransaction,
        request: &LeaseRequest,
        now: i64,
        fx: &mut Effects,
    ) -> Result<Option<Claimed>, ServiceError> {
        let token = new_lease_token();
        let claimed = repo::claim_attempt(
            db,
            Claim {
                queue: &request.queue,
                worker_id: &request.worker_id,
                lease_token: &token,
                lease_expires_at: now + self.config().lease_ms,
                now,
                tenant_id: request.tenant_id.as_deref(),
            },
        )
        .await?;
        let Some(a) = claimed else {
            return Ok(None);
        };
        let (t, r) = task_and_run_of(db, &a).await?;
        attempt_started(db, &a, &t, &r, "leased", now, fx).await?;
        Ok(Some(Claimed {
            attempt: a,
            task: t,
            run: r,
            lease_token: token,
        }))
    }

    /// Renews the lease of a running attempt; the reply says whether to stop.
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        attempt_id: &str,
        lease_token: &str,
    ) -> Result<HeartbeatReply, ServiceError> {
        caller.require(Scope::Agent)?;
        self.visible_attempt(caller, attempt_id).await?;
        let now = self.now_ms();
        let expires = now + self.config().lease_ms;
        let res = attempt::Entity::update_many()
            .col_expr(attempt::Column::HeartbeatAt, Expr::value(now))
            .col_expr(attempt::Column::LeaseExpiresAt, Expr::value(expires))
            .filter(attempt::Column::Id.eq(attempt_id))
            .filter(attempt::Column::LeaseToken.eq(lease_token))
            .filter(attempt::Column::State.is_in([
                AttemptState::Leased.as_str(),
                AttemptState::Running.as_str(),
            ]))
            .exec(self.store().db())
            .await?;
        if res.rows_affected != 1 {
            return Err(stale());
        }
        let a = attempt::Entity::find_by_id(attempt_id.to_owned())
            .one(self.store().db())
            .await?
            .ok_or_else(stale)?;
        if let Some(w) = &a.worker_id {
            self.touch_worker(w, Some("busy")).await?;
        }
        Ok(HeartbeatReply {
            cancel: a.cancel_requested,
            lease_expires_at: expires,
        })
    }

    /// Appends output to an attempt's log; returns the log's length in bytes.
    pub async fn append_log(
        &self,
        caller: &Caller,
        attempt_id: &str,
        lease_token: &str,
        pieces: Vec<LogPiece>,
    ) -> Result<i64, ServiceError> {
        caller.require(Scope::Agent)?;
        self.visible_attempt(caller, attempt_id).await?;
        let wtx = self.store().write().await?;
        let (len, written) = self
            .append_log_in(&wtx.tx, attempt_id, Some(lease_token), pieces)
            .await?;
        wtx.commit().await?;
        self.bus().publish_log_commit(self.node(), written);
        Ok(len)
    }

    async fn append_log_in(
        &self,
        db: &impl ConnectionTrait,
        attempt_id: &str,
        lease_token: Option<&str>,
        pieces: Vec<LogPiece>,
    ) -> Result<(i64, Vec<LogRecord>), ServiceError> {
        let a = attempt::Entity::find_by_id(attempt_id.to_owned())
            .one(db)
            .await?
            .ok_or_else(stale)?;
        let live = matches!(a.state.as_str(), "leased" | "running");
        if !live || (lease_token.is_some() && a.lease_token.as_deref() != lease_token) {
            return Err(stale());
        }
        let (rows, written, offset) = self.log_rows(&a, pieces);
        if rows.is_empty() {
            return Ok((offset, written));
        }
        log_chunk::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await?;
        attempt::Entity::update_many()
            .col_expr(attempt::Column::LogBytes, Expr::value(offset))
            .filter(attempt::Column::Id.eq(attempt_id))
            .exec(db)
            .await?;
        Ok((offset, written))
    }

    /// The rows that append `pieces` to the log of `a` (within the log's limits), what
    /// they announce, and the log's length after them.
    fn log_rows(
        &self,
        a: &attempt::Model,
        pieces: Vec<LogPiece>,
    ) -> (Vec<log_chunk::ActiveModel>, Vec<LogRecord>, i64) {
        let now = self.now_ms();
        let limit = self.config().max_log_bytes_per_attempt;
        let line_limit = self.config().max_log_line_bytes;
        let mut offset = a.log_bytes;
        let mut rows = Vec::new();
        let mut written = Vec::new();
        for p in pieces {
            if p.data.is_empty() || offset >= limit {
                continue;
            }
            let mut data = super::limits::cap_lines(p.data, line_limit);
            if offset + data.len() as i64 > limit {
                let mut cut = (limit - offset) as usize;
                while !data.is_char_boundary(cut) {
                    cut -= 1;
                }
                data.truncate(cut);
                data.push_str("\n##[warning] log limit reached; further output dropped\n");
            }
            rows.push(log_chunk::ActiveModel {
                id: sea_orm::NotSet,
                attempt_id: Set(a.id.clone()),
                byte_offset: Set(offset),
                stream: Set(p.stream.clone()),
                data: Set(data.clone()),
                created_at: Set(now),
            });
            let at = offset;
            offset += data.len() as i64;
            written.push(LogRecord {
                attempt_id: a.id.clone(),
                offset: at,
                stream: p.stream,
                data,
            });
        }
        (rows, written, offset)
    }

    /// Records how an attempt ended, with its last output, and decides what follows: the
    /// task succeeds and releases its dependents, or the failure is retried after a
    /// backoff, or the task fails for good.
    ///
    /// Completions arriving together are committed together (see `completions`): one
    /// write transaction for many finished attempts, each applied exactly as alone.
    #[instrument(skip_all, fields(attempt_id = %attempt_id))]
    pub async fn complete_attempt(
        &self,
        caller: &Caller,
        attempt_id: &str,
        lease_token: &str,
        outcome: AttemptOutcome,
        last_log: Vec<LogPiece>,
    ) -> Result<attempt::Model, ServiceError> {
        caller.require(Scope::Agent)?;
        self.visible_attempt(caller, attempt_id).await?;
        let completion = Completion {
            attempt_id: attempt_id.to_owned(),
            lease_token: lease_token.to_owned(),
            outcome,
            last_log,
        };
        self.completions().submit(self, completion).await?;
        attempt::Entity::find_by_id(attempt_id.to_owned())
            .one(self.store().db())
            .await?
            .ok_or_else(stale)
    }

    /// `complete_attempt` for a worker of this node, which needs no answer but success:
    /// an unknown attempt is refused as stale, like one decided without it. The caller
    /// must see every tenant, as the in-process pool does.
    pub(crate) async fn report_completion(
        &self,
        caller: &Caller,
        completion: Completion,
    ) -> Result<(), ServiceError> {
        caller.require(Scope::Admin)?;
        self.completions().submit(self, completion).await
    }

    /// Applies one reported completion inside the caller's write transaction, adding
    /// what it causes to `fx`. Refuses (before writing anything) a stale lease token.
    pub(crate) async fn complete_in(
        &self,
        db: &impl ConnectionTrait,
        c: &Completion,
        now: i64,
        fx: &mut Effects,
    ) -> Result<(), ServiceError> {
        let attempt_id = c.attempt_id.as_str();
        let lease_token = c.lease_token.as_str();
        let a = attempt::Entity::find_by_id(attempt_id.to_owned())
            .one(db)
            .await?
            .ok_or_else(stale)?;
        let from = parse_state::<AttemptState>(&a.state)?;
        if a.lease_token.as_deref() != Some(lease_token)
            || !matches!(from, AttemptState::Leased | AttemptState::Running)
        {
            return Err(stale());
        }
        // The last output goes in with the end, its length in the same update.
        let (rows, written, log_bytes) = self.log_rows(&a, c.last_log.clone());
        if !rows.is_empty() {
            log_chunk::Entity::insert_many(rows)
                .exec_without_returning(db)
                .await?;
        }
        let (to, kind, exit_code, message) = match &c.outcome {
            AttemptOutcome::Succeeded => (AttemptState::Succeeded, None, Some(0), None),
            AttemptOutcome::Failed {
                kind,
                exit_code,
                message,
            } => (
                match kind {
                    ErrorKind::Timeout => AttemptState::TimedOut,
                    ErrorKind::Cancelled => AttemptState::Cancelled,
                    ErrorKind::Lost => AttemptState::Lost,
                    ErrorKind::Exit | ErrorKind::Infra => AttemptState::Failed,
                },
                Some(*kind),
                *exit_code,
                Some(message.clone()),
            ),
        };
        let transition = Transition::check(from, to, "reported by worker")?;
        let won = repo::cas_attempt(db, &a.id, Some(lease_token), &[from], to, |u| {
            u.col_expr(attempt::Column::FinishedAt, Expr::value(now))
                .col_expr(attempt::Column::LogBytes, Expr::value(log_bytes))
                .col_expr(attempt::Column::ExitCode, Expr::value(exit_code))
                .col_expr(
                    attempt::Column::ErrorKind,
                    Expr::value(kind.map(|k| k.as_str())),
                )
                .col_expr(attempt::Column::ErrorMessage, Expr::value(message.clone()))
        })
        .await?;
        if !won {
            return Err(stale());
        }
        let details = kind
            .map(|k| json!({ "errorKind": k.as_str(), "exitCode": exit_code, "message": message }));
        fx.events.push(attempt_event(
            &a.tenant_id,
            &a.run_id,
            &a.task_id,
            &a.id,
            transition,
            details,
        ));
        after_attempt(db, &a, kind, exit_code, now, fx).await?;
        fx.logs.extend(written);
        Ok(())
    }

    /// Moves retries whose backoff has passed into their queue. Returns how many moved.
    pub async fn promote_due_retries(&self, limit: u64) -> Result<usize, ServiceError> {
        let now = self.now_ms();
        let due = {
            use sea_orm::{QueryOrder, QuerySelect};
            attempt::Entity::find()
                .filter(attempt::Column::State.eq(AttemptState::Scheduled.as_str()))
                .filter(attempt::Column::ScheduledAt.lte(now))
                .order_by_asc(attempt::Column::ScheduledAt)
                .limit(limit)
                .all(self.store().db())
                .await?
        };
        if due.is_empty() {
            return Ok(0);
        }
        let wtx = self.store().write().await?;
        let db = &wtx.tx;
        let mut fx = Effects::default();
        let mut moved = 0;
        for a in due {
            let t = task::Entity::find_by_id(a.task_id.clone()).one(db).await?;
            let Some(t) = t else { continue };
            if !repo::cas_task(db, &t.id, TaskState::Retrying, TaskState::Ready, now).await? {
                continue;
            }
            let ok = repo::cas_attempt(
                db,
                &a.id,
                None,
                &[AttemptState::Scheduled],
                AttemptState::Queued,
                |u| u,
            )
            .await?;
            if !ok {
                continue;
            }
            let facts = crate::service::planning::RunFacts {
                run_id: &a.run_id,
                tenant_id: &a.tenant_id,
                provider: "",
                repository: "",
                sha: "",
                priority: a.priority,
                held: false,
                now,
            };
            fx.events.push(task_event(
                &facts,
                &t.id,
                Transition::check(TaskState::Retrying, TaskState::Ready, "backoff passed")?,
            ));
            fx.events.push(attempt_event(
                &a.tenant_id,
                &a.run_id,
                &a.task_id,
                &a.id,
                Transition::check(
                    AttemptState::Scheduled,
                    AttemptState::Queued,
                    "backoff passed",
                )?,
                None,
            ));
            fx.wake(&a.queue);
            moved += 1;
        }
        self.commit(wtx, now, fx).await?;
        Ok(moved)
    }

    /// The earliest time a scheduled retry becomes due, if any.
    pub async fn next_retry_due(&self) -> Result<Option<i64>, ServiceError> {
        use sea_orm::{QueryOrder, QuerySelect};
        Ok(attempt::Entity::find()
            .filter(attempt::Column::State.eq(AttemptState::Scheduled.as_str()))
            .order_by_asc(attempt::Column::ScheduledAt)
            .limit(1)
            .one(self.store().db())
            .await?
            .map(|a| a.scheduled_at))
    }
}

/// The task and run of an attempt, inside the caller's transaction (one statement).
pub(crate) async fn task_and_run_of(
    db: &impl ConnectionTrait,
    a: &attempt::Model,
) -> Result<(task::Model, run::Model), ServiceError> {
    use sea_orm::{JoinType, QuerySelect};
    let of_run = task::Entity::belongs_to(run::Entity)
        .from(task::Column::RunId)
        .to(run::Column::Id)
        .into();
    let (t, r) = task::Entity::find_by_id(a.task_id.clone())
        .select_also(run::Entity)
        .join(JoinType::InnerJoin, of_run)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::Internal("attempt without task".into()))?;
    let r = r.ok_or_else(|| ServiceError::Internal("attempt without run".into()))?;
    Ok((t, r))
}

/// The effects of an attempt that went `queued → leased → running` (the caller has
/// written the attempt's row): its two events, and its task and run marked running if
/// they were not yet. `taken` is the reason of the `leased` event.
pub(crate) async fn attempt_started(
    db: &impl ConnectionTrait,
    a: &attempt::Model,
    t: &task::Model,
    r: &run::Model,
    taken: &str,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let ev = |tr: Transition| attempt_event(&a.tenant_id, &a.run_id, &a.task_id, &a.id, tr, None);
    fx.events.push(ev(Transition::check(
        AttemptState::Queued,
        AttemptState::Leased,
        taken,
    )?));
    fx.events.push(ev(Transition::check(
        AttemptState::Leased,
        AttemptState::Running,
        "started",
    )?));
    let facts = run_facts(r, now);
    if repo::cas_task(db, &t.id, TaskState::Ready, TaskState::Running, now).await? {
        fx.events.push(task_event(
            &facts,
            &t.id,
            Transition::check(TaskState::Ready, TaskState::Running, "attempt started")?,
        ));
    }
    // Only a run's first start moves it; a run read as started cannot be queued again.
    if r.state == RunState::Queued.as_str()
        && repo::cas_run(db, &r.id, RunState::Queued, RunState::Running, now).await?
    {
        fx.events.push(run_event(
            r,
            Transition::check(RunState::Queued, RunState::Running, "first task started")?,
        ));
    }
    Ok(())
}

/// What follows a finished attempt, in its transaction. Shared with the reconciler, which
/// finishes attempts whose worker is gone, and with trigger jobs, which have no worker.
pub(crate) async fn after_attempt(
    db: &impl ConnectionTrait,
    a: &attempt::Model,
    failure: Option<ErrorKind>,
    exit_code: Option<i32>,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let (t, r) = task_and_run_of(db, a).await?;
    let task_state = parse_state::<TaskState>(&t.state)?;
    let facts = run_facts(&r, now);
    if task_state.is_terminal() {
        // Cancelled while it ran: the run may have been waiting for this attempt.
        if r.state == RunState::Cancelling.as_str() && r.tasks_remaining <= 0 {
            progress::finish_run(db, &r, now, fx).await?;
        }
        return Ok(());
    }
    let to = match failure {
        None => TaskState::Succeeded,
        Some(ErrorKind::Cancelled) => TaskState::Cancelled,
        Some(kind) => {
            let spec: PlannedTask = serde_json::from_str(&t.spec)
                .map_err(|e| ServiceError::Internal(format!("corrupt task spec: {e}")))?;
            let policy = retry_policy(&spec);
            let seed = seed_from_bytes(a.id.as_bytes());
            match policy.decide(a.idx as u32, kind, exit_code, seed) {
                RetryDecision::Retry {
                    next_index,
                    backoff_ms,
                } => {
                    let tr = Transition::check(
                        task_state,
                        TaskState::Retrying,
                        "attempt failed; retrying",
                    )?;
                    if repo::cas_task(db, &t.id, task_state, TaskState::Retrying, now).await? {
                        fx.events.push(task_event(&facts, &t.id, tr));
                        let next_id = AttemptId::new().to_string();
                        let next_at = now + backoff_ms as i64;
                        let new = NewAttempt {
                            task_id: &t.id,
                            run_id: &r.id,
                            tenant_id: &r.tenant_id,
                            queue: &t.queue,
                            index: next_index as i32,
                            priority: r.priority,
                            scheduled_at: next_at,
                            backoff_ms: backoff_ms as i64,
                            now,
                        };
                        repo::insert_attempts(db, vec![new.row(&next_id, AttemptState::Scheduled)])
                            .await?;
                        fx.events.push(attempt_event(
                            &r.tenant_id,
                            &r.id,
                            &t.id,
                            &next_id,
                            Transition::created(AttemptState::Scheduled, "retry scheduled"),
                            Some(json!({
                                "afterAttempt": a.idx,
                                "errorKind": kind.as_str(),
                                "exitCode": exit_code,
                                "policy": {
                                    "maxAttempts": policy.max_attempts,
                                    "on": policy.on.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                                },
                                "backoffMs": backoff_ms,
                                "nextAt": crate::clock::to_datetime(next_at).to_rfc3339(),
                            })),
                        ));
                        fx.retry_scheduled = true;
                    }
                    return Ok(());
                }
                RetryDecision::GiveUp => TaskState::Failed,
            }
        }
    };
    let tr = Transition::check(task_state, to, "attempt finished")?;
    if repo::cas_task(db, &t.id, task_state, to, now).await? {
        fx.events.push(task_event(&facts, &t.id, tr));
        progress::task_finished(db, &r, &t, to, now, fx).await?;
        // A first attempt is the task's only one: no other attempt left artifacts.
        let one_attempt = a.idx == 1;
        super::cache::task_settled(db, &r, &t, to, one_attempt, now, fx).await?;
    }
    Ok(())
}

/// The domain policy of a planned task's `retry:` block.
pub(crate) fn retry_policy(spec: &PlannedTask) -> RetryPolicy {
    spec.retry.to_policy()
}
