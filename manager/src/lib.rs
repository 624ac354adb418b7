//! mysimbdp: a multi-tenant big-data ingestion platform. See `ARCHITECTURE.md` at the root of
//! the repository for the map of components and the invariants each one keeps.

pub mod admission;
pub mod batch;
pub mod config;
pub mod coredms;
pub mod crash;
pub mod daas;
pub mod durable;
pub mod fswatch;
pub mod ingest;
pub mod monitor;
pub mod os;
pub mod platform;
pub mod plugin_host;
pub mod queue;
pub mod report;
pub mod schema;
pub mod source;
pub mod staging;
pub mod stream;
pub mod telemetry;
pub mod tenants;
pub mod usage;
