//! mysimbdp: a multi-tenant big-data ingestion platform. See `ARCHITECTURE.md` at the root of
//! the repository for the map of components and the invariants each one keeps.

pub mod coredms;
pub mod plugin_host;
pub mod queue;
pub mod tenants;
