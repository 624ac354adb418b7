//! Tables, values and rows in host memory: the leaf that the plugin host (which checks what a
//! plugin sends against them), coredms (which stores them) and the API (which shows them) share.
//! It depends on nothing else of the platform's, and not on plugin-api: a table reaches it as a
//! checked declaration, and [`TableSchema::validate`] holds the host's own copy of the rules a
//! declaration follows, so storage never relies on a plugin having checked its tables.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A column's stored type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text.
    Text,
    /// 64-bit integer.
    BigInt,
    /// 32-bit integer.
    Int,
    /// 64-bit float.
    Double,
    /// Boolean.
    Boolean,
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp,
    /// Bytes.
    Blob,
}

impl ColumnType {
    /// The lower-case name (`bigint`).
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::BigInt => "bigint",
            ColumnType::Int => "int",
            ColumnType::Double => "double",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Blob => "blob",
        }
    }
}

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// `[a-z][a-z0-9_]*`.
    pub name: String,
    /// Stored type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether nulls are allowed.
    pub nullable: bool,
}

/// A table of a tenant. Names were validated when the plugin was loaded
/// (`plugin_api::TableSpec::validate`), so they are safe to put in a statement unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    /// Table name.
    pub name: String,
    /// Columns in row order.
    pub columns: Vec<Column>,
    /// Partition key columns.
    pub partition_key: Vec<String>,
    /// Clustering key columns.
    pub clustering_key: Vec<String>,
}

/// The longest table or column name accepted (Cassandra's limit, with room for prefixes).
pub const MAX_IDENTIFIER_LEN: usize = 48;

/// Table names with this prefix belong to the platform.
pub const RESERVED_TABLE_PREFIX: &str = "mysimbdp_";

/// Checks a table or column name: `[a-z][a-z0-9_]*`, at most [`MAX_IDENTIFIER_LEN`] bytes, so
/// it is safe in a statement as it is.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if !c.is_ascii_lowercase() => return Err("must start with a lower-case ASCII letter".into()),
        Some(_) => {}
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(format!("is longer than {MAX_IDENTIFIER_LEN} bytes"));
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err("may only hold a-z, 0-9 and _".into());
    }
    Ok(())
}

impl TableSchema {
    /// Checks the rules every declaration follows (the same as plugin-api's
    /// `TableSpec::validate`, which a test keeps in step): valid names, no reserved prefix, no
    /// duplicate columns, a non-empty partition key, key columns that exist, are not nullable
    /// and appear once.
    pub fn validate(&self) -> Result<(), String> {
        let table = self.name.as_str();
        check_identifier(table).map_err(|e| format!("table name {table:?}: {e}"))?;
        if table.starts_with(RESERVED_TABLE_PREFIX) {
            return Err(format!(
                "table name {table:?}: the prefix {RESERVED_TABLE_PREFIX:?} is reserved"
            ));
        }
        if self.columns.is_empty() {
            return Err(format!("table {table:?} has no columns"));
        }
        for (i, column) in self.columns.iter().enumerate() {
            let name = column.name.as_str();
            check_identifier(name).map_err(|e| format!("table {table:?}, column {name:?}: {e}"))?;
            if self.columns[..i].iter().any(|c| c.name == column.name) {
                return Err(format!("table {table:?}: column {name:?} is declared twice"));
            }
        }
        if self.partition_key.is_empty() {
            return Err(format!("table {table:?} has no partition key"));
        }
        let keys: Vec<&String> = self.partition_key.iter().chain(&self.clustering_key).collect();
        for (i, key) in keys.iter().enumerate() {
            let Some(column) = self.columns.iter().find(|c| &&c.name == key) else {
                return Err(format!("table {table:?}: key column {key:?} is not a column"));
            };
            if column.nullable {
                return Err(format!(
                    "table {table:?}: key column {key:?} is nullable; key columns must have a value"
                ));
            }
            if keys[..i].contains(key) {
                return Err(format!("table {table:?}: key column {key:?} is used twice"));
            }
        }
        Ok(())
    }

    /// Positions of the partition key columns.
    pub fn partition_key_indices(&self) -> Vec<usize> {
        self.key_indices(&self.partition_key)
    }

    /// Positions of all primary key columns (partition, then clustering).
    pub fn primary_key_indices(&self) -> Vec<usize> {
        let mut keys = self.key_indices(&self.partition_key);
        keys.extend(self.key_indices(&self.clustering_key));
        keys
    }

    fn key_indices(&self, names: &[String]) -> Vec<usize> {
        names
            .iter()
            .filter_map(|n| self.columns.iter().position(|c| &c.name == n))
            .collect()
    }

    /// Checks that `row` fits: one value per column, of the column's type, null only where
    /// allowed. The error names the column.
    pub fn check_row(&self, row: &[Value]) -> Result<(), String> {
        if row.len() != self.columns.len() {
            return Err(format!("{} values for {} columns", row.len(), self.columns.len()));
        }
        for (column, value) in self.columns.iter().zip(row) {
            match value.column_type() {
                None if column.nullable => {}
                None => {
                    return Err(format!(
                        "column {}: null in a column that requires a value",
                        column.name
                    ));
                }
                Some(t) if t == column.column_type => {}
                Some(t) => {
                    return Err(format!(
                        "column {}: expected {}, got {}",
                        column.name,
                        column.column_type.name(),
                        t.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The columns to add to this table (as stored) so that rows declared as `version` can be
    /// stored in it: schema evolution as Cassandra's users know it. A version may add nullable
    /// columns, leave out nullable ones (its rows leave them null), and declare a nullable column
    /// as required; `Err` says why anything else cannot be applied: another key, another type,
    /// a new column that is required (the stored rows have no value for it), a required column
    /// left out, or a required column made nullable.
    pub fn evolve_to(&self, version: &TableSchema) -> Result<Vec<Column>, String> {
        let name = &self.name;
        if (&self.partition_key, &self.clustering_key) != (&version.partition_key, &version.clustering_key) {
            return Err(format!(
                "table {name}: the key changes from {} to {}",
                describe_key(self),
                describe_key(version)
            ));
        }
        let mut added = Vec::new();
        for column in &version.columns {
            match self.columns.iter().find(|c| c.name == column.name) {
                Some(stored) if stored.column_type != column.column_type => {
                    return Err(format!(
                        "table {name}: column {} changes type from {} to {}",
                        column.name,
                        stored.column_type.name(),
                        column.column_type.name()
                    ));
                }
                Some(stored) if column.nullable && !stored.nullable => {
                    return Err(format!(
                        "table {name}: column {} is required in the stored table and nullable in this version",
                        column.name
                    ));
                }
                Some(_) => {}
                None if !column.nullable => {
                    return Err(format!(
                        "table {name}: the new column {} must be nullable (the rows already stored have no value for it)",
                        column.name
                    ));
                }
                None => added.push(column.clone()),
            }
        }
        if let Some(missing) = self
            .columns
            .iter()
            .find(|c| !c.nullable && !version.columns.iter().any(|v| v.name == c.name))
        {
            return Err(format!(
                "table {name}: the required column {} is not declared by this version",
                missing.name
            ));
        }
        Ok(added)
    }

    /// This table with `added` columns after its own.
    pub fn with_columns(&self, added: &[Column]) -> TableSchema {
        let mut table = self.clone();
        table.columns.extend(added.iter().cloned());
        table
    }

    /// Whether rows declared as `version` can be written to this table as it is.
    pub fn accepts(&self, version: &TableSchema) -> Result<(), String> {
        match self.evolve_to(version)? {
            added if added.is_empty() => Ok(()),
            added => Err(format!(
                "table {}: the rows have columns the table lacks ({})",
                self.name,
                added.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// Whether `version` has exactly this table's columns (in any order).
    pub fn same_columns(&self, version: &TableSchema) -> bool {
        self.columns.len() == version.columns.len() && version.columns.iter().all(|c| self.columns.contains(c))
    }

    /// A short description of how `other` differs, for a schema conflict error.
    pub fn difference(&self, other: &TableSchema) -> String {
        if self.columns != other.columns {
            let describe = |t: &TableSchema| {
                t.columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}{}",
                            c.name,
                            c.column_type.name(),
                            if c.nullable { "" } else { " not null" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("columns ({}) vs ({})", describe(self), describe(other))
        } else {
            format!(
                "key ({:?}, {:?}) vs ({:?}, {:?})",
                self.partition_key, self.clustering_key, other.partition_key, other.clustering_key
            )
        }
    }
}

fn describe_key(table: &TableSchema) -> String {
    format!(
        "partition key ({}) clustering key ({})",
        table.partition_key.join(", "),
        table.clustering_key.join(", ")
    )
}

/// What declaring a table does to the tenant's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", content = "columns", rename_all = "snake_case")]
pub enum TableChange {
    /// The table does not exist yet: it is created as declared.
    Create,
    /// It exists and takes the declared rows as it is.
    Unchanged,
    /// It exists; these nullable columns are added to it.
    AddColumns(Vec<Column>),
}

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// Text.
    Text(String),
    /// 64-bit integer.
    BigInt(i64),
    /// 32-bit integer.
    Int(i32),
    /// 64-bit float.
    Double(f64),
    /// Boolean.
    Boolean(bool),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// The type of a non-null value.
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::Text(_) => ColumnType::Text,
            Value::BigInt(_) => ColumnType::BigInt,
            Value::Int(_) => ColumnType::Int,
            Value::Double(_) => ColumnType::Double,
            Value::Boolean(_) => ColumnType::Boolean,
            Value::Timestamp(_) => ColumnType::Timestamp,
            Value::Blob(_) => ColumnType::Blob,
        })
    }

    /// Bytes the value counts for in storage accounting (its payload, without overhead).
    pub fn logical_bytes(&self) -> u64 {
        match self {
            Value::Null => 0,
            Value::Text(s) => s.len() as u64,
            Value::Blob(b) => b.len() as u64,
            Value::BigInt(_) | Value::Double(_) | Value::Timestamp(_) => 8,
            Value::Int(_) => 4,
            Value::Boolean(_) => 1,
        }
    }
}

/// For messages and the raw text of a rejected row: text quoted, bytes in hex, timestamps as
/// milliseconds.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::BigInt(n) | Value::Timestamp(n) => write!(f, "{n}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Double(n) => write!(f, "{n}"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Blob(b) => f.write_str(&hex::encode(b)),
        }
    }
}

/// Rows of one table, row-major: `values.len()` is a multiple of the column count.
#[derive(Debug, Clone)]
pub struct Rows {
    /// The table.
    pub table: Arc<TableSchema>,
    /// The values.
    pub values: Vec<Value>,
}

impl Rows {
    /// No rows of `table` yet.
    pub fn new(table: Arc<TableSchema>) -> Self {
        Rows {
            table,
            values: Vec::new(),
        }
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.table.columns.len()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.values.len() / self.width().max(1)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The rows, as slices.
    pub fn iter(&self) -> impl Iterator<Item = &[Value]> {
        self.values.chunks(self.width().max(1))
    }

    /// Accounting bytes of all rows.
    pub fn logical_bytes(&self) -> u64 {
        self.values.iter().map(Value::logical_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn table() -> TableSchema {
        TableSchema {
            name: "t".into(),
            columns: vec![
                Column {
                    name: "k".into(),
                    column_type: ColumnType::Text,
                    nullable: false,
                },
                Column {
                    name: "v".into(),
                    column_type: ColumnType::Double,
                    nullable: true,
                },
            ],
            partition_key: vec!["k".into()],
            clustering_key: vec![],
        }
    }

    #[test]
    fn rows_are_checked_column_by_column() {
        let t = table();
        assert_eq!(t.check_row(&[Value::Text("a".into()), Value::Null]), Ok(()));
        assert!(
            t.check_row(&[Value::Null, Value::Null])
                .unwrap_err()
                .contains("column k")
        );
        assert!(
            t.check_row(&[Value::Text("a".into()), Value::BigInt(1)])
                .unwrap_err()
                .contains("expected double, got bigint")
        );
        assert!(
            t.check_row(&[Value::Text("a".into())])
                .unwrap_err()
                .contains("1 values for 2 columns")
        );
    }

    #[test]
    fn a_version_may_add_and_leave_out_nullable_columns_and_nothing_else() {
        let stored = table();
        let with = |columns: Vec<Column>| TableSchema { columns, ..table() };
        let column = |name: &str, column_type, nullable| Column {
            name: name.into(),
            column_type,
            nullable,
        };
        let k = column("k", ColumnType::Text, false);
        let v = column("v", ColumnType::Double, true);
        assert_eq!(stored.evolve_to(&stored), Ok(vec![]));
        let extra = column("extra", ColumnType::Text, true);
        assert_eq!(
            stored.evolve_to(&with(vec![k.clone(), v.clone(), extra.clone()])),
            Ok(vec![extra.clone()])
        );
        assert_eq!(stored.with_columns(std::slice::from_ref(&extra)).columns.len(), 3);
        assert_eq!(stored.evolve_to(&with(vec![k.clone()])), Ok(vec![]), "v is left null");
        let retyped = with(vec![k.clone(), column("v", ColumnType::Text, true)]);
        assert!(
            stored
                .evolve_to(&retyped)
                .unwrap_err()
                .contains("changes type from double to text")
        );
        let required = with(vec![k.clone(), v.clone(), column("extra", ColumnType::Text, false)]);
        assert!(stored.evolve_to(&required).unwrap_err().contains("must be nullable"));
        let rekeyed = TableSchema {
            clustering_key: vec!["v".into()],
            ..table()
        };
        assert!(stored.evolve_to(&rekeyed).unwrap_err().contains("the key changes"));
        assert!(
            stored
                .evolve_to(&with(vec![v.clone()]))
                .unwrap_err()
                .contains("required column k")
        );
        assert!(stored.accepts(&with(vec![k.clone(), v.clone(), extra])).is_err());
        assert!(stored.accepts(&with(vec![v, k])).is_ok());
    }

    #[test]
    fn declarations_follow_the_same_rules_as_the_sdks() {
        let cases: Vec<plugin_api::TableSpec> = vec![
            plugin_api::TableSpec::new("readings")
                .column("dev_id", plugin_api::ColumnType::Text)
                .nullable_column("v", plugin_api::ColumnType::Double)
                .partition_key(&["dev_id"]),
            plugin_api::TableSpec::new("Readings")
                .column("a", plugin_api::ColumnType::Int)
                .partition_key(&["a"]),
            plugin_api::TableSpec::new("mysimbdp_x")
                .column("a", plugin_api::ColumnType::Int)
                .partition_key(&["a"]),
            plugin_api::TableSpec::new("t").column("a", plugin_api::ColumnType::Int),
            plugin_api::TableSpec::new("t")
                .nullable_column("a", plugin_api::ColumnType::Int)
                .partition_key(&["a"]),
            plugin_api::TableSpec::new("t")
                .column("a", plugin_api::ColumnType::Int)
                .column("a", plugin_api::ColumnType::Text)
                .partition_key(&["a"]),
            plugin_api::TableSpec::new("t")
                .column("a-b", plugin_api::ColumnType::Int)
                .partition_key(&["a-b"]),
            plugin_api::TableSpec::new("t")
                .column("a", plugin_api::ColumnType::Int)
                .partition_key(&["a"])
                .clustering_key(&["a"]),
            plugin_api::TableSpec::new("t")
                .column("a", plugin_api::ColumnType::Int)
                .partition_key(&["b"]),
            plugin_api::TableSpec::new(&"t".repeat(49))
                .column("a", plugin_api::ColumnType::Int)
                .partition_key(&["a"]),
            plugin_api::TableSpec::new("t"),
        ];
        for spec in cases {
            let host = TableSchema {
                name: spec.name.to_string(),
                columns: spec
                    .columns
                    .iter()
                    .map(|c| Column {
                        name: c.name.to_string(),
                        column_type: ColumnType::Text,
                        nullable: c.nullable,
                    })
                    .collect(),
                partition_key: spec.partition_key.iter().map(|k| k.to_string()).collect(),
                clustering_key: spec.clustering_key.iter().map(|k| k.to_string()).collect(),
            };
            assert_eq!(host.validate(), spec.validate(), "{}", spec.name);
        }
    }
}
