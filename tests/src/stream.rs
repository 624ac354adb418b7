//! Helpers of the near-realtime tests: messages to post, posting them the way a well-behaved
//! client does (honouring `Retry-After`), and waiting for the rows they become.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datagen::{Shape, Spec};

use crate::platform::{Backend, Client, Platform, TenantSpec};
use crate::wait_until;

/// The content type of newline-delimited JSON messages.
pub const NDJSON: &str = "application/x-ndjson";

/// The seed tenant client1 (CSV files; its stream plugin writes `readings`).
pub fn client1() -> TenantSpec {
    TenantSpec::new("client1", &["csv"])
}

/// `rows` client1 readings as NDJSON lines.
pub fn readings(rows: u64, seed: u64) -> Vec<String> {
    let text = String::from_utf8(Spec::rows(Shape::Client1JsonLines, rows).with_seed(seed).to_vec()).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Starts the platform and installs each tenant's stream plugin, waiting until it is loaded.
pub fn start_with_stream(backend: Backend, tenants: &[TenantSpec], extra: &str) -> Platform {
    let platform = Platform::start(backend, tenants, extra);
    for tenant in tenants {
        let name = format!("clientstreamingestapp_{}", tenant.name);
        platform.install_plugin(&name, &format!("lib{name}.so"));
        wait_for_stream_plugin(&platform, tenant);
    }
    platform
}

/// Waits until the tenant's stream plugin is loaded.
pub fn wait_for_stream_plugin(platform: &Platform, tenant: &TenantSpec) {
    let loaded = wait_until(Duration::from_secs(20), || {
        let (_, stats) = platform.get(&format!("/v1/tenants/{}/stats", tenant.name), &tenant.token());
        stats["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["kind"] == "stream" && p["version"].is_object()))
    });
    assert!(
        loaded,
        "the stream plugin of {} did not load: {}",
        tenant.name,
        platform.tail_log()
    );
}

/// Waits until the table holds `expected` rows, then checks it holds no more (no row twice).
pub fn wait_for_count(platform: &Platform, tenant: &TenantSpec, table: &str, expected: u64, timeout: Duration) {
    let mut count = 0;
    let reached = wait_until(timeout, || {
        count = platform.count_so_far(&tenant.name, &tenant.token(), table);
        count >= expected
    });
    assert!(
        reached,
        "{} rows of {expected} in {}.{table}; log:\n{}",
        count,
        tenant.name,
        platform.tail_log()
    );
    assert_eq!(count, expected, "no row twice");
}

/// Posts `lines` in requests of `per_request` lines, retrying each request until it is
/// acknowledged (202): a 429 or 503 must carry `Retry-After`, and no answer (the platform is
/// down) is retried. Returns the statuses seen.
pub fn post_all(
    client: &Client,
    tenant: &TenantSpec,
    lines: &[String],
    per_request: usize,
    pause: Duration,
) -> BTreeMap<u16, u64> {
    let mut statuses = BTreeMap::new();
    for chunk in lines.chunks(per_request) {
        std::thread::sleep(pause);
        let body = chunk.join("\n");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(Instant::now() < deadline, "a request was never acknowledged");
            match client.post_messages(&tenant.name, &tenant.token(), NDJSON, body.as_bytes()) {
                Ok((202, body, _)) => {
                    assert_eq!(body["accepted"], chunk.len());
                    *statuses.entry(202).or_default() += 1;
                    break;
                }
                Ok((status @ (429 | 503), body, retry_after)) => {
                    assert!(retry_after.is_some(), "{status} without Retry-After: {body}");
                    *statuses.entry(status).or_default() += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok((status, body, _)) => panic!("a post got {status}: {body}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    statuses
}

/// `rows` client2 invocation records as NDJSON lines.
pub fn invocations(rows: u64, seed: u64) -> Vec<String> {
    let text = String::from_utf8(Spec::rows(Shape::Client2JsonLines, rows).with_seed(seed).to_vec()).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// `keys` messages for the lab stream plugin, each one it sleeps `sleep_ms` on before it
/// writes row `key<i>` of `events`.
pub fn slow_messages(keys: std::ops::Range<u64>, sleep_ms: u64) -> Vec<String> {
    keys.map(|i| format!("\"SLEEP {sleep_ms} key{i},{i}\"")).collect()
}

/// The stream manager's decisions for `tenant`, oldest first
/// (`GET /v1/tenants/{t}/stream/decisions`).
pub fn decisions(platform: &Platform, tenant: &str, token: &str) -> Vec<serde_json::Value> {
    let (status, body) = platform.get(&format!("/v1/tenants/{tenant}/stream/decisions?limit=1000"), token);
    assert_eq!(status, 200, "{body}");
    body["decisions"].as_array().cloned().unwrap_or_default()
}
