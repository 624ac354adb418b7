//! Wires the components into a running platform, in data-flow order from storage back to the
//! HTTP API, and takes them down in the reverse order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admission::StorageAdmission;
use crate::batch::{BatchContext, BatchManager, FileTracker};
use crate::config::{Backend, PlatformConfig};
use crate::coredms::cassandra::CassandraDms;
use crate::coredms::embedded::EmbeddedDms;
use crate::coredms::{CoreDms, TenantStorage, WriteLimiter};
use crate::daas::{self, ApiState};
use crate::plugin_host::{PluginHost, PluginHostConfig};
use crate::report::{REPORTS_DIR, ReportStore, store::DOCUMENT_EVERY};
use crate::staging::{STAGING_DIR, Staging};
use crate::stream::{StreamContext, StreamManager};
use crate::telemetry::Metrics;
use crate::tenants::watch::TenantsWatcher;
use crate::tenants::{CUSTOMER_INFORMATION_FILE, TokenDigest};
use crate::usage::UsageLedger;

/// Well-known demo tokens of the example tenants: warned about at start.
const DEMO_TOKENS: [&str; 2] = ["client1-demo-token", "client2-demo-token"];

/// How to run.
pub struct ServeOptions {
    /// The platform's folder (customer_information.json, plugins/, staging, reports).
    pub root: PathBuf,
    /// The settings.
    pub config: PlatformConfig,
    /// The admin token, if given in the environment.
    pub admin_token: Option<String>,
    /// The `mysimbdp` binary, which loads each new plugin file in a child process first
    /// (`mysimbdp plugin probe`), so a library that crashes while loading cannot take the
    /// platform down; none: plugin files are loaded in this process only.
    pub probe_binary: Option<PathBuf>,
}

/// Runs the platform until `shutdown` resolves.
pub async fn serve(options: ServeOptions, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let ServeOptions {
        root,
        config,
        admin_token,
        probe_binary,
    } = options;
    let data_dir = config.data_dir_in(&root);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let cancel = CancellationToken::new();

    let tenants_file = root.join(CUSTOMER_INFORMATION_FILE);
    let tenants_watcher = TenantsWatcher::start(&tenants_file).with_context(|| {
        format!(
            "the platform needs a valid {} in {}",
            CUSTOMER_INFORMATION_FILE,
            root.display()
        )
    })?;
    let tenants = tenants_watcher.handle();
    warn_about_demo_tokens(&tenants.current());

    let limiter = Arc::new(WriteLimiter::new(
        config.coredms.max_writes_in_flight,
        config.coredms.max_writes_in_flight_per_tenant,
    ));
    let dms = open_coredms(&config, &data_dir, limiter).await?;
    // The queue carries the near-realtime messages; opening it at start surfaces a broken
    // setting now rather than at the first message. A Kafka broker that does not answer is
    // logged, not fatal: the batch half works without the queue, and the stream half waits.
    let queue = crate::queue::open(&config.queue, &data_dir)
        .await
        .context("opening the queue ([queue] in the settings)")?;
    log::info!("queue: {}", queue.backend());
    let host_config = PluginHostConfig {
        plugins_dir: root.join("plugins"),
        cache_dir: data_dir.join("plugin-cache"),
        quarantine_after: config.plugins.quarantine_after,
        debounce: Duration::from_millis(config.plugins.reload_debounce_ms),
        watch: true,
        admission: Some(Arc::new(StorageAdmission::new(
            Arc::clone(&dms),
            tenants.clone(),
            tokio::runtime::Handle::current(),
        ))),
        preflight: probe_binary,
    };
    // The first reconcile loads every plugin (and checks its tables against storage, on this
    // runtime): off the async workers.
    let host_tenants = tenants.clone();
    let plugins = tokio::task::spawn_blocking(move || PluginHost::start(host_config, host_tenants))
        .await?
        .context("starting the plugin host")?;
    let staging = Arc::new(Staging::open(&root.join(STAGING_DIR)).context("opening the staging folder")?);
    let reports =
        Arc::new(ReportStore::open(&root.join(REPORTS_DIR), config.reports.clone()).context("opening client-reports")?);
    let metrics = Arc::new(Metrics::default());
    let tracker = Arc::new(FileTracker::default());
    let usage = UsageLedger::new(Arc::clone(&dms), tenants.clone(), config.usage.clone());
    usage.measure_all(
        tenants
            .current()
            .iter()
            .map(|(id, tenant)| TenantStorage::of(id, tenant)),
    );
    let batch = Arc::new(
        BatchManager::start(Arc::new(BatchContext {
            staging: Arc::clone(&staging),
            tracker: Arc::clone(&tracker),
            usage: Arc::clone(&usage),
            plugins: Arc::clone(&plugins),
            dms: Arc::clone(&dms),
            reports: Arc::clone(&reports),
            tenants: tenants.clone(),
            metrics: Arc::clone(&metrics),
            config: config.batch.clone(),
            rejected_tmp_dir: data_dir.join("rejected-tmp"),
            cancel: cancel.clone(),
        }))
        .context("starting the batch manager")?,
    );

    let stream = StreamManager::start(Arc::new(StreamContext {
        queue: Arc::clone(&queue),
        plugins: Arc::clone(&plugins),
        dms: Arc::clone(&dms),
        usage: Arc::clone(&usage),
        reports: Arc::clone(&reports),
        tenants: tenants.clone(),
        config: config.stream.clone(),
        data_dir: data_dir.clone(),
        cancel: cancel.clone(),
        monitor: config.monitor.clone(),
        metrics: Arc::clone(&metrics),
        paused: Default::default(),
    }));

    let admin_token = admin_token
        .map(|t| TokenDigest::of(&t))
        .or(config.server.admin_token_sha256.clone());
    if admin_token.is_none() {
        log::warn!("no admin token (MYSIMBDP_ADMIN_TOKEN): the admin API (/v1/stats, /v1/plugins) is disabled");
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let address = listener.local_addr()?;
    let state = Arc::new(ApiState {
        reads: daas::ReadGate::new(config.server.max_reads_per_tenant),
        queue,
        stream: Arc::clone(&stream),
        stream_config: config.stream.clone(),
        rates: daas::RateLimits::default(),
        server: config.server.clone(),
        tenants,
        admin_token,
        metrics_token: config.server.metrics_token_sha256.clone(),
        staging,
        tracker,
        usage,
        batch: Arc::clone(&batch),
        dms: Arc::clone(&dms),
        reports: Arc::clone(&reports),
        plugins: Arc::clone(&plugins),
        metrics,
    });
    let server = tokio::spawn(daas::serve(listener, state, cancel.clone()));
    let documents = tokio::spawn(write_report_documents(Arc::clone(&reports), cancel.clone()));
    log::info!(
        "mysimbdp listening on http://{address} (backend {}, folder {})",
        dms.backend(),
        root.display()
    );
    println!("mysimbdp listening on http://{address}");

    shutdown.await;
    let stopping = std::time::Instant::now();
    log::info!("shutting down");
    cancel.cancel();
    // The API and the batch manager stop side by side, each within its own bound (requests in
    // progress, files in flight); then the plugins are unloaded. What did not finish is redone
    // at the next start: nothing acknowledged depends on a clean stop.
    let (_, (), ()) = tokio::join!(server, batch.join(), stream.shutdown());
    let _ = documents.await;
    tokio::task::spawn_blocking(move || reports.write_documents()).await?;
    tokio::task::spawn_blocking(move || plugins.shutdown(PLUGIN_UNLOAD_GRACE)).await?;
    drop(tenants_watcher);
    log::info!("stopped ms={}", stopping.elapsed().as_millis());
    Ok(())
}

/// Brings the tenants' report documents up to their logs every [`DOCUMENT_EVERY`], until
/// `cancel` (the shutdown writes them a last time once the batch manager has stopped).
async fn write_report_documents(reports: Arc<ReportStore>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(DOCUMENT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let reports = Arc::clone(&reports);
        let _ = tokio::task::spawn_blocking(move || reports.write_documents()).await;
    }
}

/// How long the shutdown waits for plugin calls still running before it leaves their libraries
/// mapped (the process is about to exit).
const PLUGIN_UNLOAD_GRACE: Duration = Duration::from_secs(2);

fn warn_about_demo_tokens(tenants: &crate::tenants::Tenants) {
    for (id, tenant) in tenants.iter() {
        if DEMO_TOKENS.iter().any(|t| tenant.api_token_sha256.matches(t)) {
            log::warn!(
                "tenant {id} uses a published demo token: replace it (`mysimbdp tenant token {id}`) before exposing the platform"
            );
        }
    }
}

/// The configured storage backend, its data (embedded) in `data_dir`.
pub async fn open_coredms(
    config: &PlatformConfig,
    data_dir: &Path,
    limiter: Arc<WriteLimiter>,
) -> anyhow::Result<Arc<dyn CoreDms>> {
    Ok(match config.coredms.backend {
        Backend::Embedded => Arc::new(EmbeddedDms::new(&data_dir.join("embedded"), limiter)?),
        Backend::Cassandra => Arc::new(
            CassandraDms::connect(config.coredms.cassandra.clone(), limiter)
                .await
                .context("connecting to Cassandra ([coredms.cassandra] in the settings)")?,
        ),
    })
}

/// The folder's default settings file.
pub fn default_config_path(root: &Path) -> PathBuf {
    root.join(crate::config::CONFIG_FILE)
}
