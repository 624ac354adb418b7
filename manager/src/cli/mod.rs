//! The command line's subcommands that are more than a call into the library.

pub mod http;
pub mod new_plugin;
pub mod plugin;
pub mod stats;
pub mod upload;
