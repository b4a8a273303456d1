//! `gantry bench`: standard workloads against an in-process server, with figures printed.
//!
//! - W1 fan-out: independent jobs whose step is `true` — throughput in tasks/s.
//! - W2 chain: sequential jobs — hop latency from one task's success to the next one's
//!   start (mean, p50, p99), measured on the event bus with a monotonic clock.
//! - W3 diamond: layers of jobs, each needing every job of the layer before.
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
