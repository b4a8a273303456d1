//! The errors of the service layer, each with a stable code that clients can match on.

use crate::pipeline::PipelineError;
use crate::store::StoreError;

/// What a use case refuses, or why it could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The object does not exist, or belongs to a tenant the caller cannot see (the two
    /// are indistinguishable on purpose: no existence leak).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The pipeline file does not validate; every error names line and column.
    #[error("invalid pipeline: {}", first_error(.0))]
    InvalidPipeline(Vec<PipelineError>),
    /// A malformed argument.
    #[error("{0}")]
    BadInput(String),
    /// The state changed under the caller: a stale lease token, a duplicate name.
    #[error("{0}")]
    Conflict(String),
    /// The object is in a state that does not allow the operation.
    #[error("{0}")]
    InvalidTransition(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limited: retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("server overloaded: {0}")]
    Overloaded(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A size or count limit was reached (page, body, log, connections, file).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// Secrets cannot be stored: the node has no secret key.
    #[error("secrets are disabled: start the server with GANTRY_SECRET_KEY or --secret-key-file")]
    SecretKeyMissing,
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
    /// A bug or an unexpected failure; the cause is logged, never sent to clients.
    #[error("internal error")]
    Internal(String),
}

/// The errors of a refused pipeline file, several at once so that one round trip fixes
/// as much as possible; `extensions.errors` carries each with its position.
fn first_error(errors: &[PipelineError]) -> String {
    const SHOWN: usize = 5;
    let mut text: Vec<String> = errors.iter().take(SHOWN).map(ToString::to_string).collect();
    if errors.len() > SHOWN {
        text.push(format!("and {} more", errors.len() - SHOWN));
    }
    if text.is_empty() {
        "no details".to_owned()
    } else {
        text.join("; ")
    }
}

impl ServiceError {
    /// The stable code sent in `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::NotFound { .. } => "NOT_FOUND",
            ServiceError::InvalidPipeline(_) => "INVALID_PIPELINE",
            ServiceError::BadInput(_) => "BAD_USER_INPUT",
            ServiceError::Conflict(_) => "CONFLICT",
            ServiceError::InvalidTransition(_) => "INVALID_TRANSITION",
            ServiceError::Unauthenticated => "UNAUTHENTICATED",
            ServiceError::Forbidden(_) => "FORBIDDEN",
            ServiceError::RateLimited { .. } => "RATE_LIMITED",
            ServiceError::Overloaded(_) => "OVERLOADED",
            ServiceError::Unavailable(_) => "UNAVAILABLE",
            ServiceError::NotImplemented(_) => "NOT_IMPLEMENTED",
            ServiceError::LimitExceeded(_) => "LIMIT_EXCEEDED",
            ServiceError::SecretKeyMissing => "SECRET_KEY_MISSING",
            ServiceError::Internal(_) => "INTERNAL",
        }
    }

    pub fn not_found(what: &'static str) -> Self {
        ServiceError::NotFound { what }
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(msg) => ServiceError::Conflict(msg),
            StoreError::Unavailable(msg) => ServiceError::Unavailable(msg),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<sea_orm::DbErr> for ServiceError {
    fn from(err: sea_orm::DbErr) -> Self {
        StoreError::from(err).into()
    }
}

impl From<crate::domain::DomainError> for ServiceError {
    fn from(err: crate::domain::DomainError) -> Self {
        match err {
            crate::domain::DomainError::InvalidTransition { .. } => {
                ServiceError::InvalidTransition(err.to_string())
            }
            crate::domain::DomainError::Invalid { .. } => ServiceError::BadInput(err.to_string()),
        }
    }
}
