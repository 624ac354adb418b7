//! One tenant's keyspace: its declared tables, and everything a [`TenantStore`] does in them.
//! Every table name from outside is looked up among the tenant's declared tables before it
//! goes near a statement, and every statement names this tenant's keyspace only.

mod count;
mod read;
mod schema;
mod size;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use scylla::statement::prepared::PreparedStatement;

use super::Shared;
use super::retry::{self, Context};
use super::values::{decode_page_token, qualified};
use crate::coredms::{
    Page, Rows, StoreError, StoreErrorKind, TableChange, TableSchema, TenantStore, Written, check_declaration,
    find_table,
};
use crate::tenants::TenantId;
use schema::insert_statement;

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
    /// Replaces a declaration, if it is still the one read (a lightweight transaction).
    update_table: PreparedStatement,
}

/// A declared table and its prepared statements.
struct TableHandle {
    schema: Arc<TableSchema>,
    insert: PreparedStatement,
    select: PreparedStatement,
    count: PreparedStatement,
    /// A few rows from a token on: the sample behind the size of a table.
    sample: PreparedStatement,
    /// INSERTs of fewer columns than the table's, by column list.
    inserts: Mutex<HashMap<Vec<String>, PreparedStatement>>,
}

impl CassandraTenant {
    /// Creates the keyspace's own tables if missing and prepares the statements on them.
    pub(super) async fn open(shared: Arc<Shared>, tenant: TenantId, keyspace: String) -> Result<Self, StoreError> {
        let context = Context::new(&tenant, "preparing its keyspace").on(&keyspace);
        let tables = qualified(&keyspace, "mysimbdp_tables");
        {
            let _schema = shared.schema_lock.lock().await;
            let statement = format!("CREATE TABLE IF NOT EXISTS {tables} (\"name\" text PRIMARY KEY, \"schema\" text)");
            retry::schema_change(&shared, &context, &statement).await?;
        }
        let prepare = |statement: String| prepare(&shared, &context, statement);
        let statements = KeyspaceStatements {
            list_tables: prepare(format!("SELECT \"name\", \"schema\" FROM {tables}")).await?,
            claim_table: prepare(format!(
                "INSERT INTO {tables} (\"name\", \"schema\") VALUES (?, ?) IF NOT EXISTS"
            ))
            .await?,
            update_table: prepare(format!(
                "UPDATE {tables} SET \"schema\" = ? WHERE \"name\" = ? IF \"schema\" = ?"
            ))
            .await?,
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

    /// The handle of a declared table, read and prepared again.
    async fn refresh(&self, name: &str) -> Result<Arc<TableHandle>, StoreError> {
        let tables = self.declared_tables().await?;
        let schema = find_table(&tables, &self.tenant, name)?;
        self.prepare_table(schema).await
    }

    /// The INSERT of the columns `rows` declares: the table's own when they are its columns in
    /// its order, else one prepared for them (a version that leaves out columns).
    async fn insert_for(&self, handle: &TableHandle, rows: &TableSchema) -> Result<PreparedStatement, StoreError> {
        if handle.schema.columns == rows.columns {
            return Ok(handle.insert.clone());
        }
        let names: Vec<String> = rows.columns.iter().map(|c| c.name.clone()).collect();
        if let Some(insert) = handle.inserts.lock().unwrap_or_else(|e| e.into_inner()).get(&names) {
            return Ok(insert.clone());
        }
        let context = Context::new(&self.tenant, "preparing statements").on(&rows.name);
        let mut insert = prepare(&self.shared, &context, insert_statement(&self.keyspace, rows)).await?;
        insert.set_is_idempotent(true);
        handle
            .inserts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(names, insert.clone());
        Ok(insert)
    }
}

#[async_trait]
impl TenantStore for CassandraTenant {
    fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    async fn ensure_table(&self, table: &TableSchema) -> Result<TableChange, StoreError> {
        if let Some(handle) = self.cached(&table.name)
            && handle.schema.accepts(table).is_ok()
        {
            return Ok(TableChange::Unchanged);
        }
        let (change, stored) = self.create_or_evolve(table).await?;
        self.prepare_table(&stored).await?;
        Ok(change)
    }

    async fn check_table(&self, table: &TableSchema) -> Result<TableChange, StoreError> {
        check_declaration(&self.tenant, table)?;
        let tables = self.declared_tables().await?;
        let Some(stored) = tables.iter().find(|t| t.name == table.name) else {
            return Ok(TableChange::Create);
        };
        match stored.evolve_to(table) {
            Ok(added) if added.is_empty() => Ok(TableChange::Unchanged),
            Ok(added) => Ok(TableChange::AddColumns(added)),
            Err(reason) => Err(cannot_take(&self.tenant, &reason)),
        }
    }

    async fn column_has_data(&self, table: &str, column: &str) -> Result<bool, StoreError> {
        let handle = self.table(table).await?;
        self.any_value(&handle, column).await
    }

    async fn write(&self, rows: Rows) -> Result<Written, StoreError> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        let mut handle = self.table(&rows.table.name).await?;
        if handle.schema.accepts(&rows.table).is_err() {
            // The table may have been evolved elsewhere since it was prepared here.
            handle = self.refresh(&rows.table.name).await?;
        }
        handle.schema.accepts(&rows.table).map_err(|reason| {
            StoreError::new(
                StoreErrorKind::Schema,
                format!("tenant {}: rows do not fit their table: {reason}", self.tenant),
            )
        })?;
        let insert = self.insert_for(&handle, &rows.table).await?;
        self.write_rows(&rows, &insert).await
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

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write returned only once acknowledged at the configured consistency.
        Ok(())
    }

    async fn stored_bytes(&self) -> Result<u64, StoreError> {
        self.measure_size().await
    }
}

/// The Schema error of a declaration the stored table cannot take.
fn cannot_take(tenant: &TenantId, reason: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Schema,
        format!("tenant {tenant}: the stored table cannot take this declaration: {reason}"),
    )
}

async fn prepare(shared: &Shared, context: &Context, statement: String) -> Result<PreparedStatement, StoreError> {
    retry::with_retries(shared, context, || async {
        shared.session.prepare(statement.as_str()).await.map_err(Into::into)
    })
    .await
}
