//! The small-files pass: `files` files of `rows` rows each, posted by `clients` parallel
//! clients, timed from the first request to the last file's report (the platform's `files_ok`
//! reaching the count). Each file has its own seed, so no two files share a key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{ADMIN_TOKEN, Platform, TenantSpec};

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

/// Runs one pass; files take seeds from `first_seed` on.
pub fn run(
    platform: &Platform,
    tenant: &TenantSpec,
    shape: Shape,
    extension: &str,
    spec: SmallFiles,
    first_seed: u64,
) -> anyhow::Result<Pass> {
    let (files_before, rows_before) = ingested(platform, &tenant.name);
    let next = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let clients: Vec<_> = (0..spec.clients.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut body = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= spec.files {
                            return Ok(());
                        }
                        body.clear();
                        Spec::rows(shape, spec.rows)
                            .with_seed(first_seed + index)
                            .write_to(&mut body)?;
                        let path = format!("/v1/tenants/{}/files?name=small-{index}.{extension}", tenant.name);
                        loop {
                            let (status, answer, headers) = platform.request("POST", &path, &tenant.token(), &body);
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
    let deadline = Instant::now() + Duration::from_secs(3600);
    let (files, rows) = loop {
        let (files, rows) = ingested(platform, &tenant.name);
        if files >= files_before + spec.files {
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
    })
}
