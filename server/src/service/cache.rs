//! Dedup: cache hits, single flight and the end of a build, inside the transactions that
//! plan runs and finish tasks.
//!
//! The database is the truth. A cache entry (`cache_entries`) says "key K was built by
//! task T until time E"; a flight (`cache_flights`, primary key K) says "task T is building
//! K right now"; a waiter (`cache_waiters`) is a blocked task whose build is that flight.
//! A task that becomes runnable is, in this order: a hit (it becomes `cached` and links the
//! entry's artifacts), a waiter (another task leads the same key), or the leader (it runs).
//! When a leader ends, its waiters are looked at again: after a success they are hits,
//! after a failure the oldest one leads and runs, the others keep waiting.
//!
//! This module must not decide readiness (`progress` does) nor hold any state outside the
//! transaction it is given.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, OnConflict, SimpleExpr, SubQueryStatement};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait,
};
use serde_json::json;
use tracing::instrument;

use super::planning::{PlanCache, PlannedRows, RunFacts, task_event};
use super::progress::{self, Effects, parse_state};
use super::{Service, ServiceError};
use crate::domain::{AttemptState, TaskState, Transition};
use crate::pipeline::PlannedTask;
use crate::store::entity::{artifact, attempt, cache_entry, cache_flight, cache_waiter, run, task};

/// Marks a lost race for a flight between two nodes planning at once: the transaction is
/// rolled back and planned again, and then sees the other node's leader.
pub(crate) const FLIGHT_RACE: &str = "another node started the same build; planning again";

/// What a succeeded task of an earlier run offers to `rerunFailed`: its id, key and spec.
pub(crate) struct Reusable {
    pub task_id: String,
    pub cache_key: Option<String>,
    pub spec: String,
}

/// Bind-parameter-safe chunk size for `IN (…)` lists.
const IN_CHUNK: usize = 500;

/// Looks up, for a run about to be planned, the hits and the running builds of its keys.
pub(crate) async fn plan_lookup(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    planned: &[PlannedTask],
    keys: &[String],
    no_cache: bool,
    reuse: Option<&HashMap<String, Reusable>>,
    now: i64,
) -> Result<PlanCache, ServiceError> {
    let mut cache = PlanCache {
        hits: vec![None; planned.len()],
        in_flight: HashSet::new(),
        bypass: no_cache,
    };
    if let Some(reuse) = reuse {
        for (i, t) in planned.iter().enumerate() {
            let Some(old) = reuse.get(&t.name) else {
                continue;
            };
            let same = match &old.cache_key {
                Some(k) => *k == keys[i],
                // A job with `cache: false` has no key stored: the same spec will do.
                None => !t.cache.enabled && same_spec(t, &old.spec),
            };
            if same {
                cache.hits[i] = Some(old.task_id.clone());
            }
        }
    }
    if no_cache {
        return Ok(cache);
    }
    let wanted: Vec<&String> = keys
        .iter()
        .zip(planned)
        .filter(|(_, t)| t.cache.enabled)
        .map(|(k, _)| k)
        .collect();
    let mut entries: HashMap<String, String> = HashMap::new();
    let mut flights: Vec<cache_flight::Model> = Vec::new();
    for chunk in wanted.chunks(IN_CHUNK) {
        let chunk: Vec<String> = chunk.iter().map(|k| (*k).clone()).collect();
        for e in cache_entry::Entity::find()
            .filter(cache_entry::Column::Key.is_in(chunk.clone()))
            .filter(cache_entry::Column::TenantId.eq(tenant_id))
            .filter(cache_entry::Column::ExpiresAt.gt(now))
            .all(db)
            .await?
        {
            entries.insert(e.key, e.task_id);
        }
        flights.extend(
            cache_flight::Entity::find()
                .filter(cache_flight::Column::Key.is_in(chunk))
                .all(db)
                .await?,
        );
    }
    for (i, (k, t)) in keys.iter().zip(planned).enumerate() {
        if t.cache.enabled
            && cache.hits[i].is_none()
            && let Some(source) = entries.get(k)
        {
            cache.hits[i] = Some(source.clone());
        }
    }
    for f in flights {
        if leader_alive(db, &f).await? {
            cache.in_flight.insert(f.key);
        } else {
            release_orphan(db, &f).await?;
        }
    }
    Ok(cache)
}

/// Whether a planned task has the spec stored for an earlier one, apart from the
/// expression variables (which hold the run number).
fn same_spec(t: &PlannedTask, stored: &str) -> bool {
    let strip = |mut v: serde_json::Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("vars");
        }
        v
    };
    match (serde_json::to_value(t), serde_json::from_str(stored)) {
        (Ok(new), Ok(old)) => strip(new) == strip(old),
        _ => false,
    }
}

/// Whether a flight's leader can still finish it; a flight whose leader ended without
/// releasing it (a crash between versions, a hand edit) is an orphan.
async fn leader_alive(
    db: &impl ConnectionTrait,
    f: &cache_flight::Model,
) -> Result<bool, ServiceError> {
    let leader = task::Entity::find_by_id(f.task_id.clone()).one(db).await?;
    Ok(match leader {
        Some(t) => !parse_state::<TaskState>(&t.state)?.is_terminal(),
        None => false,
    })
}

async fn release_orphan(
    db: &impl ConnectionTrait,
    f: &cache_flight::Model,
) -> Result<(), ServiceError> {
    cache_flight::Entity::delete_many()
        .filter(cache_flight::Column::Key.eq(f.key.clone()))
        .filter(cache_flight::Column::TaskId.eq(f.task_id.clone()))
        .exec(db)
        .await?;
    Ok(())
}

/// Takes the flight of `key` for `task`; false when another task holds it. Concurrent
/// takers on PostgreSQL are settled by the primary key: the loser's insert waits for the
/// winner's commit and then inserts nothing.
async fn take_flight(
    db: &impl ConnectionTrait,
    key: &str,
    tenant_id: &str,
    task_id: &str,
    run_id: &str,
    now: i64,
) -> Result<bool, ServiceError> {
    let inserted = cache_flight::Entity::insert(cache_flight::ActiveModel {
        key: Set(key.to_owned()),
        tenant_id: Set(tenant_id.to_owned()),
        task_id: Set(task_id.to_owned()),
        run_id: Set(run_id.to_owned()),
        created_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(cache_flight::Column::Key)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(inserted == 1)
}

async fn add_waiter(
    db: &impl ConnectionTrait,
    key: &str,
    tenant_id: &str,
    task_id: &str,
    run_id: &str,
    now: i64,
) -> Result<(), ServiceError> {
    cache_waiter::Entity::insert(cache_waiter::ActiveModel {
        task_id: Set(task_id.to_owned()),
        key: Set(key.to_owned()),
        tenant_id: Set(tenant_id.to_owned()),
        run_id: Set(run_id.to_owned()),
        created_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(cache_waiter::Column::TaskId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Writes what planning decided: flights, waiters, and the links of cache hits.
pub(crate) async fn apply_plan(
    db: &impl ConnectionTrait,
    f: &RunFacts<'_>,
    rows: &PlannedRows,
) -> Result<(), ServiceError> {
    for (key, task_id) in &rows.flights {
        if !take_flight(db, key, f.tenant_id, task_id, f.run_id, f.now).await? {
            return Err(ServiceError::Conflict(FLIGHT_RACE.into()));
        }
    }
    for (key, task_id) in &rows.waiters {
        add_waiter(db, key, f.tenant_id, task_id, f.run_id, f.now).await?;
    }
    if rows.cached.is_empty() {
        return Ok(());
    }
    // Batched: a fully cached run of a thousand tasks must plan in a few statements.
    let links: Vec<(&str, &str)> = rows
        .cached
        .iter()
        .map(|c| (c.source_task_id.as_str(), c.task_id.as_str()))
        .collect();
    link_artifacts_many(db, &links, f.run_id, f.now).await?;
    let mut by_ttl: HashMap<i64, Vec<String>> = HashMap::new();
    for c in &rows.cached {
        if let Some(key) = &c.key {
            by_ttl.entry(c.ttl_ms).or_default().push(key.clone());
        }
    }
    for (ttl, keys) in by_ttl {
        for chunk in keys.chunks(IN_CHUNK) {
            refresh_many(db, chunk, f.now + ttl).await?;
        }
    }
    Ok(())
}

/// Extends entries (and their artifacts) on hits.
async fn refresh_many(
    db: &impl ConnectionTrait,
    keys: &[String],
    expires_at: i64,
) -> Result<(), ServiceError> {
    cache_entry::Entity::update_many()
        .col_expr(cache_entry::Column::ExpiresAt, Expr::value(expires_at))
        .filter(cache_entry::Column::Key.is_in(keys.to_vec()))
        .filter(cache_entry::Column::ExpiresAt.lt(expires_at))
        .exec(db)
        .await?;
    artifact::Entity::update_many()
        .col_expr(artifact::Column::ExpiresAt, Expr::value(expires_at))
        .filter(artifact::Column::CacheKey.is_in(keys.to_vec()))
        .filter(artifact::Column::ExpiresAt.lt(expires_at))
        .exec(db)
        .await?;
    Ok(())
}

/// Gives cached tasks the artifacts of the tasks they reuse: the same blobs, new rows.
/// `links` pairs each source task with the task that reuses it.
async fn link_artifacts_many(
    db: &impl ConnectionTrait,
    links: &[(&str, &str)],
    run_id: &str,
    now: i64,
) -> Result<(), ServiceError> {
    let mut reusers: HashMap<&str, Vec<&str>> = HashMap::new();
    for (source, task) in links {
        reusers.entry(source).or_default().push(task);
    }
    let sources: Vec<String> = reusers.keys().map(|s| (*s).to_owned()).collect();
    let mut rows: Vec<artifact::ActiveModel> = Vec::new();
    for chunk in sources.chunks(IN_CHUNK) {
        for a in artifact::Entity::find()
            .filter(artifact::Column::TaskId.is_in(chunk.to_vec()))
            .all(db)
            .await?
        {
            for task in reusers.get(a.task_id.as_str()).into_iter().flatten() {
                rows.push(artifact::ActiveModel {
                    id: Set(uuid::Uuid::now_v7().to_string()),
                    digest: Set(a.digest.clone()),
                    name: Set(a.name.clone()),
                    size: Set(a.size),
                    tenant_id: Set(a.tenant_id.clone()),
                    run_id: Set(run_id.to_owned()),
                    task_id: Set((*task).to_owned()),
                    attempt_id: Set(a.attempt_id.clone()),
                    cache_key: Set(a.cache_key.clone()),
                    expires_at: Set(a.expires_at),
                    created_at: Set(now),
                });
            }
        }
    }
    // Eleven columns a row: keep each statement under the bind-parameter limits.
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(50).collect();
        artifact::Entity::insert_many(chunk)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// How a task that may start now goes on.
pub(crate) enum Runnable {
    /// It runs (and leads its key's build, if it caches).
    Run,
    /// It reuses the result of `source`.
    Hit { source: String, key: String },
    /// Another task is building its key; it waits (already recorded).
    Wait,
}

/// Decides, in the transaction that makes `t` runnable, whether it runs, reuses a cached
/// result, or waits for the same build running elsewhere. Writes the flight or the waiter.
pub(crate) async fn on_runnable(
    db: &impl ConnectionTrait,
    facts: &RunFacts<'_>,
    t: &task::Model,
) -> Result<Runnable, ServiceError> {
    let Some(key) = &t.cache_key else {
        return Ok(Runnable::Run);
    };
    let no_cache = run::Entity::find_by_id(facts.run_id.to_owned())
        .one(db)
        .await?
        .is_some_and(|r| r.no_cache);
    if no_cache {
        return Ok(Runnable::Run);
    }
    let entry = cache_entry::Entity::find_by_id(key.clone())
        .filter(cache_entry::Column::TenantId.eq(facts.tenant_id))
        .filter(cache_entry::Column::ExpiresAt.gt(facts.now))
        .one(db)
        .await?;
    if let Some(e) = entry {
        return Ok(Runnable::Hit {
            source: e.task_id,
            key: key.clone(),
        });
    }
    loop {
        if take_flight(db, key, facts.tenant_id, &t.id, facts.run_id, facts.now).await? {
            return Ok(Runnable::Run);
        }
        let Some(f) = cache_flight::Entity::find_by_id(key.clone())
            .one(db)
            .await?
        else {
            continue;
        };
        if f.task_id == t.id {
            return Ok(Runnable::Run);
        }
        if leader_alive(db, &f).await? {
            add_waiter(db, key, facts.tenant_id, &t.id, facts.run_id, facts.now).await?;
            task::Entity::update_many()
                .col_expr(task::Column::PendingDeps, Expr::value(1))
                .filter(task::Column::Id.eq(t.id.clone()))
                .exec(db)
                .await?;
            return Ok(Runnable::Wait);
        }
        release_orphan(db, &f).await?;
    }
}

/// Records a hit decided by [`on_runnable`] after the task moved to `cached`.
pub(crate) async fn record_hit(
    db: &impl ConnectionTrait,
    facts: &RunFacts<'_>,
    t: &task::Model,
    source: &str,
    key: &str,
) -> Result<(), ServiceError> {
    link_artifacts_many(db, &[(source, t.id.as_str())], facts.run_id, facts.now).await?;
    let ttl = spec_ttl(t);
    refresh_many(db, &[key.to_owned()], facts.now + ttl).await
}

fn spec_ttl(t: &task::Model) -> i64 {
    serde_json::from_str::<PlannedTask>(&t.spec)
        .map(|s| s.cache.ttl_ms as i64)
        .unwrap_or(crate::pipeline::DEFAULT_CACHE_TTL_MS as i64)
}

/// After task `t` of `run` reached the terminal state `to`, in the same transaction: a
/// success writes the cache entry; a leader gives up its flight and its waiters go on.
/// `one_attempt`: the task never had another attempt than the one that settled it.
#[instrument(skip_all, fields(task_id = %t.id))]
pub(crate) async fn task_settled(
    db: &impl ConnectionTrait,
    run: &run::Model,
    t: &task::Model,
    to: TaskState,
    one_attempt: bool,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    if to == TaskState::Succeeded && !one_attempt {
        // Only the succeeding attempt's artifacts are the task's: an earlier attempt that
        // uploaded and then lost its lease leaves rows that must not be handed on.
        // One statement: without a succeeded attempt the comparison is NULL and
        // nothing is deleted.
        let winner = attempt::Entity::find()
            .select_only()
            .column(attempt::Column::Id)
            .filter(attempt::Column::TaskId.eq(t.id.clone()))
            .filter(attempt::Column::State.eq(AttemptState::Succeeded.as_str()))
            .limit(1)
            .into_query();
        artifact::Entity::delete_many()
            .filter(artifact::Column::TaskId.eq(t.id.clone()))
            .filter(
                Expr::col(artifact::Column::AttemptId).ne(SimpleExpr::SubQuery(
                    None,
                    Box::new(SubQueryStatement::SelectStatement(winner)),
                )),
            )
            .exec(db)
            .await?;
    }
    let Some(key) = &t.cache_key else {
        return Ok(());
    };
    // A waiter that ended otherwise (its run was cancelled) waits no more.
    cache_waiter::Entity::delete_by_id(t.id.clone())
        .exec(db)
        .await?;
    if to == TaskState::Succeeded {
        let expires_at = now + spec_ttl(t);
        cache_entry::Entity::insert(cache_entry::ActiveModel {
            key: Set(key.clone()),
            tenant_id: Set(run.tenant_id.clone()),
            task_id: Set(t.id.clone()),
            run_id: Set(run.id.clone()),
            created_at: Set(now),
            expires_at: Set(expires_at),
        })
        .on_conflict(
            OnConflict::column(cache_entry::Column::Key)
                .update_columns([
                    cache_entry::Column::TaskId,
                    cache_entry::Column::RunId,
                    cache_entry::Column::CreatedAt,
                    cache_entry::Column::ExpiresAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
        artifact::Entity::update_many()
            .col_expr(artifact::Column::CacheKey, Expr::value(key.clone()))
            .col_expr(artifact::Column::ExpiresAt, Expr::value(expires_at))
            .filter(artifact::Column::TaskId.eq(t.id.clone()))
            .exec(db)
            .await?;
    }
    let released = cache_flight::Entity::delete_many()
        .filter(cache_flight::Column::Key.eq(key.clone()))
        .filter(cache_flight::Column::TaskId.eq(t.id.clone()))
        .exec(db)
        .await?;
    if released.rows_affected == 0 {
        return Ok(());
    }
    wake_waiters(db, key, now, fx).await
}

/// Looks at the waiters of `key` again, oldest first, now that its flight is free: each
/// becomes a hit, or the first that cannot becomes the new leader and the rest wait on.
async fn wake_waiters(
    db: &impl ConnectionTrait,
    key: &str,
    now: i64,
    fx: &mut Effects,
) -> Result<(), ServiceError> {
    let waiters = cache_waiter::Entity::find()
        .filter(cache_waiter::Column::Key.eq(key))
        .order_by_asc(cache_waiter::Column::CreatedAt)
        .order_by_asc(cache_waiter::Column::TaskId)
        .all(db)
        .await?;
    for w in waiters {
        cache_waiter::Entity::delete_by_id(w.task_id.clone())
            .exec(db)
            .await?;
        let Some(wt) = task::Entity::find_by_id(w.task_id.clone()).one(db).await? else {
            continue;
        };
        if wt.state != TaskState::Blocked.as_str() {
            continue;
        }
        let Some(wrun) = run::Entity::find_by_id(wt.run_id.clone()).one(db).await? else {
            continue;
        };
        task::Entity::update_many()
            .col_expr(task::Column::PendingDeps, Expr::value(0))
            .filter(task::Column::Id.eq(wt.id.clone()))
            .exec(db)
            .await?;
        let facts = progress::run_facts(&wrun, now);
        let became = progress::start_or_skip(db, &facts, &wt, TaskState::Ready, fx).await?;
        match became {
            TaskState::Cached => {
                // Boxed: a hit finishes the task, which can release more tasks.
                Box::pin(progress::task_finished(
                    db,
                    &wrun,
                    &wt,
                    TaskState::Cached,
                    now,
                    fx,
                ))
                .await?;
            }
            // The new leader; the others wait for it.
            TaskState::Ready => break,
            _ => {}
        }
    }
    Ok(())
}

/// Why a blocked task waits, when it waits for another task's build of its key.
pub(crate) async fn waiting_for_build(
    db: &impl ConnectionTrait,
    task_id: &str,
) -> Result<Option<String>, ServiceError> {
    let Some(w) = cache_waiter::Entity::find_by_id(task_id.to_owned())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let leader = cache_flight::Entity::find_by_id(w.key).one(db).await?;
    Ok(Some(match leader {
        Some(f) => format!(
            "waiting for task {} of run {}, which is building the same cache key",
            f.task_id, f.run_id
        ),
        None => "waiting for a build of the same cache key".to_owned(),
    }))
}

/// The event of a task that reused a result.
pub(crate) fn hit_event(
    facts: &RunFacts<'_>,
    task_id: &str,
    from: TaskState,
) -> Result<crate::store::events::NewEvent, ServiceError> {
    let mut ev = task_event(
        facts,
        task_id,
        Transition::check(from, TaskState::Cached, "cache hit")?,
    );
    ev.details = Some(json!({ "cache": "hit" }));
    Ok(ev)
}

impl Service {
    /// Evicts cache entries and artifacts whose time is up, deletes the blobs no artifact
    /// refers to any more, and frees flights whose leader ended without releasing them.
    /// The reconciler calls it on each tick; it is idempotent. Returns the entries evicted.
    #[instrument(skip_all)]
    pub async fn evict_expired(&self, now: i64) -> Result<u64, ServiceError> {
        let wtx = self.store().write().await?;
        let db = &wtx.tx;
        let entries = cache_entry::Entity::delete_many()
            .filter(cache_entry::Column::ExpiresAt.lte(now))
            .exec(db)
            .await?
            .rows_affected;
        let expired = artifact::Entity::find()
            .filter(artifact::Column::ExpiresAt.lte(now))
            .all(db)
            .await?;
        let mut digests: HashSet<String> = HashSet::new();
        for chunk in expired.chunks(IN_CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|a| a.id.clone()).collect();
            artifact::Entity::delete_many()
                .filter(artifact::Column::Id.is_in(ids))
                .exec(db)
                .await?;
            digests.extend(chunk.iter().map(|a| a.digest.clone()));
        }
        let mut unreferenced = Vec::new();
        for d in digests {
            let still = artifact::Entity::find()
                .filter(artifact::Column::Digest.eq(d.clone()))
                .one(db)
                .await?;
            if still.is_none() {
                unreferenced.push(d);
            }
        }
        let mut fx = Effects::default();
        for f in cache_flight::Entity::find().all(db).await? {
            if !leader_alive(db, &f).await? {
                release_orphan(db, &f).await?;
                wake_waiters(db, &f.key, now, &mut fx).await?;
            }
        }
        self.commit(wtx, now, fx).await?;
        // Blobs go after the commit: a blob without a row is garbage, a row without its
        // blob would be a broken download.
        if let Some(blobs) = self.blob_store() {
            for d in unreferenced {
                if let Err(e) = blobs.delete(&d).await {
                    tracing::warn!(digest = %d, error = %e, "could not delete an unreferenced blob");
                }
            }
        }
        if entries > 0 {
            tracing::info!(entries, "evicted expired cache entries");
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{ActiveModelTrait, EntityTrait};

    use super::*;
    use crate::artifacts::BlobStore;
    use crate::clock::ManualClock;
    use crate::events::{EventBus, Wakeups};
    use crate::service::ServiceConfig;
    use crate::store::{Durability, Store};

    async fn service(dir: &std::path::Path) -> Service {
        let store = Store::connect(&Store::sqlite_url(dir), Durability::Normal)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let s = Service::new(
            store,
            Arc::new(ManualClock::new(1_000)),
            "test",
            EventBus::default(),
            Wakeups::default(),
            ServiceConfig::default(),
        );
        s.set_blob_store(BlobStore::local(&dir.join("artifacts")).unwrap());
        s
    }

    async fn blob(s: &Service, dir: &std::path::Path, content: &str) -> String {
        let path = dir.join(format!("src-{content}"));
        std::fs::write(&path, content).unwrap();
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content.as_bytes()));
        s.blob_store()
            .unwrap()
            .put_file(&digest, &path)
            .await
            .unwrap();
        digest
    }

    async fn entry(s: &Service, key: &str, expires_at: i64) {
        cache_entry::ActiveModel {
            key: Set(key.into()),
            tenant_id: Set("t".into()),
            task_id: Set("task".into()),
            run_id: Set("run".into()),
            created_at: Set(0),
            expires_at: Set(expires_at),
        }
        .insert(s.store().db())
        .await
        .unwrap();
    }

    async fn artifact_row(s: &Service, id: &str, digest: &str, expires_at: i64) {
        artifact::ActiveModel {
            id: Set(id.into()),
            digest: Set(digest.into()),
            name: Set(id.into()),
            size: Set(1),
            tenant_id: Set("t".into()),
            run_id: Set("run".into()),
            task_id: Set(format!("task-{id}")),
            attempt_id: Set("attempt".into()),
            cache_key: Set(None),
            expires_at: Set(Some(expires_at)),
            created_at: Set(0),
        }
        .insert(s.store().db())
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn evict_expired_drops_expired_entries_artifacts_unreferenced_blobs_and_orphan_flights() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path()).await;
        entry(&s, "old", 500).await;
        entry(&s, "fresh", 5_000).await;
        let gone = blob(&s, dir.path(), "gone").await;
        let shared = blob(&s, dir.path(), "shared").await;
        artifact_row(&s, "a1", &gone, 500).await;
        artifact_row(&s, "a2", &shared, 500).await;
        artifact_row(&s, "a3", &shared, 5_000).await;
        // A flight whose leader task does not exist any more.
        take_flight(s.store().db(), "k", "t", "no-such-task", "run", 0)
            .await
            .unwrap();

        assert_eq!(s.evict_expired(1_000).await.unwrap(), 1);

        let keys: Vec<String> = cache_entry::Entity::find()
            .all(s.store().db())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, vec!["fresh".to_owned()]);
        let arts: Vec<String> = artifact::Entity::find()
            .all(s.store().db())
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(arts, vec!["a3".to_owned()]);
        let blobs = s.blob_store().unwrap();
        assert!(
            !blobs.exists(&gone).await.unwrap(),
            "unreferenced blob deleted"
        );
        assert!(
            blobs.exists(&shared).await.unwrap(),
            "a blob still referenced stays"
        );
        assert!(
            cache_flight::Entity::find()
                .all(s.store().db())
                .await
                .unwrap()
                .is_empty()
        );
        // Idempotent.
        assert_eq!(s.evict_expired(1_000).await.unwrap(), 0);
    }
}
