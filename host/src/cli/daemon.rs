//! `chiral daemon`: the node as a service (the host library's `daemon`), its API and page on
//! `--http` (loopback by default). The first stdout line is the page's URL with its token.

use std::{io::Write as _, net::SocketAddr, process::ExitCode, sync::Arc};

use anyhow::{Context as _, Result};
use chiral_host::daemon::{self, api, Daemon, DaemonOptions};

use super::{
    args::{DaemonArgs, Global},
    exit::UsageError,
    setup::{build_host, payments, settings},
    shutdown_signal,
};

const DEFAULT_HTTP: &str = "127.0.0.1:7878";
const DEFAULT_MAX_ACTIVE: usize = 5;

pub(crate) async fn run(g: &Global, a: DaemonArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let c = &s.config.daemon;
    let http = a.http.clone().or_else(|| c.http.clone()).unwrap_or_else(|| DEFAULT_HTTP.into());
    let addr: SocketAddr = http.parse().map_err(|_| UsageError("--http must be ADDR:PORT, e.g. 127.0.0.1:7878"))?;
    let host = Arc::new(build_host(g, &s, false)?);
    if let Some(p) = &s.proxy {
        eprintln!("chiral: every outgoing connection goes through the proxy {p}");
    }
    let _lock = daemon::lock_data_dir(&s.data_dir)?;
    let token = daemon::load_or_create_token(&s.data_dir).context("daemon.token")?;
    let opts = DaemonOptions {
        download_dir: a
            .download_dir
            .clone()
            .or_else(|| c.download_dir.clone())
            .unwrap_or_else(|| s.data_dir.join("downloads")),
        data_dir: s.data_dir.clone(),
        max_active: a.max_active.map(|n| n as usize).or(c.max_active).unwrap_or(DEFAULT_MAX_ACTIVE),
        connections: s.connections,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--http {addr}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!("the API listens on {bound}, beyond this machine: anyone who has the token controls the node");
    }
    let d = Daemon::new(host, opts);
    let extra_hosts = a
        .allow_host
        .iter()
        .chain(&c.allow_hosts)
        .map(|h| {
            let h = h.trim().to_ascii_lowercase();
            // `[v6]:port` and `name:port` name the host without the port.
            match h.rsplit_once(':') {
                Some((n, p)) if !p.contains(']') && p.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
                _ => h,
            }
        })
        .collect();
    let pay = payments(&s)?;
    if let Some(p) = &pay {
        d.set_payments(p.clone());
        chiral_host::payments::spawn_fast_lane(p.clone(), d.host().clone());
    }
    let router = api::router_with_payments(d.clone(), api::Access { token: token.clone(), bound, extra_hosts }, pay);
    let server = tokio::spawn(api::serve(listener, router));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", daemon::page_url(bound, &token))?;
        out.flush()?;
    }
    eprintln!(
        "chiral daemon: API and page on http://{bound}/ (token in {})",
        s.data_dir.join("daemon.token").display()
    );
    d.start().await;
    tokio::select! {
        _ = shutdown_signal() => {}
        r = server => {
            r.context("the HTTP server stopped")?.context("the HTTP server stopped")?;
        }
    }
    d.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
