//! Use cases: create tenants and pipelines, trigger, cancel and retry runs, and the worker
//! calls (register, lease, heartbeat, log, complete). Authorization happens here, once,
//! for every surface (GraphQL, HTTP, agents): each call takes the [`Caller`].
//!
//! A use case opens one write transaction, applies transitions checked by `domain`
//! through `store`, records their events in the same transaction, and publishes them only
//! after the commit — nothing is announced that could still roll back.

mod admission;
mod artifacts;
mod auth;
mod cache;
mod errors;
mod group_commit;
mod limits;
mod live;
mod load;
mod metrics;
mod planning;
mod progress;
mod queries;
mod reconcile;
mod runs;
mod secrets;
pub mod status_hooks;
mod tenants;
mod triggers;
mod webhooks;
mod work;

use std::sync::Arc;

pub use artifacts::UploadedArtifact;
pub use auth::{Caller, Scope, Scopes, TokenCreated};
pub use errors::ServiceError;
pub use limits::WsConnectionGuard;
pub use live::{event_json, event_matches};
pub use load::{LoadBucket, QueueLoad, TenantLoad};
pub use queries::{EventFilter, Page, RunFilter};
pub use reconcile::Reconciled;
pub use runs::TriggerInput;
pub use secrets::{SecretInput, SecretKey};
pub use tenants::{PipelineInput, PipelineUpdate, TenantInput};
pub use triggers::{
    DEFAULT_MAX_TRIGGER_DEPTH, TRIGGER_DEPTH, TRIGGER_FAILED, TRIGGER_PIPELINE_NOT_FOUND,
};
pub use webhooks::{WebhookOutcome, WebhookRequest};
pub(crate) use work::Completion;
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
    /// Longest log line kept; a longer line is cut with a notice.
    pub max_log_line_bytes: usize,
    /// Most open GraphQL WebSocket connections of one token.
    pub max_ws_connections_per_token: usize,
    /// Largest WebSocket message accepted from a client.
    pub max_ws_message_bytes: usize,
    /// The key that encrypts secrets; without it secrets cannot be set.
    pub secret_key: Option<Arc<SecretKey>>,
    /// Most attempts waiting for a worker (queued or scheduled) in the installation;
    /// beyond it triggers are refused with OVERLOADED. 0 turns the bound off.
    pub max_pending_attempts: u64,
    /// How deeply trigger jobs may nest runs; a deeper trigger fails with TRIGGER_DEPTH.
    pub max_trigger_depth: i32,
}

/// A generous bound: far above what a healthy installation holds, low enough that a
/// runaway trigger loop cannot fill the database.
pub const DEFAULT_MAX_PENDING_ATTEMPTS: u64 = 1_000_000;

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            lease_ms: 10_000,
            max_pipeline_bytes: 1024 * 1024,
            max_page_size: 500,
            max_log_bytes_per_attempt: 64 * 1024 * 1024,
            max_log_line_bytes: 64 * 1024,
            max_ws_connections_per_token: 32,
            max_ws_message_bytes: 256 * 1024,
            secret_key: None,
            max_pending_attempts: DEFAULT_MAX_PENDING_ATTEMPTS,
            max_trigger_depth: DEFAULT_MAX_TRIGGER_DEPTH,
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
    limits: limits::Limits,
    admission: admission::Admission,
    /// The artifact blob store, set once at start.
    blobs: std::sync::OnceLock<crate::artifacts::BlobStore>,
    completions: group_commit::GroupCommit<work::Completion>,
    leases: group_commit::GroupCommit<work::LeaseRequest>,
    touches: reconcile::Touches,
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
                limits: limits::Limits::default(),
                admission: admission::Admission::default(),
                blobs: std::sync::OnceLock::new(),
                completions: group_commit::GroupCommit::default(),
                leases: group_commit::GroupCommit::default(),
                touches: reconcile::Touches::default(),
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

    pub(crate) fn completions(&self) -> &group_commit::GroupCommit<work::Completion> {
        &self.inner.completions
    }

    pub(crate) fn leases(&self) -> &group_commit::GroupCommit<work::LeaseRequest> {
        &self.inner.leases
    }

    pub(crate) fn touches(&self) -> &reconcile::Touches {
        &self.inner.touches
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Sets the artifact blob store; the first call wins.
    pub fn set_blob_store(&self, blobs: crate::artifacts::BlobStore) {
        let _ = self.inner.blobs.set(blobs);
    }

    pub fn blob_store(&self) -> Option<&crate::artifacts::BlobStore> {
        self.inner.blobs.get()
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}
