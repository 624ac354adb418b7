//! `mysimbdp-bench`: batch ingestion through the running platform beside the raw insert rate of
//! the same backend on the same rows, measured in the same run (and, on Cassandra, beside
//! `cqlsh COPY FROM` on the same file and node). Every figure is preceded by a warm-up of the
//! same kind; rounds use fresh keys, and odd rounds run the platform before the baseline. Each
//! pass also prints the CPU per row of the side that sent the rows and of the Cassandra server,
//! which is what limits a 2-core machine.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/mysimbdp-bench --backend embedded --rows 1000000
//! scripts/services.sh start cassandra            # MYSIMBDP_SERVICES_MODE=bench for benchmarks
//! target/release/mysimbdp-bench --backend cassandra --cassandra 127.0.0.1:9042 --rows 1000000 \
//!     --cqlsh "$(scripts/services.sh cqlsh)"
//! target/release/mysimbdp-bench --backend embedded --rows 200000 --small-files 10000 --small-rows 100 --clients 8
//! target/release/mysimbdp-bench --backend embedded --rows 200000 --small-files 10000 --small-data split
//! ```
//!
//! On the embedded backend the small-files pass is followed by raw SQLite inserts of small
//! files' rows (the pass's files, a transaction each; then as many new files, a platform group
//! of them per transaction), so the platform's small-file rate can be read against what the
//! store does with rows that arrive that way, and not only against the big file.

mod cassandra;
mod small_files;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use datagen::{Shape, Spec};
use mysimbdp_bench::{cpu, embedded, rows};
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
    /// The Cassandra server's pid, to report its CPU per row (default: the pid file of
    /// `scripts/services.sh`, when there is one).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Writes in flight: the platform's `max_writes_in_flight_per_tenant` (and its global cap,
    /// if lower) in this run, and the Cassandra baseline's requests in flight. The platform's
    /// default unless given.
    #[arg(long)]
    in_flight: Option<usize>,
    /// After the rounds, a small-files pass: this many files (0: none), compared with the
    /// big-file rounds of the same run.
    #[arg(long, default_value_t = 0)]
    small_files: u64,
    /// Rows per small file.
    #[arg(long, default_value_t = 100)]
    small_rows: u64,
    /// How the small files are made: `seeds` (each its own devices, no shared key) or `split`
    /// (one generated file cut into pieces: the big file's kind of rows).
    #[arg(long, value_enum, default_value = "seeds")]
    small_data: small_files::SmallData,
    /// Parallel clients posting the small files.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// The tenant's `max_files_number` (files in flight) for the small-files pass: beyond it an
    /// upload is answered 429 and sent again after its `Retry-After` (counted). Default: all
    /// the files at once, so that the pass measures the platform, not the limit.
    #[arg(long)]
    max_files: Option<u64>,
    /// More `mysimbdp.toml` for the platform (tables after its `[coredms]` keys), to measure a
    /// setting: `--platform-config $'[batch]\nworkers_per_tenant = 4'`.
    #[arg(long, default_value = "")]
    platform_config: String,
}

/// One measured pass.
struct Measure {
    what: String,
    rows: u64,
    bytes: u64,
    seconds: f64,
    cpu: cpu::CpuUse,
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
            "{:<58} {:>9} rows {:>7.2} s {:>9.0} rows/s {:>7.1} MB/s{ratio}{}",
            self.what,
            self.rows,
            self.seconds,
            self.rows_per_second(),
            self.bytes as f64 / 1e6 / self.seconds,
            self.cpu.per_row(self.rows)
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
    // The small files may all be in flight at once: the tenant's own limit (429, counted as a
    // retry) does not hold the clients back, and the pass measures the platform.
    tenant.max_files = args.max_files.unwrap_or(tenant.max_files.max(args.small_files));
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
    let defaults = mysimbdp::config::CoreDmsConfig::default();
    let in_flight = args.in_flight.unwrap_or(defaults.max_writes_in_flight_per_tenant);
    let platform_config = format!(
        "max_writes_in_flight = {}\nmax_writes_in_flight_per_tenant = {in_flight}\n",
        defaults.max_writes_in_flight.max(in_flight)
    ) + &args.platform_config;
    if args.backend == BackendArg::Cassandra {
        println!("# writes in flight: {in_flight} (the platform, one tenant; the driver baseline)");
    }
    let platform = Platform::start(backend, std::slice::from_ref(&tenant), &platform_config);
    let server_pid = match args.backend {
        BackendArg::Cassandra => args.server_pid.or_else(services_cassandra_pid),
        BackendArg::Embedded => None,
    };
    let mut cassandra = match args.backend {
        BackendArg::Cassandra => Some(runtime.block_on(cassandra::Baseline::connect(&args.cassandra, in_flight))?),
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
        "warmup",
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
        // Odd rounds run the platform first, so neither side always meets the compactions and
        // flushes the other's writes leave behind.
        let platform_first = round % 2 == 1;
        let mut platform_side = None;
        if platform_first {
            platform_side = Some(platform_round(&platform, &tenant, &path, server_pid, round, &data)?);
        }
        let (baseline, cpu) = cpu::during(Some(std::process::id()), server_pid, || {
            baseline_pass(
                &runtime,
                args.backend,
                &mut cassandra,
                work.path(),
                &format!("round{round}"),
                &data,
            )
        });
        let baseline = Measure { cpu, ..baseline? };
        if !platform_first {
            platform_side = Some(platform_round(&platform, &tenant, &path, server_pid, round, &data)?);
        }
        let PlatformRound { ingest, total, wall } = platform_side.expect("the platform ran this round");
        baseline.print(None);
        ingest.print(Some(&baseline));
        total.print(Some(&baseline));
        println!(
            "{:<58} {:>9} rows {wall:>7.2} s (client side, upload and polling included){}",
            format!("platform: wall clock, round {round}"),
            ingest.rows,
            if platform_first {
                "; ran before the baseline"
            } else {
                ""
            }
        );
        if let (Some(cqlsh), Some(baseline_side)) = (&args.cqlsh, &cassandra) {
            let (copy, cpu) = cpu::during(None, server_pid, || {
                runtime.block_on(baseline_side.cqlsh_copy(cqlsh, &path, args.shape, round))
            });
            Measure { cpu, ..copy? }.print(Some(&baseline));
        }
        baselines.push(baseline);
        platforms.push(ingest);
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
    if args.small_files > 0 {
        let spec = small_files::SmallFiles {
            files: args.small_files,
            rows: args.small_rows,
            clients: args.clients,
        };
        let warmup = small_files::SmallFiles {
            files: (spec.files / 10).clamp(1, 500),
            ..spec
        };
        println!("# small files: {:?}", args.small_data);
        let warm_bodies = small_files::bodies(args.small_data, data_shape, warmup, 1_000_000)?;
        small_files::run(&platform, &tenant, extension, spec.clients, &warm_bodies)?;
        drop(warm_bodies);
        let bodies = small_files::bodies(args.small_data, data_shape, spec, 2_000_000)?;
        let platform_pid = platform.pid().parse().ok();
        let (pass, cpu) = cpu::during(platform_pid, server_pid, || {
            small_files::run(&platform, &tenant, extension, spec.clients, &bodies)
        });
        let pass = pass?;
        let big = sum(&platforms);
        println!(
            "{:<58} {:>9} rows {:>7.2} s {:>9.0} rows/s {:>7.0} files/s  {:.3}× the big file, {:.2}× baseline{}",
            format!(
                "platform: {} files of {} rows, {} clients",
                pass.files, spec.rows, spec.clients
            ),
            pass.rows,
            pass.seconds,
            pass.rows_per_second(),
            pass.files_per_second(),
            pass.rows_per_second() / big,
            pass.rows_per_second() / sum(&baselines),
            cpu.per_row(pass.rows)
        );
        println!(
            "# small files: {:.0} files/s, {:.0} rows/s, {:.3}× the big-file rows/s of this run ({:.0}); {} uploads retried after 429/503",
            pass.files_per_second(),
            pass.rows_per_second(),
            pass.rows_per_second() / big,
            big,
            pass.retries
        );
        println!(
            "# small files: the last upload answered at {:.2} s; {}",
            pass.uploads_seconds, pass.stages
        );
        if args.backend == BackendArg::Embedded {
            // What the store itself does with rows that arrive in small files: the same files'
            // rows inserted raw, one transaction per file, into the baseline's database; then
            // as many new files' rows, a platform group's worth of files per transaction.
            let per_file = small_files_rows(args.shape, work.path(), extension, &bodies)?;
            let alone = runtime.block_on(embedded::raw_inserts(
                &work.path().join("raw"),
                &per_file,
                spec.rows as usize,
            ))?;
            let group = mysimbdp::batch::BatchConfig::default().group_files as u64;
            let more = small_files::bodies(args.small_data, data_shape, spec, 3_000_000)?;
            let more = small_files_rows(args.shape, work.path(), extension, &more)?;
            let grouped = runtime.block_on(embedded::raw_inserts(
                &work.path().join("raw"),
                &more,
                (spec.rows * group) as usize,
            ))?;
            let raw = |what: String, data: &rows::DataSet, elapsed: Duration| Measure {
                what,
                rows: data.rows() as u64,
                bytes: data.file_bytes,
                seconds: elapsed.as_secs_f64(),
                cpu: cpu::CpuUse::default(),
            };
            let alone = raw(
                "baseline: rusqlite, those files' rows, a transaction each".into(),
                &per_file,
                alone,
            );
            let grouped = raw(
                format!("baseline: rusqlite, new files, {group} per transaction"),
                &more,
                grouped,
            );
            alone.print(None);
            grouped.print(None);
            let big_raw = sum(&baselines);
            println!(
                "# small files against raw SQLite on small files' rows: platform {:.3}× a transaction per file, {:.3}× {group} files per transaction; those raw rates are {:.3}× and {:.3}× the big-file baseline",
                pass.rows_per_second() / alone.rows_per_second(),
                pass.rows_per_second() / grouped.rows_per_second(),
                alone.rows_per_second() / big_raw,
                grouped.rows_per_second() / big_raw,
            );
        }
    }
    Ok(())
}

/// The rows of small files, parsed as the baseline parses them, in order: one data set.
fn small_files_rows(arg: ShapeArg, work: &Path, extension: &str, bodies: &[Vec<u8>]) -> anyhow::Result<rows::DataSet> {
    let mut all: Option<rows::DataSet> = None;
    for body in bodies {
        let path = work.join(format!("small.{extension}"));
        std::fs::write(&path, body)?;
        let data = materialize(arg, &path)?;
        match &mut all {
            None => all = Some(data),
            Some(all) => {
                all.file_bytes += data.file_bytes;
                all.values.extend(data.values);
            }
        }
    }
    all.context("no small files")
}

/// The platform's side of a round: the report's two times and the client's wall clock.
struct PlatformRound {
    ingest: Measure,
    total: Measure,
    wall: f64,
}

fn platform_round(
    platform: &Platform,
    tenant: &TenantSpec,
    path: &Path,
    server_pid: Option<u32>,
    round: u64,
    data: &rows::DataSet,
) -> anyhow::Result<PlatformRound> {
    let platform_pid = platform.pid().parse().ok();
    let started = Instant::now();
    let (result, cpu) = cpu::during(platform_pid, server_pid, || platform_pass(platform, tenant, path));
    let wall = started.elapsed().as_secs_f64();
    let (ingest, total, rows) = result?;

    let measure = |what: &str, seconds: f64| Measure {
        what: format!("platform: {what}, round {round}"),
        rows,
        bytes: data.file_bytes,
        seconds,
        cpu,
    };
    Ok(PlatformRound {
        ingest: measure("upload → stored (report ingest_time)", ingest),
        total: measure("request → stored (total_process_time)", total),
        wall,
    })
}

/// The pid `scripts/services.sh` recorded for Cassandra, if it is there.
fn services_cassandra_pid() -> Option<u32> {
    let dir = std::env::var_os("MYSIMBDP_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.services"));
    std::fs::read_to_string(dir.join("cassandra/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
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
            // One database for the whole run, as the platform has one per tenant: both sides
            // write into a store that grows round after round.
            let elapsed = runtime.block_on(embedded::raw_inserts(&work.join("raw"), data, 2000))?;
            (
                "baseline: rusqlite, prepared INSERT, 2000 rows per transaction",
                elapsed,
            )
        }
        (BackendArg::Cassandra, Some(baseline)) => {
            let elapsed = runtime.block_on(baseline.raw_inserts(data))?;
            ("baseline: scylla driver, UNLOGGED batches of one partition", elapsed)
        }
        (BackendArg::Cassandra, None) => anyhow::bail!("no Cassandra connection"),
    };
    Ok(Measure {
        what: format!("{what}, {label}"),
        rows: data.rows() as u64,
        bytes: data.file_bytes,
        seconds: elapsed.as_secs_f64(),
        cpu: cpu::CpuUse::default(),
    })
}
