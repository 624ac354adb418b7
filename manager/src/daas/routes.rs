//! The API's endpoints: each path pattern once, with the methods it takes, matched by
//! `matchit` (a radix tree, as axum's router uses). A path that matches no pattern is a 404; a
//! method an endpoint does not take is a 405 that names the ones it does.

use std::sync::LazyLock;

use hyper::Method;

/// An endpoint of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Health,
    Metrics,
    PlatformStats,
    Plugins,
    Files,
    File,
    FileRejected,
    Reports,
    Stats,
    Tables,
    TableRows,
    TableCount,
    Messages,
    StreamInstances,
    StreamInstance,
    StreamRejected,
    StreamDecisions,
    StreamReports,
}

const PATTERNS: &[(&str, Endpoint)] = &[
    ("/healthz", Endpoint::Health),
    ("/metrics", Endpoint::Metrics),
    ("/v1/stats", Endpoint::PlatformStats),
    ("/v1/plugins", Endpoint::Plugins),
    ("/v1/tenants/{tenant}/files", Endpoint::Files),
    ("/v1/tenants/{tenant}/files/{file}", Endpoint::File),
    ("/v1/tenants/{tenant}/files/{file}/rejected", Endpoint::FileRejected),
    ("/v1/tenants/{tenant}/reports", Endpoint::Reports),
    ("/v1/tenants/{tenant}/stats", Endpoint::Stats),
    ("/v1/tenants/{tenant}/tables", Endpoint::Tables),
    ("/v1/tenants/{tenant}/tables/{table}/rows", Endpoint::TableRows),
    ("/v1/tenants/{tenant}/tables/{table}/count", Endpoint::TableCount),
    ("/v1/tenants/{tenant}/messages", Endpoint::Messages),
    ("/v1/tenants/{tenant}/stream/instances", Endpoint::StreamInstances),
    (
        "/v1/tenants/{tenant}/stream/instances/{instance}",
        Endpoint::StreamInstance,
    ),
    ("/v1/tenants/{tenant}/stream/rejected", Endpoint::StreamRejected),
    ("/v1/tenants/{tenant}/stream/decisions", Endpoint::StreamDecisions),
    ("/v1/tenants/{tenant}/stream/reports", Endpoint::StreamReports),
];

impl Endpoint {
    /// The methods it takes (HEAD is taken wherever GET is).
    pub(super) fn methods(self) -> &'static [Method] {
        match self {
            Endpoint::Files | Endpoint::Messages => &[Method::POST],
            Endpoint::StreamInstances => &[Method::GET, Method::POST],
            Endpoint::StreamInstance => &[Method::DELETE],
            _ => &[Method::GET],
        }
    }
}

/// The parts of a matched path.
#[derive(Debug, Default)]
pub(super) struct PathParams {
    /// The tenant named in the path.
    pub tenant: String,
    /// A file id.
    pub file: String,
    /// A table name.
    pub table: String,
    /// A stream instance id.
    pub instance: String,
}

static ROUTER: LazyLock<matchit::Router<Endpoint>> = LazyLock::new(|| {
    let mut router = matchit::Router::new();
    for (pattern, endpoint) in PATTERNS {
        router
            .insert(*pattern, *endpoint)
            .expect("the patterns do not conflict");
    }
    router
});

/// The endpoint `path` names, and its parts (trailing slashes ignored).
pub(super) fn find(path: &str) -> Option<(Endpoint, PathParams)> {
    let trimmed = path.trim_end_matches('/');
    let matched = ROUTER.at(if trimmed.is_empty() { "/" } else { trimmed }).ok()?;
    let get = |name: &str| matched.params.get(name).unwrap_or_default().to_string();
    Some((
        *matched.value,
        PathParams {
            tenant: get("tenant"),
            file: get("file"),
            table: get("table"),
            instance: get("instance"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_endpoint_and_parts() {
        let (endpoint, params) = find("/v1/tenants/client1/tables/readings/count").unwrap();
        assert_eq!(endpoint, Endpoint::TableCount);
        assert_eq!((params.tenant.as_str(), params.table.as_str()), ("client1", "readings"));
        assert_eq!(find("/v1/tenants/client1/files/").unwrap().0, Endpoint::Files);
        assert!(find("/v1/tenants/client1/nothing").is_none());
        assert!(find("/").is_none());
        assert!(find("/v1/tenants/a/b/c/d/e").is_none());
    }
}
