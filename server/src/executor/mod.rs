//! The executor: runs one attempt of a job on this machine with real processes.
//!
//! It owns the lifecycle of a single attempt: a fresh workspace, the optional
//! checkout, each step as a supervised process group, log streaming with
//! secret masking, the attempt-wide timeout and cancellation, artifact
//! collection and workspace removal. It is separate from scheduling and
//! persistence so that everything touching processes and the local
//! filesystem sits behind one async function with a plain-data contract.
//! It must not retry, talk to other machines (beyond what a checkout fetches)
//! or persist anything: the caller decides what an outcome means.
//!
//! Sub-modules:
//! - `command`: what a step runs (shell, environment, sandbox, rlimits);
//! - `process`: how a process is supervised and killed;
//! - `logs`: line buffering and masking of output;
//! - `checkout`: git;
//! - `artifacts`: copying and hashing results;
//! - `sandbox`: bubblewrap policy;
//! - `error`: the one error type for infrastructure failures.

mod artifacts;
mod checkout;
mod command;
mod error;
mod logs;
mod process;
pub mod runner;
mod sandbox;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use error::ExecError;
pub use sandbox::bwrap_available;

use logs::LogSink;
use process::{Interruption, RunContext, Termination, run_process};

/// Grace period between SIGTERM and SIGKILL when none is configured.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// Attempt timeout when none is configured (matches common CI defaults).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// Everything needed to run one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Names the workspace directory; must be a single plain path component.
    pub attempt_id: String,
    /// The workspace is `workspace_root/<attempt_id>`, artifacts go to
    /// `workspace_root/<attempt_id>.artifacts`.
    pub workspace_root: PathBuf,
    /// What a `StepKind::Checkout` step checks out. Nothing is checked out
    /// unless a step asks for it.
    pub checkout: Option<Checkout>,
    pub steps: Vec<Step>,
    /// Job environment (already merged), applied over the allowlist.
    pub env: BTreeMap<String, String>,
    /// Limit for the whole attempt.
    pub timeout: Duration,
    /// SIGTERM → wait this long → SIGKILL.
    pub kill_grace: Duration,
    pub sandbox: Sandbox,
    pub limits: ResourceLimits,
    /// Paths relative to the workspace: files, directories (every file below
    /// becomes one artifact) or `*` globs.
    pub artifacts: Vec<String>,
    pub keep_workspace: bool,
    /// Secret values replaced by `***` in all log output.
    pub masks: Vec<String>,
    /// Files placed into the workspace before the first step (the artifacts of the
    /// tasks this one needs).
    #[serde(default)]
    pub inputs: Vec<InputFile>,
}

/// A file to place into the workspace before the steps run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Where the file is now; it is moved into the workspace.
    pub source: PathBuf,
    /// Path relative to the workspace; only plain components are accepted.
    pub dest: String,
}

impl ExecSpec {
    /// A spec with default timeout, grace, no sandbox, no limits, no checkout.
    pub fn new(
        attempt_id: impl Into<String>,
        workspace_root: impl Into<PathBuf>,
        steps: Vec<Step>,
    ) -> Self {
        Self {
            attempt_id: attempt_id.into(),
            workspace_root: workspace_root.into(),
            checkout: None,
            steps,
            env: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            kill_grace: DEFAULT_KILL_GRACE,
            sandbox: Sandbox::None,
            limits: ResourceLimits::default(),
            artifacts: Vec::new(),
            keep_workspace: false,
            masks: Vec::new(),
            inputs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    /// Local path or URL, anything `git clone` accepts.
    pub repository: String,
    /// Commit sha, or a ref name.
    pub sha: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub script: String,
    /// `None`/`sh` → `sh -e -c`, `bash` → `bash -e -o pipefail -c`, other → `<shell> -c`.
    pub shell: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Relative to the workspace.
    pub working_directory: Option<String>,
    pub kind: StepKind,
}

impl Step {
    /// A run step with default shell and no extra environment.
    pub fn run(name: impl Into<String>, script: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            shell: None,
            env: BTreeMap::new(),
            working_directory: None,
            kind: StepKind::Run,
        }
    }

    /// A step that performs the job's checkout.
    pub fn checkout(name: impl Into<String>) -> Self {
        Self {
            kind: StepKind::Checkout,
            ..Self::run(name, "")
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    #[default]
    Run,
    /// Performs the checkout at this point.
    Checkout,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sandbox {
    #[default]
    None,
    Bwrap,
}

/// Per-process rlimits for run steps (soft and hard set to the value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    pub cpu_seconds: Option<u64>,
    pub address_space_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub file_size_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines written by the executor itself (markers, errors).
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub stream: LogStream,
    /// Lossy UTF-8, already masked.
    pub data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// A step exited non-zero or was killed by a signal it did not get from us.
    Exit,
    Timeout,
    Cancelled,
    /// The machine could not run the attempt (checkout, sandbox, artifacts, ...).
    Infra,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed {
        kind: FailureKind,
        exit_code: Option<i32>,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedArtifact {
    /// The declared path (or, for directories and globs, the file's path
    /// relative to the workspace).
    pub name: String,
    /// The copy outside the workspace; the caller deletes it.
    pub path: PathBuf,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    pub outcome: Outcome,
    pub artifacts: Vec<CollectedArtifact>,
    pub duration: Duration,
}

/// Why an attempt stopped before succeeding; turned into an `Outcome` once.
#[derive(Debug)]
pub(crate) enum Halt {
    Error(ExecError),
    StepFailed {
        step: String,
        termination: Termination,
    },
    Interrupted(Interruption),
}

impl From<ExecError> for Halt {
    fn from(error: ExecError) -> Self {
        Self::Error(error)
    }
}

impl Halt {
    fn into_outcome(self, timeout: Duration) -> Outcome {
        let (kind, exit_code, message) = match self {
            Self::Error(error) => (FailureKind::Infra, None, error.to_string()),
            Self::StepFailed {
                step,
                termination: Termination::Exited(code),
            } => (
                FailureKind::Exit,
                Some(code),
                format!("step {step:?} exited with code {code}"),
            ),
            Self::StepFailed {
                step,
                termination: Termination::Signaled(signal),
            } => (
                FailureKind::Exit,
                None,
                format!("step {step:?} was killed by signal {signal}"),
            ),
            Self::Interrupted(Interruption::Timeout) => (
                FailureKind::Timeout,
                None,
                format!("attempt exceeded its timeout of {timeout:?}"),
            ),
            Self::Interrupted(Interruption::Cancelled) => (
                FailureKind::Cancelled,
                None,
                "attempt was cancelled".to_owned(),
            ),
        };
        Outcome::Failed {
            kind,
            exit_code,
            message,
        }
    }
}

/// Runs one attempt to completion. Never panics on job behaviour and always
/// returns an outcome; log chunks are sent on `logs` as they are produced
/// (a closed receiver is ignored). Firing `cancel` stops the running step
/// with the same TERM/grace/KILL sequence as a timeout.
pub async fn execute(
    spec: ExecSpec,
    logs: mpsc::Sender<LogChunk>,
    cancel: CancellationToken,
) -> ExecResult {
    let started = Instant::now();
    let deadline = started
        .checked_add(spec.timeout)
        // An absurdly large timeout means "no timeout"; a century will do.
        .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 60 * 60));
    let sink = LogSink::new(logs, &spec.masks);

    let result = match prepare_workspace(&spec).await {
        Ok(workspace) => {
            let ctx = RunContext {
                logs: &sink,
                cancel: &cancel,
                deadline,
                kill_grace: spec.kill_grace,
            };
            let result = run_attempt(&spec, &workspace, &ctx).await;
            if !spec.keep_workspace {
                remove_workspace(workspace).await;
            }
            result
        }
        Err(error) => Err(Halt::Error(error)),
    };

    let (outcome, artifacts) = match result {
        Ok(artifacts) => (Outcome::Succeeded, artifacts),
        Err(halt) => {
            let outcome = halt.into_outcome(spec.timeout);
            if let Outcome::Failed { message, .. } = &outcome {
                sink.system(&format!("##[error] {message}\n")).await;
            }
            (outcome, Vec::new())
        }
    };
    ExecResult {
        outcome,
        artifacts,
        duration: started.elapsed(),
    }
}

/// Creates an empty `workspace_root/<attempt_id>`, clearing leftovers of a
/// crashed earlier run of the same attempt.
async fn prepare_workspace(spec: &ExecSpec) -> Result<PathBuf, ExecError> {
    let id = &spec.attempt_id;
    let plain = {
        let mut components = Path::new(id).components();
        matches!(
            (components.next(), components.next()),
            (Some(std::path::Component::Normal(_)), None)
        )
    };
    // The id becomes a directory name that we later delete recursively; it
    // must not be able to point anywhere else.
    if !plain || id.contains('/') {
        return Err(ExecError::InvalidSpec(format!(
            "attempt id {id:?} is not a plain directory name"
        )));
    }
    let workspace = spec.workspace_root.join(id);
    let ws = workspace.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        if std::fs::symlink_metadata(&ws).is_ok() {
            std::fs::remove_dir_all(&ws)?;
        }
        std::fs::create_dir_all(&ws)
    })
    .await
    .map_err(|e| ExecError::Internal(format!("workspace preparation panicked: {e}")))?;
    prepared.map_err(|source| ExecError::Workspace {
        path: workspace.clone(),
        source,
    })?;
    Ok(workspace)
}

async fn remove_workspace(workspace: PathBuf) {
    let removed = tokio::task::spawn_blocking(move || {
        std::fs::remove_dir_all(&workspace).map_err(|e| (workspace, e))
    })
    .await;
    // A workspace we cannot delete costs disk space, not correctness; it is
    // not worth failing an otherwise finished attempt over.
    match removed {
        Ok(Ok(())) => {}
        Ok(Err((path, error))) => {
            tracing::warn!(path = %path.display(), %error, "could not remove workspace");
        }
        Err(error) => tracing::warn!(%error, "workspace removal panicked"),
    }
}

async fn run_attempt(
    spec: &ExecSpec,
    workspace: &Path,
    ctx: &RunContext<'_>,
) -> Result<Vec<CollectedArtifact>, Halt> {
    // Refuse up front: a sandboxed job must not run even its first steps
    // without the sandbox.
    if spec.sandbox == Sandbox::Bwrap && !bwrap_available() {
        return Err(ExecError::SandboxUnavailable.into());
    }
    if !spec.inputs.is_empty() {
        let inputs = spec.inputs.clone();
        let ws = workspace.to_path_buf();
        tokio::task::spawn_blocking(move || place_inputs(&ws, &inputs))
            .await
            .map_err(|e| ExecError::Internal(format!("placing inputs panicked: {e}")))??;
    }

    for step in &spec.steps {
        if ctx.cancel.is_cancelled() {
            return Err(Halt::Interrupted(Interruption::Cancelled));
        }
        if Instant::now() >= ctx.deadline {
            return Err(Halt::Interrupted(Interruption::Timeout));
        }
        ctx.logs.system(&format!("##[step] {}\n", step.name)).await;
        match step.kind {
            StepKind::Checkout => {
                let Some(source) = &spec.checkout else {
                    return Err(ExecError::InvalidSpec(format!(
                        "step {:?} is a checkout step but the job has no checkout source",
                        step.name
                    ))
                    .into());
                };
                checkout::checkout(source, workspace, &spec.attempt_id, ctx).await?;
                ctx.logs.system("##[exit] 0\n").await;
            }
            StepKind::Run => {
                let cmd = command::step_command(spec, step, workspace)?;
                let end = run_process(cmd, &format!("step {:?}", step.name), ctx).await?;
                if end.stragglers_killed {
                    ctx.logs
                        .system("##[warning] step left background processes running; they were terminated\n")
                        .await;
                }
                let marker = match end.termination {
                    Termination::Exited(code) => format!("##[exit] {code}\n"),
                    Termination::Signaled(signal) => format!("##[signal] {signal}\n"),
                };
                ctx.logs.system(&marker).await;
                if let Some(interruption) = end.interrupted {
                    return Err(Halt::Interrupted(interruption));
                }
                if end.termination != Termination::Exited(0) {
                    return Err(Halt::StepFailed {
                        step: step.name.clone(),
                        termination: end.termination,
                    });
                }
            }
        }
    }

    if spec.artifacts.is_empty() {
        return Ok(Vec::new());
    }
    let ws = workspace.to_path_buf();
    let out_dir = spec
        .workspace_root
        .join(format!("{}.artifacts", spec.attempt_id));
    let declared = spec.artifacts.clone();
    let collected =
        tokio::task::spawn_blocking(move || artifacts::collect(&ws, &out_dir, &declared))
            .await
            .map_err(|e| ExecError::Internal(format!("artifact collection panicked: {e}")))??;
    Ok(collected)
}

/// Moves the input files into the workspace at their relative paths. A path that could
/// leave the workspace is refused; a later input with the same path replaces an earlier one.
fn place_inputs(workspace: &Path, inputs: &[InputFile]) -> Result<(), ExecError> {
    for input in inputs {
        let rel = Path::new(&input.dest);
        let plain = !input.dest.is_empty()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(ExecError::InvalidSpec(format!(
                "input {:?} is not a plain relative path",
                input.dest
            )));
        }
        let dest = workspace.join(rel);
        let io = |source| ExecError::Workspace {
            path: dest.clone(),
            source,
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if std::fs::rename(&input.source, &dest).is_err() {
            std::fs::copy(&input.source, &dest).map_err(io)?;
        }
    }
    Ok(())
}
