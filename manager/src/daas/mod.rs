//! daas: the HTTP API (hyper, HTTP/1.1). It authenticates, checks tenant constraints while an
//! upload streams in, stages accepted files, and serves reports, statistics, stored rows and
//! metrics. The routes are in [`route`]; every failure becomes a status in [`error`].

mod auth;
mod error;
mod read;
mod upload;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::batch::{BatchManager, FileTracker};
use crate::coredms::{CoreDms, TenantStorage, TenantStore};
use crate::plugin_host::PluginHost;
use crate::report::ReportStore;
use crate::staging::Staging;
use crate::telemetry::Metrics;
use crate::tenants::watch::TenantsHandle;
use crate::tenants::{Tenant, TenantId, TokenDigest};
use crate::usage::UsageLedger;

/// What the API works with.
pub struct ApiState {
    /// Tenants.
    pub tenants: TenantsHandle,
    /// The admin token's digest (admin calls are refused without one).
    pub admin_token: Option<TokenDigest>,
    /// Staging.
    pub staging: Arc<Staging>,
    /// Files in flight.
    pub tracker: Arc<FileTracker>,
    /// What each tenant's data occupies (the quota).
    pub usage: Arc<UsageLedger>,
    /// The batch manager (to hand staged files over).
    pub batch: Arc<BatchManager>,
    /// Storage.
    pub dms: Arc<dyn CoreDms>,
    /// Reports.
    pub reports: Arc<ReportStore>,
    /// Plugins.
    pub plugins: Arc<PluginHost>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl ApiState {
    async fn store(&self, tenant: &TenantId, config: &Tenant) -> Result<Arc<dyn TenantStore>, ApiError> {
        Ok(self.dms.open_tenant(&TenantStorage::of(tenant, config)).await?)
    }
}

/// How long requests in progress may go on after a shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the API on `listener` until `cancel`, then lets requests in progress finish.
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, cancel: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("daas: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(&state, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("daas: connection from {peer}: {e}");
            }
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        log::warn!(
            "daas: requests still running {} s into the shutdown were cut off (an upload cut off was never acknowledged)",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

async fn handle(state: &ApiState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match route(state, request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                log::error!("daas: {method} {path}: {} {}", error.status.as_u16(), error.message);
            }
            error.into_response()
        }
    }
}

async fn route(state: &ApiState, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(read::health(state)),
        (&Method::GET, ["metrics"]) => Ok(text(StatusCode::OK, state.metrics.encode())),
        (&Method::GET, ["v1", "stats"]) => read::platform_stats(state, &request).await,
        (&Method::GET, ["v1", "plugins"]) => read::plugins(state, &request),
        (&Method::POST, ["v1", "tenants", tenant, "files"]) => upload::upload(state, request, tenant).await,
        (&Method::GET, ["v1", "tenants", tenant, rest @ ..]) => read::tenant_get(state, &request, tenant, rest).await,
        (_, ["v1", "tenants", _, "files"]) => Err(method_not_allowed(&method, &path, "POST")),
        (_, ["v1", "tenants", _, ..]) | (_, ["v1", "stats" | "plugins"] | ["healthz" | "metrics"]) => {
            Err(method_not_allowed(&method, &path, "GET"))
        }
        _ => Err(ApiError::not_found(format!("no such endpoint: {method} {path}"))),
    }
}

fn method_not_allowed(method: &Method, path: &str, allowed: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path} (use {allowed})"),
    )
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The query string as a map (later keys win), percent-decoded.
fn query<B>(request: &Request<B>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| {
                std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A numeric query parameter within `1..=max`, or `default`.
fn limit_param(query: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    match query.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be a number from 1 to {max}, got {v:?}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_garbage() {
        assert_eq!(percent_decode("my%20data.csv"), "my data.csv");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
