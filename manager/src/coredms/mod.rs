//! coredms: where tenants' rows are stored. One interface ([`CoreDms`] opens a tenant,
//! [`TenantStore`] works inside it), two backends:
//! - [`embedded`]: one SQLite database per tenant, the default, nothing to install;
//! - [`cassandra`]: Apache Cassandra / ScyllaDB through the `scylla` driver, one keyspace per
//!   tenant with the tenant's replication.
//!
//! Both run the same conformance suite (`tests/coredms_conformance.rs`). Writes are upserts
//! keyed by the table's primary key, so a retried or repeated write never duplicates a row.
//! A [`TenantStore`] is bound to one tenant: it has no way to name another tenant's database
//! or keyspace. coredms knows nothing about HTTP, plugins or files.

pub mod cassandra;
pub mod embedded;
mod limiter;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::schema::{Column, ColumnType, Rows, TableChange, TableSchema, Value};
pub use limiter::WriteLimiter;

use crate::tenants::{ReplicationClass, TenantId};

/// What a caller can do about a storage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorKind {
    /// The backend cannot be reached or has too few replicas: retry later.
    Unavailable,
    /// The backend did not answer in time: retry later.
    Timeout,
    /// The table exists with another schema, or the request does not fit the schema.
    Schema,
    /// No such table.
    NotFound,
    /// A bad argument (a malformed page token, an invalid name).
    Invalid,
    /// Anything else.
    Internal,
}

/// A storage error with its kind, so callers choose retry or give-up without parsing text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// What failed, on what, and why.
    pub message: String,
}

impl StoreError {
    /// An error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Unavailable | StoreErrorKind::Timeout)
    }

    /// The delay a client should wait before retrying, for transient errors.
    pub fn retry_after(&self) -> Option<Duration> {
        self.is_transient().then_some(Duration::from_secs(5))
    }
}

/// What coredms needs to know about a tenant to open its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStorage {
    /// The tenant.
    pub tenant: TenantId,
    /// Cassandra replication class.
    pub replication_class: ReplicationClass,
    /// Cassandra replication factor.
    pub replication_factor: u32,
}

impl TenantStorage {
    /// The storage of `tenant` as its entry in `customer_information.json` describes it (the one
    /// place a `TenantStorage` is made from a tenant's configuration).
    pub fn of(tenant: &TenantId, config: &crate::tenants::Tenant) -> Self {
        TenantStorage {
            tenant: tenant.clone(),
            replication_class: config.cassandra_class,
            replication_factor: config.replication_factor,
        }
    }
}

/// The result of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows written.
    pub rows: u64,
    /// Their accounting bytes ([`Rows::logical_bytes`]).
    pub bytes: u64,
}

/// One page of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Rows, each in the table's column order.
    pub rows: Vec<Vec<Value>>,
    /// The token of the next page, if there is one.
    pub next_page: Option<String>,
}

/// A storage backend.
#[async_trait]
pub trait CoreDms: Send + Sync {
    /// `embedded` or `cassandra`.
    fn backend(&self) -> &'static str;

    /// Opens (creating if needed) the tenant's database or keyspace.
    async fn open_tenant(&self, tenant: &TenantStorage) -> Result<Arc<dyn TenantStore>, StoreError>;

    /// Opens the tenant's database or keyspace if it exists; creates nothing.
    async fn open_existing(&self, tenant: &TenantStorage) -> Result<Option<Arc<dyn TenantStore>>, StoreError>;
}

/// One tenant's storage.
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// The tenant it is bound to.
    fn tenant(&self) -> &TenantId;

    /// Creates the table, or evolves the existing one so that rows declared as `table` can be
    /// stored in it ([`TableSchema::evolve_to`]: nullable columns are added); a change that
    /// cannot be applied is a [`StoreErrorKind::Schema`] error that says why. Concurrent callers
    /// agree on one declaration.
    async fn ensure_table(&self, table: &TableSchema) -> Result<TableChange, StoreError>;

    /// What [`ensure_table`](Self::ensure_table) would do, without doing it.
    async fn check_table(&self, table: &TableSchema) -> Result<TableChange, StoreError>;

    /// Whether any row of `table` has a value (not null) in `column`.
    async fn column_has_data(&self, table: &str, column: &str) -> Result<bool, StoreError>;

    /// Upserts rows (checked against their table by the caller) into their table.
    async fn write(&self, rows: Rows) -> Result<Written, StoreError>;

    /// The tenant's tables.
    async fn tables(&self) -> Result<Vec<TableSchema>, StoreError>;

    /// A page of a table's rows; `page` is a token from a previous page.
    async fn read_page(&self, table: &str, page: Option<&str>, limit: usize) -> Result<Page, StoreError>;

    /// The exact number of rows in a table.
    async fn count(&self, table: &str) -> Result<u64, StoreError>;

    /// The durability barrier: when it returns, every row this store acknowledged before the
    /// call survives a crash of the process (embedded: a `synchronous = FULL` commit, which
    /// syncs the log holding them; Cassandra: each write was acknowledged at the configured
    /// consistency, so there is nothing left to do). A report or an offset commit comes after
    /// it, never before.
    async fn flush(&self) -> Result<(), StoreError>;

    /// What the tenant's data occupies now, in bytes, measured by the backend. Re-writing rows
    /// that exist changes it by little (within a small tolerance, below), so a re-ingest does
    /// not count twice:
    /// - embedded: the pages of the tenant's database in use (its file without its free pages,
    ///   the log included, without the pages of the platform's own records), i.e. rows, keys
    ///   and indexes as SQLite lays them out;
    /// - Cassandra: for each table, its exact row count times the mean accounting bytes
    ///   ([`Value::logical_bytes`]) of a sample of its rows (up to 1,024, spread over the token
    ///   ring): the payload, without Cassandra's per-cell overhead, compression or replicas.
    ///
    /// Reading a whole table's row count is not free on Cassandra; callers measure after
    /// changes, not per request (the usage ledger does).
    async fn stored_bytes(&self) -> Result<u64, StoreError>;
}

/// Finds a table by name among `tables`, or a [`StoreErrorKind::NotFound`] error.
pub(crate) fn find_table<'t>(
    tables: &'t [TableSchema],
    tenant: &TenantId,
    name: &str,
) -> Result<&'t TableSchema, StoreError> {
    tables.iter().find(|t| t.name == name).ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::NotFound,
            format!("tenant {tenant} has no table {name:?}"),
        )
    })
}

/// Checks a declaration again ([`TableSchema::validate`]): tables normally arrive through a
/// checked plugin manifest, but a backend builds statements from these names.
pub(crate) fn check_declaration(tenant: &TenantId, table: &TableSchema) -> Result<(), StoreError> {
    table.validate().map_err(|e| {
        StoreError::new(
            StoreErrorKind::Invalid,
            format!("tenant {tenant}: invalid table declaration: {e}"),
        )
    })
}
