//! The running platform and its tenants and plugins: pay-per-use add and remove, bad edits,
//! plugin discovery, a panicking plugin, `mysimbdp plugin check`.

use std::time::Duration;

use datagen::{Shape, Spec};
use mysimbdp_tests::platform::{Backend, Platform, TenantSpec, customer_information};
use mysimbdp_tests::{library, mapped_lines, target_dir, wait_until};

fn client1() -> TenantSpec {
    TenantSpec::new("client1", &["csv"])
}

fn client2() -> TenantSpec {
    TenantSpec::new("client2", &["txt"])
}

fn plugin_copies(platform: &Platform, tenant: &str) -> Vec<String> {
    mapped_lines(&platform.pid(), &format!("clientbatchingestapp_{tenant}_"))
        .into_iter()
        .filter(|l| l.contains("plugin-cache"))
        .collect()
}

fn small_csv(seed: u64) -> Vec<u8> {
    Spec::rows(Shape::Client1Csv, 200).with_seed(seed).to_vec()
}

#[test]
fn removing_a_tenant_unloads_its_plugins_and_refuses_it_and_adding_it_back_loads_them_again() {
    let platform = Platform::start(Backend::Embedded, &[client1(), client2()], "");
    assert!(
        !plugin_copies(&platform, "client1").is_empty(),
        "client1's plugin is loaded at start"
    );

    platform.write_customers(&customer_information(&[client2()]));
    assert!(
        wait_until(Duration::from_secs(15), || plugin_copies(&platform, "client1")
            .is_empty()),
        "client1's plugin is unmapped after its removal:\n{}",
        plugin_copies(&platform, "client1").join("\n")
    );
    let (status, body) = platform.upload("client1", "client1-token", "a.csv", &small_csv(1));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("Client not found in customer data"))
    );
    let txt = Spec::rows(Shape::Client2Txt, 100).to_vec();
    let (status, body) = platform.upload("client2", "client2-token", "t.txt", &txt);
    assert_eq!(status, 201, "the other tenant is untouched: {body}");
    assert!(!plugin_copies(&platform, "client2").is_empty());
    assert!(
        platform
            .log()
            .contains("reason=\"tenant removed from customer_information.json\"")
    );

    platform.write_customers(&customer_information(&[client1(), client2()]));
    assert!(
        wait_until(Duration::from_secs(15), || !plugin_copies(&platform, "client1")
            .is_empty()),
        "loaded again"
    );
    let (status, body) = platform.upload("client1", "client1-token", "a.csv", &small_csv(1));
    assert_eq!(status, 201, "{body}");
    let report = platform.wait_for_report(
        "client1",
        "client1-token",
        body["file_id"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(report["status"], "done");
    assert_eq!(report["rows_ingested"], 200);
}

#[test]
fn an_invalid_edit_keeps_the_last_good_configuration_and_logs_why() {
    let platform = Platform::start(Backend::Embedded, &[client1()], "");
    platform.write_customers("{\n  \"client1\": {\n    \"file_type\": [\"csv\"],\n");
    assert!(
        wait_until(Duration::from_secs(10), || platform
            .log()
            .contains("customer configuration rejected")),
        "{}",
        platform.tail_log()
    );
    let log = platform.log();
    let line = log
        .lines()
        .find(|l| l.contains("customer configuration rejected"))
        .unwrap();
    assert!(
        line.contains("customer_information.json:4:"),
        "the log names file and line: {line}"
    );

    let (status, body) = platform.upload("client1", "client1-token", "a.csv", &small_csv(2));
    assert_eq!(status, 201, "the last good configuration is still in force: {body}");
    assert!(!plugin_copies(&platform, "client1").is_empty());

    let mut narrower = client1();
    narrower.max_file_size = 10;
    platform.write_customers(&customer_information(&[narrower]));
    assert!(wait_until(Duration::from_secs(10), || {
        platform.upload("client1", "client1-token", "a.csv", &small_csv(3)).0 == 413
    }));
}

#[test]
fn a_plugin_dropped_in_later_picks_up_the_files_waiting_for_it() {
    let platform = Platform::start(Backend::Embedded, &[TenantSpec::new("client2", &["txt"])], "");
    std::fs::remove_file(platform.dir.join("plugins/libclientbatchingestapp_client2_txt.so")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || plugin_copies(
        &platform, "client2"
    )
    .is_empty()));

    let txt = Spec::rows(Shape::Client2Txt, 500).to_vec();
    let (status, body) = platform.upload("client2", "client2-token", "trace.txt", &txt);
    assert_eq!(status, 201, "{body}");
    let file_id = body["file_id"].as_str().unwrap().to_string();
    // The file waits, and says why.
    let mut status = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = platform
                .get(&format!("/v1/tenants/client2/files/{file_id}"), "client2-token")
                .1;
            status["note"].is_string()
        }),
        "{status}"
    );
    assert_eq!(status["status"], "queued");
    assert!(
        status["note"]
            .as_str()
            .unwrap()
            .contains("libclientbatchingestapp_client2_txt.so"),
        "{status}"
    );

    platform.install_plugin(
        "clientbatchingestapp_client2_txt",
        "libclientbatchingestapp_client2_txt.so",
    );
    let report = platform.wait_for_report("client2", "client2-token", &file_id, Duration::from_secs(60));
    assert_eq!(report["status"], "done");
    assert_eq!(report["rows_ingested"], 500);
}

#[test]
fn a_panicking_plugin_fails_its_file_by_name_while_other_tenants_keep_ingesting() {
    let lab = TenantSpec::new("lab", &["csv"]);
    let platform = Platform::start(Backend::Embedded, &[lab.clone(), client1()], "");
    platform.install_plugin("lab_plugin_v1", "libclientbatchingestapp_lab_csv.so");
    assert!(wait_until(Duration::from_secs(10), || !plugin_copies(&platform, "lab").is_empty()));

    let (status, body) = platform.upload("lab", &lab.token(), "boom.csv", b"a,1\nPANIC\n");
    assert_eq!(status, 201, "{body}");
    let report = platform.wait_for_report(
        "lab",
        &lab.token(),
        body["file_id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(report["status"], "failed");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("clientbatchingestapp_lab_csv") && error.contains("asked to panic"),
        "{error}"
    );
    assert!(
        platform
            .dir
            .join("client-staging-input-directory/.failed")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    let kept = report["file_path"].as_str().unwrap();
    assert!(
        kept.starts_with("client-staging-input-directory/.failed/") && platform.dir.join(kept).is_file(),
        "the report says where the failed file is: {kept}"
    );

    let (status, body) = platform.upload("client1", "client1-token", "ok.csv", &small_csv(4));
    assert_eq!(status, 201);
    let report = platform.wait_for_report(
        "client1",
        "client1-token",
        body["file_id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(report["status"], "done", "the host lives on: {report}");
    assert_eq!(platform.get("/healthz", "").0, 200);
}

fn plugin_check(file: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(target_dir().join("mysimbdp"))
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn plugin_check_prints_the_manifest_and_a_verdict() {
    let (code, text) = plugin_check(&library("clientbatchingestapp_client2_txt"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("manifest:    tenant=client2 kind=batch file_types=[txt] plugin_version=1.0.0"),
        "{text}"
    );
    assert!(
        text.contains("table invocations: partition key (app, hour), clustering key (func, end_us)"),
        "{text}"
    );
    assert!(text.contains("verdict:     OK"), "{text}");

    let (code, text) = plugin_check(&library("foreign_library"));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("REJECTED") && text.contains("is not a mysimbdp plugin"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("libclientbatchingestapp_client2_csv.so");
    std::fs::copy(library("clientbatchingestapp_client2_txt"), &renamed).unwrap();
    let (code, text) = plugin_check(&renamed);
    assert_eq!(code, 1);
    assert!(text.contains("its file name says file type \"csv\""), "{text}");

    let (code, text) = plugin_check(&library("future_api_plugin"));
    assert_eq!(code, 1);
    assert!(text.contains("built against plugin-api version 2"), "{text}");
}

/// Read system calls the process has made so far (`/proc/<pid>/io`).
fn read_syscalls(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_touched_configuration_is_not_read_again_and_again_and_sigterm_still_stops_the_platform() {
    let mut platform = Platform::start(Backend::Embedded, &[client1()], "");
    let config = platform.dir.join("customer_information.json");
    let text = std::fs::read(&config).unwrap();
    std::fs::write(&config, &text).unwrap(); // a rewrite with the same content: no reload
    std::thread::sleep(Duration::from_millis(500));
    let before = read_syscalls(&platform.pid());
    std::thread::sleep(Duration::from_secs(2));
    let reads = read_syscalls(&platform.pid()) - before;
    assert!(
        reads < 20,
        "an idle platform made {reads} read calls in 2 s after the configuration was touched"
    );
    assert!(
        !platform.log().contains("tenants reloaded"),
        "the same content is no reload"
    );

    // A second platform on the same folder says why it cannot start, and exits.
    let second = std::process::Command::new(target_dir().join("mysimbdp"))
        .args(["serve", "--root"])
        .arg(&platform.dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let output = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second platform took {:?} to give up",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("held by another process"), "{stderr}");

    let took = platform.stop_within(Duration::from_secs(10));
    eprintln!("stopped {took:?} after SIGTERM");
}

#[test]
fn sigterm_stops_the_platform_within_10_s_after_a_plugin_swap_and_during_an_ingestion() {
    let lab = TenantSpec::new("lab", &["csv"]);
    let mut platform = Platform::start(Backend::Embedded, std::slice::from_ref(&lab), "");
    platform.install_plugin("lab_plugin_v1", "libclientbatchingestapp_lab_csv.so");
    assert!(wait_until(Duration::from_secs(10), || platform
        .log()
        .contains("plugin loaded: plugin=clientbatchingestapp_lab_csv")));
    platform.install_plugin("lab_plugin_v2", "libclientbatchingestapp_lab_csv.so");
    assert!(wait_until(Duration::from_secs(10), || platform
        .log()
        .contains("plugin reloaded: plugin=clientbatchingestapp_lab_csv")));
    platform.stop_within(Duration::from_secs(10));

    // A file whose plugin call is stuck (it waits for a file that never comes) does not hold
    // the platform up; it stays staged and is done after the restart.
    platform.start_again();
    let release = platform.dir.join("release");
    let (status, body) = platform.upload(
        "lab",
        &lab.token(),
        "stuck.csv",
        format!("a,1\nWAIT {}\nb,2\n", release.display()).as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let file_id = body["file_id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(20), || {
        platform
            .get(&format!("/v1/tenants/lab/files/{file_id}"), &lab.token())
            .1["status"]
            == "ingesting"
    }));
    platform.stop_within(Duration::from_secs(10));
    assert_eq!(
        platform.staged_files().len(),
        1,
        "the acknowledged file is still staged"
    );

    std::fs::write(&release, "").unwrap();
    platform.start_again();
    let report = platform.wait_for_report("lab", &lab.token(), &file_id, Duration::from_secs(60));
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["rows_ingested"], 2);
}

/// The lab plugin's status as `/v1/tenants/lab/stats` shows it.
fn lab_status(platform: &Platform, lab: &TenantSpec) -> serde_json::Value {
    let (_, stats) = platform.get("/v1/tenants/lab/stats", &lab.token());
    stats["plugins"]
        .as_array()
        .and_then(|plugins| {
            plugins
                .iter()
                .find(|p| p["plugin"] == "clientbatchingestapp_lab_csv")
                .cloned()
        })
        .unwrap_or_default()
}

/// Uploads `body` for lab and returns its report once done.
fn lab_file(platform: &Platform, lab: &TenantSpec, body: &str) -> serde_json::Value {
    platform.ingest("lab", &lab.token(), "items.csv", body.as_bytes())
}

#[test]
fn a_version_that_adds_a_nullable_column_evolves_the_table_and_one_that_cannot_be_applied_is_refused() {
    for backend in Backend::all() {
        let lab = TenantSpec::new("lab", &["csv"]);
        let platform = Platform::start(backend, std::slice::from_ref(&lab), "");
        let installed = |crate_name: &str, version: &str| {
            platform.install_plugin(crate_name, "libclientbatchingestapp_lab_csv.so");
            wait_until(Duration::from_secs(20), || {
                lab_status(&platform, &lab)["version"]["plugin_version"] == version
            })
        };
        assert!(installed("lab_plugin_v1", "1.0.0"), "{}", platform.tail_log());
        lab_file(&platform, &lab, "a,1\nb,2\n");

        // 3.0.0 adds the nullable column `note`: applied at load, the next file is done on it.
        assert!(
            installed("lab_plugin_v3", "3.0.0"),
            "{backend:?}: {}",
            platform.tail_log()
        );
        let report = lab_file(&platform, &lab, "c,3\n");
        assert_eq!(report["plugin_version"], "3.0.0");
        let (_, tables) = platform.get("/v1/tenants/lab/tables", &lab.token());
        let columns: Vec<&str> = tables["tables"][0]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["key", "number", "version", "thread_calls", "note"],
            "{backend:?}"
        );
        let (_, page) = platform.get("/v1/tenants/lab/tables/items/rows", &lab.token());
        let notes: std::collections::BTreeMap<String, serde_json::Value> = page["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].as_str().unwrap().to_string(), r["note"].clone()))
            .collect();
        assert_eq!(notes["a"], serde_json::Value::Null, "{backend:?}: {page}");
        assert_eq!(notes["c"], "note of c", "{backend:?}: {page}");

        // A version declaring `number` as text cannot be applied: refused with the reason,
        // and 3.0.0 keeps ingesting.
        platform.install_plugin("lab_plugin_retyped", "libclientbatchingestapp_lab_csv.so");
        let mut status = serde_json::Value::Null;
        assert!(wait_until(Duration::from_secs(20), || {
            status = lab_status(&platform, &lab);
            status["load_failure"]["error"].is_string()
        }));
        let error = status["load_failure"]["error"].as_str().unwrap();
        assert!(
            error.contains("column number changes type from bigint to text"),
            "{backend:?}: {error}"
        );
        assert_eq!(status["version"]["plugin_version"], "3.0.0");
        assert_eq!(lab_file(&platform, &lab, "d,4\n")["plugin_version"], "3.0.0");

        // Going back to 1.0.0 would leave out `note`, which holds data: refused too.
        platform.install_plugin("lab_plugin_v1", "libclientbatchingestapp_lab_csv.so");
        assert!(
            wait_until(Duration::from_secs(20), || {
                status = lab_status(&platform, &lab);
                status["load_failure"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("column note is not declared by this version but holds data"))
            }),
            "{backend:?}: {status}"
        );
        assert_eq!(lab_file(&platform, &lab, "e,5\n")["plugin_version"], "3.0.0");
        assert_eq!(platform.count("lab", &lab.token(), "items"), 5);

        // `plugin check --root` shows the same without a running platform's help.
        let output = std::process::Command::new(target_dir().join("mysimbdp"))
            .args(["plugin", "check"])
            .arg(library("lab_plugin_retyped"))
            .args(["--as", "libclientbatchingestapp_lab_csv.so", "--root"])
            .arg(&platform.dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains("changes type from bigint to text"), "{text}");
    }
}

#[test]
fn bad_edits_with_a_multi_byte_digest_or_a_tenant_given_twice_are_refused_and_later_edits_still_apply() {
    let (one, two) = (client1(), client2());
    let platform = Platform::start(Backend::Embedded, &[one.clone(), two.clone()], "");
    let good = customer_information(&[one.clone(), two.clone()]);

    // A digest with a multi-byte character: refused with its line, the watcher lives on.
    let digest = mysimbdp::tenants::TokenDigest::of(&one.token()).to_hex();
    platform.write_customers(&good.replacen(&digest, &format!("é{}", &digest[2..]), 1));
    assert!(wait_until(Duration::from_secs(10), || {
        platform.log().contains("is not a SHA-256 digest")
    }));
    let log = platform.log();
    let line = log.lines().find(|l| l.contains("is not a SHA-256 digest")).unwrap();
    assert!(line.contains("customer_information.json:"), "{line}");

    // client2's entry renamed to client1: a tenant given twice, refused; client2's token still
    // cannot read client1's data.
    let renamed = good.replace("\"client2\"", "\"client1\"");
    platform.write_customers(&renamed);
    assert!(
        wait_until(Duration::from_secs(10), || {
            platform.log().contains("tenant client1 is given twice")
        }),
        "{}\n{renamed}",
        platform.tail_log()
    );
    let (status, _) = platform.get("/v1/tenants/client1/stats", &two.token());
    assert_eq!(status, 401, "client2's token reads nothing of client1");
    assert_eq!(platform.get("/v1/tenants/client2/stats", &two.token()).0, 200);

    // A later valid edit that removes client1 revokes its access.
    platform.write_customers(&customer_information(std::slice::from_ref(&two)));
    assert!(wait_until(Duration::from_secs(10), || {
        platform.get("/v1/tenants/client1/stats", &one.token()).0 == 401
    }));
    assert_eq!(platform.get("/v1/tenants/client2/stats", &two.token()).0, 200);
}
