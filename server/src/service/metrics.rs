//! Figures for `GET /metrics` in the Prometheus text format: queue depth per queue,
//! attempts by queue and state, and per queue and tenant the arrivals, starts and
//! completions counters and a histogram of queue waits — all read from the store (every
//! replica reports the same installation-wide numbers) — followed by this node's own
//! counters and histograms (`crate::metrics`), some of which are counted here from
//! committed events.

use std::collections::BTreeMap;
use std::fmt::Write;

use sea_orm::{ConnectionTrait, FromQueryResult, Statement};

use super::{Service, ServiceError};
use crate::domain::{AttemptState, Entity, EventRecord, RunState};
use crate::metrics::label;

#[derive(Debug, FromQueryResult)]
struct Row {
    queue: String,
    state: String,
    n: i64,
}

/// Counts the attempts and runs that a commit of this node finished. Counting committed
/// events, rather than each code path that ends an attempt (completion, timeout, loss,
/// cancellation), keeps the figures exact whoever made the transition.
pub(crate) fn count_committed(records: &[EventRecord]) {
    let m = crate::metrics::global();
    for e in records {
        match e.entity {
            Entity::Attempt
                if e.to
                    .parse::<AttemptState>()
                    .is_ok_and(AttemptState::is_terminal) =>
            {
                m.attempts_finished.with(&[&e.to]).inc();
            }
            Entity::Run if e.to.parse::<RunState>().is_ok_and(RunState::is_terminal) => {
                m.runs_finished.with(&[&e.to]).inc();
            }
            _ => {}
        }
    }
}

/// Upper bounds of the queue-wait histogram, in seconds.
const WAIT_BOUNDS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Per queue and tenant: counters and the cumulative wait histogram.
#[derive(Debug)]
struct Flow {
    queue: String,
    tenant_id: String,
    arrivals: i64,
    starts: i64,
    completions: i64,
    wait_sum_ms: i64,
    /// Starts whose wait was at most each of [`WAIT_BOUNDS`].
    le: Vec<i64>,
}

/// Reads [`Flow`]s in one pass over the attempts.
async fn flows(db: &impl ConnectionTrait, now: i64) -> Result<Vec<Flow>, ServiceError> {
    let arrived = super::load::ARRIVED;
    let wait = format!("(a.started_at - {arrived})");
    let mut sql = format!(
        "SELECT a.queue AS queue, a.tenant_id AS tenant_id, \
         CAST(SUM(CASE WHEN {arrived} <= {now} THEN 1 ELSE 0 END) AS BIGINT) AS arrivals, \
         COUNT(a.started_at) AS starts, COUNT(a.finished_at) AS completions, \
         CAST(COALESCE(SUM({wait}), 0) AS BIGINT) AS wait_sum_ms"
    );
    for (i, b) in WAIT_BOUNDS.iter().enumerate() {
        let ms = (b * 1000.0) as i64;
        sql.push_str(&format!(
            ", CAST(SUM(CASE WHEN a.started_at IS NOT NULL AND {wait} <= {ms} THEN 1 ELSE 0 END) AS BIGINT) AS le{i}"
        ));
    }
    sql.push_str(" FROM attempts a GROUP BY a.queue, a.tenant_id ORDER BY a.queue, a.tenant_id");
    let rows = db
        .query_all(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.into_iter()
        .map(|r| {
            let le = (0..WAIT_BOUNDS.len())
                .map(|i| r.try_get::<i64>("", &format!("le{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Flow {
                queue: r.try_get("", "queue")?,
                tenant_id: r.try_get("", "tenant_id")?,
                arrivals: r.try_get("", "arrivals")?,
                starts: r.try_get("", "starts")?,
                completions: r.try_get("", "completions")?,
                wait_sum_ms: r.try_get("", "wait_sum_ms")?,
                le,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()
        .map_err(Into::into)
}

impl Service {
    /// The metrics text of the installation.
    pub async fn metrics_text(&self) -> Result<String, ServiceError> {
        let db = self.store().db();
        let rows = Row::find_by_statement(Statement::from_string(
            db.get_database_backend(),
            "SELECT queue, state, COUNT(*) AS n FROM attempts GROUP BY queue, state",
        ))
        .all(db)
        .await?;
        let mut depth: BTreeMap<&str, i64> = BTreeMap::new();
        for r in &rows {
            let d = depth.entry(r.queue.as_str()).or_insert(0);
            if r.state == "queued" {
                *d += r.n;
            }
        }
        let mut out = String::new();
        out.push_str("# HELP gantry_queue_depth Attempts queued and waiting for a worker.\n");
        out.push_str("# TYPE gantry_queue_depth gauge\n");
        for (queue, n) in &depth {
            let _ = writeln!(out, "gantry_queue_depth{{queue=\"{}\"}} {n}", label(queue));
        }
        out.push_str("# HELP gantry_attempts Attempts by queue and state.\n");
        out.push_str("# TYPE gantry_attempts gauge\n");
        for r in &rows {
            let _ = writeln!(
                out,
                "gantry_attempts{{queue=\"{}\",state=\"{}\"}} {}",
                label(&r.queue),
                label(&r.state),
                r.n
            );
        }
        let flows = flows(db, self.now_ms()).await?;
        for (name, help, value) in [
            (
                "gantry_arrivals_total",
                "Attempts that entered a queue.",
                (|f: &Flow| f.arrivals) as fn(&Flow) -> i64,
            ),
            (
                "gantry_starts_total",
                "Attempts that started.",
                |f: &Flow| f.starts,
            ),
            (
                "gantry_completions_total",
                "Attempts that ended, in any terminal state.",
                |f: &Flow| f.completions,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for f in &flows {
                let _ = writeln!(
                    out,
                    "{name}{{queue=\"{}\",tenant=\"{}\"}} {}",
                    label(&f.queue),
                    label(&f.tenant_id),
                    value(f)
                );
            }
        }
        out.push_str("# HELP gantry_queue_wait_seconds Time from entering a queue to starting.\n");
        out.push_str("# TYPE gantry_queue_wait_seconds histogram\n");
        for f in &flows {
            let labels = format!(
                "queue=\"{}\",tenant=\"{}\"",
                label(&f.queue),
                label(&f.tenant_id)
            );
            for (b, n) in WAIT_BOUNDS.iter().zip(&f.le) {
                let _ = writeln!(
                    out,
                    "gantry_queue_wait_seconds_bucket{{{labels},le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "gantry_queue_wait_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                f.starts
            );
            let _ = writeln!(
                out,
                "gantry_queue_wait_seconds_sum{{{labels}}} {}",
                f.wait_sum_ms as f64 / 1000.0
            );
            let _ = writeln!(
                out,
                "gantry_queue_wait_seconds_count{{{labels}}} {}",
                f.starts
            );
        }
        crate::metrics::global().render(&mut out);
        Ok(out)
    }
}
