//! coredms conformance: one set of test bodies, run against both backends, asserting what a
//! user of the storage interface sees (rows read back, counts, error kinds).
//!
//! - `embedded::*` run on the SQLite backend in a temporary folder.
//! - `cassandra::*` run on the Cassandra node at `MYSIMBDP_TEST_CASSANDRA` (`host:port`, as
//!   `scripts/services.sh env cassandra` prints). Unset, they print `SKIPPED` and pass, unless
//!   `MYSIMBDP_REQUIRE_SERVICES=1`, when they fail.
//!
//! Every test uses fresh tenants (`conf_<pid>_<time>_<n>`), so reruns on the same node never
//! collide. A Cassandra test that passes drops its keyspaces; one that fails leaves them for
//! inspection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use mysimbdp::coredms::cassandra::{CassandraConfig, CassandraDms};
use mysimbdp::coredms::embedded::EmbeddedDms;
use mysimbdp::coredms::{
    Column, ColumnType, CoreDms, Rows, StoreError, StoreErrorKind, TableChange, TableSchema, TenantStorage,
    TenantStore, Value, WriteLimiter,
};
use mysimbdp::tenants::{ReplicationClass, TenantId};

const CASSANDRA_VAR: &str = "MYSIMBDP_TEST_CASSANDRA";

/// One backend under test, and the tenants a test opened in it.
struct Backend {
    dms: Arc<dyn CoreDms>,
    kind: Kind,
    tenants: Mutex<Vec<TenantStorage>>,
}

enum Kind {
    Embedded(tempfile::TempDir),
    /// The node's address.
    Cassandra(String),
}

impl Backend {
    fn embedded() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            dms: Arc::new(EmbeddedDms::new(dir.path(), limiter()).unwrap()),
            kind: Kind::Embedded(dir),
            tenants: Mutex::default(),
        }
    }

    /// The Cassandra backend, or `None` (after a loud SKIPPED) when no node is configured.
    async fn cassandra() -> Option<Backend> {
        let address = cassandra_address()?;
        Some(Backend {
            dms: connect_cassandra(&address).await,
            kind: Kind::Cassandra(address),
            tenants: Mutex::default(),
        })
    }

    /// A fresh tenant with SimpleStrategy, factor 1.
    async fn tenant(&self) -> Arc<dyn TenantStore> {
        self.tenant_with(ReplicationClass::SimpleStrategy, 1).await
    }

    async fn tenant_with(&self, class: ReplicationClass, factor: u32) -> Arc<dyn TenantStore> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let id = format!(
            "conf_{}_{}_{}",
            std::process::id(),
            now % 1_000_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let storage = TenantStorage {
            tenant: id.parse().unwrap(),
            replication_class: class,
            replication_factor: factor,
        };
        self.tenants.lock().unwrap().push(storage.clone());
        self.dms.open_tenant(&storage).await.unwrap()
    }

    /// The same tenant's store through a new backend instance (nothing cached in it).
    async fn reopen(&self, tenant: &TenantId) -> Arc<dyn TenantStore> {
        let dms: Arc<dyn CoreDms> = match &self.kind {
            Kind::Embedded(dir) => Arc::new(EmbeddedDms::new(dir.path(), limiter()).unwrap()),
            Kind::Cassandra(address) => connect_cassandra(address).await,
        };
        let storage = self
            .tenants
            .lock()
            .unwrap()
            .iter()
            .find(|s| &s.tenant == tenant)
            .cloned()
            .unwrap();
        dms.open_tenant(&storage).await.unwrap()
    }

    /// The same tenant's store as another platform process would see it: for Cassandra a new
    /// backend instance; for the embedded store (one process owns a data folder) this one.
    async fn another_process(&self, tenant: &TenantId) -> Arc<dyn TenantStore> {
        match &self.kind {
            Kind::Embedded(_) => {
                let storage = self
                    .tenants
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|s| &s.tenant == tenant)
                    .cloned()
                    .unwrap();
                self.dms.open_tenant(&storage).await.unwrap()
            }
            Kind::Cassandra(_) => self.reopen(tenant).await,
        }
    }

    /// After a passing test: drops the test's keyspaces (Cassandra).
    async fn finish(self) {
        let Kind::Cassandra(address) = &self.kind else { return };
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(address)
            .build()
            .await
            .unwrap();
        let tenants = self.tenants.lock().unwrap().clone();
        for storage in tenants {
            let drop = format!("DROP KEYSPACE IF EXISTS \"mysimbdp_{}\"", storage.tenant);
            if let Err(e) = session.query_unpaged(drop, &[]).await {
                eprintln!("could not drop the keyspace of {}: {e}", storage.tenant);
            }
        }
    }
}

fn limiter() -> Arc<WriteLimiter> {
    Arc::new(WriteLimiter::new(64, 32))
}

async fn connect_cassandra(address: &str) -> Arc<dyn CoreDms> {
    let config = CassandraConfig {
        contact_points: vec![address.to_string()],
        ..CassandraConfig::default()
    };
    let dms = CassandraDms::connect(config, limiter())
        .await
        .unwrap_or_else(|e| panic!("{CASSANDRA_VAR}={address} is set but: {e}"));
    Arc::new(dms)
}

fn cassandra_address() -> Option<String> {
    mysimbdp_tests::Service::Cassandra.address()
}

/// Each body runs once per backend: `embedded::<name>` and `cassandra::<name>`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let backend = super::Backend::embedded();
                    super::$name(&backend).await;
                    backend.finish().await;
                }
            )*
        }
        mod cassandra {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let Some(backend) = super::Backend::cassandra().await else { return };
                    super::$name(&backend).await;
                    backend.finish().await;
                }
            )*
        }
    };
}

conformance!(
    creating_a_table_twice_is_fine_but_a_change_that_cannot_be_applied_is_a_schema_error,
    a_declaration_with_new_nullable_columns_evolves_the_table_and_old_rows_still_fit,
    concurrent_evolvers_each_get_their_columns,
    concurrent_creators_agree_on_one_schema,
    invalid_or_reserved_table_names_are_refused,
    every_column_type_reads_back_exactly_as_written,
    the_same_key_written_twice_is_one_row_with_the_last_values,
    many_rows_written_concurrently_are_counted_and_paged_exactly_once,
    a_tenant_cannot_reach_another_tenants_tables,
    stored_bytes_grow_with_new_rows_and_not_with_rewritten_ones,
    both_replication_classes_make_a_working_store,
    a_malformed_page_token_is_invalid,
    an_unknown_table_is_not_found,
    a_table_being_created_is_either_not_found_or_readable,
);

// ---------------------------------------------------------------------------------------------
// Tables and values

fn column(name: &str, column_type: ColumnType, nullable: bool) -> Column {
    Column {
        name: name.into(),
        column_type,
        nullable,
    }
}

fn table(name: &str, columns: Vec<Column>, partition_key: &[&str], clustering_key: &[&str]) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        name: name.into(),
        columns,
        partition_key: partition_key.iter().map(|k| k.to_string()).collect(),
        clustering_key: clustering_key.iter().map(|k| k.to_string()).collect(),
    })
}

/// `(k text, c bigint, v text null, n double)`, key `((k), c)`.
fn key_value_table(name: &str) -> Arc<TableSchema> {
    table(
        name,
        vec![
            column("k", ColumnType::Text, false),
            column("c", ColumnType::BigInt, false),
            column("v", ColumnType::Text, true),
            column("n", ColumnType::Double, false),
        ],
        &["k"],
        &["c"],
    )
}

fn kv_row(k: &str, c: i64, v: Option<&str>, n: f64) -> Vec<Value> {
    vec![
        Value::Text(k.into()),
        Value::BigInt(c),
        v.map_or(Value::Null, |v| Value::Text(v.into())),
        Value::Double(n),
    ]
}

fn rows_of(table: &Arc<TableSchema>, rows: impl IntoIterator<Item = Vec<Value>>) -> Rows {
    let mut out = Rows::new(Arc::clone(table));
    for row in rows {
        assert_eq!(table.check_row(&row), Ok(()), "the test's own row must fit");
        out.values.extend(row);
    }
    out
}

/// Values compared exactly: doubles by their bits (so -0.0 is not 0.0 and NaN is NaN).
fn exact(value: &Value) -> String {
    match value {
        Value::Double(d) => format!("Double(bits {:016x})", d.to_bits()),
        Value::Blob(b) if b.len() > 64 => format!("Blob({} bytes, fnv {:016x})", b.len(), fnv(b)),
        other => format!("{other:?}"),
    }
}

fn exact_row(row: &[Value]) -> Vec<String> {
    row.iter().map(exact).collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Every row of a table, through `read_page` with pages of `limit`, checking the page sizes.
async fn read_all(store: &dyn TenantStore, table: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    let mut page = None;
    for _ in 0..100_000 {
        let got = store.read_page(table, page.as_deref(), limit).await.unwrap();
        assert!(
            got.rows.len() <= limit,
            "a page of {} rows for a limit of {limit}",
            got.rows.len()
        );
        rows.extend(got.rows);
        match got.next_page {
            Some(next) => page = Some(next),
            None => return rows,
        }
    }
    panic!("read_page never ended");
}

/// Rows keyed by their primary key (exact form).
fn by_key(table: &TableSchema, rows: Vec<Vec<Value>>) -> HashMap<Vec<String>, Vec<Value>> {
    let key = table.primary_key_indices();
    let mut out = HashMap::new();
    for row in rows {
        let k: Vec<String> = key.iter().map(|&i| exact(&row[i])).collect();
        assert!(out.insert(k.clone(), row).is_none(), "key {k:?} read twice");
    }
    out
}

fn assert_kind<T: std::fmt::Debug>(result: Result<T, StoreError>, kind: StoreErrorKind, what: &str) -> StoreError {
    match result {
        Err(e) if e.kind == kind => e,
        other => panic!("{what}: expected a {kind:?} error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The cases

async fn creating_a_table_twice_is_fine_but_a_change_that_cannot_be_applied_is_a_schema_error(backend: &Backend) {
    let store = backend.tenant().await;
    let t = key_value_table("kv");
    assert_eq!(store.check_table(&t).await.unwrap(), TableChange::Create);
    assert_eq!(store.ensure_table(&t).await.unwrap(), TableChange::Create);
    assert_eq!(store.ensure_table(&t).await.unwrap(), TableChange::Unchanged);
    // A version may require what the table allows to be null...
    let mut stricter = (*t).clone();
    stricter.columns[2].nullable = false;
    assert_eq!(store.ensure_table(&stricter).await.unwrap(), TableChange::Unchanged);
    // ...but not the other way round.
    let mut other = (*t).clone();
    other.columns[3].nullable = true;
    let error = assert_kind(
        store.ensure_table(&other).await,
        StoreErrorKind::Schema,
        "a required column made nullable",
    );
    assert!(error.message.contains("column n is required"), "{}", error.message);
    // The same through another connection to the same store (nothing cached there): the
    // declaration is kept with the data, nullability included.
    let again = backend.reopen(store.tenant()).await;
    assert_eq!(again.ensure_table(&t).await.unwrap(), TableChange::Unchanged);
    let error = assert_kind(
        again.ensure_table(&other).await,
        StoreErrorKind::Schema,
        "after a reopen",
    );
    assert!(error.message.contains("column n is required"), "{}", error.message);
    let mut other = (*t).clone();
    other.columns[3].column_type = ColumnType::BigInt;
    let error = assert_kind(
        store.check_table(&other).await,
        StoreErrorKind::Schema,
        "a different type (checked)",
    );
    assert!(
        error.message.contains("column n changes type from double to bigint"),
        "{}",
        error.message
    );
    assert_kind(
        store.ensure_table(&other).await,
        StoreErrorKind::Schema,
        "a different type",
    );
    let mut other = (*t).clone();
    other.clustering_key.clear();
    let error = assert_kind(
        store.ensure_table(&other).await,
        StoreErrorKind::Schema,
        "a different key",
    );
    assert!(error.message.contains("the key changes"), "{}", error.message);
    let mut other = (*t).clone();
    other.columns.push(column("extra", ColumnType::Text, false));
    let error = assert_kind(
        store.ensure_table(&other).await,
        StoreErrorKind::Schema,
        "a required new column",
    );
    assert!(error.message.contains("must be nullable"), "{}", error.message);
    // The declared schema is what `tables` shows, nullability included.
    assert_eq!(store.tables().await.unwrap(), vec![(*t).clone()]);
}

async fn a_declaration_with_new_nullable_columns_evolves_the_table_and_old_rows_still_fit(backend: &Backend) {
    let store = backend.tenant().await;
    let v1 = key_value_table("kv");
    store.ensure_table(&v1).await.unwrap();
    store
        .write(rows_of(&v1, (0..10).map(|c| kv_row("k", c, Some("one"), 1.0))))
        .await
        .unwrap();
    let mut wider = (*v1).clone();
    wider.columns.push(column("extra", ColumnType::Text, true));
    wider.columns.push(column("score", ColumnType::Int, true));
    let v2 = Arc::new(wider);
    let added = vec![
        column("extra", ColumnType::Text, true),
        column("score", ColumnType::Int, true),
    ];
    assert_eq!(
        store.check_table(&v2).await.unwrap(),
        TableChange::AddColumns(added.clone())
    );
    assert!(!store.column_has_data("kv", "extra").await.unwrap());
    assert_eq!(store.ensure_table(&v2).await.unwrap(), TableChange::AddColumns(added));
    assert_eq!(store.ensure_table(&v2).await.unwrap(), TableChange::Unchanged);
    assert_eq!(store.tables().await.unwrap(), vec![(*v2).clone()]);

    // Rows of the new version fill the new columns; the old rows read them as null.
    let row2 = |c: i64| {
        let mut row = kv_row("k", c, Some("two"), 2.0);
        row.extend([Value::Text(format!("extra {c}")), Value::Int(c as i32)]);
        row
    };
    store.write(rows_of(&v2, (5..15).map(row2))).await.unwrap();
    assert!(store.column_has_data("kv", "extra").await.unwrap());
    // A version still declaring the old columns (in flight during a reload) writes as before,
    // and leaves the new columns of the rows it rewrites alone.
    assert_eq!(store.ensure_table(&v1).await.unwrap(), TableChange::Unchanged);
    store
        .write(rows_of(&v1, [kv_row("k", 12, Some("one again"), 3.0)]))
        .await
        .unwrap();
    let read = by_key(&v2, read_all(store.as_ref(), "kv", 100).await);
    assert_eq!(read.len(), 15);
    let key = |c: i64| vec![exact(&Value::Text("k".into())), exact(&Value::BigInt(c))];
    assert_eq!(read[&key(0)][4..], [Value::Null, Value::Null]);
    assert_eq!(exact_row(&read[&key(7)]), exact_row(&row2(7)));
    let mut rewritten = kv_row("k", 12, Some("one again"), 3.0);
    rewritten.extend([Value::Text("extra 12".into()), Value::Int(12)]);
    assert_eq!(exact_row(&read[&key(12)]), exact_row(&rewritten));
    // Through another connection (nothing cached), the evolved declaration is the stored one.
    let again = backend.reopen(store.tenant()).await;
    assert_eq!(again.tables().await.unwrap(), vec![(*v2).clone()]);
    assert_eq!(again.count("kv").await.unwrap(), 15);
}

async fn concurrent_evolvers_each_get_their_columns(backend: &Backend) {
    let first = backend.tenant().await;
    let second = backend.another_process(first.tenant()).await;
    let base = key_value_table("evolving");
    first.ensure_table(&base).await.unwrap();
    let mut evolvers = tokio::task::JoinSet::new();
    for i in 0..4 {
        let mut wider = (*base).clone();
        wider
            .columns
            .push(column(&format!("extra_{i}"), ColumnType::Text, true));
        let store = Arc::clone(if i % 2 == 0 { &first } else { &second });
        evolvers.spawn(async move { store.ensure_table(&wider).await });
    }
    for outcome in evolvers.join_all().await {
        outcome.unwrap();
    }
    let declared = first.tables().await.unwrap();
    let names: Vec<&str> = declared[0].columns.iter().map(|c| c.name.as_str()).collect();
    for i in 0..4 {
        assert!(names.contains(&format!("extra_{i}").as_str()), "{names:?}");
    }
    assert_eq!(second.tables().await.unwrap(), declared);
}

async fn concurrent_creators_agree_on_one_schema(backend: &Backend) {
    let first = backend.tenant().await;
    let second = backend.another_process(first.tenant()).await;
    let mut schemas = Vec::new();
    for i in 0..6 {
        let mut t = (*key_value_table("contested")).clone();
        t.columns[2].nullable = i % 3 != 0; // three schemas, each asked for twice
        t.columns[3].column_type = if i % 3 == 1 {
            ColumnType::Double
        } else {
            ColumnType::BigInt
        };
        schemas.push(t);
    }
    let mut creators = tokio::task::JoinSet::new();
    for (i, schema) in schemas.iter().cloned().enumerate() {
        let store = Arc::clone(if i % 2 == 0 { &first } else { &second });
        creators.spawn(async move { (schema.clone(), store.ensure_table(&schema).await) });
    }
    let outcomes = creators.join_all().await;
    let declared = first.tables().await.unwrap();
    assert_eq!(declared.len(), 1);
    let winner = &declared[0];
    for (schema, outcome) in outcomes {
        match outcome {
            Ok(_) => assert!(
                winner.accepts(&schema).is_ok(),
                "a creator succeeded with a schema the winner cannot take: {schema:?}"
            ),
            Err(e) => {
                assert_eq!(e.kind, StoreErrorKind::Schema, "{e}");
                assert!(
                    winner.evolve_to(&schema).is_err(),
                    "a creator of a schema the winner takes failed: {e}"
                );
            }
        }
    }
    assert_eq!(second.tables().await.unwrap(), declared);
    // The winner's table works.
    let winner = Arc::new(winner.clone());
    let row = vec![
        Value::Text("k".into()),
        Value::BigInt(1),
        Value::Text("v".into()),
        if winner.columns[3].column_type == ColumnType::Double {
            Value::Double(1.0)
        } else {
            Value::BigInt(1)
        },
    ];
    second.write(rows_of(&winner, [row])).await.unwrap();
    assert_eq!(first.count("contested").await.unwrap(), 1);
}

async fn invalid_or_reserved_table_names_are_refused(backend: &Backend) {
    let store = backend.tenant().await;
    for name in [
        "t; drop table x",
        "T",
        "\"t\"",
        "mysimbdp_usage",
        "mysimbdp_tables",
        "",
        "1t",
        "a.b",
    ] {
        let mut t = (*key_value_table("kv")).clone();
        t.name = name.into();
        assert_kind(store.ensure_table(&t).await, StoreErrorKind::Invalid, name);
    }
    let mut t = (*key_value_table("kv")).clone();
    t.columns[1].name = "c\"; drop".into();
    t.clustering_key = vec!["c\"; drop".into()];
    assert_kind(
        store.ensure_table(&t).await,
        StoreErrorKind::Invalid,
        "a bad column name",
    );
    assert_eq!(store.tables().await.unwrap(), vec![]);
}

fn all_types_table() -> Arc<TableSchema> {
    table(
        "all_types",
        vec![
            column("k", ColumnType::Text, false),
            column("kb", ColumnType::BigInt, false),
            column("ki", ColumnType::Int, false),
            column("kts", ColumnType::Timestamp, false),
            column("t", ColumnType::Text, true),
            column("b", ColumnType::BigInt, true),
            column("i", ColumnType::Int, true),
            column("d", ColumnType::Double, true),
            column("f", ColumnType::Boolean, true),
            column("ts", ColumnType::Timestamp, true),
            column("blob", ColumnType::Blob, true),
        ],
        &["k", "kb"],
        &["ki", "kts"],
    )
}

fn all_types_rows() -> Vec<Vec<Value>> {
    let text = |s: &str| Value::Text(s.into());
    let large: Vec<u8> = (0..(1 << 20) + 17)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let doubles = [
        -0.0,
        0.0,
        5e-324,                      // the smallest subnormal
        -2.225_073_858_507_201e-308, // a negative subnormal
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        0.1,
        -1e300,
    ];
    let mut rows = vec![
        vec![
            text("🐢 tortoise 🦀"),
            Value::BigInt(i64::MIN),
            Value::Int(i32::MIN),
            Value::Timestamp(-1),
            text("Hello, 世界! مرحبا بالعالم שלום עולם 🏳️‍🌈 e\u{301} \u{202e}rtl\u{202c}"),
            Value::BigInt(i64::MAX),
            Value::Int(i32::MAX),
            Value::Double(-0.0),
            Value::Boolean(true),
            Value::Timestamp(-62_135_596_800_000), // 0001-01-01T00:00:00Z
            Value::Blob(large),
        ],
        vec![
            text("中文键"),
            Value::BigInt(i64::MAX),
            Value::Int(i32::MAX),
            Value::Timestamp(-2_208_988_800_001), // 1899-12-31T23:59:59.999Z
            text(""),
            Value::BigInt(i64::MIN),
            Value::Int(i32::MIN),
            Value::Double(5e-324),
            Value::Boolean(false),
            Value::Timestamp(-1),
            Value::Blob(vec![]),
        ],
        vec![
            text("עברית"),
            Value::BigInt(0),
            Value::Int(0),
            Value::Timestamp(0),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    ];
    for (n, d) in doubles.into_iter().enumerate() {
        rows.push(vec![
            text("doubles"),
            Value::BigInt(-1),
            Value::Int(n as i32),
            Value::Timestamp(-86_400_000 * n as i64),
            text("\u{0}nul inside\u{0}"),
            Value::BigInt(-(n as i64)),
            Value::Int(-(n as i32)),
            Value::Double(d),
            Value::Boolean(n % 2 == 0),
            Value::Timestamp(i64::MIN + n as i64),
            Value::Blob(vec![0, 255, n as u8]),
        ]);
    }
    rows
}

async fn every_column_type_reads_back_exactly_as_written(backend: &Backend) {
    let store = backend.tenant().await;
    let t = all_types_table();
    store.ensure_table(&t).await.unwrap();
    let written = all_types_rows();
    let rows = rows_of(&t, written.clone());
    let expected_bytes = rows.logical_bytes();
    let result = store.write(rows).await.unwrap();
    assert_eq!((result.rows, result.bytes), (written.len() as u64, expected_bytes));
    assert_eq!(store.count("all_types").await.unwrap(), written.len() as u64);
    let read = by_key(&t, read_all(store.as_ref(), "all_types", 4).await);
    assert_eq!(read.len(), written.len());
    let key = t.primary_key_indices();
    for row in &written {
        let k: Vec<String> = key.iter().map(|&i| exact(&row[i])).collect();
        let back = read.get(&k).unwrap_or_else(|| panic!("row {k:?} was not read back"));
        assert_eq!(exact_row(back), exact_row(row), "row {k:?}");
    }
}

async fn the_same_key_written_twice_is_one_row_with_the_last_values(backend: &Backend) {
    let store = backend.tenant().await;
    let t = key_value_table("kv");
    store.ensure_table(&t).await.unwrap();
    store
        .write(rows_of(&t, [kv_row("a", 1, Some("first"), 1.0)]))
        .await
        .unwrap();
    store.write(rows_of(&t, [kv_row("a", 1, None, 2.0)])).await.unwrap();
    assert_eq!(store.count("kv").await.unwrap(), 1);
    let read = read_all(store.as_ref(), "kv", 10).await;
    assert_eq!(exact_row(&read[0]), exact_row(&kv_row("a", 1, None, 2.0)));
    assert_eq!(read.len(), 1);

    // Within one write the last row of a key wins too, even with the other value "larger".
    let same_write = [
        kv_row("b", 1, Some("zzz later loses"), 9.0),
        kv_row("b", 2, Some("other key"), 0.0),
        kv_row("b", 1, Some("aaa last"), 1.0),
    ];
    store.write(rows_of(&t, same_write)).await.unwrap();
    let read = by_key(&t, read_all(store.as_ref(), "kv", 10).await);
    assert_eq!(read.len(), 3);
    let b1 = &read[&vec![exact(&Value::Text("b".into())), exact(&Value::BigInt(1))]];
    assert_eq!(exact_row(b1), exact_row(&kv_row("b", 1, Some("aaa last"), 1.0)));

    // A table keyed by its partition key alone.
    let single = table(
        "single",
        vec![
            column("k", ColumnType::Text, false),
            column("v", ColumnType::BigInt, false),
        ],
        &["k"],
        &[],
    );
    store.ensure_table(&single).await.unwrap();
    let rows = (0..5).map(|v| vec![Value::Text("x".into()), Value::BigInt(9 - v)]);
    store.write(rows_of(&single, rows)).await.unwrap();
    assert_eq!(store.count("single").await.unwrap(), 1);
    let read = read_all(store.as_ref(), "single", 10).await;
    assert_eq!(read, vec![vec![Value::Text("x".into()), Value::BigInt(5)]]);
}

fn many_table() -> Arc<TableSchema> {
    table(
        "many",
        vec![
            column("dev", ColumnType::Text, false),
            column("day", ColumnType::Text, false),
            column("time", ColumnType::Timestamp, false),
            column("value", ColumnType::Double, false),
            column("note", ColumnType::Text, true),
        ],
        &["dev", "day"],
        &["time"],
    )
}

fn many_row(n: u32) -> Vec<Value> {
    let partition = n % 100;
    vec![
        Value::Text(format!("dev{}", partition % 10)),
        Value::Text(format!("2018-11-{:02}", 1 + partition / 10)),
        Value::Timestamp(1_541_023_200_000 + i64::from(n)),
        Value::Double(f64::from(n) / 7.0),
        if n.is_multiple_of(3) {
            Value::Null
        } else {
            Value::Text(format!("row {n}"))
        },
    ]
}

async fn many_rows_written_concurrently_are_counted_and_paged_exactly_once(backend: &Backend) {
    const ROWS: u32 = 20_000;
    const WRITERS: u32 = 20;
    let store = backend.tenant().await;
    let t = many_table();
    store.ensure_table(&t).await.unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (store, t) = (Arc::clone(&store), Arc::clone(&t));
        // Each writer's rows spread over every partition.
        let rows = rows_of(&t, (0..ROWS).filter(|n| n % WRITERS == writer).map(many_row));
        writers.spawn(async move { store.write(rows).await });
    }
    let mut written = 0;
    while let Some(result) = writers.join_next().await {
        written += result.unwrap().unwrap().rows;
    }
    assert_eq!(written, u64::from(ROWS));
    assert_eq!(store.count("many").await.unwrap(), u64::from(ROWS));

    let read = by_key(&t, read_all(store.as_ref(), "many", 997).await);
    assert_eq!(read.len(), ROWS as usize);
    for n in 0..ROWS {
        let row = many_row(n);
        let key: Vec<String> = t.primary_key_indices().iter().map(|&i| exact(&row[i])).collect();
        assert_eq!(exact_row(&read[&key]), exact_row(&row), "row {n}");
    }
    // Limits are clamped to 1..=10000.
    assert_eq!(store.read_page("many", None, 0).await.unwrap().rows.len(), 1);
    assert_eq!(
        store.read_page("many", None, 1_000_000).await.unwrap().rows.len(),
        10_000
    );
}

async fn a_tenant_cannot_reach_another_tenants_tables(backend: &Backend) {
    let a = backend.tenant().await;
    let b = backend.tenant().await;
    let secret = key_value_table("secret");
    b.ensure_table(&secret).await.unwrap();
    b.write(rows_of(&secret, (0..3).map(|c| kv_row("s", c, Some("secret"), 1.0))))
        .await
        .unwrap();
    a.ensure_table(&key_value_table("t")).await.unwrap();
    let before = read_all(b.as_ref(), "secret", 10).await;

    let b_id = b.tenant().to_string();
    let names = [
        "secret".to_string(),
        format!("mysimbdp_{b_id}.secret"),
        format!("\"mysimbdp_{b_id}\".\"secret\""),
        format!("{b_id}.secret"),
        "\"t\"".into(),
        "t; drop table t".into(),
        "t\"; DROP KEYSPACE x; --".into(),
        "../secret".into(),
        "T".into(),
        String::new(),
        "mysimbdp_tables".into(),
        "mysimbdp_usage".into(),
        "mysimbdp_meta".into(),
    ];
    for name in &names {
        assert_kind(a.read_page(name, None, 10).await, StoreErrorKind::NotFound, name);
        assert_kind(a.count(name).await, StoreErrorKind::NotFound, name);
    }
    assert_eq!(
        a.tables()
            .await
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["t"]
    );
    // A writes rows shaped like B's table: they go to A's own (undeclared) table, not B's.
    assert_kind(
        a.write(rows_of(&secret, [kv_row("s", 0, Some("overwritten"), 2.0)]))
            .await,
        StoreErrorKind::NotFound,
        "a write to a table A never declared",
    );
    assert_eq!(b.count("secret").await.unwrap(), 3);
    assert_eq!(read_all(b.as_ref(), "secret", 10).await, before);
}

async fn stored_bytes_grow_with_new_rows_and_not_with_rewritten_ones(backend: &Backend) {
    let store = backend.tenant().await;
    assert_eq!(store.stored_bytes().await.unwrap(), 0, "a new tenant stores nothing");
    let t = key_value_table("kv");
    store.ensure_table(&t).await.unwrap();
    let empty = store.stored_bytes().await.unwrap();
    let rows = |first: i64| {
        rows_of(
            &t,
            (first..first + 3000).map(|c| kv_row(&format!("k{}", c % 30), c, (c % 2 == 0).then_some("välue"), 0.5)),
        )
    };
    // The accounting bytes are the values' payloads: text bytes, 8 per bigint or double.
    let written = store.write(rows(0)).await.unwrap();
    let expected: u64 = (0..3000i64)
        .map(|c| format!("k{}", c % 30).len() as u64 + 16 + if c % 2 == 0 { "välue".len() as u64 } else { 0 })
        .sum();
    assert_eq!((written.rows, written.bytes), (3000, expected));
    store.flush().await.unwrap();
    let once = store.stored_bytes().await.unwrap() - empty;
    assert!(once > 0, "{once}");
    if matches!(backend.kind, Kind::Cassandra(_)) {
        let error = once.abs_diff(expected) as f64 / expected as f64;
        assert!(error < 0.1, "Cassandra measures {once} bytes for {expected} written");
    }

    for _ in 0..2 {
        store.write(rows(0)).await.unwrap();
    }
    store.flush().await.unwrap();
    let thrice = store.stored_bytes().await.unwrap() - empty;
    assert!(
        thrice.abs_diff(once) as f64 <= once as f64 * 0.1,
        "the same rows written three times occupy {thrice} bytes, once {once}"
    );

    store.write(rows(3000)).await.unwrap();
    store.flush().await.unwrap();
    let doubled = store.stored_bytes().await.unwrap() - empty;
    assert!(
        doubled as f64 > once as f64 * 1.6,
        "twice the rows occupy {doubled} bytes, once {once}"
    );
}

async fn both_replication_classes_make_a_working_store(backend: &Backend) {
    for class in [
        ReplicationClass::SimpleStrategy,
        ReplicationClass::NetworkTopologyStrategy,
    ] {
        let store = backend.tenant_with(class, 1).await;
        let t = key_value_table("kv");
        store.ensure_table(&t).await.unwrap();
        store
            .write(rows_of(&t, (0..10).map(|c| kv_row("k", c, None, 1.0))))
            .await
            .unwrap();
        assert_eq!(store.count("kv").await.unwrap(), 10, "{class:?}");
        assert_eq!(read_all(store.as_ref(), "kv", 3).await.len(), 10, "{class:?}");
    }
}

async fn a_malformed_page_token_is_invalid(backend: &Backend) {
    let store = backend.tenant().await;
    let many = many_table();
    let kv = key_value_table("kv");
    store.ensure_table(&many).await.unwrap();
    store.ensure_table(&kv).await.unwrap();
    store.write(rows_of(&many, (0..50).map(many_row))).await.unwrap();
    store
        .write(rows_of(&kv, (0..50).map(|c| kv_row("k", c, None, 1.0))))
        .await
        .unwrap();
    let token = store.read_page("many", None, 10).await.unwrap().next_page.unwrap();
    let kv_token = store.read_page("kv", None, 10).await.unwrap().next_page.unwrap();
    let truncated = &token[..(token.len() / 2) & !1];
    for bad in [
        "",
        "zz",
        "abc",
        "00",
        "not a token",
        "é",
        "ffffffff",
        truncated,
        &kv_token,
    ] {
        assert_kind(
            store.read_page("many", Some(bad), 10).await,
            StoreErrorKind::Invalid,
            bad,
        );
    }
    // The good token still works.
    assert_eq!(store.read_page("many", Some(&token), 10).await.unwrap().rows.len(), 10);
}

async fn an_unknown_table_is_not_found(backend: &Backend) {
    let store = backend.tenant().await;
    assert_kind(
        store.read_page("nope", None, 10).await,
        StoreErrorKind::NotFound,
        "read",
    );
    assert_kind(store.count("nope").await, StoreErrorKind::NotFound, "count");
    let nope = key_value_table("nope");
    assert_kind(
        store.write(rows_of(&nope, [kv_row("k", 1, None, 1.0)])).await,
        StoreErrorKind::NotFound,
        "write",
    );
    // Rows claiming a declared table's name but a schema it cannot take are a Schema error.
    store.ensure_table(&key_value_table("kv")).await.unwrap();
    let mut other = (*key_value_table("kv")).clone();
    other.columns[3].column_type = ColumnType::Text;
    let other = Arc::new(other);
    assert_kind(
        store
            .write(rows_of(
                &other,
                [vec![
                    Value::Text("k".into()),
                    Value::BigInt(1),
                    Value::Null,
                    Value::Text("1".into()),
                ]],
            ))
            .await,
        StoreErrorKind::Schema,
        "write with another schema",
    );
    assert_eq!(store.count("kv").await.unwrap(), 0);
}

/// While a tenant's first writer creates a table, readers of it (the platform's read API, on
/// the same store) get NotFound or an answer, never an error, and once found it stays found.
async fn a_table_being_created_is_either_not_found_or_readable(backend: &Backend) {
    let store = backend.tenant().await;
    let table = key_value_table("kv");
    let creator = {
        let (store, table) = (Arc::clone(&store), Arc::clone(&table));
        tokio::spawn(async move { store.ensure_table(&table).await })
    };
    let mut found = false;
    loop {
        let finished = creator.is_finished();
        match store.count("kv").await {
            Ok(count) => {
                assert_eq!(count, 0);
                found = true;
            }
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                assert!(!finished && !found, "not found after it was found or created: {e}");
            }
            Err(e) => panic!("a reader while the table is created got: {e}"),
        }
        if finished {
            break;
        }
    }
    creator.await.unwrap().unwrap();
}

/// Not a conformance case (it needs no node): a node that is not there is an Unavailable error
/// that names the address, not a panic or a hang.
#[tokio::test(flavor = "multi_thread")]
async fn cassandra_connect_to_no_node_is_unavailable() {
    let config = CassandraConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        ..CassandraConfig::default()
    };
    let started = std::time::Instant::now();
    let error = match CassandraDms::connect(config, limiter()).await {
        Ok(_) => panic!("connected to 127.0.0.1:1"),
        Err(e) => e,
    };
    assert_eq!(error.kind, StoreErrorKind::Unavailable, "{error}");
    assert!(error.message.contains("127.0.0.1:1"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
