//! The scheduler's timed work: retries whose backoff has passed move into their queue;
//! and the work no worker does: trigger jobs start their child runs.
//!
//! Readiness itself needs no loop — the transaction that finishes a task makes its
//! dependents ready — so this service only wakes for time (at the earliest due retry, or
//! when a commit schedules a new one) and when a commit queues a trigger job.

pub mod cron;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::service::{Service, ServiceError};

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Retries promoted per transaction.
    pub batch: u64,
    /// Longest sleep between looks, should a wake-up be missed (e.g. from another node).
    pub max_idle: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            batch: 500,
            max_idle: Duration::from_secs(1),
        }
    }
}

/// One pass: promotes due retries, then starts queued trigger jobs; returns how many
/// attempts moved.
#[instrument(skip_all)]
pub async fn run_once(service: &Service, config: &SchedulerConfig) -> Result<usize, ServiceError> {
    let mut total = 0;
    loop {
        let moved = service.promote_due_retries(config.batch).await?;
        total += moved;
        if (moved as u64) < config.batch {
            break;
        }
    }
    if total > 0 {
        tracing::debug!(promoted = total, "retries promoted");
    }
    let mut triggered = 0;
    loop {
        let started = service.start_triggers(config.batch).await?;
        triggered += started;
        if (started as u64) < config.batch {
            break;
        }
    }
    if triggered > 0 {
        tracing::debug!(triggered, "trigger jobs started");
    }
    Ok(total + triggered)
}

/// Runs until `shutdown` fires.
pub async fn run(service: Service, config: SchedulerConfig, shutdown: CancellationToken) {
    let wake = service.wakeups().scheduler();
    loop {
        let started = std::time::Instant::now();
        let pass = run_once(&service, &config).await;
        crate::metrics::global()
            .background_passes
            .with(&["scheduler"])
            .observe(started.elapsed());
        if let Err(e) = pass {
            tracing::warn!(error = %e, "scheduler pass failed");
        }
        let sleep = match service.next_retry_due().await {
            Ok(Some(due)) => {
                let ms = (due - service.now_ms()).clamp(0, config.max_idle.as_millis() as i64);
                Duration::from_millis(ms as u64)
            }
            _ => config.max_idle,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
