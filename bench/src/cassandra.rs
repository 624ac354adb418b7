//! Cassandra baselines on the same node and rows: the `scylla` driver alone (prepared INSERTs in
//! UNLOGGED batches of at most 50 rows of one partition, as many requests in flight as the
//! platform lets one tenant have, consistency ONE: the best raw mode on one node, DESIGN.md),
//! and `cqlsh COPY FROM` on the same file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{self, TryStreamExt};
use mysimbdp::coredms::cassandra::{CassandraConfig, CassandraDms, ConsistencyLevel};
use mysimbdp::coredms::{CoreDms, TenantStorage, Value, WriteLimiter};
use mysimbdp::tenants::ReplicationClass;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};

use crate::{Measure, ShapeArg};
use mysimbdp_bench::rows::DataSet;

const ROWS_PER_BATCH: usize = 50;

/// A connection for the baselines, with keyspaces of its own.
pub struct Baseline {
    session: Session,
    dms: CassandraDms,
    prefix: String,
    in_flight: usize,
}

impl Baseline {
    /// Connects to `address`; the inserts keep `in_flight` requests in flight.
    pub async fn connect(address: &str, in_flight: usize) -> anyhow::Result<Self> {
        let session = SessionBuilder::new()
            .known_node(address)
            .build()
            .await
            .context("connecting to Cassandra")?;
        let prefix = format!("bench{}_", std::process::id() % 100_000);
        let config = CassandraConfig {
            contact_points: vec![address.to_string()],
            consistency: ConsistencyLevel::One,
            keyspace_prefix: prefix.clone(),
            ..CassandraConfig::default()
        };
        let dms = CassandraDms::connect(config, Arc::new(WriteLimiter::new(in_flight, in_flight))).await?;
        Ok(Baseline {
            session,
            dms,
            prefix,
            in_flight,
        })
    }

    /// Inserts `data` with the driver alone into a keyspace of its own, the same one all run
    /// long as the platform has one per tenant (its table created by the backend, so the schema
    /// is the platform's); returns the time the inserts took.
    pub async fn raw_inserts(&self, data: &DataSet) -> anyhow::Result<Duration> {
        let tenant = "raw";
        let storage = TenantStorage {
            tenant: tenant.parse().map_err(anyhow::Error::msg)?,
            replication_class: ReplicationClass::SimpleStrategy,
            replication_factor: 1,
        };
        self.dms.open_tenant(&storage).await?.ensure_table(&data.table).await?;
        let columns: Vec<String> = data.table.columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
        let marks = vec!["?"; columns.len()].join(", ");
        let cql = format!(
            "INSERT INTO \"{}{tenant}\".\"{}\" ({}) VALUES ({marks})",
            self.prefix,
            data.table.name,
            columns.join(", ")
        );
        let mut insert = self.session.prepare(cql).await?;
        insert.set_consistency(Consistency::One);

        let width = data.table.columns.len();
        let keys = data.table.partition_key_indices();
        let mut partitions: HashMap<String, Vec<&[Value]>> = HashMap::new();
        for row in data.values.chunks(width) {
            let key: Vec<String> = keys.iter().map(|&i| row[i].to_string()).collect();
            partitions.entry(key.join("\u{1f}")).or_default().push(row);
        }
        let requests: Vec<Vec<&[Value]>> = partitions
            .values()
            .flat_map(|rows| rows.chunks(ROWS_PER_BATCH).map(<[&[Value]]>::to_vec))
            .collect();

        let started = Instant::now();
        stream::iter(requests.into_iter().map(Ok::<_, anyhow::Error>))
            .try_for_each_concurrent(self.in_flight, |rows| {
                let insert = &insert;
                async move {
                    let statements = vec![BatchStatement::PreparedStatement(insert.clone()); rows.len()];
                    let mut batch = Batch::new_with_statements(BatchType::Unlogged, statements);
                    batch.set_consistency(Consistency::One);
                    self.session.batch(&batch, rows).await?;
                    Ok(())
                }
            })
            .await?;
        Ok(started.elapsed())
    }

    /// Loads the raw file with `cqlsh COPY FROM` (2 worker processes, as fast as cqlsh goes)
    /// into a table of the file's own columns.
    pub async fn cqlsh_copy(&self, cqlsh: &Path, file: &Path, shape: ShapeArg, round: u64) -> anyhow::Result<Measure> {
        let keyspace = format!("{}cqlsh{round}", self.prefix);
        let (table, columns) = match shape {
            ShapeArg::Client1Csv => (
                "CREATE TABLE t (time bigint, readable_time timestamp, acceleration double, acceleration_x double, acceleration_y double, acceleration_z double, battery double, humidity double, pressure double, temperature double, dev_id text, PRIMARY KEY ((dev_id), time))",
                "time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,pressure,temperature,dev_id",
            ),
            ShapeArg::Client2Txt => (
                "CREATE TABLE t (app text, func text, end_timestamp decimal, duration decimal, PRIMARY KEY ((app), func, end_timestamp))",
                "app,func,end_timestamp,duration",
            ),
        };
        self.session
            .query_unpaged(
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
                (),
            )
            .await?;
        self.session
            .query_unpaged(
                table.replace("CREATE TABLE t", &format!("CREATE TABLE IF NOT EXISTS {keyspace}.t")),
                (),
            )
            .await?;
        let copy = format!(
            "COPY {keyspace}.t ({columns}) FROM '{}' WITH HEADER=true AND DATETIMEFORMAT='%Y-%m-%dT%H:%M:%S.%f%z' AND NUMPROCESSES=2 AND INGESTRATE=1000000",
            file.display()
        );
        let started = Instant::now();
        // A benchmark may block a runtime thread while cqlsh runs.
        let output = std::process::Command::new(cqlsh)
            .args(["127.0.0.1", "9042", "-e", &copy])
            .output()?;
        let seconds = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "cqlsh failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rows = text
            .lines()
            .find_map(|l| {
                l.split_whitespace()
                    .next()
                    .filter(|_| l.contains("rows imported"))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0);
        let bytes = std::fs::metadata(file)?.len();
        Ok(Measure {
            what: format!("cqlsh COPY FROM (2 processes), round {round}"),
            rows,
            bytes,
            seconds,
            cpu: mysimbdp_bench::cpu::CpuUse::default(),
        })
    }
}
