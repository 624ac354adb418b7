//! Glue behind [`export_plugin!`](crate::export_plugin): the `extern "C"` bodies, each wrapped
//! so that a panic becomes a [`PluginError`] of kind [`ErrorKind::Panic`] instead of crossing
//! the boundary. Not meant to be called by hand.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RVec};

use crate::ffi::{
    ByteSource, ErrorKind, FileInfo, Manifest, Message, PluginKind, RowSink, StreamHandle, StreamInfo, TableSpec,
};
use crate::io::{Input, Output};
use crate::{BatchIngestApp, PluginError, StreamIngestApp};

/// Runs `f`, turning a panic into an error.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(error)) => RErr(error),
        Err(payload) => RErr(PluginError {
            kind: ErrorKind::Panic,
            message: format!("plugin panicked: {}", panic_message(&*payload)).into(),
        }),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic without a message)"
    }
}

/// Replaces the plugin's panic hook (the plugin has its own copy of std, so the host's hook
/// never sees its panics) with one line on stderr and no backtrace capture. The default hook
/// with `RUST_BACKTRACE=1` maps the whole library file to symbolize, and that mapping outlives
/// `dlclose`.
pub fn install_panic_hook(plugin: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        let message = panic_message(info.payload());
        eprintln!(
            "plugin {plugin} panicked at {}: {message}",
            location.as_deref().unwrap_or("an unknown location")
        );
    }));
}

fn manifest(
    tenant: &str,
    kind: PluginKind,
    file_types: &[&str],
    plugin_version: &str,
    api_version: u32,
    tables: Vec<TableSpec>,
) -> Manifest {
    Manifest {
        tenant: tenant.into(),
        kind,
        file_types: file_types.iter().map(|t| (*t).into()).collect(),
        api_version,
        plugin_version: plugin_version.into(),
        tables: RVec::from(tables),
    }
}

/// `PluginModule::manifest` of a batch plugin.
pub fn batch_manifest<A: BatchIngestApp>(plugin_version: &str, api_version: u32) -> RResult<Manifest, PluginError> {
    guarded(|| {
        Ok(manifest(
            A::TENANT,
            PluginKind::Batch,
            A::FILE_TYPES,
            plugin_version,
            api_version,
            A::tables(),
        ))
    })
}

/// `PluginModule::manifest` of a stream plugin.
pub fn stream_manifest<A: StreamIngestApp>(plugin_version: &str, api_version: u32) -> RResult<Manifest, PluginError> {
    guarded(|| {
        Ok(manifest(
            A::TENANT,
            PluginKind::Stream,
            &[],
            plugin_version,
            api_version,
            A::tables(),
        ))
    })
}

/// `PluginModule::ingest_file` of a batch plugin.
pub fn ingest_file<A: BatchIngestApp>(file: &FileInfo, input: ByteSource, sink: RowSink) -> RResult<(), PluginError> {
    guarded(|| {
        let tables = A::tables();
        let mut input = Input::new(input);
        let mut output = Output::new(sink, &tables, file.batch_rows);
        A::ingest(file, &mut input, &mut output)?;
        output.flush()
    })
}

/// `PluginModule::ingest_file` of a stream plugin: always an error.
pub fn ingest_file_unsupported(_: &FileInfo, _: ByteSource, _: RowSink) -> RResult<(), PluginError> {
    RErr(PluginError::internal(
        "this is a stream plugin: it does not ingest files",
    ))
}

struct StreamState<A> {
    app: A,
    tables: Vec<TableSpec>,
    batch_rows: u32,
}

/// `PluginModule::stream_open` of a stream plugin.
pub fn stream_open<A: StreamIngestApp>(info: &StreamInfo) -> RResult<StreamHandle, PluginError> {
    guarded(|| {
        let state = Box::new(StreamState {
            app: A::open(info)?,
            tables: A::tables(),
            batch_rows: info.batch_rows,
        });
        Ok(StreamHandle(Box::into_raw(state) as *mut c_void))
    })
}

/// `PluginModule::stream_process` of a stream plugin.
pub fn stream_process<A: StreamIngestApp>(
    handle: StreamHandle,
    messages: RSlice<'_, Message<'_>>,
    sink: RowSink,
) -> RResult<(), PluginError> {
    guarded(|| {
        // SAFETY: the host passes back the handle `stream_open::<A>` returned, not yet closed,
        // from one thread at a time.
        let state = unsafe { &mut *(handle.0 as *mut StreamState<A>) };
        let mut output = Output::new(sink, &state.tables, state.batch_rows);
        state.app.process(messages.as_slice(), &mut output)?;
        output.flush()
    })
}

/// `PluginModule::stream_close` of a stream plugin.
pub fn stream_close<A: StreamIngestApp>(handle: StreamHandle) {
    let _ = guarded(|| {
        // SAFETY: the host closes each handle `stream_open::<A>` returned exactly once.
        drop(unsafe { Box::from_raw(handle.0 as *mut StreamState<A>) });
        Ok(())
    });
}

/// The stream functions of a batch plugin: always an error.
pub fn stream_open_unsupported(_: &StreamInfo) -> RResult<StreamHandle, PluginError> {
    RErr(PluginError::internal(
        "this is a batch plugin: it does not open stream instances",
    ))
}

/// The stream functions of a batch plugin: always an error.
pub fn stream_process_unsupported(_: StreamHandle, _: RSlice<'_, Message<'_>>, _: RowSink) -> RResult<(), PluginError> {
    RErr(PluginError::internal(
        "this is a batch plugin: it does not process messages",
    ))
}

/// The stream functions of a batch plugin: nothing to close.
pub fn stream_close_unsupported(_: StreamHandle) {}
