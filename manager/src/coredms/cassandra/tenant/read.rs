//! Reading: whole scans of the keyspace's small tables, and pages of a tenant table whose
//! token carries the driver's paging state.

use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::{CassandraTenant, TableHandle};
use crate::coredms::cassandra::retry::{self, Context};
use crate::coredms::cassandra::values::{decode, encode_page_token, qualified, quoted};
use crate::coredms::{Page, StoreError, StoreErrorKind, TableSchema, Value};

/// Page size of whole scans.
const SCAN_PAGE_ROWS: i32 = 5_000;

impl CassandraTenant {
    /// The declared tables, read from `mysimbdp_tables`, by name.
    pub(super) async fn declared_tables(&self) -> Result<Vec<TableSchema>, StoreError> {
        let context = Context::new(&self.tenant, "listing tables").on(&self.keyspace);
        let mut tables = Vec::new();
        self.scan(&self.statements.list_tables, &context, |row| {
            let mut columns = row.columns.into_iter();
            let (Some(Some(CqlValue::Text(name))), Some(Some(CqlValue::Text(schema)))) =
                (columns.next(), columns.next())
            else {
                return Err("a row of mysimbdp_tables without a name or schema".into());
            };
            let table: TableSchema =
                serde_json::from_str(&schema).map_err(|e| format!("table {name} has a corrupt schema: {e}"))?;
            tables.push(table);
            Ok(true)
        })
        .await?;
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tables)
    }

    /// Runs `statement` (no bound values) over all its pages, each page retried on its own,
    /// handing each row to `each`, until `each` answers `false` (stop) or the rows end.
    pub(super) async fn scan(
        &self,
        statement: &PreparedStatement,
        context: &Context,
        mut each: impl FnMut(Row) -> Result<bool, String>,
    ) -> Result<(), StoreError> {
        let mut statement = statement.clone();
        statement.set_page_size(SCAN_PAGE_ROWS);
        let mut state = PagingState::start();
        loop {
            let (result, response) = retry::with_retries(&self.shared, context, || {
                self.shared.session.execute_single_page(&statement, (), state.clone())
            })
            .await?;
            for row in result_rows(result, context)? {
                if !each(row).map_err(|e| context.error(StoreErrorKind::Internal, e))? {
                    return Ok(());
                }
            }
            match response {
                PagingStateResponse::HasMorePages { state: next } => state = next,
                PagingStateResponse::NoMorePages => return Ok(()),
            }
        }
    }

    /// Whether any row of the table has a value in `column` (a scan that stops at the first).
    pub(super) async fn any_value(&self, handle: &TableHandle, column: &str) -> Result<bool, StoreError> {
        if !handle.schema.columns.iter().any(|c| c.name == column) {
            return Ok(false);
        }
        let context = Context::new(&self.tenant, "looking for data in a column").on(&handle.schema.name);
        let statement = format!(
            "SELECT {} FROM {}",
            quoted(column),
            qualified(&self.keyspace, &handle.schema.name)
        );
        let statement = retry::with_retries(&self.shared, &context, || async {
            self.shared
                .session
                .prepare(statement.as_str())
                .await
                .map_err(Into::into)
        })
        .await?;
        let mut found = false;
        self.scan(&statement, &context, |row| {
            found = row.columns.first().is_some_and(Option::is_some);
            Ok(!found)
        })
        .await?;
        Ok(found)
    }

    /// Reads one page of `limit` rows starting at `paging_state`, topping it up when Cassandra
    /// returns a short page with more to come.
    pub(super) async fn page(
        &self,
        handle: &TableHandle,
        paging_state: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let context = Context::new(&self.tenant, "reading rows").on(&handle.schema.name);
        let from_token = paging_state.is_some();
        let mut state = paging_state.map_or_else(PagingState::start, PagingState::new_from_raw_bytes);
        let mut rows = Vec::new();
        loop {
            let mut select = handle.select.clone();
            select.set_page_size(i32::try_from(limit - rows.len()).unwrap_or(i32::MAX));
            let (result, response) = retry::retrying(self.shared.config.max_retries, retry::is_transient, || {
                self.shared.session.execute_single_page(&select, (), state.clone())
            })
            .await
            .map_err(|(error, attempts)| page_error(&context, &error, attempts, from_token))?;
            for row in result_rows(result, &context)? {
                rows.push(decode_row(&handle.schema, row).map_err(|e| context.error(StoreErrorKind::Internal, e))?);
            }
            match response {
                PagingStateResponse::NoMorePages => return Ok(Page { rows, next_page: None }),
                PagingStateResponse::HasMorePages { state: next } if rows.len() >= limit => {
                    let raw = next.as_bytes_slice().map(|b| b.to_vec()).unwrap_or_default();
                    let next_page = Some(encode_page_token(&self.tenant, &handle.schema, &raw));
                    return Ok(Page { rows, next_page });
                }
                PagingStateResponse::HasMorePages { state: next } => state = next,
            }
        }
    }
}

/// The rows of a result, untyped.
pub(super) fn result_rows(result: QueryResult, context: &Context) -> Result<Vec<Row>, StoreError> {
    let internal = |e: &dyn std::fmt::Display| context.error(StoreErrorKind::Internal, e);
    let result = result.into_rows_result().map_err(|e| internal(&e))?;
    let rows = result.rows::<Row>().map_err(|e| internal(&e))?;
    rows.collect::<Result<Vec<Row>, _>>().map_err(|e| internal(&e))
}

/// A result row as values of the declared column types.
pub(super) fn decode_row(schema: &TableSchema, row: Row) -> Result<Vec<Value>, String> {
    if row.columns.len() != schema.columns.len() {
        return Err(format!(
            "{} columns for {} declared",
            row.columns.len(),
            schema.columns.len()
        ));
    }
    row.columns
        .into_iter()
        .zip(&schema.columns)
        .map(|(cell, column)| decode(cell, column.column_type).map_err(|e| format!("column {}: {e}", column.name)))
        .collect()
}

/// A request Cassandra refuses as malformed when it carried a page token means the token was
/// not a valid paging state: Invalid, like any other malformed token.
fn page_error(context: &Context, error: &ExecutionError, attempts: u32, from_token: bool) -> StoreError {
    let refused = matches!(
        error,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::ProtocolError | DbError::Invalid,
            _
        ))
    );
    if from_token && refused {
        return context.error(
            StoreErrorKind::Invalid,
            format_args!("the page token is not valid: {error}"),
        );
    }
    context.driver_error(error, attempts)
}
