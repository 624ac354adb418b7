//! The lab plugin, version 4.0.0: it declares a column with another type (a change that cannot be applied). The code is shared with the other versions.
const LAB_VERSION: &str = "v4";
const LAB_VARIANT: &str = "text_number";
include!("../../lab_plugin.rs");
