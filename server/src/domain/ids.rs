//! Typed ids. Each entity has its own id type so that a run id can never be passed where
//! a task id is expected. Ids are UUIDv7: time-ordered, so that b-tree indexes on them
//! stay append-mostly, and unguessable enough to be shown to clients.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::DomainError;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| DomainError::Invalid {
                    what: $what,
                    value: s.chars().take(64).collect(),
                })
            }
        }
    };
}

id_type!(
    /// An organisation that owns pipelines and is given a fair share.
    TenantId,
    "tenant id"
);
id_type!(
    /// A pipeline file attached to a repository.
    PipelineId,
    "pipeline id"
);
id_type!(
    /// One execution of a pipeline for a commit.
    RunId,
    "run id"
);
id_type!(
    /// One job of a run's DAG.
    TaskId,
    "task id"
);
id_type!(
    /// One try of a task on one worker.
    AttemptId,
    "attempt id"
);
id_type!(
    /// A registered worker: in-process or a remote agent.
    WorkerId,
    "worker id"
);
id_type!(
    /// A content-addressed artifact record.
    ArtifactId,
    "artifact id"
);
id_type!(
    /// An API token record (never the secret itself).
    TokenId,
    "token id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = RunId::new();
        assert_eq!(id.to_string().parse::<RunId>(), Ok(id));
    }

    #[test]
    fn garbage_is_refused_with_the_kind_of_id_named() {
        let err = "nope".parse::<TaskId>().unwrap_err();
        assert_eq!(err.to_string(), "invalid task id: nope");
    }
}
