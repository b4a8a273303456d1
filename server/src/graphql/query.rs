//! Queries.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::types::{
    Attempt, Event, Pipeline, Queue, Run, Scope, ServerInfo, Task, Tenant, Worker, cursor, page,
    parse_seq,
};
use super::{caller, gql, service};
use crate::service::{EventFilter, RunFilter};

#[derive(Default)]
pub struct Query;

/// The window of `queueStats` without `since`.
const DEFAULT_STATS_WINDOW_MS: i64 = 300_000;

/// Filters for `runs`.
#[derive(InputObject, Default)]
pub struct RunFilterInput {
    pub pipeline: Option<ID>,
    pub tenant: Option<ID>,
    pub state: Option<super::types::RunState>,
    #[graphql(name = "ref")]
    pub git_ref: Option<String>,
    pub sha: Option<String>,
}

/// Filters for `events`.
#[derive(InputObject, Default)]
pub struct EventFilterInput {
    pub tenant: Option<ID>,
    pub pipeline: Option<ID>,
    pub run: Option<ID>,
    /// The state entered, as in `Event.to` (e.g. `FAILED`).
    pub state: Option<String>,
}

impl From<EventFilterInput> for EventFilter {
    fn from(f: EventFilterInput) -> Self {
        EventFilter {
            tenant: f.tenant.map(|i| i.0),
            pipeline: f.pipeline.map(|i| i.0),
            run: f.run.map(|i| i.0),
            state: f.state.map(|s| s.to_ascii_lowercase()),
        }
    }
}

/// Who is calling.
#[derive(SimpleObject)]
pub struct Viewer {
    pub tenant: Tenant,
    pub scopes: Vec<Scope>,
}

/// Load of one queue: the work waiting now, and what happened over time in buckets of a
/// second (a minute for what is older than 24 hours).
#[derive(SimpleObject)]
pub struct QueueStats {
    pub queue: String,
    /// Attempts waiting for a worker now.
    pub depth: i64,
    /// Start of the first bucket.
    pub since: chrono::DateTime<chrono::Utc>,
    /// The whole queue (as far as the caller may see it), oldest bucket first.
    pub buckets: Vec<LoadBucket>,
    /// One series per tenant with attempts in the window.
    pub tenants: Vec<TenantLoad>,
}

/// One time bucket of a queue's load.
#[derive(SimpleObject)]
pub struct LoadBucket {
    /// Start of the bucket.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Width of the bucket: 1, or 60 for buckets older than 24 hours.
    pub seconds: i32,
    /// Attempts that entered the queue.
    pub arrivals: i64,
    /// Attempts that started.
    pub starts: i64,
    /// Attempts that ended, in any terminal state.
    pub completions: i64,
    /// Attempts waiting at the end of the bucket.
    pub depth: i64,
    /// Median queue wait (entered the queue → started) of the bucket's starts, in ms.
    pub wait_p50_ms: Option<i64>,
    /// 99th percentile of the same waits, in ms.
    pub wait_p99_ms: Option<i64>,
}

/// The load series of one tenant in a queue.
#[derive(SimpleObject)]
pub struct TenantLoad {
    pub tenant: ID,
    pub name: String,
    pub buckets: Vec<LoadBucket>,
}

impl QueueStats {
    pub(crate) fn new(depth: i64, since: i64, load: crate::service::QueueLoad) -> QueueStats {
        let buckets = |bs: Vec<crate::service::LoadBucket>| -> Vec<LoadBucket> {
            bs.into_iter()
                .map(|b| LoadBucket {
                    at: crate::clock::to_datetime(b.at_ms),
                    seconds: (b.width_ms / 1000) as i32,
                    arrivals: b.arrivals as i64,
                    starts: b.starts as i64,
                    completions: b.completions as i64,
                    depth: b.depth as i64,
                    wait_p50_ms: b.wait_p50_ms,
                    wait_p99_ms: b.wait_p99_ms,
                })
                .collect()
        };
        let since = load.buckets.first().map_or(since, |b| b.at_ms);
        QueueStats {
            queue: load.queue,
            depth,
            since: crate::clock::to_datetime(since),
            buckets: buckets(load.buckets),
            tenants: load
                .tenants
                .into_iter()
                .map(|t| TenantLoad {
                    tenant: ID(t.tenant_id),
                    name: t.tenant_name,
                    buckets: buckets(t.buckets),
                })
                .collect(),
        }
    }
}

fn state_name<T: std::fmt::Debug>(s: T) -> String {
    // Enum variant names are CamelCase; stored states are snake_case.
    let name = format!("{s:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[Object]
impl Query {
    /// The server's version and node.
    async fn server_info(&self, ctx: &Context<'_>) -> async_graphql::Result<ServerInfo> {
        caller(ctx)?;
        Ok(ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node: service(ctx)?.node().to_owned(),
        })
    }

    /// The caller: its tenant and scopes.
    async fn viewer(&self, ctx: &Context<'_>) -> async_graphql::Result<Viewer> {
        let c = caller(ctx)?;
        let s = service(ctx)?;
        let tenant = s.tenant(c, &c.tenant_id.to_string()).await.map_err(gql)?;
        Ok(Viewer {
            tenant: Tenant(tenant),
            scopes: c.scopes.iter().map(Into::into).collect(),
        })
    }

    async fn tenants(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Tenant>> {
        let s = service(ctx)?;
        Ok(s.tenants(caller(ctx)?)
            .await
            .map_err(gql)?
            .into_iter()
            .map(Tenant)
            .collect())
    }

    async fn pipelines(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Pipeline, EmptyFields, EmptyFields>> {
        let s = service(ctx)?;
        let p = page(first, after)?;
        let all = s.pipelines(caller(ctx)?).await.map_err(gql)?;
        let size = p.first.unwrap_or(50).clamp(1, s.config().max_page_size);
        let start = match &p.after {
            Some(id) => all
                .iter()
                .position(|x| &x.id == id)
                .map(|i| i + 1)
                .unwrap_or(all.len()),
            None => 0,
        };
        let rest: Vec<_> = all.into_iter().skip(start).collect();
        let more = rest.len() > size;
        let mut conn = Connection::new(start > 0, more);
        conn.edges.extend(
            rest.into_iter()
                .take(size)
                .map(|m| Edge::new(cursor(&m.id), Pipeline(m))),
        );
        Ok(conn)
    }

    async fn pipeline(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Pipeline> {
        let s = service(ctx)?;
        s.pipeline(caller(ctx)?, &id)
            .await
            .map(Pipeline)
            .map_err(gql)
    }

    /// Runs, newest first.
    async fn runs(
        &self,
        ctx: &Context<'_>,
        filter: Option<RunFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Run, EmptyFields, EmptyFields>> {
        let s = service(ctx)?;
        let p = page(first, after)?;
        let f = filter.unwrap_or_default();
        let has_prev = p.after.is_some();
        let (rows, more) = s
            .runs(
                caller(ctx)?,
                RunFilter {
                    pipeline: f.pipeline.map(|i| i.0),
                    tenant: f.tenant.map(|i| i.0),
                    state: f.state.map(state_name),
                    git_ref: f.git_ref,
                    sha: f.sha,
                },
                p,
            )
            .await
            .map_err(gql)?;
        let mut conn = Connection::new(has_prev, more);
        conn.edges
            .extend(rows.into_iter().map(|m| Edge::new(cursor(&m.id), Run(m))));
        Ok(conn)
    }

    async fn run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Run> {
        let s = service(ctx)?;
        s.run(caller(ctx)?, &id).await.map(Run).map_err(gql)
    }

    async fn task(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Task> {
        let s = service(ctx)?;
        s.task(caller(ctx)?, &id).await.map(Task).map_err(gql)
    }

    async fn attempt(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Attempt> {
        let s = service(ctx)?;
        s.attempt(caller(ctx)?, &id).await.map(Attempt).map_err(gql)
    }

    async fn workers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Worker>> {
        let s = service(ctx)?;
        Ok(s.workers(caller(ctx)?)
            .await
            .map_err(gql)?
            .into_iter()
            .map(Worker)
            .collect())
    }

    /// Every queue with attempts, and how many wait in it.
    async fn queues(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Queue>> {
        let s = service(ctx)?;
        Ok(s.queues(caller(ctx)?)
            .await
            .map_err(gql)?
            .into_iter()
            .map(|(name, depth)| Queue { name, depth })
            .collect())
    }

    /// Load of one queue: its depth now, and its buckets from `since` until now.
    async fn queue_stats(
        &self,
        ctx: &Context<'_>,
        queue: String,
        #[graphql(desc = "Start of the series; the last 5 minutes when absent.")] since: Option<
            chrono::DateTime<chrono::Utc>,
        >,
    ) -> async_graphql::Result<QueueStats> {
        let s = service(ctx)?;
        let c = caller(ctx)?;
        let now = s.now_ms();
        let since = since.map_or(now - DEFAULT_STATS_WINDOW_MS, |t| t.timestamp_millis());
        let depth = s.queue_depth(c, &queue).await.map_err(gql)?;
        let load = s.queue_load(c, &queue, since, now + 1).await.map_err(gql)?;
        Ok(QueueStats::new(depth, since, load))
    }

    /// API tokens (admin), of one tenant or of every tenant; never their secrets.
    async fn api_tokens(
        &self,
        ctx: &Context<'_>,
        tenant: Option<String>,
    ) -> async_graphql::Result<Vec<super::security::ApiToken>> {
        let s = service(ctx)?;
        Ok(s.api_tokens(caller(ctx)?, tenant.as_deref())
            .await
            .map_err(gql)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Secrets by name (never their values): the caller's tenant's, or those a pipeline
    /// sees.
    async fn secrets(
        &self,
        ctx: &Context<'_>,
        pipeline: Option<ID>,
    ) -> async_graphql::Result<Vec<super::security::Secret>> {
        let s = service(ctx)?;
        Ok(
            s.secrets(caller(ctx)?, pipeline.as_ref().map(|p| p.as_str()))
                .await
                .map_err(gql)?
                .into_iter()
                .map(Into::into)
                .collect(),
        )
    }

    /// The delivery log of a pipeline's outbound status webhooks, newest first.
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        pipeline: ID,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<super::live::WebhookDelivery>> {
        let s = service(ctx)?;
        Ok(
            s.webhook_deliveries(caller(ctx)?, &pipeline, first.map(|f| f.max(1) as usize))
                .await
                .map_err(gql)?
                .into_iter()
                .map(super::live::WebhookDelivery)
                .collect(),
        )
    }

    /// The event log after `after` (a seq), oldest first.
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        first: Option<i32>,
        filter: Option<EventFilterInput>,
    ) -> async_graphql::Result<Connection<String, Event, EmptyFields, EmptyFields>> {
        let s = service(ctx)?;
        let after_seq = parse_seq(after.as_deref())?;
        let (rows, more) = s
            .events(
                caller(ctx)?,
                filter.unwrap_or_default().into(),
                after_seq,
                first.map(|f| f.max(1) as usize),
            )
            .await
            .map_err(gql)?;
        let mut conn = Connection::new(after_seq > 0, more);
        conn.edges.extend(
            rows.into_iter()
                .map(|e| Edge::new(e.seq.to_string(), Event(e))),
        );
        Ok(conn)
    }
}
