//! GraphQL object types: thin wrappers over stored rows whose fields resolve through the
//! service, and the enums of states and kinds in upper case.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use base64::Engine;
use chrono::{DateTime, Utc};

use super::{caller, gql, service};
use crate::clock::to_datetime;
use crate::domain::{self, EventRecord};
use crate::service::{Page, ServiceError};
use crate::store::entity::{artifact, attempt, log_chunk, pipeline, run, task, tenant, worker};

macro_rules! gql_enum {
    ($(#[$m:meta])* $name:ident from $domain:ty { $($v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
        pub enum $name { $($v),* }

        impl From<$domain> for $name {
            fn from(s: $domain) -> Self {
                match s { $(<$domain>::$v => $name::$v),* }
            }
        }
    };
}

gql_enum!(
    /// The state of a run.
    RunState from domain::RunState { Queued, Running, Cancelling, Succeeded, Failed, Cancelled }
);
gql_enum!(
    /// The state of a task.
    TaskState from domain::TaskState { Blocked, Ready, Running, Retrying, Succeeded, Failed, Cancelled, Skipped, Cached }
);
gql_enum!(
    /// The state of an attempt.
    AttemptState from domain::AttemptState { Scheduled, Queued, Leased, Running, Succeeded, Failed, TimedOut, Lost, Cancelled }
);
gql_enum!(
    /// Why an attempt failed.
    ErrorKind from domain::ErrorKind { Exit, Timeout, Lost, Cancelled, Infra }
);
gql_enum!(
    /// What an event is about.
    EntityKind from domain::Entity { Run, Task, Attempt }
);

/// Where a pipeline's repository lives.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Provider {
    Git,
    Github,
    Gitlab,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Git => "git",
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
        }
    }

    fn parse(s: &str) -> Provider {
        match s {
            "github" => Provider::Github,
            "gitlab" => Provider::Gitlab,
            _ => Provider::Git,
        }
    }
}

/// A permission of an API token.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Scope {
    Read,
    Write,
    Admin,
    Agent,
}

impl From<Scope> for crate::service::Scope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Read => crate::service::Scope::Read,
            Scope::Write => crate::service::Scope::Write,
            Scope::Admin => crate::service::Scope::Admin,
            Scope::Agent => crate::service::Scope::Agent,
        }
    }
}

impl From<crate::service::Scope> for Scope {
    fn from(s: crate::service::Scope) -> Self {
        match s {
            crate::service::Scope::Read => Scope::Read,
            crate::service::Scope::Write => Scope::Write,
            crate::service::Scope::Admin => Scope::Admin,
            crate::service::Scope::Agent => Scope::Agent,
        }
    }
}

fn parse<S: std::str::FromStr>(s: &str) -> async_graphql::Result<S> {
    s.parse::<S>().map_err(|_| {
        gql(ServiceError::Internal(format!(
            "corrupt stored state {s:?}"
        )))
    })
}

/// Encodes an id as an opaque cursor.
pub fn cursor(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

/// Decodes an opaque cursor; a cursor that is not ours is a bad argument.
pub fn decode_cursor(c: &str) -> async_graphql::Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| gql(ServiceError::BadInput("invalid cursor".into())))
}

pub fn page(first: Option<i32>, after: Option<String>) -> async_graphql::Result<Page> {
    if first.is_some_and(|f| f < 0) {
        return Err(gql(ServiceError::BadInput(
            "first must not be negative".into(),
        )));
    }
    Ok(Page {
        first: first.map(|f| f as usize),
        after: after.as_deref().map(decode_cursor).transpose()?,
    })
}

/// Server facts for clients.
#[derive(SimpleObject)]
pub struct ServerInfo {
    /// The server's version.
    pub version: String,
    /// The name of the node that answered.
    pub node: String,
}

/// An organisation.
pub struct Tenant(pub tenant::Model);

#[Object]
impl Tenant {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Share of the fleet under contention, relative to other tenants.
    async fn weight(&self) -> i32 {
        self.0.weight
    }
    /// Most attempts of this tenant running at once.
    async fn max_running(&self) -> i32 {
        self.0.max_running
    }
    /// Triggers per second allowed on average.
    async fn trigger_rate(&self) -> f64 {
        self.0.trigger_rate
    }
    /// Triggers allowed at once above the rate.
    async fn trigger_burst(&self) -> i32 {
        self.0.trigger_burst
    }
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.created_at)
    }
}

/// A pipeline file attached to a repository.
pub struct Pipeline(pub pipeline::Model);

#[Object]
impl Pipeline {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn provider(&self) -> Provider {
        Provider::parse(&self.0.provider)
    }
    async fn repository(&self) -> &str {
        &self.0.repository
    }
    /// The pipeline file's YAML text.
    async fn file(&self) -> &str {
        &self.0.file
    }
    async fn tenant(&self, ctx: &Context<'_>) -> async_graphql::Result<Tenant> {
        let s = service(ctx)?;
        s.tenant(caller(ctx)?, &self.0.tenant_id)
            .await
            .map(Tenant)
            .map_err(gql)
    }
    /// Whether a webhook secret is set (the secret itself is never returned).
    async fn has_webhook_secret(&self) -> bool {
        self.0.webhook_secret.is_some()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.created_at)
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.updated_at)
    }
}

/// One execution of a pipeline for a commit.
pub struct Run(pub run::Model);

#[Object]
impl Run {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Sequential number within its pipeline, from 1.
    async fn number(&self) -> i64 {
        self.0.number
    }
    async fn state(&self) -> async_graphql::Result<RunState> {
        Ok(parse::<domain::RunState>(&self.0.state)?.into())
    }
    async fn sha(&self) -> &str {
        &self.0.sha
    }
    #[graphql(name = "ref")]
    async fn git_ref(&self) -> &str {
        &self.0.git_ref
    }
    async fn repository(&self) -> &str {
        &self.0.repository
    }
    /// How it started: `api`, `webhook`, `schedule`, `upstream` or `retry`.
    async fn trigger(&self) -> &str {
        &self.0.trigger_kind
    }
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    async fn concurrency_group(&self) -> Option<&str> {
        self.0.concurrency_group.as_deref()
    }
    /// Waiting for an earlier run of its concurrency group to finish.
    async fn held(&self) -> bool {
        self.0.held
    }
    async fn priority(&self) -> i32 {
        self.0.priority
    }
    /// The trigger job that started this run (`trigger: upstream`), in its parent run.
    async fn parent_task(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Task>> {
        let Some(id) = &self.0.parent_task_id else {
            return Ok(None);
        };
        let s = service(ctx)?;
        s.task(caller(ctx)?, id)
            .await
            .map(|t| Some(Task(t)))
            .map_err(gql)
    }
    /// How many trigger jobs deep this run is: 0 unless a trigger job started it.
    async fn trigger_depth(&self) -> i32 {
        self.0.trigger_depth
    }
    async fn pipeline(&self, ctx: &Context<'_>) -> async_graphql::Result<Pipeline> {
        let s = service(ctx)?;
        s.pipeline(caller(ctx)?, &self.0.pipeline_id)
            .await
            .map(Pipeline)
            .map_err(gql)
    }
    /// The tasks in plan (topological) order.
    async fn tasks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Task>> {
        let s = service(ctx)?;
        Ok(s.tasks_of_run(&self.0)
            .await
            .map_err(gql)?
            .into_iter()
            .map(Task)
            .collect())
    }
    /// The run's events after `after` (a seq), oldest first.
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        #[graphql(default = 1000)] first: i32,
    ) -> async_graphql::Result<Vec<Event>> {
        let s = service(ctx)?;
        let after = parse_seq(after.as_deref())?;
        let limit = first.clamp(1, 10_000) as u64;
        Ok(s.events_of_run(&self.0.id, after, limit)
            .await
            .map_err(gql)?
            .into_iter()
            .map(Event)
            .collect())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.created_at)
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at.map(to_datetime)
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at.map(to_datetime)
    }
}

/// Parses a seq argument: a string of digits.
pub fn parse_seq(s: Option<&str>) -> async_graphql::Result<i64> {
    match s {
        None => Ok(0),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| gql(ServiceError::BadInput("a seq is a string of digits".into()))),
    }
}

/// One job of a run's DAG.
pub struct Task(pub task::Model);

#[Object]
impl Task {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The job id, with matrix values for matrix jobs: `test (shard=1)`.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The job id in the pipeline file.
    async fn job_id(&self) -> &str {
        &self.0.job_id
    }
    async fn state(&self) -> async_graphql::Result<TaskState> {
        Ok(parse::<domain::TaskState>(&self.0.state)?.into())
    }
    /// The virtual queue (from `runs-on`).
    async fn queue(&self) -> &str {
        &self.0.queue
    }
    /// Names of the tasks this one needs.
    async fn needs(&self) -> Vec<String> {
        serde_json::from_str(&self.0.needs).unwrap_or_default()
    }
    async fn attempts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Attempt>> {
        let s = service(ctx)?;
        Ok(s.attempts_of_task(&self.0.id)
            .await
            .map_err(gql)?
            .into_iter()
            .map(Attempt)
            .collect())
    }
    /// Why a task that is not running yet is waiting; null once it runs or ended.
    async fn waiting_reason(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        let s = service(ctx)?;
        s.waiting_reason(&self.0).await.map_err(gql)
    }
    async fn cache_key(&self) -> Option<&str> {
        self.0.cache_key.as_deref()
    }
    /// Files this task produced (or, when cached, reused), by name.
    async fn artifacts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Artifact>> {
        let s = service(ctx)?;
        Ok(s.artifacts_of_task(&self.0.id)
            .await
            .map_err(gql)?
            .into_iter()
            .map(Artifact)
            .collect())
    }
    async fn max_attempts(&self) -> i32 {
        self.0.max_attempts
    }
    /// For a trigger job: the run it started (the latest, after a retry).
    async fn child_run(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Run>> {
        let Some(id) = &self.0.child_run_id else {
            return Ok(None);
        };
        let s = service(ctx)?;
        s.run(caller(ctx)?, id)
            .await
            .map(|r| Some(Run(r)))
            .map_err(gql)
    }
    async fn run(&self, ctx: &Context<'_>) -> async_graphql::Result<Run> {
        let s = service(ctx)?;
        s.run(caller(ctx)?, &self.0.run_id)
            .await
            .map(Run)
            .map_err(gql)
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at.map(to_datetime)
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at.map(to_datetime)
    }
}

/// One try of a task on one worker.
/// A file produced by a task, stored once by content (sha256).
pub struct Artifact(pub artifact::Model);

#[Object]
impl Artifact {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Its path relative to the workspace that produced it.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Size in bytes.
    async fn size(&self) -> f64 {
        self.0.size as f64
    }
    /// Lowercase hex sha256 of the content.
    async fn sha256(&self) -> &str {
        &self.0.digest
    }
    /// Where to download it (`GET`, with the bearer token).
    async fn url(&self) -> String {
        format!("/artifacts/{}", self.0.id)
    }
    /// The attempt that produced the content.
    async fn attempt_id(&self) -> ID {
        ID(self.0.attempt_id.clone())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.created_at)
    }
    /// When it may be evicted (refreshed by each cache hit).
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at.map(to_datetime)
    }
}

pub struct Attempt(pub attempt::Model);

#[Object]
impl Attempt {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// 1 for the first try, 2 for the first retry, …
    async fn index(&self) -> i32 {
        self.0.idx
    }
    async fn state(&self) -> async_graphql::Result<AttemptState> {
        Ok(parse::<domain::AttemptState>(&self.0.state)?.into())
    }
    async fn error_kind(&self) -> async_graphql::Result<Option<ErrorKind>> {
        self.0
            .error_kind
            .as_deref()
            .map(|k| parse::<domain::ErrorKind>(k).map(Into::into))
            .transpose()
    }
    async fn error_message(&self) -> Option<&str> {
        self.0.error_message.as_deref()
    }
    async fn exit_code(&self) -> Option<i32> {
        self.0.exit_code
    }
    /// The id of the worker that ran it.
    async fn worker(&self) -> Option<ID> {
        self.0.worker_id.clone().map(ID)
    }
    /// Not before: when the backoff that preceded it ends.
    async fn scheduled_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.scheduled_at)
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at.map(to_datetime)
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at.map(to_datetime)
    }
    /// The backoff that preceded this attempt, in milliseconds.
    async fn backoff_ms(&self) -> i64 {
        self.0.backoff_ms
    }
    async fn heartbeat_at(&self) -> Option<DateTime<Utc>> {
        self.0.heartbeat_at.map(to_datetime)
    }
    async fn lease_expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.lease_expires_at.map(to_datetime)
    }
    /// The whole log so far (use the `attemptLog` subscription to follow it live).
    async fn log(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        let s = service(ctx)?;
        let chunks = s
            .log_of_attempt(caller(ctx)?, &self.0.id, 0)
            .await
            .map_err(gql)?;
        Ok(chunks.into_iter().map(|c| c.data).collect())
    }
    /// Length of the log in bytes.
    async fn log_bytes(&self) -> i64 {
        self.0.log_bytes
    }
}

/// A piece of an attempt's log.
pub struct LogChunk(pub log_chunk::Model);

#[Object]
impl LogChunk {
    /// Byte offset of this piece in the log.
    async fn offset(&self) -> i64 {
        self.0.byte_offset
    }
    /// `stdout`, `stderr` or `system` (step markers).
    async fn stream(&self) -> &str {
        &self.0.stream
    }
    async fn data(&self) -> &str {
        &self.0.data
    }
}

/// One transition, as the event log keeps it.
pub struct Event(pub EventRecord);

#[Object]
impl Event {
    /// Global sequence number, increasing in commit order (a string of digits).
    async fn seq(&self) -> String {
        self.0.seq.to_string()
    }
    async fn at(&self) -> DateTime<Utc> {
        to_datetime(self.0.at_ms)
    }
    async fn entity(&self) -> EntityKind {
        self.0.entity.into()
    }
    async fn entity_id(&self) -> ID {
        ID(self.0.entity_id.clone())
    }
    async fn run(&self) -> ID {
        ID(self.0.run_id.clone())
    }
    async fn task(&self) -> Option<ID> {
        self.0.task_id.clone().map(ID)
    }
    async fn attempt(&self) -> Option<ID> {
        self.0.attempt_id.clone().map(ID)
    }
    /// The state left, in upper case; null when the entity was created.
    async fn from(&self) -> Option<String> {
        self.0.from.as_ref().map(|s| s.to_ascii_uppercase())
    }
    /// The state entered, in upper case.
    async fn to(&self) -> String {
        self.0.to.to_ascii_uppercase()
    }
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    /// The server node that made the transition.
    async fn node(&self) -> &str {
        &self.0.node
    }
    /// Extra facts: the error of a failure, the policy and backoff of a retry.
    async fn details(&self) -> Option<async_graphql::Json<serde_json::Value>> {
        self.0.details.clone().map(async_graphql::Json)
    }
}

/// A registered worker.
pub struct Worker(pub worker::Model);

#[Object]
impl Worker {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// `agent` or `in_process`.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn node(&self) -> &str {
        &self.0.node
    }
    async fn queues(&self) -> Vec<String> {
        serde_json::from_str(&self.0.queues).unwrap_or_default()
    }
    async fn labels(&self) -> Vec<String> {
        serde_json::from_str(&self.0.labels).unwrap_or_default()
    }
    async fn capacity(&self) -> i32 {
        self.0.capacity
    }
    /// `idle`, `busy`, `draining` or `lost`.
    async fn state(&self) -> &str {
        &self.0.state
    }
    async fn last_heartbeat_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.last_heartbeat_at)
    }
}

/// A virtual queue.
#[derive(SimpleObject)]
pub struct Queue {
    pub name: String,
    /// Attempts waiting for a worker.
    pub depth: i64,
}
