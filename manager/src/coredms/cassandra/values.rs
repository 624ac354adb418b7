//! Our values on the wire: [`Value`] serializes itself into a bound statement without an
//! intermediate copy, results decode into [`Value`]s by the declared column types, and page
//! tokens carry the driver's paging state bound to the table they came from.

use scylla::cluster::metadata::ColumnType as CqlType;
use scylla::serialize::SerializationError;
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, WrittenCellProof};
use scylla::value::{CqlTimestamp, CqlValue};

use crate::coredms::{ColumnType, StoreError, StoreErrorKind, TableSchema, Value};
use crate::tenants::TenantId;

/// Version byte of page tokens.
const PAGE_TOKEN_VERSION: u8 = 1;

/// An identifier quoted for CQL (case kept, `"` doubled), so that any name is one identifier.
pub(super) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"keyspace"."table"`.
pub(super) fn qualified(keyspace: &str, table: &str) -> String {
    format!("{}.{}", quoted(keyspace), quoted(table))
}

/// The CQL type of a column type.
pub(super) fn cql_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Text => "text",
        ColumnType::BigInt => "bigint",
        ColumnType::Int => "int",
        ColumnType::Double => "double",
        ColumnType::Boolean => "boolean",
        ColumnType::Timestamp => "timestamp",
        ColumnType::Blob => "blob",
    }
}

impl SerializeValue for Value {
    fn serialize<'b>(&self, typ: &CqlType, writer: CellWriter<'b>) -> Result<WrittenCellProof<'b>, SerializationError> {
        match self {
            Value::Null => Ok(writer.set_null()),
            Value::Text(s) => s.as_str().serialize(typ, writer),
            Value::BigInt(n) => n.serialize(typ, writer),
            Value::Int(n) => n.serialize(typ, writer),
            Value::Double(n) => n.serialize(typ, writer),
            Value::Boolean(b) => b.serialize(typ, writer),
            Value::Timestamp(ms) => CqlTimestamp(*ms).serialize(typ, writer),
            Value::Blob(b) => b.as_slice().serialize(typ, writer),
        }
    }
}

/// A result cell as a [`Value`] of the declared type, or why it is not one.
pub(super) fn decode(cell: Option<CqlValue>, declared: ColumnType) -> Result<Value, String> {
    let Some(cell) = cell else {
        return Ok(Value::Null);
    };
    Ok(match (cell, declared) {
        (CqlValue::Text(s) | CqlValue::Ascii(s), ColumnType::Text) => Value::Text(s),
        (CqlValue::BigInt(n), ColumnType::BigInt) => Value::BigInt(n),
        (CqlValue::Int(n), ColumnType::Int) => Value::Int(n),
        (CqlValue::Double(n), ColumnType::Double) => Value::Double(n),
        (CqlValue::Boolean(b), ColumnType::Boolean) => Value::Boolean(b),
        (CqlValue::Timestamp(CqlTimestamp(ms)), ColumnType::Timestamp) => Value::Timestamp(ms),
        (CqlValue::Blob(b), ColumnType::Blob) => Value::Blob(b),
        (CqlValue::Empty, ColumnType::Text) => Value::Text(String::new()),
        (CqlValue::Empty, ColumnType::Blob) => Value::Blob(Vec::new()),
        (CqlValue::Empty, _) => Value::Null,
        (other, declared) => return Err(format!("a {other:?} in a {} column", declared.name())),
    })
}

/// Appends a value to a key, so that equal keys give equal bytes and different keys different
/// bytes (doubles by their bits, as Cassandra compares partition keys).
pub(super) fn push_key(key: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => key.push(0),
        Value::Text(s) => push_bytes(key, 1, s.as_bytes()),
        Value::BigInt(n) => push_fixed(key, 2, &n.to_be_bytes()),
        Value::Int(n) => push_fixed(key, 3, &n.to_be_bytes()),
        Value::Double(n) => push_fixed(key, 4, &n.to_bits().to_be_bytes()),
        Value::Boolean(b) => push_fixed(key, 5, &[u8::from(*b)]),
        Value::Timestamp(ms) => push_fixed(key, 6, &ms.to_be_bytes()),
        Value::Blob(b) => push_bytes(key, 7, b),
    }
}

fn push_fixed(key: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    key.push(tag);
    key.extend_from_slice(bytes);
}

fn push_bytes(key: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    key.push(tag);
    key.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    key.extend_from_slice(bytes);
}

/// A page token: hex of a version byte, a fingerprint of the tenant and table, and the driver's
/// paging state (safe in a URL; a token of another table is refused instead of misread).
pub(super) fn encode_page_token(tenant: &TenantId, table: &TableSchema, paging_state: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(9 + paging_state.len());
    bytes.push(PAGE_TOKEN_VERSION);
    bytes.extend_from_slice(&fingerprint(tenant, table).to_be_bytes());
    bytes.extend_from_slice(paging_state);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The paging state in a token this API returned for `table`, or an Invalid error.
pub(super) fn decode_page_token(tenant: &TenantId, table: &TableSchema, token: &str) -> Result<Vec<u8>, StoreError> {
    let bad = || {
        StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "page token {token:?} is not one this API returned for table {}",
                table.name
            ),
        )
    };
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    match bytes.split_first() {
        Some((&PAGE_TOKEN_VERSION, rest))
            if rest.len() > 8 && rest[..8] == fingerprint(tenant, table).to_be_bytes() =>
        {
            Ok(rest[8..].to_vec())
        }
        _ => Err(bad()),
    }
}

/// FNV-1a of `tenant/table` and the declared schema.
fn fingerprint(tenant: &TenantId, table: &TableSchema) -> u64 {
    let schema = serde_json::to_string(table).unwrap_or_default();
    let text = format!("{tenant}/{}/{schema}", table.name);
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coredms::Column;

    fn table(name: &str) -> TableSchema {
        TableSchema {
            name: name.into(),
            columns: vec![Column {
                name: "k".into(),
                column_type: ColumnType::Text,
                nullable: false,
            }],
            partition_key: vec!["k".into()],
            clustering_key: vec![],
        }
    }

    #[test]
    fn page_tokens_round_trip_and_belong_to_one_table() {
        let tenant: TenantId = "a".parse().unwrap();
        let token = encode_page_token(&tenant, &table("t"), &[1, 2, 3]);
        assert_eq!(decode_page_token(&tenant, &table("t"), &token).unwrap(), vec![1, 2, 3]);
        for bad in ["", "0", "zz", "00ff", "é1", &token[..18]] {
            let decoded = decode_page_token(&tenant, &table("t"), bad);
            assert_eq!(decoded.unwrap_err().kind, StoreErrorKind::Invalid, "{bad:?}");
        }
        assert!(decode_page_token(&tenant, &table("u"), &token).is_err());
        assert!(decode_page_token(&"b".parse().unwrap(), &table("t"), &token).is_err());
    }

    #[test]
    fn keys_of_different_values_differ() {
        let key = |values: &[Value]| {
            let mut k = Vec::new();
            values.iter().for_each(|v| push_key(&mut k, v));
            k
        };
        assert_ne!(key(&[Value::Double(0.0)]), key(&[Value::Double(-0.0)]));
        assert_ne!(
            key(&[Value::Text("ab".into()), Value::Text("c".into())]),
            key(&[Value::Text("a".into()), Value::Text("bc".into())])
        );
        assert_eq!(key(&[Value::BigInt(7)]), key(&[Value::BigInt(7)]));
        assert_ne!(key(&[Value::BigInt(7)]), key(&[Value::Timestamp(7)]));
    }

    #[test]
    fn names_are_quoted_as_one_identifier() {
        assert_eq!(quoted("t"), "\"t\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("ks", "t"), "\"ks\".\"t\"");
    }
}
