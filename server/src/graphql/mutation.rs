//! Mutations: administration, pipelines, runs, and the worker calls.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::types::{Attempt, ErrorKind, Pipeline, Provider, Run, Scope, Task, Tenant, Worker};
use super::{caller, gql, service};
use crate::domain;
use crate::service::{
    AttemptOutcome, LogPiece, PipelineInput, PipelineUpdate, Scopes, TenantInput, TriggerInput,
    WorkerInput,
};

#[derive(Default)]
pub struct Mutation;

#[derive(InputObject)]
pub struct CreateTenantInput {
    pub name: String,
    pub weight: Option<i32>,
    pub max_running: Option<i32>,
    /// Triggers per second on average.
    pub trigger_rate: Option<f64>,
    pub trigger_burst: Option<i32>,
}

#[derive(InputObject)]
pub struct CreateApiTokenInput {
    /// Tenant id or name; default: the caller's.
    pub tenant: Option<String>,
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// A new token: `token` is the secret, shown this once.
#[derive(SimpleObject)]
pub struct CreatedApiToken {
    pub token: String,
    pub api_token: ApiToken,
}

pub use super::security::ApiToken;
use super::security::{Secret, SetSecretInput};

#[derive(InputObject)]
pub struct CreatePipelineInput {
    /// Tenant id or name; default: the caller's.
    pub tenant: Option<String>,
    pub name: String,
    pub provider: Provider,
    /// For `GIT`: a clone URL or a local path.
    pub repository: String,
    /// The pipeline file's YAML text.
    pub file: String,
    /// Secret that signs webhook deliveries (write-only).
    pub webhook_secret: Option<String>,
}

#[derive(InputObject)]
pub struct UpdatePipelineInput {
    pub id: ID,
    pub name: Option<String>,
    pub repository: Option<String>,
    pub file: Option<String>,
    pub webhook_secret: Option<String>,
}

#[derive(InputObject)]
pub struct TriggerRunInput {
    pub pipeline: ID,
    pub sha: String,
    #[graphql(name = "ref")]
    pub git_ref: String,
    /// The same (pipeline, sha, ref, key) returns the run created first.
    pub idempotency_key: Option<String>,
    /// Ignore cache hits.
    #[graphql(default)]
    pub no_cache: bool,
    /// Higher runs first within its tenant.
    pub priority: Option<i32>,
}

#[derive(InputObject)]
pub struct RegisterWorkerInput {
    pub name: String,
    #[graphql(default)]
    pub queues: Vec<String>,
    #[graphql(default)]
    pub labels: Vec<String>,
    #[graphql(default = 1)]
    pub capacity: i32,
}

/// A leased attempt with what the worker needs to run it.
#[derive(SimpleObject)]
pub struct Lease {
    pub attempt: Attempt,
    pub task: Task,
    /// Present on every later call of the worker for this attempt.
    pub lease_token: String,
    /// The task's resolved spec (steps, env, timeout, artifacts) as JSON.
    pub spec: async_graphql::Json<serde_json::Value>,
    pub repository: String,
    pub sha: String,
    #[graphql(name = "ref")]
    pub git_ref: String,
    /// Secret values injected into the spec's env: mask them in the log.
    pub masks: Vec<String>,
}

/// What a heartbeat tells the worker.
#[derive(SimpleObject)]
pub struct HeartbeatResult {
    /// Stop the attempt now: its run was cancelled.
    pub cancel: bool,
    pub lease_expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(InputObject)]
pub struct LogChunkInput {
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    pub data: String,
}

#[derive(InputObject)]
pub struct CompleteAttemptInput {
    pub attempt: ID,
    pub lease_token: String,
    /// Null when the attempt succeeded.
    pub error_kind: Option<ErrorKind>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    /// The last output, written with the result in one transaction.
    #[graphql(default)]
    pub log: Vec<LogChunkInput>,
}

fn pieces(chunks: Vec<LogChunkInput>) -> Vec<LogPiece> {
    chunks
        .into_iter()
        .map(|c| LogPiece {
            stream: c.stream,
            data: c.data,
        })
        .collect()
}

fn domain_kind(k: ErrorKind) -> domain::ErrorKind {
    match k {
        ErrorKind::Exit => domain::ErrorKind::Exit,
        ErrorKind::Timeout => domain::ErrorKind::Timeout,
        ErrorKind::Lost => domain::ErrorKind::Lost,
        ErrorKind::Cancelled => domain::ErrorKind::Cancelled,
        ErrorKind::Infra => domain::ErrorKind::Infra,
    }
}

#[Object]
impl Mutation {
    /// Creates a tenant (admin).
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        input: CreateTenantInput,
    ) -> async_graphql::Result<Tenant> {
        let s = service(ctx)?;
        s.create_tenant(
            caller(ctx)?,
            TenantInput {
                name: input.name,
                weight: input.weight,
                max_running: input.max_running,
                trigger_rate: input.trigger_rate,
                trigger_burst: input.trigger_burst,
            },
        )
        .await
        .map(Tenant)
        .map_err(gql)
    }

    /// Creates an API token (admin); the secret is returned this once.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        input: CreateApiTokenInput,
    ) -> async_graphql::Result<CreatedApiToken> {
        let s = service(ctx)?;
        let scopes = input
            .scopes
            .into_iter()
            .map(Into::into)
            .fold(Scopes::default(), Scopes::with);
        let created = s
            .create_api_token(caller(ctx)?, input.tenant.as_deref(), &input.name, scopes)
            .await
            .map_err(gql)?;
        Ok(CreatedApiToken {
            token: created.token,
            api_token: created.record.into(),
        })
    }

    /// Revokes an API token (admin): every later request with it is refused.
    async fn revoke_api_token(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ApiToken> {
        let s = service(ctx)?;
        s.revoke_api_token(caller(ctx)?, &id)
            .await
            .map(Into::into)
            .map_err(gql)
    }

    /// Creates or replaces a secret (write); the value is never returned.
    async fn set_secret(
        &self,
        ctx: &Context<'_>,
        input: SetSecretInput,
    ) -> async_graphql::Result<Secret> {
        let s = service(ctx)?;
        s.set_secret(
            caller(ctx)?,
            crate::service::SecretInput {
                tenant: input.tenant,
                pipeline: input.pipeline.map(|p| p.0),
                name: input.name,
                value: input.value,
            },
        )
        .await
        .map(Into::into)
        .map_err(gql)
    }

    /// Deletes a secret (write).
    async fn delete_secret(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let s = service(ctx)?;
        s.delete_secret(caller(ctx)?, &id).await.map_err(gql)
    }

    /// Creates a pipeline from its YAML file; an invalid file is refused whole.
    async fn create_pipeline(
        &self,
        ctx: &Context<'_>,
        input: CreatePipelineInput,
    ) -> async_graphql::Result<Pipeline> {
        let s = service(ctx)?;
        s.create_pipeline(
            caller(ctx)?,
            PipelineInput {
                tenant: input.tenant,
                name: input.name,
                provider: input.provider.as_str().to_owned(),
                repository: input.repository,
                file: input.file,
                webhook_secret: input.webhook_secret,
            },
        )
        .await
        .map(Pipeline)
        .map_err(gql)
    }

    async fn update_pipeline(
        &self,
        ctx: &Context<'_>,
        input: UpdatePipelineInput,
    ) -> async_graphql::Result<Pipeline> {
        let s = service(ctx)?;
        s.update_pipeline(
            caller(ctx)?,
            PipelineUpdate {
                id: input.id.0,
                name: input.name,
                repository: input.repository,
                file: input.file,
                webhook_secret: input.webhook_secret,
            },
        )
        .await
        .map(Pipeline)
        .map_err(gql)
    }

    /// Plans and queues a run of a pipeline for a commit.
    async fn trigger_run(
        &self,
        ctx: &Context<'_>,
        input: TriggerRunInput,
    ) -> async_graphql::Result<Run> {
        let s = service(ctx)?;
        s.trigger_run(
            caller(ctx)?,
            TriggerInput {
                pipeline: input.pipeline.0,
                sha: input.sha,
                git_ref: input.git_ref,
                idempotency_key: input.idempotency_key,
                no_cache: input.no_cache,
                priority: input.priority,
                trigger_kind: None,
            },
        )
        .await
        .map(Run)
        .map_err(gql)
    }

    async fn cancel_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Run> {
        let s = service(ctx)?;
        s.cancel_run(caller(ctx)?, &id).await.map(Run).map_err(gql)
    }

    /// Retries a failed task with a new attempt.
    async fn retry_task(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Task> {
        let s = service(ctx)?;
        s.retry_task(caller(ctx)?, &id).await.map(Task).map_err(gql)
    }

    /// A new run of the same commit in which only what failed runs again.
    async fn rerun_failed(&self, ctx: &Context<'_>, run: ID) -> async_graphql::Result<Run> {
        let s = service(ctx)?;
        s.rerun_failed(caller(ctx)?, &run)
            .await
            .map(Run)
            .map_err(gql)
    }

    /// Registers a worker (agent scope).
    async fn register_worker(
        &self,
        ctx: &Context<'_>,
        input: RegisterWorkerInput,
    ) -> async_graphql::Result<Worker> {
        let s = service(ctx)?;
        s.register_worker(
            caller(ctx)?,
            WorkerInput {
                name: input.name,
                queues: input.queues,
                labels: input.labels,
                capacity: input.capacity,
                kind: "agent".into(),
            },
        )
        .await
        .map(Worker)
        .map_err(gql)
    }

    /// Leases the next attempt of the worker's queues, waiting up to `waitMs` (at most
    /// 30 s) for one. The attempt is `RUNNING` on the worker's behalf from this moment.
    async fn lease_attempt(
        &self,
        ctx: &Context<'_>,
        worker: ID,
        queue: Option<String>,
        #[graphql(default)] queues: Vec<String>,
        #[graphql(default = 0)] wait_ms: i32,
    ) -> async_graphql::Result<Option<Lease>> {
        let s = service(ctx)?;
        let mut qs = queues;
        if let Some(q) = queue {
            qs.insert(0, q);
        }
        let wait = std::time::Duration::from_millis(wait_ms.clamp(0, 30_000) as u64);
        let leased = s
            .lease_attempt(caller(ctx)?, &worker, &qs, wait)
            .await
            .map_err(gql)?;
        Ok(leased.map(|l| Lease {
            spec: async_graphql::Json(serde_json::to_value(&l.spec).unwrap_or_default()),
            repository: l.run.repository.clone(),
            sha: l.run.sha.clone(),
            git_ref: l.run.git_ref.clone(),
            masks: l.masks,
            attempt: Attempt(l.attempt),
            task: Task(l.task),
            lease_token: l.lease_token,
        }))
    }

    /// Renews a lease; the reply says whether to stop.
    async fn heartbeat(
        &self,
        ctx: &Context<'_>,
        attempt: ID,
        lease_token: String,
    ) -> async_graphql::Result<HeartbeatResult> {
        let s = service(ctx)?;
        let r = s
            .heartbeat(caller(ctx)?, &attempt, &lease_token)
            .await
            .map_err(gql)?;
        Ok(HeartbeatResult {
            cancel: r.cancel,
            lease_expires_at: crate::clock::to_datetime(r.lease_expires_at),
        })
    }

    /// Appends output to an attempt's log; returns the log's length in bytes.
    async fn append_log(
        &self,
        ctx: &Context<'_>,
        attempt: ID,
        lease_token: String,
        chunks: Vec<LogChunkInput>,
    ) -> async_graphql::Result<i64> {
        let s = service(ctx)?;
        s.append_log(caller(ctx)?, &attempt, &lease_token, pieces(chunks))
            .await
            .map_err(gql)
    }

    /// Records how an attempt ended.
    async fn complete_attempt(
        &self,
        ctx: &Context<'_>,
        input: CompleteAttemptInput,
    ) -> async_graphql::Result<Attempt> {
        let s = service(ctx)?;
        let outcome = match input.error_kind {
            None => AttemptOutcome::Succeeded,
            Some(k) => AttemptOutcome::Failed {
                kind: domain_kind(k),
                exit_code: input.exit_code,
                message: input.message.unwrap_or_default(),
            },
        };
        s.complete_attempt(
            caller(ctx)?,
            &input.attempt,
            &input.lease_token,
            outcome,
            pieces(input.log),
        )
        .await
        .map(Attempt)
        .map_err(gql)
    }
}
