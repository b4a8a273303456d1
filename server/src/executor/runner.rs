//! Runs one leased attempt end to end for a worker: executes it, streams its log in
//! batches, heartbeats, stops it when told, and reports the outcome.
//!
//! The same runner serves the in-process pool and the remote agent; they differ only in
//! their [`WorkerLink`] — direct service calls or the server's API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Checkout, CollectedArtifact, ExecSpec, FailureKind, InputFile, LogChunk, LogStream, Outcome,
    ResourceLimits, Sandbox, Step, execute,
};
use crate::domain::ErrorKind;
use crate::pipeline::{PlannedTask, StepKind};

/// An attempt as a worker receives it.
#[derive(Debug, Clone)]
pub struct Job {
    pub attempt_id: String,
    pub lease_token: String,
    pub spec: PlannedTask,
    pub repository: String,
    pub sha: String,
    /// Secret values in the spec: masked as `***` in every log line.
    pub masks: Vec<String>,
}

/// How an attempt ended, as reported back.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `None` when it succeeded.
    pub failure: Option<ErrorKind>,
    pub exit_code: Option<i32>,
    pub message: String,
}

/// One piece of output for the server.
#[derive(Debug, Clone)]
pub struct OutputPiece {
    pub stream: &'static str,
    pub data: String,
}

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server refused our lease token: the attempt was decided without us. Stop.
    #[error("lease is stale")]
    Fenced,
    /// Anything else; the runner retries or gives up as appropriate.
    #[error("{0}")]
    Other(String),
}

/// An artifact a task receives from a task it needs.
#[derive(Debug, Clone, Deserialize)]
pub struct InputArtifact {
    pub id: String,
    /// The task that produced it.
    pub task: String,
    /// Its path relative to the producing workspace; it is placed at the same path.
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// The worker's calls to the server.
#[async_trait::async_trait]
pub trait WorkerLink: Send + Sync {
    /// The artifacts of the tasks this attempt's task needs.
    async fn input_artifacts(
        &self,
        attempt_id: &str,
        lease_token: &str,
    ) -> Result<Vec<InputArtifact>, LinkError>;
    /// Streams one artifact into `dest`, verifying its digest.
    async fn download_artifact(
        &self,
        artifact: &InputArtifact,
        dest: &Path,
    ) -> Result<(), LinkError>;
    /// Streams one collected artifact to the server.
    async fn upload_artifact(
        &self,
        attempt_id: &str,
        lease_token: &str,
        artifact: &CollectedArtifact,
    ) -> Result<(), LinkError>;
    /// Renews the lease; `Ok(true)` means "stop: cancelled".
    async fn heartbeat(&self, attempt_id: &str, lease_token: &str) -> Result<bool, LinkError>;
    async fn append_log(
        &self,
        attempt_id: &str,
        lease_token: &str,
        pieces: Vec<OutputPiece>,
    ) -> Result<(), LinkError>;
    async fn complete(
        &self,
        attempt_id: &str,
        lease_token: &str,
        report: Report,
        last_log: Vec<OutputPiece>,
    ) -> Result<(), LinkError>;
}

/// How a worker runs attempts.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub workspace_root: PathBuf,
    pub heartbeat_every: Duration,
    pub kill_grace: Duration,
    pub sandbox: Sandbox,
    pub limits: ResourceLimits,
    /// Output is sent at least this often while a step runs.
    pub log_flush_every: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            workspace_root: std::env::temp_dir().join("gantry-workspaces"),
            heartbeat_every: Duration::from_secs(2),
            kill_grace: Duration::from_secs(10),
            sandbox: Sandbox::None,
            limits: ResourceLimits::default(),
            log_flush_every: Duration::from_millis(200),
        }
    }
}

/// Translates a planned task into what the executor runs.
pub fn exec_spec(job: &Job, cfg: &RunnerConfig) -> ExecSpec {
    let mut artifacts = job.spec.artifacts.clone();
    let mut steps = Vec::with_capacity(job.spec.steps.len());
    for (i, s) in job.spec.steps.iter().enumerate() {
        let name = s.name.clone();
        let step = match &s.kind {
            StepKind::Run { script, shell } => {
                let mut step =
                    Step::run(name.unwrap_or_else(|| first_line(script)), script.clone());
                step.shell = shell.clone();
                step
            }
            StepKind::Checkout => Step::checkout(name.unwrap_or_else(|| "checkout".into())),
            StepKind::UploadArtifact { path, .. } => {
                artifacts.push(path.clone());
                continue;
            }
            // The artifacts of the needed jobs are placed before the first step, so the
            // download step has nothing left to do.
            StepKind::DownloadArtifact { .. } => Step::run(
                name.unwrap_or_else(|| "download artifacts".into()),
                "echo 'artifacts of the needed jobs are in the workspace at their paths'",
            ),
            // Caches between jobs are not supported yet; the step says so in the log.
            StepKind::Cache { .. } => Step::run(
                name.unwrap_or_else(|| format!("step {}", i + 1)),
                "echo '##[warning] this action is not supported yet; skipped'",
            ),
        };
        let mut step = step;
        step.env = s.env.clone();
        step.working_directory = s.working_directory.clone();
        steps.push(step);
    }
    ExecSpec {
        attempt_id: job.attempt_id.clone(),
        workspace_root: cfg.workspace_root.clone(),
        checkout: Some(Checkout {
            repository: job.repository.clone(),
            sha: job.sha.clone(),
        }),
        steps,
        env: job.spec.env.clone(),
        timeout: Duration::from_millis(job.spec.timeout_ms.max(1)),
        kill_grace: cfg.kill_grace,
        sandbox: cfg.sandbox,
        limits: cfg.limits,
        artifacts,
        keep_workspace: false,
        masks: job.masks.clone(),
        inputs: Vec::new(),
    }
}

fn first_line(script: &str) -> String {
    let line = script.lines().next().unwrap_or("run").trim();
    line.chars().take(80).collect()
}

fn stream_name(s: LogStream) -> &'static str {
    match s {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
        LogStream::System => "system",
    }
}

fn report(outcome: &Outcome) -> Report {
    match outcome {
        Outcome::Succeeded => Report {
            failure: None,
            exit_code: Some(0),
            message: String::new(),
        },
        Outcome::Failed {
            kind,
            exit_code,
            message,
        } => Report {
            failure: Some(match kind {
                FailureKind::Exit => ErrorKind::Exit,
                FailureKind::Timeout => ErrorKind::Timeout,
                FailureKind::Cancelled => ErrorKind::Cancelled,
                FailureKind::Infra => ErrorKind::Infra,
            }),
            exit_code: *exit_code,
            message: message.clone(),
        },
    }
}

/// Runs `job` to its end and reports it. `stop` cancels it from this side (the pool's
/// cancel signals); the heartbeat reply cancels it from the server's. `handback` stops it
/// because this worker is shutting down: it is then reported `lost`, so that the policy
/// retries it on another worker.
pub async fn run_job<L: WorkerLink + ?Sized>(
    link: &L,
    job: Job,
    cfg: &RunnerConfig,
    stop: CancellationToken,
    handback: CancellationToken,
) -> Result<Report, LinkError> {
    let mut spec = exec_spec(&job, cfg);
    let transfers = !job.spec.needs.is_empty() || !spec.artifacts.is_empty();
    let inputs_dir = cfg
        .workspace_root
        .join(format!("{}.inputs", job.attempt_id));
    let outputs_dir = cfg
        .workspace_root
        .join(format!("{}.artifacts", job.attempt_id));
    let fetched = fetch_inputs(link, &job, &inputs_dir);
    let result = match with_heartbeats(link, &job, cfg.heartbeat_every, fetched).await {
        Ok(inputs) => {
            spec.inputs = inputs;
            run_fetched(link, &job, spec, cfg, stop, handback).await
        }
        Err(LinkError::Fenced) => Err(LinkError::Fenced),
        Err(LinkError::Other(e)) => {
            let r = Report {
                failure: Some(ErrorKind::Infra),
                exit_code: None,
                message: format!("downloading the artifacts of needed jobs failed: {e}"),
            };
            let log = vec![OutputPiece {
                stream: "system",
                data: format!("##[error] {}\n", r.message),
            }];
            link.complete(&job.attempt_id, &job.lease_token, r.clone(), log)
                .await
                .map(|()| r)
        }
    };
    // Only a job that receives or keeps artifacts has transfer directories: the others
    // skip a round trip to the blocking pool.
    if transfers {
        let cleaned = tokio::task::spawn_blocking(move || {
            for dir in [inputs_dir, outputs_dir] {
                if std::fs::symlink_metadata(&dir).is_ok()
                    && let Err(e) = std::fs::remove_dir_all(&dir)
                {
                    tracing::warn!(path = %dir.display(), error = %e, "could not remove a transfer directory");
                }
            }
        })
        .await;
        if let Err(e) = cleaned {
            tracing::warn!(error = %e, "transfer directory removal panicked");
        }
    }
    result
}

/// Runs `work` (a transfer of artifacts) while renewing the lease: a large transfer
/// must not make the attempt look lost.
async fn with_heartbeats<L: WorkerLink + ?Sized, T>(
    link: &L,
    job: &Job,
    every: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                if let Err(e) = link.heartbeat(&job.attempt_id, &job.lease_token).await {
                    tracing::warn!(attempt_id = %job.attempt_id, error = %e, "heartbeat during a transfer failed");
                }
            }
        }
    }
}

/// Downloads the artifacts of the needed tasks into `dir`, as files to place.
async fn fetch_inputs<L: WorkerLink + ?Sized>(
    link: &L,
    job: &Job,
    dir: &Path,
) -> Result<Vec<InputFile>, LinkError> {
    if job.spec.needs.is_empty() {
        return Ok(Vec::new());
    }
    let list = link
        .input_artifacts(&job.attempt_id, &job.lease_token)
        .await?;
    let mut inputs = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let source = dir.join(i.to_string());
        link.download_artifact(a, &source).await?;
        inputs.push(InputFile {
            source,
            dest: a.name.clone(),
        });
    }
    Ok(inputs)
}

async fn run_fetched<L: WorkerLink + ?Sized>(
    link: &L,
    job: &Job,
    spec: ExecSpec,
    cfg: &RunnerConfig,
    stop: CancellationToken,
    handback: CancellationToken,
) -> Result<Report, LinkError> {
    let (tx, mut rx) = mpsc::channel::<LogChunk>(1024);
    let cancel = stop.child_token();
    let exec = tokio::spawn(execute(spec, tx, cancel.clone()));
    tokio::pin!(exec);
    let mut heartbeat = tokio::time::interval(cfg.heartbeat_every);
    heartbeat.tick().await;
    let mut flush = tokio::time::interval(cfg.log_flush_every);
    flush.tick().await;
    let mut pending: Vec<OutputPiece> = Vec::new();
    let mut fenced = false;
    let result = loop {
        tokio::select! {
            res = &mut exec => break res,
            _ = handback.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
            Some(chunk) = rx.recv() => pending.push(OutputPiece { stream: stream_name(chunk.stream), data: chunk.data }),
            _ = heartbeat.tick() => match link.heartbeat(&job.attempt_id, &job.lease_token).await {
                Ok(true) => cancel.cancel(),
                Ok(false) => {}
                Err(LinkError::Fenced) => { fenced = true; cancel.cancel(); }
                Err(LinkError::Other(e)) => tracing::warn!(attempt_id = %job.attempt_id, error = %e, "heartbeat failed"),
            },
            _ = flush.tick(), if !pending.is_empty() => {
                match link.append_log(&job.attempt_id, &job.lease_token, std::mem::take(&mut pending)).await {
                    Ok(()) => {}
                    Err(LinkError::Fenced) => { fenced = true; cancel.cancel(); }
                    Err(LinkError::Other(e)) => tracing::warn!(attempt_id = %job.attempt_id, error = %e, "log upload failed"),
                }
            }
        }
    };
    while let Ok(chunk) = rx.try_recv() {
        pending.push(OutputPiece {
            stream: stream_name(chunk.stream),
            data: chunk.data,
        });
    }
    if fenced {
        return Err(LinkError::Fenced);
    }
    let r = match result {
        Ok(_) if handback.is_cancelled() => Report {
            failure: Some(ErrorKind::Lost),
            exit_code: None,
            message: "handed back: its worker shut down before it finished".into(),
        },
        Ok(res) => {
            let mut r = report(&res.outcome);
            if r.failure.is_none() {
                for a in &res.artifacts {
                    let upload = link.upload_artifact(&job.attempt_id, &job.lease_token, a);
                    match with_heartbeats(link, job, cfg.heartbeat_every, upload).await {
                        Ok(()) => pending.push(OutputPiece {
                            stream: "system",
                            data: format!(
                                "##[artifact] {} ({} bytes, sha256 {})\n",
                                a.name, a.size, a.sha256
                            ),
                        }),
                        Err(LinkError::Fenced) => return Err(LinkError::Fenced),
                        Err(LinkError::Other(e)) => {
                            r = Report {
                                failure: Some(ErrorKind::Infra),
                                exit_code: None,
                                message: format!("uploading artifact {:?} failed: {e}", a.name),
                            };
                            pending.push(OutputPiece {
                                stream: "system",
                                data: format!("##[error] {}\n", r.message),
                            });
                            break;
                        }
                    }
                }
            }
            r
        }
        Err(join) => Report {
            failure: Some(ErrorKind::Infra),
            exit_code: None,
            message: format!("executor crashed: {join}"),
        },
    };
    link.complete(&job.attempt_id, &job.lease_token, r.clone(), pending)
        .await?;
    Ok(r)
}
