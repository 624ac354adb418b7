//! Near-realtime ingestion end to end: messages posted over HTTP land in the tenant's topic,
//! the tenant's stream plugin instances consume them, and their rows land in the store exactly
//! once by key, on both queue backends (and both stores where it matters), through stops,
//! reloads, crashes, broker outages, poison messages and bursts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{
    ADMIN_TOKEN, Backend, Client, Platform, QueueBackend, TenantSpec, customer_information, free_port,
};
use mysimbdp_tests::stream::{
    NDJSON, client1, invocations, post_all, readings, start_with_stream, wait_for_count, wait_for_stream_plugin,
};
use mysimbdp_tests::{library, wait_until};
use serde_json::Value;

#[test]
fn posted_messages_become_rows_once_and_malformed_requests_produce_nothing() {
    let tenant = client1();
    let platform = start_with_stream(Backend::Embedded, std::slice::from_ref(&tenant), "");
    let lines = readings(500, 1);
    for chunk in lines.chunks(100) {
        let (status, body, _) = platform.post_messages("client1", &tenant.token(), NDJSON, chunk.join("\n").as_bytes());
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], 100);
    }
    // One object, and an array.
    let extra = readings(502, 1)[500..].to_vec();
    let (status, body, _) = platform.post_messages("client1", &tenant.token(), "application/json", extra[0].as_bytes());
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(1)), "{body}");
    let array = format!("[{}]", extra[1]);
    let (status, body, _) = platform.post_messages("client1", &tenant.token(), "application/json", array.as_bytes());
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(1)), "{body}");
    wait_for_count(&platform, &tenant, "readings", 502, Duration::from_secs(60));

    // A malformed line refuses the whole request, saying where, and nothing of it is stored.
    let fresh = readings(10, 7);
    let mut bad = fresh.clone();
    bad[5] = "{\"time\": ".into();
    let (status, body, _) = platform.post_messages("client1", &tenant.token(), NDJSON, bad.join("\n").as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("line 6"), "{body}");
    let (status, _, _) = platform.post_messages("client1", &tenant.token(), NDJSON, fresh[..1].join("\n").as_bytes());
    assert_eq!(status, 202);
    wait_for_count(&platform, &tenant, "readings", 503, Duration::from_secs(60));

    let instances = first_instance_reaches(&platform, &tenant, "rows", 503);
    let instance = &instances["instances"][0];
    assert_eq!(instance["state"], "running", "{instances}");
    assert_eq!(instance["plugin_version"], "1.0.0");
    assert_eq!(
        instance["messages"], 503,
        "the malformed request's messages never arrived"
    );
}

#[test]
fn with_no_kafka_broker_answering_the_platform_starts_ingests_files_and_refuses_messages_with_503() {
    let tenant = client1();
    let nobody = format!(
        "[queue]\nbackend = \"kafka\"\nkafka.brokers = \"127.0.0.1:{}\"\n",
        free_port()
    );
    let platform = start_with_stream(Backend::Embedded, std::slice::from_ref(&tenant), &nobody);
    assert!(
        platform.log().contains("no broker of 127.0.0.1:"),
        "the missing broker is not logged: {}",
        platform.tail_log()
    );

    platform.ingest(
        "client1",
        &tenant.token(),
        "a.csv",
        &Spec::rows(Shape::Client1Csv, 300).to_vec(),
    );
    assert_eq!(platform.count("client1", &tenant.token(), "readings"), 300);

    // Topic lookups and produce calls fail fast while every broker is known to be down.
    for _ in 0..3 {
        let (status, body, headers) = platform.post_messages(
            "client1",
            &tenant.token(),
            NDJSON,
            readings(10, 3).join("\n").as_bytes(),
        );
        assert_eq!(status, 503, "{body}");
        assert!(retry_after(&headers).is_some(), "503 without Retry-After: {body}");
        assert!(body["error"].as_str().unwrap().contains("broker"), "{body}");
    }
    let (status, instances) = platform.get("/v1/tenants/client1/stream/instances", &tenant.token());
    assert_eq!(status, 200, "{instances}");
    assert_eq!(platform.get("/healthz", "").0, 200, "the platform lives");
}

/// Waits until the tenant's first instance shows `value` in `field` (its counters are updated
/// once a batch is committed, just after its rows are readable); returns the instance list.
fn first_instance_reaches(platform: &Platform, tenant: &TenantSpec, field: &str, value: u64) -> Value {
    let path = format!("/v1/tenants/{}/stream/instances", tenant.name);
    let mut instances = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            instances = platform.get(&path, &tenant.token()).1;
            instances["instances"][0][field] == value
        }),
        "{instances}"
    );
    instances
}

fn admin(platform: &Platform, method: &str, path: &str) -> (u16, Value) {
    let (status, body, _) = platform.request(method, path, ADMIN_TOKEN, b"");
    (status, body)
}

fn instance_ids(platform: &Platform, tenant: &TenantSpec) -> Vec<String> {
    let (_, body) = platform.get(
        &format!("/v1/tenants/{}/stream/instances", tenant.name),
        &tenant.token(),
    );
    body["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["instance_id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A copy of a built plugin with other content (a few bytes appended), so the platform loads it
/// as a new version.
fn changed_copy(crate_name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(library(crate_name)).unwrap();
    bytes.extend_from_slice(b"\0mysimbdp-test-reload\0");
    let path = dir.join(format!("{crate_name}-changed.so"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn two_tenants_stream_at_once_and_every_acknowledged_message_is_stored_once_through_a_stop_a_reload_and_a_kill_9() {
    let mut combinations: Vec<(Backend, QueueBackend)> = QueueBackend::all()
        .into_iter()
        .map(|q| (Backend::Embedded, q))
        .collect();
    if Backend::all().contains(&Backend::Cassandra) && QueueBackend::all().contains(&QueueBackend::Kafka) {
        combinations.push((Backend::Cassandra, QueueBackend::Kafka));
    }
    for (store, queue) in combinations {
        let (one, two) = (client1(), TenantSpec::new("client2", &["txt"]));
        let mut platform = start_with_stream(store, &[one.clone(), two.clone()], &queue.config());
        let (status, body) = admin(&platform, "POST", "/v1/tenants/client1/stream/instances");
        assert_eq!(status, 201, "{store:?}/{queue:?}: {body}");
        assert_eq!(instance_ids(&platform, &one).len(), 2);
        let (lines1, lines2) = (readings(6000, 11), invocations(6000, 12));
        let client = platform.client();
        std::thread::scope(|scope| {
            let posters = [
                scope.spawn(|| post_all(&client, &one, &lines1, 50, Duration::from_millis(50))),
                scope.spawn(|| post_all(&client, &two, &lines2, 50, Duration::from_millis(50))),
            ];
            // An instance stopped (it stores and commits the batch in hand) and another started.
            let reached = |n: u64| {
                assert!(
                    wait_until(Duration::from_secs(120), || platform.count_so_far(
                        "client1",
                        &one.token(),
                        "readings"
                    ) >= n),
                    "{store:?}/{queue:?}: {n} rows never came: {}",
                    platform.tail_log()
                );
            };
            reached(1000);
            let first = instance_ids(&platform, &one)[0].clone();
            let (status, _) = admin(
                &platform,
                "DELETE",
                &format!("/v1/tenants/client1/stream/instances/{first}"),
            );
            assert_eq!(status, 204);
            assert_eq!(admin(&platform, "POST", "/v1/tenants/client1/stream/instances").0, 201);
            // A new plugin version rolled onto the running instances.
            reached(2500);
            let changed = changed_copy("clientstreamingestapp_client1", &platform.dir);
            mysimbdp_tests::install_file(
                &changed,
                &platform.dir.join("plugins/libclientstreamingestapp_client1.so"),
            );
            assert!(wait_until(Duration::from_secs(20), || platform
                .log()
                .contains("plugin reloaded: plugin=clientstreamingestapp_client1")));
            // And the platform killed mid-stream, then started again.
            reached(4000);
            assert!(
                platform.count_so_far("client1", &one.token(), "readings") < 6000,
                "the kill comes mid-stream"
            );
            let before_kill = instance_ids(&platform, &one);
            platform.kill9();
            std::thread::sleep(Duration::from_millis(300));
            platform.start_again();
            assert_eq!(
                instance_ids(&platform, &one),
                before_kill,
                "the instances that ran run again"
            );
            for poster in posters {
                poster.join().unwrap();
            }
        });
        wait_for_count(&platform, &one, "readings", 6000, Duration::from_secs(300));
        wait_for_count(&platform, &two, "invocations", 6000, Duration::from_secs(300));
        eprintln!("{store:?}/{queue:?}: 6000 + 6000 messages stored once each");
    }
}

/// A platform on the embedded store whose tenant `lab` runs the lab stream plugin.
fn start_lab(lab: &TenantSpec, extra: &str) -> Platform {
    let platform = Platform::start(Backend::Embedded, std::slice::from_ref(lab), extra);
    platform.install_plugin("lab_stream_v1", "libclientstreamingestapp_lab.so");
    wait_for_stream_plugin(&platform, lab);
    platform
}

#[test]
fn a_message_that_makes_the_plugin_panic_fails_alone_and_the_thousand_around_it_are_stored() {
    for queue in QueueBackend::all() {
        let lab = TenantSpec::new("lab", &["csv"]);
        let platform = start_lab(&lab, &queue.config());
        let mut lines: Vec<String> = (0..1000).map(|i| format!("\"key{i},{i}\"")).collect();
        lines.insert(437, "\"PANIC\"".into());
        let (status, body, _) = platform.post_messages("lab", &lab.token(), NDJSON, lines.join("\n").as_bytes());
        assert_eq!(status, 202, "{body}");
        wait_for_count(&platform, &lab, "events", 1000, Duration::from_secs(120));
        let mut rejected = Value::Null;
        assert!(
            wait_until(Duration::from_secs(30), || {
                rejected = platform.get("/v1/tenants/lab/stream/rejected", &lab.token()).1;
                rejected["rows"].as_array().is_some_and(|r| !r.is_empty())
            }),
            "{queue:?}: {rejected}"
        );
        let rows = rejected["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{queue:?}: only the poison message: {rejected}");
        assert!(
            rows[0]["reason"].as_str().unwrap().contains("asked to panic"),
            "{rejected}"
        );
        assert_eq!(rows[0]["raw"], "\"PANIC\"");
        assert!(
            rows[0]["partition"].is_u64() && rows[0]["offset"].is_u64(),
            "{rejected}"
        );
        assert_eq!(platform.get("/healthz", "").0, 200, "the platform lives");
        // The version is not quarantined: it failed on one message, not on everything.
        let (_, stats) = platform.get("/v1/tenants/lab/stats", &lab.token());
        let plugin = &stats["plugins"][0];
        assert_eq!(plugin["version"]["state"], "active", "{stats}");
    }
}

fn retry_after(headers: &ureq::http::HeaderMap) -> Option<u64> {
    headers.get("retry-after")?.to_str().ok()?.parse().ok()
}

#[test]
fn the_message_api_refuses_each_limit_with_its_status_and_says_why() {
    let limited = client1()
        .with("max_message_bytes", 400)
        .with("max_request_bytes", 20_000)
        .with("max_messages_per_second", 100);
    let mut tight = TenantSpec::new("client2", &["txt"]);
    tight.max_memory = 16 << 10;
    let platform = start_with_stream(Backend::Embedded, &[limited.clone(), tight.clone()], "");
    let token = limited.token();
    let lines = readings(50, 3);
    let body = lines.join("\n");

    // Who may post.
    let (status, body_of, _) = platform.post_messages("client1", "wrong-token", NDJSON, body.as_bytes());
    assert_eq!(
        (status, body_of["error"].as_str()),
        (401, Some("Client not found in customer data"))
    );
    let (status, _, _) = platform.post_messages("nobody", &token, NDJSON, body.as_bytes());
    assert_eq!(status, 401);
    // What they may post.
    let (status, refusal, _) = platform.post_messages("client1", &token, "text/csv", body.as_bytes());
    assert_eq!(status, 415, "{refusal}");
    assert!(
        refusal["error"].as_str().unwrap().contains("application/x-ndjson"),
        "{refusal}"
    );
    let (status, refusal, _) = platform.post_messages("client1", &token, NDJSON, b"\n\n");
    assert_eq!(status, 400, "{refusal}");
    let mut oversize = lines[..5].to_vec();
    oversize[3] = format!("{{\"pad\": \"{}\"}}", "x".repeat(500));
    let (status, refusal, _) = platform.post_messages("client1", &token, NDJSON, oversize.join("\n").as_bytes());
    assert_eq!(status, 413, "{refusal}");
    let message = refusal["error"].as_str().unwrap();
    assert!(
        message.starts_with("line 4") && message.contains("400 bytes"),
        "{refusal}"
    );
    let huge: Vec<String> = readings(200, 4);
    let (status, refusal, _) = platform.post_messages("client1", &token, NDJSON, huge.join("\n").as_bytes());
    assert_eq!(status, 413, "{refusal}");
    assert!(refusal["error"].as_str().unwrap().contains("/20000"), "{refusal}");
    // A refusal of a body much larger than what was read is still an answer the client reads,
    // not a reset connection (the rest of the body is read and dropped).
    let bulk = readings(8000, 4).join("\n");
    for _ in 0..3 {
        let (status, refusal, _) = platform.post_messages("client1", &token, NDJSON, bulk.as_bytes());
        assert_eq!(status, 413, "{refusal}");
        let (status, _, _) = platform.post_messages("client1", "wrong-token", NDJSON, bulk.as_bytes());
        assert_eq!(status, 401);
    }

    // How fast: the bucket holds a second of messages (100).
    let (status, accepted, _) = platform.post_messages("client1", &token, NDJSON, body.as_bytes());
    assert_eq!((status, accepted["accepted"].as_u64()), (202, Some(50)), "{accepted}");
    let more = readings(110, 3)[50..].join("\n");
    let (status, refusal, headers) = platform.post_messages("client1", &token, NDJSON, more.as_bytes());
    assert_eq!(status, 429, "{refusal}");
    assert!(
        refusal["error"].as_str().unwrap().contains("max_messages_per_second"),
        "{refusal}"
    );
    let wait = retry_after(&headers).expect("429 carries Retry-After");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    std::thread::sleep(Duration::from_secs(wait));
    let (status, accepted, _) = platform.post_messages("client1", &token, NDJSON, more.as_bytes());
    assert_eq!(
        (status, accepted["accepted"].as_u64()),
        (202, Some(60)),
        "after Retry-After: {accepted}"
    );
    // None of the refused requests produced anything.
    wait_for_count(&platform, &limited, "readings", 110, Duration::from_secs(60));

    // How much: the storage quota is shared with batch files; past it, 507.
    let (status, accepted, _) = platform.post_messages(
        "client2",
        &tight.token(),
        NDJSON,
        invocations(1000, 5).join("\n").as_bytes(),
    );
    assert_eq!(status, 202, "under the quota: {accepted}");
    wait_for_count(&platform, &tight, "invocations", 1000, Duration::from_secs(60));
    let mut last = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let response = platform.post_messages("client2", &tight.token(), NDJSON, invocations(1, 6)[0].as_bytes());
            let over = response.0 == 507;
            last = Some(response);
            over
        }),
        "never over the quota: {:?}",
        last.as_ref().map(|l| (l.0, l.1.clone()))
    );
    let (_, refusal, headers) = last.unwrap();
    assert!(retry_after(&headers).is_some(), "507 carries Retry-After: {refusal}");
    let (status, body) = platform.upload(
        "client2",
        &tight.token(),
        "more.txt",
        b"app,func,end_timestamp,duration\n",
    );
    assert_eq!(status, 507, "a file meets the same quota: {body}");
}

fn stream_plugin_copies(platform: &Platform, tenant: &str) -> Vec<String> {
    mysimbdp_tests::mapped_lines(&platform.pid(), &format!("clientstreamingestapp_{tenant}"))
}

#[test]
fn removing_a_tenant_stops_its_instances_and_unloads_its_stream_plugin_and_adding_it_back_resumes() {
    let (one, two) = (client1(), TenantSpec::new("client2", &["txt"]));
    let platform = start_with_stream(Backend::Embedded, &[one.clone(), two.clone()], "");
    let (status, body, _) =
        platform.post_messages("client1", &one.token(), NDJSON, readings(300, 8).join("\n").as_bytes());
    assert_eq!(status, 202, "{body}");
    wait_for_count(&platform, &one, "readings", 300, Duration::from_secs(60));
    assert!(!stream_plugin_copies(&platform, "client1").is_empty());

    platform.write_customers(&customer_information(std::slice::from_ref(&two)));
    assert!(
        wait_until(Duration::from_secs(20), || stream_plugin_copies(&platform, "client1")
            .is_empty()),
        "client1's stream plugin is unmapped after its removal:\n{}\n{}",
        stream_plugin_copies(&platform, "client1").join("\n"),
        platform.tail_log()
    );
    assert!(wait_until(Duration::from_secs(10), || platform
        .log()
        .contains("stream: tenant=client1 removed: its instances stopped")));
    let (status, body, _) = platform.post_messages("client1", &one.token(), NDJSON, b"{}");
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("Client not found in customer data"))
    );
    let (status, _) = admin(&platform, "GET", "/v1/tenants/client1/stream/instances");
    assert_eq!(status, 404, "no instances of a tenant that is gone");
    // The other tenant streams on.
    let (status, body, _) = platform.post_messages(
        "client2",
        &two.token(),
        NDJSON,
        invocations(200, 9).join("\n").as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    wait_for_count(&platform, &two, "invocations", 200, Duration::from_secs(60));

    // Back: its plugin loads, an instance starts at its minimum, and the stream goes on.
    platform.write_customers(&customer_information(&[one.clone(), two.clone()]));
    wait_for_stream_plugin(&platform, &one);
    let (status, body, _) =
        platform.post_messages("client1", &one.token(), NDJSON, readings(500, 8).join("\n").as_bytes());
    assert_eq!(status, 202, "{body}");
    wait_for_count(&platform, &one, "readings", 500, Duration::from_secs(60));
    assert_eq!(instance_ids(&platform, &one).len(), 1);
}

/// One client of the burst: requests of `per_request` messages back to back, each refused one
/// sent again at once, until `stop` is set (then its last request is seen through). Returns
/// the messages acknowledged (keys `c<client>-<n>` for n below it) and the statuses seen.
fn burst_client(
    client: &Client,
    lab: &TenantSpec,
    id: usize,
    per_request: u64,
    stop: &AtomicBool,
    acknowledged: &AtomicU64,
) -> (u64, BTreeMap<u16, u64>) {
    let mut statuses = BTreeMap::new();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let body: Vec<String> = (sent..sent + per_request)
            .map(|n| format!("\"c{id}-{n},{n}\""))
            .collect();
        let body = body.join("\n");
        loop {
            match client.post_messages(&lab.name, &lab.token(), NDJSON, body.as_bytes()) {
                Ok((202, answer, _)) => {
                    assert_eq!(answer["accepted"], per_request, "{answer}");
                    *statuses.entry(202).or_default() += 1;
                    acknowledged.fetch_add(per_request, Ordering::Relaxed);
                    break;
                }
                Ok((status @ (429 | 503), answer, retry_after)) => {
                    assert!(retry_after.is_some(), "{status} without Retry-After: {answer}");
                    *statuses.entry(status).or_default() += 1;
                }
                Ok((status, answer, _)) => panic!("client {id}: a post got {status}: {answer}"),
                Err(e) => panic!("client {id}: no answer: {e}"),
            }
        }
        sent += per_request;
    }
    (sent, statuses)
}

#[test]
fn messages_posted_back_to_back_for_60_s_by_four_clients_build_a_lag_of_a_million_that_drains_in_bounded_memory() {
    if !mysimbdp_tests::slow_tier("burst") {
        return;
    }
    const LAG: u64 = 1_000_000;
    const RSS_LIMIT_KIB: u64 = 300 << 10;
    for queue in QueueBackend::all() {
        let lab = TenantSpec::new("lab", &["csv"]).with("max_messages_per_second", 25_000);
        let platform = start_lab(&lab, &queue.config());
        // No instance consumes while the burst runs: the lag builds.
        let mut running = Vec::new();
        assert!(wait_until(Duration::from_secs(20), || {
            running = instance_ids(&platform, &lab);
            !running.is_empty()
        }));
        for id in &running {
            let (status, body) = admin(&platform, "DELETE", &format!("/v1/tenants/lab/stream/instances/{id}"));
            assert_eq!(status, 204, "{body}");
        }
        let pid = platform.pid();
        let sampling = AtomicBool::new(true);
        let stop = AtomicBool::new(false);
        let lag = AtomicU64::new(0);
        let client = platform.client();
        let began = Instant::now();
        let (acknowledged, statuses, peak_kib) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let mut peak = 0;
                while sampling.load(Ordering::Relaxed) {
                    peak = peak.max(mysimbdp_tests::rss_kib(&pid));
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            });
            let clients: Vec<_> = (0..4)
                .map(|id| {
                    let (client, lab, stop, lag) = (&client, &lab, &stop, &lag);
                    scope.spawn(move || burst_client(client, lab, id, 1000, stop, lag))
                })
                .collect();
            // 60 s at least, and until the lag is a million (with a bound for a slow machine).
            while began.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(200));
            }
            let lag_reached = wait_until(Duration::from_secs(240), || lag.load(Ordering::Relaxed) >= LAG);
            stop.store(true, Ordering::Relaxed);
            let mut acknowledged = 0;
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            for client in clients {
                let (sent, seen) = client.join().unwrap();
                acknowledged += sent;
                for (status, n) in seen {
                    *statuses.entry(status).or_default() += n;
                }
            }
            assert!(lag_reached, "{queue:?}: the lag never reached {LAG}: {statuses:?}");
            eprintln!(
                "{queue:?}: {acknowledged} messages acknowledged in {:.0} s: {statuses:?}",
                began.elapsed().as_secs_f64()
            );
            assert_eq!(
                platform.count_so_far("lab", &lab.token(), "events"),
                0,
                "{queue:?}: nothing consumed the burst"
            );
            // Now the instances drain the lag.
            for _ in 0..2 {
                assert_eq!(admin(&platform, "POST", "/v1/tenants/lab/stream/instances").0, 201);
            }
            wait_for_count(&platform, &lab, "events", acknowledged, Duration::from_secs(600));
            sampling.store(false, Ordering::Relaxed);
            (acknowledged, statuses, sampler.join().unwrap())
        });
        eprintln!(
            "{queue:?}: {acknowledged} stored once, drained {:.0} s after the burst began; peak RSS {} MiB",
            began.elapsed().as_secs_f64(),
            peak_kib >> 10
        );
        assert!(acknowledged >= LAG);
        assert!(statuses[&202] > 0);
        assert!(
            peak_kib < RSS_LIMIT_KIB,
            "{queue:?}: peak RSS {} MiB while the lag built and drained",
            peak_kib >> 10
        );
        assert_eq!(platform.get("/healthz", "").0, 200);
    }
}

#[test]
fn an_instance_started_on_a_backlog_takes_batches_of_up_to_twice_batch_messages() {
    let tenant = client1().with("min_stream_instances", 0).with("autoscale", false);
    let platform = start_with_stream(
        Backend::Embedded,
        std::slice::from_ref(&tenant),
        "[stream]\nbatch_messages = 500\n",
    );
    let lines = readings(20_000, 3);
    for chunk in lines.chunks(1_000) {
        let (status, body, _) = platform.post_messages("client1", &tenant.token(), NDJSON, chunk.join("\n").as_bytes());
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = admin(&platform, "POST", "/v1/tenants/client1/stream/instances");
    assert!(status == 201 || status == 200, "{status}: {body}");
    wait_for_count(&platform, &tenant, "readings", 20_000, Duration::from_secs(120));
    let instances = first_instance_reaches(&platform, &tenant, "messages", 20_000);
    // 500 a batch would be 40 batches; twice that while the backlog lasts, about half as many.
    let batches = instances["instances"][0]["batches"].as_u64().unwrap();
    assert!(
        (20..=24).contains(&batches),
        "{batches} batches for 20,000 messages: {instances}"
    );
}
