//! The read side of the API: file status, reports, rejected rows, statistics, tables and rows,
//! plugin status, health.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{ApiError, ApiState, auth, json, limit_param, query};
use crate::schema::Value;
use crate::source::FileId;
use crate::tenants::{Tenant, TenantId};

/// `GET /v1/plugins` (admin): every plugin's status.
pub(super) fn plugins(state: &ApiState, request: &Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    auth::admin(state.admin_token.as_ref(), request.headers())?;
    Ok(json(StatusCode::OK, &json!({ "plugins": state.plugins.statuses() })))
}

/// `GET /v1/stats` (admin): the platform's and every tenant's statistics.
pub(super) async fn platform_stats(
    state: &ApiState,
    request: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    auth::admin(state.admin_token.as_ref(), request.headers())?;
    let (platform, per_tenant) = state.reports.all_stats();
    let tenants = state.tenants.current();
    let mut tenants_json = serde_json::Map::new();
    for (id, tenant) in tenants.iter() {
        let stats = per_tenant.get(id).cloned().unwrap_or_default();
        tenants_json.insert(id.to_string(), tenant_stats_json(state, id, tenant, &stats));
    }
    let in_flight: u64 = tenants.iter().map(|(id, _)| state.tracker.in_flight(id)).sum();
    let mut platform = serde_json::to_value(platform).unwrap_or_default();
    platform["files_in_flight"] = in_flight.into();
    platform["backend"] = state.dms.backend().into();
    Ok(json(
        StatusCode::OK,
        &json!({ "platform": platform, "tenants": tenants_json }),
    ))
}

fn tenant_stats_json(
    state: &ApiState,
    id: &TenantId,
    tenant: &Tenant,
    stats: &crate::report::StatsSnapshot,
) -> serde_json::Value {
    let mut value = serde_json::to_value(stats).unwrap_or_default();
    value["tenant"] = id.to_string().into();
    value["files_in_flight"] = state.tracker.in_flight(id).into();
    value["max_files_number"] = tenant.max_files_number.into();
    value["max_memory_size"] = tenant.max_memory_size.into();
    if let Some(usage) = state.usage.known(id) {
        value["storage_used_bytes"] = usage.storage_used_bytes.into();
        value["storage_measured_at"] = usage.storage_measured_at.into();
    }
    value
}

/// `GET /v1/tenants/{t}/...`.
pub(super) async fn tenant_get(
    state: &ApiState,
    request: &Request<Incoming>,
    tenant: &str,
    rest: &[&str],
) -> Result<Response<Full<Bytes>>, ApiError> {
    let tenants = state.tenants.current();
    let (id, tenant) = auth::tenant(&tenants, request.headers(), tenant)?;
    let params = query(request);
    match rest {
        ["files", file] => file_status(state, &id, file),
        ["files", file, "rejected"] => {
            let file = parse_file_id(&id, file)?;
            let limit = limit_param(&params, 100, 1000)?;
            let page = match params.get("page") {
                None => 0,
                Some(p) => p
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("page {p:?} is not one this API returned")))?,
            };
            let reports = std::sync::Arc::clone(&state.reports);
            let (tenant_id, limit_rows) = (id.clone(), limit);
            let page = tokio::task::spawn_blocking(move || reports.rejected_rows(&tenant_id, file, page, limit_rows))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??;
            let page = page.ok_or_else(|| ApiError::not_found(no_report(&id, file)))?;
            Ok(json(StatusCode::OK, &serde_json::to_value(page).unwrap_or_default()))
        }
        ["reports"] => Ok(json(StatusCode::OK, &state.reports.document(&id))),
        ["stats"] => {
            let stats = state.reports.stats(&id);
            let mut value = tenant_stats_json(state, &id, &tenant, &stats);
            let plugins: Vec<_> = state
                .plugins
                .statuses()
                .into_iter()
                .filter(|p| p.tenant == id)
                .collect();
            value["plugins"] = serde_json::to_value(plugins).unwrap_or_default();
            Ok(json(StatusCode::OK, &value))
        }
        ["tables"] => {
            let _turn = state.reads.enter(&id).await?;
            let tables = state.store(&id, &tenant).await?.tables().await?;
            Ok(json(StatusCode::OK, &json!({ "tables": tables })))
        }
        ["tables", table, "count"] => {
            let _turn = state.reads.enter(&id).await?;
            let count = state.store(&id, &tenant).await?.count(table).await?;
            Ok(json(StatusCode::OK, &json!({ "count": count })))
        }
        ["tables", table, "rows"] => {
            let limit = limit_param(&params, 100, 10_000)?;
            let _turn = state.reads.enter(&id).await?;
            let store = state.store(&id, &tenant).await?;
            let tables = store.tables().await?;
            let schema = tables
                .iter()
                .find(|t| t.name == *table)
                .ok_or_else(|| ApiError::not_found(format!("tenant {id} has no table {table:?}")))?;
            let page = store
                .read_page(table, params.get("page").map(String::as_str), limit)
                .await?;
            let rows: Vec<serde_json::Value> = page
                .rows
                .iter()
                .map(|row| {
                    let object = schema
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.name.clone(), value_json(v)))
                        .collect();
                    serde_json::Value::Object(object)
                })
                .collect();
            Ok(json(
                StatusCode::OK,
                &json!({ "rows": rows, "next_page": page.next_page }),
            ))
        }
        _ => Err(ApiError::not_found(format!(
            "no such endpoint: GET {}",
            request.uri().path()
        ))),
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
    if let Some((status, note)) = state.tracker.status(tenant, file) {
        return Ok(json(
            StatusCode::OK,
            &json!({ "file_id": file.to_string(), "status": status, "note": note, "report": null }),
        ));
    }
    match state.reports.report(tenant, file) {
        Some(report) => Ok(json(
            StatusCode::OK,
            &json!({ "file_id": file.to_string(), "status": report.status, "report": report }),
        )),
        None => Err(ApiError::not_found(no_report(tenant, file))),
    }
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
