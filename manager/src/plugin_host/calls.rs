//! Work for a plugin version, in host terms: a file to ingest ([`PluginVersion::ingest_file`])
//! or a stream instance that takes batches of messages ([`PluginVersion::open_instance`]).
//! Either way the caller gets a [`BatchStream`]: the plugin's rows as checked [`HostBatch`]es
//! through a bounded channel (a full channel blocks the plugin: backpressure), then the call's
//! outcome with the CPU time it used. The conversion happens on the version's thread while the
//! plugin waits, so nothing a plugin allocated outlives its call; this module is the one place
//! where that happens. Callers never see the FFI.

use std::io::Read;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::time::Duration;

use abi_stable::std_types::RString;
use plugin_api::ErrorKind;
use plugin_api::ffi::{FileInfo, RowBatch, StreamInfo};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::loader::{CallError, LoadedLibrary, MessageRef};
use super::rows::{HostBatch, convert_batch};
use super::version::{CallRefused, PluginVersion};
use crate::os::thread_cpu_ns;
use crate::schema::TableSchema;

/// A file for a batch plugin to read.
#[derive(Debug, Clone)]
pub struct FileCall {
    /// The platform's id of the file.
    pub file_id: String,
    /// The name the client gave it.
    pub file_name: String,
    /// Its type.
    pub file_type: String,
    /// Its size in bytes.
    pub file_size: u64,
    /// Rows the host would like per batch.
    pub batch_rows: u32,
}

/// One message for a stream instance, owned by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    /// Partition of the tenant's topic.
    pub partition: u32,
    /// Offset in it.
    pub offset: u64,
    /// When it was accepted, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Its bytes.
    pub payload: Vec<u8>,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// The plugin's answer.
    pub result: Result<(), CallError>,
    /// CPU time the call used on its thread, in nanoseconds.
    pub cpu_ns: u64,
}

impl CallOutcome {
    /// The outcome of a call that never reached the plugin.
    pub fn not_run(message: impl Into<String>) -> Self {
        CallOutcome {
            result: Err(CallError {
                kind: ErrorKind::Internal,
                message: message.into(),
            }),
            cpu_ns: 0,
        }
    }
}

/// The batches a call produces, as they come, then its outcome.
pub struct BatchStream {
    batches: Option<mpsc::Receiver<HostBatch>>,
    outcome: oneshot::Receiver<CallOutcome>,
}

impl BatchStream {
    /// The next batch; `None` once the call handed over its last one.
    pub async fn next(&mut self) -> Option<HostBatch> {
        self.batches.as_mut()?.recv().await
    }

    /// Tells the plugin to stop: its next hand-over fails, and it returns.
    pub fn stop(&mut self) {
        self.batches = None;
    }

    /// Waits for the call to end (after [`next`](Self::next) returned `None`, or a
    /// [`stop`](Self::stop)).
    pub async fn outcome(mut self) -> CallOutcome {
        self.stop();
        self.outcome
            .await
            .unwrap_or_else(|_| CallOutcome::not_run("the plugin's thread ended without an answer"))
    }
}

/// The sink a plugin hands its batches to on its thread: each batch checked and copied into host
/// memory, then sent (waiting while the channel is full). An `Err` stops the plugin.
fn sender<'a>(
    tables: &'a [Arc<TableSchema>],
    batches: &'a mpsc::Sender<HostBatch>,
    cancel: &'a CancellationToken,
) -> impl FnMut(&RowBatch) -> Result<(), String> + 'a {
    move |batch: &RowBatch| {
        if cancel.is_cancelled() {
            return Err("the platform is shutting down".to_string());
        }
        let host = convert_batch(batch, tables)?;
        batches
            .blocking_send(host)
            .map_err(|_| "the platform stopped this work (storage failed or it is shutting down)".to_string())
    }
}

/// Runs `call` with a sink into `batches`, timing its CPU.
fn timed(
    version: &PluginVersion,
    call: impl FnOnce(&mut dyn FnMut(&RowBatch) -> Result<(), String>) -> Result<(), CallError>,
    batches: &mpsc::Sender<HostBatch>,
    cancel: &CancellationToken,
) -> CallOutcome {
    let started = thread_cpu_ns();
    let mut sink = sender(&version.tables, batches, cancel);
    let result = call(&mut sink);
    let cpu_ns = thread_cpu_ns().saturating_sub(started);
    version.add_cpu(cpu_ns);
    CallOutcome { result, cpu_ns }
}

impl PluginVersion {
    /// Ingests a file on a thread of this version: the plugin reads `input` and its rows
    /// come back through the returned stream, at most `capacity` batches ahead of the reader.
    /// `cancel` stops the plugin at its next hand-over (shutdown).
    pub fn ingest_file(
        self: &Arc<Self>,
        file: FileCall,
        input: Box<dyn Read + Send>,
        capacity: usize,
        cancel: CancellationToken,
    ) -> Result<BatchStream, CallRefused> {
        let (batches, received) = mpsc::channel(capacity.max(1));
        let (done, outcome) = oneshot::channel();
        self.spawn_owned(move |version, library| {
            let info = FileInfo {
                file_id: RString::from(file.file_id),
                file_name: RString::from(file.file_name),
                file_type: RString::from(file.file_type),
                file_size: file.file_size,
                batch_rows: file.batch_rows,
            };
            let mut input = input;
            let outcome = timed(
                version,
                |sink| library.ingest_file(&info, &mut input, sink),
                &batches,
                &cancel,
            );
            // A file's failure counts towards quarantine; a stream batch's is judged by the
            // caller, which retries and isolates poison messages first.
            version.record_outcome(outcome.result.as_ref().map(|_| ()));
            version.usage().calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(batches);
            let _ = done.send(outcome);
        })?;
        Ok(BatchStream {
            batches: Some(received),
            outcome,
        })
    }

    /// Opens a stream instance on a thread of this version that lives as long as the instance:
    /// every call of the instance runs there. The instance closes when it is dropped, or at its
    /// next batch boundary once the version is retired.
    pub async fn open_instance(self: &Arc<Self>, instance_id: &str, batch_rows: u32) -> Result<Instance, CallError> {
        let (commands, received) = std::sync::mpsc::sync_channel::<Process>(1);
        let (opened, open_result) = oneshot::channel();
        let info = StreamInfo {
            instance_id: RString::from(instance_id),
            batch_rows,
        };
        let refused = |e: CallRefused| CallError {
            kind: ErrorKind::Internal,
            message: e.to_string(),
        };
        self.spawn_owned(move |version, library| {
            let started = thread_cpu_ns();
            let handle = library.stream_open(&info);
            version.add_cpu(thread_cpu_ns().saturating_sub(started));
            let handle = match handle {
                Ok(handle) => {
                    let _ = opened.send(Ok(()));
                    handle
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                    return;
                }
            };
            serve_instance(version, library, handle, &received);
            library.stream_close(handle);
        })
        .map_err(refused)?;
        match open_result.await {
            Ok(Ok(())) => Ok(Instance {
                version: Arc::clone(self),
                commands,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError {
                kind: ErrorKind::Internal,
                message: "the instance's thread ended while it opened".into(),
            }),
        }
    }
}

/// One batch for an instance.
struct Process {
    messages: Vec<StreamMessage>,
    batches: mpsc::Sender<HostBatch>,
    done: oneshot::Sender<CallOutcome>,
    cancel: CancellationToken,
}

/// How often an idle instance's thread looks whether its version was retired.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// The instance's thread: batches until the instance is dropped or its version retired.
fn serve_instance(
    version: &PluginVersion,
    library: &LoadedLibrary,
    handle: plugin_api::ffi::StreamHandle,
    commands: &std::sync::mpsc::Receiver<Process>,
) {
    loop {
        let command = match commands.recv_timeout(IDLE_CHECK) {
            Ok(command) => command,
            Err(RecvTimeoutError::Timeout) if version.retired.is_cancelled() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let refs: Vec<MessageRef<'_>> = command
            .messages
            .iter()
            .map(|m| MessageRef {
                offset: m.offset,
                partition: m.partition,
                timestamp_ms: m.timestamp_ms,
                payload: &m.payload,
            })
            .collect();
        let outcome = timed(
            version,
            |sink| library.stream_process(handle, &refs, sink),
            &command.batches,
            &command.cancel,
        );
        version.usage().calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(command.batches);
        let _ = command.done.send(outcome);
        if version.retired.is_cancelled() {
            return;
        }
    }
}

/// An open stream instance. Its calls run on its own thread, one batch at a time.
pub struct Instance {
    version: Arc<PluginVersion>,
    commands: SyncSender<Process>,
}

impl Instance {
    /// The version it runs on.
    pub fn version(&self) -> &Arc<PluginVersion> {
        &self.version
    }

    /// Hands `messages` to the instance; its rows come back through the stream, at most
    /// `capacity` batches ahead. `Err` when the instance is closed (its version was retired or
    /// quarantined, or it failed): open a new one. A failed batch does not count towards the
    /// version's quarantine by itself: the caller judges ([`PluginVersion::record_outcome`]).
    pub fn process(
        &self,
        messages: Vec<StreamMessage>,
        capacity: usize,
        cancel: CancellationToken,
    ) -> Result<BatchStream, CallRefused> {
        self.version.check_takes_work()?;
        let (batches, received) = mpsc::channel(capacity.max(1));
        let (done, outcome) = oneshot::channel();
        let closed = || CallRefused::Retiring {
            plugin: self.version.id.to_string(),
            version: self.version.plugin_version().to_string(),
        };
        self.commands
            .try_send(Process {
                messages,
                batches,
                done,
                cancel,
            })
            .map_err(|_| closed())?;
        Ok(BatchStream {
            batches: Some(received),
            outcome,
        })
    }
}
