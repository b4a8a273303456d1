//! Every request the dashboard makes goes through this module.
//!
//! The server speaks GraphQL at `POST /graphql` on the same origin. Views never
//! build requests themselves: they call the typed functions here and get back
//! either plain data or an [`ApiError`] carrying the GraphQL error `message` and
//! `extensions.code`, so every failure is rendered the same way. Subscriptions (WebSocket,
//! `graphql-transport-ws`) are in [`live`] and share the types defined here.

pub mod live;

use std::fmt;

use gloo_net::http::Request;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const GRAPHQL_PATH: &str = "/graphql";

/// The error code the server uses when the bearer token is missing or rejected.
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";

const PIPELINE_FIELDS: &str = "id name provider repository";
const RUN_FIELDS: &str = "id number state sha ref trigger createdAt startedAt finishedAt \
    pipeline { id name }";
const RUN_LINK_FIELDS: &str = "id number state pipeline { id name }";
const ATTEMPT_FIELDS: &str = "id index state errorKind errorMessage exitCode worker \
    scheduledAt startedAt finishedAt backoffMs logBytes";

/// Everything the shell needs once signed in.
#[derive(Debug, Clone, PartialEq)]
pub struct Home {
    pub version: String,
    pub pipelines: Vec<Pipeline>,
    /// Empty when the token may not list tenants (only admins may).
    pub tenants: Vec<Tenant>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    /// A GraphQL enum value such as `GIT`; kept as a string so a provider added
    /// on the server does not break an older dashboard.
    pub provider: String,
    pub repository: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PipelineRef {
    pub id: String,
    pub name: String,
}

/// One row of the runs table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub number: i64,
    pub state: String,
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub trigger: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub pipeline: PipelineRef,
}

/// A run named from another run: the child of a trigger job, or the run of a parent task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunLink {
    pub id: String,
    pub number: i64,
    pub state: String,
    pub pipeline: PipelineRef,
}

/// The trigger job that started a run, in its own run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ParentTask {
    pub id: String,
    pub name: String,
    pub run: RunLink,
}

/// A run with its tasks and their attempts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    #[serde(rename = "parentTask", default)]
    pub parent_task: Option<ParentTask>,
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    pub name: String,
    pub job_id: String,
    pub state: String,
    pub queue: String,
    pub needs: Vec<String>,
    pub waiting_reason: Option<String>,
    pub max_attempts: i64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// For a trigger job: the run it started.
    #[serde(default)]
    pub child_run: Option<RunLink>,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub id: String,
    pub index: i64,
    pub state: String,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub exit_code: Option<i64>,
    pub worker: Option<String>,
    pub scheduled_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub backoff_ms: i64,
    pub log_bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: String,
    pub at: String,
    pub entity: String,
    pub entity_id: String,
    pub run: String,
    pub task: Option<String>,
    pub attempt: Option<String>,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
}

pub const EVENT_FIELDS: &str = "seq at entity entityId run task attempt from to reason";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub queues: Vec<String>,
    pub capacity: i64,
    pub state: String,
    pub last_heartbeat_at: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Queue {
    pub name: String,
    pub depth: i64,
}

/// The fleet at one moment: what the status bar and the load view poll.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Fleet {
    pub queues: Vec<Queue>,
    pub workers: Vec<Worker>,
}

/// Filters of the runs table; empty strings mean "any".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunFilter {
    pub pipeline: String,
    pub tenant: String,
    pub state: String,
    pub git_ref: String,
    pub sha: String,
}

impl RunFilter {
    fn to_json(&self) -> Value {
        let mut filter = serde_json::Map::new();
        for (key, value) in [
            ("pipeline", &self.pipeline),
            ("tenant", &self.tenant),
            ("state", &self.state),
            ("ref", &self.git_ref),
            ("sha", &self.sha),
        ] {
            if !value.is_empty() {
                filter.insert(key.to_owned(), Value::String(value.clone()));
            }
        }
        Value::Object(filter)
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    pub next: Option<String>,
}

/// Loads the server version, pipelines and (for admins) tenants.
pub async fn home(token: &str) -> Result<Home, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        server_info: ServerInfo,
        pipelines: Connection<Pipeline>,
    }
    let query = format!(
        "query Home {{ serverInfo {{ version }} pipelines(first: 500) {{ edges {{ node {{ {PIPELINE_FIELDS} }} }} }} }}"
    );
    let data: Data = graphql(token, &query, json!({})).await?;
    #[derive(Deserialize)]
    struct Tenants {
        tenants: Vec<Tenant>,
    }
    // Listing tenants needs the admin scope; other tokens just get no tenant list.
    let tenants = graphql::<Tenants>(token, "query Tenants { tenants { id name } }", json!({}))
        .await
        .map(|t| t.tenants)
        .unwrap_or_default();
    Ok(Home {
        version: data.server_info.version,
        pipelines: nodes(data.pipelines),
        tenants,
    })
}

pub async fn runs(
    token: &str,
    filter: &RunFilter,
    first: usize,
    after: Option<&str>,
) -> Result<RunPage, ApiError> {
    #[derive(Deserialize)]
    struct Data {
        runs: Connection<RunSummary>,
    }
    let query = format!(
        "query Runs($f: RunFilterInput, $first: Int, $after: String) {{ runs(filter: $f, first: $first, after: $after) \
         {{ pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {RUN_FIELDS} }} }} }} }}"
    );
    let data: Data = graphql(
        token,
        &query,
        json!({ "f": filter.to_json(), "first": first, "after": after }),
    )
    .await?;
    let next = data
        .runs
        .page_info
        .as_ref()
        .filter(|p| p.has_next_page)
        .and_then(|p| p.end_cursor.clone());
    Ok(RunPage {
        runs: nodes(data.runs),
        next,
    })
}

pub async fn run(token: &str, id: &str) -> Result<RunDetail, ApiError> {
    #[derive(Deserialize)]
    struct Data {
        run: RunDetail,
    }
    let query = format!(
        "query Run($id: ID!) {{ run(id: $id) {{ {RUN_FIELDS} \
         parentTask {{ id name run {{ {RUN_LINK_FIELDS} }} }} \
         tasks {{ id name jobId state queue needs waitingReason maxAttempts startedAt finishedAt \
         childRun {{ {RUN_LINK_FIELDS} }} attempts {{ {ATTEMPT_FIELDS} }} }} }} }}"
    );
    let data: Data = graphql(token, &query, json!({ "id": id })).await?;
    Ok(data.run)
}

/// The newest events after `after` (oldest first) and whether more follow.
pub async fn events(
    token: &str,
    after: Option<&str>,
    first: usize,
) -> Result<(Vec<Event>, bool), ApiError> {
    #[derive(Deserialize)]
    struct Data {
        events: Connection<Event>,
    }
    let query = format!(
        "query Events($after: String, $first: Int) {{ events(after: $after, first: $first) \
         {{ pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {EVENT_FIELDS} }} }} }} }}"
    );
    let data: Data = graphql(token, &query, json!({ "after": after, "first": first })).await?;
    let more = data
        .events
        .page_info
        .as_ref()
        .is_some_and(|p| p.has_next_page);
    Ok((nodes(data.events), more))
}

/// The sequence number of the newest event, to follow the log from now on.
///
/// The API has no "last event" query: the newest run's last event is a close lower
/// bound, and the few events after it are paged through.
pub async fn event_head(token: &str) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct Data {
        runs: Connection<NewestRun>,
    }
    #[derive(Deserialize)]
    struct NewestRun {
        events: Vec<SeqOnly>,
    }
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: String,
    }
    let data: Data = graphql(
        token,
        "query Head { runs(first: 1) { edges { node { events(first: 100000) { seq } } } } }",
        json!({}),
    )
    .await?;
    let mut head = data
        .runs
        .edges
        .into_iter()
        .next()
        .and_then(|edge| edge.node.events.into_iter().last())
        .map(|event| event.seq);
    loop {
        let (page, more) = events(token, head.as_deref(), 1000).await?;
        if let Some(last) = page.last() {
            head = Some(last.seq.clone());
        }
        if !more {
            return Ok(head);
        }
    }
}

pub async fn fleet(token: &str) -> Result<Fleet, ApiError> {
    graphql(
        token,
        "query Fleet { queues { name depth } workers { id name kind queues capacity state lastHeartbeatAt } }",
        json!({}),
    )
    .await
}

pub async fn trigger_run(
    token: &str,
    pipeline: &str,
    git_ref: &str,
    sha: &str,
) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        trigger_run: Id,
    }
    let data: Data = graphql(
        token,
        "mutation Trigger($p: ID!, $r: String!, $s: String!) { triggerRun(input: {pipeline: $p, ref: $r, sha: $s}) { id } }",
        json!({ "p": pipeline, "r": git_ref, "s": sha }),
    )
    .await?;
    Ok(data.trigger_run.id)
}

pub async fn cancel_run(token: &str, run: &str) -> Result<(), ApiError> {
    graphql::<Value>(
        token,
        "mutation Cancel($id: ID!) { cancelRun(id: $id) { id } }",
        json!({ "id": run }),
    )
    .await
    .map(drop)
}

pub async fn retry_task(token: &str, task: &str) -> Result<(), ApiError> {
    graphql::<Value>(
        token,
        "mutation Retry($id: ID!) { retryTask(id: $id) { id } }",
        json!({ "id": task }),
    )
    .await
    .map(drop)
}

/// Starts a new run in which only what failed runs again; returns its id.
pub async fn rerun_failed(token: &str, run: &str) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        rerun_failed: Id,
    }
    let data: Data = graphql(
        token,
        "mutation Rerun($id: ID!) { rerunFailed(run: $id) { id } }",
        json!({ "id": run }),
    )
    .await?;
    Ok(data.rerun_failed.id)
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

fn nodes<T>(connection: Connection<T>) -> Vec<T> {
    connection.edges.into_iter().map(|edge| edge.node).collect()
}

/// A failed request, shaped like a GraphQL error so the UI has one code path.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub message: String,
    pub code: Option<String>,
}

impl ApiError {
    fn new(message: impl Into<String>, code: &str) -> Self {
        Self {
            message: message.into(),
            code: Some(code.to_owned()),
        }
    }

    pub fn is_unauthenticated(&self) -> bool {
        self.code.as_deref() == Some(UNAUTHENTICATED)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} ({code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
struct ServerInfo {
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Connection<T> {
    edges: Vec<Edge<T>>,
    page_info: Option<PageInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Edge<T> {
    node: T,
}

#[derive(Serialize)]
struct GraphQlRequest<'a> {
    query: &'a str,
    variables: Value,
}

#[derive(Deserialize)]
struct GraphQlResponse<T> {
    data: Option<T>,
    #[serde(default)]
    errors: Vec<GraphQlError>,
}

#[derive(Deserialize)]
struct GraphQlError {
    message: String,
    #[serde(default)]
    extensions: Option<Extensions>,
}

#[derive(Deserialize)]
struct Extensions {
    code: Option<String>,
}

impl From<GraphQlError> for ApiError {
    fn from(error: GraphQlError) -> Self {
        Self {
            message: error.message,
            code: error.extensions.and_then(|ext| ext.code),
        }
    }
}

async fn graphql<T: DeserializeOwned>(
    token: &str,
    query: &str,
    variables: Value,
) -> Result<T, ApiError> {
    let request = Request::post(GRAPHQL_PATH)
        .header("Authorization", &format!("Bearer {token}"))
        .json(&GraphQlRequest { query, variables })
        .map_err(|err| ApiError::new(err.to_string(), "CLIENT_ERROR"))?;
    let response = request
        .send()
        .await
        .map_err(|err| ApiError::new(err.to_string(), "NETWORK_ERROR"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|err| ApiError::new(err.to_string(), "NETWORK_ERROR"))?;

    // A GraphQL error body is more precise than the HTTP status, so it wins;
    // the status only matters when something in front of the server (a proxy,
    // an auth layer) answered with a body that is not GraphQL.
    match serde_json::from_str::<GraphQlResponse<T>>(&body) {
        Ok(parsed) => {
            if let Some(error) = parsed.errors.into_iter().next() {
                return Err(error.into());
            }
            parsed
                .data
                .ok_or_else(|| ApiError::new("the server returned no data", "BAD_RESPONSE"))
        }
        Err(_) if status == 401 => Err(ApiError::new("sign in to continue", UNAUTHENTICATED)),
        Err(_) if !(200..300).contains(&status) => Err(ApiError::new(
            format!("the server answered HTTP {status}"),
            "HTTP_ERROR",
        )),
        Err(err) => Err(ApiError::new(
            format!("could not read the server's answer: {err}"),
            "BAD_RESPONSE",
        )),
    }
}
