//! The platform-wide cap on writes in flight to a backend, shared by the tenants, with a
//! per-tenant cap beneath it: however many tenants ingest at once, the backend never sees
//! more than the global number of concurrent writes, and no tenant takes all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tenants::TenantId;

/// Hands out write permits.
#[derive(Debug)]
pub struct WriteLimiter {
    global: Arc<Semaphore>,
    capacity: usize,
    per_tenant: usize,
    tenants: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
}

/// Held while a write is in flight.
#[derive(Debug)]
pub struct WritePermit {
    _tenant: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl WriteLimiter {
    /// At most `global` writes in flight in all, `per_tenant` for one tenant.
    pub fn new(global: usize, per_tenant: usize) -> Self {
        WriteLimiter {
            global: Arc::new(Semaphore::new(global.max(1))),
            capacity: global.max(1),
            per_tenant: per_tenant.clamp(1, global.max(1)),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a permit for a write of `tenant`: first the tenant's own, then a global one
    /// (both queues are first-come first-served).
    pub async fn acquire(&self, tenant: &TenantId) -> WritePermit {
        let tenant_semaphore = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            tenants
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        let tenant_permit = tenant_semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let global_permit = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        WritePermit {
            _tenant: tenant_permit,
            _global: global_permit,
        }
    }

    /// Writes in flight now, all tenants.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.global.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_tenant_cannot_take_every_global_permit() {
        let limiter = WriteLimiter::new(4, 2);
        let a: TenantId = "a".parse().unwrap();
        let b: TenantId = "b".parse().unwrap();
        let _a1 = limiter.acquire(&a).await;
        let _a2 = limiter.acquire(&a).await;
        // a's third write waits for a's own permits, leaving the global ones to b.
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), limiter.acquire(&a)).await;
        assert!(third.is_err());
        let _b1 = limiter.acquire(&b).await;
        let _b2 = limiter.acquire(&b).await;
        assert_eq!(limiter.in_flight(), 4);
    }
}
