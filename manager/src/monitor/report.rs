//! An instance's periodic report, and the latency accumulator behind its mean and p95.

use serde::{Deserialize, Serialize};

use crate::tenants::TenantId;

/// What one instance did over one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The tenant.
    pub tenant: TenantId,
    /// The instance.
    pub instance: String,
    /// Start and end of the period (seconds since the epoch).
    pub period_start: f64,
    /// End of the period.
    pub period_end: f64,
    /// Messages processed (stored or rejected) and committed.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Rows stored.
    pub rows: u64,
    /// Messages rejected.
    pub rejected: u64,
    /// Plugin calls made.
    pub calls: u64,
    /// Plugin calls that failed (retried, or split to find a poison message).
    pub failures: u64,
    /// Mean time from a message's acceptance (its produce timestamp) to its rows being
    /// durable, ms; none without messages.
    pub avg_latency_ms: Option<f64>,
    /// p95 of it, ms (to the upper edge of its histogram bucket, within 10 %).
    pub p95_latency_ms: Option<f64>,
    /// The group's lag when last read.
    pub lag: Option<u64>,
    /// The partitions it consumes.
    pub partitions: Vec<u32>,
    /// What it was doing at the end of the period (`running`, `waiting`, ...).
    pub state: String,
    /// Why it waits, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The tenant's data occupies its storage quota.
    pub over_quota: bool,
}

/// Latencies of a period: exact mean, p95 from a histogram of 10 % wide buckets (1 ms to
/// about 1 h), in constant memory.
#[derive(Debug, Clone)]
pub struct Latencies {
    count: u64,
    sum_ms: f64,
    buckets: Vec<u64>,
}

const FIRST_MS: f64 = 1.0;
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 160;

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            count: 0,
            sum_ms: 0.0,
            buckets: vec![0; BUCKETS],
        }
    }
}

impl Latencies {
    /// Adds one latency.
    pub fn add(&mut self, ms: f64) {
        let ms = ms.max(0.0);
        self.count += 1;
        self.sum_ms += ms;
        let index = if ms <= FIRST_MS {
            0
        } else {
            ((ms / FIRST_MS).ln() / GROWTH.ln()).ceil() as usize
        };
        self.buckets[index.min(BUCKETS - 1)] += 1;
    }

    /// How many.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean, if any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }

    /// The `q` quantile (0..1), as its bucket's upper edge.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(FIRST_MS * GROWTH.powi(index as i32));
            }
        }
        None
    }
}
