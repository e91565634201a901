//! Per-peer metrics and reputation, sans-IO: what the node learned of each peer (latency,
//! throughput, successes, failures, bad data, protocols from identify) and the provider choice
//! built on it.
//!
//! The score lives in `[0, 1]`, starts at 0.5, moves a tenth of the way to 1 on each good
//! transfer, loses a fifth on a failure and is halved (and the peer banned from the current
//! download) on data that fails verification.

use std::{collections::HashMap, path::Path, time::Duration};

use chiral_sdk::Events;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// The file in the data dir that keeps scores across runs.
pub const FILE: &str = "reputation.json";
/// Most peers kept in it (the least active go first).
pub const MAX_KEPT: usize = 4096;

/// Score of a peer never seen.
pub const INITIAL_SCORE: f64 = 0.5;
/// Below this, a peer is only used when nothing better is left.
pub const POOR_SCORE: f64 = 0.15;

#[derive(Clone, Debug, PartialEq)]
pub struct PeerMetrics {
    pub score: f64,
    pub successes: u64,
    pub failures: u64,
    pub bad_data: u64,
    pub bytes: u64,
    /// Smoothed request latency (time to the whole answer of a small request or a chunk).
    pub latency_ms: Option<f64>,
    /// Smoothed throughput of chunk transfers, bytes per second.
    pub throughput: Option<f64>,
    /// Protocols the peer announced through identify.
    pub protocols: Vec<String>,
    pub agent: String,
}

impl Default for PeerMetrics {
    fn default() -> Self {
        Self {
            score: INITIAL_SCORE,
            successes: 0,
            failures: 0,
            bad_data: 0,
            bytes: 0,
            latency_ms: None,
            throughput: None,
            protocols: Vec::new(),
            agent: String::new(),
        }
    }
}

/// A score as the integer reports and the BEP 10 `chiral` message carry (0..=1000).
pub fn per_mille(score: f64) -> i64 {
    (score.clamp(0.0, 1.0) * 1000.0).round() as i64
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    match old {
        None => sample,
        Some(o) => o * 0.7 + sample * 0.3,
    }
}

impl PeerMetrics {
    pub fn success(&mut self, bytes: u64, took: Duration) {
        self.successes += 1;
        self.bytes += bytes;
        let secs = took.as_secs_f64().max(1e-6);
        self.latency_ms = Some(ewma(self.latency_ms, secs * 1000.0));
        if bytes >= 16 * 1024 {
            self.throughput = Some(ewma(self.throughput, bytes as f64 / secs));
        }
        self.score += (1.0 - self.score) * 0.1;
    }

    pub fn failure(&mut self) {
        self.failures += 1;
        self.score *= 0.8;
    }

    pub fn bad_data(&mut self) {
        self.bad_data += 1;
        self.score *= 0.5;
    }

    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p == protocol)
    }

    /// How much this peer is wanted for the next request, given `in_flight` requests already
    /// sent to it: reputation times speed, shared among its open requests. Unmeasured peers get
    /// the median speed so each one gets tried.
    pub fn weight(&self, in_flight: usize, default_throughput: f64) -> f64 {
        let speed = self.throughput.unwrap_or(default_throughput).max(1.0);
        let score = if self.score < POOR_SCORE { self.score * 0.01 } else { self.score };
        score * speed / (1 + in_flight) as f64
    }
}

/// What lasts of a peer across runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Kept {
    score: f64,
    successes: u64,
    failures: u64,
    bad_data: u64,
    bytes: u64,
    #[serde(default)]
    throughput: Option<f64>,
}

/// The scores kept in `dir` (none when the file is missing; a damaged file is logged and
/// ignored). Every value is checked: scores are clamped to `[0, 1]`.
pub fn load(dir: &Path, events: &Events) -> HashMap<PeerId, PeerMetrics> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            events.warn(format!("{}: {e}; starting with no reputation", path.display()));
            return HashMap::new();
        }
    };
    let kept: HashMap<String, Kept> = match serde_json::from_slice(&bytes) {
        Ok(k) => k,
        Err(e) => {
            events.warn(format!("{}: {e}; starting with no reputation", path.display()));
            return HashMap::new();
        }
    };
    kept.into_iter()
        .take(MAX_KEPT)
        .filter_map(|(p, k)| {
            let peer: PeerId = p.parse().ok()?;
            let score = if k.score.is_finite() { k.score.clamp(0.0, 1.0) } else { INITIAL_SCORE };
            let m = PeerMetrics {
                score,
                successes: k.successes,
                failures: k.failures,
                bad_data: k.bad_data,
                bytes: k.bytes,
                throughput: k.throughput.filter(|t| t.is_finite() && *t > 0.0),
                ..PeerMetrics::default()
            };
            Some((peer, m))
        })
        .collect()
}

/// Writes the scores of the peers this node has exchanged data with to `dir` (atomically).
pub fn save(dir: &Path, metrics: &HashMap<PeerId, PeerMetrics>) -> std::io::Result<()> {
    let mut peers: Vec<(&PeerId, &PeerMetrics)> =
        metrics.iter().filter(|(_, m)| m.successes + m.failures + m.bad_data > 0).collect();
    peers.sort_by_key(|(_, m)| std::cmp::Reverse(m.successes + m.failures + m.bad_data));
    let kept: HashMap<String, Kept> = peers
        .into_iter()
        .take(MAX_KEPT)
        .map(|(p, m)| {
            let k = Kept {
                score: m.score,
                successes: m.successes,
                failures: m.failures,
                bad_data: m.bad_data,
                bytes: m.bytes,
                throughput: m.throughput,
            };
            (p.to_string(), k)
        })
        .collect();
    let body = serde_json::to_vec_pretty(&kept).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join(FILE))
}

/// Picks among candidates `(metrics, in_flight)`: the highest weight wins; ties go to the first.
pub fn pick(candidates: &[(PeerMetrics, usize)]) -> Option<usize> {
    let mut speeds: Vec<f64> = candidates.iter().filter_map(|(m, _)| m.throughput).collect();
    speeds.sort_by(|a, b| a.total_cmp(b));
    let median = speeds.get(speeds.len() / 2).copied().unwrap_or(1e6);
    candidates
        .iter()
        .enumerate()
        .map(|(i, (m, n))| (i, m.weight(*n, median)))
        .fold(None, |best: Option<(usize, f64)>, (i, w)| match best {
            Some((_, bw)) if bw >= w => best,
            _ => Some((i, w)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_survive_a_restart_and_bad_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut m = HashMap::new();
        let mut good = PeerMetrics::default();
        good.success(1 << 20, Duration::from_millis(3));
        let mut bad = PeerMetrics::default();
        bad.bad_data();
        m.insert(a, good.clone());
        m.insert(b, bad.clone());
        m.insert(PeerId::random(), PeerMetrics::default()); // never used: not kept
        save(dir.path(), &m).unwrap();
        let back = load(dir.path(), &Events::none());
        assert_eq!(back.len(), 2);
        assert_eq!(back[&a].score, good.score);
        assert_eq!(back[&b].bad_data, 1);
        std::fs::write(dir.path().join(FILE), br#"{"nope": {"score": 9}}"#).unwrap();
        assert!(load(dir.path(), &Events::none()).is_empty());
        let p = PeerId::random();
        std::fs::write(
            dir.path().join(FILE),
            format!(r#"{{"{p}": {{"score": 7.5, "successes": 1, "failures": 0, "bad_data": 0, "bytes": 3}}}}"#),
        )
        .unwrap();
        assert_eq!(load(dir.path(), &Events::none())[&p].score, 1.0, "clamped");
    }

    #[test]
    fn score_rises_with_good_transfers_and_falls_with_failures() {
        let mut m = PeerMetrics::default();
        for _ in 0..10 {
            m.success(256 * 1024, Duration::from_millis(10));
        }
        assert!(m.score > 0.8, "{}", m.score);
        assert_eq!(m.successes, 10);
        assert_eq!(m.bytes, 10 * 256 * 1024);
        assert!(m.throughput.unwrap() > 20e6);
        let before = m.score;
        m.failure();
        assert!(m.score < before);
        let before = m.score;
        m.bad_data();
        assert!((m.score - before / 2.0).abs() < 1e-9);
        for _ in 0..20 {
            m.failure();
        }
        assert!(m.score < POOR_SCORE && m.score > 0.0);
    }

    #[test]
    fn selection_prefers_reputation_and_speed_and_spreads_load() {
        let mut good = PeerMetrics::default();
        let mut bad = PeerMetrics::default();
        for _ in 0..5 {
            good.success(256 * 1024, Duration::from_millis(5));
            bad.success(256 * 1024, Duration::from_millis(5));
        }
        bad.bad_data();
        assert_eq!(pick(&[(bad.clone(), 0), (good.clone(), 0)]), Some(1));
        // A slower peer with the same reputation loses while both are idle...
        let mut slow = good.clone();
        slow.throughput = Some(good.throughput.unwrap() / 10.0);
        assert_eq!(pick(&[(slow.clone(), 0), (good.clone(), 0)]), Some(1));
        // ...but gets work once the fast one is busy enough.
        assert_eq!(pick(&[(slow, 0), (good.clone(), 20)]), Some(0));
        // Equal peers: load spreads.
        assert_eq!(pick(&[(good.clone(), 1), (good.clone(), 0)]), Some(1));
        // A failed-out peer is a last resort only.
        let mut poor = good.clone();
        for _ in 0..20 {
            poor.failure();
        }
        assert_eq!(pick(&[(poor.clone(), 0), (good, 7)]), Some(1));
        assert_eq!(pick(&[(poor, 0)]), Some(0));
        assert_eq!(pick(&[]), None);
    }
}
