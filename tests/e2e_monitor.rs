//! The stream monitor and the stream manager's decisions, end to end: lag built by a slow
//! plugin makes the manager scale out and, once idle, back in; a tenant at zero instances
//! wakes on a message; a load hovering at a threshold causes at most one step each way; a
//! failing plugin crosses the failure ratio without a crash-and-restart loop. Every step is
//! checked in the decisions API, with the numbers that caused it.

use std::time::{Duration, Instant};

use mysimbdp_tests::platform::{ADMIN_TOKEN, Backend, Platform, QueueBackend, TenantSpec};
use mysimbdp_tests::stream::{self, NDJSON, slow_messages, wait_for_count, wait_for_stream_plugin};
use mysimbdp_tests::{slow_tier, wait_until};
use serde_json::{Value, json};

/// Short periods and windows, so a test sees a whole control loop in seconds.
const FAST_MONITOR: &str = "[monitor]
report_every_seconds = 0.5
hold_seconds = 1.5
cooldown_seconds = 4.0
idle_seconds = 4.0
";

fn lab(extra: &[(&str, Value)]) -> TenantSpec {
    let mut lab = TenantSpec::new("lab", &["csv"]).with("max_stream_instances", 4);
    for (key, value) in extra {
        lab = lab.with(key, value.clone());
    }
    lab
}

fn start(lab: &TenantSpec, queue: QueueBackend, monitor: &str) -> Platform {
    let platform = Platform::start(
        Backend::Embedded,
        std::slice::from_ref(lab),
        &format!("{}\n{monitor}", queue.config()),
    );
    platform.install_plugin("lab_stream_v1", "libclientstreamingestapp_lab.so");
    wait_for_stream_plugin(&platform, lab);
    platform
}

fn decisions(platform: &Platform) -> Vec<Value> {
    stream::decisions(platform, "lab", "lab-token")
}

fn instances(platform: &Platform) -> Vec<Value> {
    let (_, body) = platform.get("/v1/tenants/lab/stream/instances", "lab-token");
    body["instances"].as_array().cloned().unwrap_or_default()
}

/// Waits for a decision with `action` after the first `after` decisions; returns it.
fn wait_for_decision(platform: &Platform, action: &str, after: usize, timeout: Duration) -> Value {
    let mut found = None;
    let seen = wait_until(timeout, || {
        found = decisions(platform)
            .into_iter()
            .skip(after)
            .find(|d| d["action"] == action);
        found.is_some()
    });
    assert!(
        seen,
        "no {action} decision within {timeout:?}: {:?}\nthe last reports: {}\n{}",
        decisions(platform),
        last_reports(platform, 12),
        platform.tail_log()
    );
    found.unwrap()
}

/// The last `n` instance reports, from `client-reports/lab_stream.jsonl`.
fn last_reports(platform: &Platform, n: usize) -> String {
    let log = std::fs::read_to_string(platform.dir.join("client-reports/lab_stream.jsonl")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn post(platform: &Platform, lines: &[String]) {
    for chunk in lines.chunks(500) {
        let (status, body, _) = platform.post_messages("lab", "lab-token", NDJSON, chunk.join("\n").as_bytes());
        assert_eq!(status, 202, "{body}");
    }
}

#[test]
fn lag_from_a_slow_plugin_scales_out_the_lag_drains_and_idle_scales_back_in_each_step_with_its_evidence() {
    for queue in QueueBackend::all() {
        let lab = lab(&[("stream_thresholds", json!({"max_lag": 300}))]);
        let platform = start(&lab, queue, FAST_MONITOR);
        assert!(wait_until(Duration::from_secs(10), || instances(&platform).len() == 1));
        // 2,000 rows behind 2,000 sleeps of 3 ms: about 6 s of work for one instance.
        post(&platform, &slow_messages(0..2000, 3));

        let out = wait_for_decision(&platform, "scale_out", 0, Duration::from_secs(30));
        // The lag over its limit, or the rate under its limit while the lag waits: whichever
        // held its window first (on Kafka a poll takes all 2,000 at once, and nothing is
        // committed for seconds).
        let threshold = &out["threshold"];
        match threshold["name"].as_str() {
            Some("max_lag") => {
                assert_eq!(threshold["limit"], 300.0, "{out}");
                assert!(threshold["value"].as_f64().unwrap() > 300.0, "{out}");
                assert!(out["observed"]["lag"].as_u64().unwrap() > 300, "{out}");
            }
            Some("min_messages_per_second") => {
                assert_eq!(threshold["limit"], 100.0, "{out}");
                assert!(threshold["value"].as_f64().unwrap() < 100.0, "{out}");
                // The rate counts as short only while at least a second's worth waits.
                assert!(out["observed"]["lag"].as_u64().unwrap() >= 100, "{out}");
            }
            _ => panic!("scaled out for another reason: {out}"),
        }
        assert!(out["threshold"]["held_seconds"].as_f64().unwrap() >= 1.5, "{out}");
        assert_eq!(
            (out["instances_before"].as_u64(), out["instances_after"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(out["applied"], true);
        assert!(wait_until(Duration::from_secs(10), || instances(&platform).len() == 2));

        wait_for_count(&platform, &lab, "events", 2000, Duration::from_secs(120));
        let inward = wait_for_decision(&platform, "scale_in", 0, Duration::from_secs(30));
        let scale_outs = decisions(&platform)
            .iter()
            .take_while(|d| d["action"] != "scale_in")
            .filter(|d| d["action"] == "scale_out" && d["applied"] == true)
            .count();
        assert!(scale_outs <= 3, "at most max_stream_instances - 1 steps out");
        assert_eq!(inward["threshold"]["name"], "idle_seconds", "{inward}");
        assert_eq!(inward["observed"]["lag"], 0, "{inward}");
        assert_eq!(inward["observed"]["messages_per_second"], 0.0, "{inward}");
        assert_eq!(
            (inward["instances_before"].as_u64(), inward["instances_after"].as_u64()),
            (Some(scale_outs as u64 + 1), Some(scale_outs as u64))
        );
        // Down to the minimum (1) and no further.
        assert!(wait_until(Duration::from_secs(60), || instances(&platform).len() == 1));
        let settled = decisions(&platform).len();
        std::thread::sleep(Duration::from_secs(6)); // more than an idle window
        assert_eq!(
            decisions(&platform).len(),
            settled,
            "nothing more to decide at the minimum"
        );
        assert!(
            platform.log().contains(&format!(
                "stream decision tenant=lab threshold={} event=Fired",
                threshold["name"].as_str().unwrap()
            )),
            "one structured line per decision"
        );
        // What the decisions are based on is visible too: the reports, the stats, /metrics.
        let (_, reports) = platform.get("/v1/tenants/lab/stream/reports?limit=1000", "lab-token");
        let reports = reports["reports"].as_array().unwrap();
        assert!(
            reports.iter().any(|r| r["lag"].as_u64().unwrap_or(0) > 300),
            "{reports:?}"
        );
        // Every row once in the table. The reports count rows written: the partitions that
        // moved at the scale-out had their last, uncommitted batch delivered again to their new
        // owner (at least once), so they may count up to a batch per partition twice.
        assert_eq!(platform.count("lab", "lab-token", "events"), 2000);
        let written: u64 = reports.iter().map(|r| r["rows"].as_u64().unwrap()).sum();
        assert!(
            (2000..=4000).contains(&written),
            "the reports account for every row: {written}"
        );
        assert!(reports.iter().any(|r| r["p95_latency_ms"].as_f64().is_some()));
        assert!(
            std::fs::read_to_string(platform.dir.join("client-reports/lab_decisions.jsonl"))
                .unwrap()
                .contains("\"scale_in\"")
        );
        let (_, stats) = platform.get("/v1/tenants/lab/stats", "lab-token");
        assert_eq!(stats["stream"]["instances"], 1, "{stats}");
        let (_, metrics) = platform.get("/metrics", "");
        let metrics = metrics.as_str().unwrap_or_default().to_string();
        assert!(
            metrics.contains("mysimbdp_stream_decisions_total{tenant=\"lab\",action=\"scale_out\"}"),
            "{metrics}"
        );
        assert!(metrics.contains("mysimbdp_stream_ingest_seconds_count{tenant=\"lab\",instance="));
        assert!(metrics.contains("mysimbdp_stream_lag{tenant=\"lab\"}"));
        eprintln!("{queue:?}: scaled out {scale_outs} time(s), then in, 2000 rows stored");
    }
}

#[test]
fn a_tenant_at_zero_instances_starts_one_for_a_message_and_returns_to_zero_when_idle() {
    for queue in QueueBackend::all() {
        let lab = lab(&[("min_stream_instances", json!(0))]);
        let platform = start(&lab, queue, FAST_MONITOR);
        std::thread::sleep(Duration::from_secs(1)); // a supervisor round: nothing starts
        assert_eq!(instances(&platform).len(), 0, "pay per use: nothing runs");
        post(&platform, &["\"first,1\"".to_string()]);
        wait_for_count(&platform, &lab, "events", 1, Duration::from_secs(30));
        let woke = &decisions(&platform)[0];
        assert_eq!(woke["threshold"]["name"], "message_arrived", "{woke}");
        assert_eq!(
            (woke["action"].as_str(), woke["applied"].as_bool()),
            (Some("scale_out"), Some(true))
        );
        assert_eq!(woke["instances_after"], 1);
        // Idle again: back to zero, and a later message wakes it again.
        wait_for_decision(&platform, "scale_in", 1, Duration::from_secs(30));
        assert!(wait_until(Duration::from_secs(30), || instances(&platform).is_empty()));
        post(&platform, &["\"second,2\"".to_string()]);
        wait_for_count(&platform, &lab, "events", 2, Duration::from_secs(30));
        let all = decisions(&platform);
        assert_eq!(
            all.iter().map(|d| d["action"].as_str().unwrap()).collect::<Vec<_>>(),
            ["scale_out", "scale_in", "scale_out"],
            "{queue:?}: {all:?}"
        );
    }
}

#[test]
fn with_automatic_scaling_off_the_manager_records_what_it_would_have_done_and_does_nothing() {
    let lab = lab(&[
        ("stream_thresholds", json!({"max_lag": 300})),
        ("autoscale", json!(false)),
    ]);
    let platform = start(&lab, QueueBackend::Embedded, FAST_MONITOR);
    assert!(wait_until(Duration::from_secs(10), || instances(&platform).len() == 1));
    post(&platform, &slow_messages(0..1500, 3));
    let would = wait_for_decision(&platform, "scale_out", 0, Duration::from_secs(30));
    assert_eq!(would["applied"], false, "{would}");
    assert!(
        would["reason"].as_str().unwrap().contains("automatic scaling is off"),
        "{would}"
    );
    assert_eq!(would["instances_after"], 1);
    wait_for_count(&platform, &lab, "events", 1500, Duration::from_secs(120));
    assert_eq!(instances(&platform).len(), 1, "nothing was scaled");
}

#[test]
fn a_plugin_failing_on_its_messages_crosses_the_failure_ratio_without_a_crash_and_restart_loop() {
    let lab = lab(&[]);
    let platform = start(&lab, QueueBackend::Embedded, FAST_MONITOR);
    assert!(wait_until(Duration::from_secs(10), || instances(&platform).len() == 1));
    let before: Vec<Value> = instances(&platform).iter().map(|i| i["instance_id"].clone()).collect();
    let lines: Vec<String> = (0..300).map(|_| "\"ERROR\"".to_string()).collect();
    post(&platform, &lines);
    let decision = wait_for_decision(&platform, "none", 0, Duration::from_secs(60));
    assert_eq!(decision["threshold"]["name"], "max_failure_ratio", "{decision}");
    assert!(decision["threshold"]["value"].as_f64().unwrap() > 0.5, "{decision}");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("more instances would fail the same")
    );
    // The version failed on everything it was given: quarantined, and its status says so.
    let mut plugin = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (_, stats) = platform.get("/v1/tenants/lab/stats", "lab-token");
            plugin = stats["plugins"][0].clone();
            plugin["version"]["state"] == "quarantined"
        }),
        "{plugin}"
    );
    assert!(plugin["version"]["failures"].as_u64().unwrap() >= 3, "{plugin}");
    // The same instance waits; nothing crashed and restarted.
    let after: Vec<Value> = instances(&platform).iter().map(|i| i["instance_id"].clone()).collect();
    assert_eq!(before, after);
    assert!(!platform.log().contains("ended; starting it again"));
    assert_eq!(platform.get("/healthz", "").0, 200);
    // Its messages are not thrown away: they wait in the topic for a version that works.
    let mut waiting = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            waiting = instances(&platform)[0].clone();
            waiting["state"] == "waiting" && waiting["lag"] == 300
        }),
        "{waiting}"
    );
    assert!(waiting["note"].as_str().unwrap().contains("quarantined"), "{waiting}");
}

#[test]
fn a_load_hovering_at_the_lag_threshold_for_2_minutes_causes_at_most_one_scale_step_each_way() {
    if !slow_tier("hovering load") {
        return;
    }
    let lab = lab(&[("stream_thresholds", json!({"max_lag": 400}))]);
    let monitor = "[monitor]
report_every_seconds = 1.0
hold_seconds = 5.0
cooldown_seconds = 15.0
idle_seconds = 20.0
";
    let platform = start(&lab, QueueBackend::Embedded, monitor);
    assert!(wait_until(Duration::from_secs(10), || instances(&platform).len() == 1));
    // One instance does about 200 rows/s (each behind a 5 ms sleep); the load is 200 rows/s,
    // over a lag that starts at the threshold: it hovers there until a second instance drains
    // it, then stays low. Never idle: no scale-in either.
    post(&platform, &slow_messages(0..200, 5));
    let began = Instant::now();
    let mut next = 200u64;
    let mut second = 0u32;
    while began.elapsed() < Duration::from_secs(120) {
        second += 1;
        post(&platform, &slow_messages(next..next + 200, 5));
        next += 200;
        let due = began + Duration::from_secs(u64::from(second));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let all = decisions(&platform);
    let count = |action: &str| all.iter().filter(|d| d["action"] == action).count();
    assert!(count("scale_out") <= 1, "{all:?}");
    assert!(count("scale_in") <= 1, "{all:?}");
    wait_for_count(&platform, &lab, "events", next, Duration::from_secs(300));
    eprintln!("hovering: {} decisions: {all:?}", all.len());
    let (_, body, _) = platform.request("GET", "/v1/tenants/lab/stream/decisions", ADMIN_TOKEN, b"");
    assert_eq!(
        body["decisions"].as_array().map(Vec::len),
        Some(all.len()),
        "the operator sees the same"
    );
}

#[test]
fn a_tenant_over_its_storage_quota_is_paused_and_resumes_once_the_quota_is_raised() {
    let mut lab = lab(&[]);
    lab.max_memory = 256 << 10;
    let platform = start(&lab, QueueBackend::Embedded, FAST_MONITOR);
    assert!(wait_until(Duration::from_secs(10), || instances(&platform).len() == 1));
    // Messages until the store holds the quota: the message API refuses with 507 then.
    let mut accepted = 0u64;
    let mut refused = None;
    for _ in 0..100 {
        let lines: Vec<String> = (accepted..accepted + 500).map(|i| format!("\"key{i},{i}\"")).collect();
        let (status, body, _) = platform.post_messages("lab", "lab-token", NDJSON, lines.join("\n").as_bytes());
        match status {
            202 => accepted += 500,
            507 => {
                refused = Some(body);
                break;
            }
            other => panic!("{other}: {body}"),
        }
        wait_for_count(&platform, &lab, "events", accepted, Duration::from_secs(30));
    }
    assert!(refused.is_some(), "50,000 messages never reached a 256 KiB quota");

    let pause = wait_for_decision(&platform, "pause", 0, Duration::from_secs(30));
    assert_eq!(pause["threshold"]["name"], "max_memory_size", "{pause}");
    assert_eq!(pause["observed"]["over_quota"], true, "{pause}");
    assert_eq!(pause["applied"], true, "{pause}");
    let mut waiting = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            waiting = instances(&platform)[0].clone();
            waiting["state"] == "waiting"
        }),
        "{waiting}"
    );
    assert!(
        waiting["note"].as_str().unwrap().contains("over its storage quota"),
        "{waiting}"
    );
    let (_, stats) = platform.get("/v1/tenants/lab/stats", "lab-token");
    assert_eq!(stats["stream"]["paused"], true, "{stats}");

    // The operator raises the quota: the manager resumes the tenant and messages flow again.
    lab.max_memory = 64 << 30;
    platform.write_customers(&mysimbdp_tests::platform::customer_information(&[lab.clone()]));
    let resume = wait_for_decision(&platform, "resume", 0, Duration::from_secs(30));
    assert_eq!(resume["threshold"]["event"], "cleared", "{resume}");
    let lines: Vec<String> = (accepted..accepted + 500).map(|i| format!("\"key{i},{i}\"")).collect();
    post(&platform, &lines);
    wait_for_count(&platform, &lab, "events", accepted + 500, Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(10), || instances(&platform)[0]["state"]
        == "running"));
}
