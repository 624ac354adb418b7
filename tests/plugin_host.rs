//! The plugin host in this process: load, call, hot-reload and really unload real plugin
//! libraries, checked against this process's `/proc/self/maps` and RSS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RString;
use mysimbdp::coredms::Value;
use mysimbdp::plugin_host::rows::convert_batch;
use mysimbdp::plugin_host::{
    CallError, Instance, PluginHost, PluginHostConfig, PluginUnavailable, PluginVersion, StreamMessage,
};
use mysimbdp::tenants::watch::TenantsHandle;
use mysimbdp::tenants::{Tenants, TokenDigest};
use mysimbdp_tests::{install_file, library, mapped_lines, rss_kib, wait_until};
use plugin_api::ErrorKind;
use plugin_api::ffi::{FileInfo, RowBatch};

const LAB_FILE: &str = "libclientbatchingestapp_lab_csv.so";

struct Lab {
    _dir: tempfile::TempDir,
    plugins: PathBuf,
    cache: PathBuf,
    host: Arc<PluginHost>,
}

fn tenants(names_and_types: &[(&str, &str)]) -> Tenants {
    let entries: Vec<String> = names_and_types
        .iter()
        .map(|(name, types)| {
            let types: Vec<String> = types.split(',').map(|t| format!("{t:?}")).collect();
            format!(
                r#""{name}": {{"file_type": [{}], "max_files_number": 5, "max_file_size": 1000000, "max_memory_size": 100000000, "api_token_sha256": "{}"}}"#,
                types.join(","),
                TokenDigest::of(name).to_hex()
            )
        })
        .collect();
    Tenants::parse(&format!("{{{}}}", entries.join(",")), "test").unwrap()
}

fn start(tenant_list: &[(&str, &str)]) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let cache = dir.path().join("plugin-cache");
    let host = PluginHost::start(
        PluginHostConfig {
            plugins_dir: plugins.clone(),
            cache_dir: cache.clone(),
            quarantine_after: 3,
            debounce: Duration::from_millis(50),
            watch: false,
            admission: None,
            preflight: None,
        },
        TenantsHandle::fixed(tenants(tenant_list)),
    )
    .unwrap();
    Lab {
        _dir: dir,
        plugins,
        cache,
        host,
    }
}

impl Lab {
    /// Installs the test library `name` as the plugin file `target` and lets the host see it.
    fn deploy(&self, name: &str, target: &Path) {
        install_file(&library(name), target);
        self.host.reconcile_now();
    }
}

fn lab_version(lab: &Lab) -> Arc<PluginVersion> {
    lab.host
        .batch_plugin(&"lab".parse().unwrap(), &"csv".parse().unwrap())
        .unwrap()
}

/// Runs the version's `ingest_file` on `input`; returns the rows it produced.
fn ingest(version: &Arc<PluginVersion>, input: &str) -> Result<Vec<Vec<Value>>, CallError> {
    let tables: Vec<_> = version.manifest.tables.iter().cloned().map(Arc::new).collect();
    let input = input.to_string();
    let receiver = version
        .spawn_call(move |library| {
            let info = FileInfo {
                file_id: RString::from("1"),
                file_name: RString::from("test.csv"),
                file_type: RString::from("csv"),
                file_size: input.len() as u64,
                batch_rows: 100,
            };
            let mut rows = Vec::new();
            let mut sink = |batch: &RowBatch| {
                let host = convert_batch(batch, &tables)?;
                rows.extend(host.rows.iter().map(<[Value]>::to_vec));
                Ok(())
            };
            library
                .ingest_file(&info, &mut input.as_bytes(), &mut sink)
                .map(|()| rows)
        })
        .expect("the version takes calls");
    let result = receiver.blocking_recv().expect("the call ran");
    version.record_outcome(result.as_ref().map(|_| ()));
    result
}

fn version_of(rows: &[Vec<Value>]) -> &str {
    match &rows[0][2] {
        Value::Text(v) => v,
        other => panic!("not a version: {other:?}"),
    }
}

fn cache_mappings(cache: &Path) -> Vec<String> {
    mapped_lines("self", &cache.display().to_string())
}

#[test]
fn two_hundred_reload_cycles_leave_no_retired_copy_mapped_and_rss_flat() {
    let lab = start(&[("lab", "csv")]);
    let target = lab.plugins.join(LAB_FILE);
    let (v1, v2) = (library("lab_plugin_v1"), library("lab_plugin_v2"));
    let mut rss_after_warm_up = 0;
    for cycle in 0..200 {
        let (file, expected) = if cycle % 2 == 0 { (&v1, "v1") } else { (&v2, "v2") };
        install_file(file, &target);
        lab.host.reconcile_now();
        let version = lab_version(&lab);
        let rows = ingest(&version, "a,1\nb,2\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            version_of(&rows),
            expected,
            "cycle {cycle}: new work runs on the new version"
        );
        drop(version);
        assert!(
            wait_until(Duration::from_secs(10), || lab.host.retiring() == 0),
            "cycle {cycle}: the old version unloads"
        );
        let mapped = cache_mappings(&lab.cache);
        let current = lab_version(&lab).private_copy().display().to_string();
        assert!(
            mapped.iter().all(|line| line.contains(&current)),
            "cycle {cycle}: only the current copy may be mapped, found:\n{}",
            mapped.join("\n")
        );
        if cycle == 19 {
            rss_after_warm_up = rss_kib("self");
        }
    }
    let rss_end = rss_kib("self");
    assert_eq!(lab.host.unloaded(), 199);
    // One leaked library per cycle would add at least its touched pages (hundreds of KiB in a
    // debug build) 180 times over.
    assert!(
        rss_end < rss_after_warm_up + 12 * 1024,
        "RSS grew from {rss_after_warm_up} KiB after warm-up to {rss_end} KiB after 200 cycles"
    );

    std::fs::remove_file(&target).unwrap();
    lab.host.reconcile_now();
    assert!(wait_until(Duration::from_secs(10), || lab.host.retiring() == 0));
    assert_eq!(
        cache_mappings(&lab.cache),
        Vec::<String>::new(),
        "a removed plugin leaves nothing mapped"
    );
    assert!(matches!(
        lab.host.batch_plugin(&"lab".parse().unwrap(), &"csv".parse().unwrap()),
        Err(PluginUnavailable::Missing { .. })
    ));
}

#[test]
fn a_panicking_plugin_fails_its_call_by_name_and_the_host_serves_other_tenants() {
    let lab = start(&[("lab", "csv"), ("client1", "csv")]);
    install_file(&library("lab_plugin_v1"), &lab.plugins.join(LAB_FILE));
    install_file(
        &library("clientbatchingestapp_client1_csv"),
        &lab.plugins.join("libclientbatchingestapp_client1_csv.so"),
    );
    lab.host.reconcile_now();
    let version = lab_version(&lab);

    let error = ingest(&version, "a,1\nPANIC\n").unwrap_err();
    assert_eq!(error.kind, ErrorKind::Panic);
    assert!(
        error.message.contains("the lab plugin v1 was asked to panic"),
        "{}",
        error.message
    );

    // The same version still works, and so does another tenant's plugin.
    assert_eq!(ingest(&version, "a,1\n").unwrap().len(), 1);
    let client1 = lab
        .host
        .batch_plugin(&"client1".parse().unwrap(), &"csv".parse().unwrap())
        .unwrap();
    let csv = String::from_utf8(datagen::Spec::rows(datagen::Shape::Client1Csv, 10).to_vec()).unwrap();
    assert_eq!(ingest(&client1, &csv).unwrap().len(), 10);

    // Three failures in a row quarantine the version; a new file lifts it.
    for _ in 0..3 {
        assert!(ingest(&version, "PANIC\n").is_err());
    }
    let refused = lab
        .host
        .batch_plugin(&"lab".parse().unwrap(), &"csv".parse().unwrap())
        .unwrap_err();
    assert!(refused.to_string().contains("quarantined"), "{refused}");
    assert!(refused.to_string().contains("asked to panic"), "{refused}");
    assert!(version.spawn_call(|_| ()).is_err());

    lab.deploy("lab_plugin_v2", &lab.plugins.join(LAB_FILE));
    let v2 = lab_version(&lab);
    assert_eq!(version_of(&ingest(&v2, "a,1\n").unwrap()), "v2");
    let panicked_copy = version.private_copy().display().to_string();
    drop(version);
    assert!(wait_until(Duration::from_secs(10), || lab.host.retiring() == 0));
    // Whatever RUST_BACKTRACE says, a version that panicked leaves no mapping behind.
    assert_eq!(mapped_lines("self", &panicked_copy), Vec::<String>::new());
}

#[test]
fn foreign_and_incompatible_libraries_are_refused_with_the_file_and_the_reason() {
    let lab = start(&[("lab", "csv"), ("client1", "csv")]);
    let target = lab.plugins.join(LAB_FILE);
    let lab_id = ("lab".parse().unwrap(), "csv".parse().unwrap());

    lab.deploy("foreign_library", &target);
    let error = lab.host.batch_plugin(&lab_id.0, &lab_id.1).unwrap_err().to_string();
    assert!(
        error.contains(LAB_FILE) && error.contains("is not a mysimbdp plugin"),
        "{error}"
    );
    assert!(error.contains("MYSIMBDP_PLUGIN_API_TAG"), "{error}");

    lab.deploy("future_api_plugin", &target);
    let error = lab.host.batch_plugin(&lab_id.0, &lab_id.1).unwrap_err().to_string();
    let expected = format!("built against plugin-api version {}", plugin_api::API_VERSION + 1);
    assert!(
        error.contains(&expected) && error.contains("loads only version"),
        "{error}"
    );

    // A plugin of another tenant under this tenant's name.
    lab.deploy("clientbatchingestapp_client1_csv", &target);
    let error = lab.host.batch_plugin(&lab_id.0, &lab_id.1).unwrap_err().to_string();
    assert!(error.contains("names tenant \"client1\""), "{error}");

    // Broken files never took the process down, and leave nothing mapped.
    assert_eq!(cache_mappings(&lab.cache), Vec::<String>::new());
    lab.deploy("lab_plugin_v1", &target);
    assert_eq!(ingest(&lab_version(&lab), "a,1\n").unwrap().len(), 1);
}

#[test]
fn a_broken_update_keeps_the_working_version_serving() {
    let lab = start(&[("lab", "csv")]);
    let target = lab.plugins.join(LAB_FILE);
    lab.deploy("lab_plugin_v1", &target);
    std::fs::write(&target, b"\x7fELF truncated").unwrap();
    lab.host.reconcile_now();
    let version = lab_version(&lab);
    assert_eq!(version_of(&ingest(&version, "a,1\n").unwrap()), "v1");
    let status = lab
        .host
        .statuses()
        .into_iter()
        .find(|s| s.plugin == "clientbatchingestapp_lab_csv")
        .unwrap();
    assert!(status.load_failure.unwrap().error.contains(LAB_FILE));
}

#[test]
fn work_in_flight_finishes_on_the_old_version_while_new_work_goes_to_the_new_one() {
    let lab = start(&[("lab", "csv")]);
    let target = lab.plugins.join(LAB_FILE);
    lab.deploy("lab_plugin_v1", &target);
    let old = lab_version(&lab);
    let release = lab.plugins.join("release-the-slow-call");
    let started = lab.plugins.join("the-slow-call-started");
    let input = format!("a,1\nSIGNAL {}\nWAIT {}\nb,2\n", started.display(), release.display());
    let slow = std::thread::spawn(move || ingest(&old, &input));
    // The new version comes only once the old one's call is in flight.
    assert!(wait_until(Duration::from_secs(10), || started.exists()));

    lab.deploy("lab_plugin_v2", &target);
    assert_eq!(version_of(&ingest(&lab_version(&lab), "c,3\n").unwrap()), "v2");
    assert_eq!(lab.host.retiring(), 1, "the old version waits for its call");

    std::fs::write(&release, "").unwrap();
    let rows = slow.join().unwrap().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(version_of(&rows), "v1");
    assert!(wait_until(Duration::from_secs(10), || lab.host.retiring() == 0));
    assert_eq!(
        cache_mappings(&lab.cache).iter().filter(|l| l.contains(".g1.")).count(),
        0
    );
}

/// The OS thread a call of `version` ran on, as its `/proc/self/task` entry.
fn thread_of_a_call(version: &Arc<PluginVersion>) -> PathBuf {
    let link = version
        .spawn_call(|_| std::fs::read_link("/proc/thread-self").expect("/proc/thread-self"))
        .expect("the version takes calls")
        .blocking_recv()
        .expect("the call ran");
    let tid = link.file_name().expect("a thread id").to_owned();
    Path::new("/proc/self/task").join(tid)
}

#[test]
fn a_version_reuses_its_idle_threads_and_ends_them_when_it_is_replaced() {
    let lab = start(&[("lab", "csv")]);
    let target = lab.plugins.join(LAB_FILE);
    lab.deploy("lab_plugin_v1", &target);
    let old = lab_version(&lab);

    // A call's thread waits for the next call instead of ending: one thread serves them all.
    let first = thread_of_a_call(&old);
    for _ in 0..20 {
        assert!(wait_until(Duration::from_secs(10), || old.idle_threads() == 1));
        assert_eq!(thread_of_a_call(&old), first);
    }
    assert_eq!(version_of(&ingest(&old, "a,1\n").unwrap()), "v1");
    assert!(first.exists(), "the idle thread lives on");

    // Replacing the version ends its idle thread at once, then unmaps the library.
    lab.deploy("lab_plugin_v2", &target);
    assert!(wait_until(Duration::from_secs(5), || lab.host.retiring() == 0));
    assert!(!first.exists(), "the retired version's thread was joined");
    assert_eq!(old.idle_threads(), 0);
    assert!(old.spawn_call(|_| ()).is_err(), "a retired version takes no call");
    assert_eq!(
        cache_mappings(&lab.cache).iter().filter(|l| l.contains(".g1.")).count(),
        0
    );
    assert_eq!(version_of(&ingest(&lab_version(&lab), "b,2\n").unwrap()), "v2");
}

#[test]
fn the_check_command_reports_manifest_tables_and_verdict() {
    let good = mysimbdp::plugin_host::check::check_file(&library("clientbatchingestapp_client1_csv"), None, None);
    assert!(good.verdict.is_ok(), "{good}");
    let text = good.to_string();
    assert!(text.contains("tenant=client1 kind=batch file_types=[csv]"), "{text}");
    assert!(
        text.contains("table readings: partition key (dev_id, day), clustering key (time)"),
        "{text}"
    );

    let foreign = mysimbdp::plugin_host::check::check_file(&library("foreign_library"), None, None);
    assert!(foreign.verdict.unwrap_err().contains("is not a mysimbdp plugin"));
}

const LAB_STREAM_FILE: &str = "libclientstreamingestapp_lab.so";

fn lab_stream(lab: &Lab) -> Arc<PluginVersion> {
    lab.host.stream_plugin(&"lab".parse().unwrap()).unwrap()
}

fn messages(partition: u32, first: u64, lines: &[&str]) -> Vec<StreamMessage> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| StreamMessage {
            partition,
            offset: first + i as u64,
            timestamp_ms: 0,
            payload: line.as_bytes().to_vec(),
        })
        .collect()
}

/// One batch through an instance: the rows, the rejected records' offsets, the call's result.
async fn process(instance: &Instance, batch: Vec<StreamMessage>) -> (Vec<Vec<Value>>, Vec<u64>, Result<(), CallError>) {
    let mut stream = instance
        .process(batch, 4, tokio_util::sync::CancellationToken::new())
        .expect("the instance takes work");
    let (mut rows, mut rejected) = (Vec::new(), Vec::new());
    while let Some(batch) = stream.next().await {
        rows.extend(batch.rows.iter().map(<[Value]>::to_vec));
        rejected.extend(batch.rejected.iter().map(|r| r.position));
    }
    (rows, rejected, stream.outcome().await.result)
}

fn text(value: &Value) -> &str {
    match value {
        Value::Text(v) => v,
        other => panic!("not text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_instance_keeps_its_state_across_batches_on_a_thread_of_its_version_and_unloads_after_it_closes() {
    let lab = start(&[("lab", "csv")]);
    lab.deploy("lab_stream_v1", &lab.plugins.join(LAB_STREAM_FILE));
    let version = lab_stream(&lab);
    let instance = version.open_instance("instance-1", 100).await.unwrap();

    let (rows, rejected, result) = process(&instance, messages(0, 10, &["a,1", "REJECT", "b,2"])).await;
    result.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rejected, [11], "a rejected message is named by its offset");
    assert_eq!((text(&rows[0][2]), text(&rows[0][3])), ("v1", "instance-1"));
    // The instance's own state carries from batch to batch.
    let (rows, _, _) = process(&instance, messages(0, 13, &["c,3"])).await;
    assert_eq!(rows[0][4], Value::BigInt(4));
    // A panic fails its batch only; the host and the instance go on.
    let (_, _, result) = process(&instance, messages(1, 0, &["d,4", "PANIC"])).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Panic);
    assert!(error.message.contains("asked to panic"), "{}", error.message);
    let (rows, _, result) = process(&instance, messages(1, 2, &["e,5"])).await;
    result.unwrap();
    assert_eq!(text(&rows[0][0]), "e");

    let copy = version.private_copy().display().to_string();
    assert!(!mapped_lines("self", &copy).is_empty());
    drop(instance);
    std::fs::remove_file(lab.plugins.join(LAB_STREAM_FILE)).unwrap();
    lab.host.reconcile_now();
    assert!(wait_until(Duration::from_secs(10), || lab.host.retiring() == 0));
    assert_eq!(
        mapped_lines("self", &copy),
        Vec::<String>::new(),
        "the instance's version is unmapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_under_running_instances_retires_them_at_their_next_boundary_and_the_old_library_unloads() {
    let lab = start(&[("lab", "csv")]);
    let target = lab.plugins.join(LAB_STREAM_FILE);
    lab.deploy("lab_stream_v1", &target);
    let v1 = lab_stream(&lab);
    let instances = [
        v1.open_instance("i-1", 100).await.unwrap(),
        v1.open_instance("i-2", 100).await.unwrap(),
    ];
    // One instance is in the middle of a slow batch when the new version arrives.
    let slow = {
        let batch = messages(0, 0, &["SLEEP 300", "slow,1"]);
        instances[0]
            .process(batch, 4, tokio_util::sync::CancellationToken::new())
            .unwrap()
    };
    lab.deploy("lab_stream_v2", &target);
    let v2 = lab_stream(&lab);
    assert_eq!(v2.plugin_version(), "2.0.0");
    assert_eq!(lab.host.retiring(), 1, "v1 waits for its instances");

    // The batch in hand finishes on v1.
    let mut slow = slow;
    let mut rows = Vec::new();
    while let Some(batch) = slow.next().await {
        rows.extend(batch.rows.iter().map(<[Value]>::to_vec));
    }
    slow.outcome().await.result.unwrap();
    assert_eq!(text(&rows[0][2]), "v1");
    // Both instances close at their boundary; then v1 is unloaded, though their handles live.
    assert!(wait_until(Duration::from_secs(10), || lab.host.retiring() == 0));
    assert!(
        instances[1]
            .process(
                messages(0, 5, &["late,1"]),
                4,
                tokio_util::sync::CancellationToken::new()
            )
            .is_err()
    );
    assert_eq!(
        mapped_lines("self", &v1.private_copy().display().to_string()),
        Vec::<String>::new()
    );

    // New instances run on v2.
    let moved = v2.open_instance("i-1", 100).await.unwrap();
    let (rows, _, result) = process(&moved, messages(0, 2, &["x,9"])).await;
    result.unwrap();
    assert_eq!(text(&rows[0][2]), "v2");
    drop(instances);
}
