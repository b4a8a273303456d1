//! `gantry bench`: standard workloads against an in-process server, with figures printed.
//!
//! - W1 fan-out: independent jobs whose step is `true` — throughput in tasks/s.
//! - W2 chain: sequential jobs — hop latency from one task's success to the next one's
//!   start (mean, p50, p99), measured on the event bus with a monotonic clock.
//! - W3 diamond: layers of jobs, each needing every job of the layer before.
//!
//! - burst: concurrent clients submit single-job runs over HTTP GraphQL (`triggerRun`)
//!   as fast as they can — accepted submissions/s, time to drain, queue wait p99 per
//!   tenant, and runs lost (accepted but not succeeded; must be 0). Over HTTP rather
//!   than in-process calls so that the figure includes what a real client pays: the
//!   request, the JSON, authentication and admission.
//!
//! Every step is a real process. Peak RSS is the process's high-water mark.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::app::{Node, NodeConfig};
use crate::domain::{Entity, RunState};
use crate::executor::Sandbox;
use crate::service::{Caller, PipelineInput, TriggerInput};
use crate::store::Durability;

/// Options of `gantry bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// In-process workers.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// PostgreSQL URL; without it the embedded SQLite database is used.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL: with `--replicas` above 1, the nodes share their events and wake-ups
    /// through it, as replicas of one installation do.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Server nodes on the one database, each with `--workers` workers (PostgreSQL only
    /// beyond 1). The workloads are triggered on the first node.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Workloads to run.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3")]
    pub workloads: Vec<String>,
    /// Jobs of W1.
    #[arg(long, default_value_t = 1000)]
    pub w1_jobs: usize,
    /// Length of the W2 chain.
    #[arg(long, default_value_t = 100)]
    pub w2_length: usize,
    /// Layers and width of W3.
    #[arg(long, default_value_t = 10)]
    pub w3_layers: usize,
    #[arg(long, default_value_t = 50)]
    pub w3_width: usize,
    /// Runs the burst workload submits (one job each).
    #[arg(long, default_value_t = 5000)]
    pub burst_runs: usize,
    /// Concurrent clients of the burst workload.
    #[arg(long, default_value_t = 10)]
    pub burst_clients: usize,
    /// Tenants the burst clients submit for (client i for tenant i mod n).
    #[arg(long, default_value_t = 2)]
    pub burst_tenants: usize,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("start: {0}")]
    Start(#[from] crate::app::StartError),
    #[error("{0}")]
    Service(#[from] crate::service::ServiceError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("run {0} ended {1}")]
    RunFailed(String, String),
    #[error("{0}")]
    Usage(&'static str),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
}

fn fan_out(n: usize) -> String {
    let mut y = String::from("jobs:\n");
    for i in 0..n {
        let _ = writeln!(y, "  j{i}: {{ cache: false, steps: [{{run: \"true\"}}] }}");
    }
    y
}

fn chain(n: usize) -> String {
    let mut y = String::from("jobs:\n");
    for i in 0..n {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("needs: j{}, ", i - 1)
        };
        let _ = writeln!(
            y,
            "  j{i}: {{ {needs}cache: false, steps: [{{run: \"true\"}}] }}"
        );
    }
    y
}

fn diamond(layers: usize, width: usize) -> String {
    let mut y = String::from("jobs:\n");
    for l in 0..layers {
        for w in 0..width {
            let needs = if l == 0 {
                String::new()
            } else {
                let list: Vec<String> = (0..width).map(|p| format!("l{}w{p}", l - 1)).collect();
                format!("needs: [{}], ", list.join(", "))
            };
            let _ = writeln!(
                y,
                "  l{l}w{w}: {{ {needs}cache: false, steps: [{{run: \"true\"}}] }}"
            );
        }
    }
    y
}

fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What one workload measured.
struct Measured {
    tasks: usize,
    elapsed: Duration,
    hops_ms: Vec<f64>,
}

async fn run_workload(
    node: &Node,
    caller: &Caller,
    name: &str,
    file: String,
) -> Result<Measured, BenchError> {
    let service = &node.service;
    let pipeline = service
        .create_pipeline(
            caller,
            PipelineInput {
                tenant: None,
                name: format!("bench-{name}-{}", uuid::Uuid::now_v7().simple()),
                provider: "git".into(),
                repository: ".".into(),
                file,
                webhook_secret: None,
            },
        )
        .await?;
    let mut events = service.bus().subscribe();
    let start = Instant::now();
    let run = service
        .trigger_run(
            caller,
            TriggerInput {
                pipeline: pipeline.id.clone(),
                sha: "bench".into(),
                git_ref: "refs/heads/bench".into(),
                ..TriggerInput::default()
            },
        )
        .await?;
    let tasks = run.tasks_total as usize;
    // For W2: when each task succeeded, and when each task's attempt started.
    let mut succeeded: HashMap<String, Instant> = HashMap::new();
    let mut started: HashMap<String, Instant> = HashMap::new();
    let end_state = loop {
        match events.recv().await {
            Ok(e) if e.run_id == run.id => {
                let now = Instant::now();
                match e.entity {
                    Entity::Task if e.to == "succeeded" => {
                        succeeded.insert(e.entity_id.clone(), now);
                    }
                    Entity::Attempt if e.to == "running" => {
                        if let Some(t) = &e.task_id {
                            started.entry(t.clone()).or_insert(now);
                        }
                    }
                    Entity::Run if e.to.parse::<RunState>().is_ok_and(|s| s.is_terminal()) => {
                        break e.to.clone();
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("bench: event listener lagged by {n} events; hop figures incomplete");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break "closed".into(),
        }
    };
    let elapsed = start.elapsed();
    if end_state != "succeeded" {
        return Err(BenchError::RunFailed(run.id, end_state));
    }
    let mut hops_ms = Vec::new();
    let ordered = service.tasks_of_run(&run).await?;
    for pair in ordered.windows(2) {
        let needs: Vec<String> = serde_json::from_str(&pair[1].needs).unwrap_or_default();
        if needs.len() == 1
            && needs[0] == pair[0].name
            && let (Some(done), Some(next)) = (succeeded.get(&pair[0].id), started.get(&pair[1].id))
        {
            hops_ms.push(next.saturating_duration_since(*done).as_secs_f64() * 1000.0);
        }
    }
    Ok(Measured {
        tasks,
        elapsed,
        hops_ms,
    })
}

/// What the burst workload measured.
struct Burst {
    accepted: usize,
    refused: usize,
    submit: Duration,
    drain: Duration,
    succeeded: u64,
    /// Queue wait p50 and p99 per tenant name, in ms.
    waits: Vec<(String, i64, i64)>,
}

const TRIGGER: &str = "mutation($p: ID!, $s: String!) { triggerRun(input: {pipeline: $p, sha: $s, ref: \"refs/heads/bench\"}) { id } }";

async fn burst(node: &Node, token: &str, args: &BenchArgs) -> Result<Burst, BenchError> {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect};

    use crate::store::entity::{attempt, run};

    let service = &node.service;
    let admin = Caller::system(
        service
            .ensure_default_tenant()
            .await?
            .id
            .parse()
            .map_err(crate::service::ServiceError::from)?,
    );
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut tenants = Vec::new();
    let mut pipelines = Vec::new();
    for i in 0..args.burst_tenants.max(1) {
        let t = service
            .create_tenant(
                &admin,
                crate::service::TenantInput {
                    name: format!("burst-{i}-{}", &tag[..8]),
                    weight: None,
                    max_running: None,
                    // Admission is not what this measures: a bucket the burst cannot empty.
                    trigger_rate: Some(1e6),
                    trigger_burst: Some(i32::MAX),
                },
            )
            .await?;
        let p = service
            .create_pipeline(
                &admin,
                PipelineInput {
                    tenant: Some(t.id.clone()),
                    name: format!("burst-{i}"),
                    provider: "git".into(),
                    repository: ".".into(),
                    file: "jobs:\n  j: { cache: false, steps: [{run: \"true\"}] }\n".into(),
                    webhook_secret: None,
                },
            )
            .await?;
        tenants.push(t);
        pipelines.push(p.id);
    }
    let url = format!("http://{}/graphql", node.addr);
    let http = reqwest::Client::new();
    let clients = args.burst_clients.max(1);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let n = args.burst_runs / clients + usize::from(c < args.burst_runs % clients);
        let (http, url, token) = (http.clone(), url.clone(), token.to_owned());
        let pipeline = pipelines[c % pipelines.len()].clone();
        set.spawn(async move {
            let (mut ok, mut refused) = (0usize, 0usize);
            for i in 0..n {
                let body = serde_json::json!({
                    "query": TRIGGER,
                    "variables": { "p": pipeline, "s": format!("c{c}-{i}") },
                });
                let res: serde_json::Value = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?
                    .json()
                    .await?;
                if res["data"]["triggerRun"]["id"].is_string() {
                    ok += 1;
                } else {
                    refused += 1;
                }
            }
            Ok::<_, reqwest::Error>((ok, refused))
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(done) = set.join_next().await {
        let (ok, no) = done.map_err(|e| std::io::Error::other(e.to_string()))??;
        accepted += ok;
        refused += no;
    }
    let submit = start.elapsed();
    let ids: Vec<String> = tenants.iter().map(|t| t.id.clone()).collect();
    let db = service.store().db();
    let terminal = ["succeeded", "failed", "cancelled"];
    loop {
        let open = run::Entity::find()
            .filter(run::Column::TenantId.is_in(ids.clone()))
            .filter(run::Column::State.is_not_in(terminal))
            .count(db)
            .await?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = start.elapsed();
    let succeeded = run::Entity::find()
        .filter(run::Column::TenantId.is_in(ids.clone()))
        .filter(run::Column::State.eq("succeeded"))
        .count(db)
        .await?;
    let mut waits = Vec::new();
    for t in &tenants {
        let rows: Vec<(i64, i64, Option<i64>)> = attempt::Entity::find()
            .select_only()
            .column(attempt::Column::CreatedAt)
            .column(attempt::Column::ScheduledAt)
            .column(attempt::Column::StartedAt)
            .filter(attempt::Column::TenantId.eq(t.id.clone()))
            .into_tuple()
            .all(db)
            .await?;
        let mut w: Vec<f64> = rows
            .into_iter()
            .filter_map(|(c, s, started)| started.map(|st| (st - c.max(s)) as f64))
            .collect();
        w.sort_by(f64::total_cmp);
        waits.push((
            t.name.clone(),
            percentile(&w, 0.5) as i64,
            percentile(&w, 0.99) as i64,
        ));
    }
    Ok(Burst {
        accepted,
        refused,
        submit,
        drain,
        succeeded,
        waits,
    })
}

/// Runs the selected workloads and prints their figures.
pub async fn run(args: BenchArgs) -> Result<String, BenchError> {
    if args.replicas == 0 {
        return Err(BenchError::Usage("--replicas must be at least 1"));
    }
    if args.replicas > 1 && args.database_url.is_none() {
        return Err(BenchError::Usage(
            "--replicas above 1 needs a shared database: give --database-url (PostgreSQL)",
        ));
    }
    let data = std::env::temp_dir().join(format!("gantry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    // One prefix per bench run: nodes of this run share a bus, nothing else does.
    let prefix = format!("gantry-bench-{}", uuid::Uuid::now_v7().simple());
    let admin_token = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let mut nodes = Vec::with_capacity(args.replicas);
    for n in 0..args.replicas {
        let config = NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data.join(n.to_string()),
            database_url: args.database_url.clone(),
            durability: Durability::Normal,
            workers: args.workers,
            queues: vec!["default".into()],
            web_dir: PathBuf::new(),
            node: format!("bench-{n}"),
            admin_token: Some(admin_token.clone()),
            sandbox: Sandbox::None,
            kill_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            reconciler: crate::reconciler::ReconcilerConfig::default(),
            secret_key: None,
            artifact_store: None,
            redis: args
                .redis_url
                .clone()
                .map(|url| crate::events::redis::RedisConfig {
                    url,
                    prefix: prefix.clone(),
                }),
            max_pending_attempts: crate::service::DEFAULT_MAX_PENDING_ATTEMPTS,
        };
        nodes.push(Node::start(config).await?);
    }
    let node = &nodes[0];
    let tenant = node.service.ensure_default_tenant().await?;
    let caller = Caller::system(
        tenant
            .id
            .parse()
            .map_err(crate::service::ServiceError::from)?,
    );
    let backend = if args.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let bus = if args.redis_url.is_some() && args.replicas > 1 {
        ", events through Redis"
    } else {
        ""
    };
    let mut out = format!(
        "gantry bench — backend {backend}, {} node(s) × {} in-process workers{bus}\n",
        args.replicas, args.workers
    );
    for w in &args.workloads {
        if w == "burst" {
            let b = burst(node, &admin_token, &args).await?;
            let secs = |d: Duration| d.as_secs_f64();
            let lost = b.accepted as u64 - b.succeeded.min(b.accepted as u64);
            let _ = writeln!(
                out,
                "burst: {} clients submitted {} single-job runs over HTTP GraphQL: {} accepted, {} refused in {:.3} s = {:.0} accepted submissions/s; drained in {:.3} s = {:.0} tasks/s; lost {lost}",
                args.burst_clients,
                args.burst_runs,
                b.accepted,
                b.refused,
                secs(b.submit),
                b.accepted as f64 / secs(b.submit),
                secs(b.drain),
                b.succeeded as f64 / secs(b.drain),
            );
            for (tenant, p50, p99) in &b.waits {
                let _ = writeln!(out, "  queue wait of {tenant}: p50 {p50} ms, p99 {p99} ms");
            }
            continue;
        }
        let (label, file) = match w.as_str() {
            "w1" => (
                format!("W1 fan-out {} jobs", args.w1_jobs),
                fan_out(args.w1_jobs),
            ),
            "w2" => (
                format!("W2 chain {} jobs", args.w2_length),
                chain(args.w2_length),
            ),
            "w3" => (
                format!("W3 diamond {}x{}", args.w3_layers, args.w3_width),
                diamond(args.w3_layers, args.w3_width),
            ),
            other => {
                let _ = writeln!(out, "unknown workload {other}");
                continue;
            }
        };
        let m = run_workload(node, &caller, w, file).await?;
        let rate = m.tasks as f64 / m.elapsed.as_secs_f64();
        let _ = write!(
            out,
            "{label}: {} tasks in {:.3} s = {rate:.0} tasks/s",
            m.tasks,
            m.elapsed.as_secs_f64()
        );
        if !m.hops_ms.is_empty() {
            let mut h = m.hops_ms.clone();
            h.sort_by(|a, b| a.total_cmp(b));
            let mean = h.iter().sum::<f64>() / h.len() as f64;
            let _ = write!(
                out,
                "; hop latency mean {mean:.2} ms, p50 {:.2} ms, p99 {:.2} ms ({} hops)",
                percentile(&h, 0.5),
                percentile(&h, 0.99),
                h.len()
            );
        }
        out.push('\n');
    }
    if let Some(kb) = peak_rss_kb() {
        let _ = writeln!(out, "peak RSS: {:.1} MB", kb as f64 / 1024.0);
    }
    for node in nodes {
        node.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(out)
}
