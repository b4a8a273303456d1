//! The three state machines — run, task, attempt — as transition tables.
//!
//! Transitions are data: each table lists every allowed `(from, to)` pair, and
//! [`Transition::check`] is the one function that validates a change and returns the event
//! it produces. The store applies the change with a conditional update on the old state, so
//! a race between nodes is settled by the database, never here. Each state's doc names the
//! service that moves things out of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DomainError;

/// The kind of entity a transition or event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Entity {
    Run,
    Task,
    Attempt,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Run => "run",
            Entity::Task => "task",
            Entity::Attempt => "attempt",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Entity {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "run" => Ok(Entity::Run),
            "task" => Ok(Entity::Task),
            "attempt" => Ok(Entity::Attempt),
            _ => Err(DomainError::Invalid {
                what: "entity",
                value: s.to_owned(),
            }),
        }
    }
}

/// Behaviour shared by the three state enums.
pub trait StateMachine: Copy + Eq + fmt::Debug + 'static {
    const ENTITY: Entity;
    /// Every allowed `(from, to)` pair.
    const TRANSITIONS: &'static [(Self, Self)];
    /// Every state, for exhaustive tests.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn is_terminal(self) -> bool;
    fn can_go_to(self, to: Self) -> bool {
        Self::TRANSITIONS.contains(&(self, to))
    }
}

macro_rules! state_enum {
    (
        $(#[$meta:meta])* $name:ident,
        [ $( $(#[$vmeta:meta])* $variant:ident = $text:literal $(terminal $term:tt)? ),* $(,)? ]
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )*
                    _ => Err(DomainError::Invalid { what: stringify!($name), value: s.chars().take(64).collect() }),
                }
            }
        }

        impl $name {
            pub fn is_terminal(self) -> bool {
                match self {
                    $( $name::$variant => state_enum!(@terminal $($term)?), )*
                }
            }
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];
        }

    };
    (@terminal) => { false };
    (@terminal $t:tt) => { true };
}

state_enum!(
    /// The state of a run.
    RunState, [
        /// Planned, waiting for its first task to start (or for its concurrency group).
        /// Left by the service that starts its first attempt, or by cancellation.
        Queued = "queued",
        /// At least one task has started. Left when its last task ends (service).
        Running = "running",
        /// Cancel requested; running attempts are being stopped. Left by the service when
        /// the last running attempt reports back, or by the reconciler.
        Cancelling = "cancelling",
        Succeeded = "succeeded" terminal !,
        Failed = "failed" terminal !,
        Cancelled = "cancelled" terminal !,
    ]
);

state_enum!(
    /// The state of a task (a job of the DAG).
    TaskState, [
        /// Waiting for upstream tasks (`pending_deps > 0`). Left by the service that
        /// finishes its last upstream task.
        Blocked = "blocked",
        /// Its current attempt is queued. Left when a worker starts the attempt.
        Ready = "ready",
        /// An attempt is running. Left by the completion call or the reconciler.
        Running = "running",
        /// A failed attempt will be retried after its backoff. Left by the scheduler when
        /// the backoff has passed.
        Retrying = "retrying",
        Succeeded = "succeeded" terminal !,
        Failed = "failed" terminal !,
        Cancelled = "cancelled" terminal !,
        Skipped = "skipped" terminal !,
        Cached = "cached" terminal !,
    ]
);

state_enum!(
    /// The state of one attempt.
    AttemptState, [
        /// Created, not yet eligible: its task is blocked or its backoff has not passed.
        /// Left by the service that makes the task ready, or by the scheduler after backoff.
        Scheduled = "scheduled",
        /// Eligible, waiting for a worker of its queue. Left by a lease.
        Queued = "queued",
        /// Taken by a worker under a lease token. Left when the worker starts it, or by the
        /// reconciler when the lease expires.
        Leased = "leased",
        /// Executing. Left by the worker's completion call, or by the reconciler.
        Running = "running",
        Succeeded = "succeeded" terminal !,
        Failed = "failed" terminal !,
        TimedOut = "timed_out" terminal !,
        Lost = "lost" terminal !,
        Cancelled = "cancelled" terminal !,
    ]
);

use AttemptState as A;
use RunState as R;
use TaskState as T;

impl StateMachine for RunState {
    const ENTITY: Entity = Entity::Run;
    const TRANSITIONS: &'static [(Self, Self)] = &[
        (R::Queued, R::Running),
        (R::Queued, R::Succeeded),
        (R::Queued, R::Failed),
        (R::Queued, R::Cancelling),
        (R::Queued, R::Cancelled),
        (R::Running, R::Succeeded),
        (R::Running, R::Failed),
        (R::Running, R::Cancelling),
        (R::Running, R::Cancelled),
        (R::Cancelling, R::Cancelled),
    ];
    const ALL: &'static [Self] = RunState::ALL;
    fn as_str(self) -> &'static str {
        RunState::as_str(self)
    }
    fn is_terminal(self) -> bool {
        RunState::is_terminal(self)
    }
}

impl StateMachine for TaskState {
    const ENTITY: Entity = Entity::Task;
    const TRANSITIONS: &'static [(Self, Self)] = &[
        (T::Blocked, T::Ready),
        (T::Blocked, T::Skipped),
        (T::Blocked, T::Cancelled),
        (T::Blocked, T::Cached),
        (T::Ready, T::Running),
        (T::Ready, T::Cancelled),
        (T::Ready, T::Cached),
        (T::Ready, T::Failed),
        (T::Running, T::Succeeded),
        (T::Running, T::Failed),
        (T::Running, T::Cancelled),
        (T::Running, T::Retrying),
        (T::Retrying, T::Ready),
        (T::Retrying, T::Cancelled),
        (T::Retrying, T::Failed),
    ];
    const ALL: &'static [Self] = TaskState::ALL;
    fn as_str(self) -> &'static str {
        TaskState::as_str(self)
    }
    fn is_terminal(self) -> bool {
        TaskState::is_terminal(self)
    }
}

impl StateMachine for AttemptState {
    const ENTITY: Entity = Entity::Attempt;
    const TRANSITIONS: &'static [(Self, Self)] = &[
        (A::Scheduled, A::Queued),
        (A::Scheduled, A::Cancelled),
        (A::Queued, A::Leased),
        (A::Queued, A::Cancelled),
        (A::Leased, A::Running),
        (A::Leased, A::Failed),
        (A::Leased, A::Lost),
        (A::Leased, A::TimedOut),
        (A::Leased, A::Cancelled),
        (A::Running, A::Succeeded),
        (A::Running, A::Failed),
        (A::Running, A::TimedOut),
        (A::Running, A::Lost),
        (A::Running, A::Cancelled),
    ];
    const ALL: &'static [Self] = AttemptState::ALL;
    fn as_str(self) -> &'static str {
        AttemptState::as_str(self)
    }
    fn is_terminal(self) -> bool {
        AttemptState::is_terminal(self)
    }
}

/// A checked state change: what the store applies (by compare-and-set on `from`) and what
/// the event log records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub entity: Entity,
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub reason: String,
}

impl Transition {
    /// Checks `from → to` against the table of `S` and returns the event to record.
    pub fn check<S: StateMachine>(
        from: S,
        to: S,
        reason: impl Into<String>,
    ) -> Result<Transition, DomainError> {
        if from.can_go_to(to) {
            Ok(Transition {
                entity: S::ENTITY,
                from: Some(from.as_str()),
                to: to.as_str(),
                reason: reason.into(),
            })
        } else {
            Err(DomainError::InvalidTransition {
                entity: S::ENTITY,
                from: from.as_str().to_owned(),
                to: to.as_str().to_owned(),
            })
        }
    }

    /// The event of an entity coming into existence in state `to`.
    pub fn created<S: StateMachine>(to: S, reason: impl Into<String>) -> Transition {
        Transition {
            entity: S::ENTITY,
            from: None,
            to: to.as_str(),
            reason: reason.into(),
        }
    }
}

/// The task state that agrees with its newest attempt, given whether the task is waiting
/// for a retry. Used by the reconciler to repair drift and by property tests.
pub fn task_state_for_attempt(newest: AttemptState, deps_pending: bool) -> Option<TaskState> {
    match newest {
        A::Scheduled if deps_pending => Some(T::Blocked),
        A::Scheduled => Some(T::Retrying),
        A::Queued => Some(T::Ready),
        A::Leased => Some(T::Ready),
        A::Running => Some(T::Running),
        A::Succeeded => Some(T::Succeeded),
        A::Cancelled => Some(T::Cancelled),
        // A failed, lost or timed-out newest attempt means the task failed for good: had
        // it been retried there would be a newer attempt.
        A::Failed | A::TimedOut | A::Lost => Some(T::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absorbs<S: StateMachine>() {
        for &from in S::ALL {
            if from.is_terminal() {
                for &to in S::ALL {
                    assert!(
                        Transition::check(from, to, "x").is_err(),
                        "{} {:?} must not go to {:?}",
                        S::ENTITY,
                        from,
                        to
                    );
                }
            }
        }
    }

    #[test]
    fn terminal_states_allow_no_transition() {
        absorbs::<RunState>();
        absorbs::<TaskState>();
        absorbs::<AttemptState>();
    }

    #[test]
    fn every_non_terminal_state_has_a_way_out() {
        fn check<S: StateMachine>() {
            for &s in S::ALL {
                if !s.is_terminal() {
                    assert!(S::TRANSITIONS.iter().any(|(f, _)| *f == s), "{s:?}");
                }
            }
        }
        check::<RunState>();
        check::<TaskState>();
        check::<AttemptState>();
    }

    #[test]
    fn states_round_trip_through_text() {
        for s in AttemptState::ALL {
            assert_eq!(s.as_str().parse::<AttemptState>(), Ok(*s));
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(*s));
        }
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(*s));
        }
    }

    #[test]
    fn a_refused_transition_names_both_states() {
        let err = Transition::check(A::Succeeded, A::Running, "late").unwrap_err();
        assert_eq!(
            err.to_string(),
            "attempt cannot go from succeeded to running"
        );
    }
}
