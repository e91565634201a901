//! The swarm driven in memory: scripted peers, virtual time, no sockets.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use chiral_sdk::testkit::content;

use super::*;
use crate::{
    extension::{ChiralHello, ExtHandshake, Metadata, Pex, CHIRAL_ID, UT_METADATA_ID, UT_PEX_ID},
    identity::Identity,
    metainfo::{self, CreateOptions, TorrentMetadata},
    peer_wire::{self, Message, BLOCK},
};

const PIECE: u64 = 64 << 10;
/// (piece, begin, length)
type Block = (u32, u32, u32);
const BLOCKS: u32 = (PIECE / BLOCK as u64) as u32;

fn fixture(len: usize) -> (Arc<TorrentMetadata>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.bin");
    let data = content(len);
    std::fs::write(&path, &data).unwrap();
    let opts = CreateOptions { piece_size: Some(PIECE), ..CreateOptions::default() };
    let (meta, _) = metainfo::build(&path, &opts).unwrap();
    (Arc::new(meta), data)
}

fn local() -> Local {
    Local {
        peer_id: *b"-CH0001-ourselves000",
        port: 6881,
        identity: Arc::new(Identity::generate()),
        reputation: 500,
        wallet: None,
        payment_threshold: 1 << 40,
        network_link: None,
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 6881))
}

fn pid(n: u8) -> [u8; 20] {
    let mut id = *b"-XX0001-000000000000";
    id[19] = n;
    id
}

/// A swarm and what it did, split by kind.
struct T {
    s: Swarm<u32>,
    meta: Arc<TorrentMetadata>,
    data: Vec<u8>,
    now: Instant,
    /// Frames sent per peer since the last look.
    sent: HashMap<PeerKey, Vec<Message>>,
    reads: Vec<(PeerKey, Vec<Block>)>,
    verify: Vec<(u32, Vec<u8>)>,
    delivered: Vec<(u32, Vec<u32>)>,
    disconnected: Vec<(PeerKey, String)>,
    metadata: Vec<Arc<TorrentMetadata>>,
    logs: Vec<String>,
    dials: Vec<SocketAddr>,
}

impl T {
    fn new(seeding: bool, len: usize, with_meta: bool) -> Self {
        let (meta, data) = fixture(len);
        let s = Swarm::new(meta.info_hash, local(), seeding, with_meta.then(|| meta.clone()), vec![], 7);
        Self {
            s,
            meta,
            data,
            now: Instant::now(),
            sent: HashMap::new(),
            reads: vec![],
            verify: vec![],
            delivered: vec![],
            disconnected: vec![],
            metadata: vec![],
            logs: vec![],
            dials: vec![],
        }
    }

    fn leech(len: usize) -> Self {
        Self::new(false, len, true)
    }

    fn seed(len: usize) -> Self {
        Self::new(true, len, true)
    }

    fn later(&mut self, d: Duration) {
        self.now += d;
    }

    /// Collects the swarm's actions into the fields above.
    fn run(&mut self) {
        while let Some(a) = self.s.poll_action() {
            match a {
                Action::Send { peer, bytes } => {
                    let mut at = 0;
                    while let Some((m, used)) = peer_wire::decode(&bytes[at..], 1 << 24, None).unwrap() {
                        self.sent.entry(peer).or_default().push(m);
                        at += used;
                    }
                    assert_eq!(at, bytes.len(), "whole frames only");
                }
                Action::Read { peer, blocks } => self.reads.push((peer, blocks)),
                Action::Verify { index, data } => self.verify.push((index, data)),
                Action::Deliver { index, to, .. } => self.delivered.push((index, to)),
                Action::Cancel { .. } => {}
                Action::Disconnect { peer, reason } => self.disconnected.push((peer, reason)),
                Action::Metadata(m) => self.metadata.push(m),
                Action::Log(_, m) => self.logs.push(m),
                Action::Payment { .. } => {}
                Action::Dial(a) => self.dials.extend(a),
            }
        }
    }

    /// A peer that has everything and unchokes us.
    fn unchoked(&mut self, n: u8) -> PeerKey {
        let k = self.connect(n);
        self.recv(k, Message::HaveAll);
        self.recv(k, Message::Unchoke);
        k
    }

    /// Two peers with every piece: `a` unchoked us and was asked for piece 0, `b` still chokes.
    fn two_holders(&mut self) -> (PeerKey, PeerKey) {
        let (a, b) = (self.unchoked(1), self.connect(2));
        self.recv(b, Message::HaveAll);
        self.want(0, 0);
        (a, b)
    }

    fn connect(&mut self, n: u8) -> PeerKey {
        self.connect_from(addr(n), pid(n), false)
    }

    fn connect_from(&mut self, a: SocketAddr, id: [u8; 20], ext: bool) -> PeerKey {
        let k = self.s.connected(a, id, ext, vec![n_of(&id); 32], self.now).expect("accepted");
        self.run();
        k
    }

    fn recv(&mut self, k: PeerKey, m: Message) {
        self.s.received(k, m, self.now);
        self.run();
    }

    /// Requests sent to `k` since the last look, as (piece, begin).
    fn requests(&mut self, k: PeerKey) -> Vec<(u32, u32)> {
        self.take(k)
            .into_iter()
            .filter_map(|m| match m {
                Message::Request { index, begin, .. } => Some((index, begin)),
                _ => None,
            })
            .collect()
    }

    fn take(&mut self, k: PeerKey) -> Vec<Message> {
        self.sent.remove(&k).unwrap_or_default()
    }

    fn block(&self, index: u32, begin: u32) -> Message {
        let at = (index as u64 * PIECE) as usize + begin as usize;
        let end = (at + BLOCK as usize).min(self.data.len());
        Message::Piece { index, begin, data: self.data[at..end].to_vec() }
    }

    /// `k` answers every request in `reqs` with the right bytes.
    fn answer(&mut self, k: PeerKey, reqs: &[(u32, u32)]) {
        for &(i, b) in reqs {
            let m = self.block(i, b);
            self.recv(k, m);
        }
    }

    /// Hashes what the swarm asked to verify, as the shell would.
    fn verify_all(&mut self) {
        for (index, data) in std::mem::take(&mut self.verify) {
            let good = self.meta.piece_hash(index).is_some_and(|h| chiral_sdk::verify::sha1(&data) == h);
            self.s.checked(index, data, good, self.now);
            self.run();
        }
    }

    fn want(&mut self, index: u32, w: u32) -> Want<u32> {
        let r = self.s.want(index, w, self.now).unwrap();
        self.run();
        r
    }
}

fn n_of(id: &[u8; 20]) -> u8 {
    id[19]
}

#[test]
fn requests_are_pipelined_to_depth_and_pieces_delivered() {
    let mut t = T::leech(8 * PIECE as usize);
    let a = t.connect(1);
    assert_eq!(t.take(a), vec![Message::Interested]);
    t.recv(a, Message::HaveAll);
    t.recv(a, Message::Unchoke);
    assert!(t.requests(a).is_empty(), "nothing wanted yet, nothing asked");
    for i in 0..8 {
        assert_eq!(t.want(i, i), Want::Waiting(i as u64 + 1));
    }
    let reqs = t.requests(a);
    assert_eq!(reqs.len(), 8 * BLOCKS as usize, "all 32 blocks fit in the default depth of 128");
    assert_eq!(t.s.peer(a).unwrap().requests.len(), reqs.len());
    t.answer(a, &reqs);
    assert_eq!(t.verify.len(), 8);
    t.verify_all();
    assert_eq!(t.delivered.len(), 8);
    assert_eq!(t.delivered[3], (3, vec![3]));
    assert_eq!(t.s.totals().downloaded, 8 * PIECE);
    assert_eq!(t.s.totals().wasted, 0);
    assert_eq!(t.s.left(), 0);
    assert!(t.s.peer(a).unwrap().requests.is_empty());
}

#[test]
fn the_depth_follows_reqq_and_room_frees_as_blocks_arrive() {
    let mut t = T::leech(16 * PIECE as usize);
    let a = t.connect_from(addr(1), pid(1), true);
    t.take(a);
    let h = ExtHandshake { reqq: Some(20), ..ExtHandshake::default() };
    t.recv(a, Message::Extended { id: 0, payload: h.encode() });
    t.recv(a, Message::HaveAll);
    t.recv(a, Message::Unchoke);
    for i in 0..16 {
        t.want(i, i);
    }
    let reqs = t.requests(a);
    assert_eq!(reqs.len(), 20, "reqq 20 is the depth");
    t.answer(a, &reqs[..5]);
    assert_eq!(t.requests(a).len(), 5, "each block answered frees one slot");
}

#[test]
fn a_choke_hands_the_requests_to_another_peer() {
    let mut t = T::leech(4 * PIECE as usize);
    let (a, b) = t.two_holders();
    assert_eq!(t.requests(a).len(), BLOCKS as usize);
    t.recv(b, Message::Unchoke);
    assert!(t.requests(b).is_empty(), "every block is asked of a already");
    t.recv(a, Message::Choke);
    assert_eq!(t.requests(b).len(), BLOCKS as usize, "a's requests went back to the pool, then to b");
    // A block a sends after all is not counted as a piece's.
    let late = t.block(0, 0);
    t.recv(a, late);
    assert_eq!(t.s.totals().wasted, BLOCK as u64);
}

#[test]
fn end_game_asks_a_second_peer_and_cancels_the_loser() {
    let mut t = T::leech(4 * PIECE as usize);
    let (a, b) = t.two_holders();
    let reqs = t.requests(a);
    t.recv(b, Message::Unchoke);
    assert!(t.requests(b).is_empty());
    t.later(ENDGAME_AFTER);
    t.s.tick(t.now);
    t.run();
    assert_eq!(t.requests(b).len(), BLOCKS as usize, "slow blocks asked of b too");
    t.answer(b, &reqs[..1]);
    let cancels: Vec<Message> = t.take(a).into_iter().filter(|m| matches!(m, Message::Cancel { .. })).collect();
    assert_eq!(cancels, vec![Message::Cancel { index: 0, begin: 0, length: BLOCK }]);
    // a's answer to the cancelled block is waste, not a second copy.
    let dup = t.block(0, 0);
    t.recv(a, dup);
    assert_eq!(t.s.totals().wasted, BLOCK as u64);
}

#[test]
fn requests_time_out_back_to_the_pool() {
    let mut t = T::leech(PIECE as usize);
    let a = t.unchoked(1);
    t.want(0, 0);
    assert_eq!(t.requests(a).len(), BLOCKS as usize);
    t.later(REQUEST_TIMEOUT + Duration::from_secs(1));
    t.s.tick(t.now);
    t.run();
    assert_eq!(t.requests(a).len(), BLOCKS as usize, "timed out, asked again");
    // Silent for the idle timeout: dropped.
    t.later(IDLE_TIMEOUT);
    t.s.tick(t.now);
    t.run();
    assert_eq!(t.disconnected, vec![(a, "idle".to_string())]);
    assert_eq!(t.s.peer_count(), 0);
}

#[test]
fn a_lone_sender_of_a_bad_piece_is_banned_and_the_piece_fetched_again() {
    let mut t = T::leech(2 * PIECE as usize);
    let (a, b) = (t.connect(1), t.connect(2));
    t.recv(a, Message::HaveAll);
    t.recv(a, Message::Unchoke);
    t.want(0, 0);
    let reqs = t.requests(a);
    for &(i, begin) in &reqs {
        t.recv(a, Message::Piece { index: i, begin, data: vec![0xEE; BLOCK as usize] });
    }
    t.verify_all();
    assert_eq!(t.s.totals().bad_pieces, 1);
    assert_eq!(t.disconnected.len(), 1);
    assert_eq!(t.disconnected[0].0, a);
    // b serves it.
    t.recv(b, Message::HaveAll);
    t.recv(b, Message::Unchoke);
    let reqs = t.requests(b);
    assert_eq!(reqs.len(), BLOCKS as usize);
    t.answer(b, &reqs);
    t.verify_all();
    assert_eq!(t.delivered, vec![(0, vec![0])]);
    // Banned by IP (not loopback) and by peer id, remembered after the disconnect.
    let other_port = SocketAddr::from(([10, 0, 0, 1], 7000));
    assert_eq!(t.s.connected(other_port, pid(9), false, vec![], t.now), Err(Refused::Banned));
    assert_eq!(t.s.connected(addr(33), pid(1), false, vec![], t.now), Err(Refused::Banned));
    assert!(!t.s.should_dial(other_port));
}

#[test]
fn mixed_senders_are_blamed_block_by_block_once_the_piece_verifies() {
    let mut t = T::leech(PIECE as usize);
    let (liar, honest) = (t.connect(1), t.connect(2));
    for k in [liar, honest] {
        t.recv(k, Message::HaveAll);
    }
    // First attempt: the liar sends block 0 (bad), the honest peer the rest.
    t.recv(liar, Message::Unchoke);
    t.want(0, 0);
    let reqs = t.requests(liar);
    t.recv(liar, Message::Piece { index: 0, begin: 0, data: vec![0; BLOCK as usize] });
    t.recv(liar, Message::Choke);
    t.recv(honest, Message::Unchoke);
    let rest = t.requests(honest);
    assert_eq!(rest.len(), reqs.len() - 1);
    t.answer(honest, &rest);
    t.verify_all();
    assert!(t.disconnected.is_empty(), "two senders: nobody is banned on a guess");
    // Second attempt from the honest peer alone: it verifies, and the liar's block differs.
    let again = t.requests(honest);
    assert_eq!(again.len(), BLOCKS as usize);
    t.answer(honest, &again);
    t.verify_all();
    assert_eq!(t.delivered, vec![(0, vec![0])]);
    assert_eq!(t.disconnected.iter().map(|d| d.0).collect::<Vec<_>>(), vec![liar]);
    assert_eq!(t.s.pieces.failed_bytes(), 0, "the failed attempt is forgotten once judged");
}

#[test]
fn failed_attempts_kept_for_blame_are_bounded() {
    let mut p: Pieces<u32> = Pieces::default();
    let big = pieces::MAX_FAILED_BYTES / 3;
    for i in 0..10 {
        p.remember_failure(i, vec![0; big], vec![1]);
    }
    assert!(p.failed_bytes() <= pieces::MAX_FAILED_BYTES);
    for _ in 0..10 {
        p.remember_failure(100, vec![0; 10], vec![1]);
    }
    assert!(p.blame(100, &[0; 10]).is_empty());
}

#[test]
fn have_out_of_range_drops_the_peer_and_early_haves_are_bounded() {
    let mut t = T::leech(2 * PIECE as usize);
    let a = t.connect(1);
    t.recv(a, Message::Have(2));
    assert_eq!(t.disconnected, vec![(a, "have 2 out of range".to_string())]);

    // Before the metadata: haves are remembered up to a bound, whatever the index.
    let mut m = T::new(false, 2 * PIECE as usize, false);
    let b = m.connect(2);
    for i in 0..(peer::MAX_EARLY_HAVES as u32 + 100) {
        m.s.received(b, Message::Have(i.wrapping_mul(7919)), m.now);
    }
    m.s.received(b, Message::Have(u32::MAX), m.now);
    assert_eq!(m.s.peer(b).unwrap().early_haves.len(), peer::MAX_EARLY_HAVES);
}

#[test]
fn a_magnet_resolves_past_a_lying_metadata_peer() {
    let mut t = T::new(false, 2 * PIECE as usize, false);
    let info = t.meta.info_bytes.clone();
    assert!(info.len() < 16 << 10, "one metadata piece");
    let ext = |size: u64| {
        let mut h = ExtHandshake::default();
        h.m.insert("ut_metadata".into(), 3);
        h.metadata_size = Some(size);
        Message::Extended { id: 0, payload: h.encode() }
    };
    let (liar, honest) = (t.connect_from(addr(1), pid(1), true), t.connect_from(addr(2), pid(2), true));
    t.recv(liar, ext(info.len() as u64));
    t.recv(honest, ext(info.len() as u64));
    // A third peer announcing another size does not reset the assembly.
    let other = t.connect_from(addr(3), pid(3), true);
    t.recv(other, ext(info.len() as u64 + 1));
    for k in [liar, honest] {
        let asked = t.take(k).into_iter().any(|m| matches!(m, Message::Extended { id: 3, .. }));
        assert!(asked, "metadata asked of {k}");
    }
    let data = |bytes: Vec<u8>| Message::Extended {
        id: UT_METADATA_ID,
        payload: Metadata::Data { piece: 0, total_size: info.len() as u64, data: bytes }.encode(),
    };
    t.recv(liar, data(vec![b'x'; info.len()]));
    assert_eq!(t.disconnected.iter().map(|d| d.0).collect::<Vec<_>>(), vec![liar], "the liar alone is named");
    assert!(t.metadata.is_empty());
    t.recv(honest, data(info.clone()));
    assert_eq!(t.metadata.len(), 1);
    assert_eq!(t.s.meta().unwrap().info_hash, t.meta.info_hash);
    assert!(t.take(honest).contains(&Message::Interested));
}

#[test]
fn a_seeder_bounds_what_a_leecher_that_never_reads_can_queue() {
    let mut t = T::seed(64 * PIECE as usize);
    let a = t.connect(1);
    assert!(matches!(t.take(a)[..], [Message::Bitfield(_)]));
    t.recv(a, Message::Interested);
    assert!(t.take(a).contains(&Message::Unchoke));
    for _ in 0..5 {
        for i in 0..64u32 {
            for b in 0..BLOCKS {
                t.s.received(a, Message::Request { index: i, begin: b * BLOCK, length: BLOCK }, t.now);
            }
        }
    }
    for i in 0..64u32 {
        t.s.received(a, Message::Request { index: i, begin: 0, length: MAX_BLOCK.min(PIECE as u32) }, t.now);
    }
    t.run();
    let read: u64 = t.reads.iter().flat_map(|(_, b)| b).map(|(_, _, l)| *l as u64 + 13).sum();
    assert!(read <= UPLOAD_BUFFER as u64, "{read} bytes handed out before the socket took any");
    let p = t.s.peer(a).unwrap();
    assert!(p.uploads.len() <= MAX_QUEUED_REQUESTS);
    assert!(p.ignored_requests > 0);
    // The socket takes 1 MiB: about that much more is read.
    t.s.written(a, 1 << 20);
    t.run();
    let read2: u64 = t.reads.iter().flat_map(|(_, b)| b).map(|(_, _, l)| *l as u64 + 13).sum();
    assert!(read2 > read && read2 <= read + (1 << 20) + PIECE + 13, "{read} then {read2}");
    // A cancel takes a request out; a choke clears the queue.
    let before = t.s.peer(a).unwrap().uploads.len();
    let (i, b, l) = *t.s.peer(a).unwrap().uploads.back().unwrap();
    t.recv(a, Message::Cancel { index: i, begin: b, length: l });
    assert_eq!(t.s.peer(a).unwrap().uploads.len(), before - 1);
    t.recv(a, Message::NotInterested);
    assert!(t.s.peer(a).unwrap().uploads.is_empty());
    assert!(t.disconnected.is_empty());
}

#[test]
fn requests_outside_the_torrent_drop_the_peer() {
    let mut t = T::seed(2 * PIECE as usize);
    let a = t.connect(1);
    t.recv(a, Message::Interested);
    t.recv(a, Message::Request { index: 0, begin: PIECE as u32 - 10, length: 20 });
    assert_eq!(t.disconnected.len(), 1);
    let b = t.connect(2);
    t.recv(b, Message::Interested);
    t.recv(b, Message::Request { index: 0, begin: 0, length: MAX_BLOCK + 1 });
    assert_eq!(t.disconnected.len(), 2);
}

#[test]
fn a_peer_that_provokes_replies_and_never_reads_is_dropped() {
    let mut t = T::seed(2 * PIECE as usize);
    let a = t.connect_from(addr(1), pid(1), true);
    let mut h = ExtHandshake::default();
    h.m.insert("ut_metadata".into(), 3);
    t.recv(a, Message::Extended { id: 0, payload: h.encode() });
    let ask = Message::Extended { id: UT_METADATA_ID, payload: Metadata::Request { piece: 0 }.encode() };
    for _ in 0..100_000 {
        t.s.received(a, ask.clone(), t.now);
        if t.s.peer(a).is_none() {
            break;
        }
        // The shell drains after each read; the bytes pile up unwritten.
        while let Some(x) = t.s.poll_action() {
            if let Action::Disconnect { peer, reason } = x {
                t.disconnected.push((peer, reason));
            }
        }
    }
    assert_eq!(t.disconnected.len(), 1, "dropped once {MAX_QUEUED_BYTES} bytes were queued");
    assert!(t.disconnected[0].1.contains("does not read"));
}

#[test]
fn chiral_status_is_earned_with_a_signature_over_our_nonce() {
    let mut t = T::seed(2 * PIECE as usize);
    let info_hash = t.meta.info_hash;
    let them = Identity::generate();
    let hello = |id: &str, sig: Option<Vec<u8>>| Message::Extended {
        id: CHIRAL_ID,
        payload: ChiralHello {
            msg_type: "hello".into(),
            chiral_peer_id: id.into(),
            reputation_score: 1000,
            wallet_address: None,
            signature: sig,
            network_link: None,
        }
        .encode(),
    };
    let handshake = |id: &str| {
        let mut h = ExtHandshake::default();
        h.m.insert("chiral".into(), 9);
        h.chiral = Some(id.into());
        h.chiral_nonce = Some(vec![7; 32]);
        Message::Extended { id: 0, payload: h.encode() }
    };
    // A claim with no signature, or one over another nonce, earns nothing.
    let a = t.connect_from(addr(1), pid(1), true);
    let our_nonce = t.s.peer(a).unwrap().nonce.clone();
    t.recv(a, handshake(&them.id()));
    let ours = t.take(a).into_iter().find_map(|m| match m {
        Message::Extended { id: 9, payload } => Some(ChiralHello::decode(&payload).unwrap()),
        _ => None,
    });
    let ours = ours.expect("we answer a chiral handshake with our hello");
    assert!(Identity::verify(&ours.chiral_peer_id, &[7; 32], &info_hash, ours.signature.as_ref().unwrap()));
    t.recv(a, hello(&them.id(), None));
    assert!(t.s.peer(a).unwrap().chiral.is_none());
    t.recv(a, hello(&them.id(), Some(them.prove(&[0xAB; 32], &info_hash))));
    assert!(t.s.peer(a).unwrap().chiral.is_none());
    // Someone else's id with a signature of its own key: no.
    let b = t.connect_from(addr(2), pid(2), true);
    let b_nonce = t.s.peer(b).unwrap().nonce.clone();
    let mallory = Identity::generate();
    t.recv(b, handshake(&them.id()));
    t.recv(b, hello(&them.id(), Some(mallory.prove(&b_nonce, &info_hash))));
    assert!(t.s.peer(b).unwrap().chiral.is_none());
    // The real key over our nonce: a Chiral peer, unchoked at once.
    t.recv(a, Message::Interested);
    t.take(a);
    t.recv(a, hello(&them.id(), Some(them.prove(&our_nonce, &info_hash))));
    let p = t.s.peer(a).unwrap();
    assert_eq!(p.chiral.as_ref().map(|c| c.id.clone()), Some(them.id()));
    assert!(!p.am_choking);
    assert_eq!(p.depth(), 2 * PIPELINE);
}

#[test]
fn read_ahead_only_while_the_only_source_and_abandoned_after() {
    let mut t = T::leech(8 * PIECE as usize);
    let a = t.unchoked(1);
    t.want(0, 0);
    assert_eq!(t.requests(a).len(), BLOCKS as usize, "piece 0 only");
    t.s.set_read_ahead(true, t.now);
    t.run();
    assert_eq!(t.requests(a).len(), 7 * BLOCKS as usize, "the rest read ahead");
    t.s.set_read_ahead(false, t.now);
    t.run();
    let cancels = t.take(a).into_iter().filter(|m| matches!(m, Message::Cancel { .. })).count();
    assert_eq!(cancels, 7 * BLOCKS as usize);
}

#[test]
fn a_piece_read_ahead_is_served_from_memory() {
    let mut t = T::leech(2 * PIECE as usize);
    let a = t.unchoked(1);
    t.s.set_read_ahead(true, t.now);
    t.run();
    let reqs = t.requests(a);
    assert_eq!(reqs.len(), 2 * BLOCKS as usize);
    t.answer(a, &reqs);
    t.verify_all();
    assert!(t.delivered.is_empty());
    match t.want(1, 5) {
        Want::Ready(d, 5) => assert_eq!(&d[..], &t.data[PIECE as usize..]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unwanted_pieces_are_cancelled_at_the_peer() {
    let mut t = T::leech(2 * PIECE as usize);
    let a = t.unchoked(1);
    let Want::Waiting(ticket) = t.want(1, 1) else { panic!() };
    t.take(a);
    assert_eq!(t.s.unwant(1, ticket, t.now), Some(1));
    t.run();
    let cancels = t.take(a).into_iter().filter(|m| matches!(m, Message::Cancel { .. })).count();
    assert_eq!(cancels, BLOCKS as usize);
    assert!(t.s.peer(a).unwrap().requests.is_empty());
}

#[test]
fn stop_cancels_waiters_and_drops_every_peer() {
    let mut t = T::leech(2 * PIECE as usize);
    let (a, b) = (t.connect(1), t.connect(2));
    t.want(0, 0);
    t.s.stop();
    let actions = t.s.drain();
    assert!(actions.iter().any(|x| matches!(x, Action::Cancel { to } if to == &vec![0])));
    let gone: Vec<PeerKey> = actions
        .iter()
        .filter_map(|x| if let Action::Disconnect { peer, .. } = x { Some(*peer) } else { None })
        .collect();
    assert_eq!(gone.len(), 2);
    assert!(gone.contains(&a) && gone.contains(&b));
    assert_eq!(t.s.want(1, 1, t.now), Err(WantError::Stopped));
}

#[test]
fn at_most_max_peers_and_no_self_connection() {
    let mut t = T::leech(PIECE as usize);
    for n in 0..MAX_PEERS as u8 {
        t.connect(n + 1);
    }
    assert_eq!(t.s.connected(addr(200), pid(200), false, vec![], t.now), Err(Refused::TooManyPeers));
    let mut u = T::leech(PIECE as usize);
    assert!(u.s.connected(addr(1), local().peer_id, false, vec![], u.now).is_err());
}

#[test]
fn blocks_in_any_order_and_borrowed_make_the_piece() {
    // A piece's buffer grows as blocks arrive (not zeroed first): blocks answered last first,
    // some borrowed from a read buffer (`received_block`), must still give the exact piece.
    let mut t = T::leech(4 * PIECE as usize);
    let a = t.unchoked(1);
    t.want(1, 1);
    let mut reqs = t.requests(a);
    assert_eq!(reqs.len(), BLOCKS as usize);
    reqs.reverse();
    for (n, &(i, b)) in reqs.iter().enumerate() {
        let at = (i as u64 * PIECE) as usize + b as usize;
        let bytes = t.data[at..at + BLOCK as usize].to_vec();
        if n % 2 == 0 {
            t.s.received_block(a, i, b, &bytes, t.now);
            t.run();
        } else {
            t.recv(a, Message::Piece { index: i, begin: b, data: bytes });
        }
    }
    assert_eq!(t.verify.len(), 1);
    assert_eq!(t.verify[0].1, &t.data[PIECE as usize..2 * PIECE as usize]);
    t.verify_all();
    assert_eq!(t.delivered, vec![(1, vec![1])]);
    assert_eq!(t.s.totals().wasted, 0);
    // A block nobody asked for, borrowed or not, is waste and changes nothing.
    let extra = t.data[..BLOCK as usize].to_vec();
    t.s.received_block(a, 0, 0, &extra, t.now);
    t.run();
    assert_eq!(t.s.totals().wasted, BLOCK as u64);
    assert!(t.verify.is_empty());
}

impl T {
    /// A peer (extension bit set) that proves a Chiral id by signing our nonce.
    fn chiral_peer(&mut self, n: u8) -> PeerKey {
        self.chiral_peer_with(n, None)
    }

    /// The same, announcing `wallet`.
    fn chiral_peer_with(&mut self, n: u8, wallet: Option<&str>) -> PeerKey {
        self.chiral_peer_linked(n, wallet, |_| None)
    }

    /// A proven Chiral peer whose hello carries the network link `link` makes for its id.
    fn chiral_peer_linked(
        &mut self,
        n: u8,
        wallet: Option<&str>,
        link: impl FnOnce(&str) -> Option<([u8; 32], [u8; 64])>,
    ) -> PeerKey {
        let them = Identity::generate();
        let k = self.connect_from(addr(n), pid(n), true);
        let nonce = self.s.peer(k).unwrap().nonce.clone();
        let mut h = ExtHandshake::default();
        h.m.insert("chiral".into(), 9);
        h.chiral = Some(them.id());
        h.chiral_nonce = Some(vec![7; 32]);
        self.recv(k, Message::Extended { id: 0, payload: h.encode() });
        let hello = ChiralHello {
            msg_type: "hello".into(),
            chiral_peer_id: them.id(),
            reputation_score: 500,
            wallet_address: wallet.map(str::to_string),
            signature: Some(them.prove(&nonce, &self.meta.info_hash)),
            network_link: link(&them.id()),
        };
        self.recv(k, Message::Extended { id: CHIRAL_ID, payload: hello.encode() });
        assert!(self.s.peer(k).unwrap().chiral.is_some());
        k
    }

    /// A proven Chiral peer that has everything and unchokes us.
    fn chiral_holder(&mut self, n: u8) -> PeerKey {
        let k = self.chiral_peer(n);
        self.recv(k, Message::HaveAll);
        self.recv(k, Message::Unchoke);
        self.take(k);
        k
    }

    /// Requests sent to `k` since the last look, as (piece, begin, length).
    fn spans(&mut self, k: PeerKey) -> Vec<(u32, u32, u32)> {
        self.take(k)
            .into_iter()
            .filter_map(|m| match m {
                Message::Request { index, begin, length } => Some((index, begin, length)),
                _ => None,
            })
            .collect()
    }

    /// `k` answers a request with one message of the right bytes.
    fn answer_span(&mut self, k: PeerKey, (index, begin, length): (u32, u32, u32)) {
        let at = (index as u64 * PIECE) as usize + begin as usize;
        let data = self.data[at..at + length as usize].to_vec();
        self.recv(k, Message::Piece { index, begin, data });
    }
}

#[test]
fn a_chiral_peer_is_asked_for_spans_and_topped_up_in_batches() {
    let pieces = 80;
    let mut t = T::leech(pieces * PIECE as usize);
    let c = t.chiral_holder(1);
    let depth = t.s.peer(c).unwrap().depth();
    assert_eq!(depth, 2 * PIPELINE);
    for i in 0..pieces as u32 {
        t.want(i, i);
    }
    // Spans of whole pieces here (a test piece is 4 blocks): a quarter of the messages, every
    // block still tracked; filled to within one top-up of the depth.
    let spans = t.spans(c);
    assert!(spans.iter().all(|&(_, b, l)| b == 0 && l == PIECE as u32));
    let outstanding = t.s.peer(c).unwrap().requests.len();
    assert_eq!(outstanding, spans.len() * BLOCKS as usize);
    assert!(depth - outstanding < CHIRAL_REFILL && outstanding <= depth);
    let mut asked = spans.len();
    let mut pending: std::collections::VecDeque<_> = spans.into();
    let mut topups = 0;
    while let Some(s) = pending.pop_front() {
        // Blocks free once this span is in, before any top-up.
        let free = depth + BLOCKS as usize - t.s.peer(c).unwrap().requests.len();
        t.answer_span(c, s);
        let more = t.spans(c);
        if more.is_empty() {
            assert!(free < CHIRAL_REFILL || asked == pieces, "no top-up for {free} free blocks");
        } else {
            topups += 1;
            assert!(free >= CHIRAL_REFILL, "topped up with {free} blocks free");
            assert!(t.s.peer(c).unwrap().requests.len() <= depth);
        }
        asked += more.len();
        pending.extend(more);
    }
    assert!(topups <= pieces * BLOCKS as usize / CHIRAL_REFILL, "{topups} top-ups");
    assert_eq!(t.verify.len(), pieces);
    t.verify_all();
    assert_eq!(t.delivered.len(), pieces);
    assert_eq!(t.s.totals().wasted, 0);
    assert!(t.s.peer(c).unwrap().requests.is_empty());
}

#[test]
fn a_run_of_blocks_is_taken_block_by_block() {
    let mut t = T::leech(4 * PIECE as usize);
    let c = t.chiral_holder(1);
    t.want(0, 0);
    assert_eq!(t.spans(c), vec![(0, 0, PIECE as u32)]);
    // One block more than asked: the piece is made, the extra block is waste.
    let data = t.data[..PIECE as usize + BLOCK as usize].to_vec();
    t.recv(c, Message::Piece { index: 0, begin: 0, data });
    assert_eq!(t.s.totals().wasted, BLOCK as u64);
    assert_eq!(t.verify.len(), 1);
    t.verify_all();
    assert_eq!(t.delivered, vec![(0, vec![0])]);
    // A run whose offsets pass the end of a u32 is waste, not a panic.
    t.recv(c, Message::Piece { index: 1, begin: u32::MAX - 10, data: vec![0; 2 * BLOCK as usize] });
    assert_eq!(t.s.totals().wasted, 3 * BLOCK as u64);
    assert!(t.disconnected.is_empty());
}

#[test]
fn a_proven_chiral_leecher_gets_a_larger_but_bounded_upload_buffer() {
    let mut t = T::seed(160 * PIECE as usize);
    let a = t.chiral_peer(1);
    t.recv(a, Message::Interested);
    assert!(!t.s.peer(a).unwrap().am_choking);
    for i in 0..160u32 {
        t.s.received(a, Message::Request { index: i, begin: 0, length: PIECE as u32 }, t.now);
    }
    t.run();
    let read: u64 = t.reads.iter().flat_map(|(_, b)| b).map(|(_, _, l)| *l as u64 + 13).sum();
    assert!(read > UPLOAD_BUFFER as u64, "more than an ordinary peer's {UPLOAD_BUFFER}");
    assert!(read <= CHIRAL_UPLOAD_BUFFER as u64, "{read} bytes handed out before the socket took any");
    assert!(t.disconnected.is_empty(), "a full buffer of blocks is not a peer that does not read");
}

#[test]
fn pex_tells_peers_of_each_other_and_dials_what_it_hears_bounded() {
    let mut t = T::leech(2 * PIECE as usize);
    let (a, b) = (t.connect_from(addr(1), pid(1), true), t.connect_from(addr(2), pid(2), true));
    let mut h = ExtHandshake::default();
    h.m.insert("ut_pex".into(), 9);
    h.port = Some(7000);
    for k in [a, b] {
        t.recv(k, Message::Extended { id: 0, payload: h.encode() });
    }
    t.take(a);
    t.s.tick(t.now);
    t.run();
    let told = |t: &mut T, k| -> Vec<Pex> {
        t.take(k)
            .into_iter()
            .filter_map(|m| match m {
                Message::Extended { id: 9, payload } => Pex::decode(&payload).ok(),
                _ => None,
            })
            .collect()
    };
    // b accepted (not dialled): its listening port comes from its extended handshake.
    let b_listens = SocketAddr::new(addr(2).ip(), 7000);
    assert_eq!(told(&mut t, a), vec![Pex { added: vec![b_listens], dropped: vec![] }]);
    // Nothing new before PEX_EVERY; b leaves, then a is told it dropped.
    t.s.tick(t.now);
    t.run();
    assert!(told(&mut t, a).is_empty());
    t.s.disconnected(b);
    t.later(PEX_EVERY);
    t.s.tick(t.now);
    t.run();
    assert_eq!(told(&mut t, a), vec![Pex { added: vec![], dropped: vec![b_listens] }]);
    // What a tells us is dialled, once per 45 s, known peers left out.
    let heard = Pex { added: vec![addr(7), addr(1)], dropped: vec![] };
    t.recv(a, Message::Extended { id: UT_PEX_ID, payload: heard.encode() });
    assert_eq!(t.dials, vec![addr(7)]);
    t.recv(a, Message::Extended { id: UT_PEX_ID, payload: Pex { added: vec![addr(8)], dropped: vec![] }.encode() });
    assert_eq!(t.dials, vec![addr(7)]);
}

#[test]
fn the_fast_lane_can_be_kept_for_peers_that_pay() {
    let (payer, debtor) = ("0xabc0000000000000000000000000000000000001", "0xABC0000000000000000000000000000000000002");
    let mut t = T::seed(4 * PIECE as usize);
    let a = t.chiral_peer_with(1, Some(payer));
    let b = t.chiral_peer_with(2, Some(debtor));
    let c = t.chiral_peer_with(3, None);
    let plain = t.connect_from(addr(4), pid(4), true);
    // By default every proven Chiral peer has it, and only they do.
    let lanes = |t: &T| [a, b, c, plain].map(|k| t.s.peer(k).unwrap().fast_lane);
    assert_eq!(lanes(&t), [true, true, true, false]);
    assert!(t.s.peer(a).unwrap().upload_buffer() > t.s.peer(plain).unwrap().upload_buffer());
    // Paid only: the debtor (listed lowercase, announced in capitals) and the peer with no
    // wallet lose it.
    t.logs.clear();
    let behind = HashSet::from([debtor.to_ascii_lowercase()]);
    t.s.set_fast_lane(FastLane::Paid { behind }, t.now);
    t.run();
    assert_eq!(lanes(&t), [true, false, false, false]);
    assert_eq!(t.s.peer(b).unwrap().upload_buffer(), t.s.peer(plain).unwrap().upload_buffer());
    assert_eq!(t.logs.iter().filter(|l| l.contains("fast lane withdrawn")).count(), 2, "{:?}", t.logs);
    // A peer proven later is judged by the policy in force.
    let d = t.chiral_peer_with(5, Some(debtor));
    assert!(!t.s.peer(d).unwrap().fast_lane);
    // The debt is paid: it is given back.
    t.logs.clear();
    t.s.set_fast_lane(FastLane::Paid { behind: HashSet::new() }, t.now);
    t.run();
    assert_eq!(lanes(&t), [true, true, false, false]);
    assert!(t.s.peer(d).unwrap().fast_lane);
    assert!(t.logs.iter().any(|l| l.contains("fast lane given back")), "{:?}", t.logs);
    // The same policy again changes nothing and says nothing.
    t.logs.clear();
    t.s.set_fast_lane(FastLane::Paid { behind: HashSet::new() }, t.now);
    t.run();
    assert!(t.logs.iter().all(|l| !l.contains("fast lane")), "{:?}", t.logs);
}

/// A Chiral peer linked to a Chiral network key with a poor reputation there gets no fast lane,
/// and gets it back when the network forgives it; a link that does not verify counts for
/// nothing (the peer is judged as an unlinked one).
#[test]
fn a_poor_chiral_network_reputation_costs_the_fast_lane() {
    use ed25519_dalek::{Signer as _, SigningKey};
    let mut t = T::seed(4 * PIECE as usize);
    let network = SigningKey::from_bytes(&[9; 32]);
    let key = network.verifying_key().to_bytes();
    let poor: HashSet<String> = [hex::encode(key)].into();
    t.s.set_poor_network(poor.clone(), t.now);
    let linked =
        t.chiral_peer_linked(1, None, |id| Some((key, network.sign(&chiral_sdk::link::message(id)).to_bytes())));
    // The same key, but its signature is over another id: not linked.
    let forged = t.chiral_peer_linked(2, None, |_| {
        Some((key, network.sign(&chiral_sdk::link::message(&"00".repeat(32))).to_bytes()))
    });
    let plain = t.chiral_peer(3);
    let lanes = |t: &T| [linked, forged, plain].map(|k| t.s.peer(k).unwrap().fast_lane);
    assert_eq!(t.s.peer(linked).unwrap().chiral.as_ref().unwrap().network, Some(hex::encode(key)));
    assert_eq!(t.s.peer(forged).unwrap().chiral.as_ref().unwrap().network, None);
    assert_eq!(lanes(&t), [false, true, true]);
    t.s.set_poor_network(HashSet::new(), t.now);
    assert_eq!(lanes(&t), [true, true, true]);
    t.s.set_poor_network(poor, t.now);
    assert_eq!(lanes(&t), [false, true, true]);
}
