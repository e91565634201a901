//! Per-peer state of one connection: what it has, who chokes whom, our requests to it (a
//! set, so releasing them costs what it holds), its requests to us (a bounded queue), the
//! bytes queued to its socket, and its counters.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    time::Instant,
};

use crate::{
    extension::ExtHandshake,
    peer_wire::{self, Message},
};

/// Requests kept outstanding per peer by default (Chiral peers get twice as many).
pub const PIPELINE: usize = 128;
/// `have` messages remembered per peer before the metadata says how many pieces there are.
pub(super) const MAX_EARLY_HAVES: usize = 1 << 16;

/// A peer's proven Chiral identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChiralPeer {
    pub id: String,
    pub reputation: i64,
    pub wallet: Option<String>,
    /// Its Chiral network key (hex), when its hello carried a link that verified.
    pub network: Option<String>,
}

pub struct Peer {
    pub addr: SocketAddr,
    pub peer_id: [u8; 20],
    /// Piece flags (empty until the metadata is known).
    pub has: Vec<bool>,
    /// Before the metadata: the raw bitfield, `have all`, and the `have`s (bounded).
    pub early_bitfield: Option<Vec<u8>>,
    pub early_have_all: bool,
    pub early_haves: HashSet<u32>,
    pub peer_choking: bool,
    pub peer_interested: bool,
    pub am_choking: bool,
    pub am_interested: bool,
    /// Our outstanding requests to this peer: (piece, block number).
    pub requests: HashSet<(u32, u32)>,
    /// Blocks the peer asked for and has not had yet, oldest first (bounded; `cancel` removes
    /// one, a choke clears them).
    pub uploads: VecDeque<(u32, u32, u32)>,
    /// Requests ignored because the queue was full.
    pub ignored_requests: u64,
    /// Requests arrived since the last `serve`.
    pub serve_soon: bool,
    /// Bytes handed to its socket's writer (or being read from disk for it) and not written yet.
    pub queued: usize,
    pub ext: Option<ExtHandshake>,
    /// The nonce we sent it in our extended handshake (it signs it to prove its Chiral id).
    pub nonce: Vec<u8>,
    pub chiral: Option<ChiralPeer>,
    /// It has the Chiral fast lane when we seed (always unchoked first, the deeper upload
    /// buffer): a proven Chiral peer the [`super::FastLane`] policy admits.
    pub fast_lane: bool,
    pub down: u64,
    pub up: u64,
    pub paid_marks: u64,
    pub metadata_asked: HashSet<u32>,
    /// We dialled it (its address is a listening one, fit for PEX).
    pub dialled: bool,
    /// PEX: the peers we last told it about, when we last told it, when it last told us.
    pub pex_sent: HashSet<std::net::SocketAddr>,
    pub pex_at: Option<Instant>,
    pub pex_heard: Option<Instant>,
    pub last_seen: Instant,
    pub last_sent: Instant,
    /// Frames encoded for this peer and not yet handed out as an action.
    pub out: Vec<u8>,
}

impl Peer {
    pub fn new(addr: SocketAddr, peer_id: [u8; 20], pieces: usize, now: Instant) -> Self {
        Self {
            addr,
            peer_id,
            has: vec![false; pieces],
            early_bitfield: None,
            early_have_all: false,
            early_haves: HashSet::new(),
            peer_choking: true,
            peer_interested: false,
            am_choking: true,
            am_interested: false,
            requests: HashSet::new(),
            uploads: VecDeque::new(),
            ignored_requests: 0,
            serve_soon: false,
            queued: 0,
            ext: None,
            nonce: Vec::new(),
            chiral: None,
            fast_lane: false,
            down: 0,
            up: 0,
            paid_marks: 0,
            metadata_asked: HashSet::new(),
            dialled: false,
            pex_sent: HashSet::new(),
            pex_at: None,
            pex_heard: None,
            last_seen: now,
            last_sent: now,
            out: Vec::new(),
        }
    }

    /// How many requests we keep outstanding with it: its `reqq` (16..=256), doubled for a
    /// proven Chiral peer.
    pub fn depth(&self) -> usize {
        let reqq = self.ext.as_ref().and_then(|e| e.reqq).map(|q| q as usize).unwrap_or(PIPELINE);
        let base = reqq.clamp(16, 256).min(PIPELINE * 2);
        if self.chiral.is_some() {
            (base * 2).min(512)
        } else {
            base
        }
    }

    /// Bytes of blocks read for it and not yet taken by its socket, at most.
    pub fn upload_buffer(&self) -> usize {
        if self.fast_lane {
            super::CHIRAL_UPLOAD_BUFFER
        } else {
            super::UPLOAD_BUFFER
        }
    }

    pub fn has_piece(&self, i: u32) -> bool {
        self.has.get(i as usize).copied().unwrap_or(false)
    }

    pub fn send(&mut self, m: &Message, now: Instant) {
        let before = self.out.len();
        peer_wire::encode(m, &mut self.out);
        self.queued += self.out.len() - before;
        self.last_sent = now;
    }
}
