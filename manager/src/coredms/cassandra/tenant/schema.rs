//! Creating and evolving tables. The declared schema is claimed first, with a lightweight
//! transaction on `mysimbdp_tables` (`INSERT ... IF NOT EXISTS`), so that of two creators with
//! different schemas exactly one wins; only then is the CQL table created (`IF NOT EXISTS`, so a
//! creator that died between the two steps is finished by the next). A declaration that adds
//! nullable columns to a stored table evolves it: `ALTER TABLE ... ADD` for each, then the stored
//! declaration is replaced with another lightweight transaction that applies only if it is still
//! the one read (two evolvers agree, the loser reads the winner's and evolves from it).
//! A reader that finds a declaration it has not seen before finishes the creation too
//! ([`CassandraTenant::finish_creation`]): the creator may still be between its two steps, in
//! which case the reader waits for it on the schema lock, or may have died there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::value::CqlValue;

use super::{CassandraTenant, TableHandle, cannot_take, prepare};
use crate::coredms::cassandra::retry::{self, Context};
use crate::coredms::cassandra::values::{cql_type, qualified, quoted};
use crate::coredms::{StoreError, StoreErrorKind, TableChange, TableSchema, check_declaration};

/// Times a declaration is read again when another evolver replaced it first.
const MAX_EVOLVE_ROUNDS: usize = 5;

impl CassandraTenant {
    /// Claims the table's name for `table` and creates it, or evolves the table that has it.
    /// Returns what changed and the declaration now stored.
    pub(super) async fn create_or_evolve(&self, table: &TableSchema) -> Result<(TableChange, TableSchema), StoreError> {
        check_declaration(&self.tenant, table)?;
        let context = Context::new(&self.tenant, "creating a table").on(&table.name);
        let started = std::time::Instant::now();
        let _schema = self.shared.schema_lock.lock().await;
        let (claimed, mut stored) = self.claim(table, &context).await?;
        // Also finishes a creation whose creator died between its two steps.
        retry::schema_change(&self.shared, &context, &create_table(&self.keyspace, &stored)).await?;
        if claimed {
            log::info!(
                "cassandra: tenant={} table={} created ms={}",
                self.tenant,
                table.name,
                started.elapsed().as_millis()
            );
            return Ok((TableChange::Create, stored));
        }
        for _ in 0..MAX_EVOLVE_ROUNDS {
            let added = stored
                .evolve_to(table)
                .map_err(|reason| cannot_take(&self.tenant, &reason))?;
            if added.is_empty() {
                return Ok((TableChange::Unchanged, stored));
            }
            let context = Context::new(&self.tenant, "adding columns").on(&table.name);
            for column in &added {
                self.add_column(&stored, column, &context).await?;
            }
            let evolved = stored.with_columns(&added);
            match self.replace_declaration(&stored, &evolved, &context).await? {
                None => {
                    log::info!(
                        "cassandra: tenant={} table={} added columns {} ms={}",
                        self.tenant,
                        table.name,
                        added.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(","),
                        started.elapsed().as_millis()
                    );
                    return Ok((TableChange::AddColumns(added), evolved));
                }
                Some(newer) => stored = newer,
            }
        }
        Err(context.error(
            StoreErrorKind::Timeout,
            "its declaration kept changing under concurrent evolvers",
        ))
    }

    /// `ALTER TABLE ... ADD`; a column that exists already (another evolver's) is fine.
    async fn add_column(
        &self,
        stored: &TableSchema,
        column: &crate::coredms::Column,
        context: &Context,
    ) -> Result<(), StoreError> {
        let statement = format!(
            "ALTER TABLE {} ADD {} {}",
            qualified(&self.keyspace, &stored.name),
            quoted(&column.name),
            cql_type(column.column_type)
        );
        let outcome = retry::retrying(self.shared.config.max_retries, retry::is_transient, || {
            self.shared.session.query_unpaged(statement.as_str(), &[])
        })
        .await;
        match outcome {
            Ok(_) => Ok(()),
            Err((error, _)) if already_exists(&error) => Ok(()),
            Err((error, attempts)) => Err(context.driver_error(&error, attempts)),
        }
    }

    /// Replaces the stored declaration `old` with `new` if it is still `old`; otherwise returns
    /// the declaration found.
    async fn replace_declaration(
        &self,
        old: &TableSchema,
        new: &TableSchema,
        context: &Context,
    ) -> Result<Option<TableSchema>, StoreError> {
        let json = |t: &TableSchema| serde_json::to_string(t).map_err(|e| context.error(StoreErrorKind::Internal, e));
        let (old_json, new_json) = (json(old)?, json(new)?);
        let values = (new_json.as_str(), old.name.as_str(), old_json.as_str());
        let statement = &self.statements.update_table;
        let result = retry::with_retries(&self.shared, context, || {
            self.shared.session.execute_unpaged(statement, values)
        })
        .await?;
        let (applied, current) = lwt_outcome(result, context)?;
        if applied {
            return Ok(None);
        }
        current
            .map(|schema| parse_schema(&schema, context))
            .transpose()?
            .map(Some)
            .ok_or_else(|| context.error(StoreErrorKind::Internal, "the declaration disappeared"))
    }

    /// Makes sure the CQL table of a declaration read from `mysimbdp_tables` exists (`CREATE
    /// TABLE IF NOT EXISTS`, a no-op when it does). Under the schema lock, so a creator in this
    /// process that has claimed the name but not yet created the table finishes first.
    pub(super) async fn finish_creation(&self, declared: &TableSchema) -> Result<(), StoreError> {
        let context = Context::new(&self.tenant, "finishing the creation of a table").on(&declared.name);
        let _schema = self.shared.schema_lock.lock().await;
        retry::schema_change(&self.shared, &context, &create_table(&self.keyspace, declared)).await
    }

    /// Inserts the declaration unless the name is taken; returns whether it was inserted and
    /// the declaration in force.
    async fn claim(&self, table: &TableSchema, context: &Context) -> Result<(bool, TableSchema), StoreError> {
        let schema = serde_json::to_string(table).map_err(|e| context.error(StoreErrorKind::Internal, e))?;
        let values = (table.name.as_str(), schema.as_str());
        let statement = &self.statements.claim_table;
        let result = retry::with_retries(&self.shared, context, || {
            self.shared.session.execute_unpaged(statement, values)
        })
        .await?;
        match lwt_outcome(result, context)? {
            (true, _) => Ok((true, table.clone())),
            (false, Some(existing)) => Ok((false, parse_schema(&existing, context)?)),
            (false, None) => Err(context.error(
                StoreErrorKind::Internal,
                "the name is taken but its schema could not be read",
            )),
        }
    }

    /// Prepares the statements of a declared table and caches them.
    pub(super) async fn prepare_table(&self, schema: &TableSchema) -> Result<Arc<TableHandle>, StoreError> {
        let context = Context::new(&self.tenant, "preparing statements").on(&schema.name);
        let table = qualified(&self.keyspace, &schema.name);
        let names = schema
            .columns
            .iter()
            .map(|c| quoted(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let token = format!(
            "token({})",
            schema
                .partition_key
                .iter()
                .map(|k| quoted(k))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut insert = prepare(&self.shared, &context, insert_statement(&self.keyspace, schema)).await?;
        insert.set_is_idempotent(true);
        let select = prepare(&self.shared, &context, format!("SELECT {names} FROM {table}")).await?;
        let count = prepare(
            &self.shared,
            &context,
            format!("SELECT COUNT(*) FROM {table} WHERE {token} >= ? AND {token} <= ?"),
        )
        .await?;
        let sample = prepare(
            &self.shared,
            &context,
            format!(
                "SELECT {names} FROM {table} WHERE {token} >= ? LIMIT {}",
                super::size::SAMPLE_ROWS_PER_TOKEN
            ),
        )
        .await?;
        let handle = Arc::new(TableHandle {
            schema: Arc::new(schema.clone()),
            insert,
            select,
            count,
            sample,
            inserts: Mutex::new(HashMap::new()),
        });
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.insert(schema.name.clone(), Arc::clone(&handle));
        Ok(handle)
    }
}

/// The `[applied]` column of a lightweight transaction's answer, and the stored `schema` when
/// it did not apply.
fn lwt_outcome(
    result: scylla::response::query_result::QueryResult,
    context: &Context,
) -> Result<(bool, Option<String>), StoreError> {
    let internal = |e: &dyn std::fmt::Display| context.error(StoreErrorKind::Internal, e);
    let rows = result.into_rows_result().map_err(|e| internal(&e))?;
    let schema_column = rows.column_specs().get_by_name("schema").map(|(i, _)| i);
    let row = rows.first_row::<scylla::value::Row>().map_err(|e| internal(&e))?;
    let mut columns = row.columns.into_iter().enumerate();
    let applied = matches!(columns.next(), Some((_, Some(CqlValue::Boolean(true)))));
    let existing = columns
        .find(|(i, _)| Some(*i) == schema_column)
        .and_then(|(_, value)| match value {
            Some(CqlValue::Text(schema)) => Some(schema),
            _ => None,
        });
    Ok((applied, existing))
}

fn parse_schema(json: &str, context: &Context) -> Result<TableSchema, StoreError> {
    serde_json::from_str(json).map_err(|e| {
        context.error(
            StoreErrorKind::Internal,
            format_args!("the declared schema is corrupt: {e}"),
        )
    })
}

/// Cassandra's answer to adding a column that is there already.
fn already_exists(error: &ExecutionError) -> bool {
    matches!(
        error,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, message))
            if message.contains("already exist")
    )
}

/// `INSERT INTO "ks"."t" ("a", ...) VALUES (?, ...)` of the columns `table` declares.
pub(super) fn insert_statement(keyspace: &str, table: &TableSchema) -> String {
    let names: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect();
    let markers = vec!["?"; names.len()].join(", ");
    format!(
        "INSERT INTO {} ({}) VALUES ({markers})",
        qualified(keyspace, &table.name),
        names.join(", ")
    )
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
