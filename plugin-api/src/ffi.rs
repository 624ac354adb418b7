//! The types that cross the boundary between the mysimbdp host and a plugin.
//!
//! Everything here is `#[repr(C)]` and derives [`StableAbi`], so the host can check, before
//! it calls anything, that the plugin was built against the same layout. A tenant rarely
//! touches these types directly: [`export_plugin!`](crate::export_plugin) builds the
//! [`PluginModule`] from a [`BatchIngestApp`](crate::BatchIngestApp) or
//! [`StreamIngestApp`](crate::StreamIngestApp), and [`Input`](crate::Input) /
//! [`Output`](crate::Output) wrap [`ByteSource`] and [`RowSink`].
//!
//! Any change to a type in this module is an ABI change and must bump
//! [`API_VERSION`](crate::API_VERSION).

use std::ffi::c_void;

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RSlice, RSliceMut, RString, RVec},
};

/// Name of the plain (non-abi_stable) symbol that carries the [`ApiTag`].
///
/// The host reads it right after `dlopen`, before any abi_stable check runs, and accepts only
/// its own exact [`API_VERSION`](crate::API_VERSION).
pub const API_TAG_SYMBOL: &[u8] = b"MYSIMBDP_PLUGIN_API_TAG\0";

/// Magic bytes that open an [`ApiTag`]: a library without them is not a mysimbdp plugin.
pub const API_TAG_MAGIC: [u8; 16] = *b"mysimbdp-plugin\0";

/// The first thing the host reads from a plugin: who built it and against which API version.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiTag {
    /// Always [`API_TAG_MAGIC`].
    pub magic: [u8; 16],
    /// The [`API_VERSION`](crate::API_VERSION) of the `plugin-api` the plugin was built with.
    pub api_version: u32,
}

impl ApiTag {
    /// The tag for a plugin built against `api_version`.
    pub const fn new(api_version: u32) -> Self {
        Self {
            magic: API_TAG_MAGIC,
            api_version,
        }
    }
}

/// Whether a plugin ingests whole files or message batches.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// A `clientbatchingestapp`: one call per staged file.
    Batch,
    /// A `clientstreamingestapp`: a long-lived instance called with batches of messages.
    Stream,
}

/// The type of a table column, as the host stores it.
///
/// | type | Rust value | Cassandra | embedded (SQLite) |
/// |---|---|---|---|
/// | `Text` | UTF-8 string | `text` | `TEXT` |
/// | `BigInt` | `i64` | `bigint` | `INTEGER` |
/// | `Int` | `i32` | `int` | `INTEGER` |
/// | `Double` | `f64` | `double` | `REAL` |
/// | `Boolean` | `bool` | `boolean` | `INTEGER` 0/1 |
/// | `Timestamp` | `i64` milliseconds since the Unix epoch, UTC | `timestamp` | `INTEGER` |
/// | `Blob` | bytes | `blob` | `BLOB` |
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// UTF-8 text.
    Text,
    /// 64-bit signed integer.
    BigInt,
    /// 32-bit signed integer.
    Int,
    /// 64-bit IEEE float.
    Double,
    /// true / false.
    Boolean,
    /// Milliseconds since the Unix epoch (UTC).
    Timestamp,
    /// Raw bytes.
    Blob,
}

/// One column of a [`TableSpec`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// Lower-case identifier: `[a-z][a-z0-9_]*`, at most 48 characters.
    pub name: RString,
    /// The stored type.
    pub column_type: ColumnType,
    /// Whether [`Value::Null`] is allowed. Key columns are never nullable.
    pub nullable: bool,
}

/// A table the plugin writes to, declared up front in its manifest.
///
/// The host creates it (in the tenant's keyspace or database) before the first row arrives,
/// and checks every row against it. Build one with [`TableSpec::new`] and its builder methods.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// Lower-case identifier: `[a-z][a-z0-9_]*`, at most 48 characters; the prefix
    /// `mysimbdp_` is reserved for the platform.
    pub name: RString,
    /// Columns, in the order the plugin fills a row.
    pub columns: RVec<ColumnSpec>,
    /// Partition key columns (at least one). Rows of one partition are stored together.
    pub partition_key: RVec<RString>,
    /// Clustering key columns (may be empty). Partition key + clustering key identify a row:
    /// writing the same key twice keeps one row, which makes re-ingestion idempotent.
    pub clustering_key: RVec<RString>,
}

/// What a plugin says about itself. The host checks it against the file name.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The tenant this plugin belongs to (`client1` in `libclientbatchingestapp_client1_csv.so`).
    pub tenant: RString,
    /// Batch or stream.
    pub kind: PluginKind,
    /// File types a batch plugin ingests (`csv`); empty for a stream plugin.
    pub file_types: RVec<RString>,
    /// The `plugin-api` version it was built against.
    pub api_version: u32,
    /// The plugin crate's own version (its `CARGO_PKG_VERSION`), shown in reports.
    pub plugin_version: RString,
    /// The tables it writes.
    pub tables: RVec<TableSpec>,
}

/// One value of a row. Its variant must match the column's [`ColumnType`], or be `Null` in a
/// nullable column; the host rejects a row that does not match its table.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum Value {
    /// No value (only in nullable columns).
    Null,
    /// For [`ColumnType::Text`].
    Text(RString),
    /// For [`ColumnType::BigInt`].
    BigInt(i64),
    /// For [`ColumnType::Int`].
    Int(i32),
    /// For [`ColumnType::Double`].
    Double(f64),
    /// For [`ColumnType::Boolean`].
    Boolean(bool),
    /// For [`ColumnType::Timestamp`]: milliseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// For [`ColumnType::Blob`].
    Blob(RVec<u8>),
}

/// An input record the plugin could not turn into rows: counted in the file's `rows_failed`
/// and kept, with its position and reason, in the tenant's rejected-rows log.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// 1-based line number in the file (batch), or the message offset (stream).
    pub position: u64,
    /// Why it was rejected, for a person to read.
    pub reason: RString,
    /// The raw input record (the host keeps at most a few KiB of it).
    pub raw: RString,
}

/// Rows for one table, plus any rejected input records, handed to the host in one call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct RowBatch {
    /// Index of the table in [`Manifest::tables`].
    pub table: u32,
    /// Values per row (the table's column count).
    pub width: u32,
    /// Row-major values: `values.len()` is a multiple of `width`.
    pub values: RVec<Value>,
    /// Input records rejected since the previous batch.
    pub rejected: RVec<RejectedRow>,
}

/// What went wrong in a plugin call.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input as a whole cannot be ingested (wrong header, wrong format).
    InvalidInput,
    /// The plugin failed for a reason of its own.
    Internal,
    /// The plugin panicked; the export macro caught it.
    Panic,
    /// The host asked the plugin to stop (shutdown, cancelled file).
    Cancelled,
}

/// The error a plugin call returns.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// A message for the report.
    pub message: RString,
}

/// What the host tells a batch plugin about the file it is about to read.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct FileInfo {
    /// The platform's id for the file (also its report key).
    pub file_id: RString,
    /// The name the client gave the file (may be empty).
    pub file_name: RString,
    /// The file type (`csv`).
    pub file_type: RString,
    /// Size in bytes.
    pub file_size: u64,
    /// How many rows the host would like per [`RowBatch`].
    pub batch_rows: u32,
}

/// What the host tells a stream instance when it opens it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// The platform's id for the instance.
    pub instance_id: RString,
    /// How many rows the host would like per [`RowBatch`].
    pub batch_rows: u32,
}

/// One message of a stream batch, borrowed from the host for the duration of the call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The message's offset in the tenant's topic (unique per partition).
    pub offset: u64,
    /// Partition of the tenant's topic the message came from.
    pub partition: u32,
    /// When the platform accepted the message, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The message body (a JSON object for the example tenants).
    pub payload: RSlice<'a, u8>,
}

/// Where a batch plugin reads its file from: the host's end of [`Input`](crate::Input).
#[repr(C)]
#[derive(StableAbi)]
pub struct ByteSource {
    /// The host's state; opaque to the plugin.
    pub context: *mut c_void,
    /// Fills `buffer` from the start; returns the number of bytes read, 0 at the end.
    pub read: extern "C" fn(context: *mut c_void, buffer: RSliceMut<'_, u8>) -> RResult<usize, RString>,
}

/// Where a plugin sends its rows: the host's end of [`Output`](crate::Output).
#[repr(C)]
#[derive(StableAbi)]
pub struct RowSink {
    /// The host's state; opaque to the plugin.
    pub context: *mut c_void,
    /// Takes a batch (the host copies what it needs before returning). An error means the
    /// host wants the plugin to stop: return it.
    pub emit: extern "C" fn(context: *mut c_void, batch: &RowBatch) -> RResult<(), RString>,
}

/// An open stream instance inside the plugin, owned by the host until it calls
/// [`PluginModule::stream_close`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHandle(pub *mut c_void);

/// The root module every plugin exports (through [`export_plugin!`](crate::export_plugin)).
///
/// Every function catches panics and returns them as [`ErrorKind::Panic`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The plugin's manifest.
    pub manifest: extern "C" fn() -> RResult<Manifest, PluginError>,
    /// Batch plugins: reads one file from `input` and sends its rows to `sink`.
    pub ingest_file: extern "C" fn(file: &FileInfo, input: ByteSource, sink: RowSink) -> RResult<(), PluginError>,
    /// Stream plugins: opens an instance.
    pub stream_open: extern "C" fn(info: &StreamInfo) -> RResult<StreamHandle, PluginError>,
    /// Stream plugins: turns a batch of messages into rows sent to `sink`.
    pub stream_process: extern "C" fn(
        handle: StreamHandle,
        messages: RSlice<'_, Message<'_>>,
        sink: RowSink,
    ) -> RResult<(), PluginError>,
    /// Stream plugins: closes an instance opened by `stream_open`.
    #[sabi(last_prefix_field)]
    pub stream_close: extern "C" fn(handle: StreamHandle),
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "mysimbdp_plugin";
    const NAME: &'static str = "mysimbdp plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The symbol abi_stable looks up; [`export_plugin!`](crate::export_plugin) defines it by
/// this exact name, checked here at compile time.
pub const ROOT_MODULE_LOADER_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

const _: () = {
    let a = abi_stable::library::ROOT_MODULE_LOADER_NAME.as_bytes();
    let b = ROOT_MODULE_LOADER_SYMBOL.as_bytes();
    assert!(a.len() == b.len(), "abi_stable changed its root module symbol");
    let mut i = 0;
    while i < a.len() {
        assert!(a[i] == b[i], "abi_stable changed its root module symbol");
        i += 1;
    }
};
