//! # chiral-host
//!
//! The host library behind the `chiral` command, for anyone building their own host binary:
//! - [`registry`]: plugin discovery (search path, first wins), loading ([`loader`]) and dispatch
//!   of identifiers by scheme/suffix with priorities and user overrides;
//! - [`session`]: downloads over one or more sources through the SDK's multi-source engine,
//!   whole downloads by a plugin, and seeding;
//! - [`config`]: the TOML config file and default directories.

pub mod config;
pub mod loader;
pub mod registry;
pub mod session;

pub use chiral_sdk::engine;
pub use registry::Registry;
pub use session::Host;
