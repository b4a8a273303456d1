//! Reads: runs, tasks, attempts, events, logs, workers and queues, each filtered to what
//! the caller may see. Lists are keyset-paginated on time-ordered ids, so a page is one
//! index range scan however deep the client pages.

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::auth::Scope;
use super::{Caller, Service, ServiceError};
use crate::domain::EventRecord;
use crate::store::entity::{attempt, event, log_chunk, run, task, tenant, worker};

/// A page request: up to `first` items after the item `after`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub first: Option<usize>,
    pub after: Option<String>,
}

/// Filters of `runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub state: Option<String>,
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    pub tenant: Option<String>,
}

/// Filters of `events`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub tenant: Option<String>,
    pub pipeline: Option<String>,
    pub run: Option<String>,
    /// The state entered (`to`), lower case.
    pub state: Option<String>,
}

impl Service {
    fn page_size(&self, first: Option<usize>) -> usize {
        first.unwrap_or(50).clamp(1, self.config().max_page_size)
    }

    pub async fn run(&self, caller: &Caller, id: &str) -> Result<run::Model, ServiceError> {
        caller.require(Scope::Read)?;
        run::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|r| caller.sees(&r.tenant_id))
            .ok_or(ServiceError::not_found("run"))
    }

    pub async fn task(&self, caller: &Caller, id: &str) -> Result<task::Model, ServiceError> {
        caller.require(Scope::Read)?;
        task::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|t| caller.sees(&t.tenant_id))
            .ok_or(ServiceError::not_found("task"))
    }

    pub async fn attempt(&self, caller: &Caller, id: &str) -> Result<attempt::Model, ServiceError> {
        caller.require(Scope::Read)?;
        attempt::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|a| caller.sees(&a.tenant_id))
            .ok_or(ServiceError::not_found("attempt"))
    }

    /// Runs, newest first. Returns one more than asked when there is a next page.
    pub async fn runs(
        &self,
        caller: &Caller,
        filter: RunFilter,
        page: Page,
    ) -> Result<(Vec<run::Model>, bool), ServiceError> {
        caller.require(Scope::Read)?;
        let size = self.page_size(page.first);
        let mut q = run::Entity::find().order_by_desc(run::Column::Id);
        if !caller.scopes.has(Scope::Admin) {
            q = q.filter(run::Column::TenantId.eq(caller.tenant_id.to_string()));
        }
        if let Some(t) = filter.tenant {
            q = q.filter(run::Column::TenantId.eq(t));
        }
        if let Some(p) = filter.pipeline {
            q = q.filter(run::Column::PipelineId.eq(p));
        }
        if let Some(s) = filter.state {
            q = q.filter(run::Column::State.eq(s));
        }
        if let Some(r) = filter.git_ref {
            q = q.filter(run::Column::GitRef.eq(r));
        }
        if let Some(s) = filter.sha {
            q = q.filter(run::Column::Sha.eq(s));
        }
        if let Some(after) = page.after {
            q = q.filter(run::Column::Id.lt(after));
        }
        let mut rows = q.limit(size as u64 + 1).all(self.store().db()).await?;
        let more = rows.len() > size;
        rows.truncate(size);
        Ok((rows, more))
    }

    /// The tasks of a run, in plan order (topological).
    pub async fn tasks_of_run(&self, run: &run::Model) -> Result<Vec<task::Model>, ServiceError> {
        Ok(task::Entity::find()
            .filter(task::Column::RunId.eq(run.id.clone()))
            .order_by_asc(task::Column::CreatedAt)
            .order_by_asc(task::Column::Id)
            .all(self.store().db())
            .await?)
    }

    pub async fn attempts_of_task(
        &self,
        task_id: &str,
    ) -> Result<Vec<attempt::Model>, ServiceError> {
        Ok(attempt::Entity::find()
            .filter(attempt::Column::TaskId.eq(task_id))
            .order_by_asc(attempt::Column::Idx)
            .all(self.store().db())
            .await?)
    }

    pub async fn events_of_run(
        &self,
        run_id: &str,
        after: i64,
        limit: u64,
    ) -> Result<Vec<EventRecord>, ServiceError> {
        let rows = event::Entity::find()
            .filter(event::Column::RunId.eq(run_id))
            .filter(event::Column::Seq.gt(after))
            .order_by_asc(event::Column::Seq)
            .limit(limit)
            .all(self.store().db())
            .await?;
        rows.into_iter()
            .map(|r| crate::store::events::from_row(r).map_err(Into::into))
            .collect()
    }

    /// Events after `after`, oldest first, filtered to what the caller may see.
    pub async fn events(
        &self,
        caller: &Caller,
        filter: EventFilter,
        after: i64,
        first: Option<usize>,
    ) -> Result<(Vec<EventRecord>, bool), ServiceError> {
        caller.require(Scope::Read)?;
        let size = self.page_size(first);
        let mut q = event::Entity::find()
            .filter(event::Column::Seq.gt(after))
            .order_by_asc(event::Column::Seq);
        if !caller.scopes.has(Scope::Admin) {
            q = q.filter(event::Column::TenantId.eq(caller.tenant_id.to_string()));
        }
        if let Some(t) = filter.tenant {
            q = q.filter(event::Column::TenantId.eq(t));
        }
        if let Some(r) = filter.run {
            q = q.filter(event::Column::RunId.eq(r));
        }
        if let Some(s) = filter.state {
            q = q.filter(event::Column::ToState.eq(s));
        }
        if let Some(p) = filter.pipeline {
            q = q.filter(
                event::Column::RunId.in_subquery(
                    sea_orm::sea_query::Query::select()
                        .column(run::Column::Id)
                        .from(run::Entity)
                        .and_where(Expr::col(run::Column::PipelineId).eq(p))
                        .to_owned(),
                ),
            );
        }
        let rows = q.limit(size as u64 + 1).all(self.store().db()).await?;
        let more = rows.len() > size;
        let records = rows
            .into_iter()
            .take(size)
            .map(|r| crate::store::events::from_row(r).map_err(Into::into))
            .collect::<Result<Vec<_>, ServiceError>>()?;
        Ok((records, more))
    }

    /// An attempt's log from `from_offset` (bytes), in order.
    pub async fn log_of_attempt(
        &self,
        caller: &Caller,
        attempt_id: &str,
        from_offset: i64,
    ) -> Result<Vec<log_chunk::Model>, ServiceError> {
        self.attempt(caller, attempt_id).await?;
        Ok(log_chunk::Entity::find()
            .filter(log_chunk::Column::AttemptId.eq(attempt_id))
            .filter(log_chunk::Column::ByteOffset.gte(from_offset))
            .order_by_asc(log_chunk::Column::ByteOffset)
            .all(self.store().db())
            .await?)
    }

    pub async fn workers(&self, caller: &Caller) -> Result<Vec<worker::Model>, ServiceError> {
        caller.require(Scope::Read)?;
        let mut q = worker::Entity::find().order_by_asc(worker::Column::Name);
        if !caller.scopes.has(Scope::Admin) {
            q = q.filter(worker::Column::TenantId.eq(caller.tenant_id.to_string()));
        }
        Ok(q.all(self.store().db()).await?)
    }

    /// Every queue that has attempts, with the number waiting in it.
    pub async fn queues(&self, caller: &Caller) -> Result<Vec<(String, i64)>, ServiceError> {
        caller.require(Scope::Read)?;
        let mut q = attempt::Entity::find()
            .select_only()
            .column(attempt::Column::Queue)
            .column_as(
                Expr::cust("SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END)"),
                "depth",
            )
            .group_by(attempt::Column::Queue)
            .order_by_asc(attempt::Column::Queue);
        if !caller.scopes.has(Scope::Admin) {
            q = q.filter(attempt::Column::TenantId.eq(caller.tenant_id.to_string()));
        }
        let rows: Vec<(String, Option<i64>)> = q.into_tuple().all(self.store().db()).await?;
        Ok(rows.into_iter().map(|(q, d)| (q, d.unwrap_or(0))).collect())
    }
}

/// How recently a worker must have been seen to count as serving its queues.
const LIVE_WORKER_MS: i64 = 30_000;

impl Service {
    /// Why a task that has not started yet is waiting; `None` once it runs or ended.
    pub async fn waiting_reason(&self, t: &task::Model) -> Result<Option<String>, ServiceError> {
        use crate::domain::TaskState;
        let db = self.store().db();
        let state: TaskState = super::progress::parse_state(&t.state)?;
        match state {
            TaskState::Blocked => {
                let run = run::Entity::find_by_id(t.run_id.clone())
                    .one(db)
                    .await?
                    .ok_or(ServiceError::not_found("run"))?;
                if run.held {
                    return Ok(Some(format!(
                        "concurrency group {:?} is busy: waiting for an earlier run to finish",
                        run.concurrency_group.unwrap_or_default()
                    )));
                }
                if let Some(reason) = super::cache::waiting_for_build(db, &t.id).await? {
                    return Ok(Some(reason));
                }
                let needs: Vec<String> = serde_json::from_str(&t.needs).unwrap_or_default();
                let open: Vec<String> = task::Entity::find()
                    .filter(task::Column::RunId.eq(t.run_id.clone()))
                    .filter(task::Column::Name.is_in(needs))
                    .all(db)
                    .await?
                    .into_iter()
                    .filter(|u| {
                        super::progress::parse_state::<TaskState>(&u.state)
                            .map(|s| !s.is_terminal())
                            .unwrap_or(true)
                    })
                    .map(|u| u.name)
                    .collect();
                Ok(Some(format!(
                    "blocked on upstream tasks: {}",
                    open.join(", ")
                )))
            }
            TaskState::Retrying => {
                let next = attempt::Entity::find()
                    .filter(attempt::Column::TaskId.eq(t.id.clone()))
                    .order_by_desc(attempt::Column::Idx)
                    .one(db)
                    .await?;
                Ok(next.map(|a| {
                    format!(
                        "in backoff until {} before attempt {} of {}",
                        crate::clock::to_datetime(a.scheduled_at).to_rfc3339(),
                        a.idx,
                        t.max_attempts
                    )
                }))
            }
            TaskState::Ready if t.queue == crate::pipeline::TRIGGER_QUEUE => {
                Ok(Some("starting the run of the pipeline it triggers".into()))
            }
            TaskState::Ready => {
                let Some(a) = attempt::Entity::find()
                    .filter(attempt::Column::TaskId.eq(t.id.clone()))
                    .filter(attempt::Column::State.eq("queued"))
                    .one(db)
                    .await?
                else {
                    return Ok(Some("being handed to a worker".into()));
                };
                let now = self.now_ms();
                let live = worker::Entity::find()
                    .filter(worker::Column::State.ne("lost"))
                    .filter(worker::Column::LastHeartbeatAt.gte(now - LIVE_WORKER_MS))
                    .all(db)
                    .await?
                    .into_iter()
                    .any(|w| {
                        serde_json::from_str::<Vec<String>>(&w.queues)
                            .unwrap_or_default()
                            .contains(&t.queue)
                    });
                if !live {
                    return Ok(Some(format!("no live worker serves queue {:?}", t.queue)));
                }
                if let Some(reason) = self.fair_share_reason(t, &a, now).await? {
                    return Ok(Some(reason));
                }
                // The tenant is served next: its place in its own sub-queue of the queue.
                Ok(Some(format!(
                    "queued at position {} in queue {:?}",
                    position_in_tenant(db, &a).await?,
                    t.queue
                )))
            }
            _ => Ok(None),
        }
    }
}

/// Queued attempts that the claim takes before `a` within one tenant: higher priority,
/// then older.
fn ahead_of(a: &attempt::Model) -> sea_orm::Condition {
    sea_orm::Condition::any()
        .add(attempt::Column::Priority.gt(a.priority))
        .add(
            sea_orm::Condition::all()
                .add(attempt::Column::Priority.eq(a.priority))
                .add(attempt::Column::ScheduledAt.lt(a.scheduled_at)),
        )
        .add(
            sea_orm::Condition::all()
                .add(attempt::Column::Priority.eq(a.priority))
                .add(attempt::Column::ScheduledAt.eq(a.scheduled_at))
                .add(attempt::Column::Id.lt(a.id.clone())),
        )
}

/// The place of queued attempt `a` among its tenant's queued attempts of its queue (1 is
/// next): within a tenant the claim takes the highest priority, then the oldest.
async fn position_in_tenant(
    db: &impl sea_orm::ConnectionTrait,
    a: &attempt::Model,
) -> Result<u64, ServiceError> {
    Ok(attempt::Entity::find()
        .filter(attempt::Column::Queue.eq(a.queue.clone()))
        .filter(attempt::Column::State.eq("queued"))
        .filter(attempt::Column::TenantId.eq(a.tenant_id.clone()))
        .filter(ahead_of(a))
        .count(db)
        .await?
        + 1)
}

impl Service {
    /// The quota or fair-share reason of a queued attempt `a` of task `t`, when the
    /// dispatcher would serve another tenant (or none of this one) first. It asks the same
    /// pure decision as the claim (`domain::fairness::fair_order`).
    async fn fair_share_reason(
        &self,
        t: &task::Model,
        a: &attempt::Model,
        now: i64,
    ) -> Result<Option<String>, ServiceError> {
        use crate::domain::fairness::{FAIR_WINDOW_MS, fair_order};
        let db = self.store().db();
        let contenders = crate::store::repo::contenders(db, &t.queue, now, None).await?;
        let Some(own) = contenders.iter().find(|c| c.tenant_id == a.tenant_id) else {
            return Ok(None);
        };
        let names: std::collections::HashMap<String, String> = tenant::Entity::find()
            .filter(tenant::Column::Id.is_in(contenders.iter().map(|c| c.tenant_id.clone())))
            .all(db)
            .await?
            .into_iter()
            .map(|x| (x.id, x.name))
            .collect();
        let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
        if !own.below_quota() {
            return Ok(Some(format!(
                "tenant {} is at its quota of {} running attempts",
                name(&own.tenant_id),
                own.max_running
            )));
        }
        let order = fair_order(contenders.clone());
        let ahead: Vec<String> = order
            .iter()
            .take_while(|c| c.tenant_id != own.tenant_id)
            .map(|c| {
                format!(
                    "{} ({} at weight {})",
                    name(&c.tenant_id),
                    c.share,
                    c.weight.max(1)
                )
            })
            .collect();
        if ahead.is_empty() {
            return Ok(None);
        }
        let position = position_in_tenant(db, a).await?;
        Ok(Some(format!(
            "waiting for its fair share of queue {:?}: other tenants are served first: {}; \
             tenant {} has {} attempts running or started in the last {} s at weight {}, \
             and this is its position {position} in the queue",
            t.queue,
            ahead.join(", "),
            name(&own.tenant_id),
            own.share,
            FAIR_WINDOW_MS / 1000,
            own.weight.max(1)
        )))
    }
}
