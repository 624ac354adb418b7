//! The lab plugin, version 3.0.0: it adds a nullable column (schema evolution). The code is shared with the other versions.
const LAB_VERSION: &str = "v3";
const LAB_VARIANT: &str = "note";
include!("../../lab_plugin.rs");
