//! The tandem daemon's library: configuration, the admin client, and the runtime.

pub mod admin_client;
pub mod config;
