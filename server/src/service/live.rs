//! What live delivery needs from the service: the event log as the bus reads it to fill
//! gaps, and the lookups that filter live events for one subscriber.

use std::sync::Arc;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Caller, EventFilter, Service, ServiceError};
use crate::domain::EventRecord;
use crate::events::EventLog;
use crate::store::Store;
use crate::store::entity::{attempt, event, run};

/// The event log, read by the bus without a caller: it only fills the live feed, which
/// every subscription filters by its caller again.
pub struct StoreEventLog(pub Store);

#[async_trait::async_trait]
impl EventLog for StoreEventLog {
    async fn after(&self, after: i64, limit: u64) -> Result<Vec<EventRecord>, String> {
        let rows = event::Entity::find()
            .filter(event::Column::Seq.gt(after))
            .order_by_asc(event::Column::Seq)
            .limit(limit)
            .all(self.0.db())
            .await
            .map_err(|e| e.to_string())?;
        rows.into_iter()
            .map(|r| crate::store::events::from_row(r).map_err(|e| e.to_string()))
            .collect()
    }

    async fn last_seq(&self) -> Result<i64, String> {
        crate::store::events::last_seq(self.0.db())
            .await
            .map_err(|e| e.to_string())
    }
}

impl Service {
    /// Attempts waiting in `queue` now, among those the caller sees.
    pub async fn queue_depth(&self, caller: &Caller, queue: &str) -> Result<i64, ServiceError> {
        caller.require(super::Scope::Read)?;
        let mut q = attempt::Entity::find()
            .filter(attempt::Column::Queue.eq(queue))
            .filter(attempt::Column::State.eq(crate::domain::AttemptState::Queued.as_str()));
        if !caller.scopes.has(super::Scope::Admin) {
            q = q.filter(attempt::Column::TenantId.eq(caller.tenant_id.to_string()));
        }
        Ok(q.count(self.store().db()).await? as i64)
    }

    /// The event log as the bus reads it.
    pub fn event_log(&self) -> Arc<dyn EventLog> {
        Arc::new(StoreEventLog(self.store().clone()))
    }

    /// The pipeline of a run (for filtering live events by pipeline), if the caller sees it.
    pub async fn pipeline_of_run(
        &self,
        caller: &Caller,
        run_id: &str,
    ) -> Result<Option<String>, ServiceError> {
        let r = run::Entity::find_by_id(run_id.to_owned())
            .one(self.store().db())
            .await?;
        Ok(r.filter(|r| caller.sees(&r.tenant_id))
            .map(|r| r.pipeline_id))
    }
}

/// Whether a live event passes a subscription's filter, apart from the pipeline (which
/// needs a lookup) — the same rules as the `events` query.
pub fn event_matches(caller: &Caller, filter: &EventFilter, e: &EventRecord) -> bool {
    caller.sees(&e.tenant_id)
        && filter.tenant.as_ref().is_none_or(|t| *t == e.tenant_id)
        && filter.run.as_ref().is_none_or(|r| *r == e.run_id)
        && filter.state.as_ref().is_none_or(|s| *s == e.to)
}

/// An event as JSON for plain-HTTP consumers (SSE, outbound webhooks): the same fields and
/// spelling as the GraphQL `Event`.
pub fn event_json(e: &EventRecord) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq.to_string(),
        "at": chrono::DateTime::<chrono::Utc>::from_timestamp_millis(e.at_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "entity": e.entity.as_str().to_ascii_uppercase(),
        "entityId": e.entity_id,
        "run": e.run_id,
        "task": e.task_id,
        "attempt": e.attempt_id,
        "from": e.from.as_ref().map(|s| s.to_ascii_uppercase()),
        "to": e.to.to_ascii_uppercase(),
        "reason": e.reason,
        "node": e.node,
        "details": e.details,
    })
}
