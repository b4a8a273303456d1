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

/// Key of the PostgreSQL advisory lock that orders event appends (`gantry` in ASCII).
const ORDER_LOCK_KEY: i64 = 0x0000_6761_6e74_7279;

/// Events appended by one transaction, with the last `seq` committed before them.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The highest `seq` committed before this transaction's events: the link to the
    /// previous commit in the chain that live delivery follows (`events::order`).
    pub prev: i64,
    pub records: Vec<EventRecord>,
}

/// Appends `events` so that `seq` order is commit order, and returns the chain link.
///
/// On PostgreSQL a transaction-scoped advisory lock is taken first and held until the
/// commit: event-appending transactions commit one at a time, in `seq` order, so a reader
/// that sees `seq` N committed sees every smaller one too. Call it last in the transaction,
/// just before the commit, to keep that window short. SQLite has one writer at a time
/// already.
pub async fn append_ordered(
    db: &impl ConnectionTrait,
    node: &str,
    at_ms: i64,
    events: Vec<NewEvent>,
) -> Result<Appended, StoreError> {
    let backend = db.get_database_backend();
    if events.is_empty() {
        return Ok(Appended {
            prev: 0,
            records: Vec::new(),
        });
    }
    if backend == sea_orm::DbBackend::Postgres {
        db.execute(sea_orm::Statement::from_sql_and_values(
            backend,
            "SELECT pg_advisory_xact_lock($1)",
            [ORDER_LOCK_KEY.into()],
        ))
        .await?;
    }
    let prev = last_seq(db).await?;
    let records = append(db, node, at_ms, events).await?;
    Ok(Appended { prev, records })
}

/// The highest committed `seq` (0 when the log is empty).
pub async fn last_seq(db: &impl ConnectionTrait) -> Result<i64, StoreError> {
    let backend = db.get_database_backend();
    let row = db
        .query_one(sea_orm::Statement::from_string(
            backend,
            "SELECT COALESCE(MAX(seq), 0) AS last FROM events",
        ))
        .await?;
    Ok(match row {
        Some(r) => r.try_get::<i64>("", "last")?,
        None => 0,
    })
}
