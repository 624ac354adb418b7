//! The lab stream plugin, version 1. The code is shared with the other version.
const LAB_VERSION: &str = "v1";
include!("../../lab_stream.rs");
