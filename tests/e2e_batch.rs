//! Batch ingestion end to end against the running platform, on both backends: concurrent
//! tenants, every constraint violation, bounded memory on a 2 GB file, and a kill -9 mid-file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datagen::{Generator, Shape, Spec};
use mysimbdp_tests::platform::{ADMIN_TOKEN, Backend, Platform, TenantSpec};
use mysimbdp_tests::{rss_kib, wait_until};
use serde_json::Value;

const SEED_FIELDS: [&str; 14] = [
    "file_received_size",
    "file_name",
    "file_path",
    "ingest_start_time",
    "ingest_end_time",
    "ingest_time",
    "rows_total",
    "rows_ingested",
    "rows_failed",
    "file_size",
    "ingest_rate_bs",
    "ingest_rate_rs",
    "manager_process_time",
    "total_process_time",
];

/// The seed's example tenants, scaled down (client1: csv and json, 5 files; client2: txt,
/// 2 files).
fn seed_tenants() -> (TenantSpec, TenantSpec) {
    let mut client1 = TenantSpec::new("client1", &["csv", "json"]);
    client1.max_files = 5;
    client1.max_file_size = 100 << 20;
    client1.max_memory = 10 << 30;
    let mut client2 = TenantSpec::new("client2", &["txt"]);
    client2.max_files = 2;
    client2.max_file_size = 500 << 20;
    client2.max_memory = 5 << 30;
    (client1, client2)
}

struct Upload {
    tenant: TenantSpec,
    name: &'static str,
    spec: Spec,
    multipart: bool,
}

#[test]
fn two_tenants_ingest_concurrently_and_the_store_holds_every_good_row_once() {
    for backend in Backend::all() {
        let (client1, client2) = seed_tenants();
        let platform = Platform::start(backend, &[client1.clone(), client2.clone()], "");
        let uploads = [
            Upload {
                tenant: client1.clone(),
                name: "readings.csv",
                spec: Spec::rows(Shape::Client1Csv, 15_679).with_malformed_every(1000),
                multipart: false,
            },
            Upload {
                tenant: client1.clone(),
                name: "readings.json",
                spec: Spec::rows(Shape::Client1JsonArray, 8000)
                    .with_seed(2)
                    .with_malformed_every(500),
                multipart: true,
            },
            Upload {
                tenant: client1.clone(),
                name: "more.json",
                spec: Spec::rows(Shape::Client1JsonLines, 6000)
                    .with_seed(3)
                    .with_malformed_every(300),
                multipart: false,
            },
            Upload {
                tenant: client2.clone(),
                name: "trace.txt",
                spec: Spec::rows(Shape::Client2Txt, 30_000)
                    .with_seed(4)
                    .with_malformed_every(700),
                multipart: false,
            },
            Upload {
                tenant: client2.clone(),
                name: "trace2.txt",
                spec: Spec::rows(Shape::Client2Txt, 12_000).with_seed(5),
                multipart: true,
            },
        ];
        let accepted: Vec<(usize, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = uploads
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let platform = &platform;
                    scope.spawn(move || {
                        let body = u.spec.to_vec();
                        let (status, response) = if u.multipart {
                            platform.upload_multipart(&u.tenant.name, &u.tenant.token(), u.name, &body)
                        } else {
                            platform.upload(&u.tenant.name, &u.tenant.token(), u.name, &body)
                        };
                        assert_eq!(status, 201, "{backend:?} {}: {response}", u.name);
                        (i, response["file_id"].as_str().unwrap().to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });

        let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, file_id) in &accepted {
            let u = &uploads[*i];
            let report = platform.wait_for_report(&u.tenant.name, &u.tenant.token(), file_id, Duration::from_secs(300));
            let rows = u.spec.rows.unwrap();
            let malformed = u.spec.malformed_among(rows);
            for field in SEED_FIELDS {
                assert!(
                    !report[field].is_null(),
                    "{backend:?} {}: report field {field} missing: {report}",
                    u.name
                );
            }
            assert_eq!(report["status"], "done", "{backend:?} {}: {report}", u.name);
            assert_eq!(report["rows_total"], rows, "{}", u.name);
            assert_eq!(report["rows_failed"], malformed, "{}", u.name);
            assert_eq!(report["rows_ingested"], rows - malformed, "{}", u.name);
            assert_eq!(report["client_file_name"], u.name);
            assert_eq!(report["plugin_version"], "1.0.0");
            assert_eq!(report["file_size"].as_u64().unwrap(), u.spec.to_vec().len() as u64);
            *expected
                .entry(if u.tenant.name == "client1" {
                    "client1"
                } else {
                    "client2"
                })
                .or_default() += rows - malformed;

            if malformed > 0 {
                let (status, page) = platform.get(
                    &format!("/v1/tenants/{}/files/{file_id}/rejected?limit=1000", u.tenant.name),
                    &u.tenant.token(),
                );
                assert_eq!(status, 200);
                let rejected = page["rows"].as_array().unwrap();
                assert_eq!(rejected.len() as u64, malformed.min(1000), "{}", u.name);
                assert!(
                    rejected
                        .iter()
                        .all(|r| r["line"].as_u64().unwrap() > 0 && !r["reason"].as_str().unwrap().is_empty())
                );
            }
        }
        assert_eq!(
            platform.count("client1", &client1.token(), "readings"),
            expected["client1"],
            "{backend:?}"
        );
        assert_eq!(
            platform.count("client2", &client2.token(), "invocations"),
            expected["client2"],
            "{backend:?}"
        );
        assert!(
            platform.staged_files().is_empty(),
            "staging is empty once every report is written"
        );

        let (status, stats) = platform.get("/v1/stats", ADMIN_TOKEN);
        assert_eq!(status, 200);
        assert_eq!(stats["tenants"]["client1"]["files_ok"], 3);
        assert_eq!(stats["tenants"]["client2"]["rows_ingested"], expected["client2"]);
        assert_eq!(stats["platform"]["files_ok"], 5);
        assert!(stats["platform"]["ingest_time_p95"].as_f64().unwrap() > 0.0);
        let (_, document) = platform.get("/v1/tenants/client1/reports", &client1.token());
        assert_eq!(document.as_object().unwrap().len(), 3);
        // The document on disk follows the reports within a second (the log is the record).
        let on_disk = || -> Value {
            std::fs::read(platform.dir.join("client-reports/client1_report.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default()
        };
        assert!(
            wait_until(Duration::from_secs(10), || on_disk() == document),
            "{} on disk, {document} by the API",
            on_disk()
        );
        let metrics = ureq_get_text(&platform, "/metrics");
        assert!(
            metrics.contains(&format!(
                "mysimbdp_rows_total{{tenant=\"client2\",outcome=\"ingested\"}} {}",
                expected["client2"]
            )),
            "{metrics}"
        );
    }
}

fn ureq_get_text(platform: &Platform, path: &str) -> String {
    let (_, body) = platform.get(path, "");
    body.as_str().unwrap_or_default().to_string()
}

fn assert_refused(platform: &Platform, response: (u16, Value), status: u16, message: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["error"].as_str(), Some(message), "{}", response.1);
    assert!(
        wait_until(Duration::from_secs(5), || platform.incoming_files().is_empty()),
        "no partial upload is left behind"
    );
}

#[test]
fn each_violation_gets_its_status_and_message_and_leaves_nothing_in_staging() {
    for backend in Backend::all() {
        let mut small = TenantSpec::new("client1", &["csv"]);
        small.max_file_size = 100_000;
        small.max_memory = 200_000;
        let lab = TenantSpec {
            max_files: 1,
            ..TenantSpec::new("lab", &["csv"])
        };
        let platform = Platform::start(backend, &[small.clone(), lab.clone()], MEASURE_AFTER_EVERY_FILE);
        platform.install_plugin("lab_plugin_v1", "libclientbatchingestapp_lab_csv.so");
        let csv = Spec::rows(Shape::Client1Csv, 300).to_vec();

        assert_refused(
            &platform,
            platform.upload("nobody", "x", "a.csv", &csv),
            401,
            "Client not found in customer data",
        );
        let response = platform.upload("client1", "lab-token", "a.csv", &csv);
        assert_eq!(response.0, 401, "{}", response.1);
        assert_refused(
            &platform,
            platform.upload("client1", &small.token(), "a.txt", &csv),
            403,
            "File type not allowed for client",
        );

        let big = Spec::rows(Shape::Client1Csv, 2000).to_vec();
        let expected = format!("File size exceeds maximum allowed size: {}/100000", big.len());
        assert_refused(
            &platform,
            platform.upload("client1", &small.token(), "big.csv", &big),
            413,
            &expected,
        );
        // A client that writes its whole body before it reads (ureq, Python requests) still gets
        // the refusal, not a reset connection, however far past the limit the body goes; and the
        // connection stays usable.
        let huge = Spec::bytes(Shape::Client1Csv, 24 << 20).to_vec();
        for _ in 0..3 {
            let response = platform.upload("client1", &small.token(), "huge.csv", &huge);
            assert_eq!(response.0, 413, "{}", response.1);
        }
        // Without Content-Length the upload stops where it crosses the limit.
        let response = platform.upload_reader("client1", &small.token(), "big.csv", &big[..]);
        assert_eq!(response.0, 413, "{}", response.1);
        assert!(
            response.1["error"]
                .as_str()
                .unwrap()
                .starts_with("File size exceeds maximum allowed size: ")
        );
        assert!(wait_until(Duration::from_secs(5), || platform
            .incoming_files()
            .is_empty()));

        // The quota (200 kB) is on what the tenant's data occupies: files are accepted while
        // it occupies less, then refused.
        let mut accepted = 0;
        loop {
            let file = Spec::bytes(Shape::Client1Csv, 90_000).with_seed(accepted + 10).to_vec();
            let response = platform.upload("client1", &small.token(), "q.csv", &file);
            if response.0 == 507 {
                assert_refused(
                    &platform,
                    response,
                    507,
                    "There is not enough memory on the client disk for the file.",
                );
                break;
            }
            assert_eq!(response.0, 201, "{}", response.1);
            accepted += 1;
            assert!(accepted <= 10, "{backend:?}: the quota never applied");
            let report = platform.wait_for_report(
                "client1",
                &small.token(),
                response.1["file_id"].as_str().unwrap(),
                Duration::from_secs(60),
            );
            wait_for_usage_after(&platform, &small, &report);
        }
        assert!(accepted >= 2, "{backend:?}: refused after {accepted} files");

        // Too many files: lab may have one in flight; hold one with a plugin that waits.
        let release = platform.dir.join("release");
        let (status, first) = platform.upload(
            "lab",
            &lab.token(),
            "hold.csv",
            format!("a,1\nWAIT {}\n", release.display()).as_bytes(),
        );
        assert_eq!(status, 201, "{first}");
        let response = platform.upload("lab", &lab.token(), "more.csv", b"b,2\n");
        assert_refused(&platform, response.clone(), 429, "Maximum number of files uploaded");
        std::fs::write(&release, "").unwrap();
        platform.wait_for_report(
            "lab",
            &lab.token(),
            first["file_id"].as_str().unwrap(),
            Duration::from_secs(60),
        );
        assert_eq!(
            platform.upload("lab", &lab.token(), "more.csv", b"b,2\n").0,
            201,
            "the slot is free again"
        );

        assert!(
            wait_until(Duration::from_secs(30), || platform.staged_files().is_empty()),
            "{:?}",
            platform.staged_files()
        );
        let (_, stats) = platform.get("/v1/stats", ADMIN_TOKEN);
        assert_eq!(
            stats["tenants"]["client1"]["files_ok"], accepted,
            "refused uploads never reach ingestion"
        );
    }
}

/// Waits until the tenant's usage was measured after `report`'s file was stored; returns it.
/// These tests check the usage figure after each file: the platform measures it after every
/// change, not only near the quota or every five minutes.
const MEASURE_AFTER_EVERY_FILE: &str = "[usage]\nmax_age_seconds = 0\n";

fn wait_for_usage_after(platform: &Platform, tenant: &TenantSpec, report: &Value) -> u64 {
    let stored_at = report["ingest_end_time"].as_f64().unwrap();
    let mut used = None;
    let measured = wait_until(Duration::from_secs(120), || {
        let (_, stats) = platform.get(&format!("/v1/tenants/{}/stats", tenant.name), &tenant.token());
        used = stats["storage_used_bytes"].as_u64();
        stats["storage_measured_at"].as_f64().is_some_and(|at| at > stored_at)
    });
    assert!(measured, "the usage of {} was not measured after its file", tenant.name);
    used.unwrap()
}

#[test]
fn re_ingesting_the_same_file_adds_no_usage_and_never_trips_the_quota() {
    for backend in Backend::all() {
        let client1 = TenantSpec::new("client1", &["csv"]);
        let mut platform = Platform::start(backend, std::slice::from_ref(&client1), MEASURE_AFTER_EVERY_FILE);
        let file = Spec::rows(Shape::Client1Csv, 20_000).to_vec();
        let upload = |platform: &Platform, body: &[u8]| {
            let (status, response) = platform.upload("client1", &client1.token(), "same.csv", body);
            assert_eq!(status, 201, "{backend:?}: {response}");
            platform.wait_for_report(
                "client1",
                &client1.token(),
                response["file_id"].as_str().unwrap(),
                Duration::from_secs(120),
            )
        };
        let once = wait_for_usage_after(&platform, &client1, &upload(&platform, &file));
        upload(&platform, &file);
        let thrice = wait_for_usage_after(&platform, &client1, &upload(&platform, &file));
        eprintln!(
            "{backend:?}: {} bytes of CSV occupy {once} bytes; after three uploads {thrice}",
            file.len()
        );
        assert!(
            thrice.abs_diff(once) as f64 <= once as f64 * 0.1,
            "{backend:?}: one upload {once} bytes, three {thrice}"
        );

        // A quota just above what the data occupies: the same file again is accepted and adds
        // nothing; new data is accepted (below the quota) and then the quota is reached.
        let mut tight = client1.clone();
        tight.max_memory = thrice + thrice / 50;
        platform.write_customers(&mysimbdp_tests::platform::customer_information(std::slice::from_ref(
            &tight,
        )));
        assert!(wait_until(Duration::from_secs(10), || {
            platform.get("/v1/tenants/client1/stats", &client1.token()).1["max_memory_size"] == tight.max_memory
        }));
        let again = wait_for_usage_after(&platform, &client1, &upload(&platform, &file));
        assert!(again < tight.max_memory, "{backend:?}: {again} bytes after a re-ingest");
        let other = Spec::rows(Shape::Client1Csv, 20_000).with_seed(99).to_vec();
        let over = wait_for_usage_after(&platform, &client1, &upload(&platform, &other));
        assert!(
            over >= tight.max_memory,
            "{backend:?}: {over} bytes with twice the rows"
        );
        let (status, body) = platform.upload("client1", &client1.token(), "same.csv", &file);
        assert_eq!(status, 507, "{backend:?}: {body}");

        // After a restart the usage is measured again without any upload.
        platform.restart();
        let mut after_restart = None;
        assert!(wait_until(Duration::from_secs(60), || {
            after_restart =
                platform.get("/v1/tenants/client1/stats", &client1.token()).1["storage_used_bytes"].as_u64();
            after_restart.is_some()
        }));
        assert!(
            after_restart.unwrap().abs_diff(over) as f64 <= over as f64 * 0.1,
            "{backend:?}: {over} bytes before the restart, {after_restart:?} after"
        );
    }
}

/// Samples the platform's RSS every 100 ms until `done` is set; returns the peak, in KiB.
fn sample_rss(pid: String, done: &std::sync::atomic::AtomicBool) -> u64 {
    let mut peak = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        peak = peak.max(rss_kib(&pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    peak
}

#[test]
fn a_2_gb_file_ingests_with_the_platform_under_300_mb_of_rss() {
    if !mysimbdp_tests::slow_tier("a 2 GiB file") {
        return;
    }
    let chosen: Option<u64> = std::env::var("MYSIMBDP_TEST_BIG_FILE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok());
    for backend in Backend::all() {
        // 2 GiB on the embedded store; 1 GiB on Cassandra, where 2 GiB takes 4 minutes of the
        // 20 the whole suite may take (the pipeline whose memory is bounded is the same one).
        let bytes = chosen.unwrap_or(if backend == Backend::Embedded { 2 << 30 } else { 1 << 30 });
        let mut client1 = TenantSpec::new("client1", &["csv"]);
        client1.max_file_size = 3 << 30;
        let platform = Platform::start(backend, &[client1.clone()], "");
        let spec = Spec::bytes(Shape::Client1Csv, bytes).with_malformed_every(100_000);
        let done = std::sync::atomic::AtomicBool::new(false);
        let started = Instant::now();
        let (peak_kib, report) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| sample_rss(platform.pid(), &done));
            let mut generator = Generator::new(spec);
            let (status, body) = platform.upload_reader("client1", &client1.token(), "big.csv", &mut generator);
            assert_eq!(status, 201, "{body}");
            let report = platform.wait_for_report(
                "client1",
                &client1.token(),
                body["file_id"].as_str().unwrap(),
                Duration::from_secs(1500),
            );
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let stats = generator.stats();
            assert_eq!(report["rows_total"], stats.rows);
            assert_eq!(report["rows_ingested"], stats.good_rows());
            (sampler.join().unwrap(), report)
        });
        eprintln!(
            "{backend:?}: {} bytes, {} rows in {:.1} s end to end (ingest {:.1} s, {:.0} rows/s); peak RSS {} MiB",
            report["file_size"],
            report["rows_ingested"],
            started.elapsed().as_secs_f64(),
            report["ingest_time"].as_f64().unwrap(),
            report["ingest_rate_rs"].as_f64().unwrap(),
            peak_kib / 1024
        );
        assert_eq!(report["status"], "done");
        assert!(report["file_size"].as_u64().unwrap() >= bytes);
        assert!(peak_kib < 300 * 1024, "{backend:?}: peak RSS {} MiB", peak_kib / 1024);
        assert_eq!(
            platform.count("client1", &client1.token(), "readings"),
            report["rows_ingested"].as_u64().unwrap()
        );
    }
}

#[test]
fn kill_9_during_a_large_file_then_restart_completes_it_without_duplicate_rows() {
    if !mysimbdp_tests::slow_tier("kill -9 during a large file") {
        return;
    }
    for backend in Backend::all() {
        let mut client1 = TenantSpec::new("client1", &["csv"]);
        client1.max_file_size = 1 << 30;
        let mut platform = Platform::start(backend, &[client1.clone()], "");
        let spec = Spec::rows(Shape::Client1Csv, 1_500_000).with_malformed_every(10_000);
        let (status, body) = platform.upload("client1", &client1.token(), "large.csv", &spec.to_vec());
        assert_eq!(status, 201, "{body}");
        let file_id = body["file_id"].as_str().unwrap().to_string();
        assert!(
            wait_until(Duration::from_secs(120), || {
                let (_, status) = platform.get(&format!("/v1/tenants/client1/files/{file_id}"), &client1.token());
                status["status"] == "ingesting"
                    && platform.count_so_far("client1", &client1.token(), "readings") > 50_000
            }),
            "the file is part-way in: {}",
            platform.tail_log()
        );
        platform.kill9();
        platform.restart();
        let report = platform.wait_for_report("client1", &client1.token(), &file_id, Duration::from_secs(600));
        assert_eq!(report["status"], "done", "{report}");
        assert_eq!(report["attempts"], 2, "the file was redone after the crash");
        let good = 1_500_000 - spec.malformed_among(1_500_000);
        assert_eq!(report["rows_ingested"], good);
        assert_eq!(
            platform.count("client1", &client1.token(), "readings"),
            good,
            "{backend:?}: no duplicate rows"
        );
        assert!(platform.staged_files().is_empty());
    }
}

/// Posts `files` files of 100 client1 rows (seeds from 1) from 4 clients until the platform
/// answers or goes away; returns the ids of the files it acknowledged.
fn post_small_files_until_it_goes(platform: &Platform, client1: &TenantSpec, files: u64) -> Vec<String> {
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if index >= files {
                        return;
                    }
                    let body = Spec::rows(Shape::Client1Csv, 100).with_seed(index + 1).to_vec();
                    let posted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        platform.upload("client1", &client1.token(), &format!("small-{index}.csv"), &body)
                    }));
                    match posted {
                        Ok((201, answer)) => acknowledged
                            .lock()
                            .unwrap()
                            .push(answer["file_id"].as_str().unwrap().to_string()),
                        Ok((status, answer)) => panic!("upload {index} answered {status}: {answer}"),
                        // The platform went away mid-request.
                        Err(_) => return,
                    }
                }
            });
        }
    });
    acknowledged.into_inner().unwrap()
}

#[test]
fn a_crash_between_small_files_durable_rows_and_their_reports_redoes_exactly_the_unreported_files() {
    for backend in Backend::all() {
        for point in ["batch.after_barrier", "batch.after_report"] {
            let mut client1 = TenantSpec::new("client1", &["csv"]);
            client1.max_files = 200;
            let mut platform = Platform::start_crashing_at(backend, std::slice::from_ref(&client1), "", point);
            let acknowledged = post_small_files_until_it_goes(&platform, &client1, 60);
            assert!(
                platform.wait_for_exit(Duration::from_secs(60)),
                "{backend:?}: the platform reached {point}: {}",
                platform.tail_log()
            );
            assert!(platform.log().contains(&format!("crash point {point} reached")));
            platform.start_again();
            for id in &acknowledged {
                let report = platform.wait_for_report("client1", &client1.token(), id, Duration::from_secs(60));
                assert_eq!(report["status"], "done", "{report}");
                assert_eq!(report["rows_ingested"], 100, "{report}");
            }
            assert!(wait_until(Duration::from_secs(60), || platform
                .staged_files()
                .is_empty()));
            // Each file reported once in the log: none lost, none redone after its report.
            let log = std::fs::read_to_string(platform.dir.join("client-reports/client1_report.jsonl")).unwrap();
            let mut reported: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for line in log.lines() {
                let report: Value = serde_json::from_str(line).unwrap();
                reported
                    .entry(report["file_id"].as_str().unwrap().to_string())
                    .or_default()
                    .push(report);
            }
            for (id, reports) in &reported {
                assert_eq!(reports.len(), 1, "{backend:?} {point}: file {id} reported {reports:?}");
            }
            for id in &acknowledged {
                assert!(
                    reported.contains_key(id),
                    "{backend:?} {point}: acknowledged file {id} has no report"
                );
            }
            assert_eq!(
                platform.count("client1", &client1.token(), "readings"),
                100 * reported.len() as u64,
                "{backend:?} {point}: every reported file's rows once"
            );
            match point {
                // The file whose rows were durable, unreported, was redone.
                "batch.after_barrier" => {
                    assert!(reported.values().flatten().any(|r| r["attempts"] == 2), "{reported:?}")
                }
                // The file reported but still staged was not.
                _ => assert!(
                    platform
                        .log()
                        .contains("was reported before a restart; it leaves staging"),
                    "{}",
                    platform.tail_log()
                ),
            }
        }
    }
}

/// Small files that queue up behind a busy worker are ingested as one group, through one
/// barrier, and each still ends on its own: the one whose plugin call panics and the one whose
/// call fails are reported failed with the plugin's message, every other one has its rows.
#[test]
fn small_files_queued_together_share_one_barrier_and_a_failing_one_fails_alone() {
    for backend in Backend::all() {
        let lab = TenantSpec {
            max_files: 100,
            ..TenantSpec::new("lab", &["csv"])
        };
        let platform = Platform::start(backend, std::slice::from_ref(&lab), "[batch]\nworkers_per_tenant = 1\n");
        platform.install_plugin("lab_plugin_v1", "libclientbatchingestapp_lab_csv.so");
        let (started, release) = (platform.dir.join("started"), platform.dir.join("release"));
        let holding = format!("hold,1\nSIGNAL {}\nWAIT {}\n", started.display(), release.display());
        let (status, body) = platform.upload("lab", &lab.token(), "hold.csv", holding.as_bytes());
        assert_eq!(status, 201, "{body}");
        let holding_id = body["file_id"].as_str().unwrap().to_string();
        assert!(
            wait_until(Duration::from_secs(60), || started.exists()),
            "{backend:?}: {}",
            platform.tail_log()
        );

        // Twenty files queue behind it: 10 rows each, the 8th panics after them, the 14th fails.
        let mut uploaded = Vec::new();
        for i in 0..20 {
            let mut csv: String = (0..10).map(|r| format!("f{i}-r{r},{r}\n")).collect();
            match i {
                7 => csv.push_str("PANIC\n"),
                13 => csv.push_str("ERROR\n"),
                _ => {}
            }
            let (status, body) = platform.upload("lab", &lab.token(), &format!("small{i}.csv"), csv.as_bytes());
            assert_eq!(status, 201, "{body}");
            uploaded.push((i, body["file_id"].as_str().unwrap().to_string()));
        }
        let queued = "mysimbdp_files_queued{tenant=\"lab\"} 20";
        assert!(
            wait_until(Duration::from_secs(30), || ureq_get_text(&platform, "/metrics")
                .contains(queued)),
            "{backend:?}: {}",
            ureq_get_text(&platform, "/metrics")
        );
        std::fs::write(&release, "").unwrap();

        let held = platform.wait_for_report("lab", &lab.token(), &holding_id, Duration::from_secs(60));
        assert_eq!(held["stages"]["group_files"], 1, "{held}");
        let mut stored = 1;
        for (i, id) in &uploaded {
            let report = platform.wait_for_report("lab", &lab.token(), id, Duration::from_secs(60));
            assert_eq!(report["stages"]["group_files"], 20, "{backend:?} file {i}: {report}");
            match i {
                7 | 13 => {
                    assert_eq!(report["status"], "failed", "{report}");
                    let expected = if *i == 7 {
                        "was asked to panic"
                    } else {
                        "was asked to fail"
                    };
                    assert!(report["error"].as_str().unwrap().contains(expected), "{report}");
                }
                _ => {
                    assert_eq!(report["status"], "done", "{backend:?} file {i}: {report}");
                    assert_eq!(report["rows_ingested"], 10, "{report}");
                }
            }
            stored += report["rows_ingested"].as_u64().unwrap();
        }
        assert_eq!(platform.count("lab", &lab.token(), "items"), stored, "{backend:?}");
        assert!(
            wait_until(Duration::from_secs(30), || platform.staged_files().is_empty()),
            "{backend:?}: only the failed files are set aside"
        );
        let (_, status) = platform.get("/v1/plugins", ADMIN_TOKEN);
        assert!(
            !status.to_string().contains("quarantined"),
            "{backend:?}: two failures among twenty do not quarantine the version: {status}"
        );
    }
}

#[test]
fn a_line_that_is_not_utf8_is_rejected_alone_with_its_line_number() {
    let client1 = TenantSpec::new("client1", &["csv"]);
    let platform = Platform::start(Backend::Embedded, std::slice::from_ref(&client1), "");
    let mut csv = Spec::rows(Shape::Client1Csv, 3).to_vec();
    // Line 5: a copy of the first reading whose dev-id ends in a byte that is not UTF-8.
    let mut bad_line = csv.split(|&b| b == b'\n').nth(1).expect("a data line").to_vec();
    bad_line.extend_from_slice(b"\xff");
    bad_line.push(b'\n');
    csv.extend_from_slice(&bad_line);
    let (status, body) = platform.upload("client1", &client1.token(), "mixed.csv", &csv);
    assert_eq!(status, 201, "{body}");
    let file_id = body["file_id"].as_str().unwrap();
    let report = platform.wait_for_report("client1", &client1.token(), file_id, Duration::from_secs(60));
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["rows_total"], 4);
    assert_eq!(report["rows_ingested"], 3);
    assert_eq!(report["rows_failed"], 1);
    let (status, page) = platform.get(
        &format!("/v1/tenants/client1/files/{file_id}/rejected"),
        &client1.token(),
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["rows"][0]["line"], 5, "{page}");
    assert_eq!(page["rows"][0]["reason"], "the line is not valid UTF-8", "{page}");
}
