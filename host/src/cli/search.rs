//! `chiral search WORD`: keyword lookup on the Chiral DHT.

use std::process::ExitCode;

use anyhow::Result;
use indicatif::HumanBytes;
use serde_json::json;

use super::{
    args::{Global, SearchArgs},
    setup::{build_host, settings},
};

pub(crate) async fn run(g: &Global, a: SearchArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, false)?;
    let answer = host.command(Some(&a.via), "", "search", &[("word".to_string(), a.word.clone())]).await?;
    if a.json {
        println!("{}", json!({ "ok": true, "search": answer }));
        return Ok(ExitCode::SUCCESS);
    }
    let results = answer.get("results").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    for r in &results {
        let id = r.get("id").and_then(|v| v.as_str()).unwrap_or("?");
        let name = r.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let size = r.get("size").and_then(|v| v.as_u64()).map(|n| HumanBytes(n).to_string()).unwrap_or_default();
        // Ids and names come from the network: shown, never obeyed (escapes, tabs, new lines).
        println!("{}\t{}\t{size}", chiral_sdk::text::line(id), chiral_sdk::text::line(name));
    }
    if results.is_empty() && !g.quiet {
        eprintln!("no content found for {:?}", a.word);
    }
    Ok(ExitCode::SUCCESS)
}
