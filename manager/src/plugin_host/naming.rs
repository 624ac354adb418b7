//! Plugin file names: `libclientbatchingestapp_<tenant>_<filetype>.so` and
//! `libclientstreamingestapp_<tenant>.so`.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::tenants::{FileType, TenantId};

/// Batch or stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// `clientbatchingestapp`.
    Batch,
    /// `clientstreamingestapp`.
    Stream,
}

impl From<plugin_api::PluginKind> for PluginKind {
    fn from(kind: plugin_api::PluginKind) -> Self {
        match kind {
            plugin_api::PluginKind::Batch => PluginKind::Batch,
            plugin_api::PluginKind::Stream => PluginKind::Stream,
        }
    }
}

/// Which plugin a file is: a tenant's batch plugin for one file type, or its stream plugin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PluginId {
    /// The tenant.
    pub tenant: TenantId,
    /// Batch or stream.
    pub kind: PluginKind,
    /// The file type (batch plugins only).
    pub file_type: Option<FileType>,
}

impl PluginId {
    /// A tenant's batch plugin for `file_type`.
    pub fn batch(tenant: TenantId, file_type: FileType) -> Self {
        PluginId {
            tenant,
            kind: PluginKind::Batch,
            file_type: Some(file_type),
        }
    }

    /// A tenant's stream plugin.
    pub fn stream(tenant: TenantId) -> Self {
        PluginId {
            tenant,
            kind: PluginKind::Stream,
            file_type: None,
        }
    }

    /// The file name the platform looks for.
    pub fn file_name(&self) -> String {
        match &self.file_type {
            Some(t) => format!("libclientbatchingestapp_{}_{t}.so", self.tenant),
            None => format!("libclientstreamingestapp_{}.so", self.tenant),
        }
    }

    /// Parses a plugin file name (no folder). `Err` says why it is not one.
    pub fn from_file_name(name: &str) -> Result<Self, String> {
        let stem = name
            .strip_prefix("lib")
            .and_then(|s| s.strip_suffix(".so"))
            .ok_or_else(|| format!("{name:?} is not named lib<...>.so"))?;
        if let Some(rest) = stem.strip_prefix("clientbatchingestapp_") {
            let (tenant, file_type) = rest
                .rsplit_once('_')
                .ok_or_else(|| format!("{name:?}: expected libclientbatchingestapp_<tenant>_<filetype>.so"))?;
            Ok(PluginId::batch(tenant.parse()?, file_type.parse()?))
        } else if let Some(tenant) = stem.strip_prefix("clientstreamingestapp_") {
            Ok(PluginId::stream(tenant.parse()?))
        } else {
            Err(format!(
                "{name:?}: expected libclientbatchingestapp_<tenant>_<filetype>.so or libclientstreamingestapp_<tenant>.so"
            ))
        }
    }

    /// Parses the file name of a path.
    pub fn from_path(path: &Path) -> Result<Self, String> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{} has no file name", path.display()))?;
        Self::from_file_name(name)
    }
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file_type {
            Some(t) => write!(f, "clientbatchingestapp_{}_{t}", self.tenant),
            None => write!(f, "clientstreamingestapp_{}", self.tenant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "libclientbatchingestapp_client1_csv.so",
            "libclientstreamingestapp_client2.so",
            "libclientbatchingestapp_big_co_2_json.so",
        ] {
            assert_eq!(PluginId::from_file_name(name).unwrap().file_name(), name);
        }
        let id = PluginId::from_file_name("libclientbatchingestapp_big_co_2_json.so").unwrap();
        assert_eq!(id.tenant.as_str(), "big_co_2");
        assert_eq!(id.file_type.unwrap().as_str(), "json");
    }

    #[test]
    fn other_names_are_refused_with_the_expected_pattern() {
        for name in [
            "libfoo.so",
            "clientbatchingestapp_a_csv.so",
            "libclientbatchingestapp_a.so",
            "libclientbatchingestapp_A_csv.so",
            "libclientstreamingestapp_.so",
            "libclientbatchingestapp_a_csv.so.1",
        ] {
            assert!(PluginId::from_file_name(name).is_err(), "{name}");
        }
    }
}
