//! The lab plugin, version 2. The code is shared with the other version.
const LAB_VERSION: &str = "v2";
const LAB_VARIANT: &str = "plain";
include!("../../lab_plugin.rs");
