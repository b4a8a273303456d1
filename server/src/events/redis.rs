//! The Redis transport of the event bus: every node publishes its commits (events, log
//! output, cancel signals, queue wake-ups) on one pub/sub channel and delivers what the
//! other nodes publish to its own local subscribers.
//!
//! Redis is a fast path, never the truth. Publishing never blocks a commit: commits go to a
//! bounded queue drained by one task, and are dropped when Redis is slow or gone. A node
//! whose subscription is down reads the event log every [`POLL_WHILE_DOWN`] instead, and
//! reads it once more on every reconnection; a gap in the chain of commits (see `order`)
//! is filled from the log. Workers waiting for a lease poll the database on their own.

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Commit, EventBus, Wakeups};

/// Commits waiting to be published; beyond this, Redis is too slow and they are dropped.
const PUBLISH_QUEUE: usize = 16_384;
/// How often a node reads the event log while its Redis subscription is down.
pub const POLL_WHILE_DOWN: Duration = Duration::from_millis(500);
/// Longest wait for Redis to answer one command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the nodes of one installation meet.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of the channel: installations sharing one Redis use different prefixes.
    pub prefix: String,
}

impl RedisConfig {
    fn channel(&self) -> String {
        format!("{}:bus", self.prefix)
    }
}

/// The sending side: a bounded queue in front of one publishing task.
pub(super) struct Publisher {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Publisher {
    pub(super) fn send(&self, commit: &Commit) {
        let payload = match serde_json::to_vec(commit) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "BUG: a commit does not serialise");
                return;
            }
        };
        if self.tx.try_send(payload).is_err() {
            // The other nodes fill the gap from the log.
            tracing::debug!("redis publish queue full; commit left to the event log");
        }
    }
}

/// Errors of starting the Redis transport.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(#[from] redis::RedisError);

/// Starts publishing this node's commits and delivering the other nodes' ones. Fails only
/// on a malformed URL: an unreachable Redis is retried in the background.
pub fn start(
    bus: &EventBus,
    wakeups: Wakeups,
    node: String,
    config: RedisConfig,
    shutdown: CancellationToken,
) -> Result<(), RedisError> {
    let client = redis::Client::open(config.url.as_str())?;
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    bus.set_remote(Publisher { tx });
    tokio::spawn(publish_loop(
        client.clone(),
        config.channel(),
        rx,
        shutdown.clone(),
    ));
    tokio::spawn(receive_loop(
        client,
        config.channel(),
        bus.clone(),
        wakeups,
        node,
        shutdown,
    ));
    Ok(())
}

async fn publish_loop(
    client: redis::Client,
    channel: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shutdown: CancellationToken,
) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let mut conn: Option<ConnectionManager> = None;
    loop {
        let payload = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        if conn.is_none() {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "redis unreachable; commit left to the event log");
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let sent: redis::RedisResult<i64> = c.publish(&channel, payload).await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "redis publish failed; commit left to the event log");
            }
        }
    }
}

async fn receive_loop(
    client: redis::Client,
    channel: String,
    bus: EventBus,
    wakeups: Wakeups,
    node: String,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::time::timeout(REDIS_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match connected {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(100);
                tracing::info!(channel = %channel, "redis event bus subscribed");
                // Whatever was committed while this node was not listening.
                bus.catch_up().await;
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    match serde_json::from_slice::<Commit>(msg.get_payload_bytes()) {
                        Ok(c) if c.node == node => {}
                        Ok(c) => bus.receive_remote(c, &wakeups),
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable message on the redis event bus")
                        }
                    }
                }
                tracing::warn!(channel = %channel, "redis event bus disconnected; reading the event log until it is back");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "redis event bus unreachable"),
            Err(_) => tracing::debug!("redis event bus connection timed out"),
        }
        // Down: read the log while retrying, so subscribers here see other nodes' work,
        // later but complete.
        let until = tokio::time::Instant::now() + backoff;
        loop {
            bus.catch_up().await;
            wakeups.wake_scheduler();
            let now = tokio::time::Instant::now();
            if now >= until {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL_WHILE_DOWN.min(until - now)) => {}
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
