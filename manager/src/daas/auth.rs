//! Who is calling: a tenant with its bearer token (checked against `api_token_sha256`), or the
//! operator with the admin token.

use hyper::{HeaderMap, StatusCode, header};

use super::ApiError;
use crate::tenants::{Tenant, TenantId, TokenDigest};

/// The seed's message for an unknown tenant.
pub const CLIENT_NOT_FOUND: &str = "Client not found in customer data";

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The tenant named in the URL, if it exists and the request carries its token.
pub fn tenant(
    tenants: &crate::tenants::Tenants,
    headers: &HeaderMap,
    name: &str,
) -> Result<(TenantId, Tenant), ApiError> {
    let (id, tenant) = tenants
        .find(name)
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, CLIENT_NOT_FOUND))?;
    match bearer(headers) {
        Some(token) if tenant.api_token_sha256.matches(token) => Ok((id.clone(), tenant.clone())),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("the bearer token is not tenant {id}'s"),
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>",
        )),
    }
}

/// Checks the admin token.
pub fn admin(admin: Option<&TokenDigest>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(digest) = admin else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin calls are disabled: start the platform with MYSIMBDP_ADMIN_TOKEN set",
        ));
    };
    match bearer(headers) {
        Some(token) if digest.matches(token) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin calls need Authorization: Bearer <admin token>",
        )),
    }
}
