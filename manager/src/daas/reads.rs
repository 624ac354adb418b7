//! A bound on the reads (tables, rows, counts) one tenant has in progress: a few run, a few
//! more wait their turn, and beyond that a read is refused with 429 and `Retry-After`, so a
//! burst of reads by one tenant can neither pile up work and memory in the platform nor slow
//! the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, Refusal};
use crate::tenants::TenantId;

/// Reads that may wait for a turn, per read allowed at once.
const WAITING_PER_READ: usize = 4;

struct TenantReads {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// The per-tenant bound.
pub struct ReadGate {
    per_tenant: usize,
    tenants: Mutex<HashMap<TenantId, Arc<TenantReads>>>,
}

impl ReadGate {
    /// `per_tenant` reads at once for each tenant.
    pub fn new(per_tenant: usize) -> Self {
        ReadGate {
            per_tenant: per_tenant.max(1),
            tenants: Mutex::default(),
        }
    }

    /// Waits for a turn, or refuses when too many reads of the tenant already wait.
    pub(super) async fn enter(&self, tenant: &TenantId) -> Result<OwnedSemaphorePermit, ApiError> {
        let reads = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(tenants.entry(tenant.clone()).or_insert_with(|| {
                Arc::new(TenantReads {
                    running: Arc::new(Semaphore::new(self.per_tenant)),
                    waiting: AtomicUsize::new(0),
                })
            }))
        };
        if let Ok(permit) = Arc::clone(&reads.running).try_acquire_owned() {
            return Ok(permit);
        }
        if reads.waiting.fetch_add(1, Ordering::SeqCst) >= self.per_tenant * WAITING_PER_READ {
            reads.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                Refusal::TooManyRequests,
                format!("tenant {tenant} has too many reads in progress; try again shortly"),
            )
            .retry_after(Duration::from_secs(1)));
        }
        let permit = Arc::clone(&reads.running)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the read bound was closed"));
        reads.waiting.fetch_sub(1, Ordering::SeqCst);
        permit
    }
}
