//! Send-rate limits: a token bucket per connection, and one per user across that user's
//! connections on this instance. Bursts of up to twice the rate are allowed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Refills at `rate` tokens per second up to `2 * rate`; a rate of 0 never limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn full(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(rate) * 2.0,
            last: now,
        }
    }

    pub(crate) fn take(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again (nothing to remember about its user).
    fn idle(&self, rate: u32, now: Instant) -> bool {
        now.duration_since(self.last) > Duration::from_secs_f64(2.0 + 2.0 / f64::from(rate.max(1)))
    }
}

/// One bucket per user id; buckets of idle users are forgotten when the map grows.
#[derive(Debug)]
pub(crate) struct UserLimiter {
    rate: u32,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

/// Users remembered before idle ones are swept.
const SWEEP_AT: usize = 10_000;

impl UserLimiter {
    pub(crate) fn new(rate: u32) -> UserLimiter {
        UserLimiter {
            rate,
            buckets: Mutex::default(),
        }
    }

    pub(crate) fn take(&self, user: &str) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(user) {
            return b.take(self.rate, now);
        }
        if buckets.len() >= SWEEP_AT {
            let rate = self.rate;
            buckets.retain(|_, b| !b.idle(rate, now));
        }
        let mut b = TokenBucket::full(self.rate, now);
        let ok = b.take(self.rate, now);
        buckets.insert(user.to_owned(), b);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let mut b = TokenBucket::full(5, Instant::now());
        let taken = (0..20).filter(|_| b.take(5, Instant::now())).count();
        assert_eq!(taken, 10);
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(b.take(5, Instant::now()));
        assert!(b.take(5, Instant::now()));
        assert!(!b.take(5, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn users_are_limited_separately_and_rate_zero_never_limits() {
        let l = UserLimiter::new(1);
        assert!(l.take("a") && l.take("a"));
        assert!(!l.take("a"));
        assert!(l.take("b"));
        let free = UserLimiter::new(0);
        assert!((0..1000).all(|_| free.take("a")));
    }
}
