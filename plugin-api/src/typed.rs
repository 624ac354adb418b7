//! Typed rows: declare a row type once with [`row!`](crate::row) and get its [`TableSpec`]
//! and a typed push, so a column's name, type, nullability and place in the keys live in one
//! place and a mistake does not compile.
//!
//! A declarative macro rather than a derive: it needs no second (proc-macro) crate, so a copy of
//! the `plugin-api` folder alone still builds a plugin, and it adds nothing to a plugin's build
//! time. The runtime ABI is unchanged: a typed row becomes the same positional values.

use std::marker::PhantomData;

use crate::ffi::{ColumnType, TableSpec, Value};
use crate::{Output, PluginError, TableId};

/// A Rust type that is a column's value: its [`ColumnType`], whether it may be null, and how it
/// becomes a [`Value`]. `Option<T>` makes a nullable column of `T`'s type.
pub trait ColumnValue {
    /// The column's type.
    const TYPE: ColumnType;
    /// Whether the column may be null (only `Option<T>`).
    const NULLABLE: bool = false;
    /// The value.
    fn into_value(self) -> Value;
}

/// A point in time, stored in a [`ColumnType::Timestamp`] column: **milliseconds** since the
/// Unix epoch, UTC (`Timestamp(1_700_000_000_000)` is 2023-11-14T22:13:20Z).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// From whole seconds since the epoch.
    pub fn from_seconds(seconds: i64) -> Self {
        Timestamp(seconds.saturating_mul(1000))
    }

    /// From an ISO 8601 text such as `2023-11-14T22:13:20Z` or `2023-11-14 22:13:20.5+01:00`.
    pub fn parse_iso8601(text: &str) -> Result<Self, String> {
        crate::time::parse_iso8601_millis(text).map(Timestamp)
    }
}

impl ColumnValue for Timestamp {
    const TYPE: ColumnType = ColumnType::Timestamp;
    fn into_value(self) -> Value {
        Value::Timestamp(self.0)
    }
}

impl ColumnValue for String {
    const TYPE: ColumnType = ColumnType::Text;
    fn into_value(self) -> Value {
        Value::Text(self.into())
    }
}

/// A 64-bit integer column ([`ColumnType::BigInt`]): −2⁶³ to 2⁶³−1.
impl ColumnValue for i64 {
    const TYPE: ColumnType = ColumnType::BigInt;
    fn into_value(self) -> Value {
        Value::BigInt(self)
    }
}

/// A 32-bit integer column ([`ColumnType::Int`]): −2,147,483,648 to 2,147,483,647; parse
/// into `i32` so a larger number is an error you can reject.
impl ColumnValue for i32 {
    const TYPE: ColumnType = ColumnType::Int;
    fn into_value(self) -> Value {
        Value::Int(self)
    }
}

impl ColumnValue for f64 {
    const TYPE: ColumnType = ColumnType::Double;
    fn into_value(self) -> Value {
        Value::Double(self)
    }
}

impl ColumnValue for bool {
    const TYPE: ColumnType = ColumnType::Boolean;
    fn into_value(self) -> Value {
        Value::Boolean(self)
    }
}

impl ColumnValue for Vec<u8> {
    const TYPE: ColumnType = ColumnType::Blob;
    fn into_value(self) -> Value {
        Value::Blob(self.into())
    }
}

impl<T: ColumnValue> ColumnValue for Option<T> {
    const TYPE: ColumnType = T::TYPE;
    const NULLABLE: bool = true;
    fn into_value(self) -> Value {
        self.map_or(Value::Null, ColumnValue::into_value)
    }
}

/// A row type declared with [`row!`](crate::row).
pub trait Row: Sized {
    /// Its table's name.
    const TABLE: &'static str;
    /// Its table's declaration: the columns in field order (partition key, clustering key,
    /// then the others), the keys.
    fn spec() -> TableSpec;
    /// Its values, in the order of `spec()`'s columns.
    fn push_values(self, values: &mut Vec<Value>);
}

/// A handle on the table of row type `R`, found once (in `ingest`, or in a stream plugin's
/// `open`) and used for every push: [`Output::push`] takes only rows of type `R`.
pub struct Table<R> {
    id: TableId,
    row: PhantomData<fn(R)>,
}

impl<R> Clone for Table<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Table<R> {}

impl<R> std::fmt::Debug for Table<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Table").field(&self.id.0).finish()
    }
}

impl<R: Row> Table<R> {
    /// Finds `R`'s table among `tables` (what the plugin's `tables()` returns) and checks that
    /// it is declared as `R` declares it.
    ///
    /// ```
    /// use plugin_api::{row, Row, Table, TableSpec, Timestamp};
    /// row! {
    ///     /// One reading.
    ///     pub struct Reading in "readings" {
    ///         partition { sensor: String }
    ///         clustering { time: Timestamp }
    ///         columns { celsius: Option<f64> }
    ///     }
    /// }
    /// let tables = vec![Reading::spec()];
    /// assert!(Table::<Reading>::find(&tables).is_ok());
    /// assert!(Table::<Reading>::find(&[TableSpec::new("readings")]).is_err());
    /// ```
    pub fn find(tables: &[TableSpec]) -> Result<Self, PluginError> {
        let index = tables
            .iter()
            .position(|t| t.name.as_str() == R::TABLE)
            .ok_or_else(|| PluginError::internal(format!("no table named {:?} is declared in tables()", R::TABLE)))?;
        if tables[index] != R::spec() {
            return Err(PluginError::internal(format!(
                "table {:?} in tables() is not declared as its row type declares it: use {}::spec()",
                R::TABLE,
                std::any::type_name::<R>()
            )));
        }
        Ok(Table {
            id: TableId(index as u32),
            row: PhantomData,
        })
    }

    /// The positional id, for [`Output::push_row`].
    pub fn id(self) -> TableId {
        self.id
    }
}

impl Output {
    /// The handle of row type `R`'s table, checked against the declaration.
    pub fn table_of<R: Row>(&self) -> Result<Table<R>, PluginError> {
        Table::find(self.specs())
    }

    /// Adds one typed row to its table.
    pub fn push<R: Row>(&mut self, table: Table<R>, row: R) -> Result<(), PluginError> {
        let mut values = self.take_scratch();
        row.push_values(&mut values);
        let result = self.push_row_iter(table.id, values.drain(..));
        self.return_scratch(values);
        result
    }
}

/// Whether a crate named `crate_name` (as `CARGO_PKG_NAME` spells it) may declare `tenant` and
/// `file_types`: a crate named like a plugin file (`clientbatchingestapp_<tenant>_<type>`,
/// `clientstreamingestapp_<tenant>`) must name the same tenant, and a batch crate's type
/// must be among its file types. A crate with another name (built to be deployed under a
/// file name of the operator's choosing) is checked by the host when it loads.
pub const fn identity_agrees(crate_name: &str, tenant: &str, file_types: Option<&[&str]>) -> bool {
    let name = crate_name.as_bytes();
    match file_types {
        Some(types) => {
            let prefix = b"clientbatchingestapp_";
            if !starts_with(name, prefix) {
                return true;
            }
            // <tenant>_<type>: the type is after the last '_' (a type has none).
            let rest = split_at(name, prefix.len()).1;
            let mut last = rest.len();
            while last > 0 && !is_separator(rest[last - 1]) {
                last -= 1;
            }
            if last == 0 {
                return false;
            }
            let (named_tenant, named_type) = (split_at(rest, last - 1).0, split_at(rest, last).1);
            if !same_name(named_tenant, tenant.as_bytes()) {
                return false;
            }
            let mut i = 0;
            while i < types.len() {
                if same_name(named_type, types[i].as_bytes()) {
                    return true;
                }
                i += 1;
            }
            false
        }
        None => {
            let prefix = b"clientstreamingestapp_";
            if !starts_with(name, prefix) {
                return true;
            }
            same_name(split_at(name, prefix.len()).1, tenant.as_bytes())
        }
    }
}

const fn is_separator(b: u8) -> bool {
    b == b'_' || b == b'-'
}

const fn split_at(s: &[u8], at: usize) -> (&[u8], &[u8]) {
    s.split_at(at)
}

const fn starts_with(s: &[u8], prefix: &[u8]) -> bool {
    if s.len() < prefix.len() {
        return false;
    }
    same_name(split_at(s, prefix.len()).0, prefix)
}

/// Equal, with `-` (which cargo allows in package names) the same as `_`.
const fn same_name(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        let (x, y) = (a[i], b[i]);
        if x != y && !(is_separator(x) && is_separator(y)) {
            return false;
        }
        i += 1;
    }
    true
}

/// Declares a row type: a struct and its table, in one place.
///
/// Fields come in three groups, in this order: `partition` (at least one), `clustering` (may
/// be empty or left out) and `columns` (the rest; may be left out). A field's Rust type gives
/// its column type ([`ColumnValue`]: `String` is text, `i64` bigint, `i32` int, `f64` double,
/// `bool` boolean, [`Timestamp`] timestamp in milliseconds, `Vec<u8>` blob), and `Option<T>`
/// makes it nullable. Key columns cannot be nullable: an `Option` in a key does not compile.
/// The column names are the field names.
///
/// ```
/// use plugin_api::{row, Row, Timestamp};
///
/// row! {
///     /// One temperature reading of a sensor.
///     pub struct Reading in "readings" {
///         partition { sensor: String }
///         clustering { time: Timestamp }
///         columns { celsius: f64, note: Option<String> }
///     }
/// }
///
/// let spec = Reading::spec();
/// assert_eq!(spec.validate(), Ok(()));
/// assert_eq!(spec.columns.len(), 4);
/// assert!(spec.columns[3].nullable);
/// ```
///
/// A row goes only to its own table, with every field, each of its own type:
///
/// ```compile_fail,E0308
/// use plugin_api::{row, Output, PluginError, Timestamp};
/// row! { pub struct Reading in "readings" { partition { sensor: String } columns { celsius: f64 } } }
/// row! { pub struct Alarm in "alarms" { partition { sensor: String } } }
/// fn push(out: &mut Output) -> Result<(), PluginError> {
///     let alarms = out.table_of::<Alarm>()?;
///     out.push(alarms, Reading { sensor: "s1".into(), celsius: 20.5 }) // the wrong table
/// }
/// ```
///
/// ```compile_fail,E0308
/// use plugin_api::row;
/// row! { pub struct Reading in "readings" { partition { sensor: String } columns { celsius: f64 } } }
/// let r = Reading { sensor: "s1".into(), celsius: "20.5" }; // a text for a double
/// ```
///
/// ```compile_fail,E0080
/// use plugin_api::row;
/// // A nullable key column.
/// row! { pub struct Reading in "readings" { partition { sensor: Option<String> } } }
/// ```
#[macro_export]
macro_rules! row {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $table:literal {
            partition { $($(#[$pmeta:meta])* $pfield:ident : $pty:ty),+ $(,)? }
            $(clustering { $($(#[$cmeta:meta])* $cfield:ident : $cty:ty),* $(,)? })?
            $(columns { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? })?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $($(#[$pmeta])* pub $pfield: $pty,)+
            $($($(#[$cmeta])* pub $cfield: $cty,)*)?
            $($($(#[$fmeta])* pub $field: $ty,)*)?
        }

        const _: () = {
            $(assert!(
                !<$pty as $crate::ColumnValue>::NULLABLE,
                concat!("the partition key column `", stringify!($pfield), "` cannot be an Option")
            );)+
            $($(assert!(
                !<$cty as $crate::ColumnValue>::NULLABLE,
                concat!("the clustering key column `", stringify!($cfield), "` cannot be an Option")
            );)*)?
        };

        impl $crate::Row for $name {
            const TABLE: &'static str = $table;

            fn spec() -> $crate::TableSpec {
                let mut spec = $crate::TableSpec::new($table);
                $(spec = $crate::typed::__column::<$pty>(spec, stringify!($pfield));)+
                $($(spec = $crate::typed::__column::<$cty>(spec, stringify!($cfield));)*)?
                $($(spec = $crate::typed::__column::<$ty>(spec, stringify!($field));)*)?
                spec.partition_key(&[$(stringify!($pfield)),+])
                    .clustering_key(&[$($(stringify!($cfield)),*)?])
            }

            fn push_values(self, values: &mut ::std::vec::Vec<$crate::Value>) {
                $(values.push($crate::ColumnValue::into_value(self.$pfield));)+
                $($(values.push($crate::ColumnValue::into_value(self.$cfield));)*)?
                $($(values.push($crate::ColumnValue::into_value(self.$field));)*)?
            }
        }
    };
}

/// Adds the column of field `name` of type `T`. Used by [`row!`](crate::row) only.
#[doc(hidden)]
pub fn __column<T: ColumnValue>(spec: TableSpec, name: &str) -> TableSpec {
    if T::NULLABLE {
        spec.nullable_column(name, T::TYPE)
    } else {
        spec.column(name, T::TYPE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::row! {
        /// A test row.
        pub struct Reading in "readings" {
            partition { sensor: String, site: i32 }
            clustering { time: Timestamp }
            columns { celsius: Option<f64>, raw: Vec<u8>, ok: bool, count: i64 }
        }
    }

    crate::row! {
        pub struct Bare in "bare" { partition { id: String } }
    }

    #[test]
    fn a_row_type_declares_its_table_in_field_order() {
        let spec = Reading::spec();
        assert_eq!(spec.validate(), Ok(()));
        let columns: Vec<(&str, ColumnType, bool)> = spec
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.column_type, c.nullable))
            .collect();
        assert_eq!(
            columns,
            [
                ("sensor", ColumnType::Text, false),
                ("site", ColumnType::Int, false),
                ("time", ColumnType::Timestamp, false),
                ("celsius", ColumnType::Double, true),
                ("raw", ColumnType::Blob, false),
                ("ok", ColumnType::Boolean, false),
                ("count", ColumnType::BigInt, false),
            ]
        );
        assert_eq!(spec.partition_key.len(), 2);
        assert_eq!(spec.clustering_key[0].as_str(), "time");
        let bare = Bare::spec();
        assert_eq!(bare.validate(), Ok(()));
        assert!(bare.clustering_key.is_empty());
    }

    #[test]
    fn a_row_becomes_its_values_in_column_order() {
        let mut values = Vec::new();
        Reading {
            sensor: "s".into(),
            site: 3,
            time: Timestamp(5),
            celsius: None,
            raw: vec![1],
            ok: true,
            count: 9,
        }
        .push_values(&mut values);
        assert_eq!(
            values,
            [
                Value::text("s"),
                Value::Int(3),
                Value::Timestamp(5),
                Value::Null,
                Value::blob(&[1]),
                Value::Boolean(true),
                Value::BigInt(9)
            ]
        );
    }

    #[test]
    fn a_crate_named_like_a_plugin_file_must_name_its_tenant_and_type() {
        let csv: &[&str] = &["csv"];
        assert!(identity_agrees("clientbatchingestapp_acme_csv", "acme", Some(csv)));
        assert!(identity_agrees(
            "clientbatchingestapp-acme_corp-csv",
            "acme_corp",
            Some(csv)
        ));
        assert!(identity_agrees(
            "clientbatchingestapp_acme_csv",
            "acme",
            Some(&["json", "csv"])
        ));
        assert!(!identity_agrees("clientbatchingestapp_acme_csv", "other", Some(csv)));
        assert!(!identity_agrees(
            "clientbatchingestapp_acme_csv",
            "acme",
            Some(&["json"])
        ));
        assert!(!identity_agrees("clientbatchingestapp_acme", "acme", Some(&["acme"])));
        assert!(identity_agrees("clientstreamingestapp_acme", "acme", None));
        assert!(!identity_agrees("clientstreamingestapp_acme", "acme2", None));
        // Built to be deployed under another name: the host checks it at load.
        assert!(identity_agrees("lab_plugin_v1", "lab", Some(csv)));
    }
}
