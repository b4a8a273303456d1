//! Outbound status webhooks: every run and task state change of a pipeline is POSTed to
//! the URLs of its file's `notify:` list, signed with HMAC-SHA256 of the body under the
//! pipeline's webhook secret (`X-Gantry-Signature: sha256=<hex>`), retried with backoff,
//! and recorded in `status_deliveries` (the `webhookDeliveries` query).
//!
//! Each event is delivered by the node that committed it (every node sees every event
//! through the bus, so this makes one delivery per event across replicas). Deliveries are
//! at least once: a receiver deduplicates by `X-Gantry-Delivery`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect, Set,
};
use sha2::Sha256;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{Caller, Scope, Service, ServiceError, event_json};
use crate::domain::{Entity, EventRecord};
use crate::pipeline::{NotifyFormat, NotifySpec};
use crate::store::entity::{pipeline, run, status_delivery};

/// Tunables of outbound webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Tries per delivery, the first included.
    pub max_attempts: i32,
    /// Wait before the second try; doubles after each failure.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait for a receiver's answer.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The signature header value of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("BUG: HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The GitHub commit status state of a run state.
fn github_state(run_state: &str) -> &'static str {
    match run_state {
        "succeeded" => "success",
        "failed" => "failure",
        "cancelled" => "error",
        _ => "pending",
    }
}

/// The body for one target, or None when the format does not report this event.
fn payload(
    spec: &NotifySpec,
    e: &EventRecord,
    p: &pipeline::Model,
    r: &run::Model,
) -> Option<serde_json::Value> {
    match spec.format {
        NotifyFormat::Gantry => Some(serde_json::json!({
            "event": event_json(e),
            "pipeline": { "id": p.id, "name": p.name },
            "run": { "id": r.id, "number": r.number, "repository": r.repository, "sha": r.sha, "ref": r.git_ref },
        })),
        NotifyFormat::GithubStatus if e.entity == Entity::Run => Some(serde_json::json!({
            "sha": r.sha,
            "state": github_state(&e.to),
            "description": format!("run #{} {}", r.number, e.to),
            "context": spec.context.clone().unwrap_or_else(|| format!("gantry/{}", p.name)),
            "target_url": serde_json::Value::Null,
        })),
        NotifyFormat::GithubStatus => None,
    }
}

/// Pipelines' `notify:` lists, parsed once per version of the file: every task event
/// looks its list up, and parsing a large file for each would cost more than the task.
#[derive(Default)]
struct NotifyLists {
    /// Pipeline id → (`updated_at` of the parsed version, its list).
    parsed: HashMap<String, (i64, Arc<Vec<NotifySpec>>)>,
}

/// Pipelines remembered at most; beyond it the memory starts over.
const NOTIFY_LISTS_KEPT: usize = 1024;

/// Runs joined to their pipeline.
fn run_pipeline() -> sea_orm::RelationDef {
    run::Entity::belongs_to(pipeline::Entity)
        .from(run::Column::PipelineId)
        .to(pipeline::Column::Id)
        .into()
}

impl NotifyLists {
    /// Whether this version of the pipeline is known to notify no one.
    fn known_empty(&self, pipeline_id: &str, updated_at: i64) -> bool {
        self.parsed
            .get(pipeline_id)
            .is_some_and(|(version, list)| *version == updated_at && list.is_empty())
    }

    fn of(&mut self, p: &pipeline::Model) -> Arc<Vec<NotifySpec>> {
        if let Some((version, list)) = self.parsed.get(&p.id)
            && *version == p.updated_at
        {
            return list.clone();
        }
        // A file that no longer parses notifies no one; it was valid when saved.
        let list = Arc::new(
            crate::pipeline::parse(&p.file)
                .map(|f| f.notify)
                .unwrap_or_default(),
        );
        if self.parsed.len() >= NOTIFY_LISTS_KEPT {
            self.parsed.clear();
        }
        self.parsed
            .insert(p.id.clone(), (p.updated_at, list.clone()));
        list
    }
}

/// Follows this node's committed events and delivers them until `shutdown`.
pub async fn run(service: Service, config: WebhookConfig, shutdown: CancellationToken) {
    let mut live = service.bus().subscribe();
    let mut lists = NotifyLists::default();
    let http = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client could not start");
            return;
        }
    };
    loop {
        let e = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = live.recv() => e,
        };
        let e = match e {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "webhook dispatcher fell behind the event bus");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if e.node != service.node() || e.entity == Entity::Attempt {
            continue;
        }
        if let Err(err) = service
            .enqueue_webhooks(&e, &http, &config, &mut lists)
            .await
        {
            tracing::warn!(error = %err, seq = e.seq, "webhook delivery not started");
        }
    }
}

impl Service {
    async fn enqueue_webhooks(
        &self,
        e: &EventRecord,
        http: &reqwest::Client,
        config: &WebhookConfig,
        lists: &mut NotifyLists,
    ) -> Result<(), ServiceError> {
        // Most pipelines notify no one: their version is all that needs reading, not the
        // run and the whole file, at every task event.
        let version: Option<(String, i64)> = run::Entity::find_by_id(e.run_id.clone())
            .select_only()
            .column(pipeline::Column::Id)
            .column(pipeline::Column::UpdatedAt)
            .join(JoinType::InnerJoin, run_pipeline())
            .into_tuple()
            .one(self.store().db())
            .await?;
        match version {
            None => return Ok(()),
            Some((id, at)) if lists.known_empty(&id, at) => return Ok(()),
            Some(_) => {}
        }
        let Some(r) = run::Entity::find_by_id(e.run_id.clone())
            .one(self.store().db())
            .await?
        else {
            return Ok(());
        };
        let Some(p) = pipeline::Entity::find_by_id(r.pipeline_id.clone())
            .one(self.store().db())
            .await?
        else {
            return Ok(());
        };
        let list = lists.of(&p);
        for spec in list.iter() {
            let Some(body) = payload(spec, e, &p, &r) else {
                continue;
            };
            let now = self.now_ms();
            let row = status_delivery::ActiveModel {
                id: Set(uuid::Uuid::now_v7().to_string()),
                tenant_id: Set(p.tenant_id.clone()),
                pipeline_id: Set(p.id.clone()),
                run_id: Set(r.id.clone()),
                event_seq: Set(e.seq),
                url: Set(spec.webhook.clone()),
                format: Set(match spec.format {
                    NotifyFormat::Gantry => "gantry".into(),
                    NotifyFormat::GithubStatus => "github-status".into(),
                }),
                payload: Set(body.to_string()),
                state: Set("pending".into()),
                attempts: Set(0),
                response_status: Set(None),
                error: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(self.store().db())
            .await?;
            let s = self.clone();
            let http = http.clone();
            let config = config.clone();
            let secret = p.webhook_secret.clone();
            let kind = e.entity.as_str().to_owned();
            tokio::spawn(async move { s.deliver(row, secret, kind, http, config).await });
        }
        Ok(())
    }

    async fn deliver(
        &self,
        mut row: status_delivery::Model,
        secret: Option<String>,
        kind: String,
        http: reqwest::Client,
        config: WebhookConfig,
    ) {
        let mut backoff = config.initial_backoff;
        loop {
            let mut req = http
                .post(&row.url)
                .header("content-type", "application/json")
                .header("user-agent", "gantry-webhooks")
                .header("x-gantry-delivery", &row.id)
                .header("x-gantry-event", &kind)
                .body(row.payload.clone());
            if let Some(secret) = &secret {
                req = req.header(
                    "x-gantry-signature",
                    signature(secret, row.payload.as_bytes()),
                );
            }
            let (status, error) = match req.send().await {
                Ok(res) if res.status().is_success() => (Some(res.status().as_u16() as i32), None),
                Ok(res) => (
                    Some(res.status().as_u16() as i32),
                    Some(format!("receiver answered {}", res.status())),
                ),
                Err(e) => (None, Some(e.to_string())),
            };
            row.attempts += 1;
            row.response_status = status;
            row.state = match (&error, row.attempts >= config.max_attempts) {
                (None, _) => "delivered",
                (Some(_), true) => "failed",
                (Some(_), false) => "pending",
            }
            .into();
            row.error = error;
            row.updated_at = self.now_ms();
            let update = status_delivery::ActiveModel {
                id: Set(row.id.clone()),
                state: Set(row.state.clone()),
                attempts: Set(row.attempts),
                response_status: Set(row.response_status),
                error: Set(row.error.clone()),
                updated_at: Set(row.updated_at),
                ..Default::default()
            };
            if let Err(e) = update.update(self.store().db()).await {
                tracing::warn!(error = %e, delivery = %row.id, "webhook delivery log not updated");
            }
            if row.state != "pending" {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }

    /// The delivery log of a pipeline's webhooks, newest first.
    pub async fn webhook_deliveries(
        &self,
        caller: &Caller,
        pipeline_id: &str,
        first: Option<usize>,
    ) -> Result<Vec<status_delivery::Model>, ServiceError> {
        caller.require(Scope::Read)?;
        let p = pipeline::Entity::find_by_id(pipeline_id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|p| caller.sees(&p.tenant_id))
            .ok_or(ServiceError::not_found("pipeline"))?;
        let size = first.unwrap_or(50).clamp(1, self.config().max_page_size);
        Ok(status_delivery::Entity::find()
            .filter(status_delivery::Column::PipelineId.eq(p.id))
            .order_by_desc(status_delivery::Column::CreatedAt)
            .order_by_desc(status_delivery::Column::Id)
            .limit(size as u64)
            .all(self.store().db())
            .await?)
    }
}
