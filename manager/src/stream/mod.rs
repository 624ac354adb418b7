//! stream manager: runs the tenants' `clientstreamingestapp` instances. Each instance consumes
//! its tenant's topic in the tenant's consumer group (instances share the partitions), hands
//! bounded batches to the tenant's stream plugin, writes the rows through the shared ingestion
//! path ([`crate::ingest`]) and commits the offsets only once the rows are durable
//! ([`instance`]). A batch the plugin keeps failing on is split until the messages that make it
//! fail are found; those go to the tenant's rejected log, the rest is stored ([`recovery`]).
//!
//! Which instances should run is kept in the platform's state (`stream-instances.json`), so the
//! instances that ran before a restart run again after it. A supervisor loop makes it so: it
//! starts what should run (a tenant's `min_stream_instances` when nothing was chosen), restarts
//! an instance whose task ended, and stops the instances of a tenant that was removed; the API
//! starts and stops instances by changing the same state.

mod decide;
mod instance;
mod recovery;
mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use decide::{Action, Crossed, Decision};
pub use instance::{InstanceState, InstanceStatus};

use crate::coredms::CoreDms;
use crate::monitor::{InstanceReport, MonitorConfig};
use crate::plugin_host::PluginHost;
use crate::queue::Queue;
use crate::report::ReportStore;
use crate::telemetry::Metrics;
use crate::tenants::watch::TenantsHandle;
use crate::tenants::{Tenant, TenantId};
use crate::usage::UsageLedger;
use state::DesiredInstances;

/// The consumer group every instance of a tenant joins.
pub const GROUP: &str = "stream";

/// Settings of the stream manager and the message API (`[stream]`); a tenant's entry in
/// `customer_information.json` may set its own limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Messages per poll, at most (twice as many while an instance drains a backlog); a poll is
    /// split by partition, one plugin call each.
    pub batch_messages: usize,
    /// How long an instance waits to fill a batch, in milliseconds.
    pub batch_wait_ms: u64,
    /// Row batches buffered between a plugin and storage.
    pub channel_batches: usize,
    /// Writes in flight per instance.
    pub writes_in_flight: usize,
    /// Rows per batch a plugin hands over.
    pub batch_rows: u32,
    /// Times a failing batch is tried again (with backoff) before it is split.
    pub batch_retries: u32,
    /// Rejected messages kept per batch (all are counted).
    pub rejected_kept_per_batch: u64,
    /// A tenant's largest message, unless it sets `max_message_bytes`.
    pub max_message_bytes: u64,
    /// A tenant's largest message request, unless it sets `max_request_bytes`.
    pub max_request_bytes: u64,
    /// A tenant's message rate, unless it sets `max_messages_per_second`.
    pub max_messages_per_second: u64,
    /// Instances of a tenant kept running at least, unless it sets `min_stream_instances`.
    pub min_instances: u32,
    /// Instances of a tenant at most, unless it sets `max_stream_instances`.
    pub max_instances: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            batch_messages: 5000,
            batch_wait_ms: 50,
            channel_batches: 4,
            writes_in_flight: 4,
            batch_rows: 2000,
            batch_retries: 2,
            rejected_kept_per_batch: 1000,
            max_message_bytes: 1 << 20,
            max_request_bytes: 16 << 20,
            max_messages_per_second: 50_000,
            min_instances: 1,
            max_instances: 4,
        }
    }
}

/// A tenant's stream limits: its own where it sets them, the platform's otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// The largest message, in bytes.
    pub max_message_bytes: u64,
    /// The largest request, in bytes.
    pub max_request_bytes: u64,
    /// Messages per second, on average.
    pub max_messages_per_second: u64,
    /// Instances kept running at least.
    pub min_instances: u32,
    /// Instances at most.
    pub max_instances: u32,
}

impl StreamConfig {
    /// The limits of `tenant`.
    pub fn limits(&self, tenant: &Tenant) -> StreamLimits {
        let max_instances = tenant.max_stream_instances.unwrap_or(self.max_instances).max(1);
        StreamLimits {
            max_message_bytes: tenant.max_message_bytes.unwrap_or(self.max_message_bytes),
            max_request_bytes: tenant.max_request_bytes.unwrap_or(self.max_request_bytes),
            max_messages_per_second: tenant.max_messages_per_second.unwrap_or(self.max_messages_per_second),
            min_instances: tenant
                .min_stream_instances
                .unwrap_or(self.min_instances)
                .min(max_instances),
            max_instances,
        }
    }

    fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }
}

/// Why a stream call could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The tenant is not configured.
    #[error("tenant {0} is not in customer_information.json")]
    UnknownTenant(TenantId),
    /// The tenant has no stream plugin loaded.
    #[error("tenant {tenant} has no stream plugin: {reason}")]
    NoPlugin {
        /// The tenant.
        tenant: TenantId,
        /// Why.
        reason: String,
    },
    /// The tenant runs as many instances as it may.
    #[error("tenant {tenant} runs {running} stream instances, its maximum")]
    AtMaximum {
        /// The tenant.
        tenant: TenantId,
        /// How many run.
        running: usize,
    },
    /// No such instance.
    #[error("tenant {tenant} has no stream instance {instance}")]
    NoInstance {
        /// The tenant.
        tenant: TenantId,
        /// The instance id asked for.
        instance: String,
    },
    /// The platform's state could not be written.
    #[error("the stream instances could not be recorded: {0}")]
    State(String),
}

/// What the stream manager works with.
pub struct StreamContext {
    /// The tenants' topics.
    pub queue: Arc<dyn Queue>,
    /// The stream plugins.
    pub plugins: Arc<PluginHost>,
    /// The tenants' stores the rows go to.
    pub dms: Arc<dyn CoreDms>,
    /// What each tenant's data occupies (measured again after each batch).
    pub usage: Arc<UsageLedger>,
    /// Where rejected messages are kept.
    pub reports: Arc<ReportStore>,
    /// The configuration in force.
    pub tenants: TenantsHandle,
    /// Batch sizes, limits.
    pub config: StreamConfig,
    /// The platform's state folder (the desired instances, rejected messages in wait).
    pub data_dir: PathBuf,
    /// Cancelled at shutdown.
    pub cancel: CancellationToken,
    /// The monitor's settings (the report period, the thresholds).
    pub monitor: MonitorConfig,
    /// Stream metrics.
    pub metrics: Arc<Metrics>,
    /// Tenants whose instances are paused (over their quota).
    pub paused: Mutex<std::collections::BTreeSet<TenantId>>,
}

impl StreamContext {
    /// Whether the tenant's instances are paused.
    pub fn is_paused(&self, tenant: &TenantId) -> bool {
        self.paused.lock().unwrap_or_else(|e| e.into_inner()).contains(tenant)
    }

    fn set_paused(&self, tenant: &TenantId, paused: bool) {
        let mut set = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if paused {
            set.insert(tenant.clone());
        } else {
            set.remove(tenant);
        }
    }
}

/// One running instance's task.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    status: Arc<Mutex<InstanceStatus>>,
}

/// The running stream manager.
pub struct StreamManager {
    ctx: Arc<StreamContext>,
    desired: Mutex<DesiredInstances>,
    running: Mutex<BTreeMap<(TenantId, String), Running>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// The monitor's inbox: every instance sends its reports here.
    reports: tokio::sync::mpsc::Sender<InstanceReport>,
    /// When a tenant with automatic scaling off last had a wake recorded.
    woken: Mutex<std::collections::HashMap<TenantId, f64>>,
    /// When each tenant last scaled out (or would have, with automatic scaling off).
    scaled_out: Mutex<std::collections::HashMap<TenantId, f64>>,
}

/// Reports (and notifications) waiting for the monitor (and the manager), at most.
const REPORTS_QUEUED: usize = 1024;

/// How often the supervisor looks at what runs and what should.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// How long a stop waits for an instance to store and commit the batch in hand.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// The same at shutdown, which has seconds: what is not committed is delivered again.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(4);

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// Its id.
    pub instance_id: String,
    /// What it is doing, with its counters.
    #[serde(flatten)]
    pub status: InstanceStatus,
}

impl StreamManager {
    /// Starts the manager: the instances recorded in the platform's state (or each tenant's
    /// minimum) start as soon as their plugins are loaded.
    pub fn start(ctx: Arc<StreamContext>) -> Arc<Self> {
        let desired = DesiredInstances::load(&ctx.data_dir);
        let (reports, inbox) = tokio::sync::mpsc::channel(REPORTS_QUEUED);
        let (notify, notifications) = tokio::sync::mpsc::channel(REPORTS_QUEUED);
        tokio::spawn(crate::monitor::run(
            ctx.monitor.clone(),
            ctx.tenants.clone(),
            inbox,
            notify,
        ));
        let manager = Arc::new(StreamManager {
            ctx,
            desired: Mutex::new(desired),
            running: Mutex::default(),
            supervisor: Mutex::default(),
            reports,
            woken: Mutex::default(),
            scaled_out: Mutex::default(),
        });
        tokio::spawn(Arc::clone(&manager).act_on(notifications));
        let supervising = Arc::clone(&manager);
        let task = tokio::spawn(async move { supervising.supervise().await });
        *manager.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        manager
    }

    /// Starts one more instance of `tenant`; returns its id.
    pub fn start_instance(self: &Arc<Self>, tenant: &TenantId) -> Result<String, StreamError> {
        let tenants = self.ctx.tenants.current();
        let config = tenants
            .get(tenant)
            .ok_or_else(|| StreamError::UnknownTenant(tenant.clone()))?;
        self.ctx
            .plugins
            .stream_plugin(tenant)
            .map_err(|e| StreamError::NoPlugin {
                tenant: tenant.clone(),
                reason: e.to_string(),
            })?;
        let limits = self.ctx.config.limits(config);
        let id = {
            let mut desired = self.desired();
            let running = desired.instances(tenant).map_or(0, <[String]>::len);
            if running >= limits.max_instances as usize {
                return Err(StreamError::AtMaximum {
                    tenant: tenant.clone(),
                    running,
                });
            }
            let id = desired.add(tenant);
            desired
                .save(&self.ctx.data_dir)
                .map_err(|e| StreamError::State(e.to_string()))?;
            id
        };
        self.spawn(tenant, &id);
        log::info!("stream: tenant={tenant} instance={id} started");
        Ok(id)
    }

    /// Stops an instance once it has stored and committed the batch in hand.
    pub async fn stop_instance(&self, tenant: &TenantId, instance: &str) -> Result<(), StreamError> {
        {
            let mut desired = self.desired();
            if !desired.remove(tenant, instance) {
                return Err(StreamError::NoInstance {
                    tenant: tenant.clone(),
                    instance: instance.to_string(),
                });
            }
            desired
                .save(&self.ctx.data_dir)
                .map_err(|e| StreamError::State(e.to_string()))?;
        }
        let running = self.running().remove(&(tenant.clone(), instance.to_string()));
        if let Some(running) = running {
            drain(tenant, instance, running, STOP_WAIT).await;
        }
        log::info!("stream: tenant={tenant} instance={instance} stopped");
        Ok(())
    }

    /// The tenant's instances.
    pub fn instances(&self, tenant: &TenantId) -> Vec<InstanceView> {
        let running = self.running();
        let ids: Vec<String> = self
            .desired()
            .instances(tenant)
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        ids.into_iter()
            .map(|id| {
                let status = running
                    .get(&(tenant.clone(), id.clone()))
                    .map(|r| r.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
                    .unwrap_or_default();
                InstanceView {
                    instance_id: id,
                    status,
                }
            })
            .collect()
    }

    /// Stops every instance at its next boundary and waits for them (for the shutdown).
    pub async fn shutdown(&self) {
        if let Some(task) = self.supervisor.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        let running = std::mem::take(&mut *self.running());
        let stops = running
            .into_iter()
            .map(|((tenant, id), running)| async move { drain(&tenant, &id, running, SHUTDOWN_WAIT).await });
        futures_util::future::join_all(stops).await;
    }

    /// Whether the tenant's instances are paused (over its quota).
    pub fn is_paused(&self, tenant: &TenantId) -> bool {
        self.ctx.is_paused(tenant)
    }

    /// How many instances the tenant should run.
    pub fn instance_count(&self, tenant: &TenantId) -> u32 {
        self.desired().instances(tenant).map_or(0, |ids| ids.len() as u32)
    }

    fn desired(&self) -> std::sync::MutexGuard<'_, DesiredInstances> {
        self.desired.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<(TenantId, String), Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(self: &Arc<Self>, tenant: &TenantId, id: &str) {
        let stop = self.ctx.cancel.child_token();
        let status = Arc::new(Mutex::new(InstanceStatus::default()));
        let task = tokio::spawn(instance::run(
            Arc::clone(&self.ctx),
            tenant.clone(),
            id.to_string(),
            stop.clone(),
            Arc::clone(&status),
            self.reports.clone(),
        ));
        self.running()
            .insert((tenant.clone(), id.to_string()), Running { stop, task, status });
    }

    /// Makes what runs what should run, every [`SUPERVISE_EVERY`].
    async fn supervise(self: Arc<Self>) {
        loop {
            self.reconcile().await;
            tokio::select! {
                () = self.ctx.cancel.cancelled() => return,
                () = tokio::time::sleep(SUPERVISE_EVERY) => {}
            }
        }
    }

    async fn reconcile(self: &Arc<Self>) {
        let tenants = self.ctx.tenants.current();
        // Tenants removed: their instances stop, and nothing of them is kept.
        let removed: Vec<TenantId> = self
            .desired()
            .tenants()
            .filter(|t| tenants.get(t).is_none())
            .cloned()
            .collect();
        for tenant in removed {
            let stopping: Vec<(String, Running)> = {
                let mut running = self.running();
                let keys: Vec<_> = running.keys().filter(|(t, _)| *t == tenant).cloned().collect();
                keys.into_iter()
                    .filter_map(|key| running.remove(&key).map(|r| (key.1, r)))
                    .collect()
            };
            for (id, running) in stopping {
                drain(&tenant, &id, running, STOP_WAIT).await;
            }
            let mut desired = self.desired();
            desired.forget(&tenant);
            if let Err(e) = desired.save(&self.ctx.data_dir) {
                log::error!("stream: cannot record the instances: {e}");
            }
            self.ctx.set_paused(&tenant, false);
            self.ctx.metrics.set_stream_instances(tenant.as_str(), 0);
            log::info!("stream: tenant={tenant} removed: its instances stopped");
        }
        // Tenants with a stream plugin and nothing chosen yet start at their minimum.
        for (tenant, config) in tenants.iter() {
            let chosen = self.desired().instances(tenant).is_some();
            if chosen || self.ctx.plugins.stream_plugin(tenant).is_err() {
                continue;
            }
            let minimum = self.ctx.config.limits(config).min_instances;
            let mut desired = self.desired();
            desired.set_count(tenant, minimum);
            if let Err(e) = desired.save(&self.ctx.data_dir) {
                log::error!("stream: cannot record the instances: {e}");
            }
        }
        for (tenant, _) in tenants.iter() {
            let count = self.instance_count(tenant) as usize;
            self.ctx.metrics.set_stream_instances(tenant.as_str(), count);
        }
        // Every instance that should run, runs.
        let wanted: Vec<(TenantId, String)> = self.desired().all().collect();
        for (tenant, id) in wanted {
            let key = (tenant.clone(), id.clone());
            let alive = self.running().get(&key).is_some_and(|r| !r.task.is_finished());
            if !alive && tenants.get(&tenant).is_some() {
                if self.running().remove(&key).is_some() {
                    log::warn!("stream: tenant={tenant} instance={id} ended; starting it again");
                }
                self.spawn(&tenant, &id);
            }
        }
    }
}

/// Tells an instance to stop after the batch in hand and waits for it, `wait` at most.
async fn drain(tenant: &TenantId, id: &str, running: Running, wait: Duration) {
    running.stop.cancel();
    if tokio::time::timeout(wait, running.task).await.is_err() {
        log::warn!(
            "stream: tenant={tenant} instance={id} did not stop within {wait:?}; what it had not committed is delivered again"
        );
    }
}
