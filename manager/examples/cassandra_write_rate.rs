//! Write rate of the Cassandra backend against the raw `scylla` driver on the same rows: client1
//! readings from `datagen` (the `readings` table of the example plugin, partitioned by device and
//! day), written as UNLOGGED batches of 50 rows of one partition with 64 requests in flight, by
//!
//! - `raw`: a plain loop on the driver (typed tuples, rows grouped by partition, no limiter),
//!   sending the batches partition after partition (`raw-seq`) or with the partitions taking
//!   turns (`raw-rr`), and
//! - `coredms`: `CassandraDms::write`, one call with all the rows, or calls of `chunk` rows.
//!
//! Rounds alternate the three after a warm-up; each round writes fresh partitions (times shifted
//! by 400 days), and the rows stored are counted back at the end. Each round prints its rate;
//! the end prints the medians, their ratio, and the client's CPU per row (what this process
//! spends, beside what Cassandra spends, on a machine whose cores they share). The keyspaces
//! `mysimbdp_bench_coredms` and `mysimbdp_bench_raw` are dropped before and after.
//! `BENCH_ONLY=raw-seq|raw-rr|coredms` runs one mode alone (for a profiler).
//!
//! ```text
//! scripts/services.sh start cassandra
//! cargo run --release -p mysimbdp --example cassandra_write_rate -- 127.0.0.1:9042 [rows] [rounds] [chunk]
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use mysimbdp::coredms::cassandra::{CassandraConfig, CassandraDms};
use mysimbdp::coredms::{
    Column, ColumnType, CoreDms, Rows, TableSchema, TenantStorage, TenantStore, Value, WriteLimiter,
};
use mysimbdp::tenants::ReplicationClass;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

const IN_FLIGHT: usize = 64;
const ROWS_PER_BATCH: usize = 50;
const SHIFT_MS: i64 = 400 * 86_400_000;
const WARM_UP_ROUNDS: usize = 2;

type RawRow = (
    String,
    String,
    CqlTimestamp,
    f64,
    f64,
    f64,
    f64,
    bool,
    f64,
    bool,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let address = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:9042".into());
    let rows: u64 = args.get(2).map_or(Ok(200_000), |a| a.parse())?;
    let rounds: u32 = args.get(3).map_or(Ok(3), |a| a.parse())?;
    let chunk: usize = args.get(4).map_or(Ok(0), |a| a.parse())?;
    // For profiling one mode alone: BENCH_ONLY=raw-seq|raw-rr|coredms.
    let only = std::env::var("BENCH_ONLY")
        .ok()
        .and_then(|m| ["raw-seq", "raw-rr", "coredms"].iter().position(|n| *n == m));

    let readings = readings_table();
    let base = generate(rows);
    eprintln!("{} rows of client1 readings generated", base.len());

    let config = CassandraConfig {
        contact_points: vec![address.clone()],
        rows_per_batch: ROWS_PER_BATCH,
        ..CassandraConfig::default()
    };
    let session = SessionBuilder::new().known_node(&address).build().await?;
    for keyspace in ["mysimbdp_bench_coredms", "mysimbdp_bench_raw"] {
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
            .await?;
    }
    let dms = CassandraDms::connect(config, Arc::new(WriteLimiter::new(IN_FLIGHT, IN_FLIGHT))).await?;
    let ours_store = open(&dms, "bench_coredms", &readings).await?;
    let ours = Arc::clone(&ours_store);
    let raw_store = open(&dms, "bench_raw", &readings).await?;
    let insert = prepare_raw_insert(&session).await?;

    let mut round = 0i64;
    let mut written = [0u64; 3];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpu_per_row: [Vec<f64>; 3] = Default::default();
    eprintln!("warm-up: {} rounds", 3 * WARM_UP_ROUNDS);
    for measured in std::iter::repeat_n(false, WARM_UP_ROUNDS).chain(std::iter::repeat_n(true, rounds as usize)) {
        for (mode, rate) in rates.iter_mut().enumerate() {
            if only.is_some_and(|only| only != mode) {
                continue;
            }
            round += 1;
            let (seconds, cpu) = match mode {
                0 => raw(&session, &insert, &base, round, false).await?,
                1 => raw(&session, &insert, &base, round, true).await?,
                _ => coredms(ours.as_ref(), &readings, &base, round, chunk).await?,
            };
            written[mode] += base.len() as u64;
            if measured {
                rate.push(base.len() as f64 / seconds);
                cpu_per_row[mode].push(cpu * 1e6 / base.len() as f64);
            }
        }
        if measured {
            let [seq, rr, ours] = rates.each_ref().map(|r| r.last().copied().unwrap_or(0.0));
            println!(
                "round: raw-seq {seq:.0} rows/s, raw-rr {rr:.0} rows/s, coredms {ours:.0} rows/s, coredms / best raw {:.3}",
                ours / seq.max(rr)
            );
        }
    }
    let [seq, rr, ours] = rates.each_mut().map(|r| median(r));
    println!(
        "median of {rounds}: raw-seq {seq:.0} rows/s, raw-rr {rr:.0} rows/s, coredms {ours:.0} rows/s, coredms / best raw {:.3}",
        ours / seq.max(rr)
    );
    let [seq, rr, ours] = cpu_per_row.each_mut().map(|r| median(r));
    println!(
        "client CPU per row (median, timed part only): raw-seq {seq:.2} µs, raw-rr {rr:.2} µs, coredms {ours:.2} µs"
    );
    let (ours_count, raw_count) = (ours_store.count("readings").await?, raw_store.count("readings").await?);
    println!(
        "rows stored: coredms {ours_count} of {}, raw {raw_count} of {}",
        written[2],
        written[0] + written[1]
    );
    for keyspace in ["mysimbdp_bench_coredms", "mysimbdp_bench_raw"] {
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
            .await?;
    }
    Ok(())
}

/// CPU seconds (user + system) this process used so far, from `/proc/self/stat` (in clock
/// ticks of 1/100 s, Linux's fixed USER_HZ).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn open(
    dms: &CassandraDms,
    tenant: &str,
    table: &Arc<TableSchema>,
) -> Result<Arc<dyn TenantStore>, Box<dyn std::error::Error>> {
    let storage = TenantStorage {
        tenant: tenant.parse()?,
        replication_class: ReplicationClass::SimpleStrategy,
        replication_factor: 1,
    };
    let store = dms.open_tenant(&storage).await?;
    store.ensure_table(table).await?;
    Ok(store)
}

/// `coredms`: one write of all rows, or sequential writes of `chunk` rows.
async fn coredms(
    store: &dyn TenantStore,
    table: &Arc<TableSchema>,
    base: &[RawRow],
    round: i64,
    chunk: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let chunk = if chunk == 0 { base.len() } else { chunk };
    let batches: Vec<Rows> = base
        .chunks(chunk)
        .map(|rows| {
            let mut out = Rows::new(Arc::clone(table));
            out.values.reserve(rows.len() * 13);
            for row in rows {
                out.values.extend(values(row, round));
            }
            out
        })
        .collect();
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    for rows in batches {
        store.write(rows).await?;
    }
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    eprintln!("coredms round {round}: {:.0} rows/s", base.len() as f64 / seconds);
    Ok((seconds, cpu))
}

/// `raw`: rows grouped by partition into UNLOGGED batches, `IN_FLIGHT` at a time.
async fn raw(
    session: &Session,
    insert: &PreparedStatement,
    base: &[RawRow],
    round: i64,
    partitions_take_turns: bool,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let rows: Vec<RawRow> = base.iter().map(|r| shifted(r, round)).collect();
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let mut partitions: HashMap<(&str, &str), Vec<&RawRow>> = HashMap::new();
    for row in &rows {
        partitions.entry((&row.0, &row.1)).or_default().push(row);
    }
    let requests: Vec<&[&RawRow]> = if partitions_take_turns {
        let mut queues: Vec<_> = partitions.values().map(|p| p.chunks(ROWS_PER_BATCH)).collect();
        let mut requests = Vec::new();
        loop {
            let before = requests.len();
            requests.extend(queues.iter_mut().filter_map(Iterator::next));
            if requests.len() == before {
                break requests;
            }
        }
    } else {
        partitions.values().flat_map(|p| p.chunks(ROWS_PER_BATCH)).collect()
    };
    stream::iter(requests)
        .map(|request| async move {
            let mut batch = Batch::new_with_statements(
                BatchType::Unlogged,
                vec![BatchStatement::PreparedStatement(insert.clone()); request.len()],
            );
            batch.set_is_idempotent(true);
            session.batch(&batch, request).await
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    // Dropped inside the timed part, as `TenantStore::write` drops the rows it was given.
    drop(partitions);
    drop(rows);
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    let mode = if partitions_take_turns { "raw-rr" } else { "raw-seq" };
    eprintln!("{mode} round {round}: {:.0} rows/s", base.len() as f64 / seconds);
    Ok((seconds, cpu))
}

async fn prepare_raw_insert(session: &Session) -> Result<PreparedStatement, Box<dyn std::error::Error>> {
    let names: Vec<String> = readings_table()
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let statement = format!(
        "INSERT INTO \"mysimbdp_bench_raw\".\"readings\" ({}) VALUES ({})",
        names.join(", "),
        vec!["?"; names.len()].join(", ")
    );
    let mut prepared = session.prepare(statement).await?;
    prepared.set_is_idempotent(true);
    Ok(prepared)
}

fn shifted(row: &RawRow, round: i64) -> RawRow {
    let time = row.2.0 + round * SHIFT_MS;
    let mut row = row.clone();
    row.1 = plugin_api::time::date_of_millis(time);
    row.2 = CqlTimestamp(time);
    row
}

fn values(row: &RawRow, round: i64) -> [Value; 13] {
    let r = shifted(row, round);
    [
        Value::Text(r.0),
        Value::Text(r.1),
        Value::Timestamp(r.2.0),
        Value::Double(r.3),
        Value::Double(r.4),
        Value::Double(r.5),
        Value::Double(r.6),
        Value::Boolean(r.7),
        Value::Double(r.8),
        Value::Boolean(r.9),
        r.10.map_or(Value::Null, Value::Double),
        r.11.map_or(Value::Null, Value::Double),
        r.12.map_or(Value::Null, Value::Double),
    ]
}

/// client1 readings as the example plugin wrangles them (units, derived fields, day).
fn generate(rows: u64) -> Vec<RawRow> {
    let csv = datagen::Spec::rows(datagen::Shape::Client1Csv, rows).to_vec();
    let text = String::from_utf8(csv).unwrap_or_default();
    let number = |s: &str| s.trim().parse::<f64>().unwrap_or(0.0);
    let optional = |s: &str| (!s.trim().is_empty()).then(|| number(s));
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let time: i64 = f.first()?.parse().ok()?;
            let [x, y, z] = [number(f[3]), number(f[4]), number(f[5])].map(|mg| mg / 1000.0);
            let magnitude = (x * x + y * y + z * z).sqrt();
            let battery = number(f[6]) / 1000.0;
            Some((
                f[10].trim().to_ascii_lowercase(),
                plugin_api::time::date_of_millis(time),
                CqlTimestamp(time),
                magnitude,
                x,
                y,
                z,
                (magnitude - 1.0).abs() > 0.05,
                battery,
                battery < 2.8,
                optional(f[7]),
                optional(f[8]),
                optional(f[9]),
            ))
        })
        .collect()
}

fn readings_table() -> Arc<TableSchema> {
    let column = |name: &str, column_type, nullable| Column {
        name: name.into(),
        column_type,
        nullable,
    };
    Arc::new(TableSchema {
        name: "readings".into(),
        columns: vec![
            column("dev_id", ColumnType::Text, false),
            column("day", ColumnType::Text, false),
            column("time", ColumnType::Timestamp, false),
            column("acceleration_g", ColumnType::Double, false),
            column("acceleration_x_g", ColumnType::Double, false),
            column("acceleration_y_g", ColumnType::Double, false),
            column("acceleration_z_g", ColumnType::Double, false),
            column("moving", ColumnType::Boolean, false),
            column("battery_v", ColumnType::Double, false),
            column("battery_low", ColumnType::Boolean, false),
            column("humidity_pct", ColumnType::Double, true),
            column("pressure_hpa", ColumnType::Double, true),
            column("temperature_c", ColumnType::Double, true),
        ],
        partition_key: vec!["dev_id".into(), "day".into()],
        clustering_key: vec!["time".into()],
    })
}
