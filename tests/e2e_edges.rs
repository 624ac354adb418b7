//! The platform's edges under a careless or hostile client or operator: more connections than
//! it has descriptors for, slow clients, broken plugin files, endless lines, probing for tenant
//! names, read bursts, and protocol corner cases. Each test checks that the platform answers
//! with a clear error and goes on ingesting.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{ADMIN_TOKEN, Backend, Platform, TenantSpec};
use mysimbdp_tests::{library, rss_kib, target_dir, wait_until};
use serde_json::Value;

fn client1() -> TenantSpec {
    TenantSpec::new("client1", &["csv"])
}

/// Uploads a small client1 file and waits for it to be done.
fn ingest_some(platform: &Platform, seed: u64) {
    let csv = Spec::rows(Shape::Client1Csv, 200).with_seed(seed).to_vec();
    platform.ingest("client1", "client1-token", "r.csv", &csv);
}

/// Every plugin the admin API lists, with whether a version of it is loaded.
fn plugins_loaded(platform: &Platform) -> Vec<(String, bool)> {
    let (_, body) = platform.get("/v1/plugins", ADMIN_TOKEN);
    body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["plugin"].as_str().unwrap().to_string(), !p["version"].is_null()))
        .collect()
}

fn open_descriptors(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn more_idle_connections_than_descriptors_leave_the_platform_serving_with_every_plugin_loaded() {
    let platform = Platform::start_with_fd_limit(Backend::Embedded, &[client1()], "", 256);
    ingest_some(&platform, 1);
    let before = plugins_loaded(&platform);
    assert_eq!(before, [("clientbatchingestapp_client1_csv".to_string(), true)]);

    // Three times the descriptors the platform has, held open without a request.
    let idle: Vec<TcpStream> = (0..768)
        .filter_map(|_| TcpStream::connect(platform.address()).ok())
        .collect();
    assert!(idle.len() > 600, "only {} connections opened", idle.len());
    let started = Instant::now();
    assert_eq!(platform.get("/healthz", "").0, 200, "healthz answers at once");
    assert!(started.elapsed() < Duration::from_secs(5));
    ingest_some(&platform, 2);
    // A tenant's change makes the plugin host look at plugins/ again: it must still see the
    // plugin there.
    let mut changed = client1();
    changed.max_files += 1;
    platform.write_customers(&mysimbdp_tests::platform::customer_information(&[changed]));
    assert!(wait_until(Duration::from_secs(10), || platform
        .log()
        .contains("changed=[client1]")));
    ingest_some(&platform, 3);
    assert_eq!(plugins_loaded(&platform), before);
    drop(idle);
    ingest_some(&platform, 4);
    assert_eq!(plugins_loaded(&platform), before);
    let log = platform.log();
    assert!(
        !log.contains("retiring"),
        "no plugin was retired:\n{}",
        platform.tail_log()
    );
    assert!(
        log.matches("accept failed").count() < 10,
        "the accept loop spun on errors:\n{}",
        platform.tail_log()
    );
}

/// Writes `bytes` over a raw connection, then reads until the server closes or `timeout`.
fn raw_exchange(platform: &Platform, chunks: &[(&[u8], Duration)], timeout: Duration) -> (String, Duration) {
    let mut stream = TcpStream::connect(platform.address()).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let started = Instant::now();
    for (chunk, pause) in chunks {
        if stream.write_all(chunk).is_err() {
            break;
        }
        std::thread::sleep(*pause);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[test]
fn slow_headers_and_slow_uploads_are_dropped_and_free_their_slots() {
    let mut lab = TenantSpec::new("client1", &["csv"]);
    lab.max_files = 1;
    let platform = Platform::start(
        Backend::Embedded,
        std::slice::from_ref(&lab),
        "[server]\nheader_read_timeout_seconds = 2\nupload_idle_timeout_seconds = 2\nupload_min_bytes_per_second = 1000\nupload_rate_grace_seconds = 3\n",
    );
    // Headers at a byte every 200 ms never finish: the connection is closed.
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let trickle: Vec<(&[u8], Duration)> = request.chunks(1).map(|c| (c, Duration::from_millis(200))).collect();
    let (answer, took) = raw_exchange(&platform, &trickle, Duration::from_secs(20));
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(took < Duration::from_secs(15), "closed after {took:?}");

    // An upload that stops sending is refused with 408 and its slot is free again.
    let head = "POST /v1/tenants/client1/files?name=a.csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client1-token\r\nContent-Length: 100000\r\n\r\ntime,";
    let (answer, took) = raw_exchange(&platform, &[(head.as_bytes(), Duration::ZERO)], Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("sent nothing for 2 s"), "{answer}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    ingest_some(&platform, 1);

    // An upload at a few bytes a second is refused once its grace is over.
    let body_chunks: Vec<(&[u8], Duration)> = std::iter::once((head.as_bytes(), Duration::from_millis(500)))
        .chain((0..40).map(|_| (&b"1,2,3,4,5\n"[..], Duration::from_millis(500))))
        .collect();
    let (answer, _) = raw_exchange(&platform, &body_chunks, Duration::from_secs(30));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("slower than the 1000 bytes/s"), "{answer}");
    ingest_some(&platform, 2);
    assert!(wait_until(Duration::from_secs(5), || platform
        .incoming_files()
        .is_empty()));
}

#[test]
fn broken_plugin_files_are_refused_with_a_reason_while_the_platform_ingests_on() {
    let lab = TenantSpec::new("lab", &["csv"]);
    let platform = Platform::start(Backend::Embedded, &[client1(), lab.clone()], "");
    let good = std::fs::read(library("lab_plugin_v1")).unwrap();
    let mut random = vec![0u8; good.len()];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut random {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let broken: [(&str, Vec<u8>, &str); 6] = [
        ("truncated", good[..good.len() / 3].to_vec(), "truncated"),
        ("truncated near its end", good[..good.len() - 64].to_vec(), "truncated"),
        ("empty", Vec::new(), "the file is empty"),
        ("zero-filled", vec![0; good.len()], "not an ELF file"),
        ("random bytes", random, "not an ELF file"),
        (
            "aborting in its initialiser",
            std::fs::read(library("crashing_plugin")).unwrap(),
            "crashed a checking process",
        ),
    ];
    let target = platform.dir.join("plugins/libclientbatchingestapp_lab_csv.so");
    for (seed, (what, bytes, reason)) in broken.iter().enumerate() {
        let tmp = target.with_extension("part");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        let mut failure = String::new();
        assert!(
            wait_until(Duration::from_secs(20), || {
                let (_, body) = platform.get("/v1/plugins", ADMIN_TOKEN);
                failure = body["plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["plugin"] == "clientbatchingestapp_lab_csv")
                    .and_then(|p| p["load_failure"]["error"].as_str().map(str::to_string))
                    .unwrap_or_default();
                failure.contains(reason)
            }),
            "{what}: {failure}\n{}",
            platform.tail_log()
        );
        ingest_some(&platform, seed as u64);

        let file = platform.dir.join(format!("broken-{seed}.so"));
        std::fs::write(&file, bytes).unwrap();
        let output = std::process::Command::new(target_dir().join("mysimbdp"))
            .args(["plugin", "check"])
            .arg(&file)
            .args(["--as", "libclientbatchingestapp_lab_csv.so"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{what}: {text}");
        assert!(text.contains("REJECTED") && text.contains(reason), "{what}: {text}");
    }
    // After all that, a good file loads and works.
    platform.install_plugin("lab_plugin_v1", "libclientbatchingestapp_lab_csv.so");
    platform.ingest("lab", &lab.token(), "ok.csv", b"a,1\n");
    // A restart with a broken file in plugins/ is no crash loop either.
    let mut platform = platform;
    std::fs::write(&target, &good[..good.len() / 2]).unwrap();
    platform.restart();
    ingest_some(&platform, 99);
}

#[test]
fn a_line_longer_than_the_cap_is_rejected_alone_and_memory_stays_bounded() {
    let platform = Platform::start(Backend::Embedded, &[client1()], "");
    let mut csv = Spec::rows(Shape::Client1Csv, 100).to_vec();
    let good_rows = 100;
    // 150 MB of one line without a newline in the middle of the file, then more rows.
    let rss_before = rss_kib(&platform.pid());
    csv.extend(std::iter::repeat_n(b'7', 150 << 20));
    csv.push(b'\n');
    let more = Spec::rows(Shape::Client1Csv, 100).with_seed(5).to_vec();
    let header_end = more.iter().position(|&b| b == b'\n').unwrap() + 1;
    csv.extend_from_slice(&more[header_end..]);
    let (status, body) = platform.upload("client1", "client1-token", "long.csv", &csv);
    drop(csv);
    assert_eq!(status, 201, "{body}");
    let file_id = body["file_id"].as_str().unwrap().to_string();
    let mut peak = 0;
    let report = loop {
        peak = peak.max(rss_kib(&platform.pid()));
        let (_, status) = platform.get(&format!("/v1/tenants/client1/files/{file_id}"), "client1-token");
        if status["status"] == "done" || status["status"] == "failed" {
            break status["report"].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["rows_ingested"], 2 * good_rows);
    assert_eq!(report["rows_failed"], 1);
    let (_, page) = platform.get(
        &format!("/v1/tenants/client1/files/{file_id}/rejected"),
        "client1-token",
    );
    assert_eq!(page["rows"][0]["line"], 102, "{page}");
    assert!(
        page["rows"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("record longer than 1048576 bytes"),
        "{page}"
    );
    assert!(
        peak < rss_before + 64 * 1024,
        "RSS went from {rss_before} KiB to {peak} KiB for a 150 MB line"
    );
}

#[test]
fn an_unknown_tenant_and_a_wrong_token_look_the_same_and_metrics_can_need_a_token() {
    let metrics_token = "metrics-secret";
    let platform = Platform::start(
        Backend::Embedded,
        &[client1()],
        &format!(
            "[server]\nmetrics_token_sha256 = \"{}\"\n",
            mysimbdp::tenants::TokenDigest::of(metrics_token).to_hex()
        ),
    );
    let csv = Spec::rows(Shape::Client1Csv, 10).to_vec();
    let unknown = platform.upload("nobody", "client1-token", "a.csv", &csv);
    let wrong = platform.upload("client1", "nobody-token", "a.csv", &csv);
    assert_eq!(unknown, wrong, "the answers tell nothing about which tenants exist");
    assert_eq!(unknown.0, 401);
    assert_eq!(unknown.1["error"], "Client not found in customer data");
    assert_eq!(
        platform.get("/v1/tenants/nobody/stats", "x"),
        platform.get("/v1/tenants/client1/stats", "x")
    );

    let (status, health) = platform.get("/healthz", "");
    assert_eq!((status, health), (200, serde_json::json!({"status": "ok"})));
    let (status, _, _) = platform.request("HEAD", "/healthz", "", b"");
    assert_eq!(status, 200, "HEAD /healthz");
    assert_eq!(platform.get("/metrics", "").0, 401);
    let (status, text) = platform.get("/metrics", metrics_token);
    assert_eq!(status, 200);
    assert!(text.as_str().unwrap().contains("mysimbdp_"), "{text}");
    assert_eq!(
        platform.get("/metrics", ADMIN_TOKEN).0,
        200,
        "the admin token works too"
    );
}

#[test]
fn a_burst_of_reads_is_bounded_per_tenant_and_leaves_no_handles_open() {
    let platform = Platform::start(Backend::Embedded, &[client1()], "");
    let csv = Spec::rows(Shape::Client1Csv, 200_000).to_vec();
    let (status, body) = platform.upload("client1", "client1-token", "big.csv", &csv);
    assert_eq!(status, 201);
    platform.wait_for_report(
        "client1",
        "client1-token",
        body["file_id"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    let descriptors_before = open_descriptors(&platform.pid());
    // Two bursts: the first may leave the store's idle readers open (a bounded pool), the
    // second must find them and leave the count where the first left it.
    let mut after_first = 0;
    for burst in 0..2 {
        let outcomes: Vec<(u16, Option<String>, Value)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..200)
                .map(|_| {
                    let platform = &platform;
                    scope.spawn(move || {
                        let (status, body, headers) =
                            platform.request("GET", "/v1/tenants/client1/tables/readings/count", "client1-token", b"");
                        let retry = headers
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        (status, retry, body)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = outcomes.iter().filter(|(s, ..)| *s == 200).count();
        let refused: Vec<_> = outcomes.iter().filter(|(s, ..)| *s == 429).collect();
        assert!(ok >= 4, "{ok} counts answered");
        assert_eq!(ok + refused.len(), 200, "every answer is a count or a 429");
        assert!(!refused.is_empty(), "200 concurrent counts met no bound");
        assert!(
            refused
                .iter()
                .all(|(_, retry, body)| retry.is_some() && body["error"].is_string())
        );
        assert!(
            outcomes
                .iter()
                .filter(|(s, ..)| *s == 200)
                .all(|(_, _, b)| b["count"] == 200_000)
        );
        // The server closes its side of the 200 connections as it reads their ends.
        let bound = if burst == 0 {
            descriptors_before + 16
        } else {
            after_first
        };
        assert!(
            wait_until(Duration::from_secs(10), || open_descriptors(&platform.pid()) <= bound),
            "burst {burst}: {} descriptors open after it, {descriptors_before} before the first",
            open_descriptors(&platform.pid())
        );
        after_first = after_first.max(open_descriptors(&platform.pid()));
    }
}

#[test]
fn protocol_corner_cases_get_json_answers() {
    let mut small = client1();
    small.max_memory = 50_000;
    let platform = Platform::start(Backend::Embedded, std::slice::from_ref(&small), "");
    let csv = Spec::rows(Shape::Client1Csv, 2000).to_vec();
    let (status, body) = platform.upload("client1", "client1-token", "a.csv", &csv);
    assert_eq!(status, 201, "{body}");
    let file_id = body["file_id"].as_str().unwrap().to_string();
    platform.wait_for_report("client1", "client1-token", &file_id, Duration::from_secs(60));

    // Over its quota: 507 with Retry-After.
    assert!(wait_until(Duration::from_secs(20), || {
        platform.get("/v1/tenants/client1/stats", "client1-token").1["storage_used_bytes"].as_u64() >= Some(50_000)
    }));
    let (status, body, headers) =
        platform.request("POST", "/v1/tenants/client1/files?name=b.csv", "client1-token", &csv);
    assert_eq!(status, 507, "{body}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");

    // A page number that would overflow is simply past the end.
    let (status, page) = platform.get(
        &format!("/v1/tenants/client1/files/{file_id}/rejected?page=18446744073709551615"),
        "client1-token",
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["next_page"], Value::Null, "{page}");

    // A request target or headers too large: 414 and 431, with a JSON error.
    let long = format!("/v1/tenants/client1/stats?{}", "a".repeat(20_000));
    let (status, body) = platform.get(&long, "client1-token");
    assert_eq!(status, 414);
    assert!(body["error"].is_string(), "{body}");
    let mut raw = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        raw.push_str(&format!("X-Filler-{i}: {}\r\n", "b".repeat(100)));
    }
    raw.push_str("\r\n");
    let (answer, _) = raw_exchange(&platform, &[(raw.as_bytes(), Duration::ZERO)], Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
}
