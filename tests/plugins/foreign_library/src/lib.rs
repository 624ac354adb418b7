//! A shared library that is not a mysimbdp plugin: the host must refuse it with a reason.

/// Something to export.
#[unsafe(no_mangle)]
pub extern "C" fn foreign_answer() -> i32 {
    42
}
