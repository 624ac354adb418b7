//! `POST /v1/tenants/{t}/files`: a raw body (`?name=F`) or `multipart/form-data` with one file
//! part. The tenant's constraints are checked before the body is read (as far as the headers
//! tell) and again while it streams in: storing stops at the size limit, and the refusal is
//! answered at once (the rest of the body is read and dropped, see [`discard_rest`]). The file
//! is written to staging under a server-made name and acknowledged (201) only once it is on
//! disk.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};

use super::{ApiError, ApiState, Refusal, auth, json_of, query};
use crate::batch::UploadReservation;
use crate::coredms::TenantStorage;
use crate::durable::unix_now;
use crate::staging::{IncomingFile, UploadMeta};
use crate::telemetry::{FileAccepted, UploadRefused};
use crate::tenants::{FileType, Tenant, TenantId};

const TYPE_NOT_ALLOWED: &str = "File type not allowed for client";
const TOO_MANY_FILES: &str = "Maximum number of files uploaded";
const NO_SPACE: &str = "There is not enough memory on the client disk for the file.";

/// When a tenant over its quota may try again: usage falls only when data is removed or the
/// quota raised, which a client cannot see coming.
const QUOTA_RETRY_AFTER: Duration = Duration::from_secs(60);

fn too_large(size: u64, max: u64) -> ApiError {
    ApiError::new(
        Refusal::TooLarge,
        format!("File size exceeds maximum allowed size: {size}/{max}"),
    )
}

/// Handles an upload, logging and counting a refusal.
pub(super) async fn upload(
    state: &ApiState,
    request: Request<Incoming>,
    tenant: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, mut body) = request.into_parts();
    let head = Request::from_parts(parts, ());
    let result = accept(state, &head, &mut body, tenant).await;
    if let Err(error) = &result {
        // A client too slow to be served gets its answer and loses the connection; any other
        // refusal lets the client finish sending, so it reads the answer.
        if error.refusal != Refusal::TooSlow {
            tokio::spawn(discard_rest(body));
        }
        let reason = error.refusal.label();
        // Names a request could not prove stay out of the metric labels (a client must not add
        // series at will, nor learn which tenants exist).
        let tenant = if error.refusal == Refusal::Unauthorized {
            "(unauthorized)"
        } else {
            tenant
        };
        UploadRefused {
            tenant,
            reason,
            status: error.status().as_u16(),
            message: &error.message,
        }
        .emit(&state.metrics);
    }
    result
}

/// How long a refused upload's remaining body is read and thrown away, in all and between
/// chunks. A client that sends its whole body before reading the answer (most HTTP libraries)
/// would otherwise see its connection reset instead of the 4xx: closing a socket with unread
/// data sends a reset. (nginx's lingering close, for the same reason.) Nothing of it is stored.
const DISCARD_FOR: Duration = Duration::from_secs(30);
const DISCARD_IDLE: Duration = Duration::from_secs(5);

/// Reads and drops what is left of a refused upload's body, within [`DISCARD_FOR`], so hyper
/// can deliver the refusal and keep the connection.
pub(super) async fn discard_rest(mut body: Incoming) {
    let deadline = tokio::time::Instant::now() + DISCARD_FOR;
    loop {
        let idle = tokio::time::Instant::now() + DISCARD_IDLE;
        match tokio::time::timeout_at(deadline.min(idle), body.frame()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(None | Some(Err(_))) | Err(_) => return,
        }
    }
}

async fn accept(
    state: &ApiState,
    request: &Request<()>,
    body: &mut Incoming,
    tenant: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let started = Instant::now();
    let request_started_at = unix_now();
    let tenants = state.tenants.current();
    let (tenant_id, tenant) = auth::tenant(&tenants, request.headers(), tenant)?;
    let params = query(request);
    let boundary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"))
        .map(|v| {
            multer::parse_boundary(v).map_err(|e| ApiError::bad_request(format!("bad multipart Content-Type: {e}")))
        })
        .transpose()?;
    let declared_size = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());

    let mut pace = Pace::new(&state.server);
    let (name, receiving, file) = match boundary {
        None => {
            let name = params.get("name").cloned().unwrap_or_default();
            let file_type = file_type(&name, params.get("type"), &tenant)?;
            let mut receiving = Receiving::start(state, &tenant_id, &tenant, &file_type, declared_size).await?;
            while let Some(frame) = pace.next(body.frame()).await? {
                let frame = frame.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    pace.received(data.len());
                    receiving.chunk(&data).await?;
                }
            }
            (name, receiving, file_type)
        }
        Some(boundary) => {
            let stream = BodyStream::new(body).filter_map(|frame| async move {
                match frame {
                    Ok(frame) => frame.into_data().ok().map(Ok),
                    Err(e) => Some(Err(e)),
                }
            });
            let mut multipart = multer::Multipart::new(stream, boundary);
            let mut field = loop {
                let field = pace
                    .next(multipart.next_field())
                    .await?
                    .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
                match field {
                    Some(field) if field.file_name().is_some() => break field,
                    Some(_) => continue,
                    None => {
                        return Err(ApiError::bad_request(
                            "the multipart body has no file part (a part with a filename)",
                        ));
                    }
                }
            };
            let name = field.file_name().unwrap_or_default().to_string();
            let file_type = file_type(&name, params.get("type"), &tenant)?;
            let mut receiving = Receiving::start(state, &tenant_id, &tenant, &file_type, None).await?;
            while let Some(chunk) = pace
                .next(field.chunk())
                .await?
                .map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?
            {
                pace.received(chunk.len());
                receiving.chunk(&chunk).await?;
            }
            drop(field);
            if multipart
                .next_field()
                .await
                .ok()
                .flatten()
                .is_some_and(|f| f.file_name().is_some())
            {
                return Err(ApiError::bad_request(
                    "send one file per request: the multipart body has more than one file part",
                ));
            }
            (name, receiving, file_type)
        }
    };

    let size = receiving.incoming.written();
    let meta = UploadMeta {
        client_file_name: name.clone(),
        file_received_size: size,
        request_started_at,
        staged_at: 0.0,
        attempts: 0,
    };
    let staging = std::sync::Arc::clone(&state.staging);
    let Receiving {
        incoming, reservation, ..
    } = receiving;
    let staged = tokio::task::spawn_blocking(move || {
        let meta = UploadMeta {
            staged_at: unix_now(),
            ..meta
        };
        staging.commit(incoming, &meta)
    })
    .await
    .map_err(|e| ApiError::internal(format!("staging the file failed: {e}")))??;
    state.tracker.staged(reservation, staged.id);
    state.batch.submit(staged.clone());
    let id = staged.id.to_string();
    FileAccepted {
        tenant: tenant_id.as_str(),
        file_id: &id,
        client_file_name: &name,
        bytes: size,
        ms: started.elapsed().as_millis(),
    }
    .emit(&state.metrics);
    let status_url = format!("/v1/tenants/{tenant_id}/files/{id}");
    let mut response = json_of(
        StatusCode::CREATED,
        &Accepted {
            file_id: &id,
            tenant: &tenant_id,
            file_name: &name,
            file_type: &file,
            size,
            status: "queued",
            status_url: &status_url,
        },
    );
    if let Ok(location) = status_url.parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// How fast an upload comes in: a client that sends nothing for a while, or sends slower than
/// the platform accepts on average, is refused (408) instead of holding its connection and
/// the tenant's upload slot.
struct Pace {
    started: Instant,
    bytes: u64,
    idle: Duration,
    min_bytes_per_second: u64,
    grace: Duration,
}

impl Pace {
    fn new(server: &crate::config::ServerConfig) -> Self {
        Pace {
            started: Instant::now(),
            bytes: 0,
            idle: Duration::from_secs(server.upload_idle_timeout_seconds.max(1)),
            min_bytes_per_second: server.upload_min_bytes_per_second,
            grace: Duration::from_secs(server.upload_rate_grace_seconds),
        }
    }

    /// The next part of the body, unless the client went quiet or too slow.
    async fn next<T>(&self, part: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
        let part = tokio::time::timeout(self.idle, part).await.map_err(|_| {
            ApiError::new(
                Refusal::TooSlow,
                format!("the upload sent nothing for {} s", self.idle.as_secs()),
            )
        })?;
        let elapsed = self.started.elapsed();
        if elapsed > self.grace && (self.bytes as f64) < self.min_bytes_per_second as f64 * elapsed.as_secs_f64() {
            return Err(ApiError::new(
                Refusal::TooSlow,
                format!(
                    "the upload came in at {:.0} bytes/s, slower than the {} bytes/s the platform accepts",
                    self.bytes as f64 / elapsed.as_secs_f64(),
                    self.min_bytes_per_second
                ),
            ));
        }
        Ok(part)
    }

    fn received(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }
}

/// The answer to an accepted upload.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    file_id: &'a str,
    tenant: &'a TenantId,
    file_name: &'a str,
    file_type: &'a FileType,
    size: u64,
    status: &'static str,
    status_url: &'a str,
}

/// The file type: `?type=`, else the name's extension; it must be one the tenant may send.
fn file_type(name: &str, explicit: Option<&String>, tenant: &Tenant) -> Result<FileType, ApiError> {
    let given = match explicit {
        Some(t) => t.to_ascii_lowercase(),
        None => match name.rsplit_once('.') {
            Some((_, extension)) => extension.to_ascii_lowercase(),
            None if name.is_empty() => {
                return Err(ApiError::bad_request(
                    "name the file (?name=readings.csv, or a multipart filename) or give ?type=, so its type is known",
                ));
            }
            None => String::new(),
        },
    };
    given
        .parse::<FileType>()
        .ok()
        .filter(|t| tenant.allows(t))
        .ok_or_else(|| ApiError::new(Refusal::Forbidden, TYPE_NOT_ALLOWED))
}

/// An upload being received, with the tenant's limits.
struct Receiving {
    max_file_size: u64,
    reservation: UploadReservation,
    incoming: IncomingFile,
}

impl Receiving {
    /// Checks what can be checked before reading, holds a place among the tenant's files, and
    /// opens the staging file.
    async fn start(
        state: &ApiState,
        tenant_id: &TenantId,
        tenant: &Tenant,
        file_type: &FileType,
        declared_size: Option<u64>,
    ) -> Result<Self, ApiError> {
        if let Some(size) = declared_size.filter(|&s| s > tenant.max_file_size) {
            return Err(too_large(size, tenant.max_file_size));
        }
        let mut reservation = state
            .tracker
            .try_reserve(tenant_id, tenant.max_files_number)
            .ok_or_else(|| {
                ApiError::new(Refusal::TooManyFiles, TOO_MANY_FILES).retry_after(std::time::Duration::from_secs(10))
            })?;
        let storage = TenantStorage::of(tenant_id, tenant);
        if let Err(over) = state.usage.check_quota(&storage, tenant.max_memory_size).await? {
            log::info!("upload refused: {over}");
            return Err(ApiError::new(Refusal::OverQuota, NO_SPACE).retry_after(QUOTA_RETRY_AFTER));
        }
        let (staging, tenant_id_owned, file_type_owned) = (
            std::sync::Arc::clone(&state.staging),
            tenant_id.clone(),
            file_type.clone(),
        );
        let incoming = tokio::task::spawn_blocking(move || staging.begin(&tenant_id_owned, &file_type_owned))
            .await
            .map_err(|e| ApiError::internal(format!("staging the file failed: {e}")))??;
        reservation.bind(incoming.id);
        Ok(Receiving {
            max_file_size: tenant.max_file_size,
            reservation,
            incoming,
        })
    }

    /// Takes a chunk of the body, or stops the upload at the size limit.
    async fn chunk(&mut self, data: &[u8]) -> Result<(), ApiError> {
        let size = self.incoming.written() + data.len() as u64;
        if size > self.max_file_size {
            return Err(too_large(size, self.max_file_size));
        }
        self.incoming.write(data).await?;
        Ok(())
    }
}
