//! # chiral-host
//!
//! The host library behind the `chiral` command, for anyone building their own host binary:
//! - [`registry`]: plugin discovery (search path, first wins), loading ([`loader`]) and dispatch
//!   of identifiers by scheme/suffix with priorities and user overrides;
//! - [`session`]: downloads over one or more sources through the SDK's multi-source engine,
//!   whole downloads by a plugin, and seeding;
//! - [`config`]: the TOML config file and default directories;
//! - [`daemon`]: the long-lived node of `chiral daemon`, its HTTP API and web page;
//! - [`lifecycle`]: seeds listed, stopped and forgotten across processes, through each serving
//!   process's [`control`] socket and the [`seedbook`] (`seeds.json`).

pub mod config;
pub mod control;
pub mod daemon;
pub mod lifecycle;
pub mod loader;
pub mod payments;
pub mod registry;
pub mod seedbook;
pub mod session;

pub use chiral_sdk::engine;
pub use registry::Registry;
pub use session::Host;
