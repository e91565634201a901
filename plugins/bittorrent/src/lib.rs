//! # chiral-plugin-bittorrent
//!
//! The native BitTorrent plugin of Chiral.
//!
//! - [`bencode`], [`metainfo`]: parsing (bounded, sanitising) and building torrents; magnet
//!   links through the SDK's [`magnet`];
//! - [`peer_wire`], [`extension`]: sans-IO codecs of the peer protocol, BEP 10 / BEP 9 and the
//!   `chiral` identification message;
//! - [`identity`]: this node's Chiral key (its public half is the Chiral peer id), proofs of it
//!   and their verification;
//! - [`tracker`]: HTTP and UDP trackers (sans-IO parsing + a thin async layer);
//! - [`session`]: one torrent's swarm (peer tasks, block pipeline, verification, bans, seeding);
//! - [`choker`]: the seeding choker (Chiral peers first, one optimistic unchoke rotated every
//!   30 s), a pure state machine;
//! - [`dht`]: BEP 5 through the `mainline` crate (peer lookups, `announce_peer` for seeds);
//! - [`webseed`]: BEP 19 web seeds as HTTP byte-range sources;
//! - this file: the plugin (identifiers, `open_source` = a swarm [`PieceSource`] that falls back
//!   to the web seeds for pieces no peer has, `download` through the SDK engine with the swarm
//!   and one source per web seed, `seed`, `command("create")`, `command("dht")` -> `{"dht":
//!   "ip:port"|null}`) and the shared listener.
//!
//! Options (config `[plugins.bittorrent]`, then per request): `port`, `tracker`, `peer`,
//! `web_seed`, `piece_size`, `private`, `name`, `reputation`, `wallet`, `payment_threshold`,
//! `threads` (the runtime's workers), `max_upload_rate` (bytes/s, all peers), `upload_rate` (a seed's own, inside it), `encryption` (`allow` (default): a plain handshake first, MSE
//! offering RC4 or plaintext when the peer drops it, everything accepted with plaintext chosen when
//! offered; `prefer`: MSE first, RC4 chosen when offered; `require`: RC4 only, both ways; `off`: plaintext only), `dht_bootstrap` (repeatable `host:port`; when given, ONLY these nodes are used and the node
//! answers queries at once (server mode); `none` starts a new network), `dht_port`,
//! `allow_local_peers` (dial loopback and private peers learned from trackers, the DHT and
//! peers even when no tracker, peer or bootstrap node of the download is local; see
//! [`chiral_sdk::dial`]). The DHT is
//! off with the host's `no_dht`, and binds the host's listen address when that is a specific
//! IPv4 address (e.g. 127.0.0.1). The Chiral peer id is not an option: it is the public key of
//! the node's key file (see [`identity`]).

/// The SDK's bounded bencode codec, under the name the plugin's modules and fuzz targets use.
pub use chiral_sdk::bencode;
pub mod choker;
pub mod dht;
pub mod extension;
pub mod identity;
pub mod metainfo;
pub mod mse;
pub mod peer_wire;
pub mod session;
pub mod storage;
pub mod swarm;
pub mod tracker;
pub mod webseed;

/// Magnet links: the SDK's one parser and writer.
pub use chiral_sdk::magnet;

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hasher as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use chiral_sdk::{
    abi::PeerStat,
    capability,
    dial::{redirect_permitted, refuse_named_url, NamedUrl},
    engine,
    listen::ConnLimit,
    options::Opts,
    plugin::BoxFut,
    runtime::PluginRuntime,
    seeds::{SeedTable, Seeded},
    ContentInfo, DownloadOutcome, DownloadRequest, Events, HostConfig, PieceSource, Plugin, PluginDescriptor,
    PluginError, SeedInfo, SeedRequest,
};
use tokio::io::AsyncReadExt as _;

use crate::{
    metainfo::{CreateOptions, Torrent, TorrentMetadata},
    peer_wire::Handshake,
    session::{Mode, Session},
};

/// How long a magnet may take to get its metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one piece may take before `fetch` reports a failure to the engine.
const PIECE_TIMEOUT: Duration = Duration::from_secs(240);

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

pub fn random_u32() -> u32 {
    random_u64() as u32
}

/// The HTTP client's redirect rule (trackers, web seeds, `.torrent` URLs): at most five, and
/// never to a host more local than the one that redirected ([`redirect_permitted`]).
fn follow_redirect(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let from = attempt.previous().last().map(|u| u.as_str().to_string()).unwrap_or_default();
    if attempt.previous().len() > 5 {
        attempt.error("more than 5 redirects")
    } else if !redirect_permitted(&from, attempt.url().as_str()) {
        let to = attempt.url().host_str().unwrap_or_default().to_string();
        attempt.error(format!("redirect to {to} refused: more local than the server that sent it"))
    } else {
        attempt.follow()
    }
}

fn new_peer_id() -> [u8; 20] {
    let mut id = *b"-CH0001-000000000000";
    const ALPHA: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    for b in id[8..].iter_mut() {
        *b = ALPHA[(random_u64() % ALPHA.len() as u64) as usize];
    }
    id
}

/// What every session of this plugin instance shares.
pub struct Shared {
    pub peer_id: [u8; 20],
    pub port: u16,
    pub listen_ip: IpAddr,
    pub advertise_host: String,
    pub http: reqwest::Client,
    pub key: u32,
    /// This node's Chiral key, kept in the plugin's data dir (`chiral_key`).
    pub identity: Arc<identity::Identity>,
    pub reputation: i64,
    pub wallet: Option<String>,
    pub payment_threshold: u64,
    pub runtime: tokio::runtime::Handle,
    /// The DHT node (`None` with `no_dht` or a proxy), started on first use.
    pub dht: Option<Arc<dht::DhtNode>>,
    /// The DHT bootstrap nodes the user gave (`dht_bootstrap`): local ones allow local peers.
    pub dht_bootstrap: Vec<String>,
    /// `allow_local_peers`: dial loopback and private peers whatever the torrent's origins.
    pub allow_local_peers: bool,
    /// The host's proxy: every peer connection, tracker and web seed goes through it; UDP
    /// trackers through its UDP relay when it has one.
    pub proxy: Option<chiral_sdk::net::Proxy>,
    /// Whether the proxy relays UDP (SOCKS5 UDP ASSOCIATE), once asked.
    proxy_udp: tokio::sync::OnceCell<bool>,
    /// Protocol encryption (MSE/PE) for dialled and accepted peers (option `encryption`).
    pub encryption: mse::Policy,
    /// Upload rate shared by every peer connection (option `max_upload_rate`, bytes/s).
    pub upload_rate: Option<Arc<chiral_sdk::rate::RateLimiter>>,
    /// Who gets the Chiral fast lane (the host's `fast_lane` command changes it).
    pub fast_lane: Mutex<swarm::FastLane>,
    /// Our Chiral network key vouching for our Chiral peer id (the host's `link` command).
    pub network_link: Mutex<Option<([u8; 32], [u8; 64])>>,
    /// Chiral network keys with a poor reputation there (the host's `network_reputation`).
    pub poor_network: Mutex<std::collections::HashSet<String>>,
    sessions: Mutex<HashMap<[u8; 20], Weak<Session>>>,
}

impl Shared {
    pub fn register(&self, s: &Arc<Session>) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(s.info_hash, Arc::downgrade(s));
    }
    pub fn unregister(&self, info_hash: &[u8; 20]) {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(info_hash).is_some_and(|w| w.strong_count() == 0 || w.upgrade().is_none()) {
            m.remove(info_hash);
        }
    }
    /// The info hashes of every live session (what an encrypted handshake may name).
    fn info_hashes(&self) -> Vec<[u8; 20]> {
        let m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().filter(|(_, w)| w.strong_count() > 0).map(|(k, _)| *k).collect()
    }
    /// Every live session.
    fn live_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).values().filter_map(Weak::upgrade).collect()
    }
    /// Whether `proxy` relays UDP: asked once (a UDP ASSOCIATE that is then closed).
    pub async fn proxy_relays_udp(&self, proxy: &chiral_sdk::net::Proxy) -> bool {
        *self.proxy_udp.get_or_init(|| async { proxy.udp_associate().await.is_ok() }).await
    }
    pub fn fast_lane(&self) -> swarm::FastLane {
        self.fast_lane.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn find(&self, info_hash: &[u8; 20]) -> Option<Arc<Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(info_hash).and_then(Weak::upgrade)
    }
    pub fn is_self(&self, addr: SocketAddr) -> bool {
        addr.port() == self.port
            && (addr.ip().is_loopback() || addr.ip() == self.listen_ip || self.listen_ip.is_unspecified())
    }
}

struct SeedEntry {
    session: Arc<Session>,
    path: String,
    magnet: String,
}

impl Seeded for SeedEntry {
    fn info(&self, id: &str) -> SeedInfo {
        SeedInfo {
            bytes_served: self.session.uploaded(),
            ..SeedInfo::new(id, self.path.as_str(), [self.magnet.as_str()])
        }
    }
}

/// The plugin.
pub struct BitTorrentPlugin {
    // Dropped first: its shutdown stops every task before the state they use goes away.
    runtime: PluginRuntime,
    shared: Arc<Shared>,
    options: Opts,
    /// Seeds by info hash (hex).
    seeds: SeedTable<SeedEntry>,
}

impl Plugin for BitTorrentPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor::new("bittorrent", env!("CARGO_PKG_VERSION"))
            .schemes(&["magnet"])
            .suffixes(&[".torrent"])
            .capabilities(
                capability::DOWNLOAD
                    | capability::SEED
                    | capability::SOURCE
                    | capability::SEED_MANAGE
                    | capability::PIPELINED,
            )
            .priority(10)
            .description("BitTorrent (native): .torrent files and magnets, trackers, DHT, web seeds, BEP 9/10, seeding and torrent creation")
    }

    fn new(config: HostConfig, events: Events) -> Result<Self, PluginError> {
        let options = Opts::from_abi(&config.options);
        let runtime = PluginRuntime::for_plugin("bittorrent", &options)?;
        let ip: IpAddr = config.listen_addr.as_str().parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let want_port = options.get_port("port")?.unwrap_or(config.listen_port);
        let std_listener = std::net::TcpListener::bind((ip, want_port))
            .or_else(|e| {
                if want_port != 0 {
                    events.warn(format!("bittorrent: port {want_port} is taken ({e}); using a free one"));
                    std::net::TcpListener::bind((ip, 0))
                } else {
                    Err(e)
                }
            })
            .map_err(|e| PluginError::network(format!("cannot listen on {ip}:{want_port}: {e}")))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let handle = runtime.handle();
        // A proxy URL that cannot be used is an error: never a reason to go out directly.
        let proxy = chiral_sdk::net::Proxy::from_config(&config).map_err(|e| PluginError::invalid(e.to_string()))?;
        let http = {
            let _entered = handle.enter();
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("chiral-bittorrent/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::custom(follow_redirect));
            if let Some(p) = &proxy {
                let px = reqwest::Proxy::all(p.url()).map_err(|e| PluginError::invalid(format!("proxy {p}: {e}")))?;
                b = b.proxy(px);
            }
            b.build().map_err(|e| PluginError::other(format!("http client: {e}")))?
        };
        let dht = if config.no_dht {
            None
        } else if let Some(p) = &proxy {
            // The DHT is UDP, which the proxy cannot carry: its socket is never made.
            events.warn(format!(
                "bittorrent: DHT off: a proxy is set ({p}) and DHT traffic is UDP, which cannot go through it"
            ));
            None
        } else {
            let cfg = dht::DhtConfig::from_options(
                &options.get_all("dht_bootstrap"),
                config.listen_addr.as_str(),
                options.get_port("dht_port")?.map(u64::from),
            )
            .map_err(|e| PluginError::invalid(e.to_string()))?;
            Some(Arc::new(dht::DhtNode::new(cfg, events.clone())))
        };
        let encryption = match options.get_str("encryption") {
            None => mse::Policy::default(),
            Some(v) => mse::Policy::parse(v).ok_or_else(|| {
                PluginError::invalid(format!("encryption = {v:?}: expected allow, prefer, require or off"))
            })?,
        };
        let (identity, note) = identity::Identity::load_or_create(Path::new(config.data_dir.as_str()));
        if let Some(note) = note {
            events.warn(format!("bittorrent: {note}"));
        }
        if options.contains("chiral_peer_id") {
            events.warn("bittorrent: option chiral_peer_id ignored (the Chiral peer id comes from the node key)");
        }
        let identity = Arc::new(identity);
        events.info(format!("bittorrent: Chiral peer id {}", identity.id()));
        let shared = Arc::new(Shared {
            peer_id: new_peer_id(),
            port,
            listen_ip: ip,
            advertise_host: config.advertise_host.to_string(),
            http,
            key: random_u32(),
            identity,
            reputation: options.get_u64_in("reputation", 0..=1000)?.map(|r| r as i64).unwrap_or(500),
            wallet: options.get_str("wallet").map(str::to_string),
            payment_threshold: options.get_bytes("payment_threshold")?.unwrap_or(1 << 20).max(1),
            runtime: handle.clone(),
            dht,
            dht_bootstrap: options.get_all("dht_bootstrap"),
            allow_local_peers: options.get_bool("allow_local_peers")?.unwrap_or(false),
            proxy,
            proxy_udp: tokio::sync::OnceCell::new(),
            encryption,
            upload_rate: chiral_sdk::rate::limiter(options.get_bytes("max_upload_rate")?),
            fast_lane: Mutex::new(swarm::FastLane::default()),
            network_link: Mutex::new(None),
            poor_network: Mutex::new(Default::default()),
            sessions: Mutex::new(HashMap::new()),
        });
        let listener = {
            let _entered = handle.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let weak = Arc::downgrade(&shared);
        handle.spawn(listen(listener, weak, events.clone()));
        Ok(Self { runtime, shared, options, seeds: SeedTable::new() })
    }

    fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.handle()
    }

    fn download(self: Arc<Self>, request: DownloadRequest, events: Events) -> BoxFut<DownloadOutcome> {
        Box::pin(async move {
            let opts = self.options.merged(&request.options);
            let torrent = self.resolve(&request.identifier).await?;
            // Web seeds run beside the swarm as sources of their own.
            let source = self.open_swarm(torrent, &opts, false, events.clone()).await?;
            let web = webseed::sources(&self.shared.http, &source.web_seed_urls, &source.meta);
            let connections = match request.connections {
                0 => 8,
                n => n as usize,
            };
            run_engine(source, web, PathBuf::from(request.out_dir.as_str()), connections, &events).await
        })
    }

    fn open_source(self: Arc<Self>, identifier: String, events: Events) -> BoxFut<Arc<dyn PieceSource>> {
        Box::pin(async move {
            let torrent = self.resolve(&identifier).await?;
            let opts = self.options.clone();
            // The host sees one source: web seeds serve the pieces no peer has.
            let src = self.open_swarm(torrent, &opts, true, events).await?;
            Ok(src as Arc<dyn PieceSource>)
        })
    }

    fn seed(self: Arc<Self>, request: SeedRequest, events: Events) -> BoxFut<SeedInfo> {
        Box::pin(async move {
            let opts = self.options.merged(&request.options);
            self.start_seed(request.path.as_str(), &opts, events).await
        })
    }

    fn list_seeds(&self) -> Vec<SeedInfo> {
        self.seeds.list()
    }

    fn stop_seed(&self, id: &str) -> Result<(), PluginError> {
        let s = self.seeds.remove(id)?;
        let _entered = self.runtime.handle().enter();
        s.session.stop();
        Ok(())
    }

    fn command(self: Arc<Self>, name: String, args: Vec<(String, String)>, _events: Events) -> BoxFut<String> {
        Box::pin(async move {
            let arg = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            match name.as_str() {
                "create" => {
                    let opts = Opts::from_pairs(args.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    create_command(opts).await
                }
                // Who gets the Chiral fast lane: `mode=all` (every proven Chiral peer) or
                // `mode=paid` with `behind=` the wallets behind on payment, comma-separated
                // (the host's payment service sends it, docs/payments.md).
                "fast_lane" => {
                    let policy = match arg("mode") {
                        Some("all") | None => swarm::FastLane::AllChiral,
                        Some("paid") => {
                            let behind = arg("behind").unwrap_or_default();
                            let behind: std::collections::HashSet<String> = behind
                                .split(',')
                                .map(|w| w.trim().to_ascii_lowercase())
                                .filter(|w| !w.is_empty())
                                .take(100_000)
                                .collect();
                            swarm::FastLane::Paid { behind }
                        }
                        Some(other) => {
                            return Err(PluginError::invalid(format!(
                                "fast_lane mode {:?}: all or paid",
                                chiral_sdk::text::for_terminal(other, 20)
                            )))
                        }
                    };
                    *self.shared.fast_lane.lock().unwrap_or_else(|p| p.into_inner()) = policy.clone();
                    let sessions = self.shared.live_sessions();
                    for s in &sessions {
                        s.set_fast_lane(policy.clone());
                    }
                    Ok(serde_json::json!({ "sessions": sessions.len() }).to_string())
                }
                // This node's Chiral peer id on BitTorrent (what the Chiral network key vouches
                // for in `link`).
                "chiral_id" => Ok(serde_json::json!({ "id": self.shared.identity.id() }).to_string()),
                // The Chiral network key's signature over our Chiral peer id (chiral_sdk::link,
                // from the Chiral network plugin's `link_proof`): sent in every hello from now.
                "link" => {
                    let mut key = [0u8; 32];
                    let mut sig = [0u8; 64];
                    let ok = hex::decode_to_slice(arg("key").unwrap_or_default(), &mut key).is_ok()
                        && hex::decode_to_slice(arg("signature").unwrap_or_default(), &mut sig).is_ok()
                        && identity::Identity::verify_link(&self.shared.identity.id(), &key, &sig);
                    if !ok {
                        return Err(PluginError::invalid("link: the key and signature do not vouch for our Chiral id"));
                    }
                    *self.shared.network_link.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, sig));
                    Ok(serde_json::json!({ "linked": hex::encode(key) }).to_string())
                }
                // The Chiral network keys whose reputation there is poor (`poor=` hex keys,
                // comma-separated): no fast lane for a peer linked to one.
                "network_reputation" => {
                    let poor: std::collections::HashSet<String> = arg("poor")
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                        .filter(|k| chiral_sdk::link::is_key_hex(k))
                        .take(100_000)
                        .map(str::to_string)
                        .collect();
                    *self.shared.poor_network.lock().unwrap_or_else(|p| p.into_inner()) = poor.clone();
                    let sessions = self.shared.live_sessions();
                    for s in &sessions {
                        s.set_poor_network(poor.clone());
                    }
                    Ok(serde_json::json!({ "poor": poor.len(), "sessions": sessions.len() }).to_string())
                }
                // The info dictionary of a torrent this plugin seeds, for other networks to
                // publish beside the info hash (the Chiral network's info_hash_idx).
                "info_dict" => {
                    let want = arg("info_hash").map(str::to_ascii_lowercase);
                    let want = want.ok_or_else(|| PluginError::invalid("info_dict needs info_hash"))?;
                    let dict = self
                        .seeds
                        .all()
                        .into_iter()
                        .filter(|s| hex::encode(s.session.info_hash) == want)
                        .find_map(|s| s.session.meta().map(|m| hex::encode(&m.info_bytes)));
                    let dict = dict.ok_or_else(|| PluginError::not_found(format!("no seed with info hash {want}")))?;
                    Ok(serde_json::json!({ "info_dict": dict }).to_string())
                }
                // The web seeds of a torrent that a host can open as sources of their own, with
                // the plugin for their scheme (HTTP, FTP): the file's URL for a single-file
                // torrent's `url-list`, a magnet's `ws=` links as given. A multi-file torrent's
                // web seeds stay inside this plugin's swarm source (pieces span files).
                "web_seeds" => {
                    let id = arg("identifier").map(str::to_string);
                    let id = id.ok_or_else(|| PluginError::invalid("web_seeds needs identifier"))?;
                    let urls: Vec<String> = match self.resolve(&id).await? {
                        Torrent::File(m) if !m.multi_file => {
                            m.web_seeds.iter().map(|b| webseed::file_url(b, &m, &[])).collect()
                        }
                        Torrent::File(_) => Vec::new(),
                        Torrent::Magnet(m) => m.web_seeds.clone(),
                    };
                    let urls: Vec<String> = urls
                        .into_iter()
                        .filter(|u| {
                            let l = u.to_ascii_lowercase();
                            ["http://", "https://", "ftp://", "ftps://"].iter().any(|p| l.starts_with(p))
                        })
                        .take(MAX_HOST_WEB_SEEDS)
                        .collect();
                    Ok(serde_json::json!({ "web_seeds": urls }).to_string())
                }
                "dht" => {
                    let addr = match &self.shared.dht {
                        Some(d) => d.addr().await.map(|a| a.to_string()),
                        None => None,
                    };
                    Ok(serde_json::json!({ "dht": addr }).to_string())
                }
                other => Err(PluginError::unsupported(format!("plugin bittorrent has no command {other:?}"))),
            }
        })
    }
}

/// Most web seeds handed to a host as sources of their own (a torrent may list hundreds).
const MAX_HOST_WEB_SEEDS: usize = 8;

fn create_options(opts: &Opts) -> Result<CreateOptions, PluginError> {
    Ok(CreateOptions {
        trackers: opts.get_all("tracker"),
        web_seeds: opts.get_all("web_seed"),
        http_seeds: opts.get_all("http_seed"),
        piece_size: opts.get_bytes("piece_size")?,
        private: opts.flag("private")?,
        name: opts.get_str("name").map(str::to_string),
        reuse_sibling: opts.get_bool("reuse_torrent")?.unwrap_or(true),
    })
}

async fn create_command(opts: Opts) -> Result<String, PluginError> {
    let path = opts.get_str("path").ok_or_else(|| PluginError::invalid("create needs path"))?.to_string();
    let output = opts.get_str("output").ok_or_else(|| PluginError::invalid("create needs output"))?.to_string();
    let co = create_options(&opts)?;
    let p = PathBuf::from(&path);
    let (meta, bytes) = tokio::task::spawn_blocking(move || metainfo::build(&p, &co))
        .await
        .map_err(|e| PluginError::other(format!("hashing task: {e}")))??;
    tokio::fs::write(&output, &bytes).await.map_err(|e| PluginError::io(format!("{output}: {e}")))?;
    Ok(serde_json::json!({
        "torrent": output,
        "info_hash": meta.info_hash_hex(),
        "magnet": meta.magnet(),
        "name": meta.name,
        "length": meta.length,
        "piece_length": meta.piece_length,
        "pieces": meta.piece_count(),
    })
    .to_string())
}

/// Incoming connections the peer listener holds at most; past it, the oldest that has not
/// finished its handshake is closed for the newcomer ([`ConnLimit`]).
const MAX_INCOMING: usize = 1024;

/// Accepts incoming peers and hands each to the session its handshake names.
async fn listen(listener: tokio::net::TcpListener, shared: Weak<Shared>, events: Events) {
    let limit = ConnLimit::new(MAX_INCOMING);
    loop {
        let Ok((mut stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(sh) = shared.upgrade() else { return };
        let Some(conn) = limit.admit() else { continue };
        let events = events.clone();
        tokio::spawn(async move {
            // A plaintext header, else an MSE handshake (answered as the policy allows).
            let mut first = [0u8; 20];
            let read = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut first)) => r,
                _ = conn.evicted() => return,
            };
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let ours = sh.info_hashes();
            let answered = tokio::select! {
                r = mse::respond(stream, first, &ours, sh.encryption) => r,
                _ = conn.evicted() => return,
            };
            let mut stream = match answered {
                Ok(mse::Incoming::Plain(s)) | Ok(mse::Incoming::Encrypted(_, s)) => s,
                Err(e) => {
                    events.debug(format!("bittorrent: incoming peer {addr}: {e}"));
                    return;
                }
            };
            let mut hs = [0u8; peer_wire::HANDSHAKE_LEN];
            let read = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut hs)) => r,
                _ = conn.evicted() => return,
            };
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let Ok(Some(theirs)) = Handshake::decode(&hs) else { return };
            let Some(session) = sh.find(&theirs.info_hash) else {
                events.debug(format!("bittorrent: {addr} asked for unknown torrent {}", hex::encode(theirs.info_hash)));
                return;
            };
            drop(sh);
            if !conn.active() {
                return;
            }
            if let Err(e) = session.clone().accept(stream, addr, theirs).await {
                events.debug(format!("{}: incoming peer {addr}: {e}", session.label));
            }
            drop(conn);
        });
    }
}

impl BitTorrentPlugin {
    /// An identifier as a torrent: a magnet, a local .torrent path, or an http(s) .torrent URL.
    pub async fn resolve(&self, id: &str) -> Result<Torrent, PluginError> {
        let id = id.trim();
        if id.len() > 65_536 {
            return Err(PluginError::unsupported("identifier longer than 64 KiB"));
        }
        let lower = id.to_ascii_lowercase();
        if lower.starts_with("magnet:") {
            return Ok(Torrent::Magnet(magnet::Magnet::parse(id)?));
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let path_part = lower.split(['?', '#']).next().unwrap_or_default();
            if !path_part.ends_with(".torrent") {
                return Err(PluginError::unsupported(format!("{id} is not a .torrent URL")));
            }
            let mut resp = self
                .shared
                .http
                .get(id)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| PluginError::network(format!("{id}: {e}")))?;
            if !resp.status().is_success() {
                let s = resp.status();
                return Err(if s.as_u16() == 404 {
                    PluginError::not_found(format!("HTTP 404: {id}"))
                } else {
                    PluginError::network(format!("HTTP {s}: {id}"))
                });
            }
            let mut body = Vec::new();
            while let Some(c) = resp.chunk().await.map_err(|e| PluginError::network(format!("{id}: {e}")))? {
                if body.len() + c.len() > metainfo::MAX_TORRENT_BYTES {
                    return Err(PluginError::invalid(format!("{id}: torrent file over 64 MiB")));
                }
                body.extend_from_slice(&c);
            }
            return Ok(Torrent::File(metainfo::parse_torrent_file(&body)?));
        }
        let path = id.strip_prefix("file://").unwrap_or(id);
        if path.is_empty() || (lower.contains("://") && !lower.starts_with("file://")) {
            return Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent")));
        }
        let p = Path::new(path);
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) if lower.ends_with(".torrent") => return Err(PluginError::not_found(format!("{path}: {e}"))),
            Err(_) => return Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent"))),
        };
        if !meta.is_file() {
            return Err(PluginError::unsupported(format!("{path} is not a .torrent file")));
        }
        if meta.len() > metainfo::MAX_TORRENT_BYTES as u64 {
            return Err(PluginError::invalid(format!("{path}: torrent file over 64 MiB")));
        }
        let bytes = tokio::fs::read(p).await.map_err(|e| PluginError::io(format!("{path}: {e}")))?;
        Ok(Torrent::File(
            metainfo::parse_torrent_file(&bytes).map_err(|e| PluginError::invalid(format!("{path}: {e}")))?,
        ))
    }

    /// Joins the swarm of `torrent` and returns it as a piece source (waits for a magnet's
    /// metadata).
    ///
    /// With `web_fallback`, the source's `fetch` takes a piece no connected peer has from the
    /// torrent's web seeds (BEP 19), checking its SHA-1 first.
    async fn open_swarm(
        &self,
        torrent: Torrent,
        opts: &Opts,
        web_fallback: bool,
        events: Events,
    ) -> Result<Arc<SwarmSource>, PluginError> {
        let (info_hash, meta, mut trackers, mut peers, peer_names, web_seed_urls) = match torrent {
            Torrent::File(m) => (
                m.info_hash,
                Some(Arc::new(m.clone())),
                m.trackers.clone(),
                Vec::new(),
                Vec::new(),
                m.web_seeds.clone(),
            ),
            Torrent::Magnet(mg) => (
                mg.info_hash,
                None,
                mg.trackers.iter().map(|t| vec![t.clone()]).collect(),
                mg.peers.clone(),
                mg.peer_names.clone(),
                mg.web_seeds.clone(),
            ),
        };
        peers.extend(resolve_peer_names(peer_names, Duration::from_secs(5)).await);
        // What the torrent names is checked (`refuse_named_url`); what the user adds is not.
        let named_ok = |url: &String, what: NamedUrl| match refuse_named_url(url, what) {
            None => true,
            Some(why) => {
                let what = if what == NamedUrl::Tracker { "tracker" } else { "web seed" };
                events.warn(format!("bittorrent: {what} {} skipped: {why}", chiral_sdk::text::line(url)));
                false
            }
        };
        for tier in trackers.iter_mut() {
            tier.retain(|t| named_ok(t, NamedUrl::Tracker));
        }
        trackers.retain(|tier| !tier.is_empty());
        let web_seed_urls: Vec<String> = web_seed_urls
            .into_iter()
            .filter(|u| named_ok(u, NamedUrl::WebSeed))
            .chain(opts.get_all("web_seed"))
            .filter(|u| {
                let l = u.to_ascii_lowercase();
                l.starts_with("http://") || l.starts_with("https://")
            })
            .collect();
        for t in opts.get_all("tracker") {
            trackers.push(vec![t]);
        }
        let session = Session::new(
            self.shared.clone(),
            info_hash,
            meta,
            trackers.clone(),
            Mode::Leech,
            self.shared.upload_rate.clone(),
            events.clone(),
        );
        self.shared.register(&session);
        let guard = StopOnDrop(session.clone());
        for p in peers.iter().copied().chain(opts.get_all("peer").iter().filter_map(|p| p.parse().ok())) {
            session.allow_peer(p);
            session.connect(p);
        }
        if !trackers.is_empty() {
            session.spawn(tokio::spawn(session.clone().announce_loop()));
        }
        session.spawn(tokio::spawn(session.clone().redial_loop()));
        session.spawn(tokio::spawn(session.clone().tick_loop()));
        let private = session.meta().is_some_and(|m| m.private);
        match &self.shared.dht {
            Some(dht) if !private => {
                let first_wait = if trackers.is_empty() && peers.is_empty() && web_seed_urls.is_empty() {
                    Duration::ZERO
                } else {
                    Duration::from_secs(10)
                };
                session.spawn(tokio::spawn(session.clone().dht_lookup_loop(dht.clone(), first_wait)));
            }
            _ if trackers.is_empty() && peers.is_empty() && web_seed_urls.is_empty() => {
                let why = if private { "private torrent" } else { "DHT disabled" };
                events.warn(format!("{}: no trackers and no peers given ({why})", session.label));
            }
            _ => {}
        }
        let meta = match session.meta() {
            Some(m) => m.clone(),
            None => tokio::time::timeout(METADATA_TIMEOUT, session.wait_meta()).await.map_err(|_| {
                PluginError::network(format!("{}: no peer sent the metadata in {METADATA_TIMEOUT:?}", session.label))
            })?,
        };
        let info = content_info(&meta, &session.label);
        let web = if web_fallback { webseed::sources(&self.shared.http, &web_seed_urls, &meta) } else { Vec::new() };
        if !web_seed_urls.is_empty() {
            events.info(format!(
                "{}: {} web seed(s): {}",
                session.label,
                web_seed_urls.len(),
                web_seed_urls.join(", ")
            ));
        }
        Ok(Arc::new(SwarmSource { session: guard, meta, info, web, web_seed_urls, next_web: AtomicU64::new(0) }))
    }

    async fn start_seed(&self, path: &str, opts: &Opts, events: Events) -> Result<SeedInfo, PluginError> {
        let p = PathBuf::from(path);
        if !p.exists() {
            return Err(PluginError::not_found(format!("{path}: no such file or folder")));
        }
        let co = create_options(opts)?;
        let pp = p.clone();
        let (mut meta, _) = tokio::task::spawn_blocking(move || metainfo::build(&pp, &co))
            .await
            .map_err(|e| PluginError::other(format!("hashing task: {e}")))??;
        let id = meta.info_hash_hex();
        if let Some(s) = self.seeds.get(&id) {
            return Ok(s.info(&id));
        }
        let trackers: Vec<String> = opts.get_all("tracker");
        meta.trackers = trackers.iter().map(|t| vec![t.clone()]).collect();
        let storage = storage::Storage::open(&meta, &metainfo::disk_paths(&meta, &p))?;
        let meta = Arc::new(meta);
        let session = Session::new(
            self.shared.clone(),
            meta.info_hash,
            Some(meta.clone()),
            meta.trackers.clone(),
            Mode::Seed(storage),
            chiral_sdk::rate::seed_limiter(opts.get_bytes("upload_rate")?, &self.shared.upload_rate),
            events.clone(),
        );
        self.shared.register(&session);
        if !meta.trackers.is_empty() {
            session.spawn(tokio::spawn(session.clone().announce_loop()));
        }
        // The address peers reach us at: `--advertise`, else the address we listen on (an IPv6
        // one too), else loopback for a wildcard listener.
        let host = if !self.shared.advertise_host.is_empty() {
            self.shared.advertise_host.clone()
        } else if self.shared.listen_ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            self.shared.listen_ip.to_string()
        };
        let mut magnet = meta.magnet();
        magnet.push_str("&x.pe=");
        magnet.push_str(&magnet::percent_encode(magnet::host_port(&host, self.shared.port).as_bytes()));
        session.spawn(tokio::spawn(session.clone().tick_loop()));
        let dht = match &self.shared.dht {
            Some(dht) if !meta.private => {
                session.spawn(tokio::spawn(session.clone().dht_announce_loop(dht.clone())));
                // The node usually starts in milliseconds; never hold the seed up for long.
                match tokio::time::timeout(Duration::from_secs(5), dht.addr()).await {
                    Ok(Some(a)) => format!("DHT {a}"),
                    Ok(None) => "DHT failed to start".to_string(),
                    Err(_) => "DHT still starting".to_string(),
                }
            }
            Some(_) => "no DHT (private torrent)".to_string(),
            None => "DHT off".to_string(),
        };
        events.info(format!(
            "bittorrent: seeding {} ({} bytes, {} pieces of {}) on port {}, {dht}",
            meta.name,
            meta.length,
            meta.piece_count(),
            meta.piece_length,
            self.shared.port
        ));
        let entry = SeedEntry { session, path: path.to_string(), magnet };
        match self.seeds.try_insert(&id, entry) {
            Ok(s) => Ok(s.info(&id)),
            // The same content seeded twice at once: the first one serves.
            Err((there, refused)) => {
                refused.session.stop();
                self.shared.register(&there.session);
                Ok(there.info(&id))
            }
        }
    }

    /// The port peers reach this plugin on.
    pub fn port(&self) -> u16 {
        self.shared.port
    }
}

pub fn content_info(meta: &TorrentMetadata, label: &str) -> ContentInfo {
    let mut info = ContentInfo::new(meta.name.clone(), meta.length)
        .sha1_pieces(meta.piece_length, meta.pieces.clone())
        .label(label);
    if meta.multi_file {
        for f in &meta.files {
            info = info.file(f.joined(), f.offset, f.length);
        }
    }
    info
}

struct StopOnDrop(Arc<Session>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A swarm as a piece source for the engine: verified pieces, per-piece availability.
pub struct SwarmSource {
    session: StopOnDrop,
    meta: Arc<TorrentMetadata>,
    info: ContentInfo,
    /// Web seeds `fetch` falls back to (empty when they are sources of their own).
    web: Vec<Arc<webseed::WebSeedSource>>,
    web_seed_urls: Vec<String>,
    next_web: AtomicU64,
}

impl SwarmSource {
    pub fn session(&self) -> &Arc<Session> {
        &self.session.0
    }
}

impl PieceSource for SwarmSource {
    fn info(&self) -> ContentInfo {
        self.info.clone()
    }

    fn availability(&self, piece_length: u64) -> Vec<u32> {
        if piece_length != self.meta.piece_length {
            return Vec::new();
        }
        self.session.0.availability()
    }

    fn peers(&self) -> Vec<PeerStat> {
        self.session.0.peer_stats()
    }

    fn set_other_sources(&self, count: u32) {
        self.session.0.set_read_ahead(count == 0);
    }

    /// Every piece `fetch` returns passed its SHA-1 from the torrent (peers' pieces in the
    /// swarm, web seeds' in `piece_from_web_seeds`).
    fn checks_pieces(&self) -> bool {
        true
    }

    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let session = self.session.0.clone();
        let meta = self.meta.clone();
        let web = self.web.clone();
        let start_web = self.next_web.fetch_add(1, Ordering::Relaxed) as usize;
        Box::pin(async move {
            let get_piece = |i: u32| {
                let session = session.clone();
                let web = web.clone();
                let meta = meta.clone();
                async move {
                    if !web.is_empty() && !session.has_holder(i) {
                        if let Some(p) = piece_from_web_seeds(&web, start_web, &meta, i).await {
                            return Ok(p);
                        }
                    }
                    tokio::time::timeout(PIECE_TIMEOUT, session.fetch_piece(i)).await.map_err(|_| {
                        PluginError::network(format!("{}: piece {i} not received in {PIECE_TIMEOUT:?}", session.label))
                    })?
                }
            };
            let end = offset.checked_add(length).filter(|e| *e <= meta.length).ok_or_else(|| {
                PluginError::invalid(format!("range {offset}+{length} is outside the {} bytes", meta.length))
            })?;
            if length == 0 {
                return Ok(Vec::new());
            }
            let first = (offset / meta.piece_length) as u32;
            let last = ((end - 1) / meta.piece_length) as u32;
            if first == last && offset.is_multiple_of(meta.piece_length) && length == meta.piece_len(first) {
                return get_piece(first).await;
            }
            let mut out = Vec::with_capacity(length as usize);
            for i in first..=last {
                let piece = get_piece(i).await?;
                let pstart = i as u64 * meta.piece_length;
                let s = offset.max(pstart) - pstart;
                let e = end.min(pstart + piece.len() as u64) - pstart;
                out.extend_from_slice(&piece[s as usize..e as usize]);
            }
            Ok(out)
        })
    }
}

/// `x.pe` peers given by name (the magnet parser bounds how many): one address each, all
/// looked up at once, each within `limit`; names that do not resolve are left out.
async fn resolve_peer_names(names: Vec<String>, limit: Duration) -> Vec<SocketAddr> {
    let lookups = names.into_iter().map(|name| async move {
        match tokio::time::timeout(limit, tokio::net::lookup_host(name)).await {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => None,
        }
    });
    futures::future::join_all(lookups).await.into_iter().flatten().collect()
}

/// Piece `i` from the first web seed (round robin from `start`) whose bytes match its hash.
async fn piece_from_web_seeds(
    web: &[Arc<webseed::WebSeedSource>],
    start: usize,
    meta: &TorrentMetadata,
    i: u32,
) -> Option<Vec<u8>> {
    let want = meta.piece_hash(i)?;
    let off = i as u64 * meta.piece_length;
    for k in 0..web.len() {
        let w = &web[(start + k) % web.len()];
        match w.read(off, meta.piece_len(i)).await {
            Ok(p) if chiral_sdk::verify::sha1(&p)[..] == *want => return Some(p),
            _ => continue,
        }
    }
    None
}

/// A whole download through the SDK engine over the swarm source and the web seeds: progress
/// carries the swarm's live peer count (at most ten events a second), and the outcome has one
/// line per peer that delivered, then the web seeds'.
async fn run_engine(
    source: Arc<SwarmSource>,
    web: Vec<Arc<webseed::WebSeedSource>>,
    out_dir: PathBuf,
    slots: usize,
    events: &Events,
) -> Result<DownloadOutcome, PluginError> {
    let session = source.session().clone();
    let mut opts = engine::Options::new(out_dir);
    opts.slots_per_source = slots;
    // A swarm recovers by itself (other peers, bans): give it room before the engine gives up.
    opts.max_failures = 5;
    opts.max_bad_pieces = 1000;
    let peers = || session.peer_count() as u32;
    let per_source = |outcome: &engine::Outcome| {
        let mut lines: Vec<(String, u64)> =
            session.peer_bytes().into_iter().filter(|(_, d, _)| *d > 0).map(|(l, d, _)| (l, d)).collect();
        // The web seeds' own lines (the swarm's is split per peer above).
        lines.extend(outcome.sources.iter().skip(1).filter(|s| s.bytes > 0).map(|s| (s.label.clone(), s.bytes)));
        if lines.is_empty() {
            lines = outcome.sources.iter().map(|s| (s.label.clone(), s.bytes)).collect();
        }
        lines
    };
    let report = engine::PluginReport::default()
        .peers(&peers)
        .progress_every(Duration::from_millis(100))
        .per_source(&per_source);
    let mut sources: Vec<Arc<dyn PieceSource>> = vec![source];
    sources.extend(web.into_iter().map(|w| w as Arc<dyn PieceSource>));
    engine::download_for_plugin_with(sources, &opts, events, &report).await
}

chiral_sdk::export_plugin!(BitTorrentPlugin);

#[cfg(test)]
mod tests;
