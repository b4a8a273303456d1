//! Tenants and pipelines: who owns what, and the pipeline files themselves.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::auth::Scope;
use super::{Caller, Service, ServiceError};
use crate::domain::{PipelineId, TenantId};
use crate::pipeline;
use crate::store::entity::{pipeline as pipeline_e, tenant};

pub(crate) const DEFAULT_MAX_RUNNING: i32 = 10_000;
pub(crate) const DEFAULT_TRIGGER_RATE: f64 = 100.0;
pub(crate) const DEFAULT_TRIGGER_BURST: i32 = 1_000;

/// Input of `createTenant`.
#[derive(Debug, Clone, Default)]
pub struct TenantInput {
    pub name: String,
    pub weight: Option<i32>,
    pub max_running: Option<i32>,
    pub trigger_rate: Option<f64>,
    pub trigger_burst: Option<i32>,
}

/// Input of `createPipeline`.
#[derive(Debug, Clone, Default)]
pub struct PipelineInput {
    pub tenant: Option<String>,
    pub name: String,
    pub provider: String,
    pub repository: String,
    pub file: String,
    pub webhook_secret: Option<String>,
}

/// Input of `updatePipeline`: absent fields keep their value.
#[derive(Debug, Clone, Default)]
pub struct PipelineUpdate {
    pub id: String,
    pub name: Option<String>,
    pub repository: Option<String>,
    pub file: Option<String>,
    pub webhook_secret: Option<String>,
}

pub const PROVIDERS: [&str; 3] = ["git", "github", "gitlab"];

fn check_name(what: &str, name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadInput(format!(
            "{what} name must be 1 to 100 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Service {
    /// Creates a tenant. Admin only.
    pub async fn create_tenant(
        &self,
        caller: &Caller,
        input: TenantInput,
    ) -> Result<tenant::Model, ServiceError> {
        caller.require(Scope::Admin)?;
        check_name("tenant", &input.name)?;
        let weight = input.weight.unwrap_or(1);
        let max_running = input.max_running.unwrap_or(DEFAULT_MAX_RUNNING);
        let rate = input.trigger_rate.unwrap_or(DEFAULT_TRIGGER_RATE);
        let burst = input.trigger_burst.unwrap_or(DEFAULT_TRIGGER_BURST);
        if !(1..=1000).contains(&weight) {
            return Err(ServiceError::BadInput(
                "weight must be between 1 and 1000".into(),
            ));
        }
        if max_running < 1 {
            return Err(ServiceError::BadInput(
                "maxRunning must be at least 1".into(),
            ));
        }
        if !(rate.is_finite() && rate > 0.0) || burst < 1 {
            return Err(ServiceError::BadInput(
                "triggerRate must be > 0 and triggerBurst at least 1".into(),
            ));
        }
        tenant::ActiveModel {
            id: Set(TenantId::new().to_string()),
            name: Set(input.name.clone()),
            weight: Set(weight),
            max_running: Set(max_running),
            trigger_rate: Set(rate),
            trigger_burst: Set(burst),
            created_at: Set(self.now_ms()),
        }
        .insert(self.store().db())
        .await
        .map_err(|e| match crate::store::StoreError::from(e) {
            crate::store::StoreError::Conflict(_) => {
                ServiceError::Conflict(format!("a tenant named {:?} exists already", input.name))
            }
            other => other.into(),
        })
    }

    /// The tenants the caller can see.
    pub async fn tenants(&self, caller: &Caller) -> Result<Vec<tenant::Model>, ServiceError> {
        caller.require(Scope::Read)?;
        let all = tenant::Entity::find()
            .order_by_asc(tenant::Column::Name)
            .all(self.store().db())
            .await?;
        Ok(all.into_iter().filter(|t| caller.sees(&t.id)).collect())
    }

    pub async fn tenant(&self, caller: &Caller, id: &str) -> Result<tenant::Model, ServiceError> {
        caller.require(Scope::Read)?;
        tenant::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|t| caller.sees(&t.id))
            .ok_or(ServiceError::not_found("tenant"))
    }

    /// The tenant named by id or name, or the caller's own when absent.
    pub(crate) async fn resolve_tenant(
        &self,
        caller: &Caller,
        tenant: Option<&str>,
    ) -> Result<tenant::Model, ServiceError> {
        let db = self.store().db();
        let found = match tenant {
            None => {
                tenant::Entity::find_by_id(caller.tenant_id.to_string())
                    .one(db)
                    .await?
            }
            Some(key) => {
                tenant::Entity::find()
                    .filter(
                        sea_orm::Condition::any()
                            .add(tenant::Column::Id.eq(key))
                            .add(tenant::Column::Name.eq(key)),
                    )
                    .one(db)
                    .await?
            }
        };
        found
            .filter(|t| caller.sees(&t.id))
            .ok_or(ServiceError::not_found("tenant"))
    }

    fn check_file(&self, file: &str) -> Result<pipeline::PipelineFile, ServiceError> {
        if file.len() > self.config().max_pipeline_bytes {
            return Err(ServiceError::BadInput(format!(
                "pipeline file is {} bytes; the limit is {}",
                file.len(),
                self.config().max_pipeline_bytes
            )));
        }
        pipeline::parse(file).map_err(ServiceError::InvalidPipeline)
    }

    /// Trigger jobs must name pipelines of the tenant (or the pipeline itself, `name`).
    /// A pipeline removed or renamed later fails the trigger job when it runs.
    async fn check_trigger_targets(
        &self,
        tenant_id: &str,
        name: &str,
        file: &pipeline::PipelineFile,
    ) -> Result<(), ServiceError> {
        let mut errors = Vec::new();
        for job in &file.jobs {
            let Some(trigger) = &job.trigger else {
                continue;
            };
            if trigger.pipeline == name {
                continue;
            }
            let exists = pipeline_e::Entity::find()
                .filter(pipeline_e::Column::TenantId.eq(tenant_id))
                .filter(pipeline_e::Column::Name.eq(trigger.pipeline.clone()))
                .one(self.store().db())
                .await?
                .is_some();
            if !exists {
                errors.push(pipeline::PipelineError::new(
                    job.line,
                    1,
                    format!(
                        "job `{}` triggers pipeline `{}`, which does not exist in this tenant",
                        job.id, trigger.pipeline
                    ),
                    "create that pipeline first, or fix the name",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidPipeline(errors))
        }
    }

    /// Creates a pipeline after validating its file; nothing is written when it is invalid.
    pub async fn create_pipeline(
        &self,
        caller: &Caller,
        input: PipelineInput,
    ) -> Result<pipeline_e::Model, ServiceError> {
        caller.require(Scope::Write)?;
        let tenant = self.resolve_tenant(caller, input.tenant.as_deref()).await?;
        check_name("pipeline", &input.name)?;
        let provider = input.provider.to_ascii_lowercase();
        if !PROVIDERS.contains(&provider.as_str()) {
            return Err(ServiceError::BadInput(format!(
                "provider must be one of {}",
                PROVIDERS.join(", ")
            )));
        }
        if input.repository.trim().is_empty() || input.repository.len() > 2000 {
            return Err(ServiceError::BadInput(
                "repository must be 1 to 2000 characters".into(),
            ));
        }
        let file = self.check_file(&input.file)?;
        self.check_trigger_targets(&tenant.id, &input.name, &file)
            .await?;
        let now = self.now_ms();
        pipeline_e::ActiveModel {
            id: Set(PipelineId::new().to_string()),
            tenant_id: Set(tenant.id.clone()),
            name: Set(input.name.clone()),
            provider: Set(provider),
            repository: Set(input.repository),
            file: Set(input.file),
            webhook_secret: Set(input.webhook_secret),
            next_number: Set(1),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.store().db())
        .await
        .map_err(|e| match crate::store::StoreError::from(e) {
            crate::store::StoreError::Conflict(_) => ServiceError::Conflict(format!(
                "tenant {} has a pipeline named {:?} already",
                tenant.name, input.name
            )),
            other => other.into(),
        })
    }

    /// Changes a pipeline; the new file is validated first, and runs already planned keep
    /// the file they were planned from.
    pub async fn update_pipeline(
        &self,
        caller: &Caller,
        update: PipelineUpdate,
    ) -> Result<pipeline_e::Model, ServiceError> {
        caller.require(Scope::Write)?;
        let current = self.pipeline(caller, &update.id).await?;
        if let Some(name) = &update.name {
            check_name("pipeline", name)?;
        }
        if let Some(file) = &update.file {
            let parsed = self.check_file(file)?;
            let name = update.name.as_deref().unwrap_or(&current.name);
            self.check_trigger_targets(&current.tenant_id, name, &parsed)
                .await?;
        }
        let mut model: pipeline_e::ActiveModel = current.into();
        if let Some(name) = update.name {
            model.name = Set(name);
        }
        if let Some(repository) = update.repository {
            model.repository = Set(repository);
        }
        if let Some(file) = update.file {
            model.file = Set(file);
        }
        if let Some(secret) = update.webhook_secret {
            model.webhook_secret = Set(Some(secret));
        }
        model.updated_at = Set(self.now_ms());
        Ok(model.update(self.store().db()).await?)
    }

    pub async fn pipeline(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<pipeline_e::Model, ServiceError> {
        caller.require(Scope::Read)?;
        pipeline_e::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|p| caller.sees(&p.tenant_id))
            .ok_or(ServiceError::not_found("pipeline"))
    }

    /// The pipelines the caller can see, by name.
    pub async fn pipelines(&self, caller: &Caller) -> Result<Vec<pipeline_e::Model>, ServiceError> {
        caller.require(Scope::Read)?;
        let mut query = pipeline_e::Entity::find().order_by_asc(pipeline_e::Column::Name);
        if !caller.scopes.has(Scope::Admin) {
            query = query.filter(pipeline_e::Column::TenantId.eq(caller.tenant_id.to_string()));
        }
        Ok(query.all(self.store().db()).await?)
    }
}
