//! What every command starts from: settings from flags, environment and the config file, and
//! the host with its plugins found.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use anyhow::{Context as _, Result};
use chiral_host::{
    config::{default_data_dir, ConfigFile},
    payments::{wallet_text, PaymentService, PaymentsConfig},
    registry::{search_dirs, Registry},
    session::log_event,
    Host,
};
use chiral_sdk::{abi_stable::std_types::Tuple2, HostConfig};

use super::args::Global;

const DEFAULT_CONNECTIONS: u32 = 8;

/// Settings from flags, environment and the config file.
pub(super) struct Settings {
    pub config: ConfigFile,
    pub data_dir: PathBuf,
    pub connections: u32,
    /// The proxy every plugin goes through (`--proxy`, else the config's `proxy`).
    pub proxy: Option<chiral_sdk::net::Proxy>,
    /// Bytes per second (`--max-download-rate`, else the config's); `None`: unlimited.
    pub download_rate: Option<u64>,
    pub upload_rate: Option<u64>,
}

pub(super) fn settings(g: &Global) -> Result<Settings> {
    let config = match &g.config {
        Some(p) => ConfigFile::load(p)?,
        None => match ConfigFile::default_path().filter(|p| p.is_file()) {
            Some(p) => ConfigFile::load(&p)?,
            None => ConfigFile::default(),
        },
    };
    let data_dir = g.data_dir.clone().or_else(|| config.data_dir.clone()).unwrap_or_else(default_data_dir);
    let connections = config.connections.unwrap_or(DEFAULT_CONNECTIONS);
    // A proxy that cannot be used is an error, never a reason to go out directly.
    let proxy = match g.proxy.as_deref().or(config.proxy.as_deref()).map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => Some(chiral_sdk::net::Proxy::parse(p).map_err(|e| anyhow::anyhow!("--proxy / config proxy: {e}"))?),
        None => None,
    };
    let rate = |flag: Option<u64>, key: &str| -> Result<Option<u64>> {
        Ok(match flag {
            Some(r) => Some(r),
            None => config.rate(key).map_err(|e| anyhow::anyhow!("config: {e}"))?,
        }
        .filter(|&r| r > 0))
    };
    let download_rate = rate(g.max_download_rate, "max_download_rate")?;
    let upload_rate = rate(g.max_upload_rate, "max_upload_rate")?;
    Ok(Settings { config, data_dir, connections, proxy, download_rate, upload_rate })
}

/// The host over every plugin on the search path; `loopback` keeps its servers on 127.0.0.1
/// with no public DHT (the demo).
pub(super) fn build_host(g: &Global, s: &Settings, loopback: bool) -> Result<Host> {
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("data dir {}", s.data_dir.display()))?;
    let c = &s.config;
    let listen = if loopback {
        "127.0.0.1".to_string()
    } else {
        g.listen.clone().or_else(|| c.listen.clone()).unwrap_or_else(|| "0.0.0.0".into())
    };
    let mut bootstrap = g.bootstrap.clone();
    bootstrap.extend(c.bootstrap.iter().cloned());
    let host_config = HostConfig {
        data_dir: s.data_dir.to_string_lossy().into_owned().into(),
        listen_addr: listen.into(),
        listen_port: g.port.or(c.port).unwrap_or(0),
        advertise_host: g.advertise.clone().or_else(|| c.advertise.clone()).unwrap_or_default().into(),
        connections: s.connections,
        proxy: s.proxy.as_ref().map(|p| p.url().into()).into(),
        bootstrap: bootstrap.into_iter().map(Into::into).collect(),
        // The demo stays on loopback: no public DHT.
        no_dht: loopback || g.no_dht || c.no_dht.unwrap_or(false),
        // Options every plugin gets (its `[plugins.<name>]` table comes after): the upload
        // rate, and our wallet, announced to peers (BEP 10 `chiral` message, Chiral records) so
        // they can be paid; a `wallet` in a plugin's own table comes after it and wins.
        options: s
            .upload_rate
            .map(|r| Tuple2("max_upload_rate".into(), r.to_string().into()))
            .into_iter()
            .chain(payments(s)?.and_then(|p| p.address()).map(|a| ("wallet".into(), wallet_text(&a).into()).into()))
            .collect(),
    };
    let mut explicit = g.plugin_path.clone();
    explicit.extend(c.plugin_path.iter().cloned());
    let env = std::env::var("CHIRAL_PLUGIN_PATH").ok();
    let exe = std::env::current_exe().ok();
    let dirs = search_dirs(&explicit, env.as_deref(), exe.as_deref(), &s.data_dir);
    let plugin_options: BTreeMap<String, Vec<(String, String)>> =
        c.plugins.keys().map(|k| (k.clone(), c.plugin_options(k))).collect();
    let paying = payments(s)?;
    let events = Arc::new(move |p: &str, e: chiral_sdk::Event| {
        log_event(p, &e);
        if let Some(pay) = &paying {
            pay.on_event(p, &e);
        }
    });
    let registry = Registry::discover(&dirs, host_config, c.backend.clone(), plugin_options, events);
    Ok(Host::new(registry).with_download_rate(s.download_rate))
}

/// The process's payment service (one ledger per data dir), opened on first use and started
/// (it pays what an earlier run left pending, and each wallet owed `threshold_wei`); unlocked
/// when `CHIRAL_WALLET_PASSPHRASE` is set. Must be called on the runtime.
pub(super) fn payments(s: &Settings) -> Result<Option<Arc<PaymentService>>> {
    static STARTED: std::sync::Once = std::sync::Once::new();
    let service = payment_ledger(s)?;
    if let Some(p) = &service {
        // Once per process, however many callers ask for the service.
        STARTED.call_once(|| p.start());
    }
    Ok(service)
}

/// The `[payments]` settings in force, with the process's proxy (the chain is reached through it).
pub(super) fn payments_config(s: &Settings) -> Result<PaymentsConfig> {
    let mut cfg = PaymentsConfig::from_file(&s.config.payments, &s.data_dir)?;
    cfg.proxy = s.proxy.as_ref().map(|p| p.url().to_string());
    Ok(cfg)
}

/// The same service, not started: for commands that only read the ledger (`chiral payments`,
/// `payments received`), which must not pay anything as a side effect of listing it.
pub(super) fn payment_ledger(s: &Settings) -> Result<Option<Arc<PaymentService>>> {
    static SERVICE: OnceLock<Arc<PaymentService>> = OnceLock::new();
    if let Some(p) = SERVICE.get() {
        return Ok(Some(p.clone()));
    }
    let service = PaymentService::open(payments_config(s)?)?;
    if service.address().is_some() {
        if let Some(pass) = std::env::var("CHIRAL_WALLET_PASSPHRASE").ok().filter(|p| !p.is_empty()) {
            if let Err(e) = service.unlock(&pass) {
                tracing::warn!("payments: {e}");
            }
        }
    }
    Ok(Some(SERVICE.get_or_init(|| service).clone()))
}
