//! What `tandemctl`, the benchmark and the end-to-end tests share with `tandemd`, without
//! linking the daemon:
//!
//! - [`config`]: the cluster configuration (one TOML file for every daemon and for
//!   `tandemctl`), checked with file, line and key in every error;
//! - [`client`]: the blocking client of a daemon's admin endpoint;
//! - [`status_view`]: the status filters (`--shard GLOB`, `--service`), what makes a shard
//!   healthy, and the counts of a summary.

pub mod client;
pub mod config;
pub mod status_view;
