//! The small-files pass: `files` files of `rows` rows each, posted by `clients` parallel
//! clients, timed from the first request to the last file's report (the platform's `files_ok`
//! reaching the count). The files are made before the pass ([`bodies`]), in one of two ways
//! ([`SmallData`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{ADMIN_TOKEN, Platform, TenantSpec};

/// Where the small files' rows come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SmallData {
    /// Each file from a seed of its own: its own devices, no key shared with another file, so
    /// the rows land all over the store's key space.
    Seeds,
    /// One generated file cut into pieces, each with the header: the big file's kind of rows
    /// (a few devices, time going on), as devices that upload every minute send them.
    Split,
}

/// The bodies of `spec.files` files of `spec.rows` rows, from `seed` on.
pub fn bodies(data: SmallData, shape: Shape, spec: SmallFiles, seed: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    match data {
        SmallData::Seeds => (0..spec.files)
            .map(|index| {
                let mut body = Vec::new();
                Spec::rows(shape, spec.rows)
                    .with_seed(seed + index)
                    .write_to(&mut body)?;
                Ok(body)
            })
            .collect(),
        SmallData::Split => {
            let whole = Spec::rows(shape, spec.files * spec.rows).with_seed(seed).to_vec();
            let mut lines = whole.split_inclusive(|&b| b == b'\n');
            let header = lines.next().context("the generated file has a header")?;
            let lines: Vec<&[u8]> = lines.collect();
            Ok(lines
                .chunks(spec.rows.max(1) as usize)
                .map(|piece| {
                    let mut body = header.to_vec();
                    piece.iter().for_each(|line| body.extend_from_slice(line));
                    body
                })
                .collect())
        }
    }
}

/// What to send.
#[derive(Clone, Copy)]
pub struct SmallFiles {
    /// Files in the pass.
    pub files: u64,
    /// Rows per file.
    pub rows: u64,
    /// Parallel clients.
    pub clients: u64,
}

/// What a pass measured.
pub struct Pass {
    /// Files ingested.
    pub files: u64,
    /// Rows ingested (from the platform's statistics: rows the plugin rejected are not in it).
    pub rows: u64,
    /// First request to last report.
    pub seconds: f64,
    /// Uploads answered 429 or 503 and sent again.
    pub retries: u64,
    /// First request to the last 201.
    pub uploads_seconds: f64,
    /// Where the files' time went, from their reports.
    pub stages: Stages,
}

/// Medians over the pass's reports, in milliseconds, and the files per barrier.
#[derive(Debug, Default)]
pub struct Stages {
    /// Request to staged (the upload and its fsyncs).
    pub upload_ms: f64,
    /// Staged to the ingestion's start (waiting for a worker).
    pub queued_ms: f64,
    /// The ingestion's stages.
    pub prepare_ms: f64,
    /// The plugin call and its writes.
    pub plugin_and_writes_ms: f64,
    /// The wait for the group and the barrier.
    pub barrier_ms: f64,
    /// Files sharing a barrier: median and largest.
    pub group_median: f64,
    /// The largest group.
    pub group_max: u64,
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median ms: upload {:.1}, queued {:.1}, prepare {:.1}, plugin and writes {:.1}, barrier {:.1}; files per barrier: median {:.0}, max {}",
            self.upload_ms,
            self.queued_ms,
            self.prepare_ms,
            self.plugin_and_writes_ms,
            self.barrier_ms,
            self.group_median,
            self.group_max
        )
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The stages of the reports of files named `small-*` whose ingestion started after `since`
/// (seconds since the epoch).
fn stages(platform: &Platform, tenant: &str, since: f64) -> Stages {
    let log =
        std::fs::read_to_string(platform.dir.join(format!("client-reports/{tenant}_report.jsonl"))).unwrap_or_default();
    let reports: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|r| {
            r["client_file_name"].as_str().is_some_and(|n| n.starts_with("small-"))
                && r["ingest_start_time"].as_f64().is_some_and(|t| t >= since)
        })
        .collect();
    let ms =
        |f: &dyn Fn(&serde_json::Value) -> Option<f64>| median(reports.iter().filter_map(f).map(|s| s * 1e3).collect());
    let stage = |name: &'static str| move |r: &serde_json::Value| r["stages"][name].as_f64();
    let groups: Vec<f64> = reports
        .iter()
        .filter_map(|r| r["stages"]["group_files"].as_f64())
        .collect();
    Stages {
        upload_ms: ms(&|r| {
            Some(r["total_process_time"].as_f64()? - r["manager_process_time"].as_f64()? - r["ingest_time"].as_f64()?)
        }),
        queued_ms: ms(&|r| r["manager_process_time"].as_f64()),
        prepare_ms: ms(&stage("prepare")),
        plugin_and_writes_ms: ms(&stage("plugin_and_writes")),
        barrier_ms: ms(&stage("barrier")),
        group_max: groups.iter().copied().fold(0.0, f64::max) as u64,
        group_median: median(groups),
    }
}

impl Pass {
    /// Files per second.
    pub fn files_per_second(&self) -> f64 {
        self.files as f64 / self.seconds
    }

    /// Rows per second.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

/// The tenant's files and rows ingested so far, from `GET /v1/stats`.
fn ingested(platform: &Platform, tenant: &str) -> (u64, u64) {
    let (_, stats) = platform.get("/v1/stats", ADMIN_TOKEN);
    let of = |key: &str| stats["tenants"][tenant][key].as_u64().unwrap_or(0);
    (of("files_ok") + of("files_failed"), of("rows_ingested"))
}

/// Runs one pass of `bodies` (one file each).
pub fn run(
    platform: &Platform,
    tenant: &TenantSpec,
    extension: &str,
    clients: u64,
    bodies: &[Vec<u8>],
) -> anyhow::Result<Pass> {
    let count = bodies.len() as u64;
    let (files_before, rows_before) = ingested(platform, &tenant.name);
    let next = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let clients: Vec<_> = (0..clients.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = bodies.get(index as usize) else {
                            return Ok(());
                        };
                        let path = format!("/v1/tenants/{}/files?name=small-{index}.{extension}", tenant.name);
                        loop {
                            let (status, answer, headers) = platform.request("POST", &path, &tenant.token(), body);
                            match status {
                                201 => break,
                                429 | 503 => {
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    let wait = headers
                                        .get("retry-after")
                                        .and_then(|v| v.to_str().ok())
                                        .and_then(|v| v.parse::<f64>().ok())
                                        .unwrap_or(0.05);
                                    std::thread::sleep(Duration::from_secs_f64(wait.clamp(0.01, 1.0)));
                                }
                                _ => anyhow::bail!("upload {index} refused with {status}: {answer}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    let uploads_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let (files, rows) = loop {
        let (files, rows) = ingested(platform, &tenant.name);
        if files >= files_before + count {
            break (files - files_before, rows - rows_before);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the small files did not finish within an hour"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = started.elapsed().as_secs_f64();
    Ok(Pass {
        files,
        rows,
        seconds,
        retries: retries.load(Ordering::Relaxed),
        uploads_seconds,
        stages: stages(platform, &tenant.name, since),
    })
}
