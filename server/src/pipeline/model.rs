//! The validated, serialisable shape of a pipeline file and of planned tasks.
//!
//! This module owns plain data and its defaults. It must not parse, validate
//! or evaluate anything: the schema layer builds these values and the plan
//! layer derives tasks from them. Everything derives serde so specs can be
//! stored as JSON and reloaded unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Queue used when a job does not say `runs-on`.
pub const DEFAULT_QUEUE: &str = "default";
pub const DEFAULT_TIMEOUT_MS: u64 = 60 * 60 * 1000;
pub const DEFAULT_CACHE_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The queue of trigger jobs' attempts. No worker serves it: the server starts the child
/// run itself (`scheduler`), so the name is reserved and refused to workers.
pub const TRIGGER_QUEUE: &str = "gantry:trigger";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineFile {
    pub name: Option<String>,
    pub env: BTreeMap<String, String>,
    pub concurrency: Option<ConcurrencySpec>,
    pub cache: CacheSpec,
    pub on: Triggers,
    /// Outbound status webhooks (`notify:`).
    #[serde(default)]
    pub notify: Vec<NotifySpec>,
    /// In file order, which is also the tie-break order for scheduling.
    pub jobs: Vec<JobSpec>,
}

/// One outbound status webhook of a pipeline: run and task state changes are POSTed to
/// `webhook` as JSON, signed with the pipeline's webhook secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifySpec {
    pub webhook: String,
    pub format: NotifyFormat,
    /// The status context of the `github-status` format (default `gantry/<pipeline>`).
    pub context: Option<String>,
}

/// The body of a status webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotifyFormat {
    /// Gantry's event JSON, for run and task changes.
    Gantry,
    /// A GitHub commit status (`state`, `description`, `context`), for run changes.
    GithubStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencySpec {
    /// A template: may contain `${{ }}` over ref, sha, repository,
    /// run.number and top-level env; render it with `expr::substitute`.
    pub group: String,
    pub cancel_in_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSpec {
    pub enabled: bool,
    pub ttl_ms: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_ms: DEFAULT_CACHE_TTL_MS,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggers {
    pub push: Option<BranchFilter>,
    pub pull_request: Option<BranchFilter>,
    /// Cron expressions, five fields each.
    pub schedule: Vec<String>,
}

/// Empty `branches` means every branch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchFilter {
    pub branches: Vec<String>,
    pub branches_ignore: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    pub name: Option<String>,
    /// 1-based line of the job's key, for errors raised after parsing.
    pub line: u32,
    /// May contain `${{ }}`; rendered per task at plan time.
    pub runs_on: String,
    pub labels: Vec<String>,
    pub needs: Vec<String>,
    pub condition: Option<String>,
    pub continue_on_error: bool,
    pub timeout_ms: u64,
    pub retry: RetrySpec,
    pub cache: CacheSpec,
    pub env: BTreeMap<String, String>,
    pub steps: Vec<StepSpec>,
    pub artifacts: Vec<String>,
    pub matrix: Option<MatrixSpec>,
    /// A trigger job starts a run of another pipeline instead of running `steps` (which
    /// is then empty).
    #[serde(default)]
    pub trigger: Option<TriggerSpec>,
}

/// `trigger:` of a job: start a run of a pipeline of the same tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSpec {
    /// The name of the pipeline to run.
    pub pipeline: String,
    /// The child run's ref; `None` takes the parent run's. May contain `${{ }}` in a
    /// job spec; rendered in a planned task.
    pub r#ref: Option<String>,
    /// Whether the job waits for the child run and takes its result (the default), or
    /// succeeds as soon as the child run is accepted.
    pub wait: bool,
}

/// How failed attempts are retried. An attempt is retried when its failure
/// kind is listed in `on`, or when it exited with one of `exit_codes` (which
/// therefore works without listing `exit`). Cancellation is never retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub on: Vec<RetryOn>,
    pub exit_codes: Vec<i32>,
    pub backoff: BackoffSpec,
}

impl RetrySpec {
    /// The domain's retry policy for this block. Listing `exit-codes` implies retrying
    /// `exit` failures with those codes, as the file format documents.
    pub fn to_policy(&self) -> crate::domain::RetryPolicy {
        use crate::domain::{Backoff, ErrorKind};
        let mut on: Vec<ErrorKind> = self
            .on
            .iter()
            .map(|k| match k {
                RetryOn::Exit => ErrorKind::Exit,
                RetryOn::Timeout => ErrorKind::Timeout,
                RetryOn::Lost => ErrorKind::Lost,
                RetryOn::Infra => ErrorKind::Infra,
            })
            .collect();
        if !self.exit_codes.is_empty() && !on.contains(&ErrorKind::Exit) {
            on.push(ErrorKind::Exit);
        }
        crate::domain::RetryPolicy {
            max_attempts: self.max_attempts,
            on,
            exit_codes: self.exit_codes.clone(),
            backoff: Backoff {
                initial_ms: self.backoff.initial_ms,
                factor: self.backoff.factor,
                max_ms: self.backoff.max_ms,
                jitter: match self.backoff.jitter {
                    Jitter::Full => crate::domain::Jitter::Full,
                    Jitter::Equal => crate::domain::Jitter::Equal,
                    Jitter::None => crate::domain::Jitter::None,
                },
            },
        }
    }
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            on: vec![RetryOn::Lost, RetryOn::Infra],
            exit_codes: Vec::new(),
            backoff: BackoffSpec::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    /// Any non-zero exit of the task's own commands.
    Exit,
    Timeout,
    /// The worker disappeared mid-attempt.
    Lost,
    /// The platform failed before or around the user's commands.
    Infra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackoffSpec {
    pub initial_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
    pub jitter: Jitter,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            factor: 2.0,
            max_ms: 60_000,
            jitter: Jitter::Full,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    Full,
    Equal,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: Option<String>,
    pub kind: StepKind,
    pub env: BTreeMap<String, String>,
    pub working_directory: Option<String>,
}

/// Steps either run a script or map a well-known action onto a native
/// feature; arbitrary actions are not executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepKind {
    Run {
        script: String,
        shell: Option<String>,
    },
    Checkout,
    UploadArtifact {
        name: String,
        path: String,
    },
    DownloadArtifact {
        name: Option<String>,
        path: Option<String>,
    },
    Cache {
        key: String,
        path: String,
    },
}

/// Matrix as written; expand it with `matrix::expand`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixSpec {
    /// In file order; the order decides the order of combinations.
    pub axes: Vec<MatrixAxis>,
    pub include: Vec<BTreeMap<String, serde_json::Value>>,
    pub exclude: Vec<BTreeMap<String, serde_json::Value>>,
    pub fail_fast: bool,
    pub max_parallel: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixAxis {
    pub name: String,
    /// Scalars only: strings, numbers or bools.
    pub values: Vec<serde_json::Value>,
}

/// Inputs that make a plan concrete for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanContext {
    pub repository: String,
    pub sha: String,
    pub r#ref: String,
    pub run_number: i64,
}

impl PlanContext {
    /// The run-level variables of `${{ }}` expressions.
    pub fn vars(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ref".to_owned(), self.r#ref.clone()),
            ("sha".to_owned(), self.sha.clone()),
            ("repository".to_owned(), self.repository.clone()),
            ("run.number".to_owned(), self.run_number.to_string()),
        ])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTask {
    /// Job id, or `"<id> (k=v, k2=v2)"` with keys sorted for matrix tasks;
    /// unique within a plan.
    pub name: String,
    pub job_id: String,
    pub display_name: String,
    pub matrix: BTreeMap<String, serde_json::Value>,
    /// Task names; needing a matrix job means needing all of its tasks.
    pub needs: Vec<String>,
    pub queue: String,
    pub labels: Vec<String>,
    /// Condition source as written; evaluate it later with `vars`.
    pub condition: Option<String>,
    /// `ref`, `sha`, `repository`, `run.number`, `matrix.<k>`, `env.<k>`.
    pub vars: BTreeMap<String, String>,
    pub continue_on_error: bool,
    pub timeout_ms: u64,
    pub retry: RetrySpec,
    pub cache: CacheSpec,
    /// Top-level env overlaid with job env, substitutions applied.
    pub env: BTreeMap<String, String>,
    /// Scripts, names, inputs and step env with substitutions applied.
    pub steps: Vec<StepSpec>,
    pub artifacts: Vec<String>,
    /// Set for a trigger job, with its ref rendered; such a task has no steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerSpec>,
}
