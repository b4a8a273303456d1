//! What the reconciler decides, as use cases: attempts whose worker went silent become
//! `lost`, attempts far past their timeout become `timed_out`, silent workers become `lost`,
//! and runs whose tasks are all done are finished. Each decision is a compare-and-set in
//! its own transaction and an event naming the node that made it.

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;

use super::planning::attempt_event;
use super::progress::{self, Effects, parse_state};
use super::{Service, ServiceError};
use crate::domain::{AttemptState, ErrorKind, RunState, Transition};
use crate::store::entity::{attempt, lease, run, worker};
use crate::store::repo;

/// What one reconciler pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub lost_attempts: usize,
    pub timed_out_attempts: usize,
    pub lost_workers: usize,
    pub finished_runs: usize,
    /// Waiting trigger jobs finished because their child run had ended.
    pub settled_triggers: usize,
    /// Expired cache entries and artifacts removed.
    pub evicted: u64,
}

impl Reconciled {
    pub fn any(&self) -> bool {
        *self != Reconciled::default()
    }
}

impl Service {
    /// Takes or renews the named lease for `ttl_ms`; true when this node holds it. A lease
    /// whose holder stopped renewing it is taken over once it expires.
    pub async fn acquire_lease(&self, name: &str, ttl_ms: i64) -> Result<bool, ServiceError> {
        let db = self.store().db();
        let now = self.now_ms();
        let renew = lease::Entity::update_many()
            .col_expr(lease::Column::Holder, Expr::value(self.node()))
            .col_expr(lease::Column::ExpiresAt, Expr::value(now + ttl_ms))
            .filter(lease::Column::Name.eq(name))
            .filter(
                sea_orm::Condition::any()
                    .add(lease::Column::Holder.eq(self.node()))
                    .add(lease::Column::ExpiresAt.lt(now)),
            );
        let renewed = self.store().in_turn(renew.exec(db)).await?;
        if renewed.rows_affected == 1 {
            return Ok(true);
        }
        let inserted = lease::Entity::insert(lease::ActiveModel {
            name: sea_orm::Set(name.to_owned()),
            holder: sea_orm::Set(self.node().to_owned()),
            expires_at: sea_orm::Set(now + ttl_ms),
        })
        .exec_without_returning(db)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) => match crate::store::StoreError::from(e) {
                // Someone else holds it.
                crate::store::StoreError::Conflict(_) => Ok(false),
                other => Err(other.into()),
            },
        }
    }

    /// Gives the named lease up, so another node can take it at once.
    pub async fn release_lease(&self, name: &str) -> Result<(), ServiceError> {
        lease::Entity::delete_many()
            .filter(lease::Column::Name.eq(name))
            .filter(lease::Column::Holder.eq(self.node()))
            .exec(self.store().db())
            .await?;
        Ok(())
    }

    /// Records that a worker is alive, and what it is doing when that changed. A worker
    /// that leases many short attempts in a row calls this for each: the row is written
    /// when its state changes or its last write is [`TOUCH_EVERY_MS`] old, far inside
    /// the time after which a silent worker counts as lost.
    pub(crate) async fn touch_worker(
        &self,
        worker_id: &str,
        state: Option<&str>,
    ) -> Result<(), ServiceError> {
        let now = self.now_ms();
        if self.touches().is_fresh(worker_id, state, now) {
            return Ok(());
        }
        let mut update = worker::Entity::update_many()
            .col_expr(worker::Column::LastHeartbeatAt, Expr::value(now))
            .filter(worker::Column::Id.eq(worker_id));
        if let Some(state) = state {
            update = update.col_expr(worker::Column::State, Expr::value(state));
        }
        self.store().in_turn(update.exec(self.store().db())).await?;
        self.touches().written(worker_id, state, now);
        Ok(())
    }

    /// One pass of every repair, as of `now`.
    pub async fn reconcile(
        &self,
        lost_after_ms: i64,
        timeout_grace_ms: i64,
        batch: u64,
    ) -> Result<Reconciled, ServiceError> {
        let now = self.now_ms();
        let mut done = Reconciled::default();
        let db = self.store().db();

        // Attempts whose lease expired: the worker stopped heartbeating.
        let expired = attempt::Entity::find()
            .filter(attempt::Column::State.is_in([
                AttemptState::Leased.as_str(),
                AttemptState::Running.as_str(),
            ]))
            .filter(attempt::Column::LeaseExpiresAt.lt(now))
            .limit(batch)
            .all(db)
            .await?;
        for a in expired {
            let message = format!(
                "no heartbeat from its worker since {}; lease expired",
                crate::clock::to_datetime(a.heartbeat_at.unwrap_or(a.created_at)).to_rfc3339()
            );
            if self
                .decide_attempt(&a, AttemptState::Lost, ErrorKind::Lost, &message)
                .await?
            {
                done.lost_attempts += 1;
            }
        }

        // Attempts far past their timeout whose worker still renews the lease but never
        // reported: the worker enforces timeouts itself, this is the backstop.
        let overdue = attempt::Entity::find()
            .filter(attempt::Column::State.eq(AttemptState::Running.as_str()))
            .filter(attempt::Column::DeadlineAt.lt(now - timeout_grace_ms))
            .limit(batch)
            .all(db)
            .await?;
        for a in overdue {
            let message = "ran past its timeout and its worker did not stop it";
            if self
                .decide_attempt(&a, AttemptState::TimedOut, ErrorKind::Timeout, message)
                .await?
            {
                done.timed_out_attempts += 1;
            }
        }

        // Workers that stopped heartbeating.
        let silent = worker::Entity::update_many()
            .col_expr(worker::Column::State, Expr::value("lost"))
            .filter(worker::Column::State.ne("lost"))
            .filter(worker::Column::LastHeartbeatAt.lt(now - lost_after_ms));
        let silent = self.store().in_turn(silent.exec(db)).await?;
        done.lost_workers = silent.rows_affected as usize;

        // Runs whose tasks are all finished but which were left open (a cancel waiting
        // for an attempt that was then decided by this pass, for example).
        let open = run::Entity::find()
            .filter(run::Column::State.is_in([
                RunState::Queued.as_str(),
                RunState::Running.as_str(),
                RunState::Cancelling.as_str(),
            ]))
            .filter(run::Column::TasksRemaining.lte(0))
            .limit(batch)
            .all(db)
            .await?;
        for r in open {
            let wtx = self.store().write().await?;
            let mut fx = Effects::default();
            let current = run::Entity::find_by_id(r.id.clone()).one(&wtx.tx).await?;
            if let Some(current) = current {
                progress::finish_run(&wtx.tx, &current, now, &mut fx).await?;
            }
            let finished = !fx.events.is_empty();
            self.commit(wtx, now, fx).await?;
            if finished {
                done.finished_runs += 1;
            }
        }
        // Trigger jobs still waiting for a child run that has ended.
        done.settled_triggers = self.settle_waiting_triggers(batch).await?;
        // Cache entries and artifacts past their TTL.
        done.evicted = self.evict_expired(now).await?;
        Ok(done)
    }

    /// Decides a running attempt whose worker cannot: `lost` or `timed_out`, then the
    /// retry or failure that follows, in one transaction. False when another node or the
    /// worker decided it first.
    async fn decide_attempt(
        &self,
        a: &attempt::Model,
        to: AttemptState,
        kind: ErrorKind,
        message: &str,
    ) -> Result<bool, ServiceError> {
        let wtx = self.store().write().await?;
        let db = &wtx.tx;
        let now = self.now_ms();
        let from = parse_state::<AttemptState>(&a.state)?;
        let transition = Transition::check(from, to, format!("reconciler: {message}"))?;
        let won = repo::cas_attempt(db, &a.id, a.lease_token.as_deref(), &[from], to, |u| {
            u.col_expr(attempt::Column::FinishedAt, Expr::value(now))
                .col_expr(attempt::Column::ErrorKind, Expr::value(kind.as_str()))
                .col_expr(attempt::Column::ErrorMessage, Expr::value(message))
        })
        .await?;
        if !won {
            return Ok(false);
        }
        let mut fx = Effects::default();
        fx.events.push(attempt_event(
            &a.tenant_id,
            &a.run_id,
            &a.task_id,
            &a.id,
            transition,
            Some(json!({ "errorKind": kind.as_str(), "message": message, "worker": a.worker_id })),
        ));
        super::work::after_attempt(db, a, Some(kind), None, now, &mut fx).await?;
        // A worker that was told nothing keeps running the attempt: tell it to stop.
        fx.cancel_attempts.push(a.id.clone());
        self.commit(wtx, now, fx).await?;
        Ok(true)
    }
}

/// How stale a worker's `last_heartbeat_at` may be before a touch writes it again.
pub(crate) const TOUCH_EVERY_MS: i64 = 1_000;

/// The last write of each worker's liveness made by this node.
#[derive(Default)]
pub(crate) struct Touches(std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>);

impl Touches {
    /// Whether a touch at `now` (with `state`, if given) would write nothing new.
    fn is_fresh(&self, worker_id: &str, state: Option<&str>, now: i64) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(worker_id).is_some_and(|(known, at)| {
            (0..TOUCH_EVERY_MS).contains(&(now - at)) && state.is_none_or(|s| s == known)
        })
    }

    fn written(&self, worker_id: &str, state: Option<&str>, now: i64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 10_000 {
            // Workers come and go (agents re-register); forgetting only costs a write.
            map.clear();
        }
        if let Some((known, at)) = map.get_mut(worker_id) {
            if let Some(s) = state {
                *known = s.to_owned();
            }
            *at = now;
        } else if let Some(s) = state {
            // A touch without a state leaves nothing to compare the next one with.
            map.insert(worker_id.to_owned(), (s.to_owned(), now));
        }
    }
}
