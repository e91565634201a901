//! Per-peer transfer accounting: turns librqbit's per-peer byte counters into
//! `PaymentRequired` events, one each time a peer's traffic (down + up) crosses another
//! multiple of the threshold — the native plugin's rule.

use std::collections::HashMap;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerTotals {
    pub down: u64,
    pub up: u64,
    marks: u64,
}

#[derive(Debug)]
pub struct Ledger {
    threshold: u64,
    peers: HashMap<String, PeerTotals>,
}

impl Ledger {
    pub fn new(threshold: u64) -> Self {
        Self { threshold: threshold.max(1), peers: HashMap::new() }
    }

    /// Records a peer's cumulative counters (they never go down: a reconnecting peer keeps
    /// its old totals); returns `Some(total bytes)` when the peer crossed another threshold.
    pub fn update(&mut self, peer: &str, down: u64, up: u64) -> Option<u64> {
        let p = self.peers.entry(peer.to_string()).or_default();
        p.down = p.down.max(down);
        p.up = p.up.max(up);
        let total = p.down + p.up;
        let marks = total / self.threshold;
        if marks > p.marks {
            p.marks = marks;
            Some(total)
        } else {
            None
        }
    }

    /// Peers that sent us something, with their downloaded bytes, largest first.
    pub fn downloaded(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> =
            self.peers.iter().filter(|(_, p)| p.down > 0).map(|(k, p)| (k.clone(), p.down)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}
