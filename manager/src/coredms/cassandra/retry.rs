//! Driver errors as [`StoreError`]s a caller can act on, and retries with exponential backoff
//! and jitter for the transient ones (timeouts, too few replicas, overload, lost connections).
//! Schema and invalid-request errors are never retried: the same request would fail again.

use std::future::Future;
use std::time::Duration;

use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};

use super::Shared;
use crate::coredms::{StoreError, StoreErrorKind};
use crate::tenants::TenantId;

/// The first backoff; each retry doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What was being done, for error messages: `cassandra, tenant t, table x: writing rows failed`.
#[derive(Debug, Clone)]
pub(super) struct Context {
    tenant: TenantId,
    what: &'static str,
    on: Option<String>,
}

impl Context {
    pub(super) fn new(tenant: &TenantId, what: &'static str) -> Self {
        Context {
            tenant: tenant.clone(),
            what,
            on: None,
        }
    }

    /// The keyspace or table concerned.
    pub(super) fn on(mut self, name: &str) -> Self {
        self.on = Some(name.to_string());
        self
    }

    /// An error of `kind` with this context and `why`.
    pub(super) fn error(&self, kind: StoreErrorKind, why: impl std::fmt::Display) -> StoreError {
        let on = self.on.as_deref().map(|n| format!(", {n}")).unwrap_or_default();
        StoreError::new(
            kind,
            format!("cassandra, tenant {}{on}: {} failed: {why}", self.tenant, self.what),
        )
    }

    /// A driver error, classified.
    pub(super) fn driver_error(&self, error: &ExecutionError, attempts: u32) -> StoreError {
        let tries = if attempts > 1 {
            format!(" (after {attempts} attempts)")
        } else {
            String::new()
        };
        self.error(kind_of(error), format_args!("{error}{tries}"))
    }
}

/// The kind of a driver error.
pub(super) fn kind_of(error: &ExecutionError) -> StoreErrorKind {
    match error {
        ExecutionError::RequestTimeout(_) | ExecutionError::SchemaAgreementError(_) => StoreErrorKind::Timeout,
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) | ExecutionError::MetadataError(_) => {
            StoreErrorKind::Unavailable
        }
        ExecutionError::BadQuery(_) => StoreErrorKind::Schema,
        ExecutionError::PrepareError(PrepareError::ConnectionPoolError(_)) => StoreErrorKind::Unavailable,
        ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt }) => attempt_kind(first_attempt),
        ExecutionError::LastAttemptError(attempt) => attempt_kind(attempt),
        _ => StoreErrorKind::Internal,
    }
}

fn attempt_kind(error: &RequestAttemptError) -> StoreErrorKind {
    match error {
        RequestAttemptError::DbError(db, _) => db_kind(db),
        RequestAttemptError::BrokenConnectionError(_) | RequestAttemptError::UnableToAllocStreamId => {
            StoreErrorKind::Unavailable
        }
        RequestAttemptError::SerializationError(_) => StoreErrorKind::Schema,
        _ => StoreErrorKind::Internal,
    }
}

fn db_kind(error: &DbError) -> StoreErrorKind {
    match error {
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => StoreErrorKind::Timeout,
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::RateLimitReached { .. } => StoreErrorKind::Unavailable,
        DbError::Invalid | DbError::AlreadyExists { .. } => StoreErrorKind::Schema,
        _ => StoreErrorKind::Internal,
    }
}

/// Whether a replica answered a read with a failure (not a timeout): its local read threw.
pub(super) fn is_read_failure(error: &ExecutionError) -> bool {
    let attempt = match error {
        ExecutionError::LastAttemptError(attempt) => attempt,
        _ => return false,
    };
    matches!(attempt, RequestAttemptError::DbError(DbError::ReadFailure { .. }, _))
}

/// Whether the same request may succeed later.
pub(super) fn is_transient(error: &ExecutionError) -> bool {
    matches!(kind_of(error), StoreErrorKind::Timeout | StoreErrorKind::Unavailable)
}

/// Runs `attempt` until it succeeds, fails with an error `retry_on` rejects, or has been
/// retried `max_retries` times; sleeps with exponential backoff and jitter in between.
/// Returns the last error and the number of attempts made.
pub(super) async fn retrying<T, F, Fut>(
    max_retries: u32,
    retry_on: impl Fn(&ExecutionError) -> bool,
    mut attempt: F,
) -> Result<T, (ExecutionError, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ExecutionError>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if attempts <= max_retries && retry_on(&error) => {
                let delay = backoff(attempts);
                log::debug!("cassandra: attempt {attempts} failed, retrying in {delay:?}: {error}");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err((error, attempts)),
        }
    }
}

/// Runs `attempt` with the configured retries on transient errors; a final error gets `context`.
pub(super) async fn with_retries<T, F, Fut>(shared: &Shared, context: &Context, attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ExecutionError>>,
{
    retrying(shared.config.max_retries, is_transient, attempt)
        .await
        .map_err(|(error, attempts)| context.driver_error(&error, attempts))
}

/// Runs a schema change (`CREATE ... IF NOT EXISTS`, so a retry is harmless); the driver waits
/// for schema agreement before it returns.
pub(super) async fn schema_change(shared: &Shared, context: &Context, statement: &str) -> Result<(), StoreError> {
    with_retries(shared, context, || shared.session.query_unpaged(statement, &[]))
        .await
        .map(|_| ())
}

/// The delay before retry `attempt` (1-based): 100 ms, 200 ms, 400 ms... up to 5 s, times a
/// random factor in [0.5, 1.5) so that many writers do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let random = getrandom::u64().unwrap_or(u64::MAX / 2);
    let factor = 0.5 + (random >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=20 {
            let base = FIRST_BACKOFF
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            let delay = backoff(attempt);
            assert!(delay >= base / 2 && delay < base.mul_f64(1.5), "{attempt}: {delay:?}");
        }
    }

    #[test]
    fn timeouts_and_overload_are_retried_but_invalid_requests_are_not() {
        let db = |e: DbError| ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "x".into()));
        assert_eq!(
            kind_of(&ExecutionError::RequestTimeout(Duration::from_secs(1))),
            StoreErrorKind::Timeout
        );
        assert_eq!(kind_of(&db(DbError::Overloaded)), StoreErrorKind::Unavailable);
        assert_eq!(kind_of(&db(DbError::Invalid)), StoreErrorKind::Schema);
        assert_eq!(kind_of(&db(DbError::ServerError)), StoreErrorKind::Internal);
        assert!(is_transient(&db(DbError::Overloaded)));
        assert!(!is_transient(&db(DbError::Invalid)));
    }

    #[tokio::test]
    async fn retrying_gives_up_after_max_retries_with_the_attempt_count() {
        let mut calls = 0;
        let result: Result<(), _> = retrying(2, is_transient, || {
            calls += 1;
            async { Err(ExecutionError::RequestTimeout(Duration::from_secs(1))) }
        })
        .await;
        assert_eq!(result.unwrap_err().1, 3);
        assert_eq!(calls, 3);
    }
}
