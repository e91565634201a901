//! `chiral seed PATH` and `chiral seed --all`: start seeds (or serve the remembered ones again)
//! and serve until stopped.

use std::{path::Path, process::ExitCode, sync::Arc};

use anyhow::{bail, Context as _, Result};
use chiral_host::{
    lifecycle,
    seedbook::{SeedBook, SeedState},
};

use super::{
    args::{Global, SeedArgs},
    serve::{serve, Served},
    setup::{build_host, payments, settings, Settings},
};

pub(crate) async fn run(g: &Global, a: SeedArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let Some(path) = a.path.as_deref().filter(|_| !a.all) else { return seed_all(g, &s, a.json).await };
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() && !meta.is_dir() {
        bail!("{} is neither a file nor a folder", path.display());
    }
    let canonical = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let host = Arc::new(build_host(g, &s, false)?);
    let mut opts: Vec<(String, String)> = a.tracker.iter().map(|t| ("tracker".to_string(), t.clone())).collect();
    opts.extend(a.options.iter().cloned());
    let seeds = host.seed(&canonical, &a.via, &opts).await?;
    let served =
        Served { path: canonical.to_string_lossy().into_owned(), via: a.via.clone(), options: opts, lines: seeds };
    keep_fast_lane(&s, &host)?;
    serve(host, &s.data_dir, vec![served], a.json).await;
    Ok(ExitCode::SUCCESS)
}

/// With `[payments] fast_lane = "paid"`, the peers behind on payment lose the Chiral fast lane.
fn keep_fast_lane(s: &Settings, host: &Arc<chiral_host::Host>) -> Result<()> {
    if let Some(p) = payments(s)? {
        chiral_host::payments::spawn_fast_lane(p, host.clone());
    }
    Ok(())
}

/// `chiral seed --all`: every remembered seed that is not running, served again in this process.
async fn seed_all(g: &Global, s: &Settings, json: bool) -> Result<ExitCode> {
    let probe = lifecycle::probe(&s.data_dir).await;
    let records = SeedBook::new(&s.data_dir).load();
    if records.is_empty() {
        bail!("no remembered seed; start one with `chiral seed PATH`");
    }
    let idle: Vec<_> = records
        .into_iter()
        .filter(|r| !(r.state == SeedState::Running && r.pid.is_some_and(|p| probe.running(p))))
        .collect();
    if idle.is_empty() {
        bail!("every remembered seed is already running");
    }
    let host = Arc::new(build_host(g, s, false)?);
    let mut served = Vec::new();
    let mut errors = Vec::new();
    for r in idle {
        match host.seed(Path::new(&r.path), &r.via, &r.options).await {
            Ok(lines) => served.push(Served { path: r.path, via: r.via, options: r.options, lines }),
            Err(e) => errors.push(format!("{}: {e}", r.path)),
        }
    }
    if served.is_empty() {
        bail!("no remembered seed could be served again: {}", errors.join("; "));
    }
    for e in errors {
        tracing::warn!("not served again: {e}");
    }
    keep_fast_lane(s, &host)?;
    serve(host, &s.data_dir, served, json).await;
    Ok(ExitCode::SUCCESS)
}
