//! Scheduled runs: `on: schedule: [{cron: "…"}]`.
//!
//! Every node runs this loop; a tick fires once across all of them. For each pipeline
//! with schedules, one pass finds the latest tick of any of its cron expressions that is
//! later than both its last recorded tick and the pipeline's last update, and no later
//! than now. Missed ticks (the service was down) are not replayed: only the latest one
//! fires. The run is triggered with the idempotency key `schedule:<tick ms>` on the
//! pipeline's default ref, at a sha every node derives identically from the database, so
//! concurrent nodes land on the same run; the tick is then recorded in `schedule_ticks`
//! (primary key `(pipeline_id, tick_at)`), which later passes read.
//!
//! The default ref is `refs/heads/main`. The sha is the one of the latest run of the
//! pipeline on that ref created at or before the tick (what the last push delivered);
//! without one, the ref name itself is used (the checkout fetches it) and the run ignores
//! the cache, since a ref name does not identify the sources.

use std::time::Duration;

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::pipeline::{self, cron::Cron};
use crate::service::{Caller, Service, ServiceError, TriggerInput};
use crate::store::entity::{pipeline as pipeline_row, run, schedule_tick};

/// The ref scheduled runs build.
pub const DEFAULT_REF: &str = "refs/heads/main";

/// One tick that a pass handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub pipeline_id: String,
    pub tick_at: i64,
    /// The run started (or found, when another node started it), or the error.
    pub run: Result<String, String>,
}

/// One pass at time `now` (ms): fires the due tick of every scheduled pipeline.
#[instrument(skip_all, fields(now))]
pub async fn run_once(service: &Service, now: i64) -> Result<Vec<Fired>, ServiceError> {
    let db = service.store().db();
    let pipelines = pipeline_row::Entity::find()
        .filter(pipeline_row::Column::File.contains("cron"))
        .all(db)
        .await?;
    let mut fired = Vec::new();
    for p in pipelines {
        let Ok(file) = pipeline::parse(&p.file) else {
            continue;
        };
        let crons: Vec<(String, Cron)> = file
            .on
            .schedule
            .iter()
            .filter_map(|s| Cron::parse(s).ok().map(|c| (s.clone(), c)))
            .collect();
        if crons.is_empty() {
            continue;
        }
        let last = schedule_tick::Entity::find()
            .filter(schedule_tick::Column::PipelineId.eq(p.id.clone()))
            .order_by_desc(schedule_tick::Column::TickAt)
            .one(db)
            .await?
            .map_or(i64::MIN, |t| t.tick_at);
        let after = last.max(p.updated_at);
        let Some((expr, tick)) = crons
            .iter()
            .filter_map(|(s, c)| c.latest_in(after, now).map(|t| (s, t)))
            .max_by_key(|(_, t)| *t)
        else {
            continue;
        };
        let result = fire(service, &p, tick).await;
        match &result {
            Ok(run_id) => {
                tracing::info!(pipeline_id = %p.id, run_id = %run_id, tick, "schedule fired")
            }
            Err(e) => tracing::warn!(pipeline_id = %p.id, tick, error = %e, "schedule refused"),
        }
        let row = schedule_tick::ActiveModel {
            pipeline_id: Set(p.id.clone()),
            tick_at: Set(tick),
            cron: Set(expr.clone()),
            run_id: Set(result.as_ref().ok().cloned()),
            error: Set(result.as_ref().err().cloned()),
            created_at: Set(service.now_ms()),
        };
        if let Err(e) = row.insert(db).await {
            // Another node recorded the same tick; the idempotency key kept the run single.
            tracing::debug!(pipeline_id = %p.id, tick, error = %e, "tick recorded concurrently");
        }
        fired.push(Fired {
            pipeline_id: p.id.clone(),
            tick_at: tick,
            run: result,
        });
    }
    Ok(fired)
}

async fn fire(service: &Service, p: &pipeline_row::Model, tick: i64) -> Result<String, String> {
    let known = run::Entity::find()
        .filter(run::Column::PipelineId.eq(p.id.clone()))
        .filter(run::Column::GitRef.eq(DEFAULT_REF))
        .filter(run::Column::Sha.ne(DEFAULT_REF))
        .filter(run::Column::CreatedAt.lte(tick))
        .order_by_desc(run::Column::CreatedAt)
        .one(service.store().db())
        .await
        .map_err(|e| e.to_string())?;
    let (sha, no_cache) = match known {
        Some(r) => (r.sha, false),
        None => (DEFAULT_REF.to_owned(), true),
    };
    let tenant = p
        .tenant_id
        .parse()
        .map_err(|_| "corrupt pipeline tenant".to_owned())?;
    let input = TriggerInput {
        pipeline: p.id.clone(),
        sha,
        git_ref: DEFAULT_REF.to_owned(),
        idempotency_key: Some(format!("schedule:{tick}")),
        no_cache,
        priority: None,
        trigger_kind: Some("schedule".into()),
    };
    service
        .trigger_run(&Caller::system(tenant), input)
        .await
        .map(|r| r.id)
        .map_err(|e| e.to_string())
}

/// Runs a pass shortly after every minute boundary until `shutdown` fires.
pub async fn run(service: Service, shutdown: CancellationToken) {
    loop {
        let now = service.now_ms();
        let started = std::time::Instant::now();
        let pass = run_once(&service, now).await;
        crate::metrics::global()
            .background_passes
            .with(&["cron"])
            .observe(started.elapsed());
        if let Err(e) = pass {
            tracing::warn!(error = %e, "schedule pass failed");
        }
        // Wake one second into the next minute.
        let wait = 60_000 - now.rem_euclid(60_000) + 1_000;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::events::{EventBus, Wakeups};
    use crate::service::{PipelineInput, ServiceConfig};
    use crate::store::{Durability, Store};

    fn at(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    /// A service on the SQLite database in `dir`: two calls are two replicas.
    async fn replica(dir: &std::path::Path, clock: &ManualClock, node: &str) -> Service {
        let store = Store::connect(&Store::sqlite_url(dir), Durability::Normal)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Service::new(
            store,
            Arc::new(clock.clone()),
            node,
            EventBus::default(),
            Wakeups::default(),
            ServiceConfig::default(),
        )
    }

    async fn scheduled_runs(s: &Service) -> Vec<run::Model> {
        run::Entity::find()
            .filter(run::Column::TriggerKind.eq("schedule"))
            .order_by_asc(run::Column::CreatedAt)
            .all(s.store().db())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn fires_once_per_tick_across_replicas_and_once_after_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at("2026-11-29T00:00:30Z"));
        let a = replica(dir.path(), &clock, "a").await;
        let b = replica(dir.path(), &clock, "b").await;
        let tenant = a.ensure_default_tenant().await.unwrap();
        let system = Caller::system(tenant.id.parse().unwrap());
        let p = a
            .create_pipeline(
                &system,
                PipelineInput {
                    tenant: None,
                    name: "nightly".into(),
                    provider: "github".into(),
                    repository: "o/r".into(),
                    file: "on: {schedule: [{cron: \"*/5 * * * *\"}, {cron: \"0 3 * * *\"}]}\n\
                           jobs:\n  a:\n    steps: [{run: echo}]\n"
                        .into(),
                    webhook_secret: None,
                },
            )
            .await
            .unwrap();

        // Before the first tick: nothing.
        clock.set_ms(at("2026-11-29T00:04:59Z"));
        assert!(run_once(&a, clock.now_ms()).await.unwrap().is_empty());

        // The 00:05 tick, seen by both replicas at once: one run.
        clock.set_ms(at("2026-11-29T00:05:01Z"));
        let now = clock.now_ms();
        let (fa, fb) = tokio::join!(run_once(&a, now), run_once(&b, now));
        let (fa, fb) = (fa.unwrap(), fb.unwrap());
        let runs = scheduled_runs(&a).await;
        assert_eq!(runs.len(), 1, "{fa:?} {fb:?}");
        let run = &runs[0];
        assert_eq!(run.pipeline_id, p.id);
        assert_eq!(run.git_ref, DEFAULT_REF);
        assert_eq!(
            run.idempotency_key.as_deref(),
            Some(format!("schedule:{}", at("2026-11-29T00:05:00Z")).as_str())
        );
        for f in fa.iter().chain(&fb) {
            assert_eq!(f.run.as_ref().unwrap(), &run.id);
        }
        // Later passes within the same tick, on either replica: nothing more.
        clock.set_ms(at("2026-11-29T00:09:59Z"));
        assert!(run_once(&a, clock.now_ms()).await.unwrap().is_empty());
        assert!(run_once(&b, clock.now_ms()).await.unwrap().is_empty());
        assert_eq!(scheduled_runs(&a).await.len(), 1);

        // Down from 00:10 to 03:12: 39 ticks missed, one run for the latest (03:10).
        clock.set_ms(at("2026-11-29T03:12:30Z"));
        let fired = run_once(&b, clock.now_ms()).await.unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].tick_at, at("2026-11-29T03:10:00Z"));
        assert!(run_once(&a, clock.now_ms()).await.unwrap().is_empty());
        let runs = scheduled_runs(&a).await;
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].id, *fired[0].run.as_ref().unwrap());
    }
}
