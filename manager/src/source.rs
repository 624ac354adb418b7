//! Where rows come from: a staged file, or a range of a stream partition. The ingestion path,
//! the reports and the rejected-rows logs name their source with these.

use serde::{Deserialize, Serialize};

/// A staged file's id: its receive time in nanoseconds since the epoch, as text in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileId(pub u64);

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for FileId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(FileId)
    }
}

/// What a piece of ingestion works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A staged file.
    File(FileId),
    /// Messages `first..=last` of one partition of the tenant's topic.
    Stream {
        /// The partition.
        partition: u32,
        /// The first offset.
        first: u64,
        /// The last offset.
        last: u64,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(id) => write!(f, "file {id}"),
            Source::Stream { partition, first, last } => write!(f, "partition {partition} offsets {first}..={last}"),
        }
    }
}
