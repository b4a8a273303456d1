//! `gantry simulate`: replays a trace of submissions against the fair-share decision of
//! the live claim (`domain::fairness::fair_order`) on a virtual clock with N simulated
//! workers, and prints queue waits per tenant and queue depth over time.
//!
//! It owns the trace format and the virtual scheduler loop, nothing else: which tenant a
//! free worker serves is decided by the same pure function as in `store::repo`, from the
//! same inputs (each tenant's running attempts and its starts within the fair window).
//! The output is a pure function of the trace and the options — no wall clock, no
//! randomness, ordered maps only — so the same trace prints the same bytes.
//!
//! What it leaves out: the latency of a real claim and completion (a worker freed at `t`
//! starts its next job at `t`), retries, DAG dependencies (a submission is a run of
//! independent jobs) and admission.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Deserialize;

use crate::domain::fairness::{Contender, FAIR_WINDOW_MS, fair_order};

/// Options of `gantry simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// The trace: CSV (`at_ms,tenant,jobs,duration_ms,weight,max_running`, with that
    /// header) or JSON (an array of objects with those fields); `.json` or a leading `[`
    /// selects JSON.
    #[arg(long)]
    pub trace: PathBuf,
    /// Simulated workers, all serving the one queue.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Interval of the queue-depth report, in virtual milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub tick_ms: i64,
}

/// Errors of reading a trace or of the options.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trace line {line}: {message}")]
    Csv { line: usize, message: String },
    #[error("trace: {0}")]
    Json(String),
    #[error("{0}")]
    Options(String),
}

/// Durations of a submission's jobs: one for all, or one per job (cycled).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum Durations {
    One(i64),
    Each(Vec<i64>),
}

/// One submission of the trace: a run of `jobs` independent jobs of `tenant`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// Offset from the start of the trace, in ms.
    pub at_ms: i64,
    pub tenant: String,
    pub jobs: u32,
    /// Job durations in ms; the list is cycled over the jobs.
    #[serde(rename = "duration_ms")]
    durations: Durations,
    /// The tenant's weight (default 1); the last submission that gives it wins.
    #[serde(default)]
    pub weight: Option<i32>,
    /// The tenant's quota of running jobs (default 10 000, as for a new tenant).
    #[serde(default)]
    pub max_running: Option<i32>,
}

impl Submission {
    fn duration(&self, job: u32) -> i64 {
        match &self.durations {
            Durations::One(d) => *d,
            Durations::Each(list) => list
                .get(job as usize % list.len().max(1))
                .copied()
                .unwrap_or(0),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.at_ms < 0 {
            return Err("at_ms must not be negative".into());
        }
        if self.tenant.is_empty() {
            return Err("tenant is empty".into());
        }
        let durations: &[i64] = match &self.durations {
            Durations::One(d) => std::slice::from_ref(d),
            Durations::Each(l) => l,
        };
        if durations.is_empty() || durations.iter().any(|d| *d < 0) {
            return Err("duration_ms needs one or more non-negative values".into());
        }
        if self.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
            return Err("weight must be between 1 and 1000".into());
        }
        if self.max_running.is_some_and(|m| m < 1) {
            return Err("max_running must be at least 1".into());
        }
        Ok(())
    }
}

const CSV_HEADER: [&str; 6] = [
    "at_ms",
    "tenant",
    "jobs",
    "duration_ms",
    "weight",
    "max_running",
];

fn parse_csv(text: &str) -> Result<Vec<Submission>, SimulateError> {
    let mut rows = Vec::new();
    let mut header_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        let err = |message: String| SimulateError::Csv { line, message };
        if !header_seen {
            if fields != CSV_HEADER {
                return Err(err(format!(
                    "the first line must be the header {}",
                    CSV_HEADER.join(",")
                )));
            }
            header_seen = true;
            continue;
        }
        if fields.len() != CSV_HEADER.len() {
            return Err(err(format!(
                "{} fields, expected {}",
                fields.len(),
                CSV_HEADER.len()
            )));
        }
        let int = |name: &str, v: &str| -> Result<i64, SimulateError> {
            v.parse::<i64>()
                .map_err(|_| err(format!("{name}: {v:?} is not a whole number")))
        };
        let optional = |name: &str, v: &str| -> Result<Option<i32>, SimulateError> {
            if v.is_empty() {
                return Ok(None);
            }
            v.parse::<i32>()
                .map(Some)
                .map_err(|_| err(format!("{name}: {v:?} is not a whole number")))
        };
        let durations = fields[3]
            .split(';')
            .map(|d| int("duration_ms", d.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let jobs = int("jobs", fields[2])?;
        let row = Submission {
            at_ms: int("at_ms", fields[0])?,
            tenant: fields[1].to_owned(),
            jobs: u32::try_from(jobs).map_err(|_| err("jobs must be 0 or more".into()))?,
            durations: Durations::Each(durations),
            weight: optional("weight", fields[4])?,
            max_running: optional("max_running", fields[5])?,
        };
        row.check().map_err(err)?;
        rows.push(row);
    }
    if !header_seen {
        return Err(SimulateError::Csv {
            line: 1,
            message: format!("empty trace; expected the header {}", CSV_HEADER.join(",")),
        });
    }
    Ok(rows)
}

fn parse_json(text: &str) -> Result<Vec<Submission>, SimulateError> {
    let rows: Vec<Submission> =
        serde_json::from_str(text).map_err(|e| SimulateError::Json(e.to_string()))?;
    for (i, r) in rows.iter().enumerate() {
        r.check()
            .map_err(|m| SimulateError::Json(format!("submission {}: {m}", i + 1)))?;
    }
    Ok(rows)
}

/// Reads a trace, CSV or JSON.
pub fn parse_trace(text: &str, json: bool) -> Result<Vec<Submission>, SimulateError> {
    if json || text.trim_start().starts_with('[') {
        parse_json(text)
    } else {
        parse_csv(text)
    }
}

/// One simulated job.
#[derive(Debug, Clone, Copy)]
struct Job {
    arrived: i64,
    duration: i64,
}

#[derive(Debug, Default)]
struct TenantSim {
    weight: i32,
    max_running: i32,
    queued: VecDeque<Job>,
    running: i64,
    /// `(start, end)` of jobs that run now or started within the fair window.
    recent: VecDeque<(i64, i64)>,
    jobs: usize,
    done: usize,
    waits: Vec<i64>,
    last_done: i64,
}

impl TenantSim {
    /// The live claim's share: attempts running now or started within the window.
    fn share(&mut self, now: i64) -> i64 {
        self.recent
            .retain(|&(start, end)| end > now || start >= now - FAIR_WINDOW_MS);
        self.recent.len() as i64
    }
}

/// What a simulation measured, printed by [`report`].
#[derive(Debug)]
pub struct Outcome {
    tenants: BTreeMap<String, TenantSim>,
    /// `(time, depth, running)` at every tick.
    depth: Vec<(i64, usize, usize)>,
    /// When each tenant finished its last job: the jobs every tenant had done then.
    finished: Vec<(i64, String, BTreeMap<String, usize>)>,
    end: i64,
    workers: usize,
    submissions: usize,
}

/// Runs `trace` on `workers` virtual workers, sampling depth every `tick_ms`.
pub fn simulate(
    trace: &[Submission],
    workers: usize,
    tick_ms: i64,
) -> Result<Outcome, SimulateError> {
    if workers == 0 {
        return Err(SimulateError::Options(
            "--workers must be at least 1".into(),
        ));
    }
    if tick_ms <= 0 {
        return Err(SimulateError::Options(
            "--tick-ms must be at least 1".into(),
        ));
    }
    let mut tenants: BTreeMap<String, TenantSim> = BTreeMap::new();
    for s in trace {
        let t = tenants
            .entry(s.tenant.clone())
            .or_insert_with(|| TenantSim {
                weight: 1,
                max_running: 10_000,
                ..TenantSim::default()
            });
        if let Some(w) = s.weight {
            t.weight = w;
        }
        if let Some(m) = s.max_running {
            t.max_running = m;
        }
        t.jobs += s.jobs as usize;
    }
    // Arrivals in time order; the trace's order breaks ties (a stable sort).
    let mut arrivals: Vec<&Submission> = trace.iter().collect();
    arrivals.sort_by_key(|s| s.at_ms);
    let mut next_arrival = 0;
    // Completions: (end, sequence, tenant), earliest first.
    let mut completions: BinaryHeap<std::cmp::Reverse<(i64, u64, String)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut free = workers;
    let mut now = arrivals.first().map_or(0, |s| s.at_ms);
    let mut next_tick = now;
    let mut out = Outcome {
        tenants: BTreeMap::new(),
        depth: Vec::new(),
        finished: Vec::new(),
        end: now,
        workers,
        submissions: trace.len(),
    };
    loop {
        while let Some(std::cmp::Reverse((end, _, _))) = completions.peek() {
            if *end > now {
                break;
            }
            let Some(std::cmp::Reverse((end, _, tenant))) = completions.pop() else {
                break;
            };
            free += 1;
            let finished = match tenants.get_mut(&tenant) {
                Some(t) => {
                    t.running -= 1;
                    t.done += 1;
                    t.last_done = end;
                    t.done == t.jobs
                }
                None => false,
            };
            if finished {
                let progress = tenants.iter().map(|(k, v)| (k.clone(), v.done)).collect();
                out.finished.push((end, tenant, progress));
            }
        }
        while let Some(s) = arrivals.get(next_arrival).filter(|s| s.at_ms <= now) {
            if let Some(t) = tenants.get_mut(&s.tenant) {
                for j in 0..s.jobs {
                    t.queued.push_back(Job {
                        arrived: s.at_ms,
                        duration: s.duration(j),
                    });
                }
            }
            next_arrival += 1;
        }
        while free > 0 {
            let contenders: Vec<Contender> = tenants
                .iter_mut()
                .filter(|(_, t)| !t.queued.is_empty())
                .map(|(id, t)| Contender {
                    tenant_id: id.clone(),
                    weight: t.weight,
                    max_running: t.max_running,
                    busy: t.running,
                    share: t.share(now),
                })
                .collect();
            let Some(chosen) = fair_order(contenders).into_iter().next() else {
                break;
            };
            let Some(t) = tenants.get_mut(&chosen.tenant_id) else {
                break;
            };
            let Some(job) = t.queued.pop_front() else {
                break;
            };
            free -= 1;
            t.running += 1;
            t.waits.push(now - job.arrived);
            t.recent.push_back((now, now + job.duration));
            seq += 1;
            completions.push(std::cmp::Reverse((
                now + job.duration,
                seq,
                chosen.tenant_id,
            )));
        }
        let next = [
            arrivals.get(next_arrival).map(|s| s.at_ms),
            completions.peek().map(|c| c.0.0),
        ]
        .into_iter()
        .flatten()
        .min();
        // The state holds until the next event: sample the ticks before it.
        let horizon = next.unwrap_or(now + 1);
        while next_tick < horizon {
            let depth = tenants.values().map(|t| t.queued.len()).sum();
            out.depth.push((next_tick, depth, workers - free));
            next_tick += tick_ms;
        }
        match next {
            Some(t) => now = t,
            None => break,
        }
    }
    out.end = now;
    out.tenants = tenants;
    Ok(out)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The printed report of an outcome.
pub fn report(o: &mut Outcome) -> String {
    let jobs: usize = o.tenants.values().map(|t| t.jobs).sum();
    let mut out = format!(
        "gantry simulate: {} submissions, {jobs} jobs, {} tenants, {} workers; the last job ended at {} ms\n",
        o.submissions,
        o.tenants.len(),
        o.workers,
        o.end
    );
    out.push_str("\ntenant\tweight\tmax_running\tjobs\twait_p50_ms\twait_p99_ms\tdone_at_ms\n");
    for (id, t) in o.tenants.iter_mut() {
        t.waits.sort_unstable();
        let _ = writeln!(
            out,
            "{id}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.weight,
            t.max_running,
            t.jobs,
            percentile(&t.waits, 0.5),
            percentile(&t.waits, 0.99),
            t.last_done
        );
    }
    out.push_str("\nwhen a tenant finished, jobs done by each tenant:\n");
    for (at, tenant, progress) in &o.finished {
        let others: Vec<String> = progress
            .iter()
            .map(|(k, done)| {
                let total = o.tenants.get(k).map_or(0, |t| t.jobs);
                format!("{k} {done}/{total}")
            })
            .collect();
        let _ = writeln!(out, "{at} ms\t{tenant} finished\t{}", others.join("\t"));
    }
    out.push_str("\nt_ms\tqueued\trunning\n");
    for (t, depth, running) in &o.depth {
        let _ = writeln!(out, "{t}\t{depth}\t{running}");
    }
    out
}

/// Reads the trace of `args`, simulates it and returns the report.
pub fn run(args: &SimulateArgs) -> Result<String, SimulateError> {
    let text = std::fs::read_to_string(&args.trace).map_err(|source| SimulateError::Io {
        path: args.trace.clone(),
        source,
    })?;
    let json = args.trace.extension().is_some_and(|e| e == "json");
    let trace = parse_trace(&text, json)?;
    let mut outcome = simulate(&trace, args.workers, args.tick_ms)?;
    Ok(report(&mut outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BURST: &str = "at_ms,tenant,jobs,duration_ms,weight,max_running\n\
                         0,a,200,20,1,\n\
                         0,b,1,20,1,\n0,b,1,20,,\n0,b,1,20,,\n0,b,1,20,,\n0,b,1,20,,\n\
                         0,b,1,20,,\n0,b,1,20,,\n0,b,1,20,,\n0,b,1,20,,\n0,b,1,20,,\n";

    #[test]
    fn a_small_tenant_finishes_before_a_burst_is_far_along() {
        let trace = parse_trace(BURST, false).unwrap();
        let o = simulate(&trace, 2, 100).unwrap();
        let (_, who, progress) = &o.finished[0];
        assert_eq!(who, "b");
        assert!(progress["a"] < 80, "{progress:?}");
    }

    #[test]
    fn same_trace_same_report() {
        let trace = parse_trace(BURST, false).unwrap();
        let a = report(&mut simulate(&trace, 3, 50).unwrap());
        let b = report(&mut simulate(&trace, 3, 50).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn weights_and_quota_shape_the_split() {
        let json = r#"[
            {"at_ms": 0, "tenant": "heavy", "jobs": 300, "duration_ms": 10, "weight": 3},
            {"at_ms": 0, "tenant": "light", "jobs": 300, "duration_ms": [10, 10], "weight": 1},
            {"at_ms": 0, "tenant": "capped", "jobs": 50, "duration_ms": 10, "max_running": 1}
        ]"#;
        let trace = parse_trace(json, true).unwrap();
        let o = simulate(&trace, 4, 1000).unwrap();
        assert_eq!(o.tenants["heavy"].done, 300);
        // Never more than one of the capped tenant's jobs at a time: 50 jobs take 500 ms.
        assert!(o.tenants["capped"].last_done >= 500);
    }

    #[test]
    fn bad_traces_name_the_line() {
        let e = parse_trace(
            "at_ms,tenant,jobs,duration_ms,weight,max_running\n0,a,x,1,,\n",
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "trace line 2: jobs: \"x\" is not a whole number"
        );
        assert!(parse_trace("a,b\n", false).is_err());
        assert!(
            parse_trace(
                r#"[{"at_ms": 0, "tenant": "a", "jobs": 1, "duration_ms": -1}]"#,
                true
            )
            .is_err()
        );
    }
}
