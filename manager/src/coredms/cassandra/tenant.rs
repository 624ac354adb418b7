//! One tenant's keyspace: its declared tables, and everything a [`TenantStore`] does in them.
//! Every table name from outside is looked up among the tenant's declared tables before it
//! goes near a statement, and every statement names this tenant's keyspace only.

mod count;
mod read;
mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;

use super::Shared;
use super::retry::{self, Context};
use super::values::{decode_page_token, qualified};
use crate::coredms::{Page, Rows, StoreError, StoreErrorKind, TableSchema, TenantStore, Written, find_table};
use crate::tenants::TenantId;

/// The most rows one page holds.
const MAX_PAGE_ROWS: usize = 10_000;

/// One tenant's keyspace.
pub(super) struct CassandraTenant {
    pub(super) shared: Arc<Shared>,
    pub(super) tenant: TenantId,
    keyspace: String,
    statements: KeyspaceStatements,
    /// Declared tables with their prepared statements, filled on first use.
    tables: Mutex<HashMap<String, Arc<TableHandle>>>,
}

/// Prepared statements on the keyspace's own tables.
struct KeyspaceStatements {
    list_tables: PreparedStatement,
    claim_table: PreparedStatement,
    record_usage: PreparedStatement,
    read_usage: PreparedStatement,
}

/// A declared table and its prepared statements.
struct TableHandle {
    schema: Arc<TableSchema>,
    insert: PreparedStatement,
    select: PreparedStatement,
    count: PreparedStatement,
}

impl CassandraTenant {
    /// Creates the keyspace's own tables if missing and prepares the statements on them.
    pub(super) async fn open(shared: Arc<Shared>, tenant: TenantId, keyspace: String) -> Result<Self, StoreError> {
        let context = Context::new(&tenant, "preparing its keyspace").on(&keyspace);
        let tables = qualified(&keyspace, "mysimbdp_tables");
        let usage = qualified(&keyspace, "mysimbdp_usage");
        {
            let _schema = shared.schema_lock.lock().await;
            for statement in [
                format!("CREATE TABLE IF NOT EXISTS {tables} (\"name\" text PRIMARY KEY, \"schema\" text)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {usage} (\"source\" text PRIMARY KEY, \"rows\" bigint, \"bytes\" bigint)"
                ),
            ] {
                retry::schema_change(&shared, &context, &statement).await?;
            }
        }
        let prepare = |statement: String| prepare(&shared, &context, statement);
        let statements = KeyspaceStatements {
            list_tables: prepare(format!("SELECT \"name\", \"schema\" FROM {tables}")).await?,
            claim_table: prepare(format!(
                "INSERT INTO {tables} (\"name\", \"schema\") VALUES (?, ?) IF NOT EXISTS"
            ))
            .await?,
            record_usage: prepare(format!(
                "INSERT INTO {usage} (\"source\", \"rows\", \"bytes\") VALUES (?, ?, ?)"
            ))
            .await?,
            read_usage: prepare(format!("SELECT \"bytes\" FROM {usage}")).await?,
        };
        Ok(CassandraTenant {
            shared,
            tenant,
            keyspace,
            statements,
            tables: Mutex::default(),
        })
    }

    /// The handle of a declared table: from the cache, else looked up among the declared tables
    /// (NotFound if it is not one) and prepared.
    async fn table(&self, name: &str) -> Result<Arc<TableHandle>, StoreError> {
        if let Some(handle) = self.cached(name) {
            return Ok(handle);
        }
        let tables = self.declared_tables().await?;
        let schema = find_table(&tables, &self.tenant, name)?;
        // Declared is not yet created: its creator claims the name first (schema.rs).
        self.finish_creation(schema).await?;
        self.prepare_table(schema).await
    }

    fn cached(&self, name: &str) -> Option<Arc<TableHandle>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
}

#[async_trait]
impl TenantStore for CassandraTenant {
    fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    async fn ensure_table(&self, table: &TableSchema) -> Result<(), StoreError> {
        if let Some(handle) = self.cached(&table.name) {
            return same_schema(&self.tenant, &handle.schema, table);
        }
        self.claim_and_create(table).await?;
        self.prepare_table(table).await.map(|_| ())
    }

    async fn write(&self, rows: Rows) -> Result<Written, StoreError> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        let handle = self.table(&rows.table.name).await?;
        same_schema(&self.tenant, &handle.schema, &rows.table)?;
        self.write_rows(&rows, &handle.insert).await
    }

    async fn tables(&self) -> Result<Vec<TableSchema>, StoreError> {
        self.declared_tables().await
    }

    async fn read_page(&self, table: &str, page: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let handle = self.table(table).await?;
        let paging_state = page
            .map(|token| decode_page_token(&self.tenant, &handle.schema, token))
            .transpose()?;
        self.page(&handle, paging_state, limit.clamp(1, MAX_PAGE_ROWS)).await
    }

    async fn count(&self, table: &str) -> Result<u64, StoreError> {
        let handle = self.table(table).await?;
        self.count_rows(&handle).await
    }

    async fn record_usage(&self, source: &str, rows: u64, bytes: u64) -> Result<(), StoreError> {
        let context = Context::new(&self.tenant, "recording usage").on(source);
        let as_bigint =
            |n: u64| i64::try_from(n).map_err(|_| context.error(StoreErrorKind::Invalid, format!("{n} is too large")));
        let values = (source, as_bigint(rows)?, as_bigint(bytes)?);
        let statement = &self.statements.record_usage;
        retry::with_retries(&self.shared, &context, || {
            self.shared.session.execute_unpaged(statement, &values)
        })
        .await
        .map(|_| ())
    }

    async fn stored_bytes(&self) -> Result<u64, StoreError> {
        let context = Context::new(&self.tenant, "reading usage").on(&self.keyspace);
        let mut total: u64 = 0;
        self.scan(&self.statements.read_usage, &context, |row| {
            let bytes = match row.columns.first() {
                Some(Some(scylla::value::CqlValue::BigInt(n))) => *n,
                _ => 0,
            };
            total = total.saturating_add(u64::try_from(bytes).unwrap_or(0));
            Ok(())
        })
        .await?;
        Ok(total)
    }
}

/// A Schema error if `wanted` is not the declared schema.
fn same_schema(tenant: &TenantId, declared: &TableSchema, wanted: &TableSchema) -> Result<(), StoreError> {
    if declared == wanted {
        return Ok(());
    }
    Err(StoreError::new(
        StoreErrorKind::Schema,
        format!(
            "tenant {tenant} already has a table {} with another schema: {}",
            declared.name,
            declared.difference(wanted)
        ),
    ))
}

async fn prepare(shared: &Shared, context: &Context, statement: String) -> Result<PreparedStatement, StoreError> {
    retry::with_retries(shared, context, || async {
        shared.session.prepare(statement.as_str()).await.map_err(Into::into)
    })
    .await
}
