//! The Cassandra / ScyllaDB backend, through the `scylla` driver: one keyspace per tenant
//! (`<keyspace_prefix><tenant>`, created with the tenant's replication class and factor).
//!
//! - Declared schemas live in the keyspace's `mysimbdp_tables` (so nullability, which CQL lacks,
//!   survives), claimed with a lightweight transaction so that concurrent creators agree on one
//!   schema; accounting lives in `mysimbdp_usage`.
//! - Writes ([`write`]) are prepared, idempotent INSERTs grouped by partition key into UNLOGGED
//!   batches of rows of one partition (the cheapest way to load Cassandra), many in flight, each
//!   holding a permit of the platform-wide [`WriteLimiter`], each retried with backoff on
//!   timeouts and unavailability ([`retry`]).
//! - Reads page with the driver's paging state, counts scan the token ring in ranges
//!   ([`tenant`]).
//!
//! A tenant's store names only its own keyspace, and only tables declared in it: every statement
//! is fully qualified as `"keyspace"."table"` and every table name from outside is looked up among
//! the declared tables first.

mod plan;
mod retry;
mod tenant;
mod values;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::cluster::metadata::Strategy;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::statement::{Consistency, SerialConsistency};
use serde::Deserialize;

use super::{CoreDms, StoreError, StoreErrorKind, TenantStorage, TenantStore, WriteLimiter};
use crate::tenants::{ReplicationClass, TenantId};
use tenant::CassandraTenant;

/// The longest keyspace name Cassandra accepts.
const MAX_KEYSPACE_LEN: usize = 48;

/// The longest tenant id (`TenantId` guarantees it).
const MAX_TENANT_LEN: usize = 32;

/// How the Cassandra backend connects and writes (the `[cassandra]` section of the platform
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// Nodes to contact first, as `host:port`; the driver discovers the rest of the cluster.
    /// Default `["127.0.0.1:9042"]`.
    pub contact_points: Vec<String>,
    /// The datacenter whose nodes coordinate requests; unset, every node is used. Default unset.
    pub local_datacenter: Option<String>,
    /// Consistency of reads and writes: `one`, `local_one`, `quorum`, `local_quorum` or `all`.
    /// Default `local_quorum`.
    pub consistency: ConsistencyLevel,
    /// How long one request may take before it is retried or fails, in milliseconds.
    /// Default 10000.
    pub request_timeout_ms: u64,
    /// How often a request that timed out or found too few replicas is retried (with
    /// exponential backoff and jitter) before the write fails as `timeout` or `unavailable`.
    /// Default 5.
    pub max_retries: u32,
    /// The most rows of one partition sent in one UNLOGGED batch. Default 50.
    pub rows_per_batch: usize,
    /// Keyspaces are named `<keyspace_prefix><tenant>`; `[a-z][a-z0-9_]*`, at most 16 bytes.
    /// Default `mysimbdp_`.
    pub keyspace_prefix: String,
    /// Into how many token ranges an exact count splits the ring (counted a few at a time, so
    /// that no single request scans the whole table). Default 64.
    pub count_ranges: u32,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            contact_points: vec!["127.0.0.1:9042".into()],
            local_datacenter: None,
            consistency: ConsistencyLevel::LocalQuorum,
            request_timeout_ms: 10_000,
            max_retries: 5,
            rows_per_batch: 50,
            keyspace_prefix: "mysimbdp_".into(),
            count_ranges: 64,
        }
    }
}

impl CassandraConfig {
    /// Checks the values that deserialization alone cannot.
    fn check(&self) -> Result<(), StoreError> {
        let invalid = |message: String| Err(StoreError::new(StoreErrorKind::Invalid, message));
        if self.contact_points.is_empty() {
            return invalid("cassandra.contact_points is empty".into());
        }
        let prefix = &self.keyspace_prefix;
        let prefix_ok = prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && prefix.len() + MAX_TENANT_LEN <= MAX_KEYSPACE_LEN;
        if !prefix_ok {
            return invalid(format!(
                "cassandra.keyspace_prefix {prefix:?} must be [a-z][a-z0-9_]* and at most {} bytes",
                MAX_KEYSPACE_LEN - MAX_TENANT_LEN
            ));
        }
        if !(1..=1000).contains(&self.rows_per_batch) {
            return invalid(format!(
                "cassandra.rows_per_batch {} must be within 1..=1000",
                self.rows_per_batch
            ));
        }
        if !(1..=65_536).contains(&self.count_ranges) {
            return invalid(format!(
                "cassandra.count_ranges {} must be within 1..=65536",
                self.count_ranges
            ));
        }
        if self.request_timeout_ms == 0 {
            return invalid("cassandra.request_timeout_ms must be positive".into());
        }
        Ok(())
    }
}

/// A consistency level of reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    /// One replica.
    One,
    /// One replica in the local datacenter.
    LocalOne,
    /// A majority of all replicas.
    Quorum,
    /// A majority of the replicas in the local datacenter.
    LocalQuorum,
    /// Every replica.
    All,
}

impl ConsistencyLevel {
    fn driver(self) -> Consistency {
        match self {
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::All => Consistency::All,
        }
    }

    /// The consistency of the lightweight transactions that claim table names.
    fn serial(self) -> SerialConsistency {
        match self {
            ConsistencyLevel::LocalOne | ConsistencyLevel::LocalQuorum => SerialConsistency::LocalSerial,
            _ => SerialConsistency::Serial,
        }
    }
}

/// What every tenant of one backend shares.
struct Shared {
    session: Session,
    config: CassandraConfig,
    limiter: Arc<WriteLimiter>,
    /// Schema changes made by this process run one at a time (concurrent DDL on one table can
    /// leave Cassandra with two table ids).
    schema_lock: tokio::sync::Mutex<()>,
}

/// The Cassandra backend.
pub struct CassandraDms {
    shared: Arc<Shared>,
    open: Mutex<HashMap<TenantId, Arc<CassandraTenant>>>,
}

impl CassandraDms {
    /// Connects to the cluster; writes take permits from `limiter`.
    pub async fn connect(config: CassandraConfig, limiter: Arc<WriteLimiter>) -> Result<Self, StoreError> {
        config.check()?;
        let session = SessionBuilder::new()
            .known_nodes(&config.contact_points)
            .default_execution_profile_handle(execution_profile(&config).into_handle())
            .build()
            .await
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!("cannot connect to Cassandra at {:?}: {e}", config.contact_points),
                )
            })?;
        log::info!(
            "cassandra: connected contact_points={:?} nodes={} consistency={:?}",
            config.contact_points,
            session.get_cluster_state().get_nodes_info().len(),
            config.consistency
        );
        Ok(CassandraDms {
            shared: Arc::new(Shared {
                session,
                config,
                limiter,
                schema_lock: tokio::sync::Mutex::new(()),
            }),
            open: Mutex::default(),
        })
    }
}

fn execution_profile(config: &CassandraConfig) -> ExecutionProfile {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(datacenter) = &config.local_datacenter {
        policy = policy.prefer_datacenter(datacenter.clone()).permit_dc_failover(false);
    }
    ExecutionProfile::builder()
        .consistency(config.consistency.driver())
        .serial_consistency(Some(config.consistency.serial()))
        .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
        // Retries are ours (`retry`): with backoff, and with errors a caller can act on.
        .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
        .load_balancing_policy(policy.build())
        .build()
}

#[async_trait]
impl CoreDms for CassandraDms {
    fn backend(&self) -> &'static str {
        "cassandra"
    }

    async fn open_existing(&self, tenant: &TenantStorage) -> Result<Option<Arc<dyn TenantStore>>, StoreError> {
        let keyspace = format!("{}{}", self.shared.config.keyspace_prefix, tenant.tenant);
        let known = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&tenant.tenant);
        if known
            || self
                .shared
                .session
                .get_cluster_state()
                .get_keyspace(&keyspace)
                .is_some()
        {
            self.open_tenant(tenant).await.map(Some)
        } else {
            Ok(None)
        }
    }

    async fn open_tenant(&self, tenant: &TenantStorage) -> Result<Arc<dyn TenantStore>, StoreError> {
        if let Some(open) = self.open.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant.tenant) {
            return Ok(open.clone());
        }
        let keyspace = format!("{}{}", self.shared.config.keyspace_prefix, tenant.tenant);
        self.create_keyspace(tenant, &keyspace).await?;
        let store = Arc::new(CassandraTenant::open(Arc::clone(&self.shared), tenant.tenant.clone(), keyspace).await?);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        Ok(open.entry(tenant.tenant.clone()).or_insert(store).clone())
    }
}

impl CassandraDms {
    async fn create_keyspace(&self, tenant: &TenantStorage, keyspace: &str) -> Result<(), StoreError> {
        if tenant.replication_factor == 0 {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!("tenant {}: replication factor 0 stores nothing", tenant.tenant),
            ));
        }
        let class = match tenant.replication_class {
            ReplicationClass::SimpleStrategy => "SimpleStrategy",
            ReplicationClass::NetworkTopologyStrategy => "NetworkTopologyStrategy",
        };
        let statement = format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': '{class}', 'replication_factor': {}}}",
            values::quoted(keyspace),
            tenant.replication_factor
        );
        let context = retry::Context::new(&tenant.tenant, "creating its keyspace").on(keyspace);
        let started = std::time::Instant::now();
        {
            let _schema = self.shared.schema_lock.lock().await;
            retry::schema_change(&self.shared, &context, &statement).await?;
        }
        self.warn_if_underreplicated(tenant);
        self.warn_if_replication_differs(tenant, keyspace);
        log::info!(
            "cassandra: tenant={} keyspace={keyspace} class={class} factor={} ms={}",
            tenant.tenant,
            tenant.replication_factor,
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// `CREATE KEYSPACE IF NOT EXISTS` keeps an existing keyspace as it is: say so when the
    /// tenant's configuration asks for another replication (changing it is an operator's
    /// `ALTER KEYSPACE` followed by a repair, never a side effect of opening a tenant).
    fn warn_if_replication_differs(&self, tenant: &TenantStorage, keyspace: &str) {
        let state = self.shared.session.get_cluster_state();
        let Some(existing) = state.get_keyspace(keyspace) else {
            return;
        };
        let factor = tenant.replication_factor as usize;
        let same = match (&existing.strategy, tenant.replication_class) {
            (Strategy::SimpleStrategy { replication_factor }, ReplicationClass::SimpleStrategy) => {
                *replication_factor == factor
            }
            (
                Strategy::NetworkTopologyStrategy { datacenter_repfactors },
                ReplicationClass::NetworkTopologyStrategy,
            ) => datacenter_repfactors.values().all(|&f| f == factor),
            _ => false,
        };
        if !same {
            log::warn!(
                "cassandra: tenant={} keyspace={keyspace} has replication {:?}, the tenant's configuration says {:?} \
                 factor {factor}: left as it is (ALTER KEYSPACE, then repair, to change it)",
                tenant.tenant,
                existing.strategy,
                tenant.replication_class
            );
        }
    }

    /// A factor above the number of nodes (per datacenter) makes every quorum unreachable.
    fn warn_if_underreplicated(&self, tenant: &TenantStorage) {
        let state = self.shared.session.get_cluster_state();
        let factor = tenant.replication_factor as usize;
        let mut nodes_per_datacenter: HashMap<String, usize> = HashMap::new();
        for node in state.get_nodes_info() {
            *nodes_per_datacenter
                .entry(node.datacenter.clone().unwrap_or_default())
                .or_default() += 1;
        }
        let short: Vec<String> = match tenant.replication_class {
            ReplicationClass::SimpleStrategy => {
                let nodes = state.get_nodes_info().len();
                (factor > nodes).then(|| format!("{nodes} nodes")).into_iter().collect()
            }
            ReplicationClass::NetworkTopologyStrategy => nodes_per_datacenter
                .iter()
                .filter(|(_, nodes)| factor > **nodes)
                .map(|(dc, nodes)| format!("{nodes} nodes in datacenter {dc:?}"))
                .collect(),
        };
        if !short.is_empty() {
            log::warn!(
                "cassandra: tenant={} replication_factor={factor} exceeds the cluster ({}): writes at {:?} will fail as unavailable",
                tenant.tenant,
                short.join(", "),
                self.shared.config.consistency
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_has_documented_defaults_and_rejects_unknown_keys() {
        let config: CassandraConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, CassandraConfig::default());
        assert_eq!(config.consistency, ConsistencyLevel::LocalQuorum);
        let config: CassandraConfig = serde_json::from_str(r#"{"consistency": "local_one"}"#).unwrap();
        assert_eq!(config.consistency, ConsistencyLevel::LocalOne);
        assert!(serde_json::from_str::<CassandraConfig>(r#"{"consistencyy": "one"}"#).is_err());
        assert!(serde_json::from_str::<CassandraConfig>(r#"{"consistency": "two"}"#).is_err());
    }

    #[test]
    fn a_keyspace_prefix_that_cannot_name_a_keyspace_is_refused() {
        for prefix in ["", "My", "a-b", "a_very_long_prefix_"] {
            let config = CassandraConfig {
                keyspace_prefix: prefix.into(),
                ..CassandraConfig::default()
            };
            assert_eq!(config.check().unwrap_err().kind, StoreErrorKind::Invalid, "{prefix:?}");
        }
        assert!(CassandraConfig::default().check().is_ok());
    }
}
