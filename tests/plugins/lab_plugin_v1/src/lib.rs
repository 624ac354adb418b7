//! The lab plugin, version 1. The code is shared with the other version.
const LAB_VERSION: &str = "v1";
const LAB_VARIANT: &str = "plain";
include!("../../lab_plugin.rs");
