//! The reconciler: the background service that owns everything a crash can leave half
//! done — attempts whose heartbeat or lease expired, attempts past their timeout, silent
//! workers, runs left open.
//!
//! It runs on every node, but one node at a time holds its lease (a row in `leases`,
//! taken by compare-and-set with an expiry), so each decision is made once; a node that
//! dies loses the lease when it expires and another takes over. The decisions themselves
//! live in `service` (`Service::reconcile`); this module is the loop around them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::service::{Reconciled, Service, ServiceError};

/// The reconciler's lease in the `leases` table.
pub const LEASE: &str = "reconciler";

/// Tunables, with defaults far faster than hosted CI's lost-agent detection.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Time between passes.
    pub interval: Duration,
    /// A worker silent this long is lost (attempts expire by their own lease, renewed by
    /// heartbeats every 2 s for `lease_ms` = 10 s).
    pub lost_after: Duration,
    /// How long past its deadline a running attempt may go unreported.
    pub timeout_grace: Duration,
    /// How long the reconciler's own lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Rows handled per kind per pass.
    pub batch: u64,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            interval: Duration::from_millis(500),
            lost_after: Duration::from_secs(10),
            timeout_grace: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(5),
            batch: 500,
        }
    }
}

impl ReconcilerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_ttl <= self.interval {
            return Err("reconciler lease_ttl must be longer than its interval".into());
        }
        Ok(())
    }
}

/// One pass, if this node holds the lease. Returns `None` when another node holds it.
#[instrument(skip_all, fields(node = %service.node()))]
pub async fn run_once(
    service: &Service,
    config: &ReconcilerConfig,
) -> Result<Option<Reconciled>, ServiceError> {
    if !service
        .acquire_lease(LEASE, config.lease_ttl.as_millis() as i64)
        .await?
    {
        return Ok(None);
    }
    let done = service
        .reconcile(
            config.lost_after.as_millis() as i64,
            config.timeout_grace.as_millis() as i64,
            config.batch,
        )
        .await?;
    count_actions(&done);
    if done.any() {
        tracing::info!(
            lost_attempts = done.lost_attempts,
            timed_out_attempts = done.timed_out_attempts,
            lost_workers = done.lost_workers,
            finished_runs = done.finished_runs,
            evicted = done.evicted,
            "reconciled"
        );
    }
    Ok(Some(done))
}

/// Adds a pass's repairs to `gantry_reconciler_actions_total`.
fn count_actions(done: &Reconciled) {
    let actions = &crate::metrics::global().reconciler_actions;
    for (kind, n) in [
        ("attempt_lost", done.lost_attempts as u64),
        ("attempt_timed_out", done.timed_out_attempts as u64),
        ("worker_lost", done.lost_workers as u64),
        ("run_finished", done.finished_runs as u64),
        ("evicted", done.evicted),
    ] {
        // Every kind is rendered, at zero too, so that rates exist before the first repair.
        actions.with(&[kind]).add(n);
    }
}

/// Runs passes until `shutdown` fires, then gives the lease up.
pub async fn run(service: Service, config: ReconcilerConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        let pass = run_once(&service, &config).await;
        crate::metrics::global()
            .background_passes
            .with(&["reconciler"])
            .observe(started.elapsed());
        if let Err(e) = pass {
            tracing::warn!(error = %e, "reconciler pass failed");
        }
    }
    if let Err(e) = service.release_lease(LEASE).await {
        tracing::warn!(error = %e, "could not release the reconciler lease");
    }
}
