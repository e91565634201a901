//! The tokio shell around one torrent's [`Swarm`] state machine: a connection task per peer
//! (framed reads with the peer-wire codec, a writer with a byte-bounded queue and a write
//! timeout), disk reads and piece hashing on blocking threads, a timer, trackers and the DHT.
//!
//! The swarm sits under one `std::sync::Mutex` with the peers' outgoing channels. A call into
//! it drains its actions before the lock is released: frames for peers are queued to their
//! channels under the lock (cheap, and keeps each peer's frames in order); everything else —
//! disk reads, hashing, handing pieces to the engine, events — happens after, with no lock.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use chiral_sdk::{abi::PeerStat, dial::DialPolicy, net, Events, PluginError};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, WriteHalf},
    sync::{mpsc, oneshot, Notify},
};

use crate::{
    identity::Identity,
    metainfo::TorrentMetadata,
    mse::{self, PeerStream},
    peer_wire::{self, Frame, Handshake},
    storage::Storage,
    swarm::{Action, Level, Local, PeerKey, Refused, Swarm, Want, WantError},
    tracker, Shared,
};

/// A peer whose socket takes nothing for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the swarm's timers run.
const TICK: Duration = Duration::from_secs(1);
/// Bytes written to a socket in one call at most (frames are gathered up to this).
const WRITE_BATCH: usize = 256 << 10;

type Waiter = oneshot::Sender<Result<Vec<u8>, PluginError>>;

/// What a connection's writer is told.
enum Out {
    Bytes(Vec<u8>),
    Close(String),
}

struct Inner {
    swarm: Swarm<Waiter>,
    conns: HashMap<PeerKey, mpsc::UnboundedSender<Out>>,
}

/// Seeding (all pieces on disk) or downloading.
pub enum Mode {
    Seed(Storage),
    Leech,
}

pub struct Session {
    pub info_hash: [u8; 20],
    meta: OnceLock<Arc<TorrentMetadata>>,
    mode: Mode,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
    pub meta_ready: Notify,
    trackers: Mutex<Vec<Vec<String>>>,
    /// Which peer addresses from trackers, the DHT and peers may be dialled.
    policy: Mutex<DialPolicy>,
    events: Events,
    pub label: String,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// What every upload of this torrent pays: a seed's own `upload_rate` inside the plugin's
    /// `max_upload_rate`, or the plugin's alone.
    upload_rate: Option<Arc<chiral_sdk::rate::RateLimiter>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One `fetch_piece` waiting for its piece; dropped before the piece came (the engine
/// cancelled the request), it tells the swarm, which may then stop fetching the piece.
struct Waiting<'a> {
    session: &'a Arc<Session>,
    index: u32,
    ticket: Option<u64>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.session.with(|s| {
                s.unwant(self.index, t, Instant::now());
            });
        }
    }
}

/// Why a connection to a peer ended (or never joined the swarm).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error(transparent)]
    Wire(#[from] peer_wire::WireError),
    #[error("short handshake")]
    ShortHandshake,
    #[error("peer answered with another info hash")]
    OtherInfoHash,
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("closed by peer")]
    Closed,
    /// The writer ended: the swarm dropped the peer (its reason), the socket failed, or the
    /// peer stopped reading.
    #[error("{0}")]
    Ended(String),
    #[error(transparent)]
    Mse(#[from] mse::MseError),
}

impl ConnError {
    /// Whether the peer closed or reset the connection (before its handshake: it refused ours).
    fn is_dropped(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            Self::Closed => true,
            Self::Io(e) => matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe),
            _ => false,
        }
    }
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        info_hash: [u8; 20],
        meta: Option<Arc<TorrentMetadata>>,
        trackers: Vec<Vec<String>>,
        mode: Mode,
        upload_rate: Option<Arc<chiral_sdk::rate::RateLimiter>>,
        events: Events,
    ) -> Arc<Self> {
        let local = Local {
            peer_id: shared.peer_id,
            port: shared.port,
            identity: shared.identity.clone(),
            reputation: shared.reputation,
            wallet: shared.wallet.clone(),
            payment_threshold: shared.payment_threshold,
            network_link: *shared.network_link.lock().unwrap_or_else(|p| p.into_inner()),
        };
        let seeding = matches!(mode, Mode::Seed(_));
        let mut swarm = Swarm::new(info_hash, local, seeding, meta.clone(), trackers.clone(), crate::random_u64());
        swarm.set_fast_lane(shared.fast_lane(), Instant::now());
        swarm.set_poor_network(shared.poor_network.lock().unwrap_or_else(|p| p.into_inner()).clone(), Instant::now());
        let policy = if shared.allow_local_peers {
            DialPolicy::any()
        } else {
            DialPolicy::from_origins(trackers.iter().flatten().chain(&shared.dht_bootstrap))
        };
        let s = Arc::new(Self {
            info_hash,
            meta: OnceLock::new(),
            mode,
            shared,
            inner: Mutex::new(Inner { swarm, conns: HashMap::new() }),
            meta_ready: Notify::new(),
            trackers: Mutex::new(trackers),
            policy: Mutex::new(policy),
            events,
            label: format!("bittorrent:{}", &hex::encode(info_hash)[..12]),
            tasks: Mutex::new(Vec::new()),
            upload_rate,
        });
        if let Some(m) = meta {
            let _ = s.meta.set(m);
        }
        s
    }

    /// Runs `f` on the swarm, then carries out what it asked for.
    fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut Swarm<Waiter>) -> R) -> R {
        self.with_inner(|i| f(&mut i.swarm))
    }

    /// Runs `f` under the lock, then carries out the swarm's actions: frames to peers and
    /// disconnects under the lock, the rest after it is released.
    fn with_inner<R>(self: &Arc<Self>, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut later = Vec::new();
        let r = {
            let mut inner = lock(&self.inner);
            let r = f(&mut inner);
            let Inner { swarm, conns } = &mut *inner;
            while let Some(a) = swarm.poll_action() {
                match a {
                    Action::Send { peer, bytes } => {
                        if let Some(tx) = conns.get(&peer) {
                            let _ = tx.send(Out::Bytes(bytes));
                        }
                    }
                    Action::Disconnect { peer, reason } => {
                        if let Some(tx) = conns.remove(&peer) {
                            let _ = tx.send(Out::Close(reason));
                        }
                    }
                    other => later.push(other),
                }
            }
            r
        };
        for a in later {
            self.carry_out(a);
        }
        r
    }

    fn carry_out(self: &Arc<Self>, a: Action<Waiter>) {
        match a {
            Action::Send { .. } | Action::Disconnect { .. } => unreachable!("done under the lock"),
            Action::Read { peer, blocks } => self.read_blocks(peer, blocks),
            Action::Verify { index, data } => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || {
                    let good = me
                        .meta()
                        .and_then(|m| m.piece_hash(index))
                        .is_some_and(|h| chiral_sdk::verify::sha1(&data) == h);
                    me.with(|s| s.checked(index, data, good, Instant::now()));
                });
            }
            Action::Deliver { data, to, .. } => {
                let mut to = to.into_iter();
                let last = to.next_back();
                for w in to {
                    let _ = w.send(Ok(data.clone()));
                }
                if let Some(w) = last {
                    let _ = w.send(Ok(data));
                }
            }
            Action::Cancel { to } => {
                for w in to {
                    let _ = w.send(Err(PluginError::cancelled()));
                }
            }
            Action::Dial(addrs) => {
                for a in addrs {
                    self.connect(a);
                }
            }
            Action::Metadata(m) => {
                let mut m = (*m).clone();
                m.trackers = lock(&self.trackers).clone();
                let _ = self.meta.set(Arc::new(m));
                self.meta_ready.notify_waiters();
            }
            Action::Log(Level::Debug, m) => self.events.debug(m),
            Action::Log(Level::Info, m) => self.events.info(m),
            Action::Log(Level::Warn, m) => self.events.warn(m),
            Action::Payment { peer, wallet, bytes } => self.events.payment_required(peer, wallet, bytes),
        }
    }

    /// Reads blocks for `peer` from the content on a blocking thread (no lock held) and queues
    /// them to its writer as `piece` messages.
    fn read_blocks(self: &Arc<Self>, peer: PeerKey, blocks: Vec<(u32, u32, u32)>) {
        let Some(meta) = self.meta().cloned() else { return };
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let Mode::Seed(storage) = &me.mode else { return };
            let len: usize = blocks.iter().map(|(_, _, l)| 13 + *l as usize).sum();
            let mut out = Vec::with_capacity(len);
            for (index, begin, length) in blocks {
                let at = out.len();
                peer_wire::piece_header(index, begin, length as usize, &mut out);
                out.resize(at + 13 + length as usize, 0);
                let offset = index as u64 * meta.piece_length + begin as u64;
                if let Err(e) = storage.read_at(offset, &mut out[at + 13..]) {
                    me.with(|s| s.read_failed(peer, e.to_string()));
                    return;
                }
            }
            if let Some(tx) = lock(&me.inner).conns.get(&peer) {
                let _ = tx.send(Out::Bytes(out));
            }
        });
    }

    pub fn meta(&self) -> Option<&Arc<TorrentMetadata>> {
        self.meta.get()
    }

    pub fn is_seed(&self) -> bool {
        matches!(self.mode, Mode::Seed(_))
    }

    /// Waits until the metadata is known.
    pub async fn wait_meta(&self) -> Arc<TorrentMetadata> {
        loop {
            let notified = self.meta_ready.notified();
            if let Some(m) = self.meta.get() {
                return m.clone();
            }
            notified.await;
        }
    }

    pub fn spawn(&self, handle: tokio::task::JoinHandle<()>) {
        lock(&self.tasks).push(handle.abort_handle());
    }

    fn swarm<R>(&self, f: impl FnOnce(&Swarm<Waiter>) -> R) -> R {
        f(&lock(&self.inner).swarm)
    }

    pub fn peer_count(&self) -> usize {
        self.swarm(|s| s.peer_count())
    }

    pub fn uploaded(&self) -> u64 {
        self.swarm(|s| s.totals().uploaded)
    }

    /// Every peer met so far (connected now or gone) with its totals, one entry per address.
    pub fn peer_stats(&self) -> Vec<PeerStat> {
        self.swarm(|s| s.peer_stats())
    }

    /// Per-piece holder counts (at least 1: the swarm may still find a holder).
    pub fn availability(&self) -> Vec<u32> {
        self.swarm(|s| s.availability())
    }

    /// Whether a connected peer has piece `index` (or it is fetched already).
    pub fn has_holder(&self, index: u32) -> bool {
        self.swarm(|s| s.has_holder(index))
    }

    fn stopped(&self) -> bool {
        self.swarm(|s| s.is_stopped())
    }

    /// Stops every task of this session (peers, timers, announcer) and tells the trackers.
    pub fn stop(self: &Arc<Self>) {
        if self.stopped() {
            return;
        }
        self.with(|s| s.stop());
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        self.shared.unregister(&self.info_hash);
        // Best effort `stopped` announce.
        let me = self.clone();
        let announce = async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), me.announce_once(tracker::Event::Stopped)).await;
        };
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(announce);
        } else {
            drop(self.shared.runtime.spawn(announce));
        }
    }

    // ---------- the engine side: fetching pieces ----------

    /// A verified piece from the swarm.
    pub async fn fetch_piece(self: &Arc<Self>, index: u32) -> Result<Vec<u8>, PluginError> {
        self.wait_meta().await;
        let (tx, rx) = oneshot::channel();
        let ticket = match self.with(|s| s.want(index, tx, Instant::now())) {
            Ok(Want::Ready(d, _)) => return Ok(d),
            Ok(Want::Waiting(t)) => t,
            Err(WantError::Stopped) => return Err(PluginError::cancelled()),
            Err(e) => return Err(PluginError::invalid(e.to_string())),
        };
        let mut waiting = Waiting { session: self, index, ticket: Some(ticket) };
        let r = rx.await.unwrap_or_else(|_| Err(PluginError::cancelled()));
        waiting.ticket = None;
        r
    }

    /// Who gets the Chiral fast lane from now on.
    pub fn set_fast_lane(self: &Arc<Self>, policy: crate::swarm::FastLane) {
        self.with(|s| s.set_fast_lane(policy, Instant::now()));
    }

    pub fn set_poor_network(self: &Arc<Self>, poor: std::collections::HashSet<String>) {
        self.with(|s| s.set_poor_network(poor, Instant::now()));
    }

    /// Reads ahead of the engine only when `on`: the engine says whether this swarm is the
    /// download's only source.
    pub fn set_read_ahead(self: &Arc<Self>, on: bool) {
        self.with(|s| s.set_read_ahead(on, Instant::now()));
    }

    /// The swarm's timers (request timeouts, end game, keep-alives, the optimistic unchoke).
    pub async fn tick_loop(self: Arc<Self>) {
        let mut t = tokio::time::interval(TICK);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            if self.stopped() {
                return;
            }
            self.with(|s| s.tick(Instant::now()));
        }
    }

    // ---------- connections ----------

    /// A peer the user or the magnet named: it is dialled, and peers as local as it are too.
    pub fn allow_peer(&self, addr: SocketAddr) {
        lock(&self.policy).widen_to(addr);
    }

    /// Dials `addr` unless known, banned, busy, or a local address this download has no
    /// reason to reach ([`DialPolicy`]).
    pub fn connect(self: &Arc<Self>, addr: SocketAddr) {
        if !lock(&self.policy).permits(addr) {
            self.events.debug(format!("{}: not dialling {addr}: a local address from the network", self.label));
            return;
        }
        if self.shared.is_self(addr) || !self.with(|s| s.should_dial(addr)) {
            return;
        }
        let me = self.clone();
        let h = tokio::spawn(async move {
            let r = me.dial(addr).await;
            me.with(|s| s.dial_ended(addr));
            if let Err(e) = r {
                me.events.debug(format!("{}: peer {addr}: {e}", me.label));
            }
        });
        self.spawn(h);
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<(), ConnError> {
        let (stream, theirs) = if self.shared.encryption == mse::Policy::Allow {
            // Plaintext first; a peer that drops a plain handshake requires encryption.
            match self.handshake(PeerStream::plain(self.tcp_to(addr).await?)).await {
                Ok(done) => done,
                Err(e) if e.is_dropped() => {
                    self.events
                        .debug(format!("{}: peer {addr} dropped a plain handshake ({e}); trying MSE", self.label));
                    let stream =
                        mse::initiate(self.tcp_to(addr).await?, &self.info_hash, mse::Policy::Allow.provide()).await?;
                    self.handshake(stream).await?
                }
                Err(e) => return Err(e),
            }
        } else {
            self.handshake(self.open_stream(addr).await?).await?
        };
        self.run_peer(stream, addr, theirs).await
    }

    /// Our BitTorrent handshake out, the peer's in (it must name this torrent).
    async fn handshake(&self, mut stream: PeerStream) -> Result<(PeerStream, Handshake), ConnError> {
        let ours =
            Handshake { reserved: peer_wire::reserved(false), info_hash: self.info_hash, peer_id: self.shared.peer_id };
        stream.write_all(&ours.encode()).await?;
        let mut hs = [0u8; peer_wire::HANDSHAKE_LEN];
        tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut hs))
            .await
            .map_err(|_| ConnError::Timeout("handshake"))??;
        let theirs = Handshake::decode(&hs)?.ok_or(ConnError::ShortHandshake)?;
        if theirs.info_hash != self.info_hash {
            return Err(ConnError::OtherInfoHash);
        }
        Ok((stream, theirs))
    }

    /// A TCP connection to `addr`, through the proxy when there is one.
    async fn tcp_to(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream, ConnError> {
        tokio::time::timeout(Duration::from_secs(10), net::dial_addr(self.shared.proxy.as_ref(), addr))
            .await
            .map_err(|_| ConnError::Timeout("connect"))?
            .map_err(ConnError::from)
    }

    /// A connection to `addr` encrypted as the `encryption` policy says (`allow` is handled by
    /// [`Self::dial`]): `prefer` tries MSE first and dials again in plaintext when the peer does
    /// not answer it; `require` accepts RC4 only.
    async fn open_stream(&self, addr: SocketAddr) -> Result<PeerStream, ConnError> {
        let policy = self.shared.encryption;
        if policy == mse::Policy::Off {
            return Ok(PeerStream::plain(self.tcp_to(addr).await?));
        }
        match mse::initiate(self.tcp_to(addr).await?, &self.info_hash, policy.provide()).await {
            Ok(s) => Ok(s),
            Err(e) if policy == mse::Policy::Require => Err(ConnError::Mse(e)),
            Err(e) => {
                self.events.debug(format!("{}: peer {addr}: {e}; trying plaintext", self.label));
                Ok(PeerStream::plain(self.tcp_to(addr).await?))
            }
        }
    }

    /// An incoming connection whose handshake named this torrent.
    pub async fn accept(
        self: Arc<Self>,
        mut stream: PeerStream,
        addr: SocketAddr,
        theirs: Handshake,
    ) -> Result<(), ConnError> {
        let ours =
            Handshake { reserved: peer_wire::reserved(false), info_hash: self.info_hash, peer_id: self.shared.peer_id };
        stream.write_all(&ours.encode()).await?;
        self.run_peer(stream, addr, theirs).await
    }

    async fn run_peer(
        self: &Arc<Self>,
        stream: PeerStream,
        addr: SocketAddr,
        theirs: Handshake,
    ) -> Result<(), ConnError> {
        let _ = stream.get_ref().set_nodelay(true);
        let (mut rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel::<Out>();
        let nonce = Identity::new_nonce().to_vec();
        let key = self.with_inner(|i| {
            let k = i.swarm.connected(addr, theirs.peer_id, theirs.supports_extensions(), nonce, Instant::now())?;
            i.conns.insert(k, tx);
            Ok::<_, Refused>(k)
        })?;
        let mut writer = tokio::spawn(writer(self.clone(), key, wr, rx));
        struct Guard<'a>(&'a Arc<Session>, PeerKey, tokio::task::AbortHandle);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                let key = self.1;
                self.0.with_inner(|i| {
                    i.conns.remove(&key);
                    i.swarm.disconnected(key);
                });
                self.2.abort();
            }
        }
        let _guard = Guard(self, key, writer.abort_handle());
        self.events.debug(format!("{}: connected to {addr}", self.label));
        let mut buf = BytesMut::with_capacity(256 << 10);
        loop {
            tokio::select! {
                r = rd.read_buf(&mut buf) => {
                    if r? == 0 {
                        return Err(ConnError::Closed);
                    }
                    let count = self.meta().map(|m| m.piece_count());
                    let max = peer_wire::max_frame(count);
                    let bitfield_len = count.map(|c| (c as usize).div_ceil(8));
                    // Every whole frame in one step of the swarm; blocks go from `buf` straight
                    // into their piece.
                    let now = Instant::now();
                    let mut used = 0;
                    let bad = self.with(|s| loop {
                        match peer_wire::decode_frame(&buf[used..], max, bitfield_len) {
                            Ok(Some((frame, n))) => {
                                used += n;
                                match frame {
                                    Frame::Block { index, begin, data } => s.received_block(key, index, begin, data, now),
                                    Frame::Message(m) => s.received(key, m, now),
                                }
                            }
                            Ok(None) => break None,
                            Err(e) => break Some(e),
                        }
                    });
                    buf.advance(used);
                    if let Some(e) = bad {
                        return Err(e.into());
                    }
                    if buf.capacity() - buf.len() < 64 << 10 {
                        buf.reserve(128 << 10);
                    }
                }
                r = &mut writer => {
                    return Err(ConnError::Ended(r.ok().flatten().unwrap_or_else(|| "the peer stopped reading".into())));
                }
            }
        }
    }

    // ---------- trackers ----------

    fn left(&self) -> u64 {
        match (self.is_seed(), self.meta.get()) {
            (true, _) => 0,
            (false, Some(_)) => self.swarm(|s| s.left()),
            (false, None) => 1 << 30,
        }
    }

    async fn announce_once(&self, event: tracker::Event) -> Result<tracker::AnnounceReply, tracker::TrackerError> {
        let totals = self.swarm(|s| s.totals());
        let (up, down) = (totals.uploaded, totals.downloaded);
        let a = tracker::Announce {
            info_hash: self.info_hash,
            peer_id: self.shared.peer_id,
            port: self.shared.port,
            uploaded: up,
            downloaded: down,
            left: self.left(),
            event,
            numwant: 200,
            key: self.shared.key,
        };
        let mut tiers = lock(&self.trackers).clone();
        if let Some(proxy) = &self.shared.proxy {
            // UDP trackers go through the proxy's UDP relay (SOCKS5 UDP ASSOCIATE). A proxy
            // that has none (an HTTP proxy, microsocks) would leave them to be asked directly,
            // revealing this address: they are skipped instead, and that is said once.
            let has_udp = tiers.iter().flatten().any(|u| u.starts_with("udp://"));
            if has_udp && !self.shared.proxy_relays_udp(proxy).await {
                for t in tiers.iter_mut() {
                    t.retain(|u| !u.starts_with("udp://"));
                }
                tiers.retain(|t| !t.is_empty());
                self.events.warn(format!(
                    "{}: UDP trackers skipped: the proxy does not relay UDP (SOCKS5 UDP ASSOCIATE)",
                    self.label
                ));
                *lock(&self.trackers) = tiers.clone();
            }
        }
        if tiers.is_empty() {
            return Err(tracker::TrackerError::NoTrackers);
        }
        let r = tracker::announce_tiers(&self.shared.http, &mut tiers, &a, self.shared.proxy.as_ref()).await;
        *lock(&self.trackers) = tiers;
        r
    }

    /// Announces at start and then at the tracker's interval (sooner while no peer is
    /// connected), dialling every new peer.
    pub async fn announce_loop(self: Arc<Self>) {
        let mut event = tracker::Event::Started;
        let mut quick = Duration::from_secs(2);
        loop {
            let wait = match self.announce_once(event).await {
                Ok(r) => {
                    event = tracker::Event::None;
                    self.events.debug(format!(
                        "{}: tracker gave {} peers (interval {}s)",
                        self.label,
                        r.peers.len(),
                        r.interval
                    ));
                    for a in r.peers {
                        self.connect(a);
                    }
                    Duration::from_secs(r.interval as u64)
                }
                Err(e) => {
                    self.events.debug(format!("{}: announce failed: {e}", self.label));
                    Duration::from_secs(30)
                }
            };
            // While we have no peers (or, seeding, to find new leechers to dial) ask more often.
            let wait = if self.peer_count() == 0 {
                let w = quick;
                quick = (quick * 2).min(Duration::from_secs(15));
                w.min(wait)
            } else if self.is_seed() {
                wait.min(Duration::from_secs(15))
            } else {
                wait.min(Duration::from_secs(60))
            };
            tokio::time::sleep(wait).await;
            if self.stopped() {
                return;
            }
        }
    }

    /// Dials known peers again (e.g. after they dropped) every few seconds while few are up.
    pub async fn redial_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let known = self.swarm(|s| (s.is_stopped(), s.peer_count(), s.redial_candidates()));
            let known = match known {
                (true, _, _) => return,
                (false, n, _) if n >= 8 => continue,
                (false, _, k) => k,
            };
            for a in known {
                self.connect(a);
            }
        }
    }

    // ---------- DHT ----------

    /// Looks the swarm up on the DHT while few peers are connected: first after `first_wait`
    /// (trackers and given peers get a head start), then again sooner while nothing is found.
    pub async fn dht_lookup_loop(self: Arc<Self>, dht: Arc<crate::dht::DhtNode>, first_wait: Duration) {
        tokio::time::sleep(first_wait).await;
        let mut quick = Duration::from_secs(2);
        loop {
            if self.stopped() {
                return;
            }
            let wait = if self.peer_count() < 8 {
                let me = self.clone();
                let n = dht
                    .lookup(self.info_hash, Duration::from_secs(30), move |addrs| {
                        for a in addrs {
                            me.connect(a);
                        }
                    })
                    .await;
                self.events.debug(format!("{}: DHT lookup gave {n} peers", self.label));
                if n == 0 {
                    let w = quick;
                    quick = (quick * 2).min(Duration::from_secs(30));
                    w
                } else {
                    Duration::from_secs(60)
                }
            } else {
                Duration::from_secs(60)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Seeding: `announce_peer` on the DHT, again every 10 minutes (sooner after a failure:
    /// a new network may have no other node yet).
    pub async fn dht_announce_loop(self: Arc<Self>, dht: Arc<crate::dht::DhtNode>) {
        let mut retry = Duration::from_secs(2);
        let mut announced = false;
        loop {
            if self.stopped() {
                return;
            }
            let wait = match dht.announce(self.info_hash, self.shared.port).await {
                Ok(()) => {
                    if !announced {
                        self.events.info(format!("{}: announced on the DHT", self.label));
                    }
                    announced = true;
                    retry = Duration::from_secs(2);
                    Duration::from_secs(600)
                }
                Err(e) => {
                    self.events.debug(format!("{}: DHT announce failed: {e}", self.label));
                    let w = retry;
                    retry = (retry * 2).min(Duration::from_secs(60));
                    w
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    pub fn stats(&self) -> (u64, u64, u64, u64) {
        let t = self.swarm(|s| s.totals());
        (t.downloaded, t.uploaded, t.wasted, t.bad_pieces)
    }

    /// Per-peer bytes (label, down, up).
    pub fn peer_bytes(&self) -> Vec<(String, u64, u64)> {
        self.swarm(|s| s.peer_bytes())
    }
}

/// Writes what the connection queues, gathering frames up to [`WRITE_BATCH`] bytes, and tells
/// the swarm what the socket took (it sends more blocks as room frees). Returns why it ended:
/// the swarm closed the connection, the socket failed, or the peer took nothing for
/// [`WRITE_TIMEOUT`]; `None` when the channel closed.
async fn writer(
    session: Arc<Session>,
    key: PeerKey,
    mut wr: WriteHalf<PeerStream>,
    mut rx: mpsc::UnboundedReceiver<Out>,
) -> Option<String> {
    loop {
        let mut closing = None;
        let mut batch = match rx.recv().await? {
            Out::Close(why) => return Some(why),
            Out::Bytes(b) => b,
        };
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(Out::Bytes(more)) => batch.extend_from_slice(&more),
                Ok(Out::Close(why)) => {
                    closing = Some(why);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(rate) = &session.upload_rate {
            rate.acquire(batch.len() as u64).await;
        }
        // Flushed: an encrypted stream holds what the socket has not taken yet.
        let write = async {
            wr.write_all(&batch).await?;
            wr.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(e.to_string()),
            Err(_) => return Some(format!("the peer took nothing for {WRITE_TIMEOUT:?}")),
        }
        let n = batch.len();
        session.with(|s| s.written(key, n));
        if closing.is_some() {
            let _ = wr.shutdown().await;
            return closing;
        }
    }
}

/// A weak registry entry (the listener finds sessions by info hash).
pub type SessionRef = Weak<Session>;
