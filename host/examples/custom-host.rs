//! A host binary of one's own, built on `chiral-host` alone: it finds the plugins on the usual
//! search path (`CHIRAL_PLUGIN_PATH`, the folder of the binary, the data dir's `plugins/`),
//! routes the identifier to the plugin that claims it, and downloads through the SDK's
//! multi-source engine.
//!
//! ```text
//! cargo build --release -p chiral-host --example custom-host
//! custom-host IDENTIFIER OUT_DIR
//! ```

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use chiral_host::{
    config::default_data_dir,
    registry::search_dirs,
    session::{log_event, GetRequest},
    Host, Registry,
};
use chiral_sdk::abi::HostConfig;

#[tokio::main]
async fn main() -> ExitCode {
    chiral_host::tune_allocator();
    chiral_host::raise_open_files_limit();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custom-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(identifier), Some(out_dir), None) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: custom-host IDENTIFIER OUT_DIR");
    };
    let data_dir = default_data_dir();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("data dir {}", data_dir.display()))?;
    let config = HostConfig {
        data_dir: data_dir.to_string_lossy().into_owned().into(),
        listen_addr: "127.0.0.1".into(),
        listen_port: 0,
        advertise_host: Default::default(),
        connections: 8,
        proxy: None.into(),
        bootstrap: Default::default(),
        no_dht: true,
        options: Default::default(),
    };
    let env = std::env::var("CHIRAL_PLUGIN_PATH").ok();
    let exe = std::env::current_exe().ok();
    let dirs = search_dirs(&[], env.as_deref(), exe.as_deref(), &data_dir);
    let registry =
        Registry::discover(&dirs, config, BTreeMap::new(), BTreeMap::new(), Arc::new(|p, e| log_event(p, &e)));
    for e in registry.entries().iter().filter(|e| !e.is_loaded()) {
        eprintln!("custom-host: skipped {}", e.path.display());
    }
    let host = Host::new(registry);
    let request = GetRequest {
        identifiers: vec![identifier],
        out_dir: PathBuf::from(out_dir),
        backend: None,
        connections: 8,
        sha256: None,
        ..Default::default()
    };
    let report = host.get(&request, Arc::new(|_| {})).await?;
    for f in &report.files {
        println!("{}", f.display());
    }
    eprintln!(
        "custom-host: {} ({} bytes) in {:.2} s{}",
        report.name,
        report.bytes,
        report.seconds,
        if report.verified { ", every piece verified" } else { "" }
    );
    Ok(())
}
