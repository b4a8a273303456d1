//! The in-process worker pool: `serve --workers N` runs N workers inside the server,
//! leasing through the same service calls a remote agent makes over the API.
//!
//! A worker waits on its queues' wake-ups (pushed by the commit that queues work), runs
//! the attempt with the shared runner, and stops leasing when shutdown begins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::Signal;
use crate::executor::CollectedArtifact;
use crate::executor::runner::{
    self, InputArtifact, Job, LinkError, OutputPiece, Report, RunnerConfig, WorkerLink,
};
use crate::service::{
    AttemptOutcome, Caller, Completion, LogPiece, Service, ServiceError, WorkerInput,
};

/// Configuration of the in-process pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of workers (0: none; remote agents only).
    pub workers: usize,
    /// Queues served.
    pub queues: Vec<String>,
    pub runner: RunnerConfig,
    /// After shutdown begins, how long running attempts may take before they are handed
    /// back.
    pub shutdown_grace: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            queues: vec!["default".into()],
            runner: RunnerConfig::default(),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Direct service calls as a worker link.
struct ServiceLink {
    service: Service,
    caller: Caller,
}

fn link_error(e: ServiceError) -> LinkError {
    match e {
        ServiceError::Conflict(_) => LinkError::Fenced,
        other => LinkError::Other(other.to_string()),
    }
}

fn pieces(p: Vec<OutputPiece>) -> Vec<LogPiece> {
    p.into_iter()
        .map(|p| LogPiece {
            stream: p.stream.to_owned(),
            data: p.data,
        })
        .collect()
}

#[async_trait::async_trait]
impl WorkerLink for ServiceLink {
    async fn input_artifacts(
        &self,
        attempt_id: &str,
        lease_token: &str,
    ) -> Result<Vec<InputArtifact>, LinkError> {
        let list = self
            .service
            .input_artifacts(&self.caller, attempt_id, lease_token)
            .await
            .map_err(link_error)?;
        Ok(list
            .into_iter()
            .map(|(task, a)| InputArtifact {
                id: a.id,
                task,
                name: a.name,
                size: a.size as u64,
                sha256: a.digest,
            })
            .collect())
    }

    async fn download_artifact(
        &self,
        artifact: &InputArtifact,
        dest: &std::path::Path,
    ) -> Result<(), LinkError> {
        self.service
            .artifact_to_file(&artifact.sha256, dest)
            .await
            .map(|_| ())
            .map_err(link_error)
    }

    async fn upload_artifact(
        &self,
        attempt_id: &str,
        lease_token: &str,
        a: &CollectedArtifact,
    ) -> Result<(), LinkError> {
        // The collected copy is already outside the workspace and hashed: it is the spool.
        let spooled = crate::artifacts::Spooled {
            path: a.path.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
        };
        self.service
            .upload_artifact(
                &self.caller,
                attempt_id,
                lease_token,
                &a.name,
                Some(&a.sha256),
                spooled,
            )
            .await
            .map(|_| ())
            .map_err(link_error)
    }

    async fn heartbeat(&self, attempt_id: &str, lease_token: &str) -> Result<bool, LinkError> {
        self.service
            .heartbeat(&self.caller, attempt_id, lease_token)
            .await
            .map(|r| r.cancel)
            .map_err(link_error)
    }

    async fn append_log(
        &self,
        attempt_id: &str,
        lease_token: &str,
        p: Vec<OutputPiece>,
    ) -> Result<(), LinkError> {
        self.service
            .append_log(&self.caller, attempt_id, lease_token, pieces(p))
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
        let outcome = match r.failure {
            None => AttemptOutcome::Succeeded,
            Some(kind) => AttemptOutcome::Failed {
                kind,
                exit_code: r.exit_code,
                message: r.message,
            },
        };
        let completion = Completion {
            attempt_id: attempt_id.to_owned(),
            lease_token: lease_token.to_owned(),
            outcome,
            last_log: pieces(last),
        };
        self.service
            .report_completion(&self.caller, completion)
            .await
            .map_err(link_error)
    }
}

/// Cancellation tokens of the attempts running in this process, by attempt id.
type Running = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// Runs the pool until `shutdown` fires, then lets running attempts finish.
pub async fn run(
    service: Service,
    caller: Caller,
    config: PoolConfig,
    shutdown: CancellationToken,
) {
    let handback = CancellationToken::new();
    let running: Running = Arc::default();
    let mut workers = JoinSet::new();
    // Cancel signals from the service reach the attempt's executor at once.
    {
        let running = running.clone();
        let mut signals = service.bus().signals();
        let stop = shutdown.clone();
        workers.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    s = signals.recv() => match s {
                        Ok(Signal::Cancel { attempt_id }) => {
                            let token = running.lock().unwrap_or_else(|p| p.into_inner()).get(&attempt_id).cloned();
                            if let Some(t) = token { t.cancel(); }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            }
        });
    }
    for n in 0..config.workers {
        let service = service.clone();
        let caller = caller.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        let running = running.clone();
        let handback = handback.clone();
        let span = tracing::info_span!("worker", n);
        workers.spawn(
            worker(service, caller, config, shutdown, handback, running, n).instrument(span),
        );
    }
    shutdown.cancelled().await;
    let grace = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            joined = workers.join_next() => if joined.is_none() { break },
            _ = &mut grace, if !handback.is_cancelled() => {
                tracing::warn!("shutdown grace period over: handing running attempts back");
                handback.cancel();
            }
        }
    }
}

async fn worker(
    service: Service,
    caller: Caller,
    config: PoolConfig,
    shutdown: CancellationToken,
    handback: CancellationToken,
    running: Running,
    n: usize,
) {
    let name = format!("{}-w{n}", service.node());
    let registered = loop {
        let input = WorkerInput {
            name: name.clone(),
            queues: config.queues.clone(),
            labels: Vec::new(),
            capacity: 1,
            kind: "in_process".into(),
        };
        match service.register_worker(&caller, input).await {
            Ok(w) => break w,
            Err(e) => {
                tracing::warn!(error = %e, "worker registration failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let link = ServiceLink {
        service: service.clone(),
        caller: caller.clone(),
    };
    loop {
        let leased = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = service.lease_for_worker(&caller, &registered, &config.queues, Duration::from_secs(30)) => l,
        };
        let leased = match leased {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = ?e, "lease failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        let job = Job {
            attempt_id: leased.attempt.id.clone(),
            lease_token: leased.lease_token.clone(),
            spec: leased.spec,
            repository: leased.run.repository.clone(),
            sha: leased.run.sha.clone(),
            masks: leased.masks,
        };
        let stop = CancellationToken::new();
        running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.attempt_id.clone(), stop.clone());
        let attempt_id = job.attempt_id.clone();
        let result = runner::run_job(&link, job, &config.runner, stop, handback.clone())
            .instrument(
                tracing::info_span!("attempt", attempt_id = %attempt_id, run_id = %leased.run.id),
            )
            .await;
        running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&attempt_id);
        if let Err(e) = result {
            tracing::warn!(attempt_id = %attempt_id, error = %e, "attempt could not be reported");
        }
    }
}
