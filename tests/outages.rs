//! Outages of the real services under a running platform: a Kafka broker and a Cassandra node
//! stopped for 20 s mid-stream (and mid-file). While a service is gone the platform answers
//! with 503 and `Retry-After` where it cannot acknowledge, keeps everything it acknowledged,
//! and when the service is back every acknowledged message and every good row is stored once.
//!
//! These tests stop the shared services, so they run only in the slow tier (the README's test
//! command runs one test at a time) and only when the services are configured.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{Backend, Platform, QueueBackend, TenantSpec};
use mysimbdp_tests::stream::{
    NDJSON, client1, decisions, post_all, readings, slow_messages, start_with_stream, wait_for_count,
    wait_for_stream_plugin,
};
use mysimbdp_tests::{Service, slow_tier, wait_until};

const OUTAGE: Duration = Duration::from_secs(20);

#[test]
fn a_kafka_broker_stopped_for_20_s_gets_503_with_retry_after_and_every_acknowledged_message_is_stored_once() {
    if Service::Kafka.address().is_none() || !slow_tier("kafka outage") {
        return;
    }
    let tenant = client1();
    let platform = start_with_stream(
        Backend::Embedded,
        std::slice::from_ref(&tenant),
        &QueueBackend::Kafka.config(),
    );
    let lines = readings(12_000, 31);
    let client = platform.client();
    let statuses: BTreeMap<u16, u64> = std::thread::scope(|scope| {
        let poster = scope.spawn(|| post_all(&client, &tenant, &lines, 50, Duration::from_millis(10)));
        assert!(
            wait_until(Duration::from_secs(120), || platform.count_so_far(
                "client1",
                &tenant.token(),
                "readings"
            ) >= 2000),
            "{}",
            platform.tail_log()
        );
        let outage = Service::Kafka.stop();
        // A message the poster also sends: whether or not a refused copy lands later, the
        // count at the end is the same.
        let mut answer = None;
        let refused = wait_until(Duration::from_secs(15), || {
            let response = platform.post_messages("client1", &tenant.token(), NDJSON, lines[0].as_bytes());
            let done = response.0 == 503;
            answer = Some(response);
            done
        });
        let (status, body, retry_after) = answer.unwrap();
        assert!(
            refused,
            "no 503 within 15 s of the broker stopping: {status} {body}\n{}",
            platform.tail_log()
        );
        assert!(
            retry_after.contains_key("retry-after"),
            "503 without Retry-After: {body}"
        );
        assert!(outage.elapsed() < Duration::from_secs(15), "the refusal came fast");
        assert_eq!(platform.get("/healthz", "").0, 200, "the platform lives");
        std::thread::sleep(OUTAGE.saturating_sub(outage.elapsed()));
        outage.end();
        poster.join().unwrap()
    });
    assert!(statuses.contains_key(&503), "the poster met the outage: {statuses:?}");
    // The instance rejoins its group within a few session timeouts of the broker's return (an
    // instance that kept committing for partitions it had lost took up to minutes, or never).
    wait_for_count(&platform, &tenant, "readings", 12_000, Duration::from_secs(90));
    let (_, instances) = platform.get("/v1/tenants/client1/stream/instances", &tenant.token());
    assert_eq!(instances["instances"][0]["state"], "running", "{instances}");
    eprintln!("kafka outage: statuses {statuses:?}, 12000 messages stored once");
}

#[test]
fn a_platform_started_while_the_kafka_broker_is_down_ingests_files_and_streams_once_the_broker_is_back() {
    if Service::Kafka.address().is_none() || !slow_tier("kafka outage") {
        return;
    }
    let tenant = client1();
    let outage = Service::Kafka.stop();
    let platform = start_with_stream(
        Backend::Embedded,
        std::slice::from_ref(&tenant),
        &QueueBackend::Kafka.config(),
    );
    let csv = Spec::rows(Shape::Client1Csv, 300).with_seed(77).to_vec();
    let report = platform.ingest("client1", &tenant.token(), "a.csv", &csv);
    let from_file = platform.count("client1", &tenant.token(), "readings");
    assert_eq!(from_file, 300, "{report}");

    let lines = readings(3000, 78);
    let first = lines[..100].join("\n");
    let (status, body, headers) = platform.post_messages("client1", &tenant.token(), NDJSON, first.as_bytes());
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"), "503 without Retry-After: {body}");
    outage.end();
    // Without a delivery to say so, the producer learns that a broker answers from its probe.
    let mut last = None;
    let accepted = wait_until(Duration::from_secs(60), || {
        let response = platform.post_messages("client1", &tenant.token(), NDJSON, first.as_bytes());
        let done = response.0 == 202;
        last = Some(response);
        done
    });
    assert!(
        accepted,
        "no 202 after the broker came back: {last:?}\n{}",
        platform.tail_log()
    );
    let statuses = post_all(&platform.client(), &tenant, &lines[100..], 100, Duration::ZERO);
    assert_eq!(statuses.keys().collect::<Vec<_>>(), [&202], "{statuses:?}");
    wait_for_count(&platform, &tenant, "readings", 3300, Duration::from_secs(90));
}

#[test]
fn a_kafka_broker_down_while_the_stream_lags_makes_the_manager_hold_not_scale_out() {
    if Service::Kafka.address().is_none() || !slow_tier("kafka outage") {
        return;
    }
    let lab = TenantSpec::new("lab", &["csv"]).with("max_stream_instances", 4);
    let platform = Platform::start(
        Backend::Embedded,
        std::slice::from_ref(&lab),
        &format!(
            "{}\n[monitor]\nreport_every_seconds = 0.5\nhold_seconds = 1.5\ncooldown_seconds = 4.0\n",
            QueueBackend::Kafka.config()
        ),
    );
    platform.install_plugin("lab_stream_v1", "libclientstreamingestapp_lab.so");
    wait_for_stream_plugin(&platform, &lab);
    // 5,000 messages the plugin sleeps 1 ms on: seconds of work, read ahead from the broker.
    let statuses = post_all(
        &platform.client(),
        &lab,
        &slow_messages(0..5000, 1),
        500,
        Duration::ZERO,
    );
    assert_eq!(statuses.keys().collect::<Vec<_>>(), [&202], "{statuses:?}");
    let reports = platform.dir.join("client-reports/lab_stream.jsonl");
    let lagging = || {
        std::fs::read_to_string(&reports)
            .unwrap_or_default()
            .lines()
            .any(|line| serde_json::from_str::<serde_json::Value>(line).is_ok_and(|r| r["lag"].as_u64() >= Some(1000)))
    };
    assert!(
        wait_until(Duration::from_secs(30), lagging),
        "no report of the lag: {}",
        platform.tail_log()
    );
    let decided = || decisions(&platform, "lab", "lab-token");
    let before = decided().len();
    let outage = Service::Kafka.stop();
    // The instance finishes what it read ahead, then its rate falls to 0 with the lag still
    // there: the condition fires, and the manager, finding the queue gone, holds.
    let mut held = None;
    let fired = wait_until(Duration::from_secs(60), || {
        held = decided().into_iter().skip(before).find(|d| d["action"] == "none");
        held.is_some()
    });
    let during = decided();
    outage.end();
    assert!(
        fired,
        "no decision to hold while the broker was down: {during:?}\n{}",
        platform.tail_log()
    );
    let held = held.unwrap();
    assert!(
        held["reason"].as_str().unwrap().contains("the queue does not answer"),
        "{held}"
    );
    assert!(
        !during.iter().skip(before).any(|d| d["action"] == "scale_out"),
        "scaled out while the broker was down: {during:?}"
    );
    wait_for_count(&platform, &lab, "events", 5000, Duration::from_secs(90));
}

#[test]
fn a_cassandra_node_stopped_for_20_s_loses_and_doubles_nothing_of_a_stream_and_a_file_in_flight() {
    if Service::Cassandra.address().is_none() || !slow_tier("cassandra outage") {
        return;
    }
    let tenant = client1();
    let platform = start_with_stream(Backend::Cassandra, std::slice::from_ref(&tenant), "");
    let lines = readings(8000, 41);
    let csv = Spec::rows(Shape::Client1Csv, 30_000).with_seed(42).to_vec();
    let client = platform.client();
    let (statuses, file_id) = std::thread::scope(|scope| {
        let poster = scope.spawn(|| post_all(&client, &tenant, &lines, 50, Duration::from_millis(20)));
        assert!(
            wait_until(Duration::from_secs(120), || platform.count_so_far(
                "client1",
                &tenant.token(),
                "readings"
            ) >= 1500),
            "{}",
            platform.tail_log()
        );
        let outage = Service::Cassandra.stop();
        // The queue is up: messages are still acknowledged, and a file is still accepted.
        let (status, body) = platform.upload("client1", &tenant.token(), "outage.csv", &csv);
        assert_eq!(status, 201, "{body}");
        let file_id = body["file_id"].as_str().unwrap().to_string();
        let (status, body) = platform.get(&format!("/v1/tenants/client1/files/{file_id}"), &tenant.token());
        assert_eq!(status, 200, "{body}");
        assert_eq!(platform.get("/healthz", "").0, 200, "the platform lives");
        std::thread::sleep(OUTAGE.saturating_sub(outage.elapsed()));
        outage.end();
        (poster.join().unwrap(), file_id)
    });
    assert_eq!(statuses.get(&503), None, "the queue never went away: {statuses:?}");
    let report = platform.wait_for_report("client1", &tenant.token(), &file_id, Duration::from_secs(300));
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["rows_ingested"], 30_000, "{report}");
    // The stream's rows and the file's rows share the table (a key in both is one row).
    let expected = distinct_keys(&lines, &csv);
    wait_for_count(&platform, &tenant, "readings", expected, Duration::from_secs(300));
}

/// The distinct `(dev-id, time)` keys of client1 JSON lines and a client1 CSV file.
fn distinct_keys(lines: &[String], csv: &[u8]) -> u64 {
    let mut keys = HashSet::new();
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        keys.insert((value["dev-id"].as_str().unwrap().to_string(), value["time"].to_string()));
    }
    for row in std::str::from_utf8(csv).unwrap().lines().skip(1) {
        let fields: Vec<&str> = row.split(',').collect();
        keys.insert((fields[10].to_string(), fields[0].to_string()));
    }
    keys.len() as u64
}
