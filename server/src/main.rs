//! The `gantry` command: `serve`, `agent`, `migrate`, `validate`, `schema`, `trigger`,
//! `bench`, `simulate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gantry::app::{Node, NodeConfig};
use gantry::executor::Sandbox;
use gantry::reconciler::ReconcilerConfig;
use gantry::service::SecretKey;
use gantry::store::Durability;

/// Gantry: a CI/CD orchestrator.
#[derive(Parser)]
#[command(name = "gantry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log output: `text` for people, `json` (one object per line) for log collectors.
    #[arg(
        long,
        global = true,
        env = "GANTRY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// The format of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Command {
    /// Runs a server node: API, dashboard, scheduler and in-process workers.
    Serve(ServeArgs),
    /// Runs a remote worker that leases attempts from a server.
    Agent(gantry::agent::AgentArgs),
    /// Applies database migrations and exits.
    Migrate(DbArgs),
    /// Validates a pipeline file and prints its DAG, or its errors (exit code 1).
    Validate {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Prints the GraphQL schema (SDL).
    Schema,
    /// Runs the standard workloads against an in-process server and prints figures.
    Bench(gantry::bench::BenchArgs),
    /// Replays a trace of submissions against the fair-share scheduler on a virtual
    /// clock and prints waits per tenant and queue depth over time.
    Simulate(gantry::simulate::SimulateArgs),
}

#[derive(clap::Args, Clone)]
struct DbArgs {
    /// Directory of the embedded SQLite database, workspaces and artifacts.
    #[arg(long, env = "GANTRY_DATA_DIR", default_value = "./gantry-data")]
    data_dir: PathBuf,
    /// PostgreSQL URL for scale-out; without it the embedded SQLite database is used.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// SQLite durability: `normal` survives process crashes, `full` power loss too.
    #[arg(long, env = "GANTRY_DURABILITY", value_enum, default_value = "normal")]
    durability: Durability,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DbArgs,
    /// In-process workers (default: number of cores; 0 for agents only).
    #[arg(long, env = "GANTRY_WORKERS")]
    workers: Option<usize>,
    /// Queues the in-process workers serve.
    #[arg(
        long = "queue",
        env = "GANTRY_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    queues: Vec<String>,
    /// Directory of the built dashboard.
    #[arg(long, env = "GANTRY_WEB_DIR", default_value = "web/dist")]
    web_dir: PathBuf,
    /// Name of this node in events and worker names (default: host name and pid).
    #[arg(long, env = "GANTRY_NODE")]
    node: Option<String>,
    /// Bootstrap admin token; without it one is generated at the first start and printed.
    #[arg(long, env = "GANTRY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Sandbox for steps of in-process workers: `none` or `bwrap`.
    #[arg(long, env = "GANTRY_SANDBOX", value_enum, default_value = "none")]
    sandbox: SandboxArg,
    /// Seconds between SIGTERM and SIGKILL when a step is stopped.
    #[arg(long, env = "GANTRY_KILL_GRACE_SECS", default_value_t = 10)]
    kill_grace_secs: u64,
    /// On SIGTERM, seconds running attempts may take to finish before they are handed back.
    #[arg(long, env = "GANTRY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Seconds without a heartbeat after which a worker (and its attempts) is lost.
    #[arg(long, env = "GANTRY_LOST_AFTER_SECS", default_value_t = 10)]
    lost_after_secs: u64,
    /// Key that encrypts secrets at rest: base64 of 32 random bytes
    /// (`head -c32 /dev/urandom | base64`). Without a key, secrets cannot be set.
    #[arg(long, env = "GANTRY_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// File holding the secret key (base64), instead of `--secret-key`.
    #[arg(long, env = "GANTRY_SECRET_KEY_FILE", conflicts_with = "secret_key")]
    secret_key_file: Option<PathBuf>,
    /// Artifact store: `s3://bucket[/prefix]` (endpoint and credentials from the `AWS_*`
    /// environment variables); without it, `<data-dir>/artifacts` on the filesystem.
    #[arg(long, env = "GANTRY_ARTIFACT_STORE")]
    artifact_store: Option<String>,
    /// Redis URL: carries events, log output, cancel signals and queue wake-ups between
    /// the server replicas that share one PostgreSQL database.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of this installation's Redis channels and keys.
    #[arg(long, env = "GANTRY_REDIS_PREFIX", default_value = "gantry")]
    redis_prefix: String,
    /// Most attempts waiting for a worker (queued or scheduled) before new triggers are
    /// refused with OVERLOADED; 0 for no bound.
    #[arg(long, env = "GANTRY_MAX_PENDING_ATTEMPTS", default_value_t = gantry::service::DEFAULT_MAX_PENDING_ATTEMPTS)]
    max_pending_attempts: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SandboxArg {
    None,
    Bwrap,
}

fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sea_orm=warn,sqlx=warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().with_current_span(false).init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let _ = LOG_FORMAT.set(cli.log_format);
    match cli.command {
        Command::Schema => {
            print!("{}", gantry::graphql::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file } => validate(&file),
        Command::Migrate(db) => {
            init_tracing();
            let config = node_config_for_db(&db);
            gantry::app::open_store(&config).await.context("migrate")?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            print!("{}", gantry::bench::run(args).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            print!("{}", gantry::simulate::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            init_tracing();
            gantry::agent::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            init_tracing();
            serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn node_config_for_db(db: &DbArgs) -> NodeConfig {
    NodeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: db.data_dir.clone(),
        database_url: db.database_url.clone(),
        durability: db.durability,
        workers: 0,
        queues: Vec::new(),
        web_dir: PathBuf::new(),
        node: node_name(),
        admin_token: None,
        sandbox: Sandbox::None,
        kill_grace: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(30),
        reconciler: ReconcilerConfig::default(),
        secret_key: None,
        artifact_store: None,
        redis: None,
        max_pending_attempts: gantry::service::DEFAULT_MAX_PENDING_ATTEMPTS,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let secret_key = match (&args.secret_key, &args.secret_key_file) {
        (Some(text), _) => Some(SecretKey::from_base64(text).map_err(anyhow::Error::msg)?),
        (None, Some(path)) => Some(SecretKey::from_file(path).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    let config = NodeConfig {
        listen: args.listen,
        data_dir: args.db.data_dir,
        database_url: args.db.database_url,
        durability: args.db.durability,
        workers: args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        queues: args.queues,
        web_dir: args.web_dir,
        node: args.node.unwrap_or_else(node_name),
        admin_token: args.admin_token,
        sandbox: match args.sandbox {
            SandboxArg::None => Sandbox::None,
            SandboxArg::Bwrap => Sandbox::Bwrap,
        },
        kill_grace: Duration::from_secs(args.kill_grace_secs),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        reconciler: ReconcilerConfig {
            lost_after: Duration::from_secs(args.lost_after_secs),
            ..ReconcilerConfig::default()
        },
        secret_key,
        artifact_store: args.artifact_store,
        redis: args
            .redis_url
            .map(|url| gantry::events::redis::RedisConfig {
                url,
                prefix: args.redis_prefix,
            }),
        max_pending_attempts: args.max_pending_attempts,
    };
    config.reconciler.validate().map_err(anyhow::Error::msg)?;
    let node = Node::start(config).await.context("start")?;
    tracing::info!(addr = %node.addr, node = %node.service.node(), "gantry serving");
    if let Some(token) = &node.generated_token {
        // Printed once, like a notebook server's login URL: it is not stored in clear.
        println!("Admin token (shown once): {token}");
        println!("Dashboard: http://{}/#token={token}", node.addr);
    }
    println!("Listening on http://{}", node.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn validate(path: &PathBuf) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    match gantry::pipeline::parse(&text) {
        Err(errors) => {
            for e in errors {
                eprintln!("{}:{e}", path.display());
            }
            Ok(ExitCode::from(1))
        }
        Ok(file) => {
            let ctx = gantry::pipeline::PlanContext {
                repository: ".".into(),
                sha: "HEAD".into(),
                r#ref: "refs/heads/main".into(),
                run_number: 1,
            };
            let tasks = match gantry::pipeline::plan(&file, &ctx) {
                Ok(t) => t,
                Err(errors) => {
                    for e in errors {
                        eprintln!("{}:{e}", path.display());
                    }
                    return Ok(ExitCode::from(1));
                }
            };
            println!(
                "pipeline {}: {} tasks",
                file.name.as_deref().unwrap_or("(unnamed)"),
                tasks.len()
            );
            for t in &tasks {
                let needs = if t.needs.is_empty() {
                    String::new()
                } else {
                    format!(" <- {}", t.needs.join(", "))
                };
                println!("  {} [queue: {}]{needs}", t.name, t.queue);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
