//! Fair-share arithmetic: the token bucket of admission.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` tokens per second; each
//! trigger takes one. The same arithmetic runs in process and, as a Lua script, in Redis
//! (`service::admission`), so every replica sees one bucket per tenant.

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

    #[test]
    fn clock_going_back_never_refills() {
        let mut b = Bucket::full(1, 1000);
        b.take(1.0, 1, 1000).unwrap();
        assert!(b.take(1.0, 1, 0).is_err());
        assert!(b.take(1.0, 1, 1000).is_err());
    }
}
