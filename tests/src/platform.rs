//! Runs the real `mysimbdp` binary in a folder of its own, on the embedded backend or on the
//! Cassandra at `MYSIMBDP_TEST_CASSANDRA`, and talks to it over HTTP.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Service, install_file, library, target_dir, wait_until};

/// The admin token every test platform gets.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A storage backend to run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, nothing to install.
    Embedded,
    /// The Cassandra at `MYSIMBDP_TEST_CASSANDRA`.
    Cassandra,
}

impl Backend {
    /// The backends to run "both backends" tests on: embedded always; Cassandra when it is
    /// configured ([`Service::address`]).
    pub fn all() -> Vec<Backend> {
        match Service::Cassandra.address() {
            Some(_) => vec![Backend::Embedded, Backend::Cassandra],
            None => vec![Backend::Embedded],
        }
    }

    /// The `[coredms]` section selecting this backend; Cassandra keyspaces get a prefix unique
    /// to this test run.
    fn config(self) -> String {
        match self {
            Backend::Embedded => "[coredms]\nbackend = \"embedded\"\n".to_string(),
            Backend::Cassandra => {
                static RUN: AtomicU64 = AtomicU64::new(0);
                let address = Service::Cassandra.address().expect("checked by Backend::all");
                let prefix = format!("t{}_{}_", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
                format!(
                    "[coredms]\nbackend = \"cassandra\"\ncassandra.contact_points = [\"{address}\"]\ncassandra.consistency = \"one\"\ncassandra.keyspace_prefix = \"{prefix}\"\n"
                )
            }
        }
    }
}

/// A queue backend to run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueBackend {
    /// SQLite, nothing to install.
    Embedded,
    /// The Kafka at `MYSIMBDP_TEST_KAFKA`.
    Kafka,
}

impl QueueBackend {
    /// The queue backends to run "both queues" tests on: embedded always; Kafka when it is
    /// configured ([`Service::address`]).
    pub fn all() -> Vec<QueueBackend> {
        match Service::Kafka.address() {
            Some(_) => vec![QueueBackend::Embedded, QueueBackend::Kafka],
            None => vec![QueueBackend::Embedded],
        }
    }

    /// The `[queue]` section selecting this backend (Kafka topics get a prefix unique to this
    /// test run), to pass as (the start of) a platform's extra configuration.
    pub fn config(self) -> String {
        match self {
            QueueBackend::Embedded => "[queue]\nbackend = \"embedded\"\n".to_string(),
            QueueBackend::Kafka => {
                static RUN: AtomicU64 = AtomicU64::new(0);
                let brokers = Service::Kafka.address().expect("checked by QueueBackend::all");
                let prefix = format!("t{}.{}.", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
                format!(
                    "[queue]\nbackend = \"kafka\"\nkafka.brokers = \"{brokers}\"\nkafka.topic_prefix = \"{prefix}\"\n"
                )
            }
        }
    }
}

/// A tenant entry for `customer_information.json`; its token is `<name>-token`.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// Id.
    pub name: String,
    /// Allowed file types.
    pub file_types: Vec<String>,
    /// `max_files_number`.
    pub max_files: u64,
    /// `max_file_size`.
    pub max_file_size: u64,
    /// `max_memory_size`.
    pub max_memory: u64,
    /// Further keys of the entry (the stream limits, say).
    pub extra: serde_json::Map<String, Value>,
}

impl TenantSpec {
    /// A tenant with generous limits.
    pub fn new(name: &str, file_types: &[&str]) -> Self {
        TenantSpec {
            name: name.into(),
            file_types: file_types.iter().map(|t| t.to_string()).collect(),
            max_files: 20,
            max_file_size: 4 << 30,
            max_memory: 64 << 30,
            extra: serde_json::Map::new(),
        }
    }

    /// The same tenant with one more key in its entry.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The tenant's token.
    pub fn token(&self) -> String {
        format!("{}-token", self.name)
    }
}

/// `customer_information.json` for these tenants.
pub fn customer_information(tenants: &[TenantSpec]) -> String {
    let entries: Vec<Value> = tenants
        .iter()
        .map(|t| {
            let mut entry = serde_json::json!({
                "file_type": t.file_types,
                "max_files_number": t.max_files,
                "max_file_size": t.max_file_size,
                "max_memory_size": t.max_memory,
                "cassandra_class": "SimpleStrategy",
                "replication_factor": 1,
                "api_token_sha256": mysimbdp::tenants::TokenDigest::of(&t.token()).to_hex(),
            });
            entry.as_object_mut().unwrap().extend(t.extra.clone());
            entry
        })
        .collect();
    let map: serde_json::Map<String, Value> = tenants.iter().map(|t| t.name.clone()).zip(entries).collect();
    serde_json::to_string_pretty(&Value::Object(map)).unwrap()
}

/// A running platform.
pub struct Platform {
    /// Its folder.
    pub dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    agent: ureq::Agent,
    /// A descriptor limit (`RLIMIT_NOFILE`, soft and hard) for the platform's process.
    fd_limit: Option<u64>,
    /// The port it listens on, the same across restarts.
    port: u16,
    /// `MYSIMBDP_CRASH_POINT` for the next launches.
    crash_point: Option<String>,
}

impl Platform {
    /// Starts a platform in a new folder with `tenants`, the example plugins they use, and
    /// `backend`. `extra_config` is appended to `mysimbdp.toml` right after its `[coredms]`
    /// table: bare keys go into `[coredms]`, and a `[section]` header starts another table.
    pub fn start(backend: Backend, tenants: &[TenantSpec], extra_config: &str) -> Self {
        let mut platform = Self::prepare(backend, tenants, extra_config);
        platform.launch();
        platform
    }

    /// The same, with the platform's process limited to `descriptors` open files.
    pub fn start_with_fd_limit(backend: Backend, tenants: &[TenantSpec], extra_config: &str, descriptors: u64) -> Self {
        let mut platform = Self::prepare(backend, tenants, extra_config);
        platform.fd_limit = Some(descriptors);
        platform.launch();
        platform
    }

    /// The platform's folder, ready to launch.
    fn prepare(backend: Backend, tenants: &[TenantSpec], extra_config: &str) -> Self {
        let temp = tempfile::Builder::new().prefix("mysimbdp-e2e-").tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        std::fs::write(dir.join("customer_information.json"), customer_information(tenants)).unwrap();
        std::fs::write(
            dir.join("mysimbdp.toml"),
            format!("{}\n{extra_config}", backend.config()),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        for tenant in tenants {
            for file_type in &tenant.file_types {
                let name = format!("clientbatchingestapp_{}_{file_type}", tenant.name);
                if target_dir().join(format!("lib{name}.so")).exists() {
                    install_file(&library(&name), &dir.join("plugins").join(format!("lib{name}.so")));
                }
            }
        }
        Platform {
            dir,
            temp: Some(temp),
            child: None,
            url: String::new(),
            agent: agent(),
            fd_limit: None,
            port: free_port(),
            crash_point: None,
        }
    }

    /// Installs a built plugin library under a plugin file name in `plugins/`.
    pub fn install_plugin(&self, crate_name: &str, file_name: &str) {
        install_file(&library(crate_name), &self.dir.join("plugins").join(file_name));
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("platform.log"))
            .unwrap();
        let mut command = Command::new(target_dir().join("mysimbdp"));
        if let Some(limit) = self.fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe, and nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(["serve", "--root"])
            .arg(&self.dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .env("MYSIMBDP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("MYSIMBDP_CRASH_POINT", self.crash_point.as_deref().unwrap_or(""))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the mysimbdp binary runs (cargo build --workspace)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("mysimbdp listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => self.url = url,
            Err(_) => panic!("the platform did not start within 60 s; its log:\n{}", self.log()),
        }
    }

    /// The platform's process id.
    pub fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("platform.log")).unwrap_or_default()
    }

    /// Starts a platform that aborts at the crash point `point` (see `mysimbdp::crash`).
    pub fn start_crashing_at(backend: Backend, tenants: &[TenantSpec], extra_config: &str, point: &str) -> Self {
        let mut platform = Self::prepare(backend, tenants, extra_config);
        platform.crash_point = Some(point.to_string());
        platform.launch();
        platform
    }

    /// Waits until the process exits by itself (a crash point); true if it did within `limit`.
    /// The next start runs without the crash point.
    pub fn wait_for_exit(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                self.crash_point = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(60));
    }

    /// SIGTERM; panics unless the process exits with status 0 within `limit`. Returns how long
    /// it took.
    pub fn stop_within(&mut self, limit: Duration) -> Duration {
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let started = Instant::now();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(
                    status.success(),
                    "the platform exited with {status}; log:\n{}",
                    self.tail_log()
                );
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the platform did not stop within {limit:?} of SIGTERM; log:\n{}",
            self.tail_log()
        );
    }

    /// Starts it again in the same folder after it stopped (or was killed).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.launch();
    }

    /// Starts it again in the same folder.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// `method path` with a bearer token and a body: status, JSON body and headers.
    pub fn request(&self, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, Value, ureq::http::HeaderMap) {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .body(body)
            .unwrap();
        match self.agent.run(request) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let text = response.body_mut().read_to_string().unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    headers,
                )
            }
            Err(e) => panic!("HTTP request failed: {e}"),
        }
    }

    /// A client of its message API that follows it across restarts.
    pub fn client(&self) -> Client {
        Client {
            url: format!("http://127.0.0.1:{}", self.port),
            agent: agent(),
        }
    }

    /// `POST /v1/tenants/{tenant}/messages` with `body` of `content_type`: status, JSON body
    /// and headers.
    pub fn post_messages(
        &self,
        tenant: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value, ureq::http::HeaderMap) {
        let request = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/v1/tenants/{tenant}/messages", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", content_type)
            .body(body)
            .unwrap();
        match self.agent.run(request) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let text = response.body_mut().read_to_string().unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    headers,
                )
            }
            Err(e) => panic!("HTTP request failed: {e}"),
        }
    }

    /// The host and port it listens on.
    pub fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// `GET path` with a bearer token: status and JSON body.
    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .call();
        read_response(response)
    }

    /// `POST /v1/tenants/{tenant}/files?name=...` with `body` streamed (chunked).
    pub fn upload_reader(&self, tenant: &str, token: &str, name: &str, body: impl Read) -> (u16, Value) {
        let mut body = body;
        let response = self
            .agent
            .post(format!("{}/v1/tenants/{tenant}/files?name={name}", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .send(ureq::SendBody::from_reader(&mut body));
        read_response(response)
    }

    /// The same with a body of known size (sent with Content-Length).
    pub fn upload(&self, tenant: &str, token: &str, name: &str, body: &[u8]) -> (u16, Value) {
        let response = self
            .agent
            .post(format!("{}/v1/tenants/{tenant}/files?name={name}", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .send(body);
        read_response(response)
    }

    /// A `multipart/form-data` upload with one file part.
    pub fn upload_multipart(&self, tenant: &str, token: &str, file_name: &str, body: &[u8]) -> (u16, Value) {
        let boundary = "mysimbdp-test-boundary-7f3a";
        let mut payload = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        payload.extend_from_slice(body);
        payload.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let response = self
            .agent
            .post(format!("{}/v1/tenants/{tenant}/files", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
            .send(&payload[..]);
        read_response(response)
    }

    /// Uploads a file, expecting 201, and returns its report once it is `done`.
    pub fn ingest(&self, tenant: &str, token: &str, name: &str, body: &[u8]) -> Value {
        let (status, response) = self.upload(tenant, token, name, body);
        assert_eq!(status, 201, "{response}");
        let file_id = response["file_id"].as_str().expect("a 201 names the file");
        let report = self.wait_for_report(tenant, token, file_id, Duration::from_secs(60));
        assert_eq!(report["status"], "done", "{report}");
        report
    }

    /// Waits until a file is `done` or `failed` and returns its report.
    pub fn wait_for_report(&self, tenant: &str, token: &str, file_id: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let finished = wait_until(timeout, || {
            let (status, body) = self.get(&format!("/v1/tenants/{tenant}/files/{file_id}"), token);
            let state = body["status"].as_str().unwrap_or_default().to_string();
            last = body;
            status == 200 && (state == "done" || state == "failed")
        });
        assert!(
            finished,
            "file {file_id} of {tenant} did not finish in {timeout:?}; last status {last}; log:\n{}",
            self.tail_log()
        );
        last["report"].clone()
    }

    /// Rows in a tenant's table, by the API.
    pub fn count(&self, tenant: &str, token: &str, table: &str) -> u64 {
        let (status, body) = self.count_response(tenant, token, table);
        assert_eq!(status, 200, "count of {tenant}.{table}: {body}");
        body["count"].as_u64().unwrap()
    }

    /// The same while a file may still be creating the table: 0 until it exists.
    pub fn count_so_far(&self, tenant: &str, token: &str, table: &str) -> u64 {
        match self.count_response(tenant, token, table) {
            (200, body) => body["count"].as_u64().unwrap(),
            (404, _) => 0,
            (status, body) => panic!("count of {tenant}.{table}: {status} {body}"),
        }
    }

    fn count_response(&self, tenant: &str, token: &str, table: &str) -> (u16, Value) {
        self.get(&format!("/v1/tenants/{tenant}/tables/{table}/count"), token)
    }

    /// Files in the staging folder (not counting its sub-folders).
    pub fn staged_files(&self) -> Vec<PathBuf> {
        files_in(&self.dir.join("client-staging-input-directory"))
    }

    /// Files in `.incoming/` (uploads in progress).
    pub fn incoming_files(&self) -> Vec<PathBuf> {
        files_in(&self.dir.join("client-staging-input-directory/.incoming"))
    }

    /// The last lines of the log.
    pub fn tail_log(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Rewrites `customer_information.json`.
    pub fn write_customers(&self, text: &str) {
        let path = self.dir.join("customer_information.json");
        let tmp = self.dir.join(".customer_information.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.kill9();
        // Keep the folder of a failed test (its whole log and data are the evidence), and every
        // test's with MYSIMBDP_KEEP_TEST_DIRS set.
        let failed = std::thread::panicking();
        if (failed || std::env::var_os("MYSIMBDP_KEEP_TEST_DIRS").is_some())
            && let Some(temp) = self.temp.take()
        {
            let _ = temp.keep();
        }
        if failed {
            eprintln!("platform log ({}, kept):\n{}", self.dir.display(), self.tail_log());
        }
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to listen on");
    listener.local_addr().unwrap().port()
}

/// A client of a platform's message API that outlives its restarts (the port stays).
#[derive(Clone)]
pub struct Client {
    url: String,
    agent: ureq::Agent,
}

impl Client {
    /// `POST /v1/tenants/{tenant}/messages`: status, JSON body and `Retry-After`, or `Err`
    /// when no answer came (the platform is down).
    pub fn post_messages(
        &self,
        tenant: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Value, Option<u64>), String> {
        let request = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/v1/tenants/{tenant}/messages", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", content_type)
            .body(body)
            .map_err(|e| e.to_string())?;
        let mut response = self.agent.run(request).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            retry_after,
        ))
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn read_response(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    match response {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_string()
                .unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(e) => panic!("HTTP request failed: {e}"),
    }
}
