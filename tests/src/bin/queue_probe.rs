//! A producer to kill: opens a tenant's queue, produces messages with unique ids in a loop
//! (several produce calls in flight) and prints each id to stdout once its produce call is
//! acknowledged. `tests/queue.rs` kills it with SIGKILL and checks that every printed id is in
//! the topic.
//!
//! Usage:
//!   queue_probe embedded <data_dir> <tenant>
//!   queue_probe kafka <brokers> <topic_prefix> <tenant>
//!
//! It stops by itself when stdout is closed (its reader is gone) or after 10 minutes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mysimbdp::queue::{QueueBackend, QueueConfig, open};
use mysimbdp::tenants::TenantId;

/// Produce calls in flight at once.
const IN_FLIGHT: usize = 4;
/// Messages per produce call.
const BATCH: u64 = 50;

fn usage() -> ! {
    eprintln!("usage: queue_probe embedded <data_dir> <tenant> | queue_probe kafka <brokers> <topic_prefix> <tenant>");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = QueueConfig::default();
    let (data_dir, tenant) = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["embedded", data_dir, tenant] => (PathBuf::from(data_dir), *tenant),
        ["kafka", brokers, prefix, tenant] => {
            config.backend = QueueBackend::Kafka;
            config.kafka.brokers = brokers.to_string();
            config.kafka.topic_prefix = prefix.to_string();
            (std::env::temp_dir(), *tenant)
        }
        _ => usage(),
    };
    let tenant: TenantId = tenant.parse().unwrap_or_else(|e| {
        eprintln!("queue_probe: {e}");
        usage()
    });
    let queue = open(&config, &data_dir).await.unwrap_or_else(|e| {
        eprintln!("queue_probe: cannot open the queue: {e}");
        std::process::exit(1)
    });
    queue.ensure_topic(&tenant).await.expect("the topic can be created");
    let next_id = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (queue, tenant, next_id) = (Arc::clone(&queue), tenant.clone(), Arc::clone(&next_id));
        producers.push(tokio::spawn(async move {
            while started.elapsed() < Duration::from_secs(600) {
                let first = next_id.fetch_add(BATCH, Ordering::Relaxed);
                let ids: Vec<u64> = (first..first + BATCH).collect();
                let messages = ids.iter().map(|id| format!("probe-{id:012}").into_bytes()).collect();
                if let Err(e) = queue.produce(&tenant, messages).await {
                    eprintln!("queue_probe: produce failed (not acknowledged, not printed): {e}");
                    continue;
                }
                let mut out = std::io::stdout().lock();
                let printed = ids.iter().try_for_each(|id| writeln!(out, "probe-{id:012}"));
                if printed.and_then(|()| out.flush()).is_err() {
                    std::process::exit(0);
                }
            }
        }));
    }
    for producer in producers {
        let _ = producer.await;
    }
}
