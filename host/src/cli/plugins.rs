//! `chiral plugins`: what was found, loaded and skipped (with why), and which plugin wins each
//! scheme.

use std::{io::Write as _, process::ExitCode};

use anyhow::Result;
use serde_json::json;

use super::{
    args::{Global, PluginsArgs},
    setup::{build_host, settings},
};

pub(crate) async fn run(g: &Global, a: PluginsArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let reg = &host.registry;
    let rows = reg.describe();
    let winners = reg.scheme_winners();
    if a.json {
        let proxy = s.proxy.as_ref().map(ToString::to_string);
        println!("{}", serde_json::to_string_pretty(&json!({ "plugins": rows, "schemes": winners, "proxy": proxy }))?);
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
    writeln!(out)?;
    match &s.proxy {
        // The password never shows.
        Some(p) => writeln!(out, "proxy: {p} (every outgoing connection; no DHT, no UDP trackers)")?,
        None => writeln!(out, "proxy: none (direct connections)")?,
    }
    Ok(ExitCode::SUCCESS)
}
