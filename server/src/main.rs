//! The `gantry` command: `serve`, `agent`, `migrate`, `validate`, `schema`, `trigger`,
//! `bench`, `simulate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use gantry::app::{Node, NodeConfig};
use gantry::config::{DbConfig, SandboxKind, ServeConfig};
use gantry::executor::Sandbox;
use gantry::reconciler::ReconcilerConfig;
use gantry::service::SecretKey;

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
    Serve(Box<ServeConfig>),
    /// Runs a remote worker that leases attempts from a server.
    Agent(gantry::agent::AgentArgs),
    /// Applies database migrations and exits.
    Migrate(DbConfig),
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let serve_matches = matches.subcommand_matches("serve").cloned();
    match run(cli, serve_matches).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, serve_matches: Option<clap::ArgMatches>) -> anyhow::Result<ExitCode> {
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
            let args = match &serve_matches {
                Some(m) => args.with_file(m)?,
                None => *args,
            };
            init_tracing();
            serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn node_config_for_db(db: &DbConfig) -> NodeConfig {
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

async fn serve(args: ServeConfig) -> anyhow::Result<()> {
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
            SandboxKind::None => Sandbox::None,
            SandboxKind::Bwrap => Sandbox::Bwrap,
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
