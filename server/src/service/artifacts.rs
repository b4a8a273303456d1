//! Artifacts: uploads by the worker that holds an attempt's lease, downloads by anyone of
//! the tenant, and the artifacts a task receives from the tasks it needs.
//!
//! Blobs are content-addressed (`artifacts::BlobStore`); a row of `artifacts` gives one a
//! name in a task. A cache hit links the rows of the task it reuses, never copies a blob.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, FromQueryResult, JoinType, QueryFilter,
    QueryOrder, QueryResult, QuerySelect, Set,
};
use tracing::instrument;

use super::auth::Scope;
use super::{Caller, Service, ServiceError};
use crate::artifacts::{BlobError, BlobStore, Spooled};
use crate::pipeline::PlannedTask;
use crate::store::entity::{artifact, attempt, task};

/// An artifact as stored.
pub type UploadedArtifact = artifact::Model;

/// An artifact with the name of the task that made it.
struct WithUpstream {
    artifact: artifact::Model,
    upstream: String,
}

impl FromQueryResult for WithUpstream {
    fn from_query_result(row: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        Ok(WithUpstream {
            artifact: artifact::Model::from_query_result(row, pre)?,
            upstream: row.try_get(pre, "upstream")?,
        })
    }
}

/// Longest artifact name (a path relative to the workspace).
const MAX_NAME: usize = 1024;

impl From<BlobError> for ServiceError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(_) => ServiceError::not_found("artifact"),
            BlobError::DigestMismatch { .. } | BlobError::BadDigest(_) => {
                ServiceError::BadInput(e.to_string())
            }
            other => ServiceError::Unavailable(other.to_string()),
        }
    }
}

impl Service {
    fn blobs(&self) -> Result<&BlobStore, ServiceError> {
        self.blob_store()
            .ok_or_else(|| ServiceError::Unavailable("no artifact store is configured".into()))
    }

    /// The attempt if `lease_token` holds its live lease and the caller may act for it.
    async fn leased_attempt(
        &self,
        caller: &Caller,
        attempt_id: &str,
        lease_token: &str,
    ) -> Result<attempt::Model, ServiceError> {
        caller.require(Scope::Agent)?;
        let a = attempt::Entity::find_by_id(attempt_id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|a| caller.sees(&a.tenant_id))
            .ok_or(ServiceError::not_found("attempt"))?;
        let live = matches!(a.state.as_str(), "leased" | "running");
        if !live || a.lease_token.as_deref() != Some(lease_token) {
            return Err(ServiceError::Conflict(
                "the lease token is stale: this attempt was decided without you".into(),
            ));
        }
        Ok(a)
    }

    /// Spools an upload body (hashing it) where the store takes it from.
    pub async fn spool_upload<S, E>(&self, body: S) -> Result<Spooled, ServiceError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        Ok(self.blobs()?.spool(body).await?)
    }

    /// Records an artifact of a running attempt, uploaded by the worker holding its lease:
    /// the blob is stored once per digest, and `sha256`, when given, must match the body.
    /// Uploading the same name again for the same attempt replaces it.
    #[instrument(skip_all, fields(attempt_id = %attempt_id))]
    pub async fn upload_artifact(
        &self,
        caller: &Caller,
        attempt_id: &str,
        lease_token: &str,
        name: &str,
        sha256: Option<&str>,
        body: Spooled,
    ) -> Result<UploadedArtifact, ServiceError> {
        let plain = std::path::Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') || !plain {
            return Err(ServiceError::BadInput(format!(
                "artifact name must be a relative path of 1 to {MAX_NAME} characters, without `..`"
            )));
        }
        let a = self.leased_attempt(caller, attempt_id, lease_token).await?;
        if let Some(expected) = sha256
            && expected != body.sha256
        {
            return Err(ServiceError::BadInput(format!(
                "artifact {name:?}: the body's sha256 is {}, not {expected}",
                body.sha256
            )));
        }
        self.blobs()?.put_file(&body.sha256, &body.path).await?;
        let t = task::Entity::find_by_id(a.task_id.clone())
            .one(self.store().db())
            .await?
            .ok_or_else(|| ServiceError::Internal("attempt without task".into()))?;
        let ttl = serde_json::from_str::<PlannedTask>(&t.spec)
            .map(|s| s.cache.ttl_ms as i64)
            .unwrap_or(crate::pipeline::DEFAULT_CACHE_TTL_MS as i64);
        let now = self.now_ms();
        let wtx = self.store().write().await?;
        artifact::Entity::delete_many()
            .filter(artifact::Column::AttemptId.eq(a.id.clone()))
            .filter(artifact::Column::TaskId.eq(a.task_id.clone()))
            .filter(artifact::Column::Name.eq(name))
            .exec(&wtx.tx)
            .await?;
        let row = artifact::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            digest: Set(body.sha256.clone()),
            name: Set(name.to_owned()),
            size: Set(body.size as i64),
            tenant_id: Set(a.tenant_id.clone()),
            run_id: Set(a.run_id.clone()),
            task_id: Set(a.task_id.clone()),
            attempt_id: Set(a.id.clone()),
            cache_key: Set(None),
            expires_at: Set(Some(now + ttl)),
            created_at: Set(now),
        }
        .insert(&wtx.tx)
        .await?;
        wtx.commit().await?;
        Ok(row)
    }

    /// One artifact, if the caller's tenant owns it.
    pub async fn artifact(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<artifact::Model, ServiceError> {
        caller.require(Scope::Read)?;
        artifact::Entity::find_by_id(id.to_owned())
            .one(self.store().db())
            .await?
            .filter(|a| caller.sees(&a.tenant_id))
            .ok_or(ServiceError::not_found("artifact"))
    }

    /// An artifact and its content as a stream.
    pub async fn open_artifact(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<
        (
            artifact::Model,
            futures::stream::BoxStream<'static, Result<bytes::Bytes, BlobError>>,
        ),
        ServiceError,
    > {
        let a = self.artifact(caller, id).await?;
        let stream = self.blobs()?.get(&a.digest).await?;
        Ok((a, stream))
    }

    /// The artifacts of a task, by name (the caller was checked on the task).
    pub async fn artifacts_of_task(
        &self,
        task_id: &str,
    ) -> Result<Vec<artifact::Model>, ServiceError> {
        Ok(artifact::Entity::find()
            .filter(artifact::Column::TaskId.eq(task_id))
            .order_by_asc(artifact::Column::Name)
            .all(self.store().db())
            .await?)
    }

    /// The artifacts an attempt receives: those of the tasks its task needs, in `needs`
    /// order, each with the name of the task that made it.
    pub async fn input_artifacts(
        &self,
        caller: &Caller,
        attempt_id: &str,
        lease_token: &str,
    ) -> Result<Vec<(String, artifact::Model)>, ServiceError> {
        let a = self.leased_attempt(caller, attempt_id, lease_token).await?;
        let db = self.store().db();
        let t = task::Entity::find_by_id(a.task_id.clone())
            .one(db)
            .await?
            .ok_or_else(|| ServiceError::Internal("attempt without task".into()))?;
        let needs: Vec<String> = serde_json::from_str(&t.needs).unwrap_or_default();
        if needs.is_empty() {
            return Ok(Vec::new());
        }
        // One query whatever the fan-in: a job of a wide diamond needs dozens of tasks.
        let made_by = artifact::Entity::belongs_to(task::Entity)
            .from(artifact::Column::TaskId)
            .to(task::Column::Id)
            .into();
        let found = artifact::Entity::find()
            .join(JoinType::InnerJoin, made_by)
            .filter(task::Column::RunId.eq(t.run_id.clone()))
            .filter(task::Column::Name.is_in(needs.clone()))
            .order_by_asc(artifact::Column::Name)
            .column_as(task::Column::Name, "upstream")
            .into_model::<WithUpstream>()
            .all(db)
            .await?;
        let mut out = Vec::with_capacity(found.len());
        for name in &needs {
            out.extend(
                found
                    .iter()
                    .filter(|w| &w.upstream == name)
                    .map(|w| (name.clone(), w.artifact.clone())),
            );
        }
        Ok(out)
    }

    /// Copies an artifact's blob into a local file (the in-process workers' download).
    pub async fn artifact_to_file(
        &self,
        digest: &str,
        dest: &std::path::Path,
    ) -> Result<u64, ServiceError> {
        Ok(self.blobs()?.get_to_file(digest, dest).await?)
    }
}
