//! The lab stream plugin, version 2. The code is shared with the other version.
const LAB_VERSION: &str = "v2";
include!("../../lab_stream.rs");
