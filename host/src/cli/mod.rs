//! Pieces of the `chiral` binary: one module per command (each with a `run` taking the global
//! options and its own arguments), what they share (settings and the host, downloads, serving
//! seeds) and the exit codes.

pub(crate) mod args;
pub(crate) mod exit;
pub(crate) mod progress;

mod fetch;
mod serve;
mod setup;

pub(crate) mod create;
pub(crate) mod daemon;
pub(crate) mod demo;
pub(crate) mod get;
pub(crate) mod node;
pub(crate) mod payments;
pub(crate) mod plugins;
pub(crate) mod remove;
pub(crate) mod search;
pub(crate) mod seed;
pub(crate) mod seeds;
pub(crate) mod stop;
pub(crate) mod wallet;

/// Resolves after SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// A path or identifier as printed for people: control characters (escapes, new lines, tabs)
/// shown escaped, so a file name cannot drive the terminal or forge a line or a column.
fn shown(s: &str) -> String {
    chiral_sdk::text::for_terminal(s, 4096)
}
