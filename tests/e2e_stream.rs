//! Near-realtime ingestion end to end: messages posted over HTTP land in the tenant's topic,
//! the tenant's stream plugin instances consume them, and their rows land in the store exactly
//! once by key, on both queue backends (and both stores where it matters), through stops,
//! reloads, crashes, broker outages, poison messages and bursts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{ADMIN_TOKEN, Backend, Client, Platform, QueueBackend, TenantSpec};
use mysimbdp_tests::{library, wait_until};
use serde_json::Value;

const NDJSON: &str = "application/x-ndjson";

fn client1() -> TenantSpec {
    TenantSpec::new("client1", &["csv"])
}

/// `rows` client1 readings as NDJSON lines.
fn readings(rows: u64, seed: u64) -> Vec<String> {
    let text = String::from_utf8(Spec::rows(Shape::Client1JsonLines, rows).with_seed(seed).to_vec()).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn start_with_stream(backend: Backend, tenants: &[TenantSpec], extra: &str) -> Platform {
    let platform = Platform::start(backend, tenants, extra);
    for tenant in tenants {
        let name = format!("clientstreamingestapp_{}", tenant.name);
        platform.install_plugin(&name, &format!("lib{name}.so"));
        wait_for_stream_plugin(&platform, tenant);
    }
    platform
}

/// Waits until the tenant's stream plugin is loaded.
fn wait_for_stream_plugin(platform: &Platform, tenant: &TenantSpec) {
    let loaded = wait_until(Duration::from_secs(20), || {
        let (_, stats) = platform.get(&format!("/v1/tenants/{}/stats", tenant.name), &tenant.token());
        stats["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["kind"] == "stream" && p["version"].is_object()))
    });
    assert!(
        loaded,
        "the stream plugin of {} did not load: {}",
        tenant.name,
        platform.tail_log()
    );
}

fn wait_for_count(platform: &Platform, tenant: &TenantSpec, table: &str, expected: u64, timeout: Duration) {
    let mut count = 0;
    let reached = wait_until(timeout, || {
        count = platform.count_so_far(&tenant.name, &tenant.token(), table);
        count >= expected
    });
    assert!(
        reached,
        "{} rows of {expected} in {}.{table}; log:\n{}",
        count,
        tenant.name,
        platform.tail_log()
    );
    assert_eq!(count, expected, "no row twice");
}

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

    let mut instances = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            instances = platform.get("/v1/tenants/client1/stream/instances", &tenant.token()).1;
            instances["instances"][0]["rows"] == 503
        }),
        "{instances}"
    );
    let instance = &instances["instances"][0];
    assert_eq!(instance["state"], "running", "{instances}");
    assert_eq!(instance["plugin_version"], "1.0.0");
    assert_eq!(
        instance["messages"], 503,
        "the malformed request's messages never arrived"
    );
}

/// Posts `lines` in requests of `per_request` lines, retrying each request until it is
/// acknowledged (202): a 429 or 503 must carry `Retry-After`, and no answer (the platform is
/// down) is retried. Returns the statuses seen.
fn post_all(
    client: &Client,
    tenant: &TenantSpec,
    lines: &[String],
    per_request: usize,
    pause: Duration,
) -> BTreeMap<u16, u64> {
    let mut statuses = BTreeMap::new();
    for chunk in lines.chunks(per_request) {
        std::thread::sleep(pause);
        let body = chunk.join("\n");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(Instant::now() < deadline, "a request was never acknowledged");
            match client.post_messages(&tenant.name, &tenant.token(), NDJSON, body.as_bytes()) {
                Ok((202, body, _)) => {
                    assert_eq!(body["accepted"], chunk.len());
                    *statuses.entry(202).or_default() += 1;
                    break;
                }
                Ok((status @ (429 | 503), body, retry_after)) => {
                    assert!(retry_after.is_some(), "{status} without Retry-After: {body}");
                    *statuses.entry(status).or_default() += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok((status, body, _)) => panic!("a post got {status}: {body}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    statuses
}

/// `rows` client2 invocation records as NDJSON lines.
fn invocations(rows: u64, seed: u64) -> Vec<String> {
    let text = String::from_utf8(Spec::rows(Shape::Client2JsonLines, rows).with_seed(seed).to_vec()).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
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

#[test]
fn a_message_that_makes_the_plugin_panic_fails_alone_and_the_thousand_around_it_are_stored() {
    for queue in QueueBackend::all() {
        let lab = TenantSpec::new("lab", &["csv"]);
        let platform = Platform::start(Backend::Embedded, std::slice::from_ref(&lab), &queue.config());
        platform.install_plugin("lab_stream_v1", "liblab_stream_v1.so");
        std::fs::rename(
            platform.dir.join("plugins/liblab_stream_v1.so"),
            platform.dir.join("plugins/libclientstreamingestapp_lab.so"),
        )
        .unwrap();
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
