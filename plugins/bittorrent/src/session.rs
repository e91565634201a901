//! One torrent's swarm: peers (a tokio task each), block scheduling with a deep pipeline,
//! piece verification, banning peers that send bad data, metadata exchange for magnets,
//! serving blocks when seeding, the chiral identification, and per-peer accounting.
//!
//! Shared state lives under one `std::sync::Mutex` that is never held across an `.await`.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use chiral_sdk::{abi::PeerStat, abi_stable::std_types::ROption, Event, Events, PluginError};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{tcp::OwnedWriteHalf, TcpStream},
    sync::{mpsc, oneshot, Notify},
};

use crate::{
    choker::{Choker, PeerView, ROTATE_EVERY},
    extension::{
        ChiralHello, ExtHandshake, Metadata, MetadataAssembly, MetadataError, CHIRAL_ID, METADATA_PIECE, UT_METADATA_ID,
    },
    metainfo::TorrentMetadata,
    peer_wire::{self, Handshake, Message, BLOCK},
    storage::Storage,
    tracker, Shared,
};

/// Requests kept outstanding per peer (Chiral peers get twice as many).
pub const PIPELINE: usize = 128;
/// Connected peers per torrent.
pub const MAX_PEERS: usize = 60;
/// Peers we unchoke at once when seeding (Chiral peers always are).
pub const UPLOAD_SLOTS: usize = 8;
/// Bytes of pieces fetched ahead of the engine's requests.
pub const PREFETCH_BYTES: u64 = 48 << 20;
/// Most block requests queued per peer (what we advertise as `reqq`); more are ignored.
pub const MAX_QUEUED_REQUESTS: usize = 1024;
/// Largest block a peer may ask for.
pub const MAX_BLOCK: u32 = 128 << 10;
/// Bytes of blocks read for one peer and not yet taken by its socket: past this, its
/// requests wait in the queue (as 12-byte entries) instead of in memory as data.
pub const UPLOAD_BUFFER: usize = 2 << 20;
/// Bytes of failed piece attempts kept for blame, across all pieces.
const MAX_FAILED_BYTES: usize = 64 << 20;
/// Most metadata sizes assembled at once (peers may announce different ones).
const MAX_METADATA_SIZES: usize = 4;
/// A peer whose socket takes nothing for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// A block requested this long ago may be asked of a second peer (end game).
const ENDGAME_AFTER: Duration = Duration::from_millis(1500);
/// A request unanswered this long goes back to the pool.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer silent this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    Missing,
    Requested { peer: u64, at: Instant, dup: Option<u64> },
    Have,
}

struct Job {
    blocks: Vec<BlockState>,
    /// Which peer sent each block (for blaming on a hash failure).
    from: Vec<u64>,
    data: Vec<u8>,
    left: usize,
    waiters: Vec<oneshot::Sender<Result<Vec<u8>, PluginError>>>,
    verifying: bool,
}

impl Job {
    fn new(len: u64) -> Self {
        let n = len.div_ceil(BLOCK as u64) as usize;
        Self {
            blocks: vec![BlockState::Missing; n],
            from: vec![0; n],
            data: vec![0; len as usize],
            left: n,
            waiters: Vec::new(),
            verifying: false,
        }
    }
}

struct PeerEntry {
    addr: SocketAddr,
    peer_id: [u8; 20],
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer and not yet written to the socket (control messages and
    /// blocks alike): uploads wait while it is above [`UPLOAD_BUFFER`].
    queued: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    /// Blocks the peer asked for and has not had yet, oldest first (at most
    /// [`MAX_QUEUED_REQUESTS`]; more are ignored, a `cancel` removes one, a choke clears them).
    uploads: VecDeque<(u32, u32, u32)>,
    /// Requests ignored because the queue was full.
    ignored_requests: u64,
    /// Piece flags (empty until the metadata is known; raw bitfield kept meanwhile).
    has: Vec<bool>,
    raw_bitfield: Option<Vec<u8>>,
    have_all: bool,
    peer_choking: bool,
    peer_interested: bool,
    am_choking: bool,
    inflight: usize,
    ext: Option<ExtHandshake>,
    chiral_verified: bool,
    /// The reputation the peer announced in its `chiral` message (0..=1000).
    chiral_reputation: Option<i64>,
    wallet: Option<String>,
    down: u64,
    up: u64,
    paid_marks: u64,
    kill: Option<String>,
    metadata_asked: HashSet<u32>,
    last_seen: Instant,
    last_sent: Instant,
}

impl PeerEntry {
    fn depth(&self) -> usize {
        let reqq = self.ext.as_ref().and_then(|e| e.reqq).map(|q| q as usize).unwrap_or(PIPELINE);
        let base = reqq.clamp(16, 256).min(PIPELINE * 2);
        if self.chiral_verified {
            (base * 2).min(512)
        } else {
            base
        }
    }
    fn label(&self) -> String {
        self.addr.to_string()
    }
    /// Totals for reports; `banned` comes from the session's ban lists.
    fn stat(&self, banned: bool) -> PeerStat {
        let chiral = if self.chiral_verified { self.ext.as_ref().and_then(|e| e.chiral.clone()) } else { None };
        PeerStat {
            id: client_name(&self.peer_id).into(),
            address: self.addr.to_string().into(),
            downloaded: self.down,
            uploaded: self.up,
            chiral_peer_id: chiral.unwrap_or_default().into(),
            reputation: self.chiral_reputation.filter(|_| self.chiral_verified).into(),
            banned,
        }
    }
    fn send(&mut self, m: &Message) {
        let mut b = Vec::with_capacity(32);
        peer_wire::encode(m, &mut b);
        self.send_raw(b);
    }
    fn send_raw(&mut self, b: Vec<u8>) {
        self.queued.fetch_add(b.len(), Ordering::Relaxed);
        if self.tx.send(b).is_err() {
            self.kill.get_or_insert_with(|| "connection closed".into());
        }
        self.last_sent = Instant::now();
    }
}

/// One `fetch_piece` waiting for its piece; dropped before the piece came (the engine
/// cancelled the request), it tells the session, which may then stop fetching the piece.
struct Waiting<'a> {
    session: &'a Session,
    index: u32,
    rx: Option<oneshot::Receiver<Result<Vec<u8>, PluginError>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.rx.take().is_some() {
            self.session.waiter_gone(self.index);
        }
    }
}

/// The bytes of a piece that failed verification, and which peer sent each block.
type FailedAttempt = (Vec<u8>, Vec<u64>);

struct State {
    next_peer: u64,
    peers: HashMap<u64, PeerEntry>,
    connecting: HashSet<SocketAddr>,
    known: HashSet<SocketAddr>,
    banned_addrs: HashSet<SocketAddr>,
    /// Addresses of banned peers, by IP: a liar reconnecting from another port stays out.
    /// Loopback peers are banned by address and port only (many local peers share one IP).
    banned_ips: HashSet<std::net::IpAddr>,
    banned_ids: HashSet<[u8; 20]>,
    availability: Vec<u32>,
    jobs: BTreeMap<u32, Job>,
    cache: HashMap<u32, Vec<u8>>,
    cache_order: VecDeque<u32>,
    delivered: Vec<bool>,
    cursor: u32,
    /// Whether pieces after the engine's cursor are fetched before they are asked for: only
    /// while this swarm is the download's only source (see `set_read_ahead`). Off until the
    /// engine says so: a swarm opened beside mirrors must not fetch the whole file in the
    /// moment between its metadata arriving and the engine's first word.
    read_ahead: bool,
    /// Failed attempts of a piece: (data, who sent each block), compared once it verifies.
    failed: HashMap<u32, Vec<FailedAttempt>>,
    /// Metadata being assembled, one per size announced by peers (at most
    /// [`MAX_METADATA_SIZES`]): a peer announcing another size cannot reset the others.
    metadata: BTreeMap<u64, MetadataAssembly>,
    uploaded: u64,
    downloaded: u64,
    wasted: u64,
    bad_pieces: u64,
    stopped: bool,
    choker: Choker,
    /// Totals of peers that left, by address, so the end-of-download report still has them.
    past_peers: HashMap<SocketAddr, PeerStat>,
}

/// Peers that left and are still remembered for the report (oldest forgotten first is not
/// worth the bookkeeping: past this bound, new departures are simply not recorded).
const MAX_PAST_PEERS: usize = 4096;

impl State {
    fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.banned_addrs.contains(addr) || self.banned_ips.contains(&addr.ip())
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
    }
}

/// The client tag of an Azureus-style peer id (`-TR3000-`), else the id's hex prefix.
fn client_name(peer_id: &[u8; 20]) -> String {
    let tag = &peer_id[..8];
    if tag[0] == b'-' && tag[7] == b'-' && tag.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(tag).into_owned()
    } else {
        peer_id[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Default for State {
    fn default() -> Self {
        Self {
            next_peer: 0,
            peers: HashMap::new(),
            connecting: HashSet::new(),
            known: HashSet::new(),
            banned_addrs: HashSet::new(),
            banned_ips: HashSet::new(),
            banned_ids: HashSet::new(),
            availability: Vec::new(),
            jobs: BTreeMap::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            delivered: Vec::new(),
            cursor: 0,
            read_ahead: false,
            failed: HashMap::new(),
            metadata: BTreeMap::new(),
            uploaded: 0,
            downloaded: 0,
            wasted: 0,
            bad_pieces: 0,
            stopped: false,
            choker: Choker::new(UPLOAD_SLOTS),
            past_peers: HashMap::new(),
        }
    }
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
    state: Mutex<State>,
    pub meta_ready: Notify,
    trackers: Mutex<Vec<Vec<String>>>,
    events: Events,
    pub label: String,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        info_hash: [u8; 20],
        meta: Option<Arc<TorrentMetadata>>,
        trackers: Vec<Vec<String>>,
        mode: Mode,
        events: Events,
    ) -> Arc<Self> {
        let s = Arc::new(Self {
            info_hash,
            meta: OnceLock::new(),
            mode,
            shared,
            state: Mutex::new(State::default()),
            meta_ready: Notify::new(),
            trackers: Mutex::new(trackers),
            events,
            label: format!("bittorrent:{}", &hex::encode(info_hash)[..12]),
            tasks: Mutex::new(Vec::new()),
        });
        if let Some(m) = meta {
            s.set_meta(m);
        }
        s
    }

    pub fn meta(&self) -> Option<&Arc<TorrentMetadata>> {
        self.meta.get()
    }

    pub fn is_seed(&self) -> bool {
        matches!(self.mode, Mode::Seed(_))
    }

    fn set_meta(&self, m: Arc<TorrentMetadata>) {
        let n = m.piece_count() as usize;
        if self.meta.set(m).is_err() {
            return;
        }
        let mut st = lock(&self.state);
        st.availability = vec![0; n];
        st.delivered = vec![false; n];
        st.metadata.clear();
        let count = n as u32;
        for p in st.peers.values_mut() {
            p.has = if p.have_all {
                vec![true; n]
            } else if let Some(raw) = p.raw_bitfield.take() {
                peer_wire::bitfield_flags(&raw, count).unwrap_or_else(|_| vec![false; n])
            } else {
                std::mem::take(&mut p.has).into_iter().chain(std::iter::repeat(false)).take(n).collect()
            };
        }
        let flags: Vec<Vec<bool>> = st.peers.values().map(|p| p.has.clone()).collect();
        for f in flags {
            for (i, h) in f.iter().enumerate() {
                if *h {
                    st.availability[i] += 1;
                }
            }
        }
        let leech = !self.is_seed();
        for p in st.peers.values_mut() {
            if leech {
                p.send(&Message::Interested);
            }
            p.notify.notify_one();
        }
        drop(st);
        self.meta_ready.notify_waiters();
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

    pub fn peer_count(&self) -> usize {
        lock(&self.state).peers.len()
    }

    pub fn uploaded(&self) -> u64 {
        lock(&self.state).uploaded
    }

    /// Every peer met so far (connected now or gone) with its totals, one entry per address.
    pub fn peer_stats(&self) -> Vec<PeerStat> {
        let st = lock(&self.state);
        let mut by_addr = st.past_peers.clone();
        for p in st.peers.values() {
            let now = p.stat(st.banned_addrs.contains(&p.addr));
            merge_stat(by_addr.entry(p.addr).or_default(), now);
        }
        by_addr.into_values().collect()
    }

    /// Per-piece holder counts (at least 1: the swarm may still find a holder).
    pub fn availability(&self) -> Vec<u32> {
        lock(&self.state).availability.iter().map(|a| (*a).max(1)).collect()
    }

    /// Whether a connected peer has piece `index` (or it is fetched already and cached).
    pub fn has_holder(&self, index: u32) -> bool {
        let st = lock(&self.state);
        st.cache.contains_key(&index) || st.availability.get(index as usize).is_some_and(|a| *a > 0)
    }

    /// Stops every task of this session (peers, announcer) and tells the trackers.
    pub fn stop(self: &Arc<Self>) {
        {
            let mut st = lock(&self.state);
            if st.stopped {
                return;
            }
            st.stopped = true;
            for p in st.peers.values_mut() {
                p.kill = Some("stopped".into());
                p.notify.notify_one();
            }
            for (_, j) in std::mem::take(&mut st.jobs) {
                for w in j.waiters {
                    let _ = w.send(Err(PluginError::cancelled()));
                }
            }
        }
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        self.shared.unregister(&self.info_hash);
        // Best effort `stopped` announce.
        let me = self.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(3), me.announce_once(tracker::Event::Stopped)).await;
            });
        } else {
            drop(self.shared.runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(3), me.announce_once(tracker::Event::Stopped)).await;
            }));
        }
    }

    // ---------- the engine side: fetching pieces ----------

    /// A verified piece from the swarm.
    pub async fn fetch_piece(self: &Arc<Self>, index: u32) -> Result<Vec<u8>, PluginError> {
        let meta = self.wait_meta().await;
        if index >= meta.piece_count() {
            return Err(PluginError::invalid(format!("piece {index} out of range")));
        }
        let mut waiting = {
            let mut st = lock(&self.state);
            if st.stopped {
                return Err(PluginError::cancelled());
            }
            st.cursor = st.cursor.max(index + 1);
            if let Some(d) = st.cache.remove(&index) {
                st.cache_order.retain(|i| *i != index);
                st.delivered[index as usize] = true;
                return Ok(d);
            }
            let (tx, rx) = oneshot::channel();
            let len = meta.piece_len(index);
            st.jobs.entry(index).or_insert_with(|| Job::new(len)).waiters.push(tx);
            for p in st.peers.values() {
                p.notify.notify_one();
            }
            Waiting { session: self, index, rx: Some(rx) }
        };
        let rx = waiting.rx.as_mut().expect("set above");
        let r = match rx.await {
            Ok(r) => r,
            Err(_) => Err(PluginError::cancelled()),
        };
        waiting.rx = None;
        r
    }

    /// Reads ahead of the engine (fetches the pieces after the last one asked for) only when
    /// `on`: the engine says whether this swarm is the download's only source. Turning it off
    /// abandons the pieces being read ahead: their block requests are cancelled at the peers.
    pub fn set_read_ahead(&self, on: bool) {
        let mut st = lock(&self.state);
        if st.read_ahead == on {
            return;
        }
        st.read_ahead = on;
        if !on {
            let unwanted: Vec<u32> = st
                .jobs
                .iter()
                .filter(|(_, j)| !j.verifying && j.waiters.iter().all(|w| w.is_closed()))
                .map(|(i, _)| *i)
                .collect();
            for i in unwanted {
                Self::abandon_locked(&mut st, i);
            }
        }
    }

    /// A `fetch_piece` gave up waiting for `index` (the engine cancelled it): without read-ahead
    /// nobody else wants the piece, so its outstanding requests are cancelled.
    fn waiter_gone(&self, index: u32) {
        let mut st = lock(&self.state);
        let read_ahead = st.read_ahead;
        let Some(job) = st.jobs.get_mut(&index) else { return };
        job.waiters.retain(|w| !w.is_closed());
        if job.waiters.is_empty() && !job.verifying && !read_ahead {
            Self::abandon_locked(&mut st, index);
        }
    }

    /// Drops the job of piece `index` and cancels its requested blocks at the peers holding
    /// them (a block that arrives anyway is counted as wasted).
    fn abandon_locked(st: &mut State, index: u32) {
        let Some(job) = st.jobs.remove(&index) else { return };
        let len = job.data.len() as u64;
        for (b, s) in job.blocks.iter().enumerate() {
            let BlockState::Requested { peer, dup, .. } = *s else { continue };
            let begin = b as u32 * BLOCK;
            let length = (len - begin as u64).min(BLOCK as u64) as u32;
            for id in std::iter::once(peer).chain(dup) {
                if let Some(p) = st.peers.get_mut(&id) {
                    p.inflight = p.inflight.saturating_sub(1);
                    p.send(&Message::Cancel { index, begin, length });
                }
            }
        }
        for p in st.peers.values() {
            p.notify.notify_one();
        }
    }

    fn prefetch_limit(meta: &TorrentMetadata) -> usize {
        // At least one piece, and no more than PREFETCH_BYTES of them unless one piece is larger:
        // four 512 MiB pieces read ahead would be 2 GiB in memory.
        ((PREFETCH_BYTES / meta.piece_length.max(1)) as usize).clamp(1, 1024)
    }

    /// Picks up to `room` blocks for peer `id` and sends the requests.
    fn pump_locked(&self, st: &mut State, id: u64) {
        let Some(meta) = self.meta.get() else { return };
        if self.is_seed() {
            return;
        }
        let Some(p) = st.peers.get(&id) else { return };
        if p.peer_choking || p.kill.is_some() {
            return;
        }
        let depth = p.depth();
        if p.inflight >= depth {
            return;
        }
        let mut room = depth - p.inflight;
        let has =
            |st: &State, i: u32| st.peers.get(&id).is_some_and(|p| p.has.get(i as usize).copied().unwrap_or(false));
        let mut reqs: Vec<(u32, u32, u32)> = Vec::new();
        let now = Instant::now();
        // 1. Missing blocks of pieces already wanted (engine's first, then prefetches).
        let order: Vec<u32> = {
            let mut w: Vec<u32> = st.jobs.iter().filter(|(_, j)| !j.waiters.is_empty()).map(|(i, _)| *i).collect();
            if st.read_ahead {
                w.extend(st.jobs.iter().filter(|(_, j)| j.waiters.is_empty()).map(|(i, _)| *i));
            }
            w
        };
        for &i in &order {
            if room == 0 {
                break;
            }
            if !has(st, i) {
                continue;
            }
            let plen = meta.piece_len(i);
            let job = st.jobs.get_mut(&i).expect("listed");
            if job.verifying {
                continue;
            }
            for (b, s) in job.blocks.iter_mut().enumerate() {
                if room == 0 {
                    break;
                }
                if *s == BlockState::Missing {
                    *s = BlockState::Requested { peer: id, at: now, dup: None };
                    let begin = b as u32 * BLOCK;
                    reqs.push((i, begin, (plen - begin as u64).min(BLOCK as u64) as u32));
                    room -= 1;
                }
            }
        }
        // 2. New prefetch pieces after the engine's cursor (only as the only source).
        if room > 0 && st.read_ahead {
            let limit = Self::prefetch_limit(meta);
            let count = meta.piece_count();
            let mut scanned = 0;
            let mut i = st.cursor % count.max(1);
            while room > 0 && count > 0 && scanned < count {
                let ahead = st.jobs.values().filter(|j| j.waiters.is_empty()).count() + st.cache.len();
                if ahead >= limit {
                    break;
                }
                if !st.delivered[i as usize] && !st.jobs.contains_key(&i) && !st.cache.contains_key(&i) && has(st, i) {
                    let plen = meta.piece_len(i);
                    let mut job = Job::new(plen);
                    for (b, s) in job.blocks.iter_mut().enumerate() {
                        if room == 0 {
                            break;
                        }
                        *s = BlockState::Requested { peer: id, at: now, dup: None };
                        let begin = b as u32 * BLOCK;
                        reqs.push((i, begin, (plen - begin as u64).min(BLOCK as u64) as u32));
                        room -= 1;
                    }
                    st.jobs.insert(i, job);
                }
                i = (i + 1) % count;
                scanned += 1;
            }
        }
        // 3. End game: blocks of wanted pieces another peer has been slow with.
        if room > 0 {
            for &i in &order {
                if room == 0 {
                    break;
                }
                if !has(st, i) {
                    continue;
                }
                let plen = meta.piece_len(i);
                let Some(job) = st.jobs.get_mut(&i) else { continue };
                if job.waiters.is_empty() || job.verifying {
                    continue;
                }
                for (b, s) in job.blocks.iter_mut().enumerate() {
                    if room == 0 {
                        break;
                    }
                    if let BlockState::Requested { peer, at, dup: None } = *s {
                        if peer != id && now.duration_since(at) >= ENDGAME_AFTER {
                            *s = BlockState::Requested { peer, at, dup: Some(id) };
                            let begin = b as u32 * BLOCK;
                            reqs.push((i, begin, (plen - begin as u64).min(BLOCK as u64) as u32));
                            room -= 1;
                        }
                    }
                }
            }
        }
        if reqs.is_empty() {
            return;
        }
        let p = st.peers.get_mut(&id).expect("present");
        p.inflight += reqs.len();
        let mut buf = Vec::with_capacity(reqs.len() * 17);
        for (index, begin, length) in reqs {
            peer_wire::encode(&Message::Request { index, begin, length }, &mut buf);
        }
        p.send_raw(buf);
    }

    fn pump(&self, id: u64) {
        let mut st = lock(&self.state);
        self.pump_locked(&mut st, id);
    }

    /// Requests of peer `id` go back to the pool (it choked us, or left).
    fn release_requests(st: &mut State, id: u64) {
        for job in st.jobs.values_mut() {
            for s in job.blocks.iter_mut() {
                match *s {
                    BlockState::Requested { peer, dup, at } if peer == id => {
                        *s = match dup {
                            Some(d) => BlockState::Requested { peer: d, at, dup: None },
                            None => BlockState::Missing,
                        }
                    }
                    BlockState::Requested { peer, at, dup: Some(d) } if d == id => {
                        *s = BlockState::Requested { peer, at, dup: None }
                    }
                    _ => {}
                }
            }
        }
        if let Some(p) = st.peers.get_mut(&id) {
            p.inflight = 0;
        }
        for p in st.peers.values() {
            p.notify.notify_one();
        }
    }

    /// A block arrived from peer `id`.
    fn on_block(self: &Arc<Self>, id: u64, index: u32, begin: u32, data: Vec<u8>) {
        let Some(meta) = self.meta.get().cloned() else { return };
        let mut st = lock(&self.state);
        let n = data.len() as u64;
        st.downloaded += n;
        if let Some(p) = st.peers.get_mut(&id) {
            p.down += n;
        }
        self.account(&mut st, id);
        let b = (begin / BLOCK) as usize;
        let Some(job) = st.jobs.get_mut(&index) else {
            st.wasted += n;
            return;
        };
        let expected_len =
            (meta.piece_len(index) - (b as u64 * BLOCK as u64).min(meta.piece_len(index))).min(BLOCK as u64);
        let state = job.blocks.get(b).copied();
        let (ok, other) = match state {
            Some(BlockState::Requested { peer, dup, .. })
                if begin.is_multiple_of(BLOCK) && n == expected_len && (peer == id || dup == Some(id)) =>
            {
                (true, if peer == id { dup } else { Some(peer) })
            }
            _ => (false, None),
        };
        if let Some(p) = st.peers.get_mut(&id) {
            p.inflight = p.inflight.saturating_sub(1);
        }
        if !ok {
            st.wasted += n;
            return;
        }
        let job = st.jobs.get_mut(&index).expect("present");
        let at = b * BLOCK as usize;
        job.data[at..at + data.len()].copy_from_slice(&data);
        job.blocks[b] = BlockState::Have;
        job.from[b] = id;
        job.left -= 1;
        let complete = job.left == 0;
        if let Some(o) = other {
            if let Some(p) = st.peers.get_mut(&o) {
                p.inflight = p.inflight.saturating_sub(1);
                p.send(&Message::Cancel { index, begin, length: n as u32 });
            }
        }
        if !complete {
            return;
        }
        let job = st.jobs.get_mut(&index).expect("present");
        job.verifying = true;
        let piece = std::mem::take(&mut job.data);
        let from = job.from.clone();
        drop(st);
        // Hash outside the lock.
        let good = meta.piece_hash(index).is_some_and(|h| chiral_sdk::verify::sha1(&piece) == h);
        let mut st = lock(&self.state);
        let Some(job) = st.jobs.remove(&index) else { return };
        if good {
            // Blame whoever sent different bytes in an earlier failed attempt of this piece.
            if let Some(attempts) = st.failed.remove(&index) {
                let mut liars = HashSet::new();
                for (bad, who) in attempts {
                    for (bi, peer) in who.iter().enumerate() {
                        let s = bi * BLOCK as usize;
                        let e = (s + BLOCK as usize).min(piece.len());
                        if bad[s..e] != piece[s..e] {
                            liars.insert(*peer);
                        }
                    }
                }
                for l in liars {
                    self.ban(&mut st, l, "sent data that failed verification");
                }
            }
            if job.waiters.is_empty() {
                st.cache.insert(index, piece);
                st.cache_order.push_back(index);
                // Keep the cache within the prefetch budget: drop the oldest unclaimed piece.
                let limit = Self::prefetch_limit(&meta);
                while st.cache.len() > limit {
                    if let Some(old) = st.cache_order.pop_front() {
                        st.cache.remove(&old);
                    } else {
                        break;
                    }
                }
            } else {
                st.delivered[index as usize] = true;
                let mut waiters = job.waiters.into_iter();
                let last = waiters.next_back();
                for w in waiters {
                    let _ = w.send(Ok(piece.clone()));
                }
                if let Some(w) = last {
                    let _ = w.send(Ok(piece));
                }
            }
        } else {
            st.bad_pieces += 1;
            let senders: HashSet<u64> = from.iter().copied().collect();
            self.events.warn(format!("{}: piece {index} failed its SHA-1 check", self.label));
            if senders.len() == 1 {
                let only = *senders.iter().next().expect("one");
                self.ban(&mut st, only, "sent a piece that failed verification");
            } else {
                // Kept to compare with the good copy later (per-block blame), within bounds.
                let kept: usize = st.failed.values().flatten().map(|a| a.0.len()).sum();
                let attempts = st.failed.entry(index).or_default();
                if attempts.len() < 4 && kept + piece.len() <= MAX_FAILED_BYTES {
                    attempts.push((piece, from));
                }
            }
            // Start the piece again, keeping who waits for it.
            let mut again = Job::new(meta.piece_len(index));
            again.waiters = job.waiters;
            st.jobs.insert(index, again);
        }
        for p in st.peers.values() {
            p.notify.notify_one();
        }
    }

    /// Sends the blocks peer `id` asked for while its socket takes them: a batch is popped
    /// under the lock, read from disk on a blocking thread with no lock held, then queued to
    /// the writer. Returns when the queue is empty, the peer is choked, or its writer holds
    /// [`UPLOAD_BUFFER`] bytes (the writer's progress wakes the connection task again).
    async fn serve_uploads(self: &Arc<Self>, id: u64) -> Result<(), String> {
        let Mode::Seed(_) = &self.mode else { return Ok(()) };
        let Some(meta) = self.meta.get().cloned() else { return Ok(()) };
        loop {
            let batch: Vec<(u32, u32, u32)> = {
                let mut st = lock(&self.state);
                let Some(p) = st.peers.get_mut(&id) else { return Ok(()) };
                if p.am_choking {
                    p.uploads.clear();
                    return Ok(());
                }
                let mut room = UPLOAD_BUFFER.saturating_sub(p.queued.load(Ordering::Relaxed));
                let mut batch = Vec::new();
                while let Some(&(i, b, l)) = p.uploads.front() {
                    if (l as usize) > room || batch.len() >= 64 {
                        break;
                    }
                    room -= l as usize;
                    batch.push((i, b, l));
                    p.uploads.pop_front();
                }
                batch
            };
            if batch.is_empty() {
                return Ok(());
            }
            let me = self.clone();
            let meta2 = meta.clone();
            let blocks = tokio::task::spawn_blocking(move || {
                let Mode::Seed(storage) = &me.mode else { return Err("not seeding".to_string()) };
                batch
                    .into_iter()
                    .map(|(index, begin, length)| {
                        let offset = index as u64 * meta2.piece_length + begin as u64;
                        let mut out = Vec::with_capacity(13 + length as usize);
                        peer_wire::piece_header(index, begin, length as usize, &mut out);
                        out.resize(13 + length as usize, 0);
                        storage.read_at(offset, &mut out[13..]).map_err(|e| format!("reading the content: {e}"))?;
                        Ok((length as u64, out))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|e| e.to_string())??;
            let mut st = lock(&self.state);
            let Some(p) = st.peers.get_mut(&id) else { return Ok(()) };
            let mut sent = 0;
            for (len, out) in blocks {
                p.send_raw(out);
                p.up += len;
                sent += len;
            }
            st.uploaded += sent;
            self.account(&mut st, id);
        }
    }

    fn ban(&self, st: &mut State, id: u64, why: &str) {
        if let Some(p) = st.peers.get_mut(&id) {
            self.events.warn(format!("{}: banning peer {}: {why}", self.label, p.addr));
            st.banned_addrs.insert(p.addr);
            if !p.addr.ip().is_loopback() {
                st.banned_ips.insert(p.addr.ip());
            }
            let pid = p.peer_id;
            p.kill = Some(why.to_string());
            p.notify.notify_one();
            st.banned_ids.insert(pid);
        }
    }

    /// Emits `PaymentRequired` each time a peer's traffic crosses another threshold.
    fn account(&self, st: &mut State, id: u64) {
        let threshold = self.shared.payment_threshold.max(1);
        let Some(p) = st.peers.get_mut(&id) else { return };
        let total = p.up + p.down;
        let marks = total / threshold;
        if marks > p.paid_marks {
            p.paid_marks = marks;
            let peer = match (&p.ext, p.chiral_verified) {
                (Some(e), true) => e.chiral.clone().unwrap_or_else(|| p.label()),
                _ => p.label(),
            };
            self.events.emit(Event::PaymentRequired {
                peer: peer.into(),
                wallet: match &p.wallet {
                    Some(w) => ROption::RSome(w.clone().into()),
                    None => ROption::RNone,
                },
                bytes: total,
            });
        }
    }

    // ---------- peers ----------

    fn add_peer(
        &self,
        addr: SocketAddr,
        peer_id: [u8; 20],
        tx: mpsc::UnboundedSender<Vec<u8>>,
        queued: Arc<AtomicUsize>,
        notify: Arc<Notify>,
    ) -> Result<u64, String> {
        let mut st = lock(&self.state);
        if st.stopped {
            return Err("session stopped".into());
        }
        if st.is_banned(&addr) || st.banned_ids.contains(&peer_id) {
            return Err("banned".into());
        }
        if peer_id == self.shared.peer_id {
            return Err("connected to ourselves".into());
        }
        if st.peers.values().any(|p| p.peer_id == peer_id) {
            return Err("already connected to this peer".into());
        }
        if st.peers.len() >= MAX_PEERS {
            return Err("too many peers".into());
        }
        st.next_peer += 1;
        let id = st.next_peer;
        let n = self.meta.get().map(|m| m.piece_count() as usize).unwrap_or(0);
        let now = Instant::now();
        st.peers.insert(
            id,
            PeerEntry {
                addr,
                peer_id,
                tx,
                queued,
                notify,
                uploads: VecDeque::new(),
                ignored_requests: 0,
                has: vec![false; n],
                raw_bitfield: None,
                have_all: false,
                peer_choking: true,
                peer_interested: false,
                am_choking: true,
                inflight: 0,
                ext: None,
                chiral_verified: false,
                chiral_reputation: None,
                wallet: None,
                down: 0,
                up: 0,
                paid_marks: 0,
                kill: None,
                metadata_asked: HashSet::new(),
                last_seen: now,
                last_sent: now,
            },
        );
        Ok(id)
    }

    fn remove_peer(&self, id: u64) {
        let mut st = lock(&self.state);
        Self::release_requests(&mut st, id);
        st.metadata.values_mut().for_each(|a| a.forget(id));
        if let Some(p) = st.peers.remove(&id) {
            let gone = p.stat(st.banned_addrs.contains(&p.addr));
            if st.past_peers.len() < MAX_PAST_PEERS || st.past_peers.contains_key(&p.addr) {
                merge_stat(st.past_peers.entry(p.addr).or_default(), gone);
            }
            for (i, h) in p.has.iter().enumerate() {
                if *h {
                    if let Some(a) = st.availability.get_mut(i) {
                        *a = a.saturating_sub(1);
                    }
                }
            }
            st.connecting.remove(&p.addr);
            if !p.am_choking {
                self.rechoke(&mut st);
            }
        }
    }

    /// Seeding: the [`Choker`] decides (Chiral peers first, regular slots, one optimistic
    /// unchoke rotated by [`Self::choke_loop`]).
    fn rechoke(&self, st: &mut State) {
        self.rechoke_with(st, false);
    }

    fn rechoke_with(&self, st: &mut State, rotate: bool) {
        if !self.is_seed() {
            return;
        }
        let views: Vec<PeerView> = st
            .peers
            .iter()
            .map(|(id, p)| PeerView {
                id: *id,
                interested: p.peer_interested && p.kill.is_none(),
                chiral: p.chiral_verified,
                unchoked: !p.am_choking,
            })
            .collect();
        let d = st.choker.decide(&views, rotate, crate::random_u64());
        for id in d.choke {
            if let Some(p) = st.peers.get_mut(&id) {
                p.am_choking = true;
                p.send(&Message::Choke);
            }
        }
        for id in d.unchoke {
            if let Some(p) = st.peers.get_mut(&id) {
                p.am_choking = false;
                p.send(&Message::Unchoke);
            }
        }
    }

    /// Seeding: rotates the optimistic unchoke every [`crate::choker::ROTATE_EVERY`].
    pub async fn choke_loop(self: Arc<Self>) {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + ROTATE_EVERY, ROTATE_EVERY);
        loop {
            t.tick().await;
            let mut st = lock(&self.state);
            if st.stopped {
                return;
            }
            self.rechoke_with(&mut st, true);
        }
    }

    fn set_has(&self, st: &mut State, id: u64, flags: Vec<bool>) {
        let Some(p) = st.peers.get_mut(&id) else { return };
        let old = std::mem::replace(&mut p.has, flags);
        let new = p.has.clone();
        for (i, h) in new.iter().enumerate() {
            let was = old.get(i).copied().unwrap_or(false);
            if *h != was {
                if let Some(a) = st.availability.get_mut(i) {
                    if *h {
                        *a += 1
                    } else {
                        *a = a.saturating_sub(1)
                    }
                }
            }
        }
    }

    /// Handles one message from peer `id`; `Err` closes the connection.
    fn handle(self: &Arc<Self>, id: u64, msg: Message) -> Result<(), String> {
        let count = self.meta.get().map(|m| m.piece_count());
        match msg {
            Message::Piece { index, begin, data } => {
                self.on_block(id, index, begin, data);
                self.pump(id);
                return Ok(());
            }
            Message::Extended { id: ext, payload } => return self.on_extended(id, ext, &payload),
            _ => {}
        }
        let mut st = lock(&self.state);
        match msg {
            Message::KeepAlive | Message::Unknown(_) | Message::Port(_) => {}
            Message::Choke => {
                if let Some(p) = st.peers.get_mut(&id) {
                    p.peer_choking = true;
                }
                Self::release_requests(&mut st, id);
            }
            Message::Unchoke => {
                if let Some(p) = st.peers.get_mut(&id) {
                    p.peer_choking = false;
                }
                self.pump_locked(&mut st, id);
            }
            Message::Interested => {
                if let Some(p) = st.peers.get_mut(&id) {
                    p.peer_interested = true;
                }
                self.rechoke(&mut st);
            }
            Message::NotInterested => {
                let was_unchoked = st.peers.get_mut(&id).map(|p| {
                    p.peer_interested = false;
                    let was = !p.am_choking;
                    if was {
                        p.am_choking = true;
                        p.send(&Message::Choke);
                    }
                    was
                });
                if was_unchoked == Some(true) {
                    self.rechoke(&mut st);
                }
            }
            Message::Have(i) => match count {
                Some(n) if i >= n => return Err(format!("have {i} out of range")),
                Some(_) => {
                    let mut flags = st.peers.get(&id).map(|p| p.has.clone()).unwrap_or_default();
                    if let Some(f) = flags.get_mut(i as usize) {
                        *f = true;
                    }
                    self.set_has(&mut st, id, flags);
                    self.pump_locked(&mut st, id);
                }
                None => {
                    if let Some(p) = st.peers.get_mut(&id) {
                        if p.has.len() <= i as usize && i < crate::metainfo::MAX_PIECES as u32 {
                            p.has.resize(i as usize + 1, false);
                        }
                        if let Some(f) = p.has.get_mut(i as usize) {
                            *f = true;
                        }
                    }
                }
            },
            Message::Bitfield(b) => match count {
                Some(n) => {
                    let flags = peer_wire::bitfield_flags(&b, n).map_err(|e| e.to_string())?;
                    self.set_has(&mut st, id, flags);
                    self.pump_locked(&mut st, id);
                }
                None => {
                    if let Some(p) = st.peers.get_mut(&id) {
                        p.raw_bitfield = Some(b);
                    }
                }
            },
            Message::HaveAll => {
                if let Some(n) = count {
                    self.set_has(&mut st, id, vec![true; n as usize]);
                    self.pump_locked(&mut st, id);
                } else if let Some(p) = st.peers.get_mut(&id) {
                    p.have_all = true;
                }
            }
            Message::HaveNone => {}
            Message::Request { index, begin, length } => {
                let Mode::Seed(_) = &self.mode else { return Ok(()) };
                let meta = self.meta.get().ok_or("a request before the metadata")?;
                let Some(p) = st.peers.get_mut(&id) else { return Ok(()) };
                if index >= meta.piece_count()
                    || length == 0
                    || length > MAX_BLOCK
                    || begin as u64 + length as u64 > meta.piece_len(index)
                {
                    return Err(format!("request outside piece {index} or larger than {MAX_BLOCK} bytes"));
                }
                if p.am_choking {
                    return Ok(());
                }
                if p.uploads.len() >= MAX_QUEUED_REQUESTS {
                    p.ignored_requests += 1;
                    return Ok(());
                }
                p.uploads.push_back((index, begin, length));
                p.notify.notify_one();
            }
            Message::Cancel { index, begin, length } => {
                if let Some(p) = st.peers.get_mut(&id) {
                    if let Some(at) = p.uploads.iter().position(|r| *r == (index, begin, length)) {
                        p.uploads.remove(at);
                    }
                }
            }
            Message::Piece { .. } | Message::Extended { .. } => unreachable!("handled above"),
        }
        Ok(())
    }

    fn on_extended(self: &Arc<Self>, id: u64, ext: u8, payload: &[u8]) -> Result<(), String> {
        let mut st = lock(&self.state);
        match ext {
            0 => {
                let h = ExtHandshake::decode(payload)?;
                let Some(p) = st.peers.get_mut(&id) else { return Ok(()) };
                if let (Some(cid), Some(their)) = (h.id_of("chiral"), h.chiral.clone()) {
                    let _ = their;
                    let hello = ChiralHello {
                        msg_type: "hello".into(),
                        chiral_peer_id: self.shared.chiral_id.clone(),
                        reputation_score: self.shared.reputation,
                        wallet_address: self.shared.wallet.clone(),
                    };
                    p.send(&Message::Extended { id: cid, payload: hello.encode() });
                }
                p.ext = Some(h);
                if self.meta.get().is_none() {
                    self.request_metadata(&mut st, id);
                }
            }
            UT_METADATA_ID => {
                let m = Metadata::decode(payload)?;
                match m {
                    Metadata::Request { piece } => {
                        let Some(p) = st.peers.get_mut(&id) else { return Ok(()) };
                        let Some(their) = p.ext.as_ref().and_then(|e| e.id_of("ut_metadata")) else { return Ok(()) };
                        let reply = match self.meta.get() {
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
                        p.send(&Message::Extended { id: their, payload: reply.encode() });
                    }
                    Metadata::Data { piece, total_size, data } => {
                        if self.meta.get().is_some() {
                            return Ok(());
                        }
                        let announced = st.peers.get(&id).and_then(|p| p.ext.as_ref()).and_then(|e| e.metadata_size);
                        if announced != Some(total_size) {
                            return Ok(());
                        }
                        let Some(asm) = st.metadata.get_mut(&total_size) else { return Ok(()) };
                        match asm.add(piece, data, id, &self.info_hash) {
                            Ok(None) => {}
                            Ok(Some(info)) => {
                                drop(st);
                                let mut meta = crate::metainfo::parse_info(&info).map_err(|e| e.to_string())?;
                                meta.trackers = lock(&self.trackers).clone();
                                self.events.info(format!("{}: metadata received ({} bytes)", self.label, info.len()));
                                self.set_meta(Arc::new(meta));
                                return Ok(());
                            }
                            Err(MetadataError::Malformed(e)) => {
                                self.events.warn(format!("{}: {e}", self.label));
                                return Err(e);
                            }
                            Err(MetadataError::Liar(liar)) => {
                                self.ban(&mut st, liar, "sent metadata that does not match the info hash");
                                if liar == id {
                                    return Err("sent metadata that does not match the info hash".into());
                                }
                            }
                            Err(e @ MetadataError::Unknown) => {
                                self.events.warn(format!("{}: {e}; asking one peer at a time", self.label));
                                let ids: Vec<u64> = st.peers.keys().copied().collect();
                                for other in ids {
                                    if let Some(p) = st.peers.get_mut(&other) {
                                        p.metadata_asked.clear();
                                    }
                                    self.request_metadata(&mut st, other);
                                }
                                return Ok(());
                            }
                        }
                        self.request_metadata(&mut st, id);
                    }
                    Metadata::Reject { .. } => {}
                }
            }
            CHIRAL_ID => {
                let hello = ChiralHello::decode(payload)?;
                if let Some(p) = st.peers.get_mut(&id) {
                    let claimed = p.ext.as_ref().and_then(|e| e.chiral.clone());
                    if claimed.as_deref() == Some(hello.chiral_peer_id.as_str()) {
                        p.chiral_verified = true;
                        p.chiral_reputation = Some(hello.reputation_score);
                        p.wallet = hello.wallet_address.clone();
                        self.events.info(format!(
                            "{}: {} is Chiral peer {} (reputation {})",
                            self.label, p.addr, hello.chiral_peer_id, hello.reputation_score
                        ));
                    }
                }
                self.rechoke(&mut st);
            }
            _ => {}
        }
        Ok(())
    }

    fn request_metadata(&self, st: &mut State, id: u64) {
        let Some(p) = st.peers.get(&id) else { return };
        let Some(ext) = &p.ext else { return };
        let (Some(their), Some(size)) = (ext.id_of("ut_metadata"), ext.metadata_size) else { return };
        if !st.metadata.contains_key(&size) {
            if st.metadata.len() >= MAX_METADATA_SIZES {
                return;
            }
            match MetadataAssembly::new(size) {
                Ok(a) => {
                    st.metadata.insert(size, a);
                }
                Err(_) => return,
            }
        }
        let missing = st.metadata.get(&size).map(|a| a.missing_for(id)).unwrap_or_default();
        let p = st.peers.get_mut(&id).expect("present");
        for piece in missing {
            if p.metadata_asked.insert(piece) {
                p.send(&Message::Extended { id: their, payload: Metadata::Request { piece }.encode() });
            }
        }
    }

    /// Periodic housekeeping for one peer; `Err` closes it.
    fn tick(&self, id: u64) -> Result<(), String> {
        let mut st = lock(&self.state);
        let now = Instant::now();
        let Some(p) = st.peers.get_mut(&id) else { return Err("gone".into()) };
        if let Some(why) = &p.kill {
            return Err(why.clone());
        }
        if now.duration_since(p.last_seen) > IDLE_TIMEOUT {
            return Err("idle".into());
        }
        if now.duration_since(p.last_sent) > Duration::from_secs(60) {
            p.send(&Message::KeepAlive);
        }
        // Requests that timed out go back to the pool.
        let mut expired = 0;
        for job in st.jobs.values_mut() {
            for s in job.blocks.iter_mut() {
                if let BlockState::Requested { peer, at, dup } = *s {
                    if peer == id && now.duration_since(at) > REQUEST_TIMEOUT {
                        expired += 1;
                        *s = match dup {
                            Some(d) => BlockState::Requested { peer: d, at: now, dup: None },
                            None => BlockState::Missing,
                        };
                    }
                }
            }
        }
        if expired > 0 {
            if let Some(p) = st.peers.get_mut(&id) {
                p.inflight = p.inflight.saturating_sub(expired);
            }
        }
        if self.meta.get().is_none() {
            // Ask again for metadata pieces still missing.
            if let Some(p) = st.peers.get_mut(&id) {
                p.metadata_asked.clear();
            }
            self.request_metadata(&mut st, id);
        }
        self.pump_locked(&mut st, id);
        Ok(())
    }

    fn killed(&self, id: u64) -> Option<String> {
        let st = lock(&self.state);
        match st.peers.get(&id) {
            Some(p) => p.kill.clone(),
            None => Some("removed".into()),
        }
    }

    fn touch(&self, id: u64) {
        if let Some(p) = lock(&self.state).peers.get_mut(&id) {
            p.last_seen = Instant::now();
        }
    }

    // ---------- connections ----------

    /// Dials `addr` unless known, banned or busy.
    pub fn connect(self: &Arc<Self>, addr: SocketAddr) {
        {
            let mut st = lock(&self.state);
            if st.stopped
                || st.is_banned(&addr)
                || st.connecting.contains(&addr)
                || st.peers.values().any(|p| p.addr == addr)
                || st.peers.len() + st.connecting.len() >= MAX_PEERS
                || self.shared.is_self(addr)
            {
                return;
            }
            st.connecting.insert(addr);
            st.known.insert(addr);
        }
        let me = self.clone();
        let h = tokio::spawn(async move {
            let r = me.dial(addr).await;
            lock(&me.state).connecting.remove(&addr);
            if let Err(e) = r {
                me.events.debug(format!("{}: peer {addr}: {e}", me.label));
            }
        });
        self.spawn(h);
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<(), String> {
        let mut stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let ours =
            Handshake { reserved: peer_wire::reserved(false), info_hash: self.info_hash, peer_id: self.shared.peer_id };
        stream.write_all(&ours.encode()).await.map_err(|e| e.to_string())?;
        let mut hs = [0u8; peer_wire::HANDSHAKE_LEN];
        tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut hs))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let theirs = Handshake::decode(&hs).map_err(|e| e.to_string())?.ok_or("short handshake")?;
        if theirs.info_hash != self.info_hash {
            return Err("peer answered with another info hash".into());
        }
        self.run_peer(stream, addr, theirs).await
    }

    /// An incoming connection whose handshake named this torrent.
    pub async fn accept(
        self: Arc<Self>,
        mut stream: TcpStream,
        addr: SocketAddr,
        theirs: Handshake,
    ) -> Result<(), String> {
        let ours =
            Handshake { reserved: peer_wire::reserved(false), info_hash: self.info_hash, peer_id: self.shared.peer_id };
        stream.write_all(&ours.encode()).await.map_err(|e| e.to_string())?;
        self.run_peer(stream, addr, theirs).await
    }

    async fn run_peer(self: &Arc<Self>, stream: TcpStream, addr: SocketAddr, theirs: Handshake) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let (mut rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let notify = Arc::new(Notify::new());
        let queued = Arc::new(AtomicUsize::new(0));
        let id = self.add_peer(addr, theirs.peer_id, tx, queued.clone(), notify.clone())?;
        let mut writer = tokio::spawn(writer(wr, rx, queued, notify.clone()));
        struct Guard<'a>(&'a Session, u64, tokio::task::AbortHandle);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                self.0.remove_peer(self.1);
                self.2.abort();
            }
        }
        let _guard = Guard(self, id, writer.abort_handle());
        {
            let mut st = lock(&self.state);
            let p = st.peers.get_mut(&id).expect("just added");
            if theirs.supports_extensions() {
                let h = ExtHandshake::ours(
                    self.meta.get().map(|m| m.info_bytes.len() as u64),
                    self.shared.port,
                    &self.shared.chiral_id,
                );
                p.send(&Message::Extended { id: 0, payload: h.encode() });
            }
            if let (Mode::Seed(_), Some(m)) = (&self.mode, self.meta.get()) {
                p.send(&Message::Bitfield(peer_wire::bitfield_bytes(&vec![true; m.piece_count() as usize])));
            } else if self.meta.get().is_some() {
                p.send(&Message::Interested);
            }
        }
        self.events.debug(format!("{}: connected to {addr}", self.label));
        let mut buf = BytesMut::with_capacity(256 << 10);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(why) = self.killed(id) {
                return Err(why);
            }
            tokio::select! {
                r = rd.read_buf(&mut buf) => {
                    let n = r.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("closed by peer".into());
                    }
                    self.touch(id);
                    let meta = self.meta.get();
                    let max = peer_wire::max_frame(meta.map(|m| m.piece_count()));
                    loop {
                        let bitfield_len = self.meta.get().map(|m| (m.piece_count() as usize).div_ceil(8));
                        match peer_wire::decode(&buf, max, bitfield_len).map_err(|e| e.to_string())? {
                            Some((msg, used)) => {
                                buf.advance(used);
                                self.handle(id, msg)?;
                            }
                            None => break,
                        }
                    }
                    self.serve_uploads(id).await?;
                    if buf.capacity() - buf.len() < 64 << 10 {
                        buf.reserve(128 << 10);
                    }
                }
                _ = notify.notified() => {
                    self.pump(id);
                    self.serve_uploads(id).await?;
                }
                _ = &mut writer => {
                    return Err("the peer stopped reading".into());
                }
                _ = tick.tick() => {
                    self.tick(id)?;
                }
            }
        }
    }

    // ---------- trackers ----------

    fn left(&self) -> u64 {
        match (self.is_seed(), self.meta.get()) {
            (true, _) => 0,
            (false, Some(m)) => {
                let st = lock(&self.state);
                let done: u64 =
                    st.delivered.iter().enumerate().filter(|(_, d)| **d).map(|(i, _)| m.piece_len(i as u32)).sum();
                m.length.saturating_sub(done)
            }
            (false, None) => 1 << 30,
        }
    }

    async fn announce_once(&self, event: tracker::Event) -> Result<tracker::AnnounceReply, String> {
        let (up, down) = {
            let st = lock(&self.state);
            (st.uploaded, st.downloaded)
        };
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
        if tiers.is_empty() {
            return Err("no trackers".into());
        }
        let r = tracker::announce_tiers(&self.shared.http, &mut tiers, &a).await;
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
            if lock(&self.state).stopped {
                return;
            }
        }
    }

    /// Dials known peers again (e.g. after they dropped) every few seconds while few are up.
    pub async fn redial_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let known: Vec<SocketAddr> = {
                let st = lock(&self.state);
                if st.stopped {
                    return;
                }
                if st.peers.len() >= 8 {
                    continue;
                }
                st.known.iter().copied().collect()
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
            if lock(&self.state).stopped {
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
            if lock(&self.state).stopped {
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
        let st = lock(&self.state);
        (st.downloaded, st.uploaded, st.wasted, st.bad_pieces)
    }

    /// Per-peer bytes (label, down, up).
    pub fn peer_bytes(&self) -> Vec<(String, u64, u64)> {
        lock(&self.state).peers.values().map(|p| (p.label(), p.down, p.up)).collect()
    }
}

/// Writes queued frames, coalescing small ones.
/// Writes what the connection queues, batching small messages; counts the bytes written off
/// `queued` and wakes the connection task so it can send more blocks. Ends when the channel
/// closes, the socket fails, or the peer takes nothing for [`WRITE_TIMEOUT`].
async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    notify: Arc<Notify>,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(256 << 10);
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < 256 << 10 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&batch)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        notify.notify_one();
        batch.clear();
    }
}

/// A weak registry entry (the listener finds sessions by info hash).
pub type SessionRef = Weak<Session>;
