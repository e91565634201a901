//! The libp2p node: one task owns the swarm (TCP + TLS or Noise + Yamux, optionally QUIC, built
//! in [`build_swarm`]; identify `/chiral/2.0.0`; Kademlia `/chiral/kad/2.0.0` in server mode;
//! request-response `/chiral/chunk/1.0.0`) and
//! answers commands sent through a channel by [`Node`], the cheap handle everyone else holds.
//!
//! Routing-table policy: peers enter the Kademlia table only after identify told us they speak
//! `/chiral/2.0.0` (manual bucket inserts); peers with another protocol version are removed.
//! Incoming record puts are validated and merged with the stored copy (see [`crate::records`]).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    num::NonZeroUsize,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chiral_sdk::{dial::DialPolicy, options::Opts, verify::Hash32, Events, HostConfig, PluginError};

use crate::dial_filter::Filtered;
use futures::StreamExt as _;
use libp2p::{
    identify, identity,
    kad::{
        self, store::RecordStore as _, BucketInserts, GetProvidersOk, GetRecordOk, QueryResult, Quorum, Record,
        StoreInserts,
    },
    multiaddr::Protocol,
    noise, request_response,
    swarm::{dial_opts::DialOpts, NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    reputation::PeerMetrics,
    seed::SeedEntry,
    wire::{self, ChunkCodec, Request, Response},
};

/// Version 2: signed per-publisher records ([`crate::records`]). Nodes of version 1 (unsigned
/// records) are kept out of the routing table, with the reason logged.
pub const PROTOCOL_VERSION: &str = "/chiral/2.0.0";
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/chiral/kad/2.0.0");
const IDENTITY_FILE: &str = "identity.ed25519";
/// Most publishers whose entries one node stores (the store quota's bookkeeping).
const MAX_QUOTA_PUBLISHERS: usize = 65_536;

/// Connections being set up from outside (TCP accepted, the handshake not done), at most: more
/// are refused until some finish or reach the builder's 10 s connection timeout.
const MAX_PENDING_INCOMING: u32 = 1024;
/// Established connections from outside, at most (each holds a socket and its streams).
const MAX_ESTABLISHED_INCOMING: u32 = 1024;
/// Connections with one peer, at most.
const MAX_PER_PEER: u32 = 8;

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First: a connection over the limits is refused before any other behaviour sees it.
    limits: libp2p::connection_limits::Behaviour,
    /// Each behaviour that offers addresses for a dial offers only those the node's dial
    /// policy permits ([`crate::dial_filter`]).
    identify: Filtered<identify::Behaviour>,
    kad: Filtered<kad::Behaviour<kad::store::MemoryStore>>,
    chunks: Filtered<request_response::Behaviour<ChunkCodec>>,
}

type Reply<T> = oneshot::Sender<T>;

/// Why the swarm task could not do what a caller asked (the caller turns it into a network
/// error for the host).
#[derive(Debug, thiserror::Error)]
enum NodeError {
    #[error("cannot store the record locally: {0}")]
    Store(kad::store::Error),
    #[error("cannot provide: {0}")]
    Provide(kad::store::Error),
    #[error("{0}")]
    Put(kad::PutRecordError),
    #[error("{0}")]
    AddProvider(kad::AddProviderError),
    #[error("{0}")]
    Record(crate::records::RecordError),
    #[error("{peer}: {error}")]
    Request { peer: PeerId, error: request_response::OutboundFailure },
}
/// Copies of a record found: who sent it (None = this node) and its value.
type Found = Vec<(Option<PeerId>, Vec<u8>)>;

enum Cmd {
    GetRecord(Vec<u8>, Reply<Found>),
    PutRecord(Vec<u8>, Vec<u8>, Reply<Result<(), NodeError>>),
    Provide(Vec<u8>, Reply<Result<(), NodeError>>),
    GetProviders(Vec<u8>, Reply<HashSet<PeerId>>),
    Request(PeerId, Vec<Multiaddr>, Request, Reply<Result<Response, NodeError>>),
    Bootstrap(Reply<()>),
    Serve,
}

/// State shared by the swarm task and the handles.
pub struct Shared {
    pub peer_id: PeerId,
    /// The node's key: signs its records.
    pub keypair: identity::Keypair,
    /// Where the node keeps its state (identity, reputation).
    pub data_dir: std::path::PathBuf,
    pub events: Events,
    pub metrics: Mutex<HashMap<PeerId, PeerMetrics>>,
    pub seeds: Mutex<HashMap<Hash32, Arc<SeedEntry>>>,
    listen: Mutex<Vec<Multiaddr>>,
    addrs: Mutex<HashMap<PeerId, Vec<Multiaddr>>>,
}

/// Handle to the running node.
#[derive(Clone)]
pub struct Node {
    pub shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Cmd>,
    routable: watch::Receiver<usize>,
    has_bootstrap: bool,
    joined: Arc<tokio::sync::OnceCell<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node's key from `dir`, made on first use (stable peer id across restarts).
pub fn load_identity(dir: &Path) -> Result<identity::Keypair, PluginError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| PluginError::invalid(format!("{}: not an identity key: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| PluginError::io(format!("{}: {e}", dir.display())))?;
            let key = identity::Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| PluginError::other(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            {
                use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| PluginError::io(format!("{}: {e}", tmp.display())))?;
                f.write_all(&bytes).map_err(|e| PluginError::io(e.to_string()))?;
            }
            std::fs::rename(&tmp, &path).map_err(|e| PluginError::io(format!("{}: {e}", path.display())))?;
            Ok(key)
        }
        Err(e) => Err(PluginError::io(format!("{}: {e}", path.display()))),
    }
}

/// `/ip4/A/tcp/P` (or ip6) from the host's listen address and port.
pub fn listen_multiaddr(addr: &str, port: u16) -> Result<Multiaddr, PluginError> {
    let addr = if addr.is_empty() { "0.0.0.0" } else { addr };
    if addr.starts_with('/') {
        return addr.parse().map_err(|e| PluginError::invalid(format!("listen address {addr:?}: {e}")));
    }
    let ip: IpAddr = addr.parse().map_err(|_| PluginError::invalid(format!("listen address {addr:?} is not an IP")))?;
    let proto = match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Ok(Multiaddr::empty().with(proto).with(Protocol::Tcp(port)))
}

/// The peer id at the end of a multiaddr, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None })
}

/// The transport data moves over, picked with the plugin option `transport` (`quic`, `tls` or
/// `noise`; see `docs/benchmarks.md` for the measurements behind the default). Every node also
/// speaks TCP with Noise, so nodes of any choice (and a proxied node, TCP only) still meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP + (TLS 1.3 or Noise) + Yamux, and QUIC (TLS 1.3, AES-GCM) on the same port
    /// number over UDP: the data path prefers QUIC.
    Quic,
    /// TCP + TLS 1.3 (AES-GCM) preferred over Noise + Yamux.
    Tls,
    /// TCP + Noise (ChaCha20-Poly1305) + Yamux only.
    Noise,
}

impl Transport {
    pub const DEFAULT: Transport = Transport::Tls;

    pub fn from_options(opts: &Opts) -> Result<Self, PluginError> {
        match opts.get_str("transport") {
            None => Ok(Self::DEFAULT),
            Some(v) if v.eq_ignore_ascii_case("quic") => Ok(Self::Quic),
            Some(v) if v.eq_ignore_ascii_case("tls") => Ok(Self::Tls),
            Some(v) if v.eq_ignore_ascii_case("noise") => Ok(Self::Noise),
            Some(v) => Err(PluginError::invalid(format!("transport {v:?}: expected quic, tls or noise"))),
        }
    }
}

/// `/ip4/A/udp/P/quic-v1` beside a `/ip4/A/tcp/P` listen address.
fn quic_of(tcp: &Multiaddr) -> Option<Multiaddr> {
    let mut out = Multiaddr::empty();
    for p in tcp.iter() {
        out.push(match p {
            Protocol::Tcp(port) => Protocol::Udp(port),
            other => other,
        });
    }
    out.iter().any(|p| matches!(p, Protocol::Udp(_))).then(|| out.with(Protocol::QuicV1))
}

fn behaviour(key: &identity::Keypair, policy: DialPolicy) -> Behaviour {
    let id = key.public().to_peer_id();
    let mut kcfg = kad::Config::new(KAD_PROTOCOL);
    kcfg.set_record_filtering(StoreInserts::FilterBoth)
        .set_kbucket_inserts(BucketInserts::Manual)
        .set_query_timeout(Duration::from_secs(20))
        .set_max_packet_size(crate::records::MAX_RECORD * 2 + 4096)
        .set_replication_factor(NonZeroUsize::new(8).expect("8"));
    let store = kad::store::MemoryStore::with_config(
        id,
        kad::store::MemoryStoreConfig {
            max_records: 4 * 1024,
            max_value_bytes: crate::records::MAX_RECORD,
            max_providers_per_key: 32,
            max_provided_keys: 16 * 1024,
        },
    );
    let mut kad = kad::Behaviour::with_config(id, store, kcfg);
    // A client until it serves something (Node::serve): a transient `chiral get` or `search`
    // must not enter other nodes' routing tables, where it would be dialled long after it left
    // (over QUIC, each such dial waits out the handshake timeout).
    kad.set_mode(Some(kad::Mode::Client));
    let identify = identify::Behaviour::new(
        identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
            .with_agent_version(format!("chiral-plugin-chiral/{}", env!("CARGO_PKG_VERSION"))),
    );
    let chunks = request_response::Behaviour::with_codec(
        ChunkCodec,
        [(wire::PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(30))
            .with_max_concurrent_streams(256),
    );
    let limits = libp2p::connection_limits::Behaviour::new(
        libp2p::connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
            .with_max_established_per_peer(Some(MAX_PER_PEER)),
    );
    Behaviour {
        limits,
        identify: Filtered::new(identify, policy),
        kad: Filtered::new(kad, policy),
        chunks: Filtered::new(chunks, policy),
    }
}

/// The swarm: the transports (all built here, in one place) and the behaviour.
/// The swarm over `transport`, or over TCP through `proxy` alone (Noise; every node accepts it)
/// when the user set one.
fn build_swarm(
    key: identity::Keypair,
    transport: Transport,
    proxy: Option<&chiral_sdk::net::Proxy>,
    policy: DialPolicy,
) -> Result<Swarm<Behaviour>, PluginError> {
    let tcp_config = || tcp::Config::default().nodelay(true);
    let swarm_config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(120));
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let transport_error = |e: &dyn std::fmt::Display| PluginError::other(format!("transport: {e}"));
    let behaviour_error = |e: &dyn std::fmt::Display| PluginError::other(format!("behaviour: {e}"));
    // The builder's type changes with each transport: the common tail as a macro.
    macro_rules! finish {
        ($b:expr) => {
            $b.with_behaviour(|k| behaviour(k, policy))
                .map_err(|e| behaviour_error(&e))?
                .with_swarm_config(swarm_config)
                .build()
        };
    }
    let tls = (crate::tls::Config::new, noise::Config::new);
    if let Some(p) = proxy {
        return Ok(finish!(builder
            .with_other_transport(|k| crate::proxy_transport::transport(k, p))
            .map_err(|e| transport_error(&e))?));
    }
    Ok(match transport {
        Transport::Noise => {
            finish!(builder
                .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)
                .map_err(|e| transport_error(&e))?)
        }
        Transport::Tls => {
            finish!(builder.with_tcp(tcp_config(), tls, yamux::Config::default).map_err(|e| transport_error(&e))?)
        }
        Transport::Quic => finish!(builder
            .with_tcp(tcp_config(), tls, yamux::Config::default)
            .map_err(|e| transport_error(&e))?
            .with_quic()),
    })
}

impl Node {
    /// Starts the node on the current runtime; resolves once it listens.
    pub async fn start(config: &HostConfig, events: Events) -> Result<Node, PluginError> {
        let key = load_identity(Path::new(config.data_dir.as_str()))?;
        let peer_id = key.public().to_peer_id();
        let mut bootstrap = Vec::new();
        for b in config.bootstrap.iter() {
            match b.parse::<Multiaddr>() {
                Ok(a) => bootstrap.push(a),
                Err(e) => events.warn(format!("bootstrap address {b:?} ignored: {e}")),
            }
        }
        let listen = listen_multiaddr(&config.listen_addr, config.listen_port)?;

        // Proxy hook (privacy): with a proxy, TCP through it only (see proxy_transport.rs).
        let proxy = crate::proxy_transport::proxy(config, &events)?;
        let opts = Opts::from_abi(&config.options);
        let transport = Transport::from_options(&opts)?;
        let allow_local = opts.get_bool("allow_local_peers").map_err(|e| PluginError::invalid(e.to_string()))?;
        let policy = crate::dial_filter::policy(&bootstrap, &listen, allow_local.unwrap_or(false));
        let mut swarm = build_swarm(key.clone(), transport, proxy.as_ref(), policy)?;
        if proxy.is_none() {
            swarm
                .listen_on(listen.clone())
                .map_err(|e| PluginError::network(format!("cannot listen on {listen}: {e}")))?;
            if transport == Transport::Quic {
                if let Some(quic) = quic_of(&listen) {
                    if let Err(e) = swarm.listen_on(quic.clone()) {
                        events.warn(format!("cannot listen on {quic}: {e}"));
                    }
                }
            }
        }

        let data_dir = Path::new(config.data_dir.as_str()).to_path_buf();
        let metrics = crate::reputation::load(&data_dir, &events);
        let shared = Arc::new(Shared {
            peer_id,
            keypair: key,
            data_dir,
            events: events.clone(),
            metrics: Mutex::new(metrics),
            seeds: Mutex::new(HashMap::new()),
            listen: Mutex::new(Vec::new()),
            addrs: Mutex::new(HashMap::new()),
        });

        // Wait for the first listen address (and give the other interfaces a moment).
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.is_none() {
            let timeout = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(timeout, swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                    lock(&shared.listen).push(address);
                    break;
                }
                Ok(SwarmEvent::ListenerError { error, .. })
                | Ok(SwarmEvent::ListenerClosed { reason: Err(error), .. }) => {
                    return Err(PluginError::network(format!("cannot listen on {listen}: {error}")))
                }
                Ok(_) => {}
                Err(_) => return Err(PluginError::network(format!("no listen address on {listen} after 10 s"))),
            }
        }
        // On a wildcard address one event per interface follows: give them a moment, so the
        // addresses printed include loopback. A specific address has just the one.
        let wildcard = listen.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_unspecified(),
            _ => false,
        });
        let settle = Instant::now() + Duration::from_millis(if wildcard { 150 } else { 0 });
        while let Ok(ev) =
            tokio::time::timeout(settle.saturating_duration_since(Instant::now()), swarm.select_next_some()).await
        {
            if let SwarmEvent::NewListenAddr { address, .. } = ev {
                lock(&shared.listen).push(address);
            }
        }

        for addr in &bootstrap {
            if let Err(e) = swarm.dial(addr.clone()) {
                events.warn(format!("cannot dial bootstrap {addr}: {e}"));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (routable_tx, routable) = watch::channel(0usize);
        let task = Task {
            swarm,
            shared: shared.clone(),
            rx,
            routable: routable_tx,
            get_records: HashMap::new(),
            get_providers: HashMap::new(),
            puts: HashMap::new(),
            requests: HashMap::new(),
            bootstraps: Vec::new(),
            bootstrap_query: None,
            served: mpsc::unbounded_channel(),
            quota: HashMap::new(),
        };
        tokio::spawn(task.run());
        events.info(format!("chiral node {peer_id} listening on {:?}", lock(&shared.listen)));
        Ok(Node {
            shared,
            tx,
            routable,
            has_bootstrap: !bootstrap.is_empty(),
            joined: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// Addresses to print: `0.0.0.0` shown as `127.0.0.1`, loopback first, each with `/p2p/`.
    pub fn addrs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in lock(&self.shared.listen).iter() {
            let shown: Multiaddr = a
                .iter()
                .map(|p| match p {
                    Protocol::Ip4(ip) if ip.is_unspecified() => Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST),
                    Protocol::Ip6(ip) if ip.is_unspecified() => Protocol::Ip6(std::net::Ipv6Addr::LOCALHOST),
                    other => other,
                })
                .collect();
            let s = shown.with(Protocol::P2p(self.shared.peer_id)).to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out.sort_by_key(|a| !a.starts_with("/ip4/127."));
        out
    }

    /// Listen addresses without `/p2p/` (what seeders put in metadata records).
    pub fn plain_addrs(&self) -> Vec<String> {
        self.addrs().into_iter().map(|a| a.rsplit_once("/p2p/").map(|(h, _)| h.to_string()).unwrap_or(a)).collect()
    }

    /// Once per node: waits for a bootstrap peer to be identified (up to 10 s), then runs a
    /// Kademlia bootstrap (up to 10 s), so lookups reach beyond the first hop.
    pub async fn join(&self) {
        if !self.has_bootstrap {
            return;
        }
        self.joined
            .get_or_init(|| async {
                let mut r = self.routable.clone();
                let waited =
                    tokio::time::timeout(Duration::from_secs(10), async move { r.wait_for(|n| *n > 0).await.is_ok() })
                        .await
                        .unwrap_or(false);
                if !waited {
                    self.shared.events.warn("no bootstrap peer answered within 10 s");
                    return;
                }
                let (tx, rx) = oneshot::channel();
                if self.tx.send(Cmd::Bootstrap(tx)).is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
                }
            })
            .await;
    }

    /// From now on a DHT server: it answers Kademlia queries and enters other nodes' routing
    /// tables (a `chiral node`, and any node that seeds). Until then it only asks.
    pub fn serve(&self) {
        let _ = self.tx.send(Cmd::Serve);
    }

    fn send(&self, cmd: Cmd) -> Result<(), PluginError> {
        self.tx.send(cmd).map_err(|_| PluginError::other("the chiral node stopped"))
    }

    /// Every copy of the record under `key` the DHT returns (raw, unvalidated).
    pub async fn get_record(&self, key: Vec<u8>) -> Result<Vec<(Option<PeerId>, Vec<u8>)>, PluginError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::GetRecord(key, tx))?;
        Ok(tokio::time::timeout(Duration::from_secs(30), rx).await.ok().and_then(Result::ok).unwrap_or_default())
    }

    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), PluginError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::PutRecord(key, value, tx))?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r.map_err(|e| PluginError::network(e.to_string())),
            _ => Err(PluginError::network("put timed out")),
        }
    }

    pub async fn provide(&self, key: Vec<u8>) -> Result<(), PluginError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Provide(key, tx))?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r.map_err(|e| PluginError::network(e.to_string())),
            _ => Err(PluginError::network("providing timed out")),
        }
    }

    pub async fn get_providers(&self, key: Vec<u8>) -> Result<HashSet<PeerId>, PluginError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::GetProviders(key, tx))?;
        Ok(tokio::time::timeout(Duration::from_secs(30), rx).await.ok().and_then(Result::ok).unwrap_or_default())
    }

    /// Remembers where `peer` listens (from a metadata record).
    pub fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let mut book = lock(&self.shared.addrs);
        let e = book.entry(peer).or_default();
        for a in addrs {
            if !e.contains(&a) {
                e.push(a);
            }
        }
    }

    pub async fn request(&self, peer: PeerId, req: Request) -> Result<Response, PluginError> {
        let addrs = lock(&self.shared.addrs).get(&peer).cloned().unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Request(peer, addrs, req, tx))?;
        match tokio::time::timeout(Duration::from_secs(40), rx).await {
            Ok(Ok(r)) => r.map_err(|e| PluginError::network(e.to_string())),
            Ok(Err(_)) => Err(PluginError::other("the chiral node stopped")),
            Err(_) => Err(PluginError::network(format!("{peer} did not answer in 40 s"))),
        }
    }

    pub fn metrics_of(&self, peer: &PeerId) -> PeerMetrics {
        lock(&self.shared.metrics).get(peer).cloned().unwrap_or_default()
    }

    pub fn update_metrics(&self, peer: PeerId, f: impl FnOnce(&mut PeerMetrics)) {
        f(lock(&self.shared.metrics).entry(peer).or_default())
    }

    /// Serves `entry` under `root`; a node that seeds is a DHT server from then on.
    pub fn add_seed(&self, root: Hash32, entry: Arc<SeedEntry>) {
        lock(&self.shared.seeds).insert(root, entry);
        self.serve();
    }

    pub fn seeds(&self) -> Vec<Arc<SeedEntry>> {
        lock(&self.shared.seeds).values().cloned().collect()
    }

    pub fn remove_seed(&self, id: &str) -> bool {
        let mut seeds = lock(&self.shared.seeds);
        let before = seeds.len();
        seeds.retain(|_, s| s.id != id);
        before != seeds.len()
    }
}

type Served = (request_response::ResponseChannel<Response>, Response);

struct Task {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    routable: watch::Sender<usize>,
    get_records: HashMap<kad::QueryId, (Found, Reply<Found>)>,
    get_providers: HashMap<kad::QueryId, (HashSet<PeerId>, Reply<HashSet<PeerId>>)>,
    puts: HashMap<kad::QueryId, Reply<Result<(), NodeError>>>,
    requests: HashMap<request_response::OutboundRequestId, Reply<Result<Response, NodeError>>>,
    bootstraps: Vec<Reply<()>>,
    bootstrap_query: Option<kad::QueryId>,
    served: (mpsc::UnboundedSender<Served>, mpsc::UnboundedReceiver<Served>),
    /// Per-publisher store quota: the keys under which this node keeps its entries.
    quota: HashMap<PeerId, HashSet<Vec<u8>>>,
}

impl Task {
    async fn run(mut self) {
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    // Every handle is gone: the plugin is being dropped.
                    None => break,
                },
                Some((channel, resp)) = self.served.1.recv() => {
                    let _ = self.swarm.behaviour_mut().chunks.send_response(channel, resp);
                }
            }
        }
    }

    fn kad(&mut self) -> &mut kad::Behaviour<kad::store::MemoryStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    fn update_routable(&mut self) {
        let n: usize = self.kad().kbuckets().map(|b| b.num_entries()).sum();
        self.routable.send_replace(n);
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::GetRecord(key, reply) => {
                let id = self.kad().get_record(kad::RecordKey::new(&key));
                self.get_records.insert(id, (Vec::new(), reply));
            }
            Cmd::PutRecord(key, value, reply) => {
                // Our own entries join those of other publishers this node stores (a put
                // never replaces them); a value that is not a signed set goes out as it is.
                let rkey = kad::RecordKey::new(&key);
                let existing = self.kad().store_mut().get(&rkey).map(|r| r.value.clone());
                let value = match crate::records::SignedSet::decode(&value) {
                    Ok(set) => {
                        match crate::records::merge_local(&key, existing.as_deref(), set.entries, crate::records::now())
                        {
                            Ok(v) => v,
                            Err(e) => {
                                let _ = reply.send(Err(NodeError::Record(e)));
                                return;
                            }
                        }
                    }
                    Err(_) => value,
                };
                let record = Record { key: rkey, value, publisher: None, expires: None };
                match self.kad().put_record(record, Quorum::One) {
                    Ok(id) => {
                        self.puts.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NodeError::Store(e)));
                    }
                }
            }
            Cmd::Provide(key, reply) => match self.kad().start_providing(kad::RecordKey::new(&key)) {
                Ok(id) => {
                    self.puts.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(NodeError::Provide(e)));
                }
            },
            Cmd::GetProviders(key, reply) => {
                let id = self.kad().get_providers(kad::RecordKey::new(&key));
                self.get_providers.insert(id, (HashSet::new(), reply));
            }
            Cmd::Request(peer, mut addrs, req, reply) => {
                addrs.retain(|a| self.swarm.behaviour().chunks.permits(a));
                let id = self.swarm.behaviour_mut().chunks.send_request_with_addresses(&peer, req, addrs);
                self.requests.insert(id, reply);
            }
            Cmd::Serve => self.kad().set_mode(Some(kad::Mode::Server)),
            Cmd::Bootstrap(reply) => {
                if self.bootstrap_query.is_none() {
                    match self.kad().bootstrap() {
                        Ok(id) => self.bootstrap_query = Some(id),
                        Err(_) => {
                            let _ = reply.send(());
                            return;
                        }
                    }
                }
                self.bootstraps.push(reply);
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut l = lock(&self.shared.listen);
                if !l.contains(&address) {
                    l.push(address);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                self.on_identify(peer_id, info)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Chunks(ev)) => self.on_chunks(ev),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.shared.events.debug(format!("dial {peer_id:?} failed: {error}"));
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        let protocols: Vec<String> = info.protocols.iter().map(|p| p.to_string()).collect();
        {
            let mut m = lock(&self.shared.metrics);
            let e = m.entry(peer).or_default();
            e.protocols = protocols;
            e.agent = info.agent_version.clone();
        }
        if info.protocol_version != PROTOCOL_VERSION {
            self.shared.events.info(format!(
                "{peer} speaks {:?}, not {PROTOCOL_VERSION} (signed records): kept out of the routing table",
                chiral_sdk::text::line(&info.protocol_version)
            ));
            self.kad().remove_peer(&peer);
            self.update_routable();
            return;
        }
        let first = *self.routable.borrow() == 0;
        // Kept as told (the routing table answers other nodes with them); what this node
        // dials is filtered at the dial (`Filtered`, `Cmd::Request`).
        lock(&self.shared.addrs).insert(peer, info.listen_addrs.clone());
        // Only DHT servers enter the routing table: a client (a transient `chiral get`) would
        // be handed to other nodes and dialled by them long after it left.
        if info.protocols.contains(&KAD_PROTOCOL) {
            for a in info.listen_addrs {
                self.kad().add_address(&peer, a);
            }
        } else {
            self.kad().remove_peer(&peer);
        }
        self.update_routable();
        // The first peer (usually the bootstrap node) lets us fill the table.
        if first && self.bootstrap_query.is_none() {
            if let Ok(id) = self.kad().bootstrap() {
                self.bootstrap_query = Some(id);
            }
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord { source, record: Some(record), .. } => self.on_put(source, record),
                kad::InboundRequest::AddProvider { record: Some(rec) } => {
                    if let Err(e) = self.kad().store_mut().add_provider(rec) {
                        self.shared.events.debug(format!("provider record not stored: {e}"));
                    }
                }
                _ => {}
            },
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
                QueryResult::GetRecord(r) => {
                    if let Some((found, _)) = self.get_records.get_mut(&id) {
                        if let Ok(GetRecordOk::FoundRecord(pr)) = r {
                            found.push((pr.peer, pr.record.value));
                        }
                    }
                    if step.last {
                        if let Some((found, reply)) = self.get_records.remove(&id) {
                            let _ = reply.send(found);
                        }
                    }
                }
                QueryResult::GetProviders(r) => {
                    if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r {
                        for p in &providers {
                            // Connect while the query still knows their addresses.
                            if *p != self.shared.peer_id && !self.swarm.is_connected(p) {
                                let _ = self.swarm.dial(DialOpts::peer_id(*p).build());
                            }
                        }
                        if let Some((found, _)) = self.get_providers.get_mut(&id) {
                            found.extend(providers);
                        }
                    }
                    if step.last {
                        if let Some((found, reply)) = self.get_providers.remove(&id) {
                            let _ = reply.send(found);
                        }
                    }
                }
                QueryResult::PutRecord(r) => {
                    if let Some(reply) = self.puts.remove(&id) {
                        let _ = reply.send(r.map(|_| ()).map_err(NodeError::Put));
                    }
                }
                QueryResult::StartProviding(r) => {
                    if let Some(reply) = self.puts.remove(&id) {
                        let _ = reply.send(r.map(|_| ()).map_err(NodeError::AddProvider));
                    }
                }
                QueryResult::Bootstrap(_) if step.last && self.bootstrap_query == Some(id) => {
                    self.bootstrap_query = None;
                    for r in self.bootstraps.drain(..) {
                        let _ = r.send(());
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// A record put by `source`: its entries are checked (signatures, bodies, expiry), merged
    /// with what this node stores and bounded; publishers over their quota are refused.
    fn on_put(&mut self, source: PeerId, record: Record) {
        let key = record.key.clone();
        let existing = self.kad().store_mut().get(&key).map(|r| r.value.clone());
        let now = crate::records::now();
        let quota = &self.quota;
        // The bookkeeping itself is bounded: past MAX_QUOTA_PUBLISHERS publishers, new ones are
        // refused until the node restarts.
        let allow = |p: &PeerId| match quota.get(p) {
            Some(keys) => keys.len() < crate::records::MAX_KEYS_PER_PUBLISHER || keys.contains(key.as_ref()),
            None => quota.len() < MAX_QUOTA_PUBLISHERS,
        };
        match crate::records::merge_for_store(key.as_ref(), &record.value, existing.as_deref(), now, allow) {
            Ok(value) => {
                for p in crate::records::publishers(key.as_ref(), &value, now) {
                    self.quota.entry(p).or_default().insert(key.to_vec());
                }
                let merged = Record { key, value, publisher: record.publisher, expires: record.expires };
                if let Err(e) = self.kad().store_mut().put(merged) {
                    self.shared.events.warn(format!("record from {source} not stored: {e}"));
                }
            }
            Err(reason) => self.shared.events.warn(format!("record from {source} rejected: {reason}")),
        }
    }

    fn on_chunks(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message { message, peer, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let root = match &request {
                        Request::Manifest { root } | Request::Chunk { root, .. } => *root,
                    };
                    let seed = lock(&self.shared.seeds).get(&root).cloned();
                    let Some(seed) = seed else {
                        let msg = format!("no content {}", hex::encode(root));
                        let _ =
                            self.swarm.behaviour_mut().chunks.send_response(channel, Response::Error { message: msg });
                        return;
                    };
                    let tx = self.served.0.clone();
                    let events = self.shared.events.clone();
                    tokio::task::spawn_blocking(move || {
                        let resp = match request {
                            Request::Manifest { .. } => seed.manifest(),
                            Request::Chunk { index, .. } => seed.chunk(index),
                        };
                        if let Response::Error { message } = &resp {
                            events.debug(format!("to {peer}: {message}"));
                        }
                        let _ = tx.send((channel, resp));
                    });
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(NodeError::Request { peer, error }));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_identity(dir.path()).unwrap().public().to_peer_id();
        let b = load_identity(dir.path()).unwrap().public().to_peer_id();
        assert_eq!(a, b);
        std::fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(load_identity(dir.path()).is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_multiaddr("0.0.0.0", 0).unwrap().to_string(), "/ip4/0.0.0.0/tcp/0");
        assert_eq!(listen_multiaddr("", 7).unwrap().to_string(), "/ip4/0.0.0.0/tcp/7");
        assert_eq!(listen_multiaddr("::1", 5).unwrap().to_string(), "/ip6/::1/tcp/5");
        assert!(listen_multiaddr("nope", 5).is_err());
    }
}
