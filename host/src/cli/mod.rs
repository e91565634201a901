//! Pieces of the `chiral` binary: one module per command (each with a `run` taking the global
//! options and its own arguments), what they share (settings and the host, downloads, serving
//! seeds) and the exit codes.

pub mod args;
pub mod exit;
pub mod progress;

mod fetch;
mod serve;
mod setup;

pub mod create;
pub mod demo;
pub mod get;
pub mod node;
pub mod plugins;
pub mod remove;
pub mod search;
pub mod seed;
pub mod seeds;
pub mod stop;

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
