//! Test harness: finds the built artifacts (the `mysimbdp` binary and the plugin libraries),
//! reads a process's memory maps and RSS, and (in `platform`) runs the real binary.

use std::path::{Path, PathBuf};

/// The cargo target folder of the running test (`target/debug` or `target/release`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // Tests run from target/<profile>/deps/<test>-<hash>, binaries from target/<profile>/<bin>.
    let dir = exe.parent().expect("an executable is in a folder");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A cdylib built by the workspace: `lib<crate>.so` in the target folder.
pub fn library(crate_name: &str) -> PathBuf {
    let path = target_dir().join(format!("lib{crate_name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// Copies `from` to `to` the way an operator should: a temporary name in the same folder, then
/// a rename, so a reader never sees half a file.
pub fn install_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("so.part");
    std::fs::copy(from, &tmp).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), tmp.display()));
    std::fs::rename(&tmp, to).unwrap();
}

/// `/proc/<pid>/maps` (`self` for this process).
pub fn maps(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default()
}

/// Lines of `/proc/<pid>/maps` that mention `needle`.
pub fn mapped_lines(pid: &str, needle: &str) -> Vec<String> {
    maps(pid)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Resident set size in KiB.
pub fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
pub mod platform;
pub mod stream;

/// A real service a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Apache Cassandra, at `MYSIMBDP_TEST_CASSANDRA`.
    Cassandra,
    /// Apache Kafka, at `MYSIMBDP_TEST_KAFKA`.
    Kafka,
}

impl Service {
    fn variable(self) -> &'static str {
        match self {
            Service::Cassandra => "MYSIMBDP_TEST_CASSANDRA",
            Service::Kafka => "MYSIMBDP_TEST_KAFKA",
        }
    }

    /// The service's address, or `None` after a loud SKIPPED line when it is not configured.
    /// With `MYSIMBDP_REQUIRE_SERVICES=1` (the README's test command, CI) a missing service is
    /// a failure, never a skip.
    pub fn address(self) -> Option<String> {
        let variable = self.variable();
        match std::env::var(variable) {
            Ok(address) if !address.is_empty() => Some(address),
            _ if std::env::var("MYSIMBDP_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
                "MYSIMBDP_REQUIRE_SERVICES=1 but {variable} is not set: start the services \
                 (scripts/services.sh start all; eval \"$(scripts/services.sh env)\"), as scripts/test.sh does"
            ),
            _ => {
                use std::io::Write;
                // Straight to stderr, past the test harness's capture: a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: {variable} not set: the tests on {self:?} did not run (scripts/test.sh starts it)"
                );
                None
            }
        }
    }
}

/// An outage of a real service: [`Service::stop`] stops it through `scripts/services.sh` (the
/// script that started it) and dropping the outage starts it again and waits until it is ready,
/// so a failing test does not leave the service down for the tests after it.
#[must_use = "the service starts again when the outage is dropped"]
pub struct Outage {
    service: Service,
    began: std::time::Instant,
}

impl Service {
    fn script_name(self) -> &'static str {
        match self {
            Service::Cassandra => "cassandra",
            Service::Kafka => "kafka",
        }
    }

    fn run_script(self, command: &str) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
        let status = std::process::Command::new(script)
            .args([command, self.script_name()])
            .status()
            .unwrap_or_else(|e| panic!("scripts/services.sh {command} {}: {e}", self.script_name()));
        assert!(
            status.success(),
            "scripts/services.sh {command} {} failed: {status}",
            self.script_name()
        );
    }

    /// Stops the service (SIGTERM, as an operator or a crashing host would take it away) and
    /// returns once its process is gone. Only for tests that own the service for their run:
    /// the README's test command runs one test at a time.
    pub fn stop(self) -> Outage {
        self.run_script("stop");
        Outage {
            service: self,
            began: std::time::Instant::now(),
        }
    }
}

impl Outage {
    /// How long the service has been down.
    pub fn elapsed(&self) -> std::time::Duration {
        self.began.elapsed()
    }

    /// Starts the service again and waits until it is ready.
    pub fn end(self) {}
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.service.run_script("start");
    }
}

/// Whether the slow tier runs (the README's test command, CI): the 2 GiB file, kill -9
/// recoveries and long fuzzing. A plain `cargo test` skips them, saying so.
pub fn slow_tier(test: &str) -> bool {
    let slow = std::env::var("MYSIMBDP_SLOW_TESTS").as_deref() == Ok("1")
        || std::env::var("MYSIMBDP_REQUIRE_SERVICES").as_deref() == Ok("1");
    if !slow {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}: a slow-tier test (MYSIMBDP_SLOW_TESTS=1 or scripts/test.sh runs it)"
        );
    }
    slow
}
