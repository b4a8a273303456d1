//! Figures for `GET /metrics` in the Prometheus text format: queue depth per queue and
//! attempts by queue and state, read from the store (every replica reports the same
//! installation-wide numbers), followed by this node's own counters and histograms
//! (`crate::metrics`), some of which are counted here from committed events.

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
        crate::metrics::global().render(&mut out);
        Ok(out)
    }
}
