//! The event bus and wake-ups: how a committed change reaches everyone who waits for it.
//!
//! Events are appended to the durable log (the `events` table) inside the transaction that
//! makes the change; this module only fans committed events out to live subscribers
//! (a tokio broadcast in-process) and wakes workers waiting on a queue. A subscriber that
//! falls behind loses live events but never the log: it resumes from its last `seq`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub attempt_id: String,
    pub offset: i64,
    pub stream: String,
    pub data: String,
}

/// Fan-out of committed events, log output and signals.
#[derive(Clone)]
pub struct EventBus {
    events: broadcast::Sender<Arc<EventRecord>>,
    logs: broadcast::Sender<Arc<LogRecord>>,
    signals: broadcast::Sender<Signal>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            events: broadcast::channel(BUS_CAPACITY).0,
            logs: broadcast::channel(BUS_CAPACITY).0,
            signals: broadcast::channel(1024).0,
        }
    }
}

impl EventBus {
    /// Publishes events that have been committed, in `seq` order.
    pub fn publish(&self, events: Vec<EventRecord>) {
        for e in events {
            // No subscriber is not an error: the log keeps everything.
            let _ = self.events.send(Arc::new(e));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.events.subscribe()
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
