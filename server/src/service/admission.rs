//! Admission: the door in front of planning. A trigger is refused with `RATE_LIMITED`
//! when its tenant's token bucket is empty, and with `OVERLOADED` when the installation
//! already holds `max_pending_attempts` attempts waiting for a worker. A refused trigger
//! writes nothing.
//!
//! The buckets live in this process in the embedded default, and in Redis (one Lua script
//! per take, atomic) when the node has `REDIS_URL`, so that every replica draws from the
//! same bucket. Losing Redis degrades to per-node buckets, never to refusing all work.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

use super::{Service, ServiceError};
use crate::domain::AttemptState;
use crate::domain::fairness::{Bucket, retry_after_secs};
use crate::store::entity::{attempt, tenant};

/// Longest wait for Redis in the trigger path; beyond it the node's own bucket decides.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// The same arithmetic as [`Bucket::take`]. KEYS[1] the bucket; ARGV rate (tokens per
/// second), burst, now (ms). Returns 0 when a token was taken, else the wait in ms.
const TAKE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cap = math.max(burst, 1)
local v = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(v[1])
local at = tonumber(v[2])
if tokens == nil or at == nil then
  tokens = math.max(burst, 0)
  at = now
end
if now > at then
  tokens = math.min(cap, tokens + (now - at) / 1000 * math.max(rate, 0))
  at = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
elseif rate <= 0 then
  wait = 60000
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(at))
local ttl = 3600000
if rate > 0 then ttl = math.ceil(cap / rate * 1000) + 1000 end
redis.call('PEXPIRE', KEYS[1], ttl)
return wait
";

/// The buckets of one node.
#[derive(Default)]
pub(crate) struct Admission {
    local: Mutex<HashMap<String, Bucket>>,
    shared: OnceLock<Shared>,
}

struct Shared {
    client: redis::Client,
    prefix: String,
    script: redis::Script,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl Admission {
    fn take_local(&self, t: &tenant::Model, now: i64) -> Result<(), i64> {
        let mut buckets = self.local.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(t.id.clone())
            .or_insert_with(|| Bucket::full(t.trigger_burst, now))
            .take(t.trigger_rate, t.trigger_burst, now)
    }
}

impl Shared {
    async fn take(&self, t: &tenant::Model, now: i64) -> Result<i64, String> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT))
                .set_number_of_retries(1);
            let c = ConnectionManager::new_with_config(self.client.clone(), config)
                .await
                .map_err(|e| e.to_string())?;
            *guard = Some(c);
        }
        let Some(conn) = guard.as_mut() else {
            return Err("BUG: connection was just set".into());
        };
        let key = format!("{}:admission:{}", self.prefix, t.id);
        let mut call = self.script.key(key);
        call.arg(t.trigger_rate).arg(t.trigger_burst).arg(now);
        let wait: redis::RedisResult<i64> =
            tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async(conn))
                .await
                .map_err(|_| "timed out".to_owned())?;
        wait.map_err(|e| e.to_string())
    }
}

impl Service {
    /// Shares the admission buckets of every node through Redis.
    pub fn share_admission(
        &self,
        redis: &crate::events::redis::RedisConfig,
    ) -> Result<(), ServiceError> {
        let client = redis::Client::open(redis.url.as_str())
            .map_err(|e| ServiceError::BadInput(format!("redis url: {e}")))?;
        let _ = self.inner.admission.shared.set(Shared {
            client,
            prefix: redis.prefix.clone(),
            script: redis::Script::new(TAKE_SCRIPT),
            conn: tokio::sync::Mutex::new(None),
        });
        Ok(())
    }

    /// Admits one trigger of `tenant_id` or refuses it. Call it before anything is written.
    pub(crate) async fn admit_trigger(&self, tenant_id: &str) -> Result<(), ServiceError> {
        let limit = self.config().max_pending_attempts;
        if limit > 0 {
            let pending = attempt::Entity::find()
                .filter(attempt::Column::State.is_in([
                    AttemptState::Queued.as_str(),
                    AttemptState::Scheduled.as_str(),
                ]))
                .count(self.store().db())
                .await?;
            if pending >= limit {
                tracing::warn!(tenant_id, pending, limit, "trigger refused: overloaded");
                return Err(ServiceError::Overloaded(format!(
                    "{pending} attempts are waiting for a worker; try again later"
                )));
            }
        }
        let t = tenant::Entity::find_by_id(tenant_id.to_owned())
            .one(self.store().db())
            .await?
            .ok_or_else(|| ServiceError::not_found("tenant"))?;
        let now = self.now_ms();
        let admission = &self.inner.admission;
        let taken = match admission.shared.get() {
            Some(shared) => match shared.take(&t, now).await {
                Ok(0) => Ok(()),
                Ok(wait) => Err(wait),
                Err(e) => {
                    tracing::warn!(error = %e, tenant_id, "redis admission unavailable; using this node's bucket");
                    admission.take_local(&t, now)
                }
            },
            None => admission.take_local(&t, now),
        };
        taken.map_err(|wait_ms| {
            tracing::debug!(tenant_id, wait_ms, "trigger refused: rate limited");
            ServiceError::RateLimited {
                retry_after_secs: retry_after_secs(wait_ms),
            }
        })
    }
}
