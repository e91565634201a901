//! `chiral seeds`: every seed started with this data dir, running ones asked live.

use std::{io::Write as _, process::ExitCode};

use anyhow::Result;
use chiral_host::{lifecycle, seedbook::SeedState};
use indicatif::HumanBytes;
use serde_json::json;

use super::{
    args::{Global, SeedsArgs},
    setup::settings,
    shown,
};

pub(crate) async fn run(g: &Global, a: SeedsArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let rows = lifecycle::list(&s.data_dir).await;
    if a.json {
        println!("{}", json!({ "ok": true, "seeds": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for r in &rows {
        let state = match r.state {
            SeedState::Running => "running",
            SeedState::Stopped => "stopped",
        };
        let served = r.bytes_served.map_or_else(|| "-".to_string(), |b| HumanBytes(b).to_string());
        writeln!(out, "{state}\t{}\t{}\t{}\t{served}", r.plugin, shown(&r.path), shown(&r.identifiers.join(" ")))?;
    }
    if rows.is_empty() && !g.quiet {
        eprintln!("no seeds; start one with `chiral seed PATH`");
    }
    Ok(ExitCode::SUCCESS)
}
