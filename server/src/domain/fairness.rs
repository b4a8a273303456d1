//! Fair-share arithmetic: the token bucket of admission, and the choice of which tenant a
//! free worker serves next.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` tokens per second; each
//! trigger takes one. The same arithmetic runs in process and, as a Lua script, in Redis
//! (`service::admission`), so every replica sees one bucket per tenant.
//!
//! The dispatch decision ([`fair_order`]) is a pure function of what each tenant holds:
//! the live claim (`store::repo::claim_attempt`) feeds it counts read from the database,
//! and `gantry simulate` feeds it counts of its virtual workers, so both make the same
//! choices from the same situation.

use std::cmp::Ordering;

/// How far back the attempts a tenant started count against its share of a queue: the
/// memory of the fair scheduler (see `docs/fairness.md`).
pub const FAIR_WINDOW_MS: i64 = 60_000;

/// A tenant with claimable work in a queue, and what it already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    pub tenant_id: String,
    /// Relative share of the queue; values below 1 count as 1.
    pub weight: i32,
    /// Quota of attempts leased or running at once, in every queue together.
    pub max_running: i32,
    /// Attempts of the tenant leased or running now, in every queue (for the quota).
    pub busy: i64,
    /// Attempts of the tenant in this queue that run now or started within
    /// [`FAIR_WINDOW_MS`].
    pub share: i64,
}

impl Contender {
    /// Whether the tenant may start one more attempt.
    pub fn below_quota(&self) -> bool {
        self.busy < i64::from(self.max_running)
    }

    /// Fairest first: lowest share per unit of weight, then tenant id (deterministic).
    pub fn fairer(&self, other: &Contender) -> Ordering {
        // share_a / weight_a < share_b / weight_b, without division.
        let lhs = i128::from(self.share) * i128::from(other.weight.max(1));
        let rhs = i128::from(other.share) * i128::from(self.weight.max(1));
        lhs.cmp(&rhs)
            .then_with(|| self.tenant_id.cmp(&other.tenant_id))
    }
}

/// The order in which a free worker tries tenants: those at their quota are dropped, the
/// rest sorted fairest first. Serving the first and counting its start into its share
/// before the next decision is weighted fair queueing over the window: under saturation
/// each tenant gets starts in proportion to its weight, and a newly arrived tenant (share
/// 0) is served before any tenant that is already busy.
pub fn fair_order(mut contenders: Vec<Contender>) -> Vec<Contender> {
    contenders.retain(Contender::below_quota);
    contenders.sort_by(Contender::fairer);
    contenders
}

/// The state of one tenant's bucket: tokens left at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at_ms: i64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: i32, now_ms: i64) -> Bucket {
        Bucket {
            tokens: f64::from(burst.max(0)),
            at_ms: now_ms,
        }
    }

    /// Refills up to `now_ms` and takes one token. `Err` carries the milliseconds until a
    /// token will be there; the bucket is refilled either way (time only moves forward).
    pub fn take(&mut self, rate: f64, burst: i32, now_ms: i64) -> Result<(), i64> {
        let cap = f64::from(burst.max(1));
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.max(0.0)).min(cap);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate <= 0.0 {
            // A bucket that never refills: refuse for a minute at a time.
            Err(60_000)
        } else {
            Err(((1.0 - self.tokens) / rate * 1000.0).ceil() as i64)
        }
    }
}

/// Whole seconds to wait for `wait_ms`, never zero (a client retrying at once would be
/// refused again).
pub fn retry_after_secs(wait_ms: i64) -> u64 {
    (wait_ms.max(1) as u64).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = Bucket::full(5, 0);
        for _ in 0..5 {
            assert_eq!(b.take(2.0, 5, 0), Ok(()));
        }
        assert_eq!(b.take(2.0, 5, 0), Err(500));
        assert_eq!(b.take(2.0, 5, 250), Err(250));
        assert_eq!(b.take(2.0, 5, 500), Ok(()));
        assert_eq!(retry_after_secs(250), 1);
        assert_eq!(retry_after_secs(1001), 2);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let mut b = Bucket::full(3, 0);
        for _ in 0..3 {
            b.take(1.0, 3, 0).unwrap();
        }
        for _ in 0..3 {
            assert_eq!(b.take(1.0, 3, 1_000_000), Ok(()));
        }
        assert!(b.take(1.0, 3, 1_000_000).is_err());
    }

    fn contender(id: &str, weight: i32, share: i64) -> Contender {
        Contender {
            tenant_id: id.into(),
            weight,
            max_running: 100,
            busy: 0,
            share,
        }
    }

    #[test]
    fn fair_order_drops_tenants_at_quota_and_serves_lowest_share_per_weight() {
        let mut full = contender("a", 1, 0);
        full.busy = 100;
        let order = fair_order(vec![
            full,
            contender("b", 1, 4),
            contender("c", 3, 9),
            contender("d", 2, 2),
        ]);
        let ids: Vec<&str> = order.iter().map(|c| c.tenant_id.as_str()).collect();
        assert_eq!(ids, ["d", "c", "b"]);
    }

    #[test]
    fn weights_split_starts_in_proportion() {
        let mut a = contender("a", 3, 0);
        let mut b = contender("b", 1, 0);
        for _ in 0..400 {
            let first = fair_order(vec![a.clone(), b.clone()])
                .into_iter()
                .next()
                .map(|c| c.tenant_id);
            match first.as_deref() {
                Some("a") => a.share += 1,
                _ => b.share += 1,
            }
        }
        assert_eq!((a.share, b.share), (300, 100));
    }

    #[test]
    fn clock_going_back_never_refills() {
        let mut b = Bucket::full(1, 1000);
        b.take(1.0, 1, 1000).unwrap();
        assert!(b.take(1.0, 1, 0).is_err());
        assert!(b.take(1.0, 1, 1000).is_err());
    }
}
