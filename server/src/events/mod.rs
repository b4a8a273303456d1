//! The event bus and wake-ups: how a committed change reaches everyone who waits for it.
//!
//! Events are appended to the durable log (the `events` table) inside the transaction that
//! makes the change; this module only fans committed events out to live subscribers
//! (a tokio broadcast in-process) and wakes workers waiting on a queue. A subscriber that
//! falls behind loses live events but never the log: it resumes from its last `seq`.
//!
//! Live events are delivered in commit order without gaps (`order`), whether they were
//! committed by this node or by another one and carried by Redis pub/sub (`redis`).

pub mod order;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::domain::EventRecord;

/// Capacity of the live fan-out; a slower subscriber is told it lagged.
const BUS_CAPACITY: usize = 16_384;

/// A signal for a running attempt that lives in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Stop the attempt: its run was cancelled.
    Cancel { attempt_id: String },
}

/// A committed piece of an attempt's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub attempt_id: String,
    pub offset: i64,
    pub stream: String,
    pub data: String,
}

/// Everything one committed transaction announces: what travels between nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Commit {
    /// The node that committed it.
    pub node: String,
    /// The last `seq` committed before this transaction's events (see `order`).
    pub prev: Option<i64>,
    pub events: Vec<EventRecord>,
    pub logs: Vec<LogRecord>,
    /// Attempts whose worker must stop.
    pub cancels: Vec<String>,
    /// Queues that received work.
    pub queues: Vec<String>,
    /// Timed work was added: schedulers look again.
    pub scheduler: bool,
}

/// Read access to the durable event log, for filling gaps in the live feed.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync {
    /// Committed events with `seq > after`, oldest first, at most `limit`.
    async fn after(&self, after: i64, limit: u64) -> Result<Vec<EventRecord>, String>;
    /// The last committed `seq` (0 for an empty log).
    async fn last_seq(&self) -> Result<i64, String>;
}

/// Records how long a committed event took to reach this node's live subscribers: from
/// its transaction's time to now, on the wall clock. A measurement for operators, not a
/// decision, so it reads the system clock (the bus has no clock of its own). Clock skew
/// between nodes shifts the figure of a remote event; a negative one reads as zero.
fn observe_lag(e: &EventRecord) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let lag_ms = u64::try_from(now_ms.saturating_sub(e.at_ms)).unwrap_or(0);
    crate::metrics::global()
        .event_delivery_lag
        .with(&[])
        .observe(Duration::from_millis(lag_ms));
}

/// How long a batch may wait for the one committed before it before the log is read.
const GAP_WAIT: Duration = Duration::from_millis(200);

/// Fan-out of committed events, log output and signals.
#[derive(Clone)]
pub struct EventBus {
    events: broadcast::Sender<Arc<EventRecord>>,
    logs: broadcast::Sender<Arc<LogRecord>>,
    signals: broadcast::Sender<Signal>,
    live: Arc<Live>,
}

/// The ordering state and the optional links of the live feed.
#[derive(Default)]
struct Live {
    /// A std mutex: held only to order and hand events to the broadcast, never across an
    /// await, so concurrent publishers deliver in `seq` order.
    order: Mutex<order::Sequencer>,
    log: OnceLock<Arc<dyn EventLog>>,
    remote: OnceLock<redis::Publisher>,
    gap: Notify,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            events: broadcast::channel(BUS_CAPACITY).0,
            logs: broadcast::channel(BUS_CAPACITY).0,
            signals: broadcast::channel(1024).0,
            live: Arc::default(),
        }
    }
}

impl EventBus {
    /// Publishes events that have been committed, in `seq` order.
    pub fn publish(&self, events: Vec<EventRecord>) {
        self.deliver(None, events);
    }

    /// Announces a committed transaction: locally at once, and to the other nodes when
    /// Redis is configured. Cancels and wake-ups are acted on by the caller locally.
    pub fn publish_commit(&self, commit: Commit) {
        if let Some(remote) = self.live.remote.get() {
            remote.send(&commit);
        }
        self.publish_logs(commit.logs);
        self.deliver(commit.prev, commit.events);
    }

    /// A commit of another node, received from Redis.
    pub fn receive_remote(&self, commit: Commit, wakeups: &Wakeups) {
        self.publish_logs(commit.logs);
        self.deliver(commit.prev, commit.events);
        for attempt_id in commit.cancels {
            self.signal(Signal::Cancel { attempt_id });
        }
        for q in &commit.queues {
            wakeups.wake_queue(q);
        }
        if commit.scheduler {
            wakeups.wake_scheduler();
        }
    }

    fn deliver(&self, prev: Option<i64>, events: Vec<EventRecord>) {
        let mut order = self.live.order.lock().unwrap_or_else(|p| p.into_inner());
        for e in order.offer(prev, events) {
            observe_lag(&e);
            // No subscriber is not an error: the log keeps everything.
            let _ = self.events.send(Arc::new(e));
        }
        if order.has_gap() {
            self.live.gap.notify_one();
        }
    }

    /// Connects the bus to the durable log: sets the starting point of the live feed and
    /// starts filling gaps that outlast [`GAP_WAIT`].
    pub async fn attach_log(&self, log: Arc<dyn EventLog>) -> Result<(), String> {
        let last = log.last_seq().await?;
        self.live
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start_at(last);
        if self.live.log.set(log).is_err() {
            return Ok(());
        }
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                bus.live.gap.notified().await;
                tokio::time::sleep(GAP_WAIT).await;
                let gap = bus
                    .live
                    .order
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .has_gap();
                if gap {
                    bus.catch_up().await;
                }
            }
        });
        Ok(())
    }

    /// Delivers every committed event not delivered yet, read from the log.
    pub async fn catch_up(&self) {
        let Some(log) = self.live.log.get() else {
            return;
        };
        loop {
            let from = self
                .live
                .order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .delivered();
            let batch = match log.after(from, 1000).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event log to fill the live feed failed");
                    return;
                }
            };
            let full = batch.len() == 1000;
            let mut order = self.live.order.lock().unwrap_or_else(|p| p.into_inner());
            for e in order.fill(batch) {
                observe_lag(&e);
                let _ = self.events.send(Arc::new(e));
            }
            if !full {
                return;
            }
        }
    }

    /// The last `seq` delivered to live subscribers of this node.
    pub fn delivered(&self) -> i64 {
        self.live
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .delivered()
    }

    fn set_remote(&self, publisher: redis::Publisher) {
        let _ = self.live.remote.set(publisher);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.events.subscribe()
    }

    /// Publishes log output of a commit without events, here and on the other nodes.
    pub fn publish_log_commit(&self, node: &str, logs: Vec<LogRecord>) {
        if logs.is_empty() {
            return;
        }
        if let Some(remote) = self.live.remote.get() {
            remote.send(&Commit {
                node: node.to_owned(),
                logs: logs.clone(),
                ..Commit::default()
            });
        }
        self.publish_logs(logs);
    }

    /// Publishes log output that has been committed.
    pub fn publish_logs(&self, logs: Vec<LogRecord>) {
        for l in logs {
            let _ = self.logs.send(Arc::new(l));
        }
    }

    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.logs.subscribe()
    }

    pub fn signal(&self, signal: Signal) {
        let _ = self.signals.send(signal);
    }

    pub fn signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }
}

/// Per-queue wake-ups for workers waiting on an empty queue, and one for the scheduler.
#[derive(Clone, Default)]
pub struct Wakeups {
    queues: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    scheduler: Arc<Notify>,
}

impl Wakeups {
    /// The notifier of `queue`, created on first use.
    pub fn queue(&self, queue: &str) -> Arc<Notify> {
        // A std mutex: the critical section only touches the map, never awaits.
        let mut map = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes every worker waiting on `queue`.
    pub fn wake_queue(&self, queue: &str) {
        self.queue(queue).notify_waiters();
    }

    /// Tells the scheduler that timed work (a retry backoff) was added.
    pub fn wake_scheduler(&self) {
        self.scheduler.notify_one();
    }

    pub fn scheduler(&self) -> Arc<Notify> {
        self.scheduler.clone()
    }
}
