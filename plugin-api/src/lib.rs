//! # plugin-api: write a mysimbdp tenant plugin
//!
//! mysimbdp ingests each tenant's data through the tenant's own native plugin: a `cdylib`
//! built against this crate. A **batch** plugin (`clientbatchingestapp`) turns one staged file
//! into rows; a **stream** plugin (`clientstreamingestapp`) turns batches of messages into
//! rows. The platform owns every database connection: a plugin declares its tables, emits
//! rows, and never sees a session, a credential or another tenant.
//!
//! ## A batch plugin in five steps
//!
//! **1. The crate.** Its name is the file name the platform looks for, minus `lib` and `.so`:
//! `clientbatchingestapp_<tenant>_<filetype>` (batch) or `clientstreamingestapp_<tenant>`
//! (stream). `<tenant>` is the tenant's id in `customer_information.json` (a lower-case letter,
//! then lower-case letters, digits or `_`, at most 32); `<filetype>` is lower-case letters and
//! digits (no `_`, so the last `_` of a batch name separates the two).
//!
//! ```toml
//! [package]
//! name = "clientbatchingestapp_acme_csv"
//! version = "1.0.0"            # shown in reports as the plugin version
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! # The `plugin-api` folder of the platform release you deploy to (a copy of that folder
//! # alone is enough to build).
//! plugin-api = { path = "../plugin-api" }
//!
//! # Never `panic = "abort"`: a panic must unwind to be caught and reported.
//!
//! # Only if this folder sits inside another cargo workspace that does not list it:
//! # [workspace]
//! ```
//!
//! The platform checks two things of a build, not the crate's version number: the ABI version
//! [`API_VERSION`] compiled into it (it must equal the platform's), and `abi_stable`'s type
//! layout of the plugin interface. `mysimbdp plugin check` says whether your build passes both.
//!
//! **2. The tables.** Declare each table once, as a row type, with [`row!`]: its columns are
//! the struct's fields (the Rust type gives the column type, `Option` makes it nullable), in
//! three groups: the partition key, the clustering key, the other columns. Partition key +
//! clustering key identify a row, and writing the same key twice keeps one row, so take the
//! key from the data (a device id and a timestamp, not a counter): then a file ingested twice,
//! or a retry after a crash, never duplicates a row. Column types: `String` text, `i64` bigint,
//! `i32` int (−2³¹..2³¹−1: parse into `i32` and reject what does not fit), `f64` double,
//! `bool` boolean, [`Timestamp`] (**milliseconds** since the Unix epoch, UTC), `Vec<u8>` blob.
//!
//! **3. The code.** Implement [`BatchIngestApp`]: read the file from [`Input`] (a
//! [`std::io::Read`]), push rows to [`Output`] with [`Output::push`] (a row goes only to its
//! own table, with every field: a swapped, missing or mistyped column does not compile), and
//! [`Output::reject`] records you cannot use, with their line number and reason. A rejected
//! record fails only itself. The file's report counts `rows_total` = rows pushed + records
//! rejected: a header or blank line you skip counts in neither. Values are stored as given (a
//! `f64` may be NaN or infinite: reject such values yourself if they are not data).
//!
//! **4. Export it** with [`export_plugin!`]. When the crate is named like its plugin file, the
//! macro checks at compile time that `TENANT` and `FILE_TYPES` say the same.
//!
//! ```
//! use plugin_api::{
//!     BatchIngestApp, CappedLines, DEFAULT_MAX_LINE_BYTES, FileInfo, Input, Output, PluginError, Row, TableSpec,
//!     Timestamp, export_plugin, row,
//! };
//!
//! row! {
//!     /// A row of `temperatures`.
//!     pub struct Temperature in "temperatures" {
//!         partition { sensor: String }
//!         clustering { time: Timestamp }
//!         columns { celsius: f64, note: Option<String> }
//!     }
//! }
//!
//! pub struct AcmeCsv;
//!
//! impl BatchIngestApp for AcmeCsv {
//!     const TENANT: &'static str = "acme";
//!     const FILE_TYPES: &'static [&'static str] = &["csv"];
//!
//!     fn tables() -> Vec<TableSpec> {
//!         vec![Temperature::spec()]
//!     }
//!
//!     fn ingest(_file: &FileInfo, input: &mut Input, out: &mut Output) -> Result<(), PluginError> {
//!         let table = out.table_of::<Temperature>()?;
//!         // Records look like `sensor-1,1700000000000,71.6,` (Fahrenheit, an optional note),
//!         // after a header line. CappedLines rejects a line over 1 MiB instead of holding it.
//!         let mut reader = csv::ReaderBuilder::new()
//!             .flexible(true)
//!             .from_reader(CappedLines::new(input, DEFAULT_MAX_LINE_BYTES));
//!         let mut record = csv::StringRecord::new();
//!         loop {
//!             match reader.read_record(&mut record) {
//!                 Ok(true) => {}
//!                 Ok(false) => break,
//!                 // A line that is not UTF-8 fails only itself.
//!                 Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => {
//!                     out.reject(e.position().map_or(0, |p| p.line()), "the line is not valid UTF-8", "")?;
//!                     continue;
//!                 }
//!                 Err(e) => return Err(PluginError::invalid_input(format!("unreadable CSV: {e}"))),
//!             }
//!             reader.get_mut().reject_long_lines(out)?;
//!             let line = record.position().map_or(0, |p| p.line());
//!             let field = |i: usize| record.get(i).unwrap_or("").trim();
//!             let (Ok(time), Ok(fahrenheit)) = (field(1).parse::<i64>(), field(2).parse::<f64>()) else {
//!                 out.reject(line, "time or temperature is not a number", &record.iter().collect::<Vec<_>>().join(","))?;
//!                 continue;
//!             };
//!             let row = Temperature {
//!                 sensor: field(0).to_string(),
//!                 time: Timestamp(time),
//!                 celsius: (fahrenheit - 32.0) * 5.0 / 9.0,
//!                 note: Some(field(3)).filter(|n| !n.is_empty()).map(str::to_string),
//!             };
//!             out.push(table, row)?;
//!         }
//!         reader.get_mut().reject_long_lines(out)
//!     }
//! }
//!
//! export_plugin!(batch: AcmeCsv);
//!
//! // 5. Test it in a plain `cargo test`, with the host's checks and no platform:
//! let file = "sensor,time,fahrenheit,note\nsensor-1,1700000000000,71.6,\nsensor-1,soon,72.0,\n";
//! let outcome = plugin_api::testing::run_batch::<AcmeCsv>("sample.csv", file.as_bytes());
//! assert!(outcome.result.is_ok());
//! assert_eq!(outcome.rows_of("temperatures").len(), 1);
//! assert_eq!(outcome.rejected[0].position, 3);
//! ```
//!
//! Tables whose columns are known only at run time keep the positional API:
//! [`TableSpec::new`] with [`TableSpec::column`], [`Output::table`] and [`Output::push_row`]
//! (one [`Value`] per column, in declaration order; the host rejects a row that does not fit).
//!
//! **Test it** with [`testing::run_batch`] / [`testing::run_stream`]: the plugin runs through
//! the same entry points and checks as on the platform, and you get its rows, its rejects and
//! its result. `mysimbdp plugin new <tenant> <type|stream>` writes a crate that starts here: a
//! typed row, a `csv` reader, a reject path, a sample and its test.
//!
//! **5. Ship it.** `cargo build --release`, then `mysimbdp plugin check
//! target/release/libclientbatchingestapp_acme_csv.so --sample sample.csv` prints the
//! manifest, the tables and the verdict, then runs the built plugin on the sample and shows its
//! first rows, its rejects and a summary (`--as NAME` checks a build under the file name it
//! will be deployed as). The operator copies the file into the platform's `plugins/` folder; the platform
//! loads it within a second, and a later copy with new content replaces it without a
//! restart: files already being ingested finish on the old version.
//!
//! ## A stream plugin
//!
//! Implement [`StreamIngestApp`] and `export_plugin!(stream: MyApp)`. Clients post messages
//! (`POST /v1/tenants/{t}/messages`: a JSON object, an array, or NDJSON); each message is
//! one JSON value, acknowledged only once the queue holds it durably. The platform runs
//! **instances** of the plugin, each consuming the tenant's topic in the tenant's consumer
//! group, so several instances share the topic's partitions.
//!
//! ### Life cycle of an instance
//!
//! 1. **Open.** [`StreamIngestApp::open`] once per instance, before its first batch; keep
//!    per-instance state in `self`, never in globals (several instances of several tenants
//!    run in one process). Resolve your tables here, once: `Table::<MyRow>::find(&Self::tables())`
//!    (or [`TableId::find`] for the positional API). An error from `open` pauses the instance
//!    and it tries again later.
//! 2. **Process.** [`StreamIngestApp::process`] with one batch: the messages of *one
//!    partition*, in offset order: a poll takes at most `batch_messages` (platform config,
//!    default 5,000) gathered for at most `batch_wait_ms` (default 50 ms), up to twice
//!    `batch_messages` while the instance works through a backlog, and is split by
//!    partition. Calls to one value never
//!    overlap. Push rows with [`Output::push`] and reject a message the plugin cannot use
//!    with [`Output::reject`] (position = [`Message::offset`]): it goes to the tenant's
//!    rejected log with its partition, offset, reason and payload
//!    (`GET /v1/tenants/{t}/stream/rejected`), and the batch goes on.
//! 3. **Commit.** The platform writes the batch's rows, makes them durable, and only then
//!    commits the batch's offsets. Nothing is committed for a batch that did not succeed.
//! 4. **Close.** The value is dropped when the instance is stopped (the batch in hand is
//!    finished and committed first), when the platform shuts down, when the tenant is removed,
//!    or at a batch boundary when a new version of the plugin replaces this one (the next
//!    batch goes to a value opened on the new version). A value is also dropped and a new one
//!    opened after it panicked.
//!
//! ### Redelivery: at least once, so key rows by the data
//!
//! A message is delivered again when its batch was not committed: the platform was killed,
//! storage or the queue failed mid-batch, an instance did not stop in time, its partition
//! moved to another instance before the commit (a scale-out, or the group forming again after
//! a broker outage), or `process` failed. The rows it produced may already be written, so the
//! same message must give the same rows with the same keys (a pure function of the message,
//! no counters or clocks in key columns): then a redelivered message rewrites its rows and
//! each is stored once.
//!
//! ### Poison messages fail only themselves
//!
//! If `process` returns an error or panics, the batch is tried again with backoff (on a new
//! value after a panic). If it keeps failing, the platform splits it in halves, and each half
//! that fails again, until it finds the messages `process` fails on: those go to the rejected
//! log with the error (or the panic's message) and every other message is stored, so the
//! partition never stalls behind one bad message. So `process` must not depend on which
//! messages share its batch. The version is quarantined only when it fails on every message
//! it is given; a plugin should still prefer [`Output::reject`] for a bad message, which
//! costs nothing, over an error, which costs a split.
//!
//! ## The plugin specification
//!
//! A plugin **MUST**:
//! - be a `cdylib` named as above, built with `panic = "unwind"` against the host's exact
//!   `plugin-api` version ([`API_VERSION`]); the host refuses any other version;
//! - declare in `TENANT` the tenant its file name names, and (batch) in `FILE_TYPES` the
//!   file type its file name names;
//! - declare valid tables ([`TableSpec::validate`]) whose key columns come from the data;
//! - push rows whose values match their columns' types, `Null` only in nullable columns (the
//!   host rejects any other row, counting it as failed);
//! - return the error from an [`Output`] call instead of carrying on (the host is stopping).
//!
//! A plugin **SHOULD**:
//! - reject a bad record with [`Output::reject`] and go on, rather than fail the whole input;
//! - stream its input: read [`Input`] incrementally, never into one buffer, so memory does not
//!   grow with the file;
//! - cap the length of one record, so memory does not grow with a line either: read through
//!   [`CappedLines`] and reject what it reports ([`CappedLines::reject_long_lines`]);
//! - keep no global state: every call carries its own state.
//!
//! A plugin's panic is caught at the boundary ([`export_plugin!`] does it) and fails only that
//! file or batch; a version that keeps failing is quarantined until a new file replaces it.
//! A plugin runs inside the platform's process with its privileges: the operator decides which
//! files enter `plugins/`.

#![warn(missing_docs)]

pub mod export;
pub mod ffi;
mod io;
mod lines;
mod schema;
pub mod testing;
pub mod time;
pub mod typed;

pub use abi_stable;
pub use ffi::{
    ColumnSpec, ColumnType, ErrorKind, FileInfo, Message, PluginError, PluginKind, StreamInfo, TableSpec, Value,
};
pub use io::{Input, MAX_REJECTED_RAW_BYTES, Output, TableId};
pub use lines::{CappedLines, DEFAULT_MAX_LINE_BYTES, LongLine};
pub use schema::{MAX_IDENTIFIER_LEN, RESERVED_TABLE_PREFIX, check_identifier};
pub use typed::{ColumnValue, Row, Table, Timestamp};

/// The version of the plugin ABI. The host loads only plugins built against exactly this
/// version; bump it with every change to the [`ffi`] types.
pub const API_VERSION: u32 = 1;

/// A `clientbatchingestapp`: turns one file into rows.
pub trait BatchIngestApp {
    /// The tenant id, as in the plugin's file name and `customer_information.json`.
    const TENANT: &'static str;
    /// The file types this plugin ingests, as in its file name (`["csv"]`).
    const FILE_TYPES: &'static [&'static str];

    /// The tables the plugin writes, in the order [`TableId`]s refer to them.
    fn tables() -> Vec<TableSpec>;

    /// Reads the whole file from `input` and pushes its rows to `output`. Called once per
    /// file, on a thread the platform owns (files run side by side, and one thread serves many
    /// files in turn, so a thread-local outlives a file); buffered rows are flushed when it
    /// returns `Ok`.
    /// An `Err` fails the file: rows and rejects still buffered are dropped, rows already
    /// handed over (every `batch_rows` rows) stay stored, and a new upload of the file
    /// rewrites the same keys.
    fn ingest(file: &FileInfo, input: &mut Input, output: &mut Output) -> Result<(), PluginError>;
}

/// A `clientstreamingestapp`: turns batches of messages into rows. One value per running
/// instance.
pub trait StreamIngestApp: Sized {
    /// The tenant id, as in the plugin's file name and `customer_information.json`.
    const TENANT: &'static str;

    /// The tables the plugin writes, in the order [`TableId`]s refer to them.
    fn tables() -> Vec<TableSpec>;

    /// Opens an instance (once, before its first batch; see the crate docs for the life cycle).
    fn open(info: &StreamInfo) -> Result<Self, PluginError>;

    /// Turns one batch of one partition's messages, in offset order, into rows. An `Err` (or
    /// a panic) fails the whole batch: it is tried again, then split until the messages that
    /// fail are found and rejected (see the crate docs: poison messages).
    fn process(&mut self, messages: &[Message<'_>], output: &mut Output) -> Result<(), PluginError>;
}

impl PluginError {
    /// The input as a whole cannot be ingested (wrong header, not the declared format).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        PluginError {
            kind: ErrorKind::InvalidInput,
            message: message.into().into(),
        }
    }

    /// The plugin failed for a reason of its own.
    pub fn internal(message: impl Into<String>) -> Self {
        PluginError {
            kind: ErrorKind::Internal,
            message: message.into().into(),
        }
    }

    /// The host asked the plugin to stop.
    pub fn cancelled(message: impl Into<String>) -> Self {
        PluginError {
            kind: ErrorKind::Cancelled,
            message: message.into().into(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message.as_str())
    }
}

impl std::error::Error for PluginError {}

impl From<std::io::Error> for PluginError {
    fn from(error: std::io::Error) -> Self {
        PluginError::internal(format!("reading the input failed: {error}"))
    }
}

impl Message<'_> {
    /// The message body.
    pub fn payload(&self) -> &[u8] {
        self.payload.as_slice()
    }
}

/// Exports a plugin: `export_plugin!(batch: MyApp)` for a [`BatchIngestApp`],
/// `export_plugin!(stream: MyApp)` for a [`StreamIngestApp`]. Use it once per crate.
///
/// It defines the symbols the host loads (the API version tag and the abi_stable root module),
/// records the crate's `CARGO_PKG_VERSION` as the plugin version, and wraps every entry point
/// so that a panic becomes an error the host reports instead of crossing into the host.
#[macro_export]
macro_rules! export_plugin {
    (batch: $app:ty) => {
        $crate::export_plugin!(@batch $app, $crate::API_VERSION);
    };
    (stream: $app:ty) => {
        $crate::export_plugin!(@stream $app, $crate::API_VERSION);
    };
    // For the platform's own tests: a plugin that claims another API version.
    (@api_version_for_tests $version:expr, batch: $app:ty) => {
        $crate::export_plugin!(@batch $app, $version);
    };
    (@batch $app:ty, $version:expr) => {
        const _: () = assert!(
            $crate::typed::identity_agrees(
                env!("CARGO_PKG_NAME"),
                <$app as $crate::BatchIngestApp>::TENANT,
                Some(<$app as $crate::BatchIngestApp>::FILE_TYPES),
            ),
            concat!(
                "the crate is named ", env!("CARGO_PKG_NAME"),
                ": its TENANT must be the tenant that name names, and its FILE_TYPES must hold the file type it names"
            )
        );
        const _: () = {
            extern "C" fn manifest() -> $crate::abi_stable::std_types::RResult<$crate::ffi::Manifest, $crate::PluginError> {
                $crate::export::batch_manifest::<$app>(env!("CARGO_PKG_VERSION"), $version)
            }
            extern "C" fn ingest_file(
                file: &$crate::ffi::FileInfo,
                input: $crate::ffi::ByteSource,
                sink: $crate::ffi::RowSink,
            ) -> $crate::abi_stable::std_types::RResult<(), $crate::PluginError> {
                $crate::export::ingest_file::<$app>(file, input, sink)
            }
            extern "C" fn stream_open(
                info: &$crate::ffi::StreamInfo,
            ) -> $crate::abi_stable::std_types::RResult<$crate::ffi::StreamHandle, $crate::PluginError> {
                $crate::export::stream_open_unsupported(info)
            }
            extern "C" fn stream_process(
                handle: $crate::ffi::StreamHandle,
                messages: $crate::abi_stable::std_types::RSlice<'_, $crate::ffi::Message<'_>>,
                sink: $crate::ffi::RowSink,
            ) -> $crate::abi_stable::std_types::RResult<(), $crate::PluginError> {
                $crate::export::stream_process_unsupported(handle, messages, sink)
            }
            extern "C" fn stream_close(handle: $crate::ffi::StreamHandle) {
                $crate::export::stream_close_unsupported(handle)
            }
            $crate::__export_module!($version, manifest, ingest_file, stream_open, stream_process, stream_close);
        };
    };
    (@stream $app:ty, $version:expr) => {
        const _: () = assert!(
            $crate::typed::identity_agrees(env!("CARGO_PKG_NAME"), <$app as $crate::StreamIngestApp>::TENANT, None),
            concat!(
                "the crate is named ", env!("CARGO_PKG_NAME"),
                ": its TENANT must be the tenant that name names"
            )
        );
        const _: () = {
            extern "C" fn manifest() -> $crate::abi_stable::std_types::RResult<$crate::ffi::Manifest, $crate::PluginError> {
                $crate::export::stream_manifest::<$app>(env!("CARGO_PKG_VERSION"), $version)
            }
            extern "C" fn ingest_file(
                file: &$crate::ffi::FileInfo,
                input: $crate::ffi::ByteSource,
                sink: $crate::ffi::RowSink,
            ) -> $crate::abi_stable::std_types::RResult<(), $crate::PluginError> {
                $crate::export::ingest_file_unsupported(file, input, sink)
            }
            extern "C" fn stream_open(
                info: &$crate::ffi::StreamInfo,
            ) -> $crate::abi_stable::std_types::RResult<$crate::ffi::StreamHandle, $crate::PluginError> {
                $crate::export::stream_open::<$app>(info)
            }
            extern "C" fn stream_process(
                handle: $crate::ffi::StreamHandle,
                messages: $crate::abi_stable::std_types::RSlice<'_, $crate::ffi::Message<'_>>,
                sink: $crate::ffi::RowSink,
            ) -> $crate::abi_stable::std_types::RResult<(), $crate::PluginError> {
                $crate::export::stream_process::<$app>(handle, messages, sink)
            }
            extern "C" fn stream_close(handle: $crate::ffi::StreamHandle) {
                $crate::export::stream_close::<$app>(handle)
            }
            $crate::__export_module!($version, manifest, ingest_file, stream_open, stream_process, stream_close);
        };
    };
}

/// Defines the two exported symbols. Used by [`export_plugin!`] only.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_module {
    ($version:expr, $manifest:ident, $ingest_file:ident, $stream_open:ident, $stream_process:ident, $stream_close:ident) => {
        #[unsafe(no_mangle)]
        pub static MYSIMBDP_PLUGIN_API_TAG: $crate::ffi::ApiTag = $crate::ffi::ApiTag::new($version);

        fn root_module() -> $crate::ffi::PluginModuleRef {
            $crate::export::install_panic_hook(env!("CARGO_PKG_NAME"));
            const MODULE: &$crate::abi_stable::prefix_type::WithMetadata<$crate::ffi::PluginModule> =
                &$crate::abi_stable::prefix_type::WithMetadata::new($crate::ffi::PluginModule {
                    manifest: $manifest,
                    ingest_file: $ingest_file,
                    stream_open: $stream_open,
                    stream_process: $stream_process,
                    stream_close: $stream_close,
                });
            $crate::ffi::PluginModuleRef(MODULE.static_as_prefix())
        }

        // What abi_stable's `#[export_root_module]` generates, spelled with `$crate` paths so a
        // plugin needs no direct abi_stable dependency. The name is checked in `ffi`.
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(root_module)
            }
            // SAFETY: `erased_root_module` returns the `PluginModuleRef` built by `root_module`.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::ffi::PluginModuleRef>(
                    erased_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
