//! Appending to the event log inside the transaction that makes the change.

use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{ConnectionTrait, StatementBuilder};

use super::StoreError;
use crate::domain::{Entity, EventRecord, Transition};

/// An event to append: the transition plus what it is about.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub attempt_id: Option<String>,
    pub entity_id: String,
    pub transition: Transition,
    pub details: Option<serde_json::Value>,
}

/// Rows per INSERT: keeps statements under the bind-parameter limits of both databases.
const CHUNK: usize = 500;

/// Appends `events` and returns them with their sequence numbers, in order.
pub async fn append(
    db: &impl ConnectionTrait,
    node: &str,
    at_ms: i64,
    events: Vec<NewEvent>,
) -> Result<Vec<EventRecord>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    for chunk in events.chunks(CHUNK) {
        let mut insert = Query::insert();
        insert.into_table(Alias::new("events")).columns([
            Alias::new("at"),
            Alias::new("tenant_id"),
            Alias::new("run_id"),
            Alias::new("task_id"),
            Alias::new("attempt_id"),
            Alias::new("entity"),
            Alias::new("entity_id"),
            Alias::new("from_state"),
            Alias::new("to_state"),
            Alias::new("reason"),
            Alias::new("node"),
            Alias::new("details"),
        ]);
        for e in chunk {
            insert.values_panic([
                at_ms.into(),
                e.tenant_id.clone().into(),
                e.run_id.clone().into(),
                e.task_id.clone().into(),
                e.attempt_id.clone().into(),
                e.transition.entity.as_str().into(),
                e.entity_id.clone().into(),
                e.transition.from.map(str::to_owned).into(),
                e.transition.to.into(),
                e.transition.reason.clone().into(),
                node.into(),
                e.details.as_ref().map(|d| d.to_string()).into(),
            ]);
        }
        insert.returning(Query::returning().expr(Expr::col(Alias::new("seq"))));
        let rows = db
            .query_all(StatementBuilder::build(&insert, &db.get_database_backend()))
            .await?;
        let mut seqs: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get::<i64>("", "seq"))
            .collect::<Result<_, _>>()?;
        // RETURNING order is not promised by either database; seqs of one statement are
        // assigned in row order, so sorting restores it.
        seqs.sort_unstable();
        for (e, seq) in chunk.iter().zip(seqs) {
            out.push(EventRecord {
                seq,
                at_ms,
                tenant_id: e.tenant_id.clone(),
                run_id: e.run_id.clone(),
                task_id: e.task_id.clone(),
                attempt_id: e.attempt_id.clone(),
                entity: e.transition.entity,
                entity_id: e.entity_id.clone(),
                from: e.transition.from.map(str::to_owned),
                to: e.transition.to.to_owned(),
                reason: e.transition.reason.clone(),
                node: node.to_owned(),
                details: e.details.clone(),
            });
        }
    }
    Ok(out)
}

/// Converts a stored row back into a record.
pub fn from_row(m: super::entity::event::Model) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        seq: m.seq,
        at_ms: m.at,
        tenant_id: m.tenant_id,
        run_id: m.run_id,
        task_id: m.task_id,
        attempt_id: m.attempt_id,
        entity: m
            .entity
            .parse::<Entity>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        entity_id: m.entity_id,
        from: m.from_state,
        to: m.to_state,
        reason: m.reason,
        node: m.node,
        details: m.details.and_then(|d| serde_json::from_str(&d).ok()),
    })
}
