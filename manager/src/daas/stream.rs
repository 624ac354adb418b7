//! The stream endpoints: a tenant's instances (listed by the tenant or the operator, started
//! and stopped by the operator) and its rejected messages (read by either).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::routes::PathParams;
use super::{ApiError, ApiState, Refusal, auth, json_of, limit_param, query};
use crate::report::{ReportStore, StreamLog};
use crate::stream::{InstanceView, StreamError};
use crate::tenants::TenantId;

#[derive(Serialize)]
struct Instances {
    instances: Vec<InstanceView>,
}

#[derive(Serialize)]
struct Started {
    instance_id: String,
}

impl From<StreamError> for ApiError {
    fn from(e: StreamError) -> Self {
        let refusal = match &e {
            StreamError::UnknownTenant(_) | StreamError::NoInstance { .. } | StreamError::NoPlugin { .. } => {
                Refusal::NotFound
            }
            StreamError::AtMaximum { .. } => Refusal::Conflict,
            StreamError::State(_) => Refusal::Internal,
        };
        ApiError::new(refusal, e.to_string())
    }
}

/// `GET /v1/tenants/{t}/stream/instances`.
pub(super) fn list(
    state: &ApiState,
    request: &Request<Incoming>,
    path: &PathParams,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let tenants = state.tenants.current();
    let tenant = auth::tenant_or_admin(&tenants, state.admin_token.as_ref(), request.headers(), &path.tenant)?;
    Ok(json_of(
        StatusCode::OK,
        &Instances {
            instances: state.stream.instances(&tenant),
        },
    ))
}

/// The tenant an operator's call is about.
fn admin_tenant(state: &ApiState, request: &Request<Incoming>, path: &PathParams) -> Result<TenantId, ApiError> {
    auth::admin(state.admin_token.as_ref(), request.headers())?;
    auth::tenant_or_admin(
        &state.tenants.current(),
        state.admin_token.as_ref(),
        request.headers(),
        &path.tenant,
    )
}

/// `POST /v1/tenants/{t}/stream/instances` (admin).
pub(super) fn start(
    state: &ApiState,
    request: &Request<Incoming>,
    path: &PathParams,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let tenant = admin_tenant(state, request, path)?;
    let instance_id = state.stream.start_instance(&tenant)?;
    Ok(json_of(StatusCode::CREATED, &Started { instance_id }))
}

/// `DELETE /v1/tenants/{t}/stream/instances/{id}` (admin): 204 once the batch in hand is
/// stored and committed.
pub(super) async fn stop(
    state: &ApiState,
    request: &Request<Incoming>,
    path: &PathParams,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let tenant = admin_tenant(state, request, path)?;
    state.stream.stop_instance(&tenant, &path.instance).await?;
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// `GET /v1/tenants/{t}/stream/rejected?limit=N&page=P`.
pub(super) async fn rejected(
    state: &ApiState,
    request: &Request<Incoming>,
    path: &PathParams,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let rows = paged(state, request, path, |reports, tenant, page, limit| {
        reports.stream_rejected(tenant, page, limit)
    })
    .await?;
    Ok(json_of(StatusCode::OK, &rows))
}

/// One page of a tenant's log (tenant or admin, `?limit=N&page=P`), read off the async workers;
/// a malformed page token is a 400.
async fn paged<T: Send + 'static>(
    state: &ApiState,
    request: &Request<Incoming>,
    path: &PathParams,
    read: impl FnOnce(&ReportStore, &TenantId, Option<&str>, usize) -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let tenants = state.tenants.current();
    let tenant = auth::tenant_or_admin(&tenants, state.admin_token.as_ref(), request.headers(), &path.tenant)?;
    let params = query(request);
    let limit = limit_param(&params, 100, 1000)?;
    let page = params.get("page").cloned();
    let reports = std::sync::Arc::clone(&state.reports);
    tokio::task::spawn_blocking(move || read(&reports, &tenant, page.as_deref(), limit))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => ApiError::bad_request(e.to_string()),
            _ => ApiError::from(e),
        })
}

#[derive(Serialize)]
struct Decisions {
    decisions: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page: Option<String>,
}

#[derive(Serialize)]
struct Reports {
    reports: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page: Option<String>,
}

/// `GET /v1/tenants/{t}/stream/decisions` and `.../stream/reports` `?limit=N&page=P`: the
/// stream manager's decisions and the instances' periodic reports, oldest first.
pub(super) async fn records(
    state: &ApiState,
    request: &Request<Incoming>,
    path: &PathParams,
    log: StreamLog,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let page = paged(state, request, path, move |reports, tenant, page, limit| {
        reports.records(tenant, log, page, limit)
    })
    .await?;
    Ok(match log {
        StreamLog::Decisions => json_of(
            StatusCode::OK,
            &Decisions {
                decisions: page.records,
                next_page: page.next_page,
            },
        ),
        StreamLog::Reports => json_of(
            StatusCode::OK,
            &Reports {
                reports: page.records,
                next_page: page.next_page,
            },
        ),
    })
}
