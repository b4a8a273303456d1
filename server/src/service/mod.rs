//! Use cases: create tenants and pipelines, trigger, cancel and retry runs, and the worker
//! calls (register, lease, heartbeat, log, complete). Authorization happens here, once,
//! for every surface (GraphQL, HTTP, agents): each call takes the [`Caller`].
//!
//! A use case opens one write transaction, applies transitions checked by `domain`
//! through `store`, records their events in the same transaction, and publishes them only
//! after the commit — nothing is announced that could still roll back.

mod auth;
mod errors;
mod live;
mod planning;
mod progress;
mod queries;
mod runs;
pub mod status_hooks;
mod tenants;
mod work;

use std::sync::Arc;

pub use auth::{Caller, Scope, Scopes, TokenCreated};
pub use errors::ServiceError;
pub use live::{event_json, event_matches};
pub use queries::{EventFilter, Page, RunFilter};
pub use runs::TriggerInput;
pub use tenants::{PipelineInput, PipelineUpdate, TenantInput};
pub use work::{AttemptOutcome, HeartbeatReply, LeasedAttempt, LogPiece, WorkerInput};

use crate::clock::SharedClock;
use crate::events::{EventBus, Wakeups};
use crate::store::Store;

/// Tunables of the service layer, with the defaults users of hosted CI expect.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: i64,
    /// Largest accepted pipeline file.
    pub max_pipeline_bytes: usize,
    /// Largest page a list query returns.
    pub max_page_size: usize,
    /// Largest log volume kept per attempt; beyond it output is dropped with a notice.
    pub max_log_bytes_per_attempt: i64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            lease_ms: 10_000,
            max_pipeline_bytes: 1024 * 1024,
            max_page_size: 500,
            max_log_bytes_per_attempt: 64 * 1024 * 1024,
        }
    }
}

/// The use cases of one node.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: SharedClock,
    node: String,
    bus: EventBus,
    wakeups: Wakeups,
    config: ServiceConfig,
}

impl Service {
    pub fn new(
        store: Store,
        clock: SharedClock,
        node: impl Into<String>,
        bus: EventBus,
        wakeups: Wakeups,
        config: ServiceConfig,
    ) -> Service {
        Service {
            inner: Arc::new(Inner {
                store,
                clock,
                node: node.into(),
                bus,
                wakeups,
                config,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    pub fn wakeups(&self) -> &Wakeups {
        &self.inner.wakeups
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}
