//! daas: the HTTP API (hyper, HTTP/1.1). It authenticates, checks tenant constraints while an
//! upload streams in, stages accepted files, and serves reports, statistics, stored rows and
//! metrics. The routes are in [`route`]; every failure becomes a status in [`error`].

mod auth;
mod connections;
mod error;
mod messages;
mod rate;
mod read;
mod reads;
mod routes;
mod stream;
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
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, Refusal};
pub use rate::RateLimits;
pub use reads::ReadGate;

use connections::Connections;
use routes::Endpoint;

use crate::batch::{BatchManager, FileTracker};
use crate::config::ServerConfig;
use crate::coredms::{CoreDms, TenantStorage, TenantStore};
use crate::plugin_host::PluginHost;
use crate::queue::Queue;
use crate::report::ReportStore;
use crate::report::StreamLog;
use crate::staging::Staging;
use crate::stream::{StreamConfig, StreamManager};
use crate::telemetry::Metrics;
use crate::tenants::watch::TenantsHandle;
use crate::tenants::{Tenant, TenantId, TokenDigest};
use crate::usage::UsageLedger;

/// What the API works with.
pub struct ApiState {
    /// The HTTP settings (limits and timeouts).
    pub server: ServerConfig,
    /// The configuration in force: who may call, with which limits.
    pub tenants: TenantsHandle,
    /// The admin token's digest (admin calls are refused without one).
    pub admin_token: Option<TokenDigest>,
    /// The digest of the token `/metrics` requires (the admin token is accepted too); none:
    /// `/metrics` answers anyone.
    pub metrics_token: Option<TokenDigest>,
    /// Where accepted uploads are made durable before the 201.
    pub staging: Arc<Staging>,
    /// Files in flight.
    pub tracker: Arc<FileTracker>,
    /// What each tenant's data occupies (the quota).
    pub usage: Arc<UsageLedger>,
    /// The batch manager (to hand staged files over).
    pub batch: Arc<BatchManager>,
    /// The tenants' stores, for the read endpoints.
    pub dms: Arc<dyn CoreDms>,
    /// Reports, rejected rows and statistics, for the read endpoints.
    pub reports: Arc<ReportStore>,
    /// The plugins' status, for the status endpoints.
    pub plugins: Arc<PluginHost>,
    /// Refused uploads and accepted files are counted here; `/metrics` renders it.
    pub metrics: Arc<Metrics>,
    /// The bound on each tenant's reads in progress.
    pub reads: ReadGate,
    /// The tenants' topics, where accepted messages go.
    pub queue: Arc<dyn Queue>,
    /// The stream instances.
    pub stream: Arc<StreamManager>,
    /// The platform's stream limits (a tenant may set its own).
    pub stream_config: StreamConfig,
    /// Each tenant's message rate.
    pub rates: RateLimits,
}

impl ApiState {
    async fn store(&self, tenant: &TenantId, config: &Tenant) -> Result<Arc<dyn TenantStore>, ApiError> {
        Ok(self.dms.open_tenant(&TenantStorage::of(tenant, config)).await?)
    }
}

/// How long requests in progress may go on after a shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The answer to a connection when every place is taken by a request in progress.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 70\r\n\r\n\
{\"error\": \"the platform has as many requests in progress as it takes\"}";

/// Serves the API on `listener` until `cancel`, then lets requests in progress finish.
///
/// Every connection has a header-read timeout (which also closes a keep-alive connection idle
/// for that long), and their number is bounded ([`connections`]).
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, cancel: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let connections = Connections::new(connections::connection_limit(state.server.max_connections));
    let header_timeout = Duration::from_secs(state.server.header_read_timeout_seconds.max(1));
    let mut accept_errors = RateLimitedLog::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to be freed.
                    accept_errors.log(|suppressed| log::warn!("daas: accept failed: {e} ({suppressed} more since the last report)"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = connections.admit() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY_RESPONSE)).await;
            });
            continue;
        };
        let state = Arc::clone(&state);
        let connection = Arc::clone(&admitted.connection);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            let in_progress = connection.request();
            async move {
                let response = handle(&state, request).await;
                drop(in_progress);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            // Above the platform's own limits (`check_head`), which answer with a JSON body.
            .max_headers(MAX_HEADERS * 2)
            .max_buf_size(4 * MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        log::debug!("daas: connection from {peer}: {e}");
                    }
                }
                () = admitted.connection.close.cancelled() => {
                    log::debug!("daas: closed the idle connection from {peer} to make room for a new one");
                }
            }
            drop(admitted);
        });
    }
    if connections.evicted() > 0 {
        log::info!(
            "daas: {} idle connections were closed to make room (limit {})",
            connections.evicted(),
            connections.limit()
        );
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        log::warn!(
            "daas: requests still running {} s into the shutdown were cut off (an upload cut off was never acknowledged)",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

/// A warning that may repeat many times a second, written at most once per period with the
/// number of repetitions in between.
struct RateLimitedLog {
    period: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(period: Duration) -> Self {
        RateLimitedLog {
            period,
            last: None,
            suppressed: 0,
        }
    }

    fn log(&mut self, write: impl FnOnce(u64)) {
        if self.last.is_some_and(|at| at.elapsed() < self.period) {
            self.suppressed += 1;
            return;
        }
        write(self.suppressed);
        self.last = Some(std::time::Instant::now());
        self.suppressed = 0;
    }
}

/// The longest request target (path and query) answered; longer ones get 414.
const MAX_URI_BYTES: usize = 8 << 10;
/// The most header bytes answered; more get 431. (hyper's own limits sit above these, so it
/// is this check, with a JSON body, that a client meets.)
const MAX_HEADER_BYTES: usize = 64 << 10;
const MAX_HEADERS: usize = 100;

async fn handle(state: &ApiState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if let Err(error) = check_head(&request) {
        return error.into_response();
    }
    match route(state, request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_server_error() {
                log::error!("daas: {method} {path}: {} {}", error.status().as_u16(), error.message);
            }
            error.into_response()
        }
    }
}

/// Refuses a request line or headers larger than the platform answers.
fn check_head<B>(request: &Request<B>) -> Result<(), ApiError> {
    let uri = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Err(ApiError::new(
            Refusal::UriTooLong,
            format!("the request target has {uri} bytes, more than the {MAX_URI_BYTES} answered"),
        ));
    }
    let headers = request.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            Refusal::HeadersTooLarge,
            format!(
                "the request has {} headers of {bytes} bytes, more than the {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes answered",
                headers.len()
            ),
        ));
    }
    Ok(())
}

async fn route(state: &ApiState, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = request.uri().path().to_string();
    // HEAD is GET without the body (hyper leaves the body of a HEAD answer out).
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    let Some((endpoint, params)) = routes::find(&path) else {
        return Err(ApiError::not_found(format!("no such endpoint: {method} {path}")));
    };
    if !endpoint.methods().contains(&method) {
        let allowed: Vec<&str> = endpoint.methods().iter().map(Method::as_str).collect();
        return Err(ApiError::new(
            Refusal::MethodNotAllowed,
            format!("{method} is not allowed on {path} (use {})", allowed.join(" or ")),
        ));
    }
    match endpoint {
        Endpoint::Health => Ok(json_of(StatusCode::OK, &read::Health { status: "ok" })),
        Endpoint::Metrics => {
            if let Some(digest) = &state.metrics_token {
                auth::metrics(digest, state.admin_token.as_ref(), request.headers())?;
            }
            Ok(text(StatusCode::OK, state.metrics.encode()))
        }
        Endpoint::PlatformStats => read::platform_stats(state, &request).await,
        Endpoint::Plugins => read::plugins(state, &request),
        Endpoint::Files => upload::upload(state, request, &params.tenant).await,
        Endpoint::Messages => messages::post(state, request, &params.tenant).await,
        Endpoint::StreamInstances if method == Method::POST => stream::start(state, &request, &params),
        Endpoint::StreamInstances => stream::list(state, &request, &params),
        Endpoint::StreamInstance => stream::stop(state, &request, &params).await,
        Endpoint::StreamRejected => stream::rejected(state, &request, &params).await,
        Endpoint::StreamDecisions => stream::records(state, &request, &params, StreamLog::Decisions).await,
        Endpoint::StreamReports => stream::records(state, &request, &params, StreamLog::Reports).await,
        _ => read::tenant_get(state, &request, endpoint, &params).await,
    }
}

/// A JSON response of a typed body.
pub(crate) fn json_of<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    json_of(status, body)
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

/// The query string as a map (later keys win), decoded as a form (`+` is a space, `%xx` a byte).
fn query<B>(request: &Request<B>) -> HashMap<String, String> {
    form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
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
    fn queries_are_decoded_as_forms() {
        let request = Request::builder()
            .uri("/x?name=my%20data+2.csv&limit=5&bad=%zz&limit=7")
            .body(())
            .unwrap();
        let params = query(&request);
        assert_eq!(params["name"], "my data 2.csv");
        assert_eq!(params["limit"], "7", "later keys win");
        assert_eq!(params["bad"], "%zz");
    }
}
