//! The seeding choker as a pure state machine (no I/O, no clock, randomness passed in).
//!
//! Policy, for peers interested in our pieces:
//! - Chiral peers (verified through the `chiral` extension) are always unchoked, first;
//! - `slots - 1` regular slots: peers already unchoked keep theirs (no churn), free ones go to
//!   the longest-connected interested peers (lowest id);
//! - one optimistic slot: a random choked interested peer (Chiral ones first), rotated every
//!   [`ROTATE_EVERY`] (the caller's timer asks with `rotate = true`), or at once when the
//!   current one leaves or stops being interested. The previous optimistic peer is choked
//!   unless a regular slot is free for it.
//!
//! Peers not interested are choked.

use std::{collections::BTreeSet, time::Duration};

/// How often the optimistic unchoke moves to another peer.
pub const ROTATE_EVERY: Duration = Duration::from_secs(30);

/// What the choker needs to know of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub id: u64,
    pub interested: bool,
    pub chiral: bool,
    /// We currently do not choke it.
    pub unchoked: bool,
}

/// What to send: `Choke` to `choke`, `Unchoke` to `unchoke`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub choke: Vec<u64>,
    pub unchoke: Vec<u64>,
}

#[derive(Clone, Debug)]
pub struct Choker {
    slots: usize,
    optimistic: Option<u64>,
}

impl Choker {
    /// `slots`: unchoked peers at once (Chiral peers come on top when there are more of them).
    pub fn new(slots: usize) -> Self {
        Self { slots: slots.max(1), optimistic: None }
    }

    /// The current optimistic peer.
    pub fn optimistic(&self) -> Option<u64> {
        self.optimistic
    }

    /// Recomputes who is unchoked. `rotate`: the rotation timer fired; `random`: any random
    /// value (picks the optimistic peer).
    pub fn decide(&mut self, peers: &[PeerView], rotate: bool, random: u64) -> Decision {
        let mut peers: Vec<PeerView> = peers.to_vec();
        peers.sort_by_key(|p| p.id);
        let interested: Vec<&PeerView> = peers.iter().filter(|p| p.interested).collect();
        let mut want: BTreeSet<u64> = BTreeSet::new();

        // Chiral peers first, always.
        for p in interested.iter().filter(|p| p.chiral) {
            want.insert(p.id);
        }
        let regular_slots = self.slots.saturating_sub(1);
        let old_opt = self.optimistic.filter(|o| interested.iter().any(|p| p.id == *o));
        // Sticky regular slots: already unchoked, not the optimistic one.
        for p in interested.iter().filter(|p| !p.chiral && p.unchoked && Some(p.id) != old_opt) {
            if want.len() >= regular_slots {
                break;
            }
            want.insert(p.id);
        }
        // Free regular slots: the longest-connected choked peers.
        for p in interested.iter().filter(|p| !p.chiral && !p.unchoked && Some(p.id) != old_opt) {
            if want.len() >= regular_slots {
                break;
            }
            want.insert(p.id);
        }

        // The optimistic slot.
        let keep = old_opt.filter(|o| !rotate && !want.contains(o));
        self.optimistic = match keep {
            Some(o) => Some(o),
            None => {
                // Rotating: the old optimistic peer takes a regular slot if one is free.
                if let Some(o) = old_opt {
                    if want.len() < regular_slots {
                        want.insert(o);
                    }
                }
                let choked: Vec<&PeerView> =
                    interested.iter().copied().filter(|p| !want.contains(&p.id) && Some(p.id) != old_opt).collect();
                let chiral: Vec<&PeerView> = choked.iter().copied().filter(|p| p.chiral).collect();
                let pool = if chiral.is_empty() { choked } else { chiral };
                match pool.len() {
                    0 => old_opt.filter(|o| !want.contains(o)),
                    n => Some(pool[(random % n as u64) as usize].id),
                }
            }
        };
        if let Some(o) = self.optimistic {
            want.insert(o);
        }

        let mut d = Decision::default();
        for p in &peers {
            match (p.unchoked, want.contains(&p.id)) {
                (true, false) => d.choke.push(p.id),
                (false, true) => d.unchoke.push(p.id),
                _ => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, chiral: bool) -> PeerView {
        PeerView { id, interested: true, chiral, unchoked: false }
    }

    /// Applies a decision to the views, as the session does.
    fn apply(peers: &mut [PeerView], d: &Decision) {
        for p in peers.iter_mut() {
            if d.choke.contains(&p.id) {
                p.unchoked = false;
            }
            if d.unchoke.contains(&p.id) {
                p.unchoked = true;
            }
        }
    }

    fn step(c: &mut Choker, peers: &mut [PeerView], rotate: bool, random: u64) -> Decision {
        let d = c.decide(peers, rotate, random);
        apply(peers, &d);
        d
    }

    fn unchoked(peers: &[PeerView]) -> Vec<u64> {
        peers.iter().filter(|p| p.unchoked).map(|p| p.id).collect()
    }

    #[test]
    fn regular_slots_then_one_optimistic() {
        let mut c = Choker::new(3);
        let mut peers: Vec<PeerView> = (1..=6).map(|i| peer(i, false)).collect();
        let d = c.decide(&peers, false, 0);
        apply(&mut peers, &d);
        // Two regular (1, 2) and one optimistic among 3..=6 (random 0 -> the first, 3).
        assert_eq!(unchoked(&peers), vec![1, 2, 3]);
        assert_eq!(c.optimistic(), Some(3));
        // Nothing changes without the timer.
        assert_eq!(c.decide(&peers, false, 7), Decision::default());
    }

    #[test]
    fn rotation_moves_the_optimistic_slot_to_a_choked_peer() {
        let mut c = Choker::new(3);
        let mut peers: Vec<PeerView> = (1..=6).map(|i| peer(i, false)).collect();
        step(&mut c, &mut peers, false, 0);
        let mut seen = BTreeSet::new();
        for r in 0..40u64 {
            let before = c.optimistic();
            let d = c.decide(&peers, true, (r + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17);
            apply(&mut peers, &d);
            let now = c.optimistic().unwrap();
            assert_ne!(Some(now), before, "rotation picks another peer");
            assert!(now >= 3, "regular peers keep their slots");
            assert_eq!(unchoked(&peers).len(), 3, "{peers:?}");
            assert!(
                peers.iter().filter(|p| p.unchoked).any(|p| p.id == 1) && peers.iter().any(|p| p.id == 2 && p.unchoked)
            );
            seen.insert(now);
        }
        assert_eq!(seen, BTreeSet::from([3, 4, 5, 6]), "every choked peer gets its turn");
    }

    #[test]
    fn chiral_peers_first_and_always() {
        let mut c = Choker::new(2);
        let mut peers = vec![peer(1, false), peer(2, false), peer(3, true), peer(4, true), peer(5, true)];
        step(&mut c, &mut peers, false, 0);
        // Every Chiral peer, over the slot count (they fill the regular slot); the optimistic
        // slot still goes to an ordinary peer.
        assert_eq!(unchoked(&peers), vec![1, 3, 4, 5]);
        // A new Chiral peer is unchoked at once, the optimistic one stays until the timer.
        peers.push(peer(6, true));
        step(&mut c, &mut peers, false, 0);
        assert_eq!(unchoked(&peers), vec![1, 3, 4, 5, 6]);
        step(&mut c, &mut peers, true, 0);
        assert_eq!(unchoked(&peers), vec![2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_leaving_optimistic_peer_is_replaced_and_uninterested_ones_choked() {
        let mut c = Choker::new(2);
        let mut peers: Vec<PeerView> = (1..=4).map(|i| peer(i, false)).collect();
        step(&mut c, &mut peers, false, 1);
        let opt = c.optimistic().unwrap();
        assert_eq!(unchoked(&peers).len(), 2);
        peers.retain(|p| p.id != opt);
        step(&mut c, &mut peers, false, 0);
        assert!(c.optimistic().is_some_and(|o| o != opt));
        assert_eq!(unchoked(&peers).len(), 2);
        // Peer 1 (regular) loses interest: choked, its slot goes to another.
        peers.iter_mut().find(|p| p.id == 1).unwrap().interested = false;
        let d = c.decide(&peers, false, 0);
        assert!(d.choke.contains(&1), "{d:?}");
        apply(&mut peers, &d);
        assert_eq!(unchoked(&peers).len(), 2);
        assert!(!unchoked(&peers).contains(&1));
    }

    #[test]
    fn one_slot_is_all_optimistic() {
        let mut c = Choker::new(1);
        let mut peers: Vec<PeerView> = (1..=3).map(|i| peer(i, false)).collect();
        step(&mut c, &mut peers, false, 2);
        assert_eq!(unchoked(&peers), vec![3]);
        step(&mut c, &mut peers, true, 0);
        assert_eq!(unchoked(&peers), vec![1]);
    }
}
