//! The load picture of a queue: per tenant and for the whole queue, time buckets of
//! arrivals, starts, completions, queue depth and queue-wait percentiles.
//!
//! The buckets are derived from the attempts table, which already records when each
//! attempt entered its queue (`max(created_at, scheduled_at)`), started and finished. So
//! there is no second record to keep consistent: every replica computes the same series
//! from the database, whichever node made the decisions, and a restart loses nothing. A
//! bucket is one second wide for the last 24 hours and one minute wide before that; the
//! cost of a query grows with the attempts that overlap its window, so callers ask for
//! the window they draw. This module does not decide anything; it only counts.

use std::collections::{BTreeMap, HashMap};

use sea_orm::{ConnectionTrait, FromQueryResult, Statement};

use super::auth::Scope;
use super::{Caller, Service, ServiceError};

/// Width of the buckets of the last [`FINE_FOR_MS`].
pub const FINE_MS: i64 = 1_000;
/// Width of the buckets older than [`FINE_FOR_MS`].
pub const COARSE_MS: i64 = 60_000;
/// How far back buckets are one second wide.
pub const FINE_FOR_MS: i64 = 24 * 3_600_000;

/// One bucket of load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadBucket {
    /// Start of the bucket, ms since the epoch.
    pub at_ms: i64,
    /// Width of the bucket in ms: [`FINE_MS`] or [`COARSE_MS`].
    pub width_ms: i64,
    /// Attempts that entered the queue in the bucket.
    pub arrivals: u64,
    /// Attempts that started (were leased) in the bucket.
    pub starts: u64,
    /// Attempts that ended in the bucket (any terminal state).
    pub completions: u64,
    /// Attempts waiting in the queue at the end of the bucket.
    pub depth: u64,
    /// Queue waits (entered the queue → started) of the starts in the bucket, in ms:
    /// median and 99th percentile (nearest rank); `None` without starts.
    pub wait_p50_ms: Option<i64>,
    pub wait_p99_ms: Option<i64>,
}

/// The series of one tenant in a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLoad {
    pub tenant_id: String,
    pub tenant_name: String,
    pub buckets: Vec<LoadBucket>,
}

/// The load of a queue over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueLoad {
    pub queue: String,
    /// The whole queue (what the caller may see of it).
    pub buckets: Vec<LoadBucket>,
    /// One series per tenant with attempts in the window, by tenant id.
    pub tenants: Vec<TenantLoad>,
}

/// The times of one attempt, as the load picture reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Entered the queue.
    pub arrived: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

impl Sample {
    /// When the attempt left the queue: it started, or it ended without starting
    /// (cancelled while queued).
    fn left(&self) -> Option<i64> {
        self.started.or(self.finished)
    }
}

/// The bucket starts covering `[since, until)` given `now`: minute buckets for what is
/// older than [`FINE_FOR_MS`], second buckets after.
pub fn bucket_starts(since: i64, until: i64, now: i64) -> Vec<(i64, i64)> {
    let fine_from = (now - FINE_FOR_MS).div_euclid(COARSE_MS) * COARSE_MS;
    let mut out = Vec::new();
    let mut at = if since < fine_from {
        since.div_euclid(COARSE_MS) * COARSE_MS
    } else {
        since.div_euclid(FINE_MS) * FINE_MS
    };
    while at < until {
        let width = if at < fine_from { COARSE_MS } else { FINE_MS };
        out.push((at, width));
        at += width;
    }
    out
}

fn nearest_rank(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Counts `samples` into the buckets `starts` (pure; the whole picture is this function).
pub fn bucketize(starts: &[(i64, i64)], samples: &[Sample]) -> Vec<LoadBucket> {
    let Some(&(first, _)) = starts.first() else {
        return Vec::new();
    };
    let end = starts.last().map_or(first, |(at, w)| at + w);
    // The bucket holding `t`, if `t` is inside the window.
    let index = |t: i64| -> Option<usize> {
        if t < first || t >= end {
            return None;
        }
        Some(starts.partition_point(|(at, _)| *at <= t) - 1)
    };
    let n = starts.len();
    let mut buckets: Vec<LoadBucket> = starts
        .iter()
        .map(|&(at_ms, width_ms)| LoadBucket {
            at_ms,
            width_ms,
            ..LoadBucket::default()
        })
        .collect();
    let mut waits: Vec<Vec<i64>> = vec![Vec::new(); n];
    // Depth by difference: +1 in the bucket it arrived in, -1 in the bucket it left in
    // (before the window counts as the first bucket, after it as never).
    let mut delta = vec![0i64; n + 1];
    let slot = |t: i64| -> usize { if t < first { 0 } else { index(t).unwrap_or(n) } };
    for s in samples {
        if s.arrived >= end {
            continue;
        }
        if let Some(i) = index(s.arrived) {
            buckets[i].arrivals += 1;
        }
        if let Some(i) = s.started.and_then(index) {
            buckets[i].starts += 1;
            waits[i].push(s.started.unwrap_or(s.arrived) - s.arrived);
        }
        if let Some(i) = s.finished.and_then(index) {
            buckets[i].completions += 1;
        }
        delta[slot(s.arrived)] += 1;
        if let Some(left) = s.left() {
            delta[slot(left.max(s.arrived))] -= 1;
        }
    }
    let mut depth = 0i64;
    for (i, b) in buckets.iter_mut().enumerate() {
        depth += delta[i];
        b.depth = depth.max(0) as u64;
        let w = &mut waits[i];
        w.sort_unstable();
        b.wait_p50_ms = nearest_rank(w, 0.5);
        b.wait_p99_ms = nearest_rank(w, 0.99);
    }
    buckets
}

#[derive(Debug, FromQueryResult)]
struct Row {
    tenant_id: String,
    tenant_name: String,
    arrived: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

/// When an attempt entered its queue: created queued, or promoted at `scheduled_at`.
pub(crate) const ARRIVED: &str =
    "(CASE WHEN a.created_at > a.scheduled_at THEN a.created_at ELSE a.scheduled_at END)";

impl Service {
    /// The load of `queue` over `[since, until)` (times in ms), per tenant and in total,
    /// restricted to the caller's tenant unless it is an admin.
    pub async fn queue_load(
        &self,
        caller: &Caller,
        queue: &str,
        since: i64,
        until: i64,
    ) -> Result<QueueLoad, ServiceError> {
        caller.require(Scope::Read)?;
        if until <= since {
            return Err(ServiceError::BadInput(
                "the window of queueStats must end after it starts".into(),
            ));
        }
        let starts = bucket_starts(since, until, self.now_ms());
        let (from, to) = match (starts.first(), starts.last()) {
            (Some(f), Some(l)) => (f.0, l.0 + l.1),
            _ => (since, until),
        };
        let db = self.store().db();
        let backend = db.get_database_backend();
        let own = (!caller.scopes.has(Scope::Admin)).then(|| caller.tenant_id.to_string());
        // Attempts that overlap the window: entered the queue before its end and had not
        // ended before its start.
        let mut sql = format!(
            "SELECT a.tenant_id AS tenant_id, t.name AS tenant_name, {ARRIVED} AS arrived, \
             a.started_at AS started_at, a.finished_at AS finished_at \
             FROM attempts a JOIN tenants t ON t.id = a.tenant_id \
             WHERE a.queue = $1 AND a.created_at < $2 \
             AND (a.finished_at IS NULL OR a.finished_at >= $3)"
        );
        let mut values: Vec<sea_orm::Value> = vec![queue.into(), to.into(), from.into()];
        if let Some(t) = own {
            sql.push_str(" AND a.tenant_id = $4");
            values.push(t.into());
        }
        if backend != sea_orm::DbBackend::Postgres {
            sql = sql.replace("$1", "?").replace("$2", "?").replace("$3", "?");
            sql = sql.replace("$4", "?");
        }
        let rows = Row::find_by_statement(Statement::from_sql_and_values(backend, sql, values))
            .all(db)
            .await?;
        let mut names: HashMap<String, String> = HashMap::new();
        let mut by_tenant: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        let mut all = Vec::with_capacity(rows.len());
        for r in rows {
            let s = Sample {
                arrived: r.arrived,
                started: r.started_at,
                finished: r.finished_at,
            };
            all.push(s);
            by_tenant.entry(r.tenant_id.clone()).or_default().push(s);
            names.entry(r.tenant_id).or_insert(r.tenant_name);
        }
        Ok(QueueLoad {
            queue: queue.to_owned(),
            buckets: bucketize(&starts, &all),
            tenants: by_tenant
                .into_iter()
                .map(|(id, samples)| TenantLoad {
                    tenant_name: names.remove(&id).unwrap_or_default(),
                    buckets: bucketize(&starts, &samples),
                    tenant_id: id,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(arrived: i64, started: Option<i64>, finished: Option<i64>) -> Sample {
        Sample {
            arrived,
            started,
            finished,
        }
    }

    #[test]
    fn buckets_are_seconds_for_a_day_then_minutes() {
        let now = 10 * FINE_FOR_MS;
        let recent = bucket_starts(now - 3_500, now, now);
        assert_eq!(recent.first(), Some(&(now - 4_000, FINE_MS)));
        assert_eq!(recent.len(), 4);
        let old = bucket_starts(now - FINE_FOR_MS - 120_000, now - FINE_FOR_MS + 2_000, now);
        assert_eq!(old[0], (now - FINE_FOR_MS - 120_000, COARSE_MS));
        assert_eq!(old[1].1, COARSE_MS);
        assert_eq!(old[2], (now - FINE_FOR_MS, FINE_MS));
        assert_eq!(old.len(), 4);
    }

    #[test]
    fn counts_arrivals_starts_completions_depth_and_waits() {
        let starts = bucket_starts(0, 3_000, 3_000);
        let samples = [
            // Waited 100 ms, ran in second 0.
            sample(0, Some(100), Some(200)),
            // Arrived in second 0, started in second 1 after 1.5 s, still running.
            sample(500, Some(2_000), None),
            // Still queued at the end.
            sample(1_500, None, None),
            // Queued before the window, cancelled in second 2 without starting.
            sample(-5_000, None, Some(2_500)),
            // Entirely before the window: counted nowhere.
            sample(-9_000, Some(-8_000), Some(-7_000)),
        ];
        let b = bucketize(&starts, &samples);
        let col = |f: fn(&LoadBucket) -> u64| b.iter().map(f).collect::<Vec<_>>();
        assert_eq!(col(|b| b.arrivals), [2, 1, 0]);
        assert_eq!(col(|b| b.starts), [1, 0, 1]);
        assert_eq!(col(|b| b.completions), [1, 0, 1]);
        // End of second 0: the 500 one and the early one; second 1: + the 1500 one;
        // second 2: the 500 one started, the early one was cancelled.
        assert_eq!(col(|b| b.depth), [2, 3, 1]);
        assert_eq!(b[0].wait_p50_ms, Some(100));
        assert_eq!(b[2].wait_p99_ms, Some(1_500));
        assert_eq!(b[1].wait_p50_ms, None);
    }
}
