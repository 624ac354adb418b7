//! The embedded backend: one SQLite database per tenant (`<data>/embedded/<tenant>.sqlite`),
//! nothing to install.
//!
//! Each tenant's database has one writer thread that owns the write connection (SQLite has one
//! writer at a time) and takes commands over a bounded channel; each write is one transaction
//! with a cached prepared statement. A second thread, the syncer, makes the log durable for
//! flushes and checkpoints it into the database file, so that the writer only writes (see
//! [`sync_loop`]). Reads open their own connection (WAL lets them run beside the writer).
//! Tables are `STRICT, WITHOUT ROWID` with the declared primary key, so a row is
//! stored once per key and `INSERT OR REPLACE` makes writes idempotent
//! (doubles sit in `ANY` columns, so that -0.0 and NaN come back as written). The declared schemas
//! are kept in `mysimbdp_tables`; `mysimbdp_meta` holds the platform's own counters. What a
//! tenant's data occupies is its database's pages in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params};
use tokio::sync::oneshot;

use super::{
    ColumnType, CoreDms, Page, Rows, StoreError, StoreErrorKind, TableChange, TableSchema, TenantStorage, TenantStore,
    Value, WriteLimiter, Written, check_declaration, find_table,
};
use crate::tenants::TenantId;

/// The embedded backend.
pub struct EmbeddedDms {
    dir: PathBuf,
    limiter: Arc<WriteLimiter>,
    open: Mutex<HashMap<TenantId, Arc<EmbeddedTenant>>>,
}

impl EmbeddedDms {
    /// Databases live in `dir` (created if missing).
    pub fn new(dir: &Path, limiter: Arc<WriteLimiter>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        Ok(EmbeddedDms {
            dir: dir.to_path_buf(),
            limiter,
            open: Mutex::default(),
        })
    }
}

impl EmbeddedDms {
    fn database(&self, tenant: &TenantId) -> PathBuf {
        self.dir.join(format!("{tenant}.sqlite"))
    }
}

#[async_trait]
impl CoreDms for EmbeddedDms {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn open_existing(&self, tenant: &TenantStorage) -> Result<Option<Arc<dyn TenantStore>>, StoreError> {
        let exists = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&tenant.tenant)
            || self.database(&tenant.tenant).is_file();
        if exists {
            self.open_tenant(tenant).await.map(Some)
        } else {
            Ok(None)
        }
    }

    async fn open_tenant(&self, tenant: &TenantStorage) -> Result<Arc<dyn TenantStore>, StoreError> {
        if let Some(open) = self.open.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant.tenant) {
            return Ok(open.clone());
        }
        let path = self.database(&tenant.tenant);
        let tenant_id = tenant.tenant.clone();
        let limiter = Arc::clone(&self.limiter);
        let store = tokio::task::spawn_blocking(move || EmbeddedTenant::open(tenant_id, path, limiter))
            .await
            .map_err(|e| internal(format!("opening the database failed: {e}")))??;
        let store = Arc::new(store);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        Ok(open.entry(tenant.tenant.clone()).or_insert(store).clone())
    }
}

enum Command {
    EnsureTable(TableSchema, oneshot::Sender<Result<TableChange, StoreError>>),
    Write(Rows, oneshot::Sender<Result<Written, StoreError>>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// Pages of a tenant database that hold the platform's own records, not the tenant's data: the
/// schema, and `mysimbdp_tables` and `mysimbdp_meta` with their key indexes.
const PLATFORM_PAGES: i64 = 5;

/// Read connections a tenant keeps open between reads; a read beyond them opens its own and
/// closes it after.
const IDLE_READERS: usize = 4;

/// One tenant's database.
pub struct EmbeddedTenant {
    tenant: TenantId,
    path: PathBuf,
    commands: std::sync::mpsc::SyncSender<Command>,
    limiter: Arc<WriteLimiter>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Declarations this database was last made to accept, by table: the same declaration
    /// again (every file of a version) needs no trip to the writer. Columns are only ever
    /// added, so what was accepted once stays accepted.
    ensured: Mutex<HashMap<String, TableSchema>>,
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let connection =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(connection)
}

impl EmbeddedTenant {
    fn open(tenant: TenantId, path: PathBuf, limiter: Arc<WriteLimiter>) -> Result<Self, StoreError> {
        let connection = Connection::open(&path).map_err(|e| sqlite_error(&tenant, "opening the database", e))?;
        connection
            .execute_batch(WRITER_PRAGMAS)
            .map_err(|e| sqlite_error(&tenant, "preparing the database", e))?;
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS mysimbdp_tables (name TEXT PRIMARY KEY, schema TEXT NOT NULL) STRICT;
                 CREATE TABLE IF NOT EXISTS mysimbdp_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;",
            )
            .map_err(|e| sqlite_error(&tenant, "preparing the database", e))?;
        let syncer = Syncer::start(&tenant, &path)?;
        let (commands, receiver) = std::sync::mpsc::sync_channel(QUEUED);
        let writer_tenant = tenant.clone();
        std::thread::Builder::new()
            .name(format!("sqlite-{tenant}"))
            .spawn(move || writer_loop(&writer_tenant, connection, &receiver, syncer))
            .map_err(|e| internal(format!("cannot start the writer of {tenant}: {e}")))?;
        Ok(EmbeddedTenant {
            tenant,
            path,
            commands,
            limiter,
            readers: Arc::default(),
            ensured: Mutex::default(),
        })
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || internal(format!("the writer of tenant {} stopped", self.tenant));
        // Queued at once when there is room; only a full queue costs a wait on the blocking pool.
        match self.commands.try_send(make(reply)) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
            Err(std::sync::mpsc::TrySendError::Full(command)) => {
                let commands = self.commands.clone();
                tokio::task::spawn_blocking(move || commands.send(command))
                    .await
                    .map_err(|e| internal(format!("the writer queue failed: {e}")))?
                    .map_err(|_| stopped())?;
            }
        }
        answer.await.map_err(|_| stopped())?
    }

    /// Runs a read on the blocking pool, on a read-only connection taken from the tenant's
    /// idle readers (or opened, and kept for the next read if fewer than [`IDLE_READERS`] are).
    async fn read<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection, &[TableSchema]) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let tenant = self.tenant.clone();
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let idle = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let connection = match idle {
                Some(connection) => connection,
                None => open_reader(&path).map_err(|e| sqlite_error(&tenant, what, e))?,
            };
            let tables = load_tables(&connection).map_err(|e| sqlite_error(&tenant, what, e))?;
            let result = f(&connection, &tables);
            let mut idle = readers.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(connection);
            }
            result
        })
        .await
        .map_err(|e| internal(format!("{what} failed: {e}")))?
    }
}

#[async_trait]
impl TenantStore for EmbeddedTenant {
    fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    async fn ensure_table(&self, table: &TableSchema) -> Result<TableChange, StoreError> {
        check_declaration(&self.tenant, table)?;
        let ensured = || self.ensured.lock().unwrap_or_else(|e| e.into_inner());
        if ensured().get(&table.name) == Some(table) {
            return Ok(TableChange::Unchanged);
        }
        let declared = table.clone();
        let change = self.command(|reply| Command::EnsureTable(declared, reply)).await?;
        ensured().insert(table.name.clone(), table.clone());
        Ok(change)
    }

    async fn check_table(&self, table: &TableSchema) -> Result<TableChange, StoreError> {
        check_declaration(&self.tenant, table)?;
        let (table, tenant) = (table.clone(), self.tenant.clone());
        self.read("checking a table", move |_, tables| {
            table_change(&tenant, tables.iter().find(|t| t.name == table.name), &table).map(|(change, _)| change)
        })
        .await
    }

    async fn column_has_data(&self, table: &str, column: &str) -> Result<bool, StoreError> {
        let (table, column, tenant) = (table.to_string(), column.to_string(), self.tenant.clone());
        self.read("looking for data in a column", move |connection, tables| {
            let schema = find_table(tables, &tenant, &table)?;
            if !schema.columns.iter().any(|c| c.name == column) {
                return Ok(false);
            }
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL)",
                quoted(&schema.name),
                quoted(&column)
            );
            connection
                .query_row(&sql, [], |r| r.get::<_, bool>(0))
                .map_err(|e| sqlite_error(&tenant, "looking for data in a column", e))
        })
        .await
    }

    async fn write(&self, rows: Rows) -> Result<Written, StoreError> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        let _permit = self.limiter.acquire(&self.tenant).await;
        self.command(|reply| Command::Write(rows, reply)).await
    }

    async fn tables(&self) -> Result<Vec<TableSchema>, StoreError> {
        self.read("listing tables", |_, tables| Ok(tables.to_vec())).await
    }

    async fn read_page(&self, table: &str, page: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let (table, page, tenant) = (table.to_string(), page.map(str::to_string), self.tenant.clone());
        self.read("reading rows", move |connection, tables| {
            let schema = find_table(tables, &tenant, &table)?;
            read_page(connection, &tenant, schema, page.as_deref(), limit.clamp(1, 10_000))
        })
        .await
    }

    async fn count(&self, table: &str) -> Result<u64, StoreError> {
        let (table, tenant) = (table.to_string(), self.tenant.clone());
        self.read("counting rows", move |connection, tables| {
            let schema = find_table(tables, &tenant, &table)?;
            let count: i64 = connection
                .query_row(&format!("SELECT COUNT(*) FROM {}", quoted(&schema.name)), [], |r| {
                    r.get(0)
                })
                .map_err(|e| sqlite_error(&tenant, "counting rows", e))?;
            Ok(count as u64)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.command(Command::Flush).await
    }

    async fn stored_bytes(&self) -> Result<u64, StoreError> {
        let tenant = self.tenant.clone();
        self.read("measuring its size", move |connection, _| {
            let pages = |pragma: &str| {
                connection
                    .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0))
                    .map_err(|e| sqlite_error(&tenant, "measuring its size", e))
            };
            // Not counted: the schema page and the platform's own two tables.
            let in_use = pages("page_count")? - pages("freelist_count")? - PLATFORM_PAGES;
            Ok((in_use.max(0) * pages("page_size")?) as u64)
        })
        .await
    }
}

/// Commands taken from the queue to share one transaction or one sync, at most: a write or a
/// flush waits for no more than this many commands queued behind it.
const GROUP: usize = 32;

/// Commands waiting for the writer, at most. What they hold is bounded before they get here
/// (the tenant's writes in flight, 32 by default); the room lets the writes of many small
/// files, each a write of its own, queue up into one transaction while the writer commits the
/// last: a transaction per file cost half the insert rate of rows that arrive in order.
const QUEUED: usize = 32;

type WriteReply = oneshot::Sender<Result<Written, StoreError>>;

/// The writer: commands in order, grouped when they queue up. Writes queued together (several
/// files or batches arriving at once) share one transaction, and flushes queued together share
/// one sync, with the writes queued between them committed first (the sync covers them too);
/// the sync itself is the syncer's, so the writer goes on with the next writes meanwhile. Each
/// caller still gets its own answer.
fn writer_loop(
    tenant: &TenantId,
    mut connection: Connection,
    commands: &std::sync::mpsc::Receiver<Command>,
    syncer: Syncer,
) {
    let mut next = None;
    loop {
        let command = match next.take() {
            Some(command) => command,
            None => match commands.recv() {
                Ok(command) => command,
                Err(_) => {
                    // The syncer's connection closes first, so that the writer's is the last:
                    // closing it checkpoints the log and removes it, as before.
                    syncer.stop();
                    return;
                }
            },
        };
        match command {
            Command::EnsureTable(table, reply) => {
                let _ = reply.send(ensure_table(&mut connection, tenant, &table));
            }
            Command::Write(rows, reply) => {
                let mut writes = vec![(rows, reply)];
                next = take_queued(commands, |command| match command {
                    Command::Write(rows, reply) => {
                        writes.push((rows, reply));
                        None
                    }
                    other => Some(other),
                });
                let written = write_group(&mut connection, tenant, writes);
                syncer.committed(written);
            }
            Command::Flush(reply) => {
                let (mut flushes, mut writes) = (vec![reply], Vec::new());
                next = take_queued(commands, |command| match command {
                    Command::Flush(reply) => {
                        flushes.push(reply);
                        None
                    }
                    Command::Write(rows, reply) => {
                        writes.push((rows, reply));
                        None
                    }
                    other => Some(other),
                });
                let written = write_group(&mut connection, tenant, writes);
                syncer.committed(written);
                syncer.flush(flushes);
            }
        }
    }
}

/// Takes up to [`GROUP`] commands already queued, as long as `join` takes them (it gives back
/// the one it does not); returns that one, to be handled next.
fn take_queued(
    commands: &std::sync::mpsc::Receiver<Command>,
    mut join: impl FnMut(Command) -> Option<Command>,
) -> Option<Command> {
    for _ in 0..GROUP {
        let refused = join(commands.try_recv().ok()?);
        if refused.is_some() {
            return refused;
        }
    }
    None
}

/// Writes queued together in one transaction; if it fails, each again in its own, so that an
/// error is answered only to the write that caused it. Gives the rows back, to be released.
fn write_group(connection: &mut Connection, tenant: &TenantId, writes: Vec<(Rows, WriteReply)>) -> Vec<Rows> {
    let each_alone = |connection: &mut Connection, writes: Vec<(Rows, WriteReply)>| {
        writes
            .into_iter()
            .map(|(rows, reply)| {
                let _ = reply.send(write_rows(connection, tenant, &rows));
                rows
            })
            .collect()
    };
    if writes.len() <= 1 {
        return each_alone(connection, writes);
    }
    let together = (|| {
        let transaction = connection
            .transaction()
            .map_err(|e| sqlite_error(tenant, "writing rows", e))?;
        let written = writes
            .iter()
            .map(|(rows, _)| insert_rows(&transaction, tenant, rows))
            .collect::<Result<Vec<_>, _>>()?;
        transaction
            .commit()
            .map_err(|e| sqlite_error(tenant, "writing rows", e))?;
        Ok::<_, StoreError>(written)
    })();
    match together {
        Ok(written) => writes
            .into_iter()
            .zip(written)
            .map(|((rows, reply), written)| {
                let _ = reply.send(Ok(written));
                rows
            })
            .collect(),
        Err(_) => each_alone(connection, writes),
    }
}

fn ensure_table(
    connection: &mut Connection,
    tenant: &TenantId,
    table: &TableSchema,
) -> Result<TableChange, StoreError> {
    let failed = |e| sqlite_error(tenant, "creating or changing a table", e);
    let transaction = connection.transaction().map_err(failed)?;
    let existing = declared(&transaction, tenant, &table.name)?;
    let (change, stored) = table_change(tenant, existing.as_ref(), table)?;
    match &change {
        TableChange::Unchanged => return Ok(change),
        TableChange::Create => transaction.execute_batch(&create_table_sql(table)).map_err(failed)?,
        TableChange::AddColumns(added) => {
            for column in added {
                let add = format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    quoted(&table.name),
                    quoted(&column.name),
                    sqlite_type(column.column_type)
                );
                transaction.execute_batch(&add).map_err(failed)?;
            }
        }
    }
    let schema = serde_json::to_string(&stored).map_err(|e| internal(e.to_string()))?;
    transaction
        .execute(
            "INSERT OR REPLACE INTO mysimbdp_tables (name, schema) VALUES (?1, ?2)",
            params![table.name, schema],
        )
        .map_err(failed)?;
    transaction.commit().map_err(failed)?;
    if let TableChange::AddColumns(added) = &change {
        log::info!(
            "embedded: tenant={tenant} table={} added columns {}",
            table.name,
            added.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(",")
        );
    }
    Ok(change)
}

/// What declaring `table` does given the stored declaration, and the declaration after it.
fn table_change(
    tenant: &TenantId,
    existing: Option<&TableSchema>,
    table: &TableSchema,
) -> Result<(TableChange, TableSchema), StoreError> {
    let Some(existing) = existing else {
        return Ok((TableChange::Create, table.clone()));
    };
    let added = existing.evolve_to(table).map_err(|reason| {
        StoreError::new(
            StoreErrorKind::Schema,
            format!("tenant {tenant}: the stored table cannot take this declaration: {reason}"),
        )
    })?;
    if added.is_empty() {
        Ok((TableChange::Unchanged, existing.clone()))
    } else {
        let stored = existing.with_columns(&added);
        Ok((TableChange::AddColumns(added), stored))
    }
}

fn create_table_sql(table: &TableSchema) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                quoted(&c.name),
                sqlite_type(c.column_type),
                if c.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    format!(
        "CREATE TABLE {} ({}, PRIMARY KEY ({})) STRICT, WITHOUT ROWID",
        quoted(&table.name),
        columns.join(", "),
        key_names(table).join(", ")
    )
}

fn key_names(table: &TableSchema) -> Vec<String> {
    table
        .partition_key
        .iter()
        .chain(&table.clustering_key)
        .map(|k| quoted(k))
        .collect()
}

/// The declaration of a table, if it has one.
fn declared(connection: &Connection, tenant: &TenantId, name: &str) -> Result<Option<TableSchema>, StoreError> {
    let json: Option<String> = connection
        .prepare_cached("SELECT schema FROM mysimbdp_tables WHERE name = ?1")
        .and_then(|mut statement| statement.query_row([name], |r| r.get(0)).optional())
        .map_err(|e| sqlite_error(tenant, "reading a table's declaration", e))?;
    json.map(|json| {
        serde_json::from_str(&json).map_err(|e| internal(format!("table {name} of {tenant} has a corrupt schema: {e}")))
    })
    .transpose()
}

/// The settings of the writer connection. Rows are committed with `synchronous = NORMAL` (a
/// commit survives a crash of the process); a flush is the durability barrier: the syncer syncs
/// the log, with every row committed before it, and the batch manager flushes before it writes a
/// file's report and removes the staging file. The syncer checkpoints the log in the background;
/// the writer checkpoints it itself only once the log holds 4,096 pages (`wal_autocheckpoint`:
/// the syncer fell behind, or the log could not start over since), which bounds it at about
/// 16 MiB.
pub const WRITER_PRAGMAS: &str = "PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    PRAGMA busy_timeout = 10000;
    PRAGMA cache_size = -65536;
    PRAGMA temp_store = MEMORY;
    PRAGMA wal_autocheckpoint = 4096;";

/// How often, at most, the syncer checkpoints the log while rows are being committed.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

type FlushReply = oneshot::Sender<Result<(), StoreError>>;

/// Groups of written rows the syncer may hold to release, at most; beyond, the writer releases
/// them itself.
const RELEASE_QUEUE: usize = 32;

enum SyncRequest {
    /// Sync the log: every transaction committed before this was sent is durable once answered.
    Flush(Vec<FlushReply>),
    /// Rows were committed since the last checkpoint.
    Committed,
    /// Rows written: their memory is freed here, off the writer's thread (a few percent of its
    /// time, the values being many small allocations made on another thread).
    Release(Vec<Rows>),
}

/// The writer's handle on its syncer thread.
struct Syncer {
    requests: std::sync::mpsc::Sender<SyncRequest>,
    shared: Arc<SyncShared>,
    thread: std::thread::JoinHandle<()>,
}

/// The log of the database at `database`.
fn wal_path(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push("-wal");
    PathBuf::from(path)
}

impl Syncer {
    /// Opens the log (`<database>-wal`, there since the writer set WAL mode) and a connection for
    /// checkpoints, and starts the syncer's thread.
    fn start(tenant: &TenantId, database: &Path) -> Result<Syncer, StoreError> {
        let log_path = wal_path(database);
        let log = std::fs::File::open(&log_path).map_err(|e| {
            internal(format!(
                "tenant {tenant}: cannot open its log {}: {e}",
                log_path.display()
            ))
        })?;
        let file = std::fs::File::open(database)
            .map_err(|e| internal(format!("tenant {tenant}: cannot open {}: {e}", database.display())))?;
        let checkpointer = Connection::open_with_flags(
            database,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.execute_batch("PRAGMA synchronous = NORMAL").map(|()| c))
        .map_err(|e| sqlite_error(tenant, "opening its checkpoint connection", e))?;
        let (requests, received) = std::sync::mpsc::channel();
        let shared = Arc::new(SyncShared {
            tenant: tenant.clone(),
            dirty: std::sync::atomic::AtomicBool::new(false),
            releasing: std::sync::atomic::AtomicUsize::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("sqlsync-{tenant}"))
            .spawn(move || sync_loop(&thread_shared, &log, &file, checkpointer, &received))
            .map_err(|e| internal(format!("cannot start the syncer of {tenant}: {e}")))?;
        Ok(Syncer {
            requests,
            shared,
            thread,
        })
    }

    /// The writer committed `rows` (or tried to: an error was answered).
    fn committed(&self, rows: Vec<Rows>) {
        use std::sync::atomic::Ordering;
        if !self.shared.dirty.swap(true, Ordering::AcqRel) {
            let _ = self.requests.send(SyncRequest::Committed);
        }
        if rows.is_empty() {
            return;
        }
        if self.shared.releasing.fetch_add(1, Ordering::AcqRel) < RELEASE_QUEUE {
            let _ = self.requests.send(SyncRequest::Release(rows));
        } else {
            self.shared.releasing.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Answers `replies` once everything committed so far is durable.
    fn flush(&self, replies: Vec<FlushReply>) {
        if let Err(std::sync::mpsc::SendError(SyncRequest::Flush(replies))) =
            self.requests.send(SyncRequest::Flush(replies))
        {
            for reply in replies {
                let _ = reply.send(Err(internal("the log's syncer stopped".to_string())));
            }
        }
    }

    /// Ends the syncer's thread and waits for it.
    fn stop(self) {
        drop(self.requests);
        let _ = self.thread.join();
    }
}

/// What the writer and its syncer share.
struct SyncShared {
    tenant: TenantId,
    /// Set by the writer when it commits, cleared by the syncer when it checkpoints: the writer
    /// sends [`SyncRequest::Committed`] only when it sets it, once per checkpoint at most.
    dirty: std::sync::atomic::AtomicBool,
    /// [`SyncRequest::Release`]s sent and not yet handled.
    releasing: std::sync::atomic::AtomicUsize,
}

impl SyncShared {
    fn release(&self, rows: Vec<Rows>) {
        drop(rows);
        self.releasing.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The syncer: flushes and checkpoints, off the writer's thread.
///
/// A flush is an `fdatasync` of the log file. Every transaction the writer committed before it
/// asked has its pages in the log by then (written, not yet synced, as `synchronous = NORMAL`
/// commits do), so the sync makes them durable, as a commit with `synchronous = FULL` would have;
/// pages that left the log did so in a checkpoint, which syncs the database file before the log
/// starts over. Flushes that queue up while one syncs share the next sync; a failed sync fails
/// every flush it covered.
///
/// While rows are committed, a `PASSIVE` checkpoint runs at most every [`CHECKPOINT_EVERY`]: it
/// copies the log's pages into the database file beside the writer, never blocking it, so that
/// the writer's own checkpoint (see [`WRITER_PRAGMAS`]) finds little left to copy.
fn sync_loop(
    shared: &SyncShared,
    log: &std::fs::File,
    database: &std::fs::File,
    checkpointer: Connection,
    requests: &std::sync::mpsc::Receiver<SyncRequest>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let tenant = &shared.tenant;
    let mut last_checkpoint = std::time::Instant::now();
    let mut due = false;
    loop {
        let request = if due {
            match requests.recv_timeout(CHECKPOINT_EVERY.saturating_sub(last_checkpoint.elapsed())) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match requests.recv() {
                Ok(request) => Some(request),
                Err(_) => return,
            }
        };
        match request {
            Some(SyncRequest::Flush(mut replies)) => {
                while let Ok(request) = requests.try_recv() {
                    match request {
                        SyncRequest::Flush(more) => replies.extend(more),
                        SyncRequest::Committed => due = true,
                        SyncRequest::Release(rows) => shared.release(rows),
                    }
                }
                let synced = log
                    .sync_data()
                    .map_err(|e| internal(format!("tenant {tenant}: syncing its log failed: {e}")));
                for reply in replies {
                    let _ = reply.send(synced.clone());
                }
            }
            Some(SyncRequest::Committed) => due = true,
            Some(SyncRequest::Release(rows)) => shared.release(rows),
            None => {}
        }
        if due && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            // Cleared before the checkpoint: a commit during it asks for the next one.
            shared.dirty.store(false, std::sync::atomic::Ordering::Release);
            due = false;
            last_checkpoint = std::time::Instant::now();
            if let Err(e) = checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                log::warn!("embedded store: tenant={tenant}: a background checkpoint failed: {e}");
            }
            // A checkpoint that has not caught up with the writer leaves the pages it copied
            // unsynced; they are written out here, so that the checkpoint that does catch up
            // (maybe the writer's own) finds little to sync. Durability never rests on this.
            let _ = database.sync_data();
        }
    }
}

/// The statement that upserts a row of `table`: a row with every column of the stored table
/// replaces the stored one; a row with fewer (a version that leaves out columns) sets only its
/// own, as an INSERT in Cassandra does.
pub fn upsert_sql(table: &TableSchema, stored: &TableSchema) -> String {
    let names: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect();
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let insert = format!(
        "INTO {} ({}) VALUES ({})",
        quoted(&table.name),
        names.join(", "),
        placeholders.join(", ")
    );
    if stored.same_columns(table) {
        return format!("INSERT OR REPLACE {insert}");
    }
    let keys = key_names(table);
    let updates: Vec<String> = names
        .iter()
        .filter(|n| !keys.contains(n))
        .map(|n| format!("{n} = excluded.{n}"))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!("INSERT {insert} ON CONFLICT ({}) DO {action}", keys.join(", "))
}

/// One write in its own transaction.
fn write_rows(connection: &mut Connection, tenant: &TenantId, rows: &Rows) -> Result<Written, StoreError> {
    let transaction = connection
        .transaction()
        .map_err(|e| sqlite_error(tenant, "writing rows", e))?;
    let written = insert_rows(&transaction, tenant, rows)?;
    transaction
        .commit()
        .map_err(|e| sqlite_error(tenant, "writing rows", e))?;
    Ok(written)
}

/// Upserts `rows` inside the caller's transaction.
fn insert_rows(connection: &Connection, tenant: &TenantId, rows: &Rows) -> Result<Written, StoreError> {
    let table = &rows.table;
    let stored = check_declared(connection, tenant, table)?;
    let sql = upsert_sql(table, &stored);
    let mut statement = connection
        .prepare_cached(&sql)
        .map_err(|e| sqlite_error(tenant, "writing rows", e))?;
    for row in rows.iter() {
        statement
            .execute(rusqlite::params_from_iter(row.iter()))
            .map_err(|e| sqlite_error(tenant, "writing rows", e))?;
    }
    Ok(Written {
        rows: rows.len() as u64,
        bytes: rows.logical_bytes(),
    })
}

/// Rows go only into a declared table (NotFound otherwise) that can take them as it is
/// (Schema). Returns the stored declaration.
fn check_declared(connection: &Connection, tenant: &TenantId, table: &TableSchema) -> Result<TableSchema, StoreError> {
    let Some(stored) = declared(connection, tenant, &table.name)? else {
        return Err(find_table(&[], tenant, &table.name).unwrap_err());
    };
    stored.accepts(table).map_err(|reason| {
        StoreError::new(
            StoreErrorKind::Schema,
            format!("tenant {tenant}: rows for table {} do not fit it: {reason}", table.name),
        )
    })?;
    Ok(stored)
}

fn read_page(
    connection: &Connection,
    tenant: &TenantId,
    table: &TableSchema,
    page: Option<&str>,
    limit: usize,
) -> Result<Page, StoreError> {
    let key_indices = table.primary_key_indices();
    let key_names: Vec<String> = key_indices.iter().map(|&i| quoted(&table.columns[i].name)).collect();
    let names: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect();
    let after: Option<Vec<Value>> = page
        .map(|token| decode_page_token(token, table, &key_indices))
        .transpose()?;
    let placeholders: Vec<String> = (1..=key_names.len()).map(|i| format!("?{i}")).collect();
    let condition = match &after {
        Some(_) => format!("WHERE ({}) > ({})", key_names.join(", "), placeholders.join(", ")),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM {} {condition} ORDER BY {} LIMIT {}",
        names.join(", "),
        quoted(&table.name),
        key_names.join(", "),
        limit + 1
    );
    let mut statement = connection
        .prepare(&sql)
        .map_err(|e| sqlite_error(tenant, "reading rows", e))?;
    let bound: Vec<&Value> = after.iter().flatten().collect();
    let mut rows: Vec<Vec<Value>> = statement
        .query_map(rusqlite::params_from_iter(bound), |r| {
            table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| read_value(r.get_ref(i)?, c.column_type))
                .collect()
        })
        .map_err(|e| sqlite_error(tenant, "reading rows", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| sqlite_error(tenant, "reading rows", e))?;
    let next_page = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|last| encode_page_token(&key_indices.iter().map(|&i| last[i].clone()).collect::<Vec<_>>()))
    } else {
        None
    };
    Ok(Page { rows, next_page })
}

/// A page token is the last row's key as JSON, in hex (safe in a URL).
fn encode_page_token(key: &[Value]) -> String {
    let json = serde_json::Value::Array(key.iter().map(token_json).collect()).to_string();
    json.bytes().map(|b| format!("{b:02x}")).collect()
}

fn token_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Text(s) => s.clone().into(),
        Value::BigInt(n) | Value::Timestamp(n) => (*n).into(),
        Value::Int(n) => (*n).into(),
        Value::Double(n) => serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into),
        Value::Boolean(b) => (*b).into(),
        Value::Blob(b) => b.iter().map(|&x| serde_json::Value::from(x)).collect(),
    }
}

fn decode_page_token(token: &str, table: &TableSchema, key_indices: &[usize]) -> Result<Vec<Value>, StoreError> {
    let bad = || {
        StoreError::new(
            StoreErrorKind::Invalid,
            format!("page token {token:?} is not one this API returned"),
        )
    };
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let parts: Vec<serde_json::Value> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if parts.len() != key_indices.len() {
        return Err(bad());
    }
    key_indices
        .iter()
        .zip(parts)
        .map(|(&i, part)| {
            let value = match table.columns[i].column_type {
                ColumnType::Text => part.as_str().map(|s| Value::Text(s.to_string())),
                ColumnType::BigInt => part.as_i64().map(Value::BigInt),
                ColumnType::Int => part.as_i64().and_then(|n| i32::try_from(n).ok()).map(Value::Int),
                ColumnType::Double => part.as_f64().map(Value::Double),
                ColumnType::Boolean => part.as_bool().map(Value::Boolean),
                ColumnType::Timestamp => part.as_i64().map(Value::Timestamp),
                ColumnType::Blob => part
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|x| x.as_u64().map(|n| n as u8))
                            .collect::<Option<Vec<u8>>>()
                    })
                    .map(Value::Blob),
            };
            value.ok_or_else(bad)
        })
        .collect()
}

fn load_tables(connection: &Connection) -> rusqlite::Result<Vec<TableSchema>> {
    let mut statement = connection.prepare("SELECT schema FROM mysimbdp_tables ORDER BY name")?;
    let schemas = statement.query_map([], |r| r.get::<_, String>(0))?;
    let mut tables = Vec::new();
    for schema in schemas {
        if let Ok(table) = serde_json::from_str(&schema?) {
            tables.push(table);
        }
    }
    Ok(tables)
}

/// A validated identifier (`[a-z][a-z0-9_]*`) quoted, so that names like `order` work.
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

fn sqlite_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Text => "TEXT",
        ColumnType::BigInt | ColumnType::Int | ColumnType::Boolean | ColumnType::Timestamp => "INTEGER",
        // Not REAL: SQLite stores an integral REAL as an integer, which turns -0.0 into 0.0.
        // ANY keeps every double as written (NaN, which SQLite cannot hold as a REAL, as its
        // 8 bytes: see `ToSql for Value`).
        ColumnType::Double => "ANY",
        ColumnType::Blob => "BLOB",
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::BigInt(n) | Value::Timestamp(n) => ToSqlOutput::Owned((*n).into()),
            Value::Int(n) => ToSqlOutput::Owned(i64::from(*n).into()),
            Value::Double(n) if n.is_nan() => ToSqlOutput::Owned(n.to_bits().to_be_bytes().to_vec().into()),
            Value::Double(n) => ToSqlOutput::Owned((*n).into()),
            Value::Boolean(b) => ToSqlOutput::Owned(i64::from(*b).into()),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn read_value(v: ValueRef<'_>, column_type: ColumnType) -> rusqlite::Result<Value> {
    let wrong = || rusqlite::Error::InvalidColumnType(0, column_type.name().into(), v.data_type());
    Ok(match (v, column_type) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Text(t), ColumnType::Text) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        (ValueRef::Integer(n), ColumnType::BigInt) => Value::BigInt(n),
        (ValueRef::Integer(n), ColumnType::Int) => Value::Int(i32::try_from(n).map_err(|_| wrong())?),
        (ValueRef::Integer(n), ColumnType::Timestamp) => Value::Timestamp(n),
        (ValueRef::Integer(n), ColumnType::Boolean) => Value::Boolean(n != 0),
        (ValueRef::Real(n), ColumnType::Double) => Value::Double(n),
        (ValueRef::Integer(n), ColumnType::Double) => Value::Double(n as f64),
        (ValueRef::Blob(b), ColumnType::Double) => {
            Value::Double(f64::from_bits(u64::from_be_bytes(b.try_into().map_err(|_| wrong())?)))
        }
        (ValueRef::Blob(b), ColumnType::Blob) => Value::Blob(b.to_vec()),
        _ => return Err(wrong()),
    })
}

fn sqlite_error(tenant: &TenantId, what: &str, error: rusqlite::Error) -> StoreError {
    let kind = match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => StoreErrorKind::Timeout,
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::CannotOpen) => StoreErrorKind::Unavailable,
        Some(rusqlite::ErrorCode::ConstraintViolation) => StoreErrorKind::Schema,
        _ => StoreErrorKind::Internal,
    };
    StoreError::new(kind, format!("embedded store, tenant {tenant}: {what} failed: {error}"))
}

fn internal(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coredms::Column;
    use crate::tenants::ReplicationClass;

    fn table() -> Arc<TableSchema> {
        let column = |name: &str, column_type| Column {
            name: name.into(),
            column_type,
            nullable: false,
        };
        Arc::new(TableSchema {
            name: "readings".into(),
            columns: vec![column("id", ColumnType::BigInt), column("payload", ColumnType::Text)],
            partition_key: vec!["id".into()],
            clustering_key: vec![],
        })
    }

    fn rows(table: &Arc<TableSchema>, from: i64, count: i64) -> Rows {
        let mut rows = Rows::new(Arc::clone(table));
        for id in from..from + count {
            rows.values.push(Value::BigInt(id));
            rows.values.push(Value::Text(format!("{id:0>200}")));
        }
        rows
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// The syncer copies the log into the database file while the writer goes on, long before
    /// the writer's own checkpoint would; flushes answer once everything before them is synced,
    /// and every row reads back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_syncer_checkpoints_in_the_background_and_flushes_answer() {
        let dir = tempfile::tempdir().unwrap();
        let dms = EmbeddedDms::new(dir.path(), Arc::new(WriteLimiter::new(8, 8))).unwrap();
        let storage = TenantStorage {
            tenant: "synced".parse().unwrap(),
            replication_class: ReplicationClass::SimpleStrategy,
            replication_factor: 1,
        };
        let store = dms.open_tenant(&storage).await.unwrap();
        let table = table();
        store.ensure_table(&table).await.unwrap();
        let database = dir.path().join("synced.sqlite");
        let before = file_len(&database);
        // About 1,500 pages of log: under the writer's own checkpoint (4,096 pages).
        for chunk in 0..10 {
            store.write(rows(&table, chunk * 2_000, 2_000)).await.unwrap();
            store.flush().await.unwrap();
        }
        assert_eq!(store.count("readings").await.unwrap(), 20_000);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while file_len(&database) < before + 2_000 * 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes (was {before}): the log was never checkpointed",
                file_len(&database)
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let log = wal_path(&database);
        assert!(
            file_len(&log) < 4_096 * 4_096,
            "the log grew to {} bytes",
            file_len(&log)
        );
        let page = store.read_page("readings", None, 10_000).await.unwrap();
        assert_eq!(page.rows.len(), 10_000);
    }
}
