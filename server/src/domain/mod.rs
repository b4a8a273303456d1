//! Pure types and rules of Gantry: ids, the three state machines as transition tables,
//! error kinds, retry policy and backoff, DAG validation and cache-key inputs.
//!
//! Everything here is deterministic and free of I/O, async and the database, so that the
//! rules can be property-tested in isolation and shared by the server, the reconciler and
//! `gantry simulate`. Beyond std, serde, chrono and thiserror it uses `uuid` (ids are values)
//! and `sha2` (a cache key is a digest); nothing else of ours may be imported here.

pub mod cache_key;
pub mod dag;
pub mod event;
pub mod fairness;

pub mod ids;
pub mod retry;
pub mod state;

pub use event::EventRecord;
pub use ids::*;
pub use retry::{Backoff, ErrorKind, Jitter, RetryDecision, RetryPolicy};
pub use state::{AttemptState, Entity, RunState, TaskState, Transition};

/// Errors raised by the rules themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A state change that the transition table does not allow.
    #[error("{entity} cannot go from {from} to {to}")]
    InvalidTransition {
        entity: Entity,
        from: String,
        to: String,
    },
    /// A value that does not parse as the type it names.
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
}
