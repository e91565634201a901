//! `chiral plugins`: what was found, loaded and skipped (with why), and which plugin wins each
//! scheme.

use std::{io::Write as _, process::ExitCode};

use anyhow::Result;
use chiral_host::registry::{Registry, Status};
use serde_json::json;

use super::{
    args::{Global, PluginsArgs},
    setup::{build_host, settings},
};

pub(crate) async fn run(g: &Global, a: PluginsArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let reg = &host.registry;
    let rows: Vec<serde_json::Value> = reg
        .entries()
        .iter()
        .map(|e| {
            let d = e.descriptor.as_ref();
            let (status, reason) = match &e.status {
                Status::Loaded => ("loaded", None),
                Status::Skipped(r) => ("skipped", Some(r.clone())),
            };
            json!({
                "name": d.map(|d| d.name.to_string()),
                "version": d.map(|d| d.version.to_string()),
                "sdk_version": e.sdk_version,
                "schemes": d.map(|d| d.schemes.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "suffixes": d.map(|d| d.suffixes.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "capabilities": d.map(|d| Registry::capability_names(d.capabilities)).unwrap_or_default(),
                "priority": d.map(|d| d.priority),
                "description": d.map(|d| d.description.to_string()),
                "file": e.path.display().to_string(),
                "status": status,
                "reason": reason,
            })
        })
        .collect();
    let winners = reg.scheme_winners();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "plugins": rows, "schemes": winners }))?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(out, "no plugin files found; searched the --plugin-path, CHIRAL_PLUGIN_PATH, the executable's folder and <data dir>/plugins")?;
    }
    writeln!(out, "{:<12} {:<8} {:<6} {:<22} {:<8} FILE", "NAME", "VERSION", "SDK", "SCHEMES", "STATUS")?;
    for r in &rows {
        let mut claims: Vec<String> =
            r["schemes"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(str::to_string).collect();
        claims
            .extend(r["suffixes"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(|s| format!("*{s}")));
        writeln!(
            out,
            "{:<12} {:<8} {:<6} {:<22} {:<8} {}",
            r["name"].as_str().unwrap_or("-"),
            r["version"].as_str().unwrap_or("-"),
            r["sdk_version"].as_str().unwrap_or("-"),
            if claims.is_empty() { "-".to_string() } else { claims.join(",") },
            r["status"].as_str().unwrap_or("-"),
            r["file"].as_str().unwrap_or("-"),
        )?;
        if let Some(reason) = r["reason"].as_str() {
            writeln!(out, "  skipped: {reason}")?;
        }
    }
    if !winners.is_empty() {
        writeln!(out)?;
        for (scheme, plugin) in &winners {
            writeln!(out, "{scheme:<12} -> {plugin}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
