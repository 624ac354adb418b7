//! Creating tables. The declared schema is claimed first, with a lightweight transaction on
//! `mysimbdp_tables` (`INSERT ... IF NOT EXISTS`), so that of two creators with different schemas
//! exactly one wins and the other gets a Schema error; only then is the CQL table created
//! (`IF NOT EXISTS`, so a creator that died between the two steps is finished by the next).
//! A reader that finds a declaration it has not seen before finishes the creation too
//! ([`CassandraTenant::finish_creation`]): the creator may still be between its two steps, in
//! which case the reader waits for it on the schema lock, or may have died there.

use std::sync::Arc;

use scylla::value::CqlValue;

use super::{CassandraTenant, TableHandle, prepare, same_schema};
use crate::coredms::cassandra::retry::{self, Context};
use crate::coredms::cassandra::values::{cql_type, qualified, quoted};
use crate::coredms::{StoreError, StoreErrorKind, TableSchema, check_declaration};

impl CassandraTenant {
    /// Claims the table's name for `table` (or finds the schema that has it) and creates it.
    pub(super) async fn claim_and_create(&self, table: &TableSchema) -> Result<(), StoreError> {
        check_declaration(&self.tenant, table)?;
        let context = Context::new(&self.tenant, "creating a table").on(&table.name);
        let started = std::time::Instant::now();
        let _schema = self.shared.schema_lock.lock().await;
        let declared = self.claim(table, &context).await?;
        same_schema(&self.tenant, &declared, table)?;
        retry::schema_change(&self.shared, &context, &create_table(&self.keyspace, table)).await?;
        log::info!(
            "cassandra: tenant={} table={} ensured ms={}",
            self.tenant,
            table.name,
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Makes sure the CQL table of a declaration read from `mysimbdp_tables` exists (`CREATE
    /// TABLE IF NOT EXISTS`, a no-op when it does). Under the schema lock, so a creator in this
    /// process that has claimed the name but not yet created the table finishes first.
    pub(super) async fn finish_creation(&self, declared: &TableSchema) -> Result<(), StoreError> {
        let context = Context::new(&self.tenant, "finishing the creation of a table").on(&declared.name);
        let _schema = self.shared.schema_lock.lock().await;
        retry::schema_change(&self.shared, &context, &create_table(&self.keyspace, declared)).await
    }

    /// Inserts the declaration unless the name is taken; returns the declaration in force.
    async fn claim(&self, table: &TableSchema, context: &Context) -> Result<TableSchema, StoreError> {
        let schema = serde_json::to_string(table).map_err(|e| context.error(StoreErrorKind::Internal, e))?;
        let values = (table.name.as_str(), schema.as_str());
        let statement = &self.statements.claim_table;
        let result = retry::with_retries(&self.shared, context, || {
            self.shared.session.execute_unpaged(statement, values)
        })
        .await?;
        let internal = |e: &dyn std::fmt::Display| context.error(StoreErrorKind::Internal, e);
        let rows = result.into_rows_result().map_err(|e| internal(&e))?;
        let schema_column = rows.column_specs().get_by_name("schema").map(|(i, _)| i);
        let row = rows.first_row::<scylla::value::Row>().map_err(|e| internal(&e))?;
        let mut columns = row.columns.into_iter().enumerate();
        if let Some((_, Some(CqlValue::Boolean(true)))) = columns.next() {
            return Ok(table.clone());
        }
        let existing = columns
            .find(|(i, _)| Some(*i) == schema_column)
            .and_then(|(_, value)| value);
        match existing {
            Some(CqlValue::Text(existing)) => serde_json::from_str(&existing)
                .map_err(|e| internal(&format_args!("the declared schema is corrupt: {e}"))),
            _ => Err(internal(&"the name is taken but its schema could not be read")),
        }
    }

    /// Prepares the statements of a declared table and caches them.
    pub(super) async fn prepare_table(&self, schema: &TableSchema) -> Result<Arc<TableHandle>, StoreError> {
        let context = Context::new(&self.tenant, "preparing statements").on(&schema.name);
        let table = qualified(&self.keyspace, &schema.name);
        let names: Vec<String> = schema.columns.iter().map(|c| quoted(&c.name)).collect();
        let markers = vec!["?"; names.len()].join(", ");
        let names = names.join(", ");
        let token = format!(
            "token({})",
            schema
                .partition_key
                .iter()
                .map(|k| quoted(k))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut insert = prepare(
            &self.shared,
            &context,
            format!("INSERT INTO {table} ({names}) VALUES ({markers})"),
        )
        .await?;
        insert.set_is_idempotent(true);
        let select = prepare(&self.shared, &context, format!("SELECT {names} FROM {table}")).await?;
        let count = prepare(
            &self.shared,
            &context,
            format!("SELECT COUNT(*) FROM {table} WHERE {token} >= ? AND {token} <= ?"),
        )
        .await?;
        let handle = Arc::new(TableHandle {
            schema: Arc::new(schema.clone()),
            insert,
            select,
            count,
        });
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tables.entry(schema.name.clone()).or_insert(handle).clone())
    }
}

/// `CREATE TABLE IF NOT EXISTS "ks"."t" ("a" text, ..., PRIMARY KEY (("p", ...), "c", ...))`.
fn create_table(keyspace: &str, table: &TableSchema) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{} {}", quoted(&c.name), cql_type(c.column_type)))
        .collect();
    let partition: Vec<String> = table.partition_key.iter().map(|k| quoted(k)).collect();
    let mut key = vec![format!("({})", partition.join(", "))];
    key.extend(table.clustering_key.iter().map(|k| quoted(k)));
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
        qualified(keyspace, &table.name),
        columns.join(", "),
        key.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coredms::{Column, ColumnType};

    #[test]
    fn the_primary_key_has_the_partition_key_in_parentheses_then_the_clustering_key() {
        let column = |name: &str, column_type| Column {
            name: name.into(),
            column_type,
            nullable: false,
        };
        let table = TableSchema {
            name: "readings".into(),
            columns: vec![
                column("dev", ColumnType::Text),
                column("day", ColumnType::Text),
                column("time", ColumnType::Timestamp),
                column("v", ColumnType::Double),
            ],
            partition_key: vec!["dev".into(), "day".into()],
            clustering_key: vec!["time".into()],
        };
        assert_eq!(
            create_table("mysimbdp_c", &table),
            "CREATE TABLE IF NOT EXISTS \"mysimbdp_c\".\"readings\" (\"dev\" text, \"day\" text, \
             \"time\" timestamp, \"v\" double, PRIMARY KEY ((\"dev\", \"day\"), \"time\"))"
        );
    }
}
