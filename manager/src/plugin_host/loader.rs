//! The only module that opens libraries and calls across the plugin ABI. Every `unsafe` block
//! of the plugin host is here.
//!
//! Loading goes `dlopen` (abi_stable's `RawLibrary`, owned here so that dropping it really
//! calls `dlclose`) → the `MYSIMBDP_PLUGIN_API_TAG` symbol, which must carry the host's exact
//! [`plugin_api::API_VERSION`] → abi_stable's header → a count of the root module's functions
//! against the host's → abi_stable's layout check and the plugin's root-module constructor.
//! The first checks run before abi_stable records anything in its process-global layout
//! cache: a library that fails them leaves nothing behind that could dangle after `dlclose`.
//!
//! Everything a call returns is copied into host-owned values before the call returns;
//! nothing allocated by the plugin outlives the call.

use std::ffi::c_void;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use abi_stable::StableAbi;
use abi_stable::library::{LibHeader, RawLibrary, lib_header_from_raw_library};
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RSliceMut, RString};
use abi_stable::type_layout::{TLData, TypeLayout};
use plugin_api::ffi::{
    API_TAG_MAGIC, API_TAG_SYMBOL, ApiTag, ByteSource, FileInfo, Message, PluginModuleRef, RowBatch, RowSink,
    StreamHandle, StreamInfo,
};
use plugin_api::{API_VERSION, ErrorKind, PluginError};

/// Why a library was not loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// `dlopen` failed (not an ELF shared object, missing file, unresolved symbols).
    #[error("cannot load {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// A shared library, but not a mysimbdp plugin.
    #[error("{path} is not a mysimbdp plugin: {reason}")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A plugin built against another plugin-api version.
    #[error(
        "{path} was built against plugin-api version {found}, but this platform loads only version {expected}: rebuild the plugin against this platform's plugin-api"
    )]
    IncompatibleApi {
        /// The file.
        path: PathBuf,
        /// The plugin's version.
        found: u32,
        /// The host's version.
        expected: u32,
    },
    /// abi_stable refused the library (layout or version mismatch, or its constructor failed).
    #[error("{path} has an incompatible plugin interface: {reason}")]
    Abi {
        /// The file.
        path: PathBuf,
        /// A summary of abi_stable's report.
        reason: String,
    },
}

/// A loaded, checked plugin library. Calls into it must come from threads the owning plugin
/// version owns (see `version`); dropping it closes the library.
pub struct LoadedLibrary {
    module: PluginModuleRef,
    raw: Option<RawLibrary>,
    path: PathBuf,
}

// SAFETY: `PluginModuleRef` points to the plugin's static root module, which is immutable and
// lives as long as `raw`; its functions are `extern "C"` and callable from any thread.
unsafe impl Send for LoadedLibrary {}
// SAFETY: as above; `&LoadedLibrary` only reads the module's function pointers.
unsafe impl Sync for LoadedLibrary {}

/// A failed plugin call, copied into host memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Its class.
    pub kind: ErrorKind,
    /// Its message.
    pub message: String,
}

impl From<PluginError> for CallError {
    fn from(e: PluginError) -> Self {
        CallError {
            kind: e.kind,
            message: e.message.into_string(),
        }
    }
}

/// One message handed to a stream instance.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Offset in its partition.
    pub offset: u64,
    /// Partition.
    pub partition: u32,
    /// When it was accepted (ms since the epoch).
    pub timestamp_ms: i64,
    /// Body.
    pub payload: &'a [u8],
}

/// Receives each batch while the plugin waits; an `Err` tells the plugin to stop.
pub type BatchSink<'s> = dyn FnMut(&RowBatch) -> Result<(), String> + 's;

impl LoadedLibrary {
    /// Opens and checks the library at `path` (a private copy: dlopen caches by path).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let open_error = |reason: String| LoadError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let not_a_plugin = |reason: &str| LoadError::NotAPlugin {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let abi = |reason: String| LoadError::Abi {
            path: path.to_path_buf(),
            reason,
        };

        // A file that is not a whole shared object of this architecture could kill the process
        // when mapped (segments past its end): refused before dlopen.
        let bytes = std::fs::read(path).map_err(|e| open_error(e.to_string()))?;
        super::elf::check_shared_object(&bytes).map_err(|reason| LoadError::NotAPlugin {
            path: path.to_path_buf(),
            reason,
        })?;
        drop(bytes);
        // dlopen runs the library's initialisers: these checks keep out mistakes, not hostile
        // code (the operator decides which files enter plugins/).
        let raw = RawLibrary::load_at(path).map_err(|e| open_error(dl_reason(&e.to_string(), path)))?;

        // SAFETY: a library carrying this symbol was built by plugin-api's `export_plugin!`,
        // which defines it as a `static ApiTag` (repr(C)); the lookup alone reads nothing.
        let tag_symbol = unsafe { raw.get::<*const ApiTag>(API_TAG_SYMBOL) }.map_err(|_| {
            not_a_plugin("it has no MYSIMBDP_PLUGIN_API_TAG symbol (plugins are built with plugin_api::export_plugin!)")
        })?;
        // SAFETY: the symbol's address is that of the static `ApiTag`, valid while `raw` is open.
        let tag: ApiTag = unsafe { std::ptr::read_unaligned(*tag_symbol) };
        if tag.magic != API_TAG_MAGIC {
            return Err(not_a_plugin(
                "its MYSIMBDP_PLUGIN_API_TAG does not start with the plugin magic",
            ));
        }
        if tag.api_version != API_VERSION {
            return Err(LoadError::IncompatibleApi {
                path: path.to_path_buf(),
                found: tag.api_version,
                expected: API_VERSION,
            });
        }

        // SAFETY: the returned `&'static LibHeader` really borrows `raw`; it is used only in this
        // function, while `raw` is alive.
        let header: &'static LibHeader = unsafe { lib_header_from_raw_library(&raw) }
            .map_err(|e| not_a_plugin(&format!("no abi_stable root module ({})", first_line(&e.to_string()))))?;
        let host_functions = root_field_count(<PluginModuleRef as StableAbi>::LAYOUT);
        let plugin_functions = header.layout().and_then(root_field_count);
        if plugin_functions != host_functions {
            return Err(abi(format!(
                "its root module has {} functions, this platform's has {}",
                plugin_functions.map_or("an unknown number of".into(), |n| n.to_string()),
                host_functions.map_or("?".into(), |n| n.to_string())
            )));
        }
        let module = header
            .init_root_module::<PluginModuleRef>()
            .map_err(|e| abi(summarize_abi_error(&e.to_string())))?;
        Ok(LoadedLibrary {
            module,
            raw: Some(raw),
            path: path.to_path_buf(),
        })
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `manifest`; the result is host-owned.
    pub fn manifest(&self) -> Result<plugin_api::ffi::Manifest, CallError> {
        // The manifest's strings and vectors were allocated by the plugin: clone every part into
        // host allocations, then let the plugin's value drop while the library is open.
        match (self.module.manifest())() {
            ROk(manifest) => Ok(deep_copy_manifest(&manifest)),
            RErr(e) => Err(e.into()),
        }
    }

    /// Calls `ingest_file`: the plugin reads `input` and hands row batches to `sink`.
    pub fn ingest_file(
        &self,
        file: &FileInfo,
        input: &mut dyn Read,
        sink: &mut BatchSink<'_>,
    ) -> Result<(), CallError> {
        let mut input: &mut dyn Read = input;
        let mut sink: &mut BatchSink<'_> = sink;
        let source = ByteSource {
            context: (&mut input) as *mut &mut dyn Read as *mut c_void,
            read: read_trampoline,
        };
        let row_sink = RowSink {
            context: (&mut sink) as *mut &mut BatchSink<'_> as *mut c_void,
            emit: emit_trampoline,
        };
        into_host((self.module.ingest_file())(file, source, row_sink))
    }

    /// Calls `stream_open`.
    pub fn stream_open(&self, info: &StreamInfo) -> Result<StreamHandle, CallError> {
        into_host((self.module.stream_open())(info))
    }

    /// Calls `stream_process` on an open instance.
    pub fn stream_process(
        &self,
        handle: StreamHandle,
        messages: &[MessageRef<'_>],
        sink: &mut BatchSink<'_>,
    ) -> Result<(), CallError> {
        let messages: Vec<Message<'_>> = messages
            .iter()
            .map(|m| Message {
                offset: m.offset,
                partition: m.partition,
                timestamp_ms: m.timestamp_ms,
                payload: RSlice::from_slice(m.payload),
            })
            .collect();
        let mut sink: &mut BatchSink<'_> = sink;
        let row_sink = RowSink {
            context: (&mut sink) as *mut &mut BatchSink<'_> as *mut c_void,
            emit: emit_trampoline,
        };
        into_host((self.module.stream_process())(
            handle,
            RSlice::from_slice(&messages),
            row_sink,
        ))
    }

    /// Calls `stream_close` on an open instance.
    pub fn stream_close(&self, handle: StreamHandle) {
        (self.module.stream_close())(handle)
    }
}

impl Drop for LoadedLibrary {
    fn drop(&mut self) {
        // `dlclose`. The caller made sure no thread is in the plugin and nothing it allocated
        // is alive; the version retires its threads first.
        drop(self.raw.take());
    }
}

fn into_host<T>(result: RResult<T, PluginError>) -> Result<T, CallError> {
    match result {
        ROk(value) => Ok(value),
        RErr(e) => Err(e.into()),
    }
}

extern "C" fn read_trampoline(context: *mut c_void, mut buffer: RSliceMut<'_, u8>) -> RResult<usize, RString> {
    // SAFETY: `context` is the `&mut &mut dyn Read` that `ingest_file` made, alive for the whole
    // call; the plugin calls back only during that call, from the same thread.
    let reader = unsafe { &mut *(context as *mut &mut dyn Read) };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        loop {
            match reader.read(buffer.as_mut_slice()) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }));
    match outcome {
        Ok(Ok(n)) => ROk(n),
        Ok(Err(e)) => RErr(e.to_string().into()),
        Err(_) => RErr("the platform failed while reading the input".into()),
    }
}

extern "C" fn emit_trampoline(context: *mut c_void, batch: &RowBatch) -> RResult<(), RString> {
    // SAFETY: `context` is the `&mut &mut BatchSink` made by the caller, alive for the call.
    let sink = unsafe { &mut *(context as *mut &mut BatchSink<'_>) };
    match catch_unwind(AssertUnwindSafe(|| sink(batch))) {
        Ok(Ok(())) => ROk(()),
        Ok(Err(message)) => RErr(message.into()),
        Err(_) => RErr("the platform failed while taking rows".into()),
    }
}

fn deep_copy_manifest(m: &plugin_api::ffi::Manifest) -> plugin_api::ffi::Manifest {
    use abi_stable::std_types::RVec;
    let s = |r: &RString| RString::from(r.as_str());
    plugin_api::ffi::Manifest {
        tenant: s(&m.tenant),
        kind: m.kind,
        file_types: m.file_types.iter().map(s).collect(),
        api_version: m.api_version,
        plugin_version: s(&m.plugin_version),
        tables: m
            .tables
            .iter()
            .map(|t| plugin_api::TableSpec {
                name: s(&t.name),
                columns: t
                    .columns
                    .iter()
                    .map(|c| plugin_api::ColumnSpec {
                        name: s(&c.name),
                        column_type: c.column_type,
                        nullable: c.nullable,
                    })
                    .collect::<RVec<_>>(),
                partition_key: t.partition_key.iter().map(s).collect(),
                clustering_key: t.clustering_key.iter().map(s).collect(),
            })
            .collect(),
    }
}

/// The number of fields of a prefix-type root module, from its layout.
fn root_field_count(layout: &'static TypeLayout) -> Option<usize> {
    let field = layout.phantom_fields().get(0)?;
    match field.layout().data() {
        TLData::PrefixType(prefix) => Some(prefix.fields.len()),
        _ => None,
    }
}

/// dlerror repeats the path; keep the reason.
fn dl_reason(message: &str, path: &Path) -> String {
    let path = path.display().to_string();
    let reason = message.rsplit_once(&format!("{path}: ")).map_or(message, |(_, r)| r);
    reason.trim().to_string()
}

fn first_line(s: &str) -> &str {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or(s)
}

/// abi_stable's layout report runs to hundreds of lines; the decisive part is its `Error:`
/// entries with their Expected/Found lines.
fn summarize_abi_error(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut parts = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(error) = line.strip_prefix("Error:") {
            let mut part = error.trim().to_string();
            for follow in lines.iter().skip(i + 1).take(4) {
                if follow.starts_with("Error:") {
                    break;
                }
                part.push(' ');
                part.push_str(follow);
            }
            parts.push(part);
        }
    }
    let summary = if parts.is_empty() {
        first_line(report).to_string()
    } else {
        parts.join("; ")
    };
    summary.chars().take(600).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_root_module_has_a_known_function_count() {
        assert_eq!(root_field_count(<PluginModuleRef as StableAbi>::LAYOUT), Some(5));
    }

    #[test]
    fn abi_reports_are_cut_to_their_errors() {
        let report = "Compared <this>:\n  --- Type Layout ---\n  type:X\nError:mismatched type\nExpected:\n    RString\nFound:\n    u32\n";
        assert_eq!(
            summarize_abi_error(report),
            "mismatched type Expected: RString Found: u32"
        );
    }

    #[test]
    fn files_that_are_not_libraries_are_refused_with_the_loader_reason() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("libclientbatchingestapp_a_csv.so");
        std::fs::write(&text, "not a library").unwrap();
        let err = LoadedLibrary::load(&text).err().unwrap().to_string();
        assert!(err.contains("not an ELF file"), "{err}");
        let random = dir.path().join("librandom.so");
        std::fs::write(&random, vec![0x5a; 8192]).unwrap();
        let err = LoadedLibrary::load(&random).err().unwrap().to_string();
        assert!(err.contains("not an ELF file"), "{err}");
        let err = LoadedLibrary::load(&dir.path().join("missing.so"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("No such file"), "{err}");
    }
}
