//! One partition's batch through the plugin, with recovery. A batch whose `process` fails (an
//! error or a panic) is tried again with backoff (on a new plugin instance after a panic); if it
//! keeps failing, it is split in halves, and each half that fails is split again, until the
//! messages that make the plugin fail are found. Those go to the tenant's rejected log with the
//! plugin's error; every other message is stored. So one bad message fails only itself, and the
//! partition never stalls behind it. The version counts a failure towards its quarantine only
//! when it failed on every message of the batch.
//!
//! Rows of an attempt that failed may have been written: the retry writes the same keys again.
//! Rejected records are kept only from the attempts that succeeded.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::instance::{Pause, Task};
use crate::coredms::TenantStore;
use crate::ingest::{self, Rejects, Writes};
use crate::plugin_host::rows::RejectedRecord;
use crate::plugin_host::{CallError, CallErrorKind, PluginVersion, StreamMessage};
use crate::queue::QueuedMessage;
use crate::source::Source;

/// What a partition's batch came to.
pub(super) struct Ingested {
    /// Messages rejected.
    pub rejected: u64,
    /// Plugin calls that failed on the way.
    pub failures: u64,
    /// The rejected messages kept, to append to the tenant's log.
    pub rejected_file: Option<std::path::PathBuf>,
}

/// Why one try of a batch did not succeed.
enum Failure {
    /// The plugin failed on it.
    Plugin(CallError),
    /// Storage (or the plugin instance) cannot go on now: pause, nothing is committed.
    Pause(Pause),
}

/// State of one partition's batch through its tries.
struct Partition<'a> {
    task: &'a mut Task,
    version: &'a Arc<PluginVersion>,
    store: &'a Arc<dyn TenantStore>,
    /// The poll's writes, shared by its partitions: one partition's last writes finish while
    /// the plugin works on the next.
    writes: &'a mut Writes,
    rejects: Rejects,
    failures: u64,
    last_error: Option<CallError>,
}

/// Ingests one partition's messages (in offset order).
pub(super) async fn ingest_partition(
    task: &mut Task,
    version: &Arc<PluginVersion>,
    store: &Arc<dyn TenantStore>,
    writes: &mut Writes,
    messages: Vec<QueuedMessage>,
) -> Result<Ingested, Pause> {
    let (Some(first), Some(last)) = (messages.first().cloned(), messages.last().cloned()) else {
        return Ok(Ingested {
            rejected: 0,
            failures: 0,
            rejected_file: None,
        });
    };
    let source = Source::Stream {
        partition: first.partition,
        first: first.offset,
        last: last.offset,
    };
    let path = task.ctx.data_dir.join("rejected-tmp").join(format!(
        "stream-{}-{}-{}-{}.jsonl",
        task.tenant, first.partition, first.offset, last.offset
    ));
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let rejects = Rejects::new(source, path, task.ctx.config.rejected_kept_per_batch);
    let retries = task.ctx.config.batch_retries;
    let mut partition = Partition {
        task,
        version,
        store,
        writes,
        rejects,
        failures: 0,
        last_error: None,
    };
    let messages: Vec<StreamMessage> = messages
        .into_iter()
        .map(|m| StreamMessage {
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            payload: m.payload,
        })
        .collect();
    let mut settled = false;
    for attempt in 0..=retries {
        match partition.attempt(&messages).await {
            Ok(()) => {
                settled = true;
                break;
            }
            Err(Failure::Pause(pause)) => return Err(pause),
            Err(Failure::Plugin(_)) if attempt < retries => {
                tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt))).await;
            }
            Err(Failure::Plugin(_)) => {}
        }
    }
    let all_failed = if settled {
        false
    } else {
        log::warn!(
            "stream: tenant={} instance={} partition {} offsets {}..={}: the plugin keeps failing ({}); finding the messages that make it fail",
            partition.task.tenant,
            partition.task.id,
            first.partition,
            first.offset,
            last.offset,
            partition.last_error.as_ref().map_or("", |e| e.message.as_str())
        );
        partition.isolate(&messages).await?
    };
    let outcome = match (&partition.last_error, all_failed) {
        (Some(error), true) => Err(error.clone()),
        _ => Ok(()),
    };
    partition.version.record_outcome(outcome.as_ref().map(|_| ()));
    let rejected = partition.rejects.total();
    let (file, _kept, _total) = partition.rejects.close().await;
    Ok(Ingested {
        rejected,
        failures: partition.failures,
        rejected_file: file,
    })
}

impl Partition<'_> {
    /// One try of `messages`: their rows written, their rejected records kept if it succeeds.
    async fn attempt(&mut self, messages: &[StreamMessage]) -> Result<(), Failure> {
        let ctx = Arc::clone(&self.task.ctx);
        let instance = self
            .task
            .instance(self.version)
            .await
            .map_err(|e| Failure::Pause(Pause(e)))?;
        let config = &ctx.config;
        let stream = instance
            .process(messages.to_vec(), config.channel_batches, ctx.cancel.clone())
            .map_err(|e| Failure::Pause(Pause(format!("the plugin instance is closed: {e}"))))?;
        let mut held: Vec<RejectedRecord> = Vec::new();
        self.task.period.calls += 1;
        let outcome = ingest::feed(stream, self.store, self.writes, &mut held).await;
        if let Some(e) = self.writes.failed() {
            return Err(Failure::Pause(Pause(format!("storage failed: {e}"))));
        }
        match outcome.result {
            Ok(()) => {
                self.rejects.add(held).await;
                Ok(())
            }
            Err(error) => {
                self.failures += 1;
                self.task.period.failures += 1;
                if error.kind == CallErrorKind::Panic {
                    // Its state may be broken: a new instance for the next try.
                    self.task.plugin = None;
                }
                self.last_error = Some(error.clone());
                Err(Failure::Plugin(error))
            }
        }
    }

    /// Splits `messages` until the ones the plugin fails on are found; those are rejected with
    /// the plugin's error, the others stored. Returns whether every message failed.
    fn isolate<'m>(&'m mut self, messages: &'m [StreamMessage]) -> BoxFuture<'m, Result<bool, Pause>> {
        Box::pin(async move {
            if let [message] = messages {
                return match self.attempt(messages).await {
                    Ok(()) => Ok(false),
                    Err(Failure::Pause(pause)) => Err(pause),
                    Err(Failure::Plugin(error)) => {
                        let reason = format!("the plugin failed on this message: {}", error.message);
                        let raw = String::from_utf8_lossy(&message.payload).into_owned();
                        self.rejects.reject(message.offset, reason, raw).await;
                        Ok(true)
                    }
                };
            }
            let (left, right) = messages.split_at(messages.len() / 2);
            let mut all_failed = true;
            for half in [left, right] {
                match self.attempt(half).await {
                    Ok(()) => all_failed = false,
                    Err(Failure::Pause(pause)) => return Err(pause),
                    Err(Failure::Plugin(_)) => all_failed &= self.isolate(half).await?,
                }
            }
            Ok(all_failed)
        })
    }
}
