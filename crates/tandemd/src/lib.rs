//! The tandem daemon's library: the admin server, the peer
//! transport, the unit supervisor and SDK endpoint, the event log, and the event loop that
//! drives a `tandem_node::Node`. The binary (`main.rs`) only parses arguments, sets up
//! logging and signals, and calls [`runtime::run`].

pub mod admin;
pub mod event;
pub mod event_log;
pub mod ingress;
pub mod log_writer;
pub mod mailbox;
pub mod replicas;
pub mod runtime;
pub mod sdk_server;
pub mod status;
pub mod supervisor;
pub mod transport;

/// The cluster configuration, shared with `tandemctl` through `tandem-admin`.
pub use tandem_admin::config;
