//! The read side of the API: file status, reports, rejected rows, statistics, tables and rows,
//! plugin status, health. Every answer is a typed body.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::routes::{Endpoint, PathParams};
use super::{ApiError, ApiState, auth, json_of, limit_param, query};
use crate::batch::FileState;
use crate::plugin_host::PluginStatus;
use crate::report::{FileOutcome, FileReport, StatsSnapshot};
use crate::schema::{TableSchema, Value};
use crate::source::FileId;
use crate::tenants::{Tenant, TenantId};
use crate::usage::Usage;

/// `GET /healthz`.
#[derive(Serialize)]
pub(super) struct Health {
    pub status: &'static str,
}

#[derive(Serialize)]
struct Plugins {
    plugins: Vec<PluginStatus>,
}

/// A tenant's statistics: its files' aggregates, its limits and usage.
#[derive(Serialize)]
struct TenantStats {
    tenant: TenantId,
    #[serde(flatten)]
    files: StatsSnapshot,
    files_in_flight: u64,
    max_files_number: u64,
    max_memory_size: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugins: Option<Vec<PluginStatus>>,
    stream: StreamStats,
}

/// The tenant's stream, from its instances' last reports.
#[derive(Serialize)]
struct StreamStats {
    instances: usize,
    paused: bool,
    autoscale: bool,
    /// The group's lag, as last reported.
    lag: Option<u64>,
    /// Messages per second over the last reports, all instances.
    messages_per_second: f64,
    /// Each instance's last period report.
    last_reports: Vec<crate::monitor::InstanceReport>,
}

#[derive(Serialize)]
struct PlatformTotals {
    #[serde(flatten)]
    files: StatsSnapshot,
    files_in_flight: u64,
    backend: &'static str,
}

#[derive(Serialize)]
struct PlatformStats {
    platform: PlatformTotals,
    tenants: BTreeMap<TenantId, TenantStats>,
}

/// Where a file is: before its report (queued, ingesting) or how its report ended.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Queued,
    Ingesting,
    Done,
    Failed,
}

#[derive(Serialize)]
struct FileStatus {
    file_id: String,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    report: Option<FileReport>,
}

#[derive(Serialize)]
struct Tables {
    tables: Vec<TableSchema>,
}

#[derive(Serialize)]
struct Count {
    count: u64,
}

#[derive(Serialize)]
struct RowsPage {
    rows: Vec<serde_json::Map<String, serde_json::Value>>,
    next_page: Option<String>,
}

/// `GET /v1/plugins` (admin): every plugin's status.
pub(super) fn plugins(state: &ApiState, request: &Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    auth::admin(state.admin_token.as_ref(), request.headers())?;
    Ok(json_of(
        StatusCode::OK,
        &Plugins {
            plugins: state.plugins.statuses(),
        },
    ))
}

/// `GET /v1/stats` (admin): the platform's and every tenant's statistics.
pub(super) async fn platform_stats(
    state: &ApiState,
    request: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    auth::admin(state.admin_token.as_ref(), request.headers())?;
    let (platform, per_tenant) = state.reports.all_stats();
    let tenants = state.tenants.current();
    let tenants: BTreeMap<TenantId, TenantStats> = tenants
        .iter()
        .map(|(id, tenant)| {
            let files = per_tenant.get(id).cloned().unwrap_or_default();
            (id.clone(), tenant_stats(state, id, tenant, files, None))
        })
        .collect();
    let files_in_flight = tenants.values().map(|t| t.files_in_flight).sum();
    Ok(json_of(
        StatusCode::OK,
        &PlatformStats {
            platform: PlatformTotals {
                files: platform,
                files_in_flight,
                backend: state.dms.backend(),
            },
            tenants,
        },
    ))
}

fn tenant_stats(
    state: &ApiState,
    id: &TenantId,
    tenant: &Tenant,
    files: StatsSnapshot,
    plugins: Option<Vec<PluginStatus>>,
) -> TenantStats {
    TenantStats {
        tenant: id.clone(),
        files,
        files_in_flight: state.tracker.in_flight(id),
        max_files_number: tenant.max_files_number,
        max_memory_size: tenant.max_memory_size,
        usage: state.usage.known(id),
        plugins,
        stream: stream_stats(state, id, tenant),
    }
}

fn stream_stats(state: &ApiState, id: &TenantId, tenant: &Tenant) -> StreamStats {
    let instances = state.stream.instances(id);
    let last_reports: Vec<crate::monitor::InstanceReport> =
        instances.iter().filter_map(|i| i.status.last_report.clone()).collect();
    StreamStats {
        instances: instances.len(),
        paused: state.stream.is_paused(id),
        autoscale: tenant.autoscale.unwrap_or(true),
        lag: last_reports.iter().filter_map(|r| r.lag).max(),
        messages_per_second: last_reports
            .iter()
            .map(|r| r.messages as f64 / (r.period_end - r.period_start).max(0.001))
            .sum(),
        last_reports,
    }
}

/// The tenant endpoints that read.
pub(super) async fn tenant_get(
    state: &ApiState,
    request: &Request<Incoming>,
    endpoint: Endpoint,
    path: &PathParams,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let tenants = state.tenants.current();
    let (id, tenant) = auth::tenant(&tenants, request.headers(), &path.tenant)?;
    let params = query(request);
    match endpoint {
        Endpoint::File => file_status(state, &id, &path.file),
        Endpoint::FileRejected => {
            let file = parse_file_id(&id, &path.file)?;
            let limit = limit_param(&params, 100, 1000)?;
            let page = match params.get("page") {
                None => 0,
                Some(p) => p
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("page {p:?} is not one this API returned")))?,
            };
            let reports = std::sync::Arc::clone(&state.reports);
            let tenant_id = id.clone();
            let page = tokio::task::spawn_blocking(move || reports.rejected_rows(&tenant_id, file, page, limit))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??;
            let page = page.ok_or_else(|| ApiError::not_found(no_report(&id, file)))?;
            Ok(json_of(StatusCode::OK, &page))
        }
        Endpoint::Reports => Ok(json_of(StatusCode::OK, &state.reports.document(&id))),
        Endpoint::Stats => {
            let plugins = state
                .plugins
                .statuses()
                .into_iter()
                .filter(|p| p.tenant == id)
                .collect();
            let stats = tenant_stats(state, &id, &tenant, state.reports.stats(&id), Some(plugins));
            Ok(json_of(StatusCode::OK, &stats))
        }
        Endpoint::Tables => {
            let _turn = state.reads.enter(&id).await?;
            let tables = state.store(&id, &tenant).await?.tables().await?;
            Ok(json_of(StatusCode::OK, &Tables { tables }))
        }
        Endpoint::TableCount => {
            let _turn = state.reads.enter(&id).await?;
            let count = state.store(&id, &tenant).await?.count(&path.table).await?;
            Ok(json_of(StatusCode::OK, &Count { count }))
        }
        Endpoint::TableRows => {
            let limit = limit_param(&params, 100, 10_000)?;
            let _turn = state.reads.enter(&id).await?;
            let store = state.store(&id, &tenant).await?;
            let tables = store.tables().await?;
            let schema = tables
                .iter()
                .find(|t| t.name == path.table)
                .ok_or_else(|| ApiError::not_found(format!("tenant {id} has no table {:?}", path.table)))?;
            let page = store
                .read_page(&path.table, params.get("page").map(String::as_str), limit)
                .await?;
            let rows = page
                .rows
                .iter()
                .map(|row| {
                    schema
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.name.clone(), value_json(v)))
                        .collect()
                })
                .collect();
            Ok(json_of(
                StatusCode::OK,
                &RowsPage {
                    rows,
                    next_page: page.next_page,
                },
            ))
        }
        other => Err(ApiError::internal(format!("{other:?} is not a read endpoint"))),
    }
}

fn parse_file_id(tenant: &TenantId, file: &str) -> Result<FileId, ApiError> {
    file.parse()
        .map_err(|_| ApiError::not_found(format!("tenant {tenant} has no file {file:?}")))
}

fn no_report(tenant: &TenantId, file: FileId) -> String {
    format!("tenant {tenant} has no file {file} (or its report was compacted away; see the tenant's report log)")
}

fn file_status(state: &ApiState, tenant: &TenantId, file: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let file = parse_file_id(tenant, file)?;
    let status = match state.tracker.status(tenant, file) {
        Some((state, note)) => FileStatus {
            file_id: file.to_string(),
            status: match state {
                FileState::Queued => Status::Queued,
                FileState::Ingesting => Status::Ingesting,
            },
            note,
            report: None,
        },
        None => {
            let report = state
                .reports
                .report(tenant, file)
                .ok_or_else(|| ApiError::not_found(no_report(tenant, file)))?;
            FileStatus {
                file_id: file.to_string(),
                status: match report.status {
                    FileOutcome::Done => Status::Done,
                    FileOutcome::Failed => Status::Failed,
                },
                note: None,
                report: Some(report),
            }
        }
    };
    Ok(json_of(StatusCode::OK, &status))
}

/// A stored value as JSON for a person: timestamps as RFC 3339 UTC text with milliseconds,
/// blobs as hex text, doubles that JSON cannot hold (NaN, infinities) as text.
pub(super) fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Text(s) => s.clone().into(),
        Value::BigInt(v) => (*v).into(),
        Value::Int(v) => (*v).into(),
        Value::Double(v) => serde_json::Number::from_f64(*v).map_or_else(|| v.to_string().into(), Into::into),
        Value::Boolean(v) => (*v).into(),
        Value::Timestamp(ms) => {
            let mut s = String::with_capacity(27);
            plugin_api::time::format_iso8601_millis(&mut s, *ms);
            // `...15.496000Z` → `...15.496Z`
            s.replace_range(s.len() - 4..s.len() - 1, "");
            s.into()
        }
        Value::Blob(b) => hex::encode(b).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_json_a_person_can_read() {
        assert_eq!(
            value_json(&Value::Timestamp(1_541_023_215_496)),
            "2018-10-31T22:00:15.496Z"
        );
        assert_eq!(value_json(&Value::Timestamp(-1)), "1969-12-31T23:59:59.999Z");
        assert_eq!(value_json(&Value::Blob(vec![0, 255])), "00ff");
        assert_eq!(value_json(&Value::Double(f64::NAN)), "NaN");
    }
}
