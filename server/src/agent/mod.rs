//! `gantry agent`: a remote worker. It registers with a server, long-polls
//! `leaseAttempt`, runs each attempt with the shared runner, heartbeats, streams its log,
//! and completes it — all through the public GraphQL API with an agent token.
//!
//! It survives server restarts: every call that fails for want of a server is retried
//! with capped exponential backoff, and registration is redone when the server forgot us.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::artifacts::LEASE_HEADER;
use crate::executor::CollectedArtifact;
use crate::executor::Sandbox;
use crate::executor::runner::{
    self, InputArtifact, Job, LinkError, OutputPiece, Report, RunnerConfig, WorkerLink,
};
use crate::pipeline::PlannedTask;

/// Options of `gantry agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Base URL of a server (`http://host:port`).
    #[arg(long, env = "GANTRY_SERVER")]
    pub server: String,
    /// An API token with the `agent` scope.
    #[arg(long, env = "GANTRY_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Queues to serve (repeat or separate with commas).
    #[arg(long = "queue", value_delimiter = ',', default_value = "default")]
    pub queues: Vec<String>,
    /// Labels this agent offers.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Name shown in the dashboard (default: host name and pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Directory for attempt workspaces.
    #[arg(long, default_value = "./gantry-agent")]
    pub workspace: PathBuf,
    /// Run steps inside bubblewrap.
    #[arg(long, value_enum, default_value = "none")]
    pub sandbox: AgentSandbox,
    /// On SIGTERM, seconds a running attempt may take to finish before it is handed back.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum AgentSandbox {
    None,
    Bwrap,
}

/// Errors of the agent's conversation with its server.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server answered with a GraphQL error.
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// A GraphQL client for the worker calls.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    /// The server's base URL, for the artifact endpoints.
    base: String,
    token: String,
}

/// Longest artifact transfer before it is given up.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

impl Client {
    pub fn new(server: &str, token: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            url: format!("{}/graphql", server.trim_end_matches('/')),
            base: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    pub async fn call(&self, query: &str, variables: Value) -> Result<Value, AgentError> {
        let res = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| AgentError::Unreachable(e.to_string()))?;
        if res.status().is_server_error() {
            return Err(AgentError::Unreachable(format!("HTTP {}", res.status())));
        }
        let body: Value = res
            .json()
            .await
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        if let Some(err) = body.get("errors").and_then(|e| e.get(0)) {
            let code = err["extensions"]["code"]
                .as_str()
                .unwrap_or("UNKNOWN")
                .to_owned();
            let message = err["message"].as_str().unwrap_or_default().to_owned();
            if code == "UNAVAILABLE" {
                return Err(AgentError::Unreachable(message));
            }
            return Err(AgentError::Refused { code, message });
        }
        Ok(body["data"].clone())
    }
}

fn link_error(e: AgentError) -> LinkError {
    match e {
        AgentError::Refused { code, .. } if code == "CONFLICT" => LinkError::Fenced,
        other => LinkError::Other(other.to_string()),
    }
}

fn log_vars(pieces: Vec<OutputPiece>) -> Value {
    Value::Array(
        pieces
            .into_iter()
            .map(|p| json!({ "stream": p.stream, "data": p.data }))
            .collect(),
    )
}

/// Retries `f` while the server is unreachable, with capped exponential backoff; gives up
/// after `attempts` tries.
async fn with_retry<T, F, Fut>(attempts: u32, mut f: F) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        match f().await {
            Err(AgentError::Unreachable(e)) if tries + 1 < attempts => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "server unreachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Maps an HTTP answer of an artifact endpoint to the link's errors.
async fn transfer_error(res: reqwest::Response) -> LinkError {
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::CONFLICT {
        LinkError::Fenced
    } else {
        LinkError::Other(format!(
            "HTTP {status}: {}",
            body.chars().take(500).collect::<String>()
        ))
    }
}

#[async_trait::async_trait]
impl WorkerLink for Client {
    async fn input_artifacts(
        &self,
        attempt_id: &str,
        lease_token: &str,
    ) -> Result<Vec<InputArtifact>, LinkError> {
        let res = self
            .http
            .get(format!("{}/attempts/{attempt_id}/inputs", self.base))
            .bearer_auth(&self.token)
            .header(LEASE_HEADER, lease_token)
            .send()
            .await
            .map_err(|e| LinkError::Other(e.to_string()))?;
        if !res.status().is_success() {
            return Err(transfer_error(res).await);
        }
        res.json()
            .await
            .map_err(|e| LinkError::Other(format!("inputs: {e}")))
    }

    async fn download_artifact(
        &self,
        artifact: &InputArtifact,
        dest: &std::path::Path,
    ) -> Result<(), LinkError> {
        let res = self
            .http
            .get(format!("{}/artifacts/{}", self.base, artifact.id))
            .bearer_auth(&self.token)
            .timeout(TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(|e| LinkError::Other(e.to_string()))?;
        if !res.status().is_success() {
            return Err(transfer_error(res).await);
        }
        crate::artifacts::write_verified(Box::pin(res.bytes_stream()), &artifact.sha256, dest)
            .await
            .map(|_| ())
            .map_err(|e| LinkError::Other(e.to_string()))
    }

    async fn upload_artifact(
        &self,
        attempt_id: &str,
        lease_token: &str,
        a: &CollectedArtifact,
    ) -> Result<(), LinkError> {
        let file = tokio::fs::File::open(&a.path)
            .await
            .map_err(|e| LinkError::Other(format!("{}: {e}", a.path.display())))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        let res = self
            .http
            .put(format!("{}/artifacts", self.base))
            .query(&[
                ("attempt", attempt_id),
                ("name", &a.name),
                ("sha256", &a.sha256),
            ])
            .bearer_auth(&self.token)
            .header(LEASE_HEADER, lease_token)
            .header(reqwest::header::CONTENT_LENGTH, a.size)
            .timeout(TRANSFER_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| LinkError::Other(e.to_string()))?;
        if !res.status().is_success() {
            return Err(transfer_error(res).await);
        }
        Ok(())
    }

    async fn heartbeat(&self, attempt_id: &str, lease_token: &str) -> Result<bool, LinkError> {
        let data = self
            .call(
                "mutation($a: ID!, $t: String!) { heartbeat(attempt: $a, leaseToken: $t) { cancel } }",
                json!({ "a": attempt_id, "t": lease_token }),
            )
            .await
            .map_err(link_error)?;
        Ok(data["heartbeat"]["cancel"].as_bool().unwrap_or(false))
    }

    async fn append_log(
        &self,
        attempt_id: &str,
        lease_token: &str,
        pieces: Vec<OutputPiece>,
    ) -> Result<(), LinkError> {
        self.call(
            "mutation($a: ID!, $t: String!, $c: [LogChunkInput!]!) { appendLog(attempt: $a, leaseToken: $t, chunks: $c) }",
            json!({ "a": attempt_id, "t": lease_token, "c": log_vars(pieces) }),
        )
        .await
        .map(|_| ())
        .map_err(link_error)
    }

    async fn complete(
        &self,
        attempt_id: &str,
        lease_token: &str,
        r: Report,
        last: Vec<OutputPiece>,
    ) -> Result<(), LinkError> {
        let input = json!({
            "attempt": attempt_id,
            "leaseToken": lease_token,
            "errorKind": r.failure.map(|k| k.as_str().to_ascii_uppercase()),
            "exitCode": r.exit_code,
            "message": r.message,
            "log": log_vars(last),
        });
        // The result must reach the server: keep trying through a restart.
        with_retry(60, || {
            self.call(
                "mutation($i: CompleteAttemptInput!) { completeAttempt(input: $i) { id } }",
                json!({ "i": input }),
            )
        })
        .await
        .map(|_| ())
        .map_err(link_error)
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "agent".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the agent until SIGTERM or Ctrl-C; a running attempt is finished first.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        stop.cancel();
    });
    run_until(args, shutdown).await
}

/// Runs the agent until `shutdown` fires.
pub async fn run_until(args: AgentArgs, shutdown: CancellationToken) -> Result<(), AgentError> {
    let client = Client::new(&args.server, &args.token);
    let name = args.name.clone().unwrap_or_else(default_name);
    let config = RunnerConfig {
        workspace_root: args.workspace.clone(),
        sandbox: match args.sandbox {
            AgentSandbox::None => Sandbox::None,
            AgentSandbox::Bwrap => Sandbox::Bwrap,
        },
        ..RunnerConfig::default()
    };
    let mut worker_id: Option<String> = None;
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let id = match &worker_id {
            Some(id) => id.clone(),
            None => match register(&client, &name, &args).await {
                Ok(id) => {
                    tracing::info!(worker_id = %id, "registered");
                    worker_id = Some(id.clone());
                    backoff = Duration::from_millis(200);
                    id
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed");
                    if matches!(e, AgentError::Refused { ref code, .. } if code == "UNAUTHENTICATED" || code == "FORBIDDEN")
                    {
                        return Err(e);
                    }
                    sleep_or_stop(&shutdown, &mut backoff).await;
                    continue;
                }
            },
        };
        let leased = tokio::select! {
            _ = shutdown.cancelled() => break,
            l = lease(&client, &id, &args.queues) => l,
        };
        match leased {
            Ok(Some(job)) => {
                backoff = Duration::from_millis(200);
                let attempt_id = job.attempt_id.clone();
                let span =
                    tracing::info_span!("attempt", attempt_id = %attempt_id, task = %job.spec.name);
                // Draining: after shutdown begins, the attempt has the grace period.
                let handback = CancellationToken::new();
                let grace = Duration::from_secs(args.shutdown_grace_secs);
                let watch = {
                    let handback = handback.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        shutdown.cancelled().await;
                        tokio::time::sleep(grace).await;
                        handback.cancel();
                    })
                };
                let result =
                    runner::run_job(&client, job, &config, CancellationToken::new(), handback)
                        .instrument(span)
                        .await;
                watch.abort();
                if let Err(e) = result {
                    tracing::warn!(attempt_id = %attempt_id, error = %e, "attempt could not be reported");
                }
            }
            Ok(None) => {}
            Err(AgentError::Refused { code, message }) if code == "NOT_FOUND" => {
                tracing::warn!(%message, "server forgot this worker; registering again");
                worker_id = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease failed");
                sleep_or_stop(&shutdown, &mut backoff).await;
            }
        }
    }
    Ok(())
}

async fn sleep_or_stop(shutdown: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

async fn register(client: &Client, name: &str, args: &AgentArgs) -> Result<String, AgentError> {
    let data = client
        .call(
            "mutation($i: RegisterWorkerInput!) { registerWorker(input: $i) { id } }",
            json!({ "i": { "name": name, "queues": args.queues, "labels": args.labels, "capacity": 1 } }),
        )
        .await?;
    data["registerWorker"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| AgentError::Protocol("registerWorker returned no id".into()))
}

async fn lease(
    client: &Client,
    worker_id: &str,
    queues: &[String],
) -> Result<Option<Job>, AgentError> {
    let data = client
        .call(
            "mutation($w: ID!, $q: [String!]!) { leaseAttempt(worker: $w, queues: $q, waitMs: 20000) { \
               leaseToken spec repository sha masks attempt { id } } }",
            json!({ "w": worker_id, "q": queues }),
        )
        .await?;
    let lease = &data["leaseAttempt"];
    if lease.is_null() {
        return Ok(None);
    }
    let spec: PlannedTask = serde_json::from_value(lease["spec"].clone())
        .map_err(|e| AgentError::Protocol(format!("spec: {e}")))?;
    Ok(Some(Job {
        attempt_id: lease["attempt"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        lease_token: lease["leaseToken"].as_str().unwrap_or_default().to_owned(),
        spec,
        repository: lease["repository"].as_str().unwrap_or_default().to_owned(),
        sha: lease["sha"].as_str().unwrap_or_default().to_owned(),
        masks: lease["masks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }))
}
