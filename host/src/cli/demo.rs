//! `chiral demo`: seed a generated file on loopback through every seeding plugin and download
//! it from all of them, with progress.

use std::{io::Write as _, path::Path, process::ExitCode};

use anyhow::Result;
use chiral_host::session::GetRequest;
use indicatif::HumanBytes;
use serde_json::json;

use super::{
    args::{DemoArgs, Global},
    exit::Exit,
    fetch::{download, summary_line},
    setup::{build_host, settings},
    shown,
};

pub(crate) async fn run(g: &Global, a: DemoArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let host = build_host(g, &s, true)?;
    let dir = s.data_dir.join("demo");
    let src_dir = dir.join("seed");
    let out_dir = dir.join("download");
    std::fs::create_dir_all(&src_dir)?;
    let _ = std::fs::remove_dir_all(&out_dir);
    let file = src_dir.join(format!("chiral-demo-{}M.bin", a.size));
    let size = a.size << 20;
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(size) {
        eprintln!("generating {} of test data in {}", HumanBytes(size), file.display());
        generate(&file, size)?;
    }
    let want = chiral_host::session::sha256_file(&file)?;
    let seeds = host.seed(&file, &[], &[]).await?;
    let mut ids = Vec::new();
    for s in &seeds {
        for id in &s.identifiers {
            eprintln!("seeding through {:<10} {}", s.plugin, shown(id));
            ids.push(id.clone());
        }
    }
    let req = GetRequest {
        identifiers: ids,
        out_dir: out_dir.clone(),
        backend: None,
        connections: s.connections,
        sha256: Some(want),
        ..Default::default()
    };
    let report = download(&host, req, g.quiet || a.json).await?;
    for s in &seeds {
        let _ = host.stop_seed(&s.plugin, &s.id);
    }
    let Some(report) = report else {
        eprintln!("chiral: interrupted");
        return Ok(Exit::Interrupted.into());
    };
    if a.json {
        println!("{}", serde_json::to_string(&json!({ "ok": true, "download": report }))?);
    } else {
        println!("{}", summary_line(&report));
        for src in &report.sources {
            println!("  {:<10} {:<50} {:>10}", src.plugin, src.label, HumanBytes(src.bytes).to_string());
        }
        println!("verified: sha256 {} matches the seeded file", hex::encode(want));
    }
    Ok(ExitCode::SUCCESS)
}

/// Fills `path` with `size` bytes of fast pseudo-random data (xorshift; content only needs to
/// be incompressible and reproducible, not secret).
fn generate(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}
