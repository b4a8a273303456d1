//! The executor's single error type.
//!
//! Owns every failure that is the machine's fault rather than the job's: a
//! workspace that cannot be prepared, a process that cannot be started, a
//! checkout or artifact that cannot be produced. These all surface to the
//! caller as `Outcome::Failed { kind: FailureKind::Infra, .. }`; a step that
//! merely exits non-zero is *not* an error and never passes through here.
//! Kept separate so every other module shares one vocabulary for "could not
//! do it" without depending on how outcomes are reported.

use std::io;
use std::path::PathBuf;

/// Why the executor could not carry out an attempt (infrastructure failures).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The spec itself cannot be executed safely (bad ids, paths escaping the workspace, ...).
    #[error("invalid job specification: {0}")]
    InvalidSpec(String),

    /// Creating, clearing or removing a directory we own failed.
    #[error("workspace {}: {source}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The job asked for isolation this machine cannot provide. We refuse rather
    /// than silently running unsandboxed.
    #[error("sandbox requested but bwrap not found")]
    SandboxUnavailable,

    /// A process could not be started (missing shell, bad working directory, ...).
    #[error("failed to start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },

    /// Waiting for a started process failed; should not happen on a healthy host.
    #[error("failed to wait for {what}: {source}")]
    Wait {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The repository could not be cloned or the requested revision checked out.
    #[error("checkout failed: {0}")]
    Checkout(String),

    /// A declared artifact path matched nothing in the workspace.
    #[error("artifact path not found: {0}")]
    ArtifactNotFound(String),

    /// An artifact exists but could not be copied out or hashed.
    #[error("artifact {name}: {source}")]
    ArtifactIo {
        name: String,
        #[source]
        source: io::Error,
    },

    /// A broken internal invariant (e.g. a blocking task panicked).
    #[error("BUG: {0}")]
    Internal(String),
}
