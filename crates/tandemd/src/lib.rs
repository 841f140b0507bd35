//! The tandem daemon's library: configuration, the admin client and server, the peer
//! transport and the event loop. The binary (`main.rs`) only parses arguments, sets up
//! logging and signals, and calls [`runtime::run`].

pub mod admin;
pub mod admin_client;
pub mod config;
pub mod runtime;
pub mod transport;
