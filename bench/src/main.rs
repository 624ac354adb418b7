//! `mysimbdp-bench`: batch ingestion through the running platform beside the raw insert rate of
//! the same backend on the same rows, measured in the same run (and, on Cassandra, beside
//! `cqlsh COPY FROM` on the same file and node). Every figure is preceded by a warm-up of the
//! same kind; rounds use fresh keys and alternate baseline and platform.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/mysimbdp-bench --backend embedded --rows 1000000
//! scripts/services.sh start cassandra            # MYSIMBDP_SERVICES_MODE=bench for benchmarks
//! target/release/mysimbdp-bench --backend cassandra --cassandra 127.0.0.1:9042 --rows 1000000 \
//!     --cqlsh "$(scripts/services.sh cqlsh)"
//! ```

mod cassandra;
mod embedded;
mod rows;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{Backend, Platform, TenantSpec};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Embedded,
    Cassandra,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ShapeArg {
    Client1Csv,
    Client2Txt,
}

/// Batch ingestion benchmark.
#[derive(Parser)]
struct Args {
    /// Which backend.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Which data.
    #[arg(long, value_enum, default_value = "client1-csv")]
    shape: ShapeArg,
    /// Rows per measured round.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows of the warm-up of each side.
    #[arg(long, default_value_t = 300_000)]
    warmup_rows: u64,
    /// Measured rounds (baseline and platform alternate).
    #[arg(long, default_value_t = 2)]
    rounds: u64,
    /// The Cassandra node (`host:port`), for `--backend cassandra`.
    #[arg(long, default_value = "127.0.0.1:9042")]
    cassandra: String,
    /// A cqlsh executable (`scripts/services.sh cqlsh` prints one) to measure `COPY FROM`.
    #[arg(long)]
    cqlsh: Option<PathBuf>,
}

/// One measured pass.
struct Measure {
    what: String,
    rows: u64,
    bytes: u64,
    seconds: f64,
}

impl Measure {
    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }

    fn print(&self, baseline: Option<&Measure>) {
        let ratio = baseline.map_or(String::new(), |b| {
            format!("  {:.2}× baseline", self.rows_per_second() / b.rows_per_second())
        });
        println!(
            "{:<58} {:>9} rows {:>7.2} s {:>9.0} rows/s {:>7.1} MB/s{ratio}",
            self.what,
            self.rows,
            self.seconds,
            self.rows_per_second(),
            self.bytes as f64 / 1e6 / self.seconds
        );
    }
}

fn shape(arg: ShapeArg) -> (Shape, &'static str, &'static str, &'static str) {
    match arg {
        ShapeArg::Client1Csv => (Shape::Client1Csv, "client1", "csv", "readings"),
        ShapeArg::Client2Txt => (Shape::Client2Txt, "client2", "txt", "invocations"),
    }
}

fn generate(dir: &Path, spec: Spec, extension: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("data-{}.{extension}", spec.seed));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    spec.write_to(&mut file)?;
    std::io::Write::flush(&mut file)?;
    Ok(path)
}

fn materialize(arg: ShapeArg, path: &Path) -> anyhow::Result<rows::DataSet> {
    match arg {
        ShapeArg::Client1Csv => rows::client1_csv(path),
        ShapeArg::Client2Txt => rows::client2_txt(path),
    }
}

/// Uploads a file to the platform and returns (ingest time, request-to-stored time) from its report.
fn platform_pass(platform: &Platform, tenant: &TenantSpec, path: &Path) -> anyhow::Result<(f64, f64, u64)> {
    let file = std::fs::File::open(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).context("a file name")?;
    let (status, body) = platform.upload_reader(&tenant.name, &tenant.token(), name, file);
    anyhow::ensure!(status == 201, "upload refused: {body}");
    let report = platform.wait_for_report(
        &tenant.name,
        &tenant.token(),
        body["file_id"].as_str().unwrap_or_default(),
        Duration::from_secs(3600),
    );
    anyhow::ensure!(report["status"] == "done", "the file failed: {report}");
    Ok((
        report["ingest_time"].as_f64().unwrap_or_default(),
        report["total_process_time"].as_f64().unwrap_or_default(),
        report["rows_ingested"].as_u64().unwrap_or_default(),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.backend == BackendArg::Cassandra {
        // SAFETY: set before any other thread exists; the harness reads it to configure the platform.
        unsafe { std::env::set_var("MYSIMBDP_TEST_CASSANDRA", &args.cassandra) };
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let work = tempfile::Builder::new().prefix("mysimbdp-bench-").tempdir()?;
    let (data_shape, tenant_name, extension, table) = shape(args.shape);
    let mut tenant = TenantSpec::new(tenant_name, &[extension]);
    tenant.max_file_size = 64 << 30;
    let backend = match args.backend {
        BackendArg::Embedded => Backend::Embedded,
        BackendArg::Cassandra => Backend::Cassandra,
    };
    println!(
        "# mysimbdp-bench: {} rows of {tenant_name} {extension} per round, {} rounds, backend {}",
        args.rows,
        args.rounds,
        backend_name(args.backend)
    );
    let platform = Platform::start(backend, std::slice::from_ref(&tenant), "");
    let mut cassandra = match args.backend {
        BackendArg::Cassandra => Some(runtime.block_on(cassandra::Baseline::connect(&args.cassandra))?),
        BackendArg::Embedded => None,
    };

    // Warm-ups: the baseline and the platform each ingest a file first.
    let warm = generate(
        work.path(),
        Spec::rows(data_shape, args.warmup_rows).with_seed(1000),
        extension,
    )?;
    let warm_rows = materialize(args.shape, &warm)?;
    baseline_pass(
        &runtime,
        args.backend,
        &mut cassandra,
        work.path(),
        "warm-up",
        &warm_rows,
    )?;
    drop(warm_rows);
    platform_pass(&platform, &tenant, &warm)?;

    let mut baselines = Vec::new();
    let mut platforms = Vec::new();
    for round in 0..args.rounds {
        let path = generate(
            work.path(),
            Spec::rows(data_shape, args.rows).with_seed(round + 1),
            extension,
        )?;
        let data = materialize(args.shape, &path)?;
        let baseline = baseline_pass(
            &runtime,
            args.backend,
            &mut cassandra,
            work.path(),
            &format!("round{round}"),
            &data,
        )?;
        baseline.print(None);
        let started = Instant::now();
        let (ingest, total, rows) = platform_pass(&platform, &tenant, &path)?;
        let wall = started.elapsed().as_secs_f64();
        let measure = Measure {
            what: format!("platform: upload → stored (report ingest_time), round {round}"),
            rows,
            bytes: data.file_bytes,
            seconds: ingest,
        };
        measure.print(Some(&baseline));
        Measure {
            what: format!("platform: request → stored (total_process_time), round {round}"),
            rows,
            bytes: data.file_bytes,
            seconds: total,
        }
        .print(Some(&baseline));
        println!(
            "{:<58} {:>9} rows {wall:>7.2} s (client side, upload and polling included)",
            format!("platform: wall clock, round {round}"),
            rows
        );
        if let (Some(cqlsh), Some(baseline_side)) = (&args.cqlsh, &cassandra) {
            let copy = runtime.block_on(baseline_side.cqlsh_copy(cqlsh, &path, args.shape, round))?;
            copy.print(Some(&baseline));
        }
        baselines.push(baseline);
        platforms.push(measure);
    }
    let sum =
        |ms: &[Measure]| ms.iter().map(|m| m.rows as f64).sum::<f64>() / ms.iter().map(|m| m.seconds).sum::<f64>();
    println!(
        "# overall: platform {:.0} rows/s, baseline {:.0} rows/s, ratio {:.2} ({} rows of {table} per round)",
        sum(&platforms),
        sum(&baselines),
        sum(&platforms) / sum(&baselines),
        args.rows
    );
    Ok(())
}

fn backend_name(backend: BackendArg) -> &'static str {
    match backend {
        BackendArg::Embedded => "embedded (SQLite)",
        BackendArg::Cassandra => "cassandra",
    }
}

fn baseline_pass(
    runtime: &tokio::runtime::Runtime,
    backend: BackendArg,
    cassandra: &mut Option<cassandra::Baseline>,
    work: &Path,
    label: &str,
    data: &rows::DataSet,
) -> anyhow::Result<Measure> {
    let (what, elapsed) = match (backend, cassandra) {
        (BackendArg::Embedded, _) => {
            let dir = work.join(format!("raw-{label}"));
            let elapsed = runtime.block_on(embedded::raw_inserts(&dir, data, 2000))?;
            let _ = std::fs::remove_dir_all(&dir);
            (
                "baseline: rusqlite, prepared INSERT, 2000 rows per transaction",
                elapsed,
            )
        }
        (BackendArg::Cassandra, Some(baseline)) => {
            let elapsed = runtime.block_on(baseline.raw_inserts(data, label))?;
            ("baseline: scylla driver, UNLOGGED batches of one partition", elapsed)
        }
        (BackendArg::Cassandra, None) => anyhow::bail!("no Cassandra connection"),
    };
    Ok(Measure {
        what: format!("{what}, {label}"),
        rows: data.rows() as u64,
        bytes: data.file_bytes,
        seconds: elapsed.as_secs_f64(),
    })
}
