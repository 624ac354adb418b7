//! Building table declarations and values, and the rules a declaration must follow.

use abi_stable::std_types::{RString, RVec};

use crate::ffi::{ColumnSpec, ColumnType, TableSpec, Value};

/// The longest table or column name accepted (Cassandra's limit, with room for prefixes).
pub const MAX_IDENTIFIER_LEN: usize = 48;

/// Table names with this prefix belong to the platform.
pub const RESERVED_TABLE_PREFIX: &str = "mysimbdp_";

impl TableSpec {
    /// A table with no columns yet. Add columns, then keys.
    ///
    /// ```
    /// use plugin_api::{ColumnType, TableSpec};
    /// let table = TableSpec::new("readings")
    ///     .column("dev_id", ColumnType::Text)
    ///     .column("time", ColumnType::Timestamp)
    ///     .nullable_column("temperature", ColumnType::Double)
    ///     .partition_key(&["dev_id"])
    ///     .clustering_key(&["time"]);
    /// assert_eq!(table.validate(), Ok(()));
    /// ```
    pub fn new(name: &str) -> Self {
        TableSpec {
            name: name.into(),
            columns: RVec::new(),
            partition_key: RVec::new(),
            clustering_key: RVec::new(),
        }
    }

    /// Adds a column that must always have a value.
    pub fn column(mut self, name: &str, column_type: ColumnType) -> Self {
        self.columns.push(ColumnSpec {
            name: name.into(),
            column_type,
            nullable: false,
        });
        self
    }

    /// Adds a column that may hold [`Value::Null`].
    pub fn nullable_column(mut self, name: &str, column_type: ColumnType) -> Self {
        self.columns.push(ColumnSpec {
            name: name.into(),
            column_type,
            nullable: true,
        });
        self
    }

    /// Sets the partition key (one or more column names).
    pub fn partition_key(mut self, columns: &[&str]) -> Self {
        self.partition_key = columns.iter().map(|c| RString::from(*c)).collect();
        self
    }

    /// Sets the clustering key (zero or more column names).
    pub fn clustering_key(mut self, columns: &[&str]) -> Self {
        self.clustering_key = columns.iter().map(|c| RString::from(*c)).collect();
        self
    }

    /// The position of a column, by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name.as_str() == name)
    }

    /// Checks the rules the host enforces on a declaration: valid names, no reserved prefix,
    /// no duplicate columns, a non-empty partition key, key columns that exist, are not
    /// nullable and appear once.
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
        let keys = self.partition_key.iter().chain(self.clustering_key.iter());
        for (i, key) in keys.clone().enumerate() {
            let Some(index) = self.column_index(key.as_str()) else {
                return Err(format!("table {table:?}: key column {key:?} is not a column"));
            };
            if self.columns[index].nullable {
                return Err(format!(
                    "table {table:?}: key column {key:?} is nullable; key columns must have a value"
                ));
            }
            if keys.clone().take(i).any(|k| k == key) {
                return Err(format!("table {table:?}: key column {key:?} is used twice"));
            }
        }
        Ok(())
    }
}

/// Checks a table or column name: `[a-z][a-z0-9_]*`, at most [`MAX_IDENTIFIER_LEN`] bytes.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err("must start with a lower-case ASCII letter".into());
        }
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

impl ColumnType {
    /// The name used in declarations, error messages and the HTTP API (`text`, `bigint`, ...).
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

impl Value {
    /// A [`Value::Text`].
    pub fn text(s: &str) -> Self {
        Value::Text(s.into())
    }

    /// A [`Value::Blob`].
    pub fn blob(bytes: &[u8]) -> Self {
        Value::Blob(bytes.into())
    }

    /// The name of the value's type, as in [`ColumnType::name`] (`null` for `Null`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Text(_) => "text",
            Value::BigInt(_) => "bigint",
            Value::Int(_) => "int",
            Value::Double(_) => "double",
            Value::Boolean(_) => "boolean",
            Value::Timestamp(_) => "timestamp",
            Value::Blob(_) => "blob",
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.into())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v.into())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::BigInt(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v.into())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> TableSpec {
        TableSpec::new("readings")
            .column("dev_id", ColumnType::Text)
            .column("time", ColumnType::Timestamp)
            .nullable_column("temperature", ColumnType::Double)
            .partition_key(&["dev_id"])
            .clustering_key(&["time"])
    }

    #[test]
    fn a_well_formed_table_validates() {
        assert_eq!(readings().validate(), Ok(()));
    }

    #[test]
    fn nullable_key_columns_are_refused() {
        let t = readings().clustering_key(&["temperature"]);
        assert!(t.validate().unwrap_err().contains("nullable"));
    }

    #[test]
    fn unknown_key_columns_and_bad_names_are_refused() {
        assert!(
            readings()
                .partition_key(&["nope"])
                .validate()
                .unwrap_err()
                .contains("not a column")
        );
        assert!(
            readings()
                .partition_key(&[])
                .validate()
                .unwrap_err()
                .contains("no partition key")
        );
        let bad = TableSpec::new("Readings")
            .column("a", ColumnType::Int)
            .partition_key(&["a"]);
        assert!(bad.validate().unwrap_err().contains("lower-case"));
        let reserved = TableSpec::new("mysimbdp_usage")
            .column("a", ColumnType::Int)
            .partition_key(&["a"]);
        assert!(reserved.validate().unwrap_err().contains("reserved"));
        let dup = TableSpec::new("t")
            .column("a", ColumnType::Int)
            .column("a", ColumnType::Text)
            .partition_key(&["a"]);
        assert!(dup.validate().unwrap_err().contains("twice"));
        let quoted = TableSpec::new("t")
            .column("a-b", ColumnType::Int)
            .partition_key(&["a-b"]);
        assert!(quoted.validate().is_err());
    }

    #[test]
    fn options_become_nulls() {
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(Value::from(Some(3.5)), Value::Double(3.5));
    }
}
