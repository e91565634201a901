//! One torrent's swarm as a deterministic state machine (see `STATE.md` beside this file).
//!
//! Events go in — a peer connected, a message from a peer, bytes written to its socket, a
//! piece hashed, the engine wants a piece, `tick(now)` — and actions come out of
//! [`Swarm::poll_action`]: bytes to send to a peer, blocks to read from disk for a peer, a
//! piece to hash, a piece to hand to its waiters, a peer to disconnect, log lines and payment
//! marks. No sockets, tasks, channels, clock or disk in here: time is passed in, randomness is
//! seeded, and the tests drive it in memory (`tests.rs`). The tokio shell is `session.rs`.

mod peer;
mod pieces;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use chiral_sdk::abi::PeerStat;

pub use self::peer::{ChiralPeer, Peer, PIPELINE};
use self::pieces::{BlockState, Job, Pieces};
use crate::{
    choker::{Choker, PeerView, ROTATE_EVERY},
    extension::{
        ChiralHello, ExtHandshake, Metadata, MetadataAssembly, MetadataError, Pex, CHIRAL_ID, MAX_PEX, METADATA_PIECE,
        UT_METADATA_ID, UT_PEX_ID,
    },
    identity::Identity,
    metainfo::TorrentMetadata,
    peer_wire::{self, Message, BLOCK},
};

/// A connection's key in the swarm (never reused within one swarm).
pub type PeerKey = u64;

/// Connected peers per torrent.
pub const MAX_PEERS: usize = 60;
/// Peers we unchoke at once when seeding (proven Chiral peers always are).
pub const UPLOAD_SLOTS: usize = 8;
/// Bytes of pieces fetched ahead of the engine's requests.
pub const PREFETCH_BYTES: u64 = 48 << 20;
/// Most block requests queued per peer (what we advertise as `reqq`); more are ignored.
pub const MAX_QUEUED_REQUESTS: usize = 1024;
/// Largest block a peer may ask for.
pub const MAX_BLOCK: u32 = 128 << 10;
/// Bytes of blocks read for one peer and not yet taken by its socket: past this, its requests
/// wait in the queue (as 12-byte entries) instead of in memory as data.
pub const UPLOAD_BUFFER: usize = 2 << 20;
/// Bytes queued to one peer's socket past which it is dropped as not reading (blocks stop at
/// [`UPLOAD_BUFFER`]; this catches control traffic a peer provokes, e.g. metadata requests).
pub const MAX_QUEUED_BYTES: usize = UPLOAD_BUFFER + (4 << 20);
/// [`UPLOAD_BUFFER`] for a proven Chiral peer: its writer never runs dry while a read waits
/// for a thread (a busy machine delays each hand-off by milliseconds). Still a bound in bytes,
/// and only for a peer that signed our nonce with its Chiral key.
pub const CHIRAL_UPLOAD_BUFFER: usize = 16 << 20;
/// Most metadata sizes assembled at once (peers may announce different ones).
const MAX_METADATA_SIZES: usize = 4;
/// How often each peer is told of our other peers (BEP 11), and the least time between two
/// PEX messages from one peer that we act on.
pub const PEX_EVERY: Duration = Duration::from_secs(60);
const PEX_HEARD_MIN: Duration = Duration::from_secs(45);
/// A block requested this long ago may be asked of a second peer (end game).
pub const ENDGAME_AFTER: Duration = Duration::from_millis(1500);
/// A request unanswered this long goes back to the pool.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer silent this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// We send a keep-alive after this long without sending anything.
const KEEPALIVE_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered for redialling.
const MAX_KNOWN: usize = 4096;
/// Peers that left and are still remembered for the report (past this bound, new departures
/// are simply not recorded).
const MAX_PAST_PEERS: usize = 4096;
/// Blocks read from disk in one action.
const READ_BATCH: usize = 64;
/// Blocks of one piece asked of a proven Chiral peer in one request (128 KiB, the largest
/// request any peer of ours serves): an eighth of the messages, frames and disk reads.
pub const CHIRAL_SPAN: usize = (MAX_BLOCK / BLOCK) as usize;
/// A proven Chiral peer's pipeline is topped up once this many blocks of it are free, not
/// block by block.
pub const CHIRAL_REFILL: usize = 4 * CHIRAL_SPAN;

/// Why a connection is not taken into the swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("session stopped")]
    Stopped,
    #[error("banned")]
    Banned,
    #[error("connected to ourselves")]
    Ourselves,
    #[error("already connected to this peer")]
    AlreadyConnected,
    #[error("too many peers")]
    TooManyPeers,
}

/// A protocol violation: the peer that committed it is dropped (the reason is its text).
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("have {0} out of range")]
    HaveOutOfRange(u32),
    #[error(transparent)]
    Wire(#[from] peer_wire::WireError),
    #[error("a request before the metadata")]
    RequestBeforeMetadata,
    #[error("request outside piece {0} or larger than {MAX_BLOCK} bytes")]
    BadRequest(u32),
    #[error(transparent)]
    Extension(#[from] crate::extension::ExtensionError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("metadata: {0}")]
    Metainfo(#[from] crate::metainfo::MetaError),
}

/// What this node says about itself to peers.
#[derive(Clone)]
pub struct Local {
    pub peer_id: [u8; 20],
    pub port: u16,
    pub identity: Arc<Identity>,
    pub reputation: i64,
    pub wallet: Option<String>,
    /// Bytes served to one Chiral peer between two `served` payment reports.
    pub payment_threshold: u64,
    /// Our Chiral network key and its signature over our Chiral peer id (`chiral_sdk::link`).
    pub network_link: Option<([u8; 32], [u8; 64])>,
}

/// Who gets the Chiral fast lane when we upload (always unchoked first, a deeper upload
/// buffer): every proven Chiral peer, or (`Paid`) only a proven one with a wallet the host does
/// not list as behind on payment (`[payments] fast_lane = "paid"`, docs/payments.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FastLane {
    #[default]
    AllChiral,
    /// Wallets behind on payment, lowercase.
    Paid { behind: HashSet<String> },
}

impl FastLane {
    pub fn admits(&self, c: &ChiralPeer) -> bool {
        match self {
            FastLane::AllChiral => true,
            FastLane::Paid { behind } => c.wallet.as_ref().is_some_and(|w| !behind.contains(&w.to_ascii_lowercase())),
        }
    }
}

/// Whether `c` gets the fast lane: the policy admits it, and its linked Chiral network identity
/// (if it showed one) is not among those with a poor reputation there; with the reason when not.
fn lane_for(policy: &FastLane, poor: &HashSet<String>, c: &ChiralPeer) -> Result<(), &'static str> {
    if c.network.as_ref().is_some_and(|k| poor.contains(k)) {
        return Err("poor reputation on the Chiral network");
    }
    if !policy.admits(c) {
        return Err("behind on payment or no wallet");
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// What the shell does for the swarm.
#[derive(Debug)]
pub enum Action<W> {
    /// Queue these bytes (whole frames) to the peer's socket; report them with `written`.
    Send {
        peer: PeerKey,
        bytes: Vec<u8>,
    },
    /// Read these blocks `(piece, begin, length)` from the content and send them to the peer
    /// as `piece` messages (13-byte header each); the bytes are already counted as queued.
    Read {
        peer: PeerKey,
        blocks: Vec<(u32, u32, u32)>,
    },
    /// Hash the piece and answer with [`Swarm::checked`], handing the bytes back.
    Verify {
        index: u32,
        data: Vec<u8>,
    },
    /// The piece verified: give it to these waiters.
    Deliver {
        index: u32,
        data: Vec<u8>,
        to: Vec<W>,
    },
    /// These waiters will not get their piece (the swarm stopped).
    Cancel {
        to: Vec<W>,
    },
    /// Close the connection (the swarm has forgotten the peer already).
    Disconnect {
        peer: PeerKey,
        reason: String,
    },
    /// The metadata of a magnet arrived (and verified against the info hash).
    Metadata(Arc<TorrentMetadata>),
    /// Peers learnt by PEX to dial (at most [`MAX_PEX`] at once).
    Dial(Vec<SocketAddr>),
    Log(Level, String),
    /// A verified piece's bytes delivered by `peer`, or bytes served to it (see [`Swarm::bill`]
    /// and [`Swarm::account`] for the form of `peer`).
    Payment {
        peer: String,
        wallet: Option<String>,
        bytes: u64,
    },
}

/// The answer to [`Swarm::want`].
#[derive(Debug, PartialEq, Eq)]
pub enum Want<W> {
    /// Read ahead earlier: here it is (with the waiter handed back).
    Ready(Vec<u8>, W),
    /// Queued; cancel with [`Swarm::unwant`] and this ticket.
    Waiting(u64),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WantError {
    #[error("the swarm is stopped")]
    Stopped,
    #[error("the metadata is not known yet")]
    NoMetadata,
    #[error("piece {0} out of range")]
    OutOfRange(u32),
}

/// Totals of the swarm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub downloaded: u64,
    pub uploaded: u64,
    pub wasted: u64,
    pub bad_pieces: u64,
}

pub struct Swarm<W> {
    info_hash: [u8; 20],
    local: Local,
    fast_lane: FastLane,
    /// Chiral network keys (hex) whose reputation there is poor: no fast lane for them.
    poor_network: HashSet<String>,
    seeding: bool,
    meta: Option<Arc<TorrentMetadata>>,
    trackers: Vec<Vec<String>>,
    peers: HashMap<PeerKey, Peer>,
    next_key: PeerKey,
    connecting: HashSet<SocketAddr>,
    known: HashSet<SocketAddr>,
    banned_addrs: HashSet<SocketAddr>,
    /// Banned peers by IP: a liar reconnecting from another port stays out. Loopback peers
    /// are banned by address and port only (many local peers share one IP).
    banned_ips: HashSet<IpAddr>,
    banned_ids: HashSet<[u8; 20]>,
    pieces: Pieces<W>,
    /// Whether pieces after the engine's cursor are fetched before they are asked for: only
    /// while this swarm is the download's only source. Off until the engine says so.
    read_ahead: bool,
    /// Metadata being assembled, one per size announced by peers (at most
    /// [`MAX_METADATA_SIZES`]): a peer announcing another size cannot reset the others.
    metadata: BTreeMap<u64, MetadataAssembly>,
    totals: Totals,
    stopped: bool,
    choker: Choker,
    last_rotate: Option<Instant>,
    rng: u64,
    /// The time of the latest event that carried one.
    now: Option<Instant>,
    past_peers: HashMap<SocketAddr, PeerStat>,
    next_ticket: u64,
    actions: VecDeque<Action<W>>,
}

impl<W> Swarm<W> {
    /// A swarm for `info_hash`; `seeding` when every piece is on disk; `seed` seeds the
    /// choker's randomness.
    pub fn new(
        info_hash: [u8; 20],
        local: Local,
        seeding: bool,
        meta: Option<Arc<TorrentMetadata>>,
        trackers: Vec<Vec<String>>,
        seed: u64,
    ) -> Self {
        let mut s = Self {
            info_hash,
            local,
            seeding,
            meta: None,
            trackers,
            peers: HashMap::new(),
            next_key: 0,
            connecting: HashSet::new(),
            known: HashSet::new(),
            banned_addrs: HashSet::new(),
            banned_ips: HashSet::new(),
            banned_ids: HashSet::new(),
            pieces: Pieces::default(),
            read_ahead: false,
            metadata: BTreeMap::new(),
            totals: Totals::default(),
            stopped: false,
            choker: Choker::new(UPLOAD_SLOTS),
            fast_lane: FastLane::default(),
            poor_network: HashSet::new(),
            last_rotate: None,
            rng: seed | 1,
            now: None,
            past_peers: HashMap::new(),
            next_ticket: 0,
            actions: VecDeque::new(),
        };
        if let Some(m) = meta {
            s.set_meta(m, None);
        }
        s
    }

    // ---------- actions out ----------

    /// The next thing to do, frames for each peer first gathered into one `Send`.
    pub fn poll_action(&mut self) -> Option<Action<W>> {
        if self.actions.is_empty() {
            self.flush();
        }
        self.actions.pop_front()
    }

    /// Every pending action.
    pub fn drain(&mut self) -> Vec<Action<W>> {
        self.flush();
        self.actions.drain(..).collect()
    }

    fn flush(&mut self) {
        let soon: Vec<PeerKey> = self.peers.iter().filter(|(_, p)| p.serve_soon).map(|(k, _)| *k).collect();
        for k in soon {
            self.serve(k);
        }
        let mut over = Vec::new();
        for (k, p) in self.peers.iter_mut() {
            if !p.out.is_empty() {
                self.actions.push_back(Action::Send { peer: *k, bytes: std::mem::take(&mut p.out) });
            }
            if p.queued > MAX_QUEUED_BYTES - UPLOAD_BUFFER + p.upload_buffer() {
                over.push(*k);
            }
        }
        for k in over {
            self.drop_peer(k, "the peer does not read what we send".into());
        }
    }

    fn log(&mut self, level: Level, msg: String) {
        self.actions.push_back(Action::Log(level, msg));
    }

    fn label(&self) -> String {
        format!("bittorrent:{}", &hex::encode(self.info_hash)[..12])
    }

    // ---------- queries ----------

    pub fn meta(&self) -> Option<&Arc<TorrentMetadata>> {
        self.meta.as_ref()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn peer(&self, key: PeerKey) -> Option<&Peer> {
        self.peers.get(&key)
    }

    /// Per-piece holder counts (at least 1: the swarm may still find a holder).
    pub fn availability(&self) -> Vec<u32> {
        self.pieces.availability.iter().map(|a| (*a).max(1)).collect()
    }

    /// Whether a connected peer has piece `index` (or it is read ahead already).
    pub fn has_holder(&self, index: u32) -> bool {
        self.pieces.cache.contains_key(&index) || self.pieces.availability.get(index as usize).is_some_and(|a| *a > 0)
    }

    /// Bytes still to deliver (for tracker announces).
    pub fn left(&self) -> u64 {
        match &self.meta {
            _ if self.seeding => 0,
            Some(m) => {
                let done: u64 =
                    (0..m.piece_count()).filter(|i| self.pieces.delivered[*i as usize]).map(|i| m.piece_len(i)).sum();
                m.length.saturating_sub(done)
            }
            None => 1 << 30,
        }
    }

    /// Every peer met so far (connected now or gone) with its totals, one entry per address.
    pub fn peer_stats(&self) -> Vec<PeerStat> {
        let mut by_addr = self.past_peers.clone();
        for p in self.peers.values() {
            merge_stat(by_addr.entry(p.addr).or_default(), self.stat(p));
        }
        by_addr.into_values().collect()
    }

    /// Per-peer bytes (address, down, up).
    pub fn peer_bytes(&self) -> Vec<(String, u64, u64)> {
        self.peers.values().map(|p| (p.addr.to_string(), p.down, p.up)).collect()
    }

    /// Addresses to dial again (peers met that are not connected now).
    pub fn redial_candidates(&self) -> Vec<SocketAddr> {
        self.known.iter().filter(|a| !self.peers.values().any(|p| p.addr == **a)).copied().collect()
    }

    fn stat(&self, p: &Peer) -> PeerStat {
        PeerStat {
            id: client_name(&p.peer_id).into(),
            address: p.addr.to_string().into(),
            downloaded: p.down,
            uploaded: p.up,
            chiral_peer_id: p.chiral.as_ref().map(|c| c.id.clone()).unwrap_or_default().into(),
            reputation: p.chiral.as_ref().map(|c| c.reputation).into(),
            banned: self.banned_addrs.contains(&p.addr),
        }
    }

    fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.banned_addrs.contains(addr) || self.banned_ips.contains(&addr.ip())
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: the choker's optimistic pick needs no more.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // ---------- dialling ----------

    /// Whether to dial `addr` now (then it counts as connecting until [`Self::dial_ended`]).
    pub fn should_dial(&mut self, addr: SocketAddr) -> bool {
        if self.stopped
            || self.is_banned(&addr)
            || self.connecting.contains(&addr)
            || self.peers.values().any(|p| p.addr == addr)
            || self.peers.len() + self.connecting.len() >= MAX_PEERS
        {
            return false;
        }
        self.connecting.insert(addr);
        if self.known.len() < MAX_KNOWN {
            self.known.insert(addr);
        }
        true
    }

    pub fn dial_ended(&mut self, addr: SocketAddr) {
        self.connecting.remove(&addr);
    }

    // ---------- connections ----------

    /// A connection finished its handshake. `extensions`: it set the BEP 10 bit; `nonce`: fresh
    /// random bytes it must sign to prove a Chiral id.
    pub fn connected(
        &mut self,
        addr: SocketAddr,
        peer_id: [u8; 20],
        extensions: bool,
        nonce: Vec<u8>,
        now: Instant,
    ) -> Result<PeerKey, Refused> {
        self.now = Some(now);
        if self.stopped {
            return Err(Refused::Stopped);
        }
        if self.is_banned(&addr) || self.banned_ids.contains(&peer_id) {
            return Err(Refused::Banned);
        }
        if peer_id == self.local.peer_id {
            return Err(Refused::Ourselves);
        }
        if self.peers.values().any(|p| p.peer_id == peer_id) {
            return Err(Refused::AlreadyConnected);
        }
        if self.peers.len() >= MAX_PEERS {
            return Err(Refused::TooManyPeers);
        }
        self.next_key += 1;
        let key = self.next_key;
        let n = self.meta.as_ref().map(|m| m.piece_count() as usize).unwrap_or(0);
        let mut p = Peer::new(addr, peer_id, n, now);
        if extensions {
            let h = ExtHandshake::ours(
                self.meta.as_ref().map(|m| m.info_bytes.len() as u64),
                self.local.port,
                &self.local.identity.id(),
                &nonce,
            );
            p.send(&Message::Extended { id: 0, payload: h.encode() }, now);
        }
        p.nonce = nonce;
        if let Some(m) = &self.meta {
            if self.seeding {
                p.send(&Message::Bitfield(peer_wire::bitfield_bytes(&vec![true; m.piece_count() as usize])), now);
            } else {
                p.am_interested = true;
                p.send(&Message::Interested, now);
            }
        }
        p.dialled = self.connecting.remove(&addr);
        self.peers.insert(key, p);
        Ok(key)
    }

    /// The connection ended (a no-op when the swarm dropped it first).
    pub fn disconnected(&mut self, key: PeerKey) {
        self.remove_peer(key);
    }

    /// The shell wrote `n` bytes queued for `key` to its socket.
    pub fn written(&mut self, key: PeerKey, n: usize) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.queued = p.queued.saturating_sub(n);
            self.serve(key);
        }
    }

    /// Reading blocks for `key` failed: the peer goes (our content is unreadable).
    pub fn read_failed(&mut self, key: PeerKey, error: String) {
        self.drop_peer(key, format!("reading the content: {error}"));
    }

    fn drop_peer(&mut self, key: PeerKey, reason: String) {
        if self.peers.contains_key(&key) {
            self.remove_peer(key);
            self.actions.push_back(Action::Disconnect { peer: key, reason });
        }
    }

    fn remove_peer(&mut self, key: PeerKey) {
        if !self.peers.contains_key(&key) {
            return;
        }
        self.release_requests(key);
        self.metadata.values_mut().for_each(|a| a.forget(key));
        let Some(p) = self.peers.remove(&key) else { return };
        let gone = self.stat(&p);
        if self.past_peers.len() < MAX_PAST_PEERS || self.past_peers.contains_key(&p.addr) {
            merge_stat(self.past_peers.entry(p.addr).or_default(), gone);
        }
        for (i, h) in p.has.iter().enumerate() {
            if *h {
                if let Some(a) = self.pieces.availability.get_mut(i) {
                    *a = a.saturating_sub(1);
                }
            }
        }
        if !p.am_choking {
            self.rechoke(false);
        }
        self.pump_all();
    }

    fn ban(&mut self, key: PeerKey, why: &str) {
        let Some(p) = self.peers.get(&key) else { return };
        let (addr, pid) = (p.addr, p.peer_id);
        self.log(Level::Warn, format!("{}: banning peer {addr}: {why}", self.label()));
        self.banned_addrs.insert(addr);
        if !addr.ip().is_loopback() {
            self.banned_ips.insert(addr.ip());
        }
        self.banned_ids.insert(pid);
        self.drop_peer(key, why.to_string());
    }

    // ---------- the metadata ----------

    fn set_meta(&mut self, m: Arc<TorrentMetadata>, now: Option<Instant>) {
        let n = m.piece_count();
        self.pieces.reset(n);
        self.metadata.clear();
        for p in self.peers.values_mut() {
            p.has = if p.early_have_all {
                vec![true; n as usize]
            } else if let Some(raw) = p.early_bitfield.take() {
                peer_wire::bitfield_flags(&raw, n).unwrap_or_else(|_| vec![false; n as usize])
            } else {
                let mut f = vec![false; n as usize];
                for i in p.early_haves.drain() {
                    if let Some(x) = f.get_mut(i as usize) {
                        *x = true;
                    }
                }
                f
            };
            for (i, h) in p.has.iter().enumerate() {
                if *h {
                    self.pieces.availability[i] += 1;
                }
            }
            if let (false, Some(now)) = (self.seeding, now) {
                p.am_interested = true;
                p.send(&Message::Interested, now);
            }
        }
        self.meta = Some(m.clone());
        if now.is_some() {
            self.actions.push_back(Action::Metadata(m));
            self.pump_all();
        }
    }

    fn request_metadata(&mut self, key: PeerKey, now: Instant) {
        let Some(p) = self.peers.get(&key) else { return };
        let Some(ext) = &p.ext else { return };
        let (Some(their), Some(size)) = (ext.id_of("ut_metadata"), ext.metadata_size) else { return };
        if !self.metadata.contains_key(&size) {
            if self.metadata.len() >= MAX_METADATA_SIZES {
                return;
            }
            match MetadataAssembly::new(size) {
                Ok(a) => {
                    self.metadata.insert(size, a);
                }
                Err(_) => return,
            }
        }
        let missing = self.metadata.get(&size).map(|a| a.missing_for(key)).unwrap_or_default();
        let p = self.peers.get_mut(&key).expect("present");
        for piece in missing {
            if p.metadata_asked.insert(piece) {
                p.send(&Message::Extended { id: their, payload: Metadata::Request { piece }.encode() }, now);
            }
        }
    }

    // ---------- the engine side ----------

    /// The engine wants piece `index`: served from what was read ahead, or queued for `waiter`.
    pub fn want(&mut self, index: u32, waiter: W, now: Instant) -> Result<Want<W>, WantError> {
        self.now = Some(now);
        if self.stopped {
            return Err(WantError::Stopped);
        }
        let Some(meta) = self.meta.clone() else { return Err(WantError::NoMetadata) };
        if index >= meta.piece_count() {
            return Err(WantError::OutOfRange(index));
        }
        self.pieces.cursor = self.pieces.cursor.max(index + 1);
        if let Some(d) = self.pieces.take_cached(index) {
            self.pieces.delivered[index as usize] = true;
            return Ok(Want::Ready(d, waiter));
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let fresh = !self.pieces.jobs.contains_key(&index);
        self.pieces.jobs.entry(index).or_insert_with(|| Job::new(meta.piece_len(index))).waiters.push((ticket, waiter));
        if fresh {
            self.pump_all();
        }
        Ok(Want::Waiting(ticket))
    }

    /// The waiter with `ticket` gave up on piece `index` (the engine cancelled it): without
    /// read-ahead nobody else wants the piece, so its requests are cancelled at the peers.
    pub fn unwant(&mut self, index: u32, ticket: u64, now: Instant) -> Option<W> {
        self.now = Some(now);
        let job = self.pieces.jobs.get_mut(&index)?;
        let at = job.waiters.iter().position(|(t, _)| *t == ticket)?;
        let (_, w) = job.waiters.remove(at);
        if job.waiters.is_empty() && !job.verifying && !self.read_ahead {
            self.abandon(index, now);
        }
        Some(w)
    }

    /// Reads ahead of the engine (fetches the pieces after the last one asked for) only when
    /// Who gets the Chiral fast lane from now on: each peer is judged again, and a change is
    /// logged and acted on at once (a peer that loses it competes for the regular slots).
    pub fn set_fast_lane(&mut self, policy: FastLane, now: Instant) {
        self.now = Some(now);
        if self.fast_lane == policy {
            return;
        }
        self.fast_lane = policy;
        self.judge_lanes();
    }

    /// The Chiral network keys with a poor reputation there (the host's `network_reputation`):
    /// each Chiral peer is judged again, as for [`Self::set_fast_lane`].
    pub fn set_poor_network(&mut self, poor: HashSet<String>, now: Instant) {
        self.now = Some(now);
        if self.poor_network == poor {
            return;
        }
        self.poor_network = poor;
        self.judge_lanes();
    }

    fn judge_lanes(&mut self) {
        let mut changed = Vec::new();
        for p in self.peers.values_mut() {
            let Some(c) = &p.chiral else { continue };
            let lane = lane_for(&self.fast_lane, &self.poor_network, c).is_ok();
            if lane != p.fast_lane {
                p.fast_lane = lane;
                changed.push((c.id.clone(), c.wallet.clone(), lane));
            }
        }
        for (id, wallet, lane) in &changed {
            let wallet =
                wallet.as_deref().map_or_else(|| "no wallet".to_string(), |w| chiral_sdk::text::for_terminal(w, 60));
            let what = if *lane { "given back to" } else { "withdrawn from" };
            self.log(Level::Info, format!("{}: fast lane {what} Chiral peer {id} ({wallet})", self.label()));
        }
        if !changed.is_empty() {
            self.rechoke(false);
        }
    }

    /// `on`: the engine says whether this swarm is the download's only source. Turning it off
    /// abandons the pieces being read ahead.
    pub fn set_read_ahead(&mut self, on: bool, now: Instant) {
        self.now = Some(now);
        if self.read_ahead == on {
            return;
        }
        self.read_ahead = on;
        let what = if on { "on: the only source" } else { "off: other sources" };
        self.log(Level::Debug, format!("{}: read-ahead {what}", self.label()));
        if on {
            self.pump_all();
        } else {
            let unwanted: Vec<u32> =
                self.pieces.jobs.iter().filter(|(_, j)| !j.verifying && !j.wanted()).map(|(i, _)| *i).collect();
            for i in unwanted {
                self.abandon(i, now);
            }
        }
    }

    /// Drops the job of piece `index` and cancels its requested blocks at the peers holding
    /// them (a block that arrives anyway counts as wasted).
    fn abandon(&mut self, index: u32, now: Instant) {
        let Some(job) = self.pieces.jobs.remove(&index) else { return };
        let len = job.len;
        for (b, s) in job.blocks.iter().enumerate() {
            let BlockState::Requested { peer, dup, .. } = *s else { continue };
            let begin = b as u32 * BLOCK;
            let length = Job::<W>::block_len(len, b);
            for key in std::iter::once(peer).chain(dup) {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.requests.remove(&(index, b as u32));
                    p.send(&Message::Cancel { index, begin, length }, now);
                }
            }
        }
        self.pump_all();
    }

    fn prefetch_limit(meta: &TorrentMetadata) -> usize {
        // At least one piece, and no more than PREFETCH_BYTES of them unless one piece is larger.
        ((PREFETCH_BYTES / meta.piece_length.max(1)) as usize).clamp(1, 1024)
    }

    /// The hash of piece `index` (from an `Action::Verify`) matched or not; `data` comes back.
    pub fn checked(&mut self, index: u32, data: Vec<u8>, good: bool, now: Instant) {
        self.now = Some(now);
        let Some(meta) = self.meta.clone() else { return };
        let Some(job) = self.pieces.jobs.remove(&index) else { return };
        if good {
            for liar in self.pieces.blame(index, &data) {
                self.ban(liar, "sent data that failed verification");
            }
            // Billed before it is handed on: a host that records the debt before it saves the
            // piece never has a saved piece it did not record.
            self.bill(index, &job.from, meta.piece_len(index));
            if job.waiters.is_empty() {
                self.pieces.keep(index, data, Self::prefetch_limit(&meta));
            } else {
                self.pieces.delivered[index as usize] = true;
                self.actions.push_back(Action::Deliver {
                    index,
                    data,
                    to: job.waiters.into_iter().map(|(_, w)| w).collect(),
                });
            }
        } else {
            self.totals.bad_pieces += 1;
            self.totals.wasted += data.len() as u64;
            let senders: HashSet<PeerKey> = job.from.iter().copied().collect();
            self.log(Level::Warn, format!("{}: piece {index} failed its SHA-1 check", self.label()));
            if senders.len() == 1 {
                let only = *senders.iter().next().expect("one");
                self.ban(only, "sent a piece that failed verification");
            } else {
                // Kept to compare with the good copy later (per-block blame), within bounds.
                self.pieces.remember_failure(index, data, job.from);
            }
            // Start the piece again, keeping who waits for it.
            let mut again = Job::new(meta.piece_len(index));
            again.waiters = job.waiters;
            if again.wanted() || self.read_ahead {
                self.pieces.jobs.insert(index, again);
            }
        }
        self.pump_all();
    }

    /// Stops: every waiter is cancelled and every peer disconnected.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for (_, j) in std::mem::take(&mut self.pieces.jobs) {
            if !j.waiters.is_empty() {
                self.actions.push_back(Action::Cancel { to: j.waiters.into_iter().map(|(_, w)| w).collect() });
            }
        }
        for k in keys {
            self.drop_peer(k, "stopped".into());
        }
    }

    // ---------- requesting blocks ----------

    fn pump_all(&mut self) {
        let Some(now) = self.now else { return };
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for k in keys {
            self.pump(k, now);
        }
    }

    /// Requests blocks of `key` up to its depth: missing blocks of wanted pieces (the engine's
    /// first, then read-ahead ones), new read-ahead pieces after the cursor, then end game.
    fn pump(&mut self, key: PeerKey, now: Instant) {
        if self.seeding || self.stopped {
            return;
        }
        let Some(meta) = self.meta.clone() else { return };
        let Some(p) = self.peers.get(&key) else { return };
        if p.peer_choking || p.requests.len() >= p.depth() {
            return;
        }
        let mut room = p.depth() - p.requests.len();
        if p.chiral.is_some() && !p.requests.is_empty() && room < CHIRAL_REFILL {
            return;
        }
        let mut reqs: Vec<(u32, u32)> = Vec::new();
        // 1. Missing blocks of pieces already wanted (engine's first, then read ahead).
        let wanted: Vec<u32> = self.pieces.jobs.iter().filter(|(_, j)| j.wanted()).map(|(i, _)| *i).collect();
        let ahead: Vec<u32> = if self.read_ahead {
            self.pieces.jobs.iter().filter(|(_, j)| !j.wanted()).map(|(i, _)| *i).collect()
        } else {
            Vec::new()
        };
        for &i in wanted.iter().chain(&ahead) {
            if room == 0 {
                break;
            }
            if !p.has_piece(i) {
                continue;
            }
            let job = self.pieces.jobs.get_mut(&i).expect("listed");
            if job.verifying || job.missing == 0 {
                continue;
            }
            for (b, s) in job.blocks.iter_mut().enumerate() {
                if room == 0 {
                    break;
                }
                if *s == BlockState::Missing {
                    *s = BlockState::Requested { peer: key, at: now, dup: None };
                    job.missing -= 1;
                    reqs.push((i, b as u32));
                    room -= 1;
                }
            }
        }
        // 2. New read-ahead pieces after the engine's cursor (only as the only source).
        if room > 0 && self.read_ahead {
            let limit = Self::prefetch_limit(&meta);
            let count = meta.piece_count();
            let mut ahead_now = self.pieces.ahead();
            let mut i = self.pieces.cursor % count.max(1);
            let mut scanned = 0;
            while room > 0 && count > 0 && scanned < count && ahead_now < limit {
                if !self.pieces.delivered[i as usize]
                    && !self.pieces.jobs.contains_key(&i)
                    && !self.pieces.cache.contains_key(&i)
                    && p.has_piece(i)
                {
                    let mut job = Job::new(meta.piece_len(i));
                    for (b, s) in job.blocks.iter_mut().enumerate() {
                        if room == 0 {
                            break;
                        }
                        *s = BlockState::Requested { peer: key, at: now, dup: None };
                        job.missing -= 1;
                        reqs.push((i, b as u32));
                        room -= 1;
                    }
                    self.pieces.jobs.insert(i, job);
                    ahead_now += 1;
                }
                i = (i + 1) % count;
                scanned += 1;
            }
        }
        // 3. End game: blocks of wanted pieces another peer has been slow with.
        if room > 0 {
            for &i in &wanted {
                if room == 0 {
                    break;
                }
                if !p.has_piece(i) {
                    continue;
                }
                let Some(job) = self.pieces.jobs.get_mut(&i) else { continue };
                if job.verifying {
                    continue;
                }
                for (b, s) in job.blocks.iter_mut().enumerate() {
                    if room == 0 {
                        break;
                    }
                    if let BlockState::Requested { peer, at, dup: None } = *s {
                        if peer != key && now.duration_since(at) >= ENDGAME_AFTER {
                            *s = BlockState::Requested { peer, at, dup: Some(key) };
                            reqs.push((i, b as u32));
                            room -= 1;
                        }
                    }
                }
            }
        }
        if reqs.is_empty() {
            return;
        }
        let p = self.peers.get_mut(&key).expect("present");
        // One request per block, or per run of up to CHIRAL_SPAN blocks of a piece for a proven
        // Chiral peer (each block is still tracked, answered and timed out on its own).
        let span = if p.chiral.is_some() { CHIRAL_SPAN } else { 1 };
        let mut k = 0;
        while k < reqs.len() {
            let (index, first) = reqs[k];
            let mut n = 1;
            while n < span && reqs.get(k + n) == Some(&(index, first + n as u32)) {
                n += 1;
            }
            let piece_len = meta.piece_len(index);
            let mut length = 0;
            for b in first..first + n as u32 {
                p.requests.insert((index, b));
                length += Job::<W>::block_len(piece_len, b as usize);
            }
            p.send(&Message::Request { index, begin: first * BLOCK, length }, now);
            k += n;
        }
    }

    /// Our requests to `key` go back to the pool (it choked us, or left).
    fn release_requests(&mut self, key: PeerKey) {
        let Some(p) = self.peers.get_mut(&key) else { return };
        let reqs = std::mem::take(&mut p.requests);
        for (index, b) in reqs {
            let Some(job) = self.pieces.jobs.get_mut(&index) else { continue };
            let Some(s) = job.blocks.get_mut(b as usize) else { continue };
            match *s {
                BlockState::Requested { peer, dup, at } if peer == key => {
                    *s = match dup {
                        Some(d) => BlockState::Requested { peer: d, at, dup: None },
                        None => {
                            job.missing += 1;
                            BlockState::Missing
                        }
                    }
                }
                BlockState::Requested { peer, at, dup: Some(d) } if d == key => {
                    *s = BlockState::Requested { peer, at, dup: None }
                }
                _ => {}
            }
        }
    }

    /// Data for piece `index` at `begin` arrived from `key`: one block, or a run of blocks (a
    /// Chiral peer answers a span with one message), each taken as a block of its own.
    fn on_block(&mut self, key: PeerKey, index: u32, begin: u32, data: &[u8], now: Instant) {
        if data.len() <= BLOCK as usize {
            self.take_block(key, index, begin, data, now);
        } else {
            for (c, chunk) in data.chunks(BLOCK as usize).enumerate() {
                match begin.checked_add(c as u32 * BLOCK) {
                    Some(at) => self.take_block(key, index, at, chunk, now),
                    None => self.totals.wasted += chunk.len() as u64,
                }
            }
        }
        self.pump(key, now);
    }

    /// One block from `key`: kept if it answers a request of ours, else counted as waste.
    fn take_block(&mut self, key: PeerKey, index: u32, begin: u32, data: &[u8], now: Instant) {
        let Some(meta) = self.meta.clone() else { return };
        let n = data.len() as u64;
        self.totals.downloaded += n;
        let Some(p) = self.peers.get_mut(&key) else { return };
        p.down += n;
        let b = begin / BLOCK;
        let asked = begin.is_multiple_of(BLOCK) && p.requests.remove(&(index, b));
        let Some(job) = self.pieces.jobs.get_mut(&index).filter(|_| asked) else {
            self.totals.wasted += n;
            return;
        };
        let expected = Job::<W>::block_len(meta.piece_len(index), b as usize) as u64;
        let other = match job.blocks.get(b as usize).copied() {
            Some(BlockState::Requested { peer, dup, .. }) if n == expected && (peer == key || dup == Some(key)) => {
                if peer == key {
                    dup
                } else {
                    Some(peer)
                }
            }
            _ => {
                self.totals.wasted += n;
                return;
            }
        };
        job.put(b as usize * BLOCK as usize, data);
        job.blocks[b as usize] = BlockState::Have;
        job.from[b as usize] = key;
        job.left -= 1;
        let complete = job.left == 0;
        if let Some(o) = other {
            if let Some(p) = self.peers.get_mut(&o) {
                p.requests.remove(&(index, b));
                p.send(&Message::Cancel { index, begin, length: n as u32 }, now);
            }
        }
        if complete {
            let job = self.pieces.jobs.get_mut(&index).expect("present");
            job.verifying = true;
            let data = std::mem::take(&mut job.data);
            self.actions.push_back(Action::Verify { index, data });
        }
    }

    // ---------- uploading ----------

    /// Hands out reads of what `key` asked for while its socket takes them (at most
    /// [`UPLOAD_BUFFER`] bytes queued, [`CHIRAL_UPLOAD_BUFFER`] for a proven Chiral peer).
    fn serve(&mut self, key: PeerKey) {
        if !self.seeding {
            return;
        }
        let Some(p) = self.peers.get_mut(&key) else { return };
        p.serve_soon = false;
        if p.am_choking {
            p.uploads.clear();
            return;
        }
        let buffer = p.upload_buffer();
        let mut total = 0u64;
        loop {
            let mut batch = Vec::new();
            while let Some(&(i, b, l)) = p.uploads.front() {
                if p.queued + l as usize + 13 > buffer || batch.len() >= READ_BATCH {
                    break;
                }
                p.queued += l as usize + 13;
                p.up += l as u64;
                total += l as u64;
                batch.push((i, b, l));
                p.uploads.pop_front();
            }
            if batch.is_empty() {
                break;
            }
            self.actions.push_back(Action::Read { peer: key, blocks: batch });
        }
        if total > 0 {
            self.totals.uploaded += total;
            self.account(key);
        }
    }

    /// Piece `index` verified: one `Payment` per peer that delivered blocks of it, with the
    /// bytes it delivered (whole blocks; the last one may be short). The peer field carries
    /// ` piece <info hash>:<index>:<verification>` after the peer's id, so that a host bills
    /// each piece once even when a crash makes it download the piece again (the verification
    /// tells the parts of one verification from a later one). Uploads never appear here.
    fn bill(&mut self, index: u32, from: &[PeerKey], piece_len: u64) {
        let mut per: Vec<(PeerKey, u64)> = Vec::new();
        for (b, k) in from.iter().enumerate() {
            let n = u64::from(Job::<W>::block_len(piece_len, b));
            match per.iter_mut().find(|(p, _)| p == k) {
                Some(e) => e.1 += n,
                None => per.push((*k, n)),
            }
        }
        let verification = self.random();
        let ih = hex::encode(self.info_hash);
        for (k, bytes) in per {
            let Some(p) = self.peers.get(&k) else { continue };
            let id = p.chiral.as_ref().map(|c| c.id.clone()).unwrap_or_else(|| p.addr.to_string());
            let wallet = p.chiral.as_ref().and_then(|c| c.wallet.clone());
            let peer = format!("{id} piece {ih}:{index}:{verification:016x}");
            self.actions.push_back(Action::Payment { peer, wallet, bytes });
        }
    }

    /// Serving a Chiral peer with a wallet: each time another `payment_threshold` bytes went
    /// to it, a `Payment` with ` served` after its id and those bytes, so the host can match
    /// what it served with what it is paid. It is no debt of anyone's.
    fn account(&mut self, key: PeerKey) {
        let threshold = self.local.payment_threshold.max(1);
        let Some(p) = self.peers.get_mut(&key) else { return };
        let Some(c) = p.chiral.as_ref().filter(|c| c.wallet.is_some()) else { return };
        let marks = p.up / threshold;
        if marks > p.paid_marks {
            let bytes = (marks - p.paid_marks) * threshold;
            p.paid_marks = marks;
            let (peer, wallet) = (format!("{} served", c.id), c.wallet.clone());
            self.actions.push_back(Action::Payment { peer, wallet, bytes });
        }
    }

    /// Seeding: the [`Choker`] decides (proven Chiral peers first, regular slots, one
    /// optimistic unchoke rotated by `tick`).
    fn rechoke(&mut self, rotate: bool) {
        if !self.seeding {
            return;
        }
        let views: Vec<PeerView> = self
            .peers
            .iter()
            .map(|(id, p)| PeerView {
                id: *id,
                interested: p.peer_interested,
                chiral: p.fast_lane,
                unchoked: !p.am_choking,
            })
            .collect();
        let random = self.random();
        let d = self.choker.decide(&views, rotate, random);
        let Some(now) = self.now else { return };
        for id in d.choke {
            if let Some(p) = self.peers.get_mut(&id) {
                p.am_choking = true;
                p.uploads.clear();
                p.send(&Message::Choke, now);
            }
        }
        for id in d.unchoke {
            if let Some(p) = self.peers.get_mut(&id) {
                p.am_choking = false;
                p.send(&Message::Unchoke, now);
            }
        }
    }

    // ---------- messages ----------

    /// One message from `key`. A protocol violation drops the peer (an `Action::Disconnect`).
    pub fn received(&mut self, key: PeerKey, msg: Message, now: Instant) {
        self.now = Some(now);
        let Some(p) = self.peers.get_mut(&key) else { return };
        p.last_seen = now;
        if let Err(e) = self.handle(key, msg, now) {
            self.drop_peer(key, e.to_string());
        }
    }

    /// A block (the payload of a `piece` message) from `key`, borrowed from the shell's read
    /// buffer: the same as `received` with [`Message::Piece`], with one copy fewer.
    pub fn received_block(&mut self, key: PeerKey, index: u32, begin: u32, data: &[u8], now: Instant) {
        self.now = Some(now);
        let Some(p) = self.peers.get_mut(&key) else { return };
        p.last_seen = now;
        self.on_block(key, index, begin, data, now);
    }

    fn handle(&mut self, key: PeerKey, msg: Message, now: Instant) -> Result<(), Violation> {
        let count = self.meta.as_ref().map(|m| m.piece_count());
        let p = self.peers.get_mut(&key).expect("checked by the caller");
        match msg {
            Message::Piece { index, begin, data } => self.on_block(key, index, begin, &data, now),
            Message::Extended { id, payload } => self.on_extended(key, id, &payload, now)?,
            Message::KeepAlive | Message::Unknown(_) | Message::Port(_) | Message::HaveNone => {}
            Message::Choke => {
                p.peer_choking = true;
                self.release_requests(key);
                self.pump_all();
            }
            Message::Unchoke => {
                p.peer_choking = false;
                self.pump(key, now);
            }
            Message::Interested => {
                p.peer_interested = true;
                self.rechoke(false);
                self.serve(key);
            }
            Message::NotInterested => {
                p.peer_interested = false;
                if !p.am_choking {
                    p.am_choking = true;
                    p.uploads.clear();
                    p.send(&Message::Choke, now);
                    self.rechoke(false);
                }
            }
            Message::Have(i) => match count {
                Some(n) if i >= n => return Err(Violation::HaveOutOfRange(i)),
                Some(_) => {
                    if !p.has[i as usize] {
                        p.has[i as usize] = true;
                        self.pieces.availability[i as usize] += 1;
                        self.pump(key, now);
                    }
                }
                None => {
                    if p.early_haves.len() < peer::MAX_EARLY_HAVES {
                        p.early_haves.insert(i);
                    }
                }
            },
            Message::Bitfield(b) => match count {
                Some(n) => {
                    let flags = peer_wire::bitfield_flags(&b, n)?;
                    for (i, (old, new)) in p.has.iter_mut().zip(flags).enumerate() {
                        if new && !*old {
                            self.pieces.availability[i] += 1;
                        } else if !new && *old {
                            self.pieces.availability[i] = self.pieces.availability[i].saturating_sub(1);
                        }
                        *old = new;
                    }
                    self.pump(key, now);
                }
                None => p.early_bitfield = Some(b),
            },
            Message::HaveAll => match count {
                Some(_) => {
                    for (i, h) in p.has.iter_mut().enumerate() {
                        if !*h {
                            *h = true;
                            self.pieces.availability[i] += 1;
                        }
                    }
                    self.pump(key, now);
                }
                None => p.early_have_all = true,
            },
            Message::Request { index, begin, length } => {
                if !self.seeding {
                    return Ok(());
                }
                let meta = self.meta.as_ref().ok_or(Violation::RequestBeforeMetadata)?;
                if index >= meta.piece_count()
                    || length == 0
                    || length > MAX_BLOCK
                    || begin as u64 + length as u64 > meta.piece_len(index)
                {
                    return Err(Violation::BadRequest(index));
                }
                if p.am_choking {
                    return Ok(());
                }
                if p.uploads.len() >= MAX_QUEUED_REQUESTS {
                    p.ignored_requests += 1;
                    return Ok(());
                }
                p.uploads.push_back((index, begin, length));
                // Served once the shell has handed in every message it read (`flush`): one
                // disk read for a burst of requests, not one per request.
                p.serve_soon = true;
            }
            Message::Cancel { index, begin, length } => {
                if let Some(at) = p.uploads.iter().position(|r| *r == (index, begin, length)) {
                    p.uploads.remove(at);
                }
            }
        }
        Ok(())
    }

    fn on_extended(&mut self, key: PeerKey, ext: u8, payload: &[u8], now: Instant) -> Result<(), Violation> {
        match ext {
            0 => {
                let h = ExtHandshake::decode(payload)?;
                let p = self.peers.get_mut(&key).expect("checked by the caller");
                if let (Some(cid), Some(_)) = (h.id_of("chiral"), h.chiral.as_ref()) {
                    let signature = h.chiral_nonce.as_ref().map(|n| self.local.identity.prove(n, &self.info_hash));
                    let hello = ChiralHello {
                        msg_type: "hello".into(),
                        chiral_peer_id: self.local.identity.id(),
                        reputation_score: self.local.reputation,
                        wallet_address: self.local.wallet.clone(),
                        signature,
                        network_link: self.local.network_link,
                    };
                    p.send(&Message::Extended { id: cid, payload: hello.encode() }, now);
                }
                p.ext = Some(h);
                if self.meta.is_none() {
                    self.request_metadata(key, now);
                }
            }
            UT_METADATA_ID => self.on_metadata(key, Metadata::decode(payload)?, now)?,
            UT_PEX_ID => self.on_pex(key, Pex::decode(payload)?, now),
            CHIRAL_ID => {
                let hello = ChiralHello::decode(payload)?;
                let p = self.peers.get_mut(&key).expect("checked by the caller");
                let claimed = p.ext.as_ref().and_then(|e| e.chiral.clone());
                let proven = claimed.as_deref() == Some(hello.chiral_peer_id.as_str())
                    && hello
                        .signature
                        .as_ref()
                        .is_some_and(|s| Identity::verify(&hello.chiral_peer_id, &p.nonce, &self.info_hash, s));
                let addr = p.addr;
                if !proven {
                    self.log(Level::Debug, format!("{}: {addr} claims a Chiral id it does not prove", self.label()));
                    return Ok(());
                }
                if p.chiral.is_none() {
                    let reputation = hello.reputation_score.clamp(0, 1000);
                    let network = hello
                        .network_link
                        .filter(|(key, sig)| Identity::verify_link(&hello.chiral_peer_id, key, sig))
                        .map(|(key, _)| hex::encode(key));
                    let c = ChiralPeer {
                        id: hello.chiral_peer_id.clone(),
                        reputation,
                        wallet: hello.wallet_address.clone(),
                        network,
                    };
                    let lane = lane_for(&self.fast_lane, &self.poor_network, &c);
                    p.fast_lane = lane.is_ok();
                    let linked =
                        c.network.as_ref().map_or_else(String::new, |k| format!(", Chiral network key {}", &k[..16]));
                    p.chiral = Some(c);
                    let lane = match lane {
                        Ok(()) => "fast lane".to_string(),
                        Err(why) => format!("no fast lane: {why}"),
                    };
                    self.log(
                        Level::Info,
                        format!(
                            "{}: {addr} is Chiral peer {} (reputation {reputation}{linked}, proven; {lane})",
                            self.label(),
                            hello.chiral_peer_id
                        ),
                    );
                    self.rechoke(false);
                    self.serve(key);
                    self.pump(key, now);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A private torrent (BEP 27) uses its trackers only: no PEX either way.
    fn private(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.private)
    }

    /// Peers a peer told us of (BEP 11): dialled if new, at most [`MAX_PEX`] per message and
    /// one message per peer every [`PEX_HEARD_MIN`].
    fn on_pex(&mut self, key: PeerKey, pex: Pex, now: Instant) {
        if self.private() {
            return;
        }
        let Some(p) = self.peers.get_mut(&key) else { return };
        if p.pex_heard.is_some_and(|t| now.duration_since(t) < PEX_HEARD_MIN) {
            return;
        }
        p.pex_heard = Some(now);
        let known: HashSet<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        let fresh: Vec<SocketAddr> = pex
            .added
            .into_iter()
            .filter(|a| !known.contains(a) && !self.connecting.contains(a) && !self.is_banned(a))
            .take(MAX_PEX)
            .collect();
        if !fresh.is_empty() {
            self.actions.push_back(Action::Dial(fresh));
        }
    }

    /// Where a peer listens, as far as we know (the address we dialled, else the port its
    /// extended handshake gave).
    fn listen_addr(p: &Peer) -> Option<SocketAddr> {
        if p.dialled {
            return Some(p.addr);
        }
        p.ext.as_ref().and_then(|e| e.port).filter(|&port| port != 0).map(|port| SocketAddr::new(p.addr.ip(), port))
    }

    /// Tells each peer that speaks `ut_pex` of the peers we connected to and left since we last
    /// did, every [`PEX_EVERY`].
    fn send_pex(&mut self, now: Instant) {
        if self.private() {
            return;
        }
        let all: Vec<(PeerKey, Option<SocketAddr>)> =
            self.peers.iter().map(|(k, p)| (*k, Self::listen_addr(p))).collect();
        for (key, p) in self.peers.iter_mut() {
            let Some(their) = p.ext.as_ref().and_then(|e| e.id_of("ut_pex")) else { continue };
            if p.pex_at.is_some_and(|t| now.duration_since(t) < PEX_EVERY) {
                continue;
            }
            let now_known: HashSet<SocketAddr> = all.iter().filter(|(k, _)| k != key).filter_map(|(_, a)| *a).collect();
            let added: Vec<SocketAddr> = now_known.difference(&p.pex_sent).copied().take(MAX_PEX).collect();
            let dropped: Vec<SocketAddr> = p.pex_sent.difference(&now_known).copied().take(MAX_PEX).collect();
            p.pex_at = Some(now);
            if added.is_empty() && dropped.is_empty() {
                continue;
            }
            for a in &dropped {
                p.pex_sent.remove(a);
            }
            p.pex_sent.extend(added.iter().copied());
            p.send(&Message::Extended { id: their, payload: Pex { added, dropped }.encode() }, now);
        }
    }

    fn on_metadata(&mut self, key: PeerKey, m: Metadata, now: Instant) -> Result<(), Violation> {
        match m {
            Metadata::Request { piece } => {
                let p = self.peers.get_mut(&key).expect("checked by the caller");
                let Some(their) = p.ext.as_ref().and_then(|e| e.id_of("ut_metadata")) else { return Ok(()) };
                let reply = match &self.meta {
                    Some(meta) if (piece as usize) * METADATA_PIECE < meta.info_bytes.len() => {
                        let s = piece as usize * METADATA_PIECE;
                        let e = (s + METADATA_PIECE).min(meta.info_bytes.len());
                        Metadata::Data {
                            piece,
                            total_size: meta.info_bytes.len() as u64,
                            data: meta.info_bytes[s..e].to_vec(),
                        }
                    }
                    _ => Metadata::Reject { piece },
                };
                p.send(&Message::Extended { id: their, payload: reply.encode() }, now);
            }
            Metadata::Data { piece, total_size, data } => {
                if self.meta.is_some() {
                    return Ok(());
                }
                let announced = self.peers.get(&key).and_then(|p| p.ext.as_ref()).and_then(|e| e.metadata_size);
                if announced != Some(total_size) {
                    return Ok(());
                }
                let Some(asm) = self.metadata.get_mut(&total_size) else { return Ok(()) };
                match asm.add(piece, data, key, &self.info_hash) {
                    Ok(None) => self.request_metadata(key, now),
                    Ok(Some(info)) => {
                        let mut meta = crate::metainfo::parse_info(&info)?;
                        meta.trackers = self.trackers.clone();
                        self.log(Level::Info, format!("{}: metadata received ({} bytes)", self.label(), info.len()));
                        self.set_meta(Arc::new(meta), Some(now));
                    }
                    Err(MetadataError::Malformed(e)) => {
                        self.log(Level::Warn, format!("{}: {e}", self.label()));
                        return Err(Violation::Metadata(MetadataError::Malformed(e)));
                    }
                    Err(MetadataError::Liar(liar)) => {
                        self.ban(liar, "sent metadata that does not match the info hash");
                        if liar != key {
                            self.request_metadata(key, now);
                        }
                    }
                    Err(e @ MetadataError::Unknown) => {
                        self.log(Level::Warn, format!("{}: {e}; asking one peer at a time", self.label()));
                        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
                        for k in keys {
                            if let Some(p) = self.peers.get_mut(&k) {
                                p.metadata_asked.clear();
                            }
                            self.request_metadata(k, now);
                        }
                    }
                }
            }
            Metadata::Reject { .. } => {}
        }
        Ok(())
    }

    // ---------- time ----------

    /// Housekeeping, about once a second: idle peers, keep-alives, requests timed out, end
    /// game, metadata asked again, the optimistic unchoke rotated.
    pub fn tick(&mut self, now: Instant) {
        self.now = Some(now);
        if self.stopped {
            return;
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            let Some(p) = self.peers.get_mut(&key) else { continue };
            if now.duration_since(p.last_seen) > IDLE_TIMEOUT {
                self.drop_peer(key, "idle".into());
                continue;
            }
            if now.duration_since(p.last_sent) > KEEPALIVE_AFTER {
                p.send(&Message::KeepAlive, now);
            }
            // Requests that timed out go back to the pool.
            let expired: Vec<(u32, u32)> = p
                .requests
                .iter()
                .copied()
                .filter(|(i, b)| {
                    matches!(
                        self.pieces.jobs.get(i).and_then(|j| j.blocks.get(*b as usize)),
                        Some(BlockState::Requested { peer, at, .. }) if *peer == key && now.duration_since(*at) > REQUEST_TIMEOUT
                    )
                })
                .collect();
            for (i, b) in expired {
                p.requests.remove(&(i, b));
                let job = self.pieces.jobs.get_mut(&i).expect("matched");
                let s = &mut job.blocks[b as usize];
                if let BlockState::Requested { dup, .. } = *s {
                    *s = match dup {
                        Some(d) => BlockState::Requested { peer: d, at: now, dup: None },
                        None => {
                            job.missing += 1;
                            BlockState::Missing
                        }
                    };
                }
            }
            if self.meta.is_none() {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.metadata_asked.clear();
                }
                self.request_metadata(key, now);
            }
        }
        self.send_pex(now);
        self.pump_all();
        if self.seeding {
            match self.last_rotate {
                Some(t) if now.duration_since(t) < ROTATE_EVERY => {}
                Some(_) => {
                    self.last_rotate = Some(now);
                    self.rechoke(true);
                }
                None => self.last_rotate = Some(now),
            }
        }
    }
}

/// Adds a connection's totals to what earlier connections from the same address did.
fn merge_stat(into: &mut PeerStat, more: PeerStat) {
    into.downloaded += more.downloaded;
    into.uploaded += more.uploaded;
    into.banned |= more.banned;
    into.id = more.id;
    into.address = more.address;
    if !more.chiral_peer_id.is_empty() {
        into.chiral_peer_id = more.chiral_peer_id;
        into.reputation = more.reputation;
    }
}

/// The client tag of an Azureus-style peer id (`-TR3000-`), else the id's hex prefix.
fn client_name(peer_id: &[u8; 20]) -> String {
    let tag = &peer_id[..8];
    if tag[0] == b'-' && tag[7] == b'-' && tag.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(tag).into_owned()
    } else {
        hex::encode(&peer_id[..8])
    }
}
