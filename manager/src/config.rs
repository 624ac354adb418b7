//! The platform's own settings (`mysimbdp.toml`), parsed once into typed sections with
//! defaults: with no file at all, the platform runs on the embedded backends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::batch::BatchConfig;
use crate::coredms::cassandra::CassandraConfig;
use crate::queue::QueueConfig;
use crate::report::ReportsConfig;
use crate::stream::StreamConfig;
use crate::tenants::TokenDigest;

/// The default name of the settings file in the platform's folder.
pub const CONFIG_FILE: &str = "mysimbdp.toml";

/// All settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// The HTTP API: address, tokens, connection and upload limits.
    pub server: ServerConfig,
    /// Where the platform keeps its own state (embedded databases, queue, plugin copies);
    /// relative to the platform's folder. Default `mysimbdp-data`.
    pub data_dir: Option<PathBuf>,
    /// Where rows are stored, and how many writes it takes at once.
    pub coredms: CoreDmsConfig,
    /// The message queue.
    pub queue: QueueConfig,
    /// The batch manager.
    pub batch: BatchConfig,
    /// The stream manager and the message API.
    pub stream: StreamConfig,
    /// The stream monitor: report period, thresholds, hold windows.
    pub monitor: crate::monitor::MonitorConfig,
    /// The plugin host.
    pub plugins: PluginsConfig,
    /// How many reports and rejected rows are kept, and when logs rotate.
    pub reports: ReportsConfig,
    /// When tenants' storage usage is measured.
    pub usage: crate::usage::UsageConfig,
}

/// HTTP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// SHA-256 of the admin token (the environment variable `MYSIMBDP_ADMIN_TOKEN` also sets it).
    pub admin_token_sha256: Option<TokenDigest>,
    /// SHA-256 of the token `/metrics` requires (the admin token works too); unset, `/metrics`
    /// answers anyone on the listening address.
    pub metrics_token_sha256: Option<TokenDigest>,
    /// Connections held at once, at most (fewer if the descriptor limit leaves less room once
    /// a reserve for the platform's own files is kept). When all are taken, the oldest idle one
    /// is closed for a new one.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, also the longest a kept-alive
    /// connection may sit idle.
    pub header_read_timeout_seconds: u64,
    /// Seconds an upload may send nothing before it is dropped (408).
    pub upload_idle_timeout_seconds: u64,
    /// The slowest upload accepted, in bytes per second on average, once it has run for
    /// `upload_rate_grace_seconds` (408 below it).
    pub upload_min_bytes_per_second: u64,
    /// Seconds an upload runs before its rate is checked.
    pub upload_rate_grace_seconds: u64,
    /// Reads (tables, rows, counts) of one tenant served at once; more wait, a few, then get 429.
    pub max_reads_per_tenant: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token_sha256: None,
            metrics_token_sha256: None,
            max_connections: 1024,
            header_read_timeout_seconds: 10,
            upload_idle_timeout_seconds: 30,
            upload_min_bytes_per_second: 1024,
            upload_rate_grace_seconds: 30,
            max_reads_per_tenant: 4,
        }
    }
}

/// Which storage backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite per tenant, nothing to install.
    #[default]
    Embedded,
    /// Apache Cassandra / ScyllaDB.
    Cassandra,
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreDmsConfig {
    /// `embedded` or `cassandra`.
    pub backend: Backend,
    /// Writes in flight to the backend, all tenants together.
    pub max_writes_in_flight: usize,
    /// Writes in flight for one tenant.
    pub max_writes_in_flight_per_tenant: usize,
    /// The Cassandra backend's settings (used when `backend` is `cassandra`).
    pub cassandra: CassandraConfig,
}

impl Default for CoreDmsConfig {
    fn default() -> Self {
        CoreDmsConfig {
            backend: Backend::Embedded,
            max_writes_in_flight: 64,
            max_writes_in_flight_per_tenant: 32,
            cassandra: CassandraConfig::default(),
        }
    }
}

/// Plugin host settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Failures in a row that quarantine a plugin version.
    pub quarantine_after: u32,
    /// Milliseconds a burst of changes in `plugins/` is coalesced.
    pub reload_debounce_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            quarantine_after: 3,
            reload_debounce_ms: 300,
        }
    }
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong, with its line when known.
    pub reason: String,
}

impl PlatformConfig {
    /// The platform's own state folder inside the platform's folder `root`.
    pub fn data_dir_in(&self, root: &Path) -> PathBuf {
        root.join(self.data_dir.clone().unwrap_or_else(|| PathBuf::from("mysimbdp-data")))
    }

    /// Parses settings text; `path` is for messages.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let reason = match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_string(),
            };
            ConfigError {
                path: path.to_string(),
                reason,
            }
        })
    }

    /// Reads `path`, or the defaults if `path` is the default name and does not exist.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(PlatformConfig::default()),
            Err(e) => Err(ConfigError {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_settings_means_embedded_defaults() {
        let config = PlatformConfig::parse("", "x").unwrap();
        assert_eq!(config.coredms.backend, Backend::Embedded);
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.batch.workers, 4);
        assert_eq!(config.queue.backend, crate::queue::QueueBackend::Embedded);
    }

    #[test]
    fn the_backends_are_chosen_in_the_settings() {
        let text = "[coredms]\nbackend = \"cassandra\"\n[coredms.cassandra]\ncontact_points = [\"10.0.0.1:9042\"]\nconsistency = \"one\"\n[queue]\nbackend = \"kafka\"\n[queue.kafka]\nbrokers = \"10.0.0.2:9092\"\n";
        let config = PlatformConfig::parse(text, "m.toml").unwrap();
        assert_eq!(config.coredms.backend, Backend::Cassandra);
        assert_eq!(config.coredms.cassandra.contact_points, ["10.0.0.1:9042"]);
        assert_eq!(config.queue.backend, crate::queue::QueueBackend::Kafka);
    }

    #[test]
    fn the_settings_the_readme_shows_are_the_defaults() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README.md shows mysimbdp.toml");
        let shown = PlatformConfig::parse(block, "README.md").unwrap();
        let defaults = PlatformConfig::parse("", "x").unwrap();
        let root = Path::new("/folder");
        assert_eq!(shown.data_dir_in(root), defaults.data_dir_in(root));
        // Field by field, so a failure names the setting.
        let fields = |c: &PlatformConfig| -> Vec<String> {
            let text = format!(
                "{:?}",
                PlatformConfig {
                    data_dir: None,
                    ..c.clone()
                }
            );
            text.split(", ").map(str::to_string).collect()
        };
        let (shown, defaults) = (fields(&shown), fields(&defaults));
        let differ: Vec<_> = shown.iter().zip(&defaults).filter(|(a, b)| a != b).collect();
        assert!(
            differ.is_empty(),
            "README.md shows (left) what is not the default (right): {differ:?}"
        );
        assert_eq!(shown.len(), defaults.len());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err = PlatformConfig::parse("[batch]\nworkers = 2\nworkerz = 3\n", "mysimbdp.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("mysimbdp.toml: line 3: unknown field `workerz`"),
            "{err}"
        );
        let err = PlatformConfig::parse("[coredms]\nbackend = \"mongo\"\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("mongo"), "{err}");
    }
}
