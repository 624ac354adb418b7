//! Who is calling: a tenant with its bearer token (checked against `api_token_sha256`), or the
//! operator with the admin token.

use hyper::{HeaderMap, header};

use super::{ApiError, Refusal};
use crate::tenants::{Tenant, TenantId, TokenDigest};

/// The seed's message for an unknown tenant, also given for a wrong token (401 both).
pub const CLIENT_NOT_FOUND: &str = "Client not found in customer data";

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The tenant named in the URL, if it exists and the request carries its token. An unknown
/// tenant and a wrong token get the same answer, so tenant names cannot be probed.
pub fn tenant(
    tenants: &crate::tenants::Tenants,
    headers: &HeaderMap,
    name: &str,
) -> Result<(TenantId, Tenant), ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::new(
            Refusal::Unauthorized,
            "missing Authorization: Bearer <token>",
        ));
    };
    // The token is hashed whether or not the tenant exists: the answer takes as long either way.
    let digest = TokenDigest::of(token);
    match tenants.find(name) {
        Some((id, tenant)) if tenant.api_token_sha256.same_as(&digest) => Ok((id.clone(), tenant.clone())),
        _ => Err(ApiError::new(Refusal::Unauthorized, CLIENT_NOT_FOUND)),
    }
}

/// The tenant named in the URL, for a call its tenant or the operator may make: the admin token
/// is told plainly when the tenant does not exist (404); anyone else gets [`tenant`]'s answer.
pub fn tenant_or_admin(
    tenants: &crate::tenants::Tenants,
    admin: Option<&TokenDigest>,
    headers: &HeaderMap,
    name: &str,
) -> Result<TenantId, ApiError> {
    let is_admin = admin.is_some_and(|digest| bearer(headers).is_some_and(|token| digest.matches(token)));
    if !is_admin {
        return tenant(tenants, headers, name).map(|(id, _)| id);
    }
    tenants
        .find(name)
        .map(|(id, _)| id.clone())
        .ok_or_else(|| ApiError::not_found(format!("no tenant {name:?} in customer_information.json")))
}

/// Checks the admin token.
pub fn admin(admin: Option<&TokenDigest>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(digest) = admin else {
        return Err(ApiError::new(
            Refusal::Unauthorized,
            "admin calls are disabled: start the platform with MYSIMBDP_ADMIN_TOKEN set",
        ));
    };
    match bearer(headers) {
        Some(token) if digest.matches(token) => Ok(()),
        _ => Err(ApiError::new(
            Refusal::Unauthorized,
            "admin calls need Authorization: Bearer <admin token>",
        )),
    }
}

/// Checks the token `/metrics` requires (its own, or the admin token).
pub fn metrics(required: &TokenDigest, admin: Option<&TokenDigest>, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers).map(TokenDigest::of) {
        Some(digest) if required.same_as(&digest) || admin.is_some_and(|a| a.same_as(&digest)) => Ok(()),
        _ => Err(ApiError::new(
            Refusal::Unauthorized,
            "/metrics needs Authorization: Bearer <metrics token> (server.metrics_token_sha256)",
        )),
    }
}
