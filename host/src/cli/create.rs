//! `chiral create PATH -o FILE.torrent`: make a torrent through the plugin that claims
//! `.torrent` files (or `--via`); prints its magnet link.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    args::{CreateArgs, Global},
    setup::{build_host, settings},
};

pub(crate) async fn run(g: &Global, a: CreateArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let path = std::fs::canonicalize(&a.path).with_context(|| format!("{}", a.path.display()))?;
    let mut args = vec![
        ("path".to_string(), path.to_string_lossy().into_owned()),
        ("output".to_string(), a.output.to_string_lossy().into_owned()),
        ("private".to_string(), a.private.to_string()),
    ];
    args.extend(a.tracker.iter().map(|t| ("tracker".to_string(), t.clone())));
    args.extend(a.web_seed.iter().map(|w| ("web_seed".to_string(), w.clone())));
    if let Some(p) = a.piece_size {
        args.push(("piece_size".to_string(), p.to_string()));
    }
    let answer = host.command(a.via.as_deref(), "x.torrent", "create", &args).await?;
    if a.json {
        println!("{}", serde_json::to_string(&json!({ "ok": true, "created": answer }))?);
    } else if let Some(m) = answer.get("magnet").and_then(|m| m.as_str()) {
        println!("{m}");
    }
    if !g.quiet {
        eprintln!("wrote {}", a.output.display());
    }
    Ok(ExitCode::SUCCESS)
}
