//! The connections the API holds: a bound on how many, taken from the process's descriptor
//! limit with a reserve kept for the platform's own files (databases, plugin copies, staging,
//! logs), and room made under pressure by closing the oldest connection that has no request in
//! progress. So idle or slow connections, however many are opened, can neither exhaust the
//! descriptors the rest of the platform needs nor keep a new client out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Descriptors kept for the platform's own files, at most.
const MAX_RESERVE: u64 = 512;

/// One accepted connection.
#[derive(Debug)]
pub(super) struct Connection {
    id: u64,
    requests_in_progress: AtomicUsize,
    /// Cancelled to close the connection (it was idle when room was needed).
    pub(super) close: CancellationToken,
}

impl Connection {
    /// A request on this connection began; the returned guard ends it.
    pub(super) fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests_in_progress.fetch_add(1, Ordering::SeqCst);
        RequestGuard(Arc::clone(self))
    }
}

/// Held while a request is in progress.
pub(super) struct RequestGuard(Arc<Connection>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests_in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections.
#[derive(Debug)]
pub(super) struct Connections {
    limit: usize,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    evicted: AtomicU64,
}

/// A connection's place; dropping it frees the place.
pub(super) struct Admitted {
    connections: Arc<Connections>,
    pub(super) connection: Arc<Connection>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.connection.id);
    }
}

impl Connections {
    /// At most `limit` connections.
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Connections {
            limit: limit.max(1),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// The bound.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Connections closed to make room.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// A place for a new connection: a free one, or the place of the oldest connection without
    /// a request in progress, which is closed. `None` when every connection is busy.
    pub(super) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.limit {
            let idle = open
                .values()
                .find(|c| c.requests_in_progress.load(Ordering::SeqCst) == 0)
                .map(|c| c.id)?;
            if let Some(evicted) = open.remove(&idle) {
                evicted.close.cancel();
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            requests_in_progress: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        open.insert(connection.id, Arc::clone(&connection));
        Some(Admitted {
            connections: Arc::clone(self),
            connection,
        })
    }
}

/// Raises the soft descriptor limit to the hard one and returns how many connections fit with
/// descriptors to spare for the platform's own files: `max_connections`, or fewer.
pub(super) fn connection_limit(max_connections: usize) -> usize {
    let Some(descriptors) = crate::os::raise_descriptor_limit() else {
        return max_connections;
    };
    let reserve = (descriptors / 2).min(MAX_RESERVE);
    let fit = usize::try_from(descriptors.saturating_sub(reserve)).unwrap_or(usize::MAX);
    let chosen = max_connections.min(fit).max(1);
    log::info!(
        "daas: at most {chosen} connections (descriptor limit {descriptors}, {reserve} kept for the platform's files)"
    );
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_house_closes_its_oldest_idle_connection_and_never_a_busy_one() {
        let connections = Connections::new(2);
        let first = connections.admit().unwrap();
        let second = connections.admit().unwrap();
        let _busy = first.connection.request();
        let third = connections.admit().expect("the idle second makes room");
        assert!(second.connection.close.is_cancelled());
        assert!(!first.connection.close.is_cancelled());
        let _also_busy = third.connection.request();
        assert!(connections.admit().is_none(), "both open connections are busy");
        drop(second);
        assert_eq!(connections.evicted(), 1);
        drop(third);
        assert!(connections.admit().is_some(), "a place freed");
    }
}
