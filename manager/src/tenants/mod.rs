//! tenants: `customer_information.json`, parsed once into domain types whose existence proves
//! validity, and swapped in atomically when the operator edits the file ([`watch`]).
//!
//! The platform never writes this file: counters (files in flight, bytes stored) live in the
//! platform's own state. An invalid edit is rejected with the file, line and reason, and the
//! last good configuration stays in force.

pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The operator's file, in the platform's root folder.
pub const CUSTOMER_INFORMATION_FILE: &str = "customer_information.json";

/// A tenant id: `[a-z][a-z0-9_]{0,31}`. It names the tenant's plugins, keyspace and files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(TenantId(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a valid tenant id (a-z first, then a-z, 0-9 or _, at most 32)"
            ))
        }
    }
}

impl TryFrom<String> for TenantId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file type: `[a-z0-9]{1,16}` (`csv`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileType(String);

impl FileType {
    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FileType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            Ok(FileType(s.to_string()))
        } else {
            Err(format!("{s:?} is not a valid file type (1 to 16 of a-z, 0-9)"))
        }
    }
}

impl TryFrom<String> for FileType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FileType> for String {
    fn from(t: FileType) -> String {
        t.0
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Cassandra's replication strategy for the tenant's keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationClass {
    /// `SimpleStrategy`.
    SimpleStrategy,
    /// `NetworkTopologyStrategy` (the factor applies to every datacenter).
    NetworkTopologyStrategy,
}

/// A SHA-256 digest in hex, as stored in `api_token_sha256`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a token.
    pub fn of(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `token` hashes to this digest (compared in constant time).
    pub fn matches(&self, token: &str) -> bool {
        self.same_as(&Self::of(token))
    }

    /// Whether two digests are equal (compared in constant time).
    pub fn same_as(&self, other: &TokenDigest) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The digest as lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}…)", &self.to_hex()[..8])
    }
}

impl TryFrom<String> for TokenDigest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&s, &mut digest)
            .map_err(|_| format!("{s:?} is not a SHA-256 digest (64 hex digits; `mysimbdp tenant token` makes one)"))?;
        Ok(TokenDigest(digest))
    }
}

impl From<TokenDigest> for String {
    fn from(d: TokenDigest) -> String {
        d.to_hex()
    }
}

/// A tenant's own stream thresholds (see the monitor); each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamThresholds {
    /// Lag at most, in messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<u64>,
    /// Mean acceptance → durable time at most, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_avg_latency_ms: Option<f64>,
    /// p95 of it at most, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p95_latency_ms: Option<f64>,
    /// Messages per second at least, while there is lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_messages_per_second: Option<f64>,
    /// Failed plugin calls per call at most (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
}

/// One tenant's entry in `customer_information.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// File types the tenant may upload (each needs its batch plugin).
    pub file_type: Vec<FileType>,
    /// Files the tenant may have staged or ingesting at once.
    pub max_files_number: u64,
    /// Largest file, in bytes.
    pub max_file_size: u64,
    /// Storage quota: bytes stored for the tenant, in bytes.
    pub max_memory_size: u64,
    /// Replication strategy of the tenant's Cassandra keyspace.
    #[serde(default = "default_replication_class")]
    pub cassandra_class: ReplicationClass,
    /// Replication factor of the tenant's Cassandra keyspace.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u32,
    /// SHA-256 of the tenant's API token.
    pub api_token_sha256: TokenDigest,
    /// The largest message accepted, in bytes (platform default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
    /// The largest message request accepted, in bytes (platform default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Messages per second, on average (a token bucket; platform default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_per_second: Option<u64>,
    /// Stream instances kept running at least (0: none while no message waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_stream_instances: Option<u32>,
    /// Stream instances at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_instances: Option<u32>,
    /// The tenant's own stream monitor thresholds (the platform's `[monitor.thresholds]` for
    /// what it leaves out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_thresholds: Option<StreamThresholds>,
    /// Whether the stream manager scales the tenant's instances on the monitor's
    /// notifications (default true); off, it records what it would have done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<bool>,
    /// The seed's counter; ignored (counters live in the platform's state).
    #[serde(default, skip_serializing)]
    pub uploaded_files_number: Option<serde_json::Value>,
    /// The seed's counter; ignored (counters live in the platform's state).
    #[serde(default, skip_serializing)]
    pub uploaded_data_size: Option<serde_json::Value>,
}

fn default_replication_class() -> ReplicationClass {
    ReplicationClass::SimpleStrategy
}

fn default_replication_factor() -> u32 {
    1
}

impl Tenant {
    /// Whether the tenant may upload files of `file_type`.
    pub fn allows(&self, file_type: &FileType) -> bool {
        self.file_type.contains(file_type)
    }
}

/// All tenants: a valid `customer_information.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenants {
    tenants: BTreeMap<TenantId, Tenant>,
}

/// Why a `customer_information.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}:{line}:{column}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line (0 when the problem is not at one place).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The file's top-level object, refusing a tenant id given twice (serde's maps keep the last,
/// which would let one entry silently replace another, tokens included).
struct TenantEntries(BTreeMap<TenantId, Tenant>);

impl<'de> Deserialize<'de> for TenantEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = TenantEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of tenants by id")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TenantEntries, A::Error> {
                let mut tenants = BTreeMap::new();
                while let Some(id) = map.next_key::<TenantId>()? {
                    if tenants.contains_key(&id) {
                        return Err(serde::de::Error::custom(format!("tenant {id} is given twice")));
                    }
                    let tenant = map.next_value::<Tenant>()?;
                    tenants.insert(id, tenant);
                }
                Ok(TenantEntries(tenants))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

impl Tenants {
    /// Parses the file's text; `path` is only for messages.
    pub fn parse(text: &str, path: &str) -> Result<Self, TenantsError> {
        let TenantEntries(tenants) = serde_json::from_str(text).map_err(|e| {
            let reason = e
                .to_string()
                .rsplit_once(" at line ")
                .map_or_else(|| e.to_string(), |(r, _)| r.to_string());
            // A refused value (a digest, an id) is noticed at the end of its entry: point at the
            // line that holds it instead, when it is there.
            let (line, column) = quoted_prefix(&reason)
                .and_then(|value| line_of(text, &value))
                .map_or((e.line(), e.column()), |line| (line, 1));
            TenantsError::Invalid {
                path: path.to_string(),
                line,
                column,
                reason,
            }
        })?;
        let invalid = |tenant: &TenantId, reason: String| TenantsError::Invalid {
            path: path.to_string(),
            line: line_of_key(text, tenant.as_str()),
            column: 1,
            reason: format!("tenant {tenant}: {reason}"),
        };
        for (id, tenant) in &tenants {
            if tenant.file_type.is_empty() {
                return Err(invalid(id, "file_type is empty".into()));
            }
            for (name, value) in [
                ("max_files_number", tenant.max_files_number),
                ("max_file_size", tenant.max_file_size),
                ("max_memory_size", tenant.max_memory_size),
            ] {
                if value == 0 {
                    return Err(invalid(id, format!("{name} must be greater than 0")));
                }
            }
            if !(1..=32).contains(&tenant.replication_factor) {
                return Err(invalid(id, "replication_factor must be between 1 and 32".into()));
            }
            for (name, value) in [
                ("max_message_bytes", tenant.max_message_bytes),
                ("max_request_bytes", tenant.max_request_bytes),
                ("max_messages_per_second", tenant.max_messages_per_second),
                ("max_stream_instances", tenant.max_stream_instances.map(u64::from)),
            ] {
                if value == Some(0) {
                    return Err(invalid(id, format!("{name} must be greater than 0")));
                }
            }
            if let (Some(min), Some(max)) = (tenant.min_stream_instances, tenant.max_stream_instances)
                && min > max
            {
                return Err(invalid(
                    id,
                    format!("min_stream_instances ({min}) is more than max_stream_instances ({max})"),
                ));
            }
            if let Some(t) = &tenant.stream_thresholds {
                let numbers = [
                    ("max_avg_latency_ms", t.max_avg_latency_ms),
                    ("max_p95_latency_ms", t.max_p95_latency_ms),
                    ("min_messages_per_second", t.min_messages_per_second),
                    ("max_failure_ratio", t.max_failure_ratio),
                ];
                for (name, value) in numbers {
                    if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                        return Err(invalid(
                            id,
                            format!("stream_thresholds.{name} must be a number of 0 or more"),
                        ));
                    }
                }
                if t.max_failure_ratio.is_some_and(|r| r > 1.0) {
                    return Err(invalid(
                        id,
                        "stream_thresholds.max_failure_ratio must be between 0 and 1".into(),
                    ));
                }
            }
            if tenant.uploaded_files_number.is_some() || tenant.uploaded_data_size.is_some() {
                log::warn!(
                    "{path}: tenant {id}: uploaded_files_number / uploaded_data_size are ignored; the platform keeps its own counters"
                );
            }
        }
        Ok(Tenants { tenants })
    }

    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<Self, TenantsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TenantsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The tenant's entry.
    pub fn get(&self, tenant: &TenantId) -> Option<&Tenant> {
        self.tenants.get(tenant)
    }

    /// Looks a tenant up by its id as text (from a URL).
    pub fn find(&self, tenant: &str) -> Option<(&TenantId, &Tenant)> {
        let id: TenantId = tenant.parse().ok()?;
        self.tenants.get_key_value(&id)
    }

    /// All tenants in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&TenantId, &Tenant)> {
        self.tenants.iter()
    }

    /// The number of tenants.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

fn line_of_key(text: &str, key: &str) -> usize {
    line_of(text, &format!("\"{key}\"")).unwrap_or(0)
}

/// The 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// The quoted value a reason starts with (`"abc" is not ...` gives `"abc"`), as JSON text.
fn quoted_prefix(reason: &str) -> Option<String> {
    let value: String = serde_json::Deserializer::from_str(reason)
        .into_iter::<String>()
        .next()?
        .ok()?;
    serde_json::to_string(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(token_digest: &str) -> String {
        format!(
            r#"{{
  "client1": {{
    "file_type": ["csv", "json"],
    "max_files_number": 5,
    "max_file_size": 104857600,
    "max_memory_size": 10737418240,
    "cassandra_class": "SimpleStrategy",
    "replication_factor": 3,
    "api_token_sha256": "{token_digest}"
  }}
}}"#
        )
    }

    #[test]
    fn the_seed_shape_parses_into_domain_types() {
        let tenants = Tenants::parse(&sample(&TokenDigest::of("secret").to_hex()), "c.json").unwrap();
        let (id, t) = tenants.find("client1").unwrap();
        assert_eq!(id.as_str(), "client1");
        assert!(t.allows(&"json".parse().unwrap()));
        assert!(!t.allows(&"txt".parse().unwrap()));
        assert!(t.api_token_sha256.matches("secret"));
        assert!(!t.api_token_sha256.matches("Secret"));
        assert!(tenants.find("nobody").is_none());
        assert!(tenants.find("../etc").is_none());
    }

    #[test]
    fn invalid_files_name_the_line_and_reason() {
        let err = Tenants::parse("{\n  \"client1\": {\n    \"file_type\": [\"csv\"],\n", "c.json").unwrap_err();
        assert!(err.to_string().starts_with("c.json:4:"), "{err}");
        let text = sample("abc");
        let err = Tenants::parse(&text, "c.json").unwrap_err().to_string();
        assert!(
            err.starts_with("c.json:") && err.contains("\"abc\" is not a SHA-256 digest"),
            "{err}"
        );
        let text = sample(&TokenDigest::of("x").to_hex()).replace("\"max_files_number\": 5", "\"max_files_number\": 0");
        let err = Tenants::parse(&text, "c.json").unwrap_err().to_string();
        assert!(
            err.contains("c.json:2:") && err.contains("max_files_number must be greater than 0"),
            "{err}"
        );
        let text = sample(&TokenDigest::of("x").to_hex()).replace("\"client1\"", "\"Client 1\"");
        assert!(
            Tenants::parse(&text, "c.json")
                .unwrap_err()
                .to_string()
                .contains("not a valid tenant id")
        );
        let text = sample(&TokenDigest::of("x").to_hex()).replace("\"max_file_size\"", "\"max_filesize\"");
        assert!(
            Tenants::parse(&text, "c.json")
                .unwrap_err()
                .to_string()
                .contains("unknown field `max_filesize`")
        );
    }

    #[test]
    fn a_digest_with_multi_byte_characters_is_refused_with_its_line_not_a_panic() {
        let text = sample(&format!("é{}", "a".repeat(62)));
        let err = Tenants::parse(&text, "c.json").unwrap_err().to_string();
        assert!(
            err.starts_with("c.json:9:1:") && err.contains("is not a SHA-256 digest"),
            "{err}"
        );
        for digest in ["ééé", "€", &"é".repeat(32), &"0".repeat(63)] {
            assert!(Tenants::parse(&sample(digest), "c.json").is_err(), "{digest}");
        }
    }

    #[test]
    fn a_tenant_given_twice_is_refused_with_the_line_of_the_second() {
        let one = sample(&TokenDigest::of("x").to_hex());
        let entry = one.trim().trim_start_matches('{').trim_end_matches('}');
        let text = format!("{{{entry},{entry}}}");
        let err = Tenants::parse(&text, "c.json").unwrap_err().to_string();
        assert!(err.contains("tenant client1 is given twice"), "{err}");
        let second = text.match_indices("\"client1\"").nth(1).unwrap().0;
        let line = text[..second].matches('\n').count() + 1;
        assert!(err.starts_with(&format!("c.json:{line}:")), "{err}");
    }

    #[test]
    fn the_seed_counters_are_accepted_and_ignored() {
        let text = sample(&TokenDigest::of("x").to_hex()).replace(
            "\"max_files_number\"",
            "\"uploaded_files_number\": 3, \"max_files_number\"",
        );
        assert!(Tenants::parse(&text, "c.json").is_ok());
    }
}
