//! Each tenant's message rate: a token bucket per tenant, refilled at its
//! `max_messages_per_second` and holding a second's worth. A request takes one token per
//! message; without enough it is refused with 429 and a `Retry-After` of when there will be.
//! A request larger than the bucket is let through when the bucket is full, leaving it in debt,
//! so the average rate holds and no request size is refused for ever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{ApiError, Refusal};
use crate::tenants::TenantId;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every tenant's bucket.
#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

impl RateLimits {
    /// Refuses at once when the tenant has no token at all (before its body is read).
    pub(super) fn ready(&self, tenant: &TenantId, per_second: u64) -> Result<(), ApiError> {
        self.with(tenant, per_second, |bucket, _| {
            if bucket.tokens >= 1.0 {
                Ok(())
            } else {
                Err(refusal(tenant, (1.0 - bucket.tokens) / per_second.max(1) as f64))
            }
        })
    }

    /// Takes `n` tokens, or refuses.
    pub(super) fn take(&self, tenant: &TenantId, per_second: u64, n: usize) -> Result<(), ApiError> {
        self.with(tenant, per_second, |bucket, capacity| {
            let n = n as f64;
            if bucket.tokens >= n || (n > capacity && bucket.tokens >= capacity) {
                bucket.tokens -= n;
                Ok(())
            } else {
                let needed = n.min(capacity) - bucket.tokens;
                Err(refusal(tenant, needed / per_second.max(1) as f64))
            }
        })
    }

    fn with<T>(&self, tenant: &TenantId, per_second: u64, f: impl FnOnce(&mut Bucket, f64) -> T) -> T {
        let capacity = per_second.max(1) as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_second as f64;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.at = now;
        f(bucket, capacity)
    }
}

fn refusal(tenant: &TenantId, seconds: f64) -> ApiError {
    ApiError::new(
        Refusal::TooManyRequests,
        format!("tenant {tenant} sends messages faster than its rate (max_messages_per_second)"),
    )
    .retry_after(Duration::from_secs_f64(seconds.ceil().max(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_a_second_of_messages_and_refills_at_the_rate() {
        let limits = RateLimits::default();
        let tenant: TenantId = "t".parse().unwrap();
        assert!(limits.take(&tenant, 100, 60).is_ok());
        assert!(limits.take(&tenant, 100, 30).is_ok());
        let refused = limits.take(&tenant, 100, 30).unwrap_err();
        assert_eq!(refused.refusal, Refusal::TooManyRequests);
        assert_eq!(refused.retry_after, Some(1));
        std::thread::sleep(Duration::from_millis(300));
        assert!(limits.take(&tenant, 100, 25).is_ok(), "30 tokens came back in 300 ms");
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_it_is_full_and_leaves_a_debt() {
        let limits = RateLimits::default();
        let tenant: TenantId = "t".parse().unwrap();
        assert!(limits.take(&tenant, 10, 50).is_ok());
        let refused = limits.ready(&tenant, 10).unwrap_err();
        assert!(refused.retry_after.unwrap() >= 4, "{refused:?}");
    }
}
