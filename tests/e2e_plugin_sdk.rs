//! The plugin SDK as a tenant developer meets it: `mysimbdp plugin new` writes a crate that
//! passes its own test, builds, passes `mysimbdp plugin check --sample`, and ingests its sample
//! through a running platform; a crate whose `TENANT` disagrees with its name does not compile.
//! Slow tier: it builds crates with cargo.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mysimbdp_tests::platform::{Backend, Platform, TenantSpec};
use mysimbdp_tests::stream::{NDJSON, wait_for_count, wait_for_stream_plugin};
use mysimbdp_tests::{install_file, slow_tier, target_dir};

fn mysimbdp(args: &[&str]) -> Output {
    Command::new(target_dir().join("mysimbdp"))
        .args(args)
        .output()
        .expect("the mysimbdp binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `mysimbdp plugin check LIBRARY --sample SAMPLE`.
fn check_sample(library: &Path, sample: &Path) -> Output {
    let (library, sample) = (library.to_str().unwrap(), sample.to_str().unwrap());
    mysimbdp(&["plugin", "check", library, "--sample", sample])
}

/// Runs cargo in `dir` (a debug build: a tenant's first build, and the quickest) with a target
/// folder beside the workspace's, so the dependencies are built once.
fn cargo(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir().parent().unwrap().join("sdk-crates"));
    command.output().expect("cargo runs")
}

/// `plugin new`, then its tests, then its build: the `.so`.
fn new_crate(root: &Path, tenant: &str, kind: &str) -> (PathBuf, PathBuf) {
    let dir = root.join(format!("{tenant}-{kind}"));
    let made = mysimbdp(&["plugin", "new", tenant, kind, "--dir", dir.to_str().unwrap()]);
    assert!(made.status.success(), "{}", text(&made));
    let tested = cargo(&dir, &["test"]);
    assert!(tested.status.success(), "{}", text(&tested));
    assert!(text(&tested).contains("test result: ok. 1 passed"), "{}", text(&tested));
    let built = cargo(&dir, &["build"]);
    assert!(built.status.success(), "{}", text(&built));
    let name = if kind == "stream" {
        format!("libclientstreamingestapp_{tenant}.so")
    } else {
        format!("libclientbatchingestapp_{tenant}_{kind}.so")
    };
    let library = target_dir().parent().unwrap().join("sdk-crates/debug").join(&name);
    assert!(library.is_file(), "{} was not built", library.display());
    (dir, library)
}

#[test]
fn a_crate_from_plugin_new_tests_builds_checks_its_sample_and_ingests_through_the_platform() {
    if !slow_tier("plugin new, built with cargo") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let acme = TenantSpec::new("acme", &["csv"]);
    let beta = TenantSpec::new("beta", &["csv"]);
    let platform = Platform::start(Backend::Embedded, &[acme.clone(), beta.clone()], "");

    // A batch plugin.
    let (dir, library) = new_crate(root.path(), "acme", "csv");
    let sample = dir.join("sample.csv");
    let checked = check_sample(&library, &sample);
    let shown = text(&checked);
    assert!(checked.status.success(), "{shown}");
    assert!(shown.contains("OK: this platform loads it"), "{shown}");
    assert!(shown.contains("rows of measurements (the first 2 of 2)"), "{shown}");
    assert!(shown.contains("line 4: value: \"warm\" is not a number"), "{shown}");
    assert!(
        shown.contains("gave 2 rows for measurements, 1 rejected; ok"),
        "{shown}"
    );
    install_file(
        &library,
        &platform.dir.join("plugins/libclientbatchingestapp_acme_csv.so"),
    );
    let (status, body) = platform.upload("acme", "acme-token", "sample.csv", &std::fs::read(&sample).unwrap());
    assert_eq!(status, 201, "{body}");
    let report = platform.wait_for_report(
        "acme",
        "acme-token",
        body["file_id"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(
        (report["rows_ingested"].as_u64(), report["rows_failed"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert_eq!(platform.count("acme", "acme-token", "measurements"), 2);

    // A stream plugin, checked on NDJSON messages and fed over the message API.
    let (dir, library) = new_crate(root.path(), "beta", "stream");
    let sample = dir.join("sample.ndjson");
    let checked = check_sample(&library, &sample);
    let shown = text(&checked);
    assert!(checked.status.success(), "{shown}");
    assert!(shown.contains("sample:      3 messages of"), "{shown}");
    assert!(
        shown.contains("gave 2 rows for measurements, 1 rejected; ok"),
        "{shown}"
    );
    assert!(shown.contains("offset 2: value: expected a number"), "{shown}");
    install_file(&library, &platform.dir.join("plugins/libclientstreamingestapp_beta.so"));
    wait_for_stream_plugin(&platform, &beta);
    let (status, body, _) = platform.post_messages("beta", "beta-token", NDJSON, &std::fs::read(&sample).unwrap());
    assert_eq!(status, 202, "{body}");
    wait_for_count(&platform, &beta, "measurements", 2, Duration::from_secs(30));
    let mut rejected = serde_json::Value::Null;
    assert!(
        mysimbdp_tests::wait_until(Duration::from_secs(30), || {
            rejected = platform.get("/v1/tenants/beta/stream/rejected", "beta-token").1;
            rejected["rows"].as_array().is_some_and(|r| r.len() == 1)
        }),
        "{rejected}"
    );
    assert!(rejected["rows"][0]["offset"].as_u64().is_some(), "{rejected}");

    // A crate named for tenant beta that says it is another tenant's does not compile.
    let lib = dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    assert!(code.contains("const TENANT: &'static str = \"beta\";"));
    std::fs::write(
        &lib,
        code.replace(
            "const TENANT: &'static str = \"beta\";",
            "const TENANT: &'static str = \"other\";",
        ),
    )
    .unwrap();
    let refused = cargo(&dir, &["build"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("its TENANT must be the tenant that name names"),
        "{}",
        text(&refused)
    );
}

#[test]
fn plugin_check_as_checks_a_build_under_the_name_it_will_be_deployed_as() {
    // The lab plugins are built under their crate names, as a tenant's build is.
    let library = mysimbdp_tests::library("lab_plugin_v1");
    let plain = mysimbdp(&["plugin", "check", library.to_str().unwrap()]);
    assert!(!plain.status.success());
    assert!(text(&plain).contains("wrongly named"), "{}", text(&plain));
    let named = mysimbdp(&[
        "plugin",
        "check",
        library.to_str().unwrap(),
        "--as",
        "libclientbatchingestapp_lab_csv.so",
    ]);
    assert!(named.status.success(), "{}", text(&named));
    assert!(text(&named).contains("OK: this platform loads it"));
}

#[test]
fn plugin_check_sample_runs_an_example_plugin_and_shows_rows_nulls_and_rejects() {
    let library = mysimbdp_tests::library("clientbatchingestapp_client1_csv");
    let root = tempfile::tempdir().unwrap();
    let sample = root.path().join("sample.csv");
    std::fs::write(
        &sample,
        "time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,pressure,temperature,dev-id\n\
         1541023215496,2018-10-31T22:00:15.496000Z,1031.07,-12,4,1032,2881,,1002.44,22.62,EA:1F:45:6A:F8:0D\n\
         1541023216496,2018-10-31T22:00:16.496000Z,1031.07,-12,4,1032,2881,29.5,1002.44,hot,EA:1F:45:6A:F8:0D\n",
    )
    .unwrap();
    let checked = check_sample(&library, &sample);
    let shown = text(&checked);
    assert!(checked.status.success(), "{shown}");
    assert!(shown.contains("rows of readings (the first 1 of 1)"), "{shown}");
    assert!(shown.contains("\"ea:1f:45:6a:f8:0d\""), "{shown}");
    assert!(shown.contains("| null"), "the empty humidity shows as null: {shown}");
    assert!(shown.contains("line 3: temperature"), "{shown}");
    assert!(shown.contains("gave 1 rows for readings, 1 rejected; ok"), "{shown}");
    // A file the plugin refuses as a whole: the check says so and exits 1.
    std::fs::write(&sample, "no header here\n").unwrap();
    let refused = check_sample(&library, &sample);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("FAILED: the plugin failed on the file"),
        "{}",
        text(&refused)
    );
}
