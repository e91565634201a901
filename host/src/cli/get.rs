//! `chiral get ID...`: one download from every identifier given; `--seed` serves it after.

use std::{collections::BTreeSet, process::ExitCode, sync::Arc};

use anyhow::Result;
use chiral_host::session::GetRequest;
use serde_json::json;

use super::{
    args::{GetArgs, Global},
    exit::Exit,
    fetch::{download, parse_sha256, summary_line},
    serve::{serve, Served},
    setup::{build_host, payments, settings},
};

pub(crate) async fn run(g: &Global, a: GetArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let sha256 = a.sha256.as_deref().map(parse_sha256).transpose()?;
    let host = Arc::new(build_host(g, &s, false)?);
    let paying = payments(&s)?;
    let req = GetRequest {
        identifiers: a.ids.clone(),
        out_dir: a.out_dir.clone(),
        backend: a.backend.clone(),
        connections: a.connections.unwrap_or(s.connections),
        sha256,
        files: a.files.as_deref().map(chiral_sdk::select::FileSelection::parse).transpose()?,
        sequential: a.sequential,
        ..Default::default()
    };
    let Some(report) = download(&host, req, g.quiet || a.json).await? else {
        eprintln!("chiral: interrupted; run the same command again to resume");
        return Ok(Exit::Interrupted.into());
    };
    // What this download owes is paid before the exit (bounded by settle_timeout; the debt
    // stays owed when the chain does not answer, and the download still succeeded).
    if let Some(p) = &paying {
        p.settle_before_exit().await;
    }
    if a.json {
        println!("{}", serde_json::to_string(&json!({ "ok": true, "download": report }))?);
    } else {
        for f in &report.files {
            println!("{}", f.display());
        }
    }
    if !g.quiet {
        eprintln!("{}", summary_line(&report));
    }
    if a.seed {
        let via: Vec<String> =
            report.sources.iter().map(|s| s.plugin.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let Some(path) = report.files.first() else { return Ok(ExitCode::SUCCESS) };
        let seeds = host.seed(path, &via, &[]).await?;
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).to_string_lossy().into_owned();
        serve(host, &s.data_dir, vec![Served { path, via, options: Vec::new(), lines: seeds }], false).await;
    }
    Ok(ExitCode::SUCCESS)
}
