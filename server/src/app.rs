//! Wiring of `gantry serve`: the store, the service, the background services and the HTTP
//! server of one node, started together and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::dispatch::{self, PoolConfig};
use crate::events::{EventBus, Wakeups};
use crate::executor::Sandbox;
use crate::executor::runner::RunnerConfig;
use crate::graphql::build_schema;
use crate::http::{AppState, router};
use crate::reconciler::{self, ReconcilerConfig};
use crate::scheduler::{self, SchedulerConfig};
use crate::service::{Caller, Service, ServiceConfig};
use crate::store::{Durability, Store};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub durability: Durability,
    pub workers: usize,
    pub queues: Vec<String>,
    pub web_dir: PathBuf,
    pub node: String,
    pub admin_token: Option<String>,
    pub sandbox: Sandbox,
    pub kill_grace: Duration,
    /// On SIGTERM, how long running attempts may take to finish before they are handed
    /// back (`lost`, then retried elsewhere).
    pub shutdown_grace: Duration,
    pub reconciler: ReconcilerConfig,
    /// Encrypts secrets at rest; without it secrets cannot be set.
    pub secret_key: Option<crate::service::SecretKey>,
    /// Where artifacts go: `None` for `<data_dir>/artifacts`, or `s3://bucket[/prefix]`.
    pub artifact_store: Option<String>,
    /// Redis for the cross-node event bus and wake-ups; without it the bus is in-process.
    pub redis: Option<crate::events::redis::RedisConfig>,
    /// Most attempts waiting for a worker before triggers are refused (OVERLOADED).
    pub max_pending_attempts: u64,
}

/// A started node.
pub struct Node {
    pub addr: SocketAddr,
    pub service: Service,
    /// The bootstrap admin token, when this start generated it.
    pub generated_token: Option<String>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

/// Errors of starting a node, with the part that failed named.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Database(#[from] crate::store::StoreError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] crate::service::ServiceError),
    #[error("artifact store: {0}")]
    Artifacts(#[from] crate::artifacts::BlobError),
    #[error("event bus: {0}")]
    EventBus(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl NodeConfig {
    /// The database URL: `DATABASE_URL`, or SQLite in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| Store::sqlite_url(&self.data_dir))
    }
}

/// Connects, migrates and opens the store of a node.
pub async fn open_store(config: &NodeConfig) -> Result<Store, StartError> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    }
    let store = Store::connect(&config.database_url(), config.durability).await?;
    store.migrate().await?;
    Ok(store)
}

impl Node {
    /// Starts a node: migrations, bootstrap, scheduler, worker pool and HTTP server.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(
        config: NodeConfig,
        clock: SharedClock,
    ) -> Result<Node, StartError> {
        let store = open_store(&config).await?;
        let service = Service::new(
            store,
            clock,
            config.node.clone(),
            EventBus::default(),
            Wakeups::default(),
            ServiceConfig {
                secret_key: config.secret_key.clone().map(Arc::new),
                max_pending_attempts: config.max_pending_attempts,
                ..ServiceConfig::default()
            },
        );
        let blobs = match &config.artifact_store {
            Some(url) => {
                crate::artifacts::BlobStore::s3(url, &[], &config.data_dir.join("artifact-spool"))?
            }
            None => crate::artifacts::BlobStore::local(&config.data_dir.join("artifacts"))?,
        };
        service.set_blob_store(blobs);
        service
            .bus()
            .attach_log(service.event_log())
            .await
            .map_err(StartError::EventBus)?;
        let generated_token = service.bootstrap(config.admin_token.as_deref()).await?;
        let default_tenant = service.ensure_default_tenant().await?;
        let system = Caller::system(default_tenant.id.parse().map_err(|_| {
            StartError::Bootstrap(crate::service::ServiceError::Internal(
                "bad tenant id".into(),
            ))
        })?);

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();

        if let Some(redis) = &config.redis {
            service.share_admission(redis)?;
            crate::events::redis::start(
                service.bus(),
                service.wakeups().clone(),
                config.node.clone(),
                redis.clone(),
                shutdown.clone(),
            )
            .map_err(|e| StartError::EventBus(e.to_string()))?;
        }

        let stop = shutdown.clone();
        let s = service.clone();
        tasks.spawn(async move {
            crate::service::status_hooks::run(
                s,
                crate::service::status_hooks::WebhookConfig::default(),
                stop,
            )
            .await
        });

        let schema = build_schema(Some(service.clone()));
        let app = router(
            AppState {
                schema,
                service: service.clone(),
            },
            config.web_dir.clone(),
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "http server failed");
            }
        });

        let stop = shutdown.clone();
        let s = service.clone();
        tasks.spawn(async move { scheduler::run(s, SchedulerConfig::default(), stop).await });

        let stop = shutdown.clone();
        let s = service.clone();
        tasks.spawn(async move { scheduler::cron::run(s, stop).await });

        let stop = shutdown.clone();
        let s = service.clone();
        let rc = config.reconciler.clone();
        tasks.spawn(async move { reconciler::run(s, rc, stop).await });

        if config.workers > 0 {
            let pool = PoolConfig {
                workers: config.workers,
                queues: config.queues.clone(),
                runner: RunnerConfig {
                    workspace_root: config.data_dir.join("workspaces"),
                    sandbox: config.sandbox,
                    kill_grace: config.kill_grace,
                    ..RunnerConfig::default()
                },
                shutdown_grace: config.shutdown_grace,
            };
            let stop = shutdown.clone();
            let s = service.clone();
            tasks.spawn(async move { dispatch::run(s, system, pool, stop).await });
        }

        Ok(Node {
            addr,
            service,
            generated_token,
            shutdown,
            tasks,
        })
    }

    /// Stops leasing and serving, and waits for the background services to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
