//! `chiral node`: a long-lived Chiral network node; prints its multiaddrs, runs until
//! SIGINT/SIGTERM.

use std::{io::Write as _, process::ExitCode};

use anyhow::Result;
use serde_json::json;

use super::{
    args::{Global, NodeArgs},
    setup::{build_host, settings},
    shutdown_signal,
};

pub(crate) async fn run(g: &Global, a: NodeArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let answer = host.command(Some(&a.via), "", "node", &[]).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", json!({ "ok": true, "node": answer }))?;
    } else {
        for addr in answer.get("addrs").and_then(|v| v.as_array()).into_iter().flatten() {
            if let Some(addr) = addr.as_str() {
                writeln!(out, "{addr}")?;
            }
        }
    }
    out.flush()?;
    drop(out);
    if let Some(id) = answer.get("peer_id").and_then(|v| v.as_str()) {
        eprintln!("node {id} running (Ctrl-C to stop)");
    }
    shutdown_signal().await;
    Ok(ExitCode::SUCCESS)
}
