//! Error kinds, retry policies and backoff.
//!
//! The node that records a failed attempt decides its retry here, in the same transaction:
//! [`RetryPolicy::decide`] is pure, and the jitter is drawn from a seed derived from the
//! attempt id, so the same history always gives the same schedule (replays, simulations and
//! tests see exactly what production saw).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DomainError;

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A step's command exited non-zero.
    Exit,
    /// The attempt ran past its `timeout-minutes`.
    Timeout,
    /// Its heartbeat or lease expired: the worker is gone or cut off.
    Lost,
    /// Cancelled by a user or by `cancel-in-progress`. Never retried.
    Cancelled,
    /// Checkout, workspace, artifact transfer or agent shutdown failed.
    Infra,
}

impl ErrorKind {
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::Exit,
        ErrorKind::Timeout,
        ErrorKind::Lost,
        ErrorKind::Cancelled,
        ErrorKind::Infra,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Exit => "exit",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Lost => "lost",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Infra => "infra",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| DomainError::Invalid {
                what: "error kind",
                value: s.chars().take(64).collect(),
            })
    }
}

/// How the random part of a backoff is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Uniform in `[0, delay]`: spreads a thundering herd the most.
    Full,
    /// Uniform in `[delay/2, delay]`: keeps a floor under the wait.
    Equal,
    /// Exactly `delay`.
    None,
}

/// `min(max, initial × factor^(index-1))`, then jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1_000,
            factor: 2.0,
            max_ms: 60_000,
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The delay before attempt `failed_index + 1`, without jitter: never decreasing in
    /// `failed_index` and never above `max_ms`.
    pub fn base_ms(&self, failed_index: u32) -> u64 {
        let exponent = failed_index.saturating_sub(1).min(1_000) as i32;
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let raw = self.initial_ms as f64 * factor.powi(exponent);
        if !raw.is_finite() || raw >= self.max_ms as f64 {
            self.max_ms
        } else {
            raw as u64
        }
    }

    /// The delay with jitter drawn from `seed` (derive it from the attempt id).
    pub fn delay_ms(&self, failed_index: u32, seed: u64) -> u64 {
        let base = self.base_ms(failed_index);
        let unit = unit_interval(seed);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => (base as f64 * unit) as u64,
            Jitter::Equal => base / 2 + ((base - base / 2) as f64 * unit) as u64,
        }
    }
}

/// A uniform number in `[0, 1]` from a 64-bit seed (splitmix64 finaliser): cheap, pure and
/// well mixed even for sequential seeds.
fn unit_interval(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / ((1u64 << 53) - 1) as f64
}

/// A seed for the jitter of the retry that follows the attempt with this id.
pub fn seed_from_bytes(bytes: &[u8]) -> u64 {
    // FNV-1a: stable across platforms and releases, unlike std's hasher.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Which failures of a task are retried, how often and how far apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts, not retries: 3 means at most three tries.
    pub max_attempts: u32,
    /// Error kinds that are retried. `Cancelled` is never retried, whatever is listed.
    pub on: Vec<ErrorKind>,
    /// With `exit` listed: only these exit codes are retried (empty: any).
    pub exit_codes: Vec<i32>,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    /// A failing command is not retried unless asked; a vanished worker or broken
    /// infrastructure is, as users of hosted CI expect.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            on: vec![ErrorKind::Lost, ErrorKind::Infra],
            exit_codes: Vec::new(),
            backoff: Backoff::default(),
        }
    }
}

/// What happens after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryDecision {
    /// Insert attempt `next_index`, not before `backoff_ms` from now.
    Retry { next_index: u32, backoff_ms: u64 },
    /// The task fails for good.
    GiveUp,
}

impl RetryPolicy {
    pub fn retries(&self, kind: ErrorKind, exit_code: Option<i32>) -> bool {
        if kind == ErrorKind::Cancelled || !self.on.contains(&kind) {
            return false;
        }
        match (kind, exit_code) {
            (ErrorKind::Exit, Some(code)) if !self.exit_codes.is_empty() => {
                self.exit_codes.contains(&code)
            }
            _ => true,
        }
    }

    /// Decides the retry of attempt `failed_index` (1-based) that failed with `kind`.
    pub fn decide(
        &self,
        failed_index: u32,
        kind: ErrorKind,
        exit_code: Option<i32>,
        seed: u64,
    ) -> RetryDecision {
        if failed_index < self.max_attempts && self.retries(kind, exit_code) {
            RetryDecision::Retry {
                next_index: failed_index + 1,
                backoff_ms: self.backoff.delay_ms(failed_index, seed),
            }
        } else {
            RetryDecision::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::{AttemptState, StateMachine, TaskState, task_state_for_attempt};
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = ErrorKind> {
        prop::sample::select(ErrorKind::ALL.to_vec())
    }

    fn backoff() -> impl Strategy<Value = Backoff> {
        (
            0u64..100_000,
            1.0f64..5.0,
            0u64..1_000_000,
            prop::sample::select(vec![Jitter::Full, Jitter::Equal, Jitter::None]),
        )
            .prop_map(|(initial_ms, factor, max_ms, jitter)| Backoff {
                initial_ms,
                factor,
                max_ms,
                jitter,
            })
    }

    #[test]
    fn default_policy_retries_lost_and_infra_but_not_a_failing_command() {
        let p = RetryPolicy::default();
        assert!(p.retries(ErrorKind::Lost, None));
        assert!(p.retries(ErrorKind::Infra, None));
        assert!(!p.retries(ErrorKind::Exit, Some(1)));
        assert!(!p.retries(ErrorKind::Timeout, None));
    }

    #[test]
    fn exit_codes_narrow_which_failures_are_retried() {
        let p = RetryPolicy {
            on: vec![ErrorKind::Exit],
            exit_codes: vec![137],
            ..RetryPolicy::default()
        };
        assert!(p.retries(ErrorKind::Exit, Some(137)));
        assert!(!p.retries(ErrorKind::Exit, Some(1)));
    }

    #[test]
    fn the_same_seed_gives_the_same_delay() {
        let b = Backoff::default();
        assert_eq!(b.delay_ms(3, 42), b.delay_ms(3, 42));
        assert_ne!(b.delay_ms(3, 42), b.delay_ms(3, 43));
    }

    proptest! {
        #[test]
        fn backoff_base_never_decreases_and_stays_under_its_cap(b in backoff(), i in 1u32..200) {
            prop_assert!(b.base_ms(i) <= b.max_ms);
            prop_assert!(b.base_ms(i) <= b.base_ms(i + 1));
        }

        #[test]
        fn jittered_backoff_stays_within_its_band(b in backoff(), i in 1u32..200, seed: u64) {
            let base = b.base_ms(i);
            let d = b.delay_ms(i, seed);
            prop_assert!(d <= base);
            match b.jitter {
                Jitter::Full => {}
                Jitter::Equal => prop_assert!(d >= base / 2),
                Jitter::None => prop_assert_eq!(d, base),
            }
        }

        #[test]
        fn cancelled_is_never_retried(max in 1u32..10, i in 1u32..10, seed: u64) {
            let p = RetryPolicy { max_attempts: max, on: ErrorKind::ALL.to_vec(), ..RetryPolicy::default() };
            prop_assert_eq!(p.decide(i, ErrorKind::Cancelled, None, seed), RetryDecision::GiveUp);
        }

        /// Drives one task through random failures as the store does, and checks after
        /// every step that attempts never exceed `max_attempts` and that the task's state
        /// agrees with its newest attempt.
        #[test]
        fn attempts_never_exceed_max_and_task_agrees_with_newest_attempt(
            max in 1u32..6,
            on in prop::collection::vec(kind(), 0..5),
            failures in prop::collection::vec((kind(), prop::option::of(0i32..3)), 0..12),
        ) {
            let policy = RetryPolicy { max_attempts: max, on, ..RetryPolicy::default() };
            let mut attempts = vec![AttemptState::Running];
            let mut task = TaskState::Running;
            for (k, code) in failures {
                if task.is_terminal() {
                    // Terminal: every further event is refused.
                    prop_assert!(!task.can_go_to(TaskState::Running));
                    break;
                }
                let index = attempts.len() as u32;
                let failed = match k {
                    ErrorKind::Timeout => AttemptState::TimedOut,
                    ErrorKind::Lost => AttemptState::Lost,
                    ErrorKind::Cancelled => AttemptState::Cancelled,
                    _ => AttemptState::Failed,
                };
                prop_assert!(AttemptState::Running.can_go_to(failed));
                *attempts.last_mut().unwrap() = failed;
                match policy.decide(index, k, code, u64::from(index)) {
                    RetryDecision::Retry { next_index, .. } => {
                        prop_assert_eq!(next_index, index + 1);
                        prop_assert!(task.can_go_to(TaskState::Retrying));
                        task = TaskState::Retrying;
                        attempts.push(AttemptState::Scheduled);
                        prop_assert_eq!(task_state_for_attempt(AttemptState::Scheduled, false), Some(task));
                        // The backoff passes, a worker leases and starts it.
                        task = TaskState::Ready;
                        task = if task.can_go_to(TaskState::Running) { TaskState::Running } else { task };
                        *attempts.last_mut().unwrap() = AttemptState::Running;
                    }
                    RetryDecision::GiveUp => {
                        let to = if k == ErrorKind::Cancelled { TaskState::Cancelled } else { TaskState::Failed };
                        prop_assert!(task.can_go_to(to));
                        task = to;
                    }
                }
                prop_assert!(attempts.len() as u32 <= max);
                prop_assert_eq!(task_state_for_attempt(*attempts.last().unwrap(), false), Some(task));
            }
        }
    }
}
