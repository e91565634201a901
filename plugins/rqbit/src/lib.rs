//! # chiral-plugin-rqbit
//!
//! A second BitTorrent backend for Chiral, built on [librqbit](https://crates.io/crates/librqbit):
//! the same identifiers as the native `bittorrent` plugin (scheme `magnet`, suffix `.torrent`,
//! `.torrent` URLs) and the same options (`tracker`, `peer`, `port`, `payment_threshold`,
//! `wallet`, `threads`), at a lower priority so the native plugin stays the default. Pick it with
//! `--backend rqbit` or the config's `[backend] magnet = "rqbit"`.
//!
//! - [`ident`]: identifiers (magnet links through the SDK's [`chiral_sdk::magnet`]);
//! - [`ledger`]: per-peer transfer accounting behind `PaymentRequired`;
//! - [`download`]: a whole download into a temporary folder, renamed when complete;
//! - [`create`]: building `.torrent` files (not librqbit's `create_torrent`, see there);
//! - [`seed`]: seeding, listing and stopping seeds, `command("create")`;
//! - this file: the plugin, its runtime and the one librqbit `Session` it owns.
//!
//! librqbit gives no piece-level access, so the plugin has no `SOURCE` capability: the host
//! runs its whole `download()`. No librqbit type crosses the ABI; every future runs on the
//! plugin's own runtime, where the librqbit session lives.

pub mod create;
pub mod download;
pub mod ident;
pub mod ledger;
pub mod seed;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use chiral_sdk::{
    capability,
    options::Opts,
    plugin::BoxFut,
    runtime::{self, PluginRuntime},
    seeds::SeedTable,
    DownloadOutcome, DownloadRequest, Events, HostConfig, Plugin, PluginDescriptor, PluginError, SeedInfo, SeedRequest,
};
use librqbit::{DhtSessionConfig, ListenerMode, ListenerOptions, Session, SessionOptions};

/// The plugin's name, also its `--backend` / `--via` name.
pub const NAME: &str = "rqbit";
/// Below the native plugin's 10: the native backend stays the default for `magnet:`.
pub const PRIORITY: i32 = 5;
/// Default `payment_threshold`: 1 MiB.
pub const DEFAULT_PAYMENT_THRESHOLD: u64 = 1 << 20;

/// What every operation of this plugin instance shares.
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen_ip: IpAddr,
    /// `port` option, else the host's listen port; 0 = any.
    pub want_port: u16,
    pub advertise_host: String,
    pub no_dht: bool,
    pub proxy: Option<String>,
    pub payment_threshold: u64,
    pub wallet: Option<String>,
}

/// The plugin: its runtime, settings and the lazily started librqbit session.
pub struct RqbitPlugin {
    // Dropped first: shutting the runtime down stops every librqbit task.
    runtime: PluginRuntime,
    pub(crate) settings: Settings,
    pub(crate) options: Opts,
    pub(crate) events: Events,
    session: tokio::sync::OnceCell<Arc<Session>>,
    /// The port the session listens on (set when it starts).
    port: Mutex<Option<u16>>,
    /// Seeds by info hash (hex).
    pub(crate) seeds: SeedTable<seed::SeedEntry>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line of a librqbit error (its `{:#}` chain).
pub(crate) fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

impl Plugin for RqbitPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor::new(NAME, env!("CARGO_PKG_VERSION"))
            .schemes(&["magnet"])
            .suffixes(&[".torrent"])
            .capabilities(capability::DOWNLOAD | capability::SEED | capability::SEED_MANAGE)
            .priority(PRIORITY)
            .description(
                "BitTorrent (librqbit): .torrent files and URLs, magnets, DHT, seeding; pick with --backend rqbit",
            )
    }

    fn new(config: HostConfig, events: Events) -> Result<Self, PluginError> {
        let options = Opts::from_abi(&config.options);
        let runtime = PluginRuntime::for_plugin(NAME, &options)?;
        let listen_ip: IpAddr = config.listen_addr.as_str().trim().parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let want_port = options.get_port("port")?.unwrap_or(config.listen_port);
        let settings = Settings {
            data_dir: PathBuf::from(config.data_dir.as_str()),
            listen_ip,
            want_port,
            advertise_host: config.advertise_host.to_string(),
            no_dht: config.no_dht,
            proxy: config.proxy_url().map(str::to_string),
            payment_threshold: options.get_bytes("payment_threshold")?.unwrap_or(DEFAULT_PAYMENT_THRESHOLD).max(1),
            wallet: options.get_str("wallet").map(str::to_string),
        };
        Ok(Self {
            runtime,
            settings,
            options,
            events,
            session: tokio::sync::OnceCell::new(),
            port: Mutex::new(None),
            seeds: SeedTable::new(),
        })
    }

    fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.handle()
    }

    fn download(self: Arc<Self>, request: DownloadRequest, events: Events) -> BoxFut<DownloadOutcome> {
        Box::pin(async move { download::run(self, request, events).await })
    }

    fn seed(self: Arc<Self>, request: SeedRequest, events: Events) -> BoxFut<SeedInfo> {
        Box::pin(async move {
            let opts = self.options.merged(&request.options);
            seed::start(&self, request.path.as_str(), &opts, events).await
        })
    }

    fn list_seeds(&self) -> Vec<SeedInfo> {
        seed::list(self)
    }

    fn stop_seed(&self, id: &str) -> Result<(), PluginError> {
        seed::stop(self, id)
    }

    fn command(self: Arc<Self>, name: String, args: Vec<(String, String)>, _events: Events) -> BoxFut<String> {
        Box::pin(async move {
            match name.as_str() {
                "create" => seed::create_command(Opts(args)).await,
                other => Err(PluginError::unsupported(format!("plugin {NAME} has no command {other:?}"))),
            }
        })
    }
}

impl RqbitPlugin {
    /// The librqbit session, started on first use (on this plugin's runtime).
    pub(crate) async fn session(&self) -> Result<Arc<Session>, PluginError> {
        self.session.get_or_try_init(|| self.start_session()).await.cloned()
    }

    pub(crate) fn runtime_handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle()
    }

    pub(crate) fn session_if_started(&self) -> Option<Arc<Session>> {
        self.session.get().cloned()
    }

    /// The port peers reach this node on, once the session runs.
    pub fn port(&self) -> Option<u16> {
        *lock(&self.port)
    }

    /// Host name or address put in `x.pe` of the magnets this node prints.
    pub(crate) fn advertise_host(&self) -> String {
        let h = self.settings.advertise_host.trim();
        if !h.is_empty() {
            return h.to_string();
        }
        if self.settings.listen_ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            self.settings.listen_ip.to_string()
        }
    }

    async fn start_session(&self) -> Result<Arc<Session>, PluginError> {
        let s = &self.settings;
        let ip = s.listen_ip;
        // librqbit announces no port for a loopback listener and cannot report the port it
        // picked before it starts, so the port is chosen here and announced explicitly.
        let port = pick_port(ip, s.want_port, &self.events)?;
        let bootstrap = self.options.get_all("dht_bootstrap");
        let lan_discovery = !s.no_dht && self.options.get_bool("lsd")?.unwrap_or(true);
        // With a proxy: librqbit sends peer connections (SOCKS5) and HTTP trackers and
        // `.torrent` URLs (reqwest) through it; what it would still do directly is turned off
        // here: the DHT and local service discovery (UDP), and UDP trackers (dropped from each
        // torrent, `download::without_udp_trackers`). librqbit speaks SOCKS5 only.
        let proxy_url = match &s.proxy {
            None => None,
            Some(p) => {
                let parsed = chiral_sdk::net::Proxy::parse(p).map_err(|e| PluginError::invalid(e.to_string()))?;
                if !matches!(parsed.kind, chiral_sdk::net::ProxyKind::Socks5 { .. }) {
                    return Err(PluginError::unsupported(format!(
                        "rqbit: librqbit reaches peers through a SOCKS5 proxy only, not {parsed}: use socks5h:// or --backend bittorrent"
                    )));
                }
                self.events.warn(format!(
                    "rqbit: through the proxy {parsed}: DHT, local discovery and UDP trackers off (UDP cannot go through it)"
                ));
                Some(p.clone())
            }
        };
        let proxied = proxy_url.is_some();
        let lan_discovery = lan_discovery && !proxied;
        // Chunk requests in flight per peer: librqbit's default (128, never above the peer's
        // reqq) unless the `request_window` option says otherwise.
        let window = self.options.get_u64_in("request_window", 1..=4096)?.map(|w| w as usize);
        let connect = Some(librqbit::ConnectionOptions {
            proxy_url,
            peer_opts: Some(librqbit::PeerConnectionOptions { max_request_window: window, ..Default::default() }),
            ..Default::default()
        });
        let opts = SessionOptions {
            dht: if s.no_dht || proxied {
                None
            } else {
                Some(DhtSessionConfig {
                    bootstrap_addrs: if bootstrap.is_empty() { None } else { Some(bootstrap) },
                    port: None,
                    persistence: None,
                })
            },
            disable_local_service_discovery: !lan_discovery,
            fastresume: false,
            persistence: None,
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: SocketAddr::new(ip, port),
                announce_port: Some(port),
                ipv4_only: ip.is_ipv4(),
                enable_upnp_port_forwarding: false,
                ..Default::default()
            }),
            connect,
            ipv4_only: ip.is_ipv4(),
            runtime_worker_threads: Some(runtime::worker_threads(&self.options)?),
            ..Default::default()
        };
        let default_out = s.data_dir.join("downloads");
        let session = Session::new_with_opts(default_out, opts).await.map_err(|e| {
            PluginError::network(format!(
                "rqbit: cannot start the librqbit session on {ip}:{port}: {}",
                one_line(format!("{e:#}"))
            ))
        })?;
        let port = session.listen_addr().map(|a| a.port()).unwrap_or(port);
        *lock(&self.port) = Some(port);
        if s.wallet.is_some() {
            self.events.debug("rqbit: the wallet option is accepted but librqbit cannot announce it to peers (no chiral BEP 10 extension)");
        }
        self.events.debug(format!(
            "rqbit: librqbit {} session on {ip}:{port}, DHT {}",
            librqbit::version(),
            if s.no_dht { "off" } else { "on" }
        ));
        Ok(session)
    }
}

/// `want` if it can be bound on `ip` (else a free one, with a warning), or a free port for 0.
fn pick_port(ip: IpAddr, want: u16, events: &Events) -> Result<u16, PluginError> {
    let probe = |p: u16| std::net::TcpListener::bind((ip, p)).and_then(|l| l.local_addr()).map(|a| a.port());
    match probe(want) {
        Ok(p) => Ok(p),
        Err(e) if want != 0 => {
            events.warn(format!("rqbit: port {want} is taken ({e}); using a free one"));
            probe(0).map_err(|e| PluginError::network(format!("cannot listen on {ip}: {e}")))
        }
        Err(e) => Err(PluginError::network(format!("cannot listen on {ip}: {e}"))),
    }
}

chiral_sdk::export_plugin!(RqbitPlugin);

#[cfg(test)]
mod tests;
