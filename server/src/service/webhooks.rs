//! Webhook deliveries: verify, deduplicate, trigger.
//!
//! A delivery is authenticated by the pipelines it is about: every pipeline of the
//! provider whose repository matches and whose webhook secret verifies the signature is
//! triggered. A delivery that verifies against none is UNAUTHENTICATED, whether no
//! pipeline matches or the signature is wrong, so an unauthenticated caller learns
//! nothing about which repositories exist. A pipeline without a webhook secret is never
//! triggered by a webhook.
//!
//! Deduplication is twofold: a delivery id already recorded is answered as a duplicate,
//! and each run is triggered with the idempotency key `webhook:<delivery id>`, so two
//! concurrent copies of one delivery still create one run.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use tracing::instrument;

use super::runs::TriggerInput;
use super::{Caller, Service, ServiceError};
use crate::store::entity::{pipeline, webhook_delivery};
use crate::webhooks::{self, EventKind, Provider, WebhookEvent};

/// A delivery as the HTTP layer received it.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub provider: Provider,
    /// `X-GitHub-Event` / `X-Gitlab-Event`.
    pub event: String,
    /// `X-GitHub-Delivery` / `X-Gitlab-Event-UUID`.
    pub delivery: Option<String>,
    /// `X-Hub-Signature-256` / `X-Gitlab-Token`.
    pub signature: Option<String>,
    pub body: Vec<u8>,
}

/// What a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Runs were triggered (ids).
    Triggered(Vec<String>),
    /// The delivery was seen before; nothing new was triggered.
    Duplicate(Vec<String>),
    /// Authenticated, but nothing to build.
    Ignored(String),
}

impl Service {
    /// Handles one delivery. Errors: BAD_USER_INPUT (malformed payload or headers),
    /// UNAUTHENTICATED (no matching pipeline verifies the signature).
    #[instrument(skip_all, fields(provider = req.provider.as_str(), event = %req.event, delivery = ?req.delivery))]
    pub async fn receive_webhook(
        &self,
        req: WebhookRequest,
    ) -> Result<WebhookOutcome, ServiceError> {
        let delivery = req
            .delivery
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty() && d.len() <= 200 && d.chars().all(|c| c.is_ascii_graphic()))
            .map(str::to_owned);
        let signature = req.signature.clone().ok_or(ServiceError::Unauthenticated)?;
        let parsed = match req.provider {
            Provider::Github => webhooks::parse_github(&req.event, &req.body),
            Provider::Gitlab => webhooks::parse_gitlab(&req.event, &req.body),
        }
        .map_err(|e| ServiceError::BadInput(format!("webhook payload: {e}")))?;
        let pipelines = self.verified_pipelines(&req, &parsed, &signature).await?;
        if pipelines.is_empty() {
            return Err(ServiceError::Unauthenticated);
        }
        if let EventKind::Ignored { reason } = &parsed.kind {
            return Ok(WebhookOutcome::Ignored(reason.clone()));
        }
        let pipelines: Vec<pipeline::Model> = pipelines
            .into_iter()
            .filter(|p| wants_event(p, &parsed))
            .collect();
        if pipelines.is_empty() {
            return Ok(WebhookOutcome::Ignored(format!(
                "no pipeline's `on:` takes this {} of {}",
                parsed.event, parsed.git_ref
            )));
        }
        let Some(delivery) = delivery else {
            return Err(ServiceError::BadInput(
                "the delivery id header (X-GitHub-Delivery / X-Gitlab-Event-UUID) is required"
                    .into(),
            ));
        };
        let key = format!("{}:{delivery}", req.provider.as_str());
        let db = self.store().db();
        if let Some(seen) = webhook_delivery::Entity::find_by_id(key.clone())
            .one(db)
            .await?
        {
            let runs: Vec<String> = serde_json::from_str(&seen.runs).unwrap_or_default();
            tracing::info!(delivery = %delivery, "duplicate delivery ignored");
            return Ok(WebhookOutcome::Duplicate(runs));
        }
        let mut runs = Vec::new();
        let mut last_err = None;
        for p in &pipelines {
            let caller = Caller::system(
                p.tenant_id
                    .parse()
                    .map_err(|_| ServiceError::Internal("corrupt pipeline tenant".into()))?,
            );
            let input = TriggerInput {
                pipeline: p.id.clone(),
                sha: parsed.sha.clone(),
                git_ref: parsed.git_ref.clone(),
                idempotency_key: Some(format!("webhook:{delivery}")),
                no_cache: false,
                priority: None,
                trigger_kind: Some("webhook".into()),
            };
            match self.trigger_run(&caller, input).await {
                Ok(run) => {
                    tracing::info!(pipeline_id = %p.id, run_id = %run.id, "webhook triggered a run");
                    runs.push(run.id);
                }
                Err(e) => {
                    tracing::warn!(pipeline_id = %p.id, error = %e, "webhook trigger refused");
                    last_err = Some(e);
                }
            }
        }
        if runs.is_empty()
            && let Some(e) = last_err
        {
            // Nothing was recorded: the sender may redeliver once the cause is fixed.
            return Err(e);
        }
        let row = webhook_delivery::ActiveModel {
            key: Set(key),
            provider: Set(req.provider.as_str().to_owned()),
            event: Set(parsed.event.clone()),
            runs: Set(serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into())),
            received_at: Set(self.now_ms()),
        };
        if let Err(e) = row.insert(db).await {
            // A concurrent copy recorded it first; the idempotency key kept the runs single.
            tracing::debug!(error = %e, "delivery recorded concurrently");
        }
        Ok(WebhookOutcome::Triggered(runs))
    }

    /// The pipelines this delivery is about and whose secret verifies it.
    async fn verified_pipelines(
        &self,
        req: &WebhookRequest,
        parsed: &WebhookEvent,
        signature: &str,
    ) -> Result<Vec<pipeline::Model>, ServiceError> {
        let candidates = pipeline::Entity::find()
            .filter(pipeline::Column::Provider.eq(req.provider.as_str()))
            .filter(pipeline::Column::WebhookSecret.is_not_null())
            .all(self.store().db())
            .await?;
        Ok(candidates
            .into_iter()
            .filter(|p| webhooks::repository_matches(&p.repository, &parsed.repository))
            .filter(|p| {
                let secret = p.webhook_secret.as_deref().unwrap_or("").as_bytes();
                !secret.is_empty()
                    && match req.provider {
                        Provider::Github => {
                            webhooks::verify_github_signature(secret, &req.body, signature)
                        }
                        Provider::Gitlab => webhooks::verify_gitlab_token(secret, signature),
                    }
            })
            .collect())
    }
}

/// Whether the pipeline's `on:` filters take this event. A file that does not parse any
/// more is let through, so that the run records why it cannot be planned.
fn wants_event(p: &pipeline::Model, e: &WebhookEvent) -> bool {
    let Ok(file) = crate::pipeline::parse(&p.file) else {
        return true;
    };
    match &e.kind {
        EventKind::Push => file.on.accepts_push(&e.git_ref),
        EventKind::PullRequest { .. } => file.on.accepts_pull_request(e.base_ref.as_deref()),
        EventKind::Ignored { .. } => false,
    }
}
