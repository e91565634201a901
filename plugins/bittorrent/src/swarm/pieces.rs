//! Per-torrent piece state: the block jobs of pieces being fetched, who holds what
//! (availability), verified pieces read ahead of the engine, and the failed attempts kept to
//! blame a liar block by block. No peer state here: a job names peers only by their key.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Instant,
};

use crate::peer_wire::BLOCK;

use super::PeerKey;

/// Bytes of failed piece attempts kept for blame, across all pieces.
pub(super) const MAX_FAILED_BYTES: usize = 64 << 20;
/// Failed attempts kept per piece.
pub(super) const MAX_ATTEMPTS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlockState {
    Missing,
    /// Asked of `peer` at `at`; in end game also of `dup`.
    Requested {
        peer: PeerKey,
        at: Instant,
        dup: Option<PeerKey>,
    },
    Have,
}

/// One piece being fetched.
pub(super) struct Job<W> {
    pub blocks: Vec<BlockState>,
    /// Which peer sent each block (for blaming on a hash failure).
    pub from: Vec<PeerKey>,
    /// The piece's bytes so far: grown as blocks arrive (never zeroed first, unless a block
    /// arrives ahead of a gap), `len` once every block is in.
    pub data: Vec<u8>,
    /// The piece's length.
    pub len: u64,
    /// Blocks not yet received.
    pub left: usize,
    /// Blocks in state `Missing` (a job with none has nothing to request).
    pub missing: usize,
    /// Who waits for the piece (the engine's `fetch`es), with their tickets; empty for a
    /// piece read ahead.
    pub waiters: Vec<(u64, W)>,
    /// The bytes are out being hashed.
    pub verifying: bool,
}

impl<W> Job<W> {
    pub(super) fn new(len: u64) -> Self {
        let n = len.div_ceil(BLOCK as u64) as usize;
        Self {
            blocks: vec![BlockState::Missing; n],
            from: vec![0; n],
            data: Vec::with_capacity(len as usize),
            len,
            left: n,
            missing: n,
            waiters: Vec::new(),
            verifying: false,
        }
    }

    /// Writes a block's bytes at `at` (within the piece).
    pub(super) fn put(&mut self, at: usize, bytes: &[u8]) {
        if at > self.data.len() {
            self.data.resize(at, 0);
        }
        let inside = (self.data.len() - at).min(bytes.len());
        self.data[at..at + inside].copy_from_slice(&bytes[..inside]);
        self.data.extend_from_slice(&bytes[inside..]);
    }

    pub(super) fn wanted(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Length of block `b` of a piece of `len` bytes.
    pub(super) fn block_len(len: u64, b: usize) -> u32 {
        (len - (b as u64 * BLOCK as u64).min(len)).min(BLOCK as u64) as u32
    }
}

/// The bytes of a piece that failed verification, and which peer sent each block.
pub(super) struct FailedAttempt {
    pub data: Vec<u8>,
    pub from: Vec<PeerKey>,
}

/// Piece-level state of one torrent (empty until the metadata is known).
pub(super) struct Pieces<W> {
    pub jobs: BTreeMap<u32, Job<W>>,
    /// How many connected peers hold each piece.
    pub availability: Vec<u32>,
    /// Verified pieces nobody asked for yet (read ahead), oldest first in `cache_order`.
    pub cache: HashMap<u32, Vec<u8>>,
    pub cache_order: VecDeque<u32>,
    /// Pieces handed to the engine.
    pub delivered: Vec<bool>,
    /// One past the highest piece the engine asked for: read-ahead starts here.
    pub cursor: u32,
    failed: HashMap<u32, Vec<FailedAttempt>>,
    failed_bytes: usize,
}

impl<W> Default for Pieces<W> {
    fn default() -> Self {
        Self {
            jobs: BTreeMap::new(),
            availability: Vec::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            delivered: Vec::new(),
            cursor: 0,
            failed: HashMap::new(),
            failed_bytes: 0,
        }
    }
}

impl<W> Pieces<W> {
    pub(super) fn reset(&mut self, count: u32) {
        self.availability = vec![0; count as usize];
        self.delivered = vec![false; count as usize];
    }

    /// Pieces read ahead (jobs nobody waits for, and the cache).
    pub(super) fn ahead(&self) -> usize {
        self.jobs.values().filter(|j| !j.wanted()).count() + self.cache.len()
    }

    /// Keeps a verified piece nobody waits for, within `limit` pieces (oldest dropped).
    pub(super) fn keep(&mut self, index: u32, data: Vec<u8>, limit: usize) {
        if self.cache.insert(index, data).is_none() {
            self.cache_order.push_back(index);
        }
        while self.cache.len() > limit {
            let Some(old) = self.cache_order.pop_front() else { break };
            self.cache.remove(&old);
        }
    }

    /// A cached piece, taken out.
    pub(super) fn take_cached(&mut self, index: u32) -> Option<Vec<u8>> {
        let d = self.cache.remove(&index)?;
        self.cache_order.retain(|i| *i != index);
        Some(d)
    }

    /// Records a failed attempt of `index` for later blame, within [`MAX_ATTEMPTS`] per piece
    /// and [`MAX_FAILED_BYTES`] in all; returns whether it was kept.
    pub(super) fn remember_failure(&mut self, index: u32, data: Vec<u8>, from: Vec<PeerKey>) -> bool {
        let attempts = self.failed.entry(index).or_default();
        if attempts.len() >= MAX_ATTEMPTS || self.failed_bytes + data.len() > MAX_FAILED_BYTES {
            if attempts.is_empty() {
                self.failed.remove(&index);
            }
            return false;
        }
        self.failed_bytes += data.len();
        attempts.push(FailedAttempt { data, from });
        true
    }

    /// Piece `index` verified as `good`: the peers whose blocks in an earlier failed attempt
    /// differ from it (the attempts are forgotten).
    pub(super) fn blame(&mut self, index: u32, good: &[u8]) -> HashSet<PeerKey> {
        let mut liars = HashSet::new();
        for a in self.failed.remove(&index).unwrap_or_default() {
            self.failed_bytes -= a.data.len();
            for (b, peer) in a.from.iter().enumerate() {
                let s = b * BLOCK as usize;
                let e = (s + BLOCK as usize).min(good.len()).min(a.data.len());
                if s < e && a.data[s..e] != good[s..e] {
                    liars.insert(*peer);
                }
            }
        }
        liars
    }

    #[cfg(test)]
    pub(super) fn failed_bytes(&self) -> usize {
        self.failed_bytes
    }
}
