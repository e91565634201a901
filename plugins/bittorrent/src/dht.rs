//! BEP 5 (the mainline DHT) through the `mainline` crate, which owns the KRPC codec, the
//! routing table and the UDP socket (we parse no KRPC ourselves). This file holds:
//!
//! - [`DhtConfig`]: the node's settings from the plugin options (`dht_bootstrap`, repeatable
//!   `host:port`, or `none` for the first node of a new network; `dht_port`) and the host's
//!   listen address (pure, unit-tested);
//! - [`DhtNode`]: one node per plugin instance, started lazily on first use (a `chiral get
//!   http://...` never touches the DHT), shared by every swarm: `get_peers` lookups and
//!   `announce_peer` for seeds.
//!
//! When `dht_bootstrap` is given only those nodes are used (never the public defaults), and the
//! node runs in server mode so that a tiny private (e.g. loopback) network answers queries.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs as _},
    time::Duration,
};

use chiral_sdk::Events;
use futures::StreamExt as _;
use mainline::{async_dht::AsyncDht, Dht, Id};
use thiserror::Error;

/// Why a DHT node could not be configured, started or used.
#[derive(Debug, Error)]
pub enum DhtError {
    #[error("dht_bootstrap {0:?} is not host:port")]
    NotHostPort(String),
    #[error("dht_port={0} is not a port")]
    BadPort(u64),
    #[error("dht_bootstrap {node}: {source}")]
    Resolve { node: String, source: std::io::Error },
    #[error("dht_bootstrap {0:?}: no IPv4 address (the DHT is IPv4 only)")]
    NoIpv4(Vec<String>),
    #[error("cannot start the DHT node: {0}")]
    Start(std::io::Error),
    #[error("the DHT is not running")]
    NotRunning,
    #[error("DHT announce failed: {0}")]
    Announce(Box<dyn std::error::Error + Send + Sync>),
}

/// How a node is built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhtConfig {
    /// `None`: mainline's public bootstrap nodes. `Some(empty)`: none at all (the first node
    /// of a new network). Otherwise `host:port` strings, resolved when the node starts.
    pub bootstrap: Option<Vec<String>>,
    /// IPv4 address the UDP socket binds to (`None`: all interfaces).
    pub bind: Option<Ipv4Addr>,
    /// UDP port (`None`: mainline's default choice).
    pub port: Option<u16>,
    /// Answer queries from the start (private networks) instead of mainline's adaptive mode.
    pub server_mode: bool,
}

impl DhtConfig {
    /// From the `dht_bootstrap` option values, the host's listen address and `dht_port`.
    pub fn from_options(bootstrap: &[String], listen_addr: &str, port: Option<u64>) -> Result<Self, DhtError> {
        let bootstrap = if bootstrap.is_empty() {
            None
        } else {
            let mut nodes = Vec::new();
            for b in bootstrap {
                let b = b.trim();
                if b.eq_ignore_ascii_case("none") {
                    continue;
                }
                check_host_port(b)?;
                nodes.push(b.to_string());
            }
            Some(nodes)
        };
        let bind = match listen_addr.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if !v4.is_unspecified() => Some(v4),
            _ => None,
        };
        let port = match port {
            None => None,
            Some(p) if p <= u16::MAX as u64 => Some(p as u16),
            Some(p) => return Err(DhtError::BadPort(p)),
        };
        let server_mode = bootstrap.is_some();
        Ok(Self { bootstrap, bind, port, server_mode })
    }

    /// Builds and starts the node (blocking: binds, resolves the bootstrap names).
    fn build(&self) -> Result<Dht, DhtError> {
        let mut b = Dht::builder();
        match &self.bootstrap {
            None => {}
            Some(nodes) if nodes.is_empty() => {
                b.no_bootstrap();
            }
            Some(nodes) => {
                let mut addrs: Vec<SocketAddrV4> = Vec::new();
                for n in nodes {
                    let resolved =
                        n.to_socket_addrs().map_err(|source| DhtError::Resolve { node: n.clone(), source })?;
                    addrs.extend(resolved.filter_map(|a| match a {
                        SocketAddr::V4(v4) => Some(v4),
                        SocketAddr::V6(_) => None,
                    }));
                }
                if addrs.is_empty() {
                    return Err(DhtError::NoIpv4(nodes.clone()));
                }
                b.bootstrap(&addrs);
            }
        }
        if let Some(ip) = self.bind {
            b.bind_address(ip);
        }
        if let Some(p) = self.port {
            b.port(p);
        }
        if self.server_mode {
            b.server_mode();
        }
        b.build().map_err(DhtError::Start)
    }
}

/// `host:port` with a port number (an IPv6 literal in brackets is accepted, and later ignored).
pub fn check_host_port(s: &str) -> Result<(), DhtError> {
    let bad = || DhtError::NotHostPort(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

/// The plugin's DHT node, started on first use.
pub struct DhtNode {
    config: DhtConfig,
    cell: tokio::sync::OnceCell<Option<AsyncDht>>,
    events: Events,
}

impl DhtNode {
    pub fn new(config: DhtConfig, events: Events) -> Self {
        Self { config, cell: tokio::sync::OnceCell::new(), events }
    }

    /// The running node (started now if it is not yet); `None` if it could not start.
    pub async fn get(&self) -> Option<AsyncDht> {
        self.cell
            .get_or_init(|| async {
                let cfg = self.config.clone();
                match tokio::task::spawn_blocking(move || cfg.build()).await {
                    Ok(Ok(dht)) => {
                        let dht = dht.as_async();
                        let addr = dht.info().await.local_addr();
                        let boot = match &self.config.bootstrap {
                            None => "the public bootstrap nodes".to_string(),
                            Some(v) if v.is_empty() => "no bootstrap node (new network)".to_string(),
                            Some(v) => v.join(", "),
                        };
                        self.events.info(format!("bittorrent: DHT node listening on {addr} (bootstrap: {boot})"));
                        Some(dht)
                    }
                    Ok(Err(e)) => {
                        self.events.warn(format!("bittorrent: {e}; going on without the DHT"));
                        None
                    }
                    Err(e) => {
                        self.events.warn(format!("bittorrent: DHT start-up task failed: {e}"));
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// The node's UDP address (starts the node).
    pub async fn addr(&self) -> Option<SocketAddrV4> {
        let dht = self.get().await?;
        Some(dht.info().await.local_addr())
    }

    /// Peers for `info_hash`, handed to `found` as they arrive, for at most `limit`.
    /// Returns how many addresses were seen.
    pub async fn lookup(&self, info_hash: [u8; 20], limit: Duration, mut found: impl FnMut(Vec<SocketAddr>)) -> usize {
        let Some(dht) = self.get().await else { return 0 };
        let Ok(id) = Id::from_bytes(info_hash) else { return 0 };
        let mut stream = dht.get_peers(id);
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = 0;
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, stream.next()).await {
            let addrs: Vec<SocketAddr> = batch.into_iter().filter(|a| a.port() != 0).map(SocketAddr::V4).collect();
            seen += addrs.len();
            if !addrs.is_empty() {
                found(addrs);
            }
        }
        seen
    }

    /// Announces that this node serves `info_hash` on TCP `port`.
    pub async fn announce(&self, info_hash: [u8; 20], port: u16) -> Result<(), DhtError> {
        let dht = self.get().await.ok_or(DhtError::NotRunning)?;
        let id = Id::from_bytes(info_hash).map_err(|e| DhtError::Announce(e.into()))?;
        dht.announce_peer(id, Some(port)).await.map(|_| ()).map_err(|e| DhtError::Announce(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn config_from_options() {
        let c = DhtConfig::from_options(&[], "0.0.0.0", None).unwrap();
        assert_eq!(c, DhtConfig { bootstrap: None, bind: None, port: None, server_mode: false });
        let c = DhtConfig::from_options(&s(&["127.0.0.1:6881", "localhost:7000"]), "127.0.0.1", Some(6882)).unwrap();
        assert_eq!(c.bootstrap, Some(s(&["127.0.0.1:6881", "localhost:7000"])));
        assert_eq!(c.bind, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(c.port, Some(6882));
        assert!(c.server_mode);
        let c = DhtConfig::from_options(&s(&["none"]), "::1", None).unwrap();
        assert_eq!(c.bootstrap, Some(vec![]));
        assert_eq!(c.bind, None);
        for bad in ["nohost", ":6881", "h:0", "h:99999", "h:x"] {
            assert!(DhtConfig::from_options(&s(&[bad]), "", None).is_err(), "{bad}");
        }
        assert!(DhtConfig::from_options(&[], "", Some(70000)).is_err());
    }

    /// Three nodes on loopback: the first has no bootstrap, the others bootstrap from it; one
    /// announces, another finds it (the KRPC exchange is mainline's; this checks our use of it).
    #[test]
    fn announce_then_lookup_on_a_loopback_network() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let cfg = |b: &[&str]| DhtConfig::from_options(&s(b), "127.0.0.1", None).unwrap();
            let boot = DhtNode::new(cfg(&["none"]), Events::none());
            let addr = boot.addr().await.expect("bootstrap node runs");
            assert_eq!(*addr.ip(), Ipv4Addr::LOCALHOST);
            let a = DhtNode::new(cfg(&[&addr.to_string()]), Events::none());
            let b = DhtNode::new(cfg(&[&addr.to_string()]), Events::none());
            let ih = [7u8; 20];
            let mut announced = false;
            for _ in 0..20 {
                if a.announce(ih, 4242).await.is_ok() {
                    announced = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert!(announced, "announce_peer never succeeded");
            let mut peers = Vec::new();
            for _ in 0..20 {
                b.lookup(ih, Duration::from_secs(10), |v| peers.extend(v)).await;
                if !peers.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert!(peers.contains(&"127.0.0.1:4242".parse().unwrap()), "{peers:?}");
        });
    }
}
