//! Crash points for fault tests: with `MYSIMBDP_CRASH_POINT=<name>` in its environment the
//! process aborts when it reaches the point of that name, as a `kill -9` would, but at a moment
//! a test chooses (between two durable steps). Unset, a point costs one load of a cell.

use std::sync::OnceLock;

/// The variable that names the point.
pub const CRASH_POINT_VAR: &str = "MYSIMBDP_CRASH_POINT";

/// Aborts the process if `name` is the configured crash point.
pub fn crash_point(name: &str) {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    if POINT.get_or_init(|| std::env::var(CRASH_POINT_VAR).ok()).as_deref() == Some(name) {
        log::error!("crash point {name} reached: aborting ({CRASH_POINT_VAR})");
        std::process::abort();
    }
}
