//! The swarm state machine driven by hostile peers: a seeder or a leecher, with or without the
//! torrent's metadata (a magnet before its metadata arrives), one to three peers sending any
//! frames the wire decoder lets through (`have` past the piece count, bitfields, requests,
//! blocks anywhere, extension messages), with time passing. No input panics it, and what it
//! asks for (reads, checks) stays inside the torrent.
#![no_main]
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use chiral_plugin_bittorrent::{
    identity::Identity,
    metainfo::{self, CreateOptions, TorrentMetadata},
    peer_wire::{self, Frame},
    swarm::{Action, Local, Swarm},
};
use libfuzzer_sys::fuzz_target;

const PIECE: u64 = 16 << 10;

/// A 7.5-piece torrent, made once.
fn meta() -> &'static Arc<TorrentMetadata> {
    static META: OnceLock<Arc<TorrentMetadata>> = OnceLock::new();
    META.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("chiral-fuzz-swarm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        std::fs::write(&path, (0..(7 * PIECE + PIECE / 2)).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
        let opts = CreateOptions { piece_size: Some(PIECE), ..CreateOptions::default() };
        let (m, _) = metainfo::build(&path, &opts).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(m)
    })
}

fn identity() -> Arc<Identity> {
    static ID: OnceLock<Arc<Identity>> = OnceLock::new();
    ID.get_or_init(|| Arc::new(Identity::generate())).clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut buf)) = data.split_first() else { return };
    let meta = meta();
    let local = Local {
        peer_id: *b"-CH0001-ourselves000",
        port: 6881,
        identity: identity(),
        reputation: 500,
        wallet: None,
        payment_threshold: 1 << 20,
    };
    let seeding = mode & 1 == 1;
    let with_meta = seeding || mode & 2 == 2;
    let mut s: Swarm<u32> = Swarm::new(meta.info_hash, local, seeding, with_meta.then(|| meta.clone()), vec![], 7);
    let mut now = Instant::now();
    let mut keys = Vec::new();
    for n in 0..=(mode >> 2) % 3 {
        let mut id = *b"-XX0001-000000000000";
        id[19] = n;
        if let Ok(k) = s.connected(SocketAddr::from(([10, 0, 0, n + 1], 6881)), id, mode & 0x20 != 0, vec![n; 32], now) {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return;
    }
    let total = meta.length;
    while let Some((&who, rest)) = buf.split_first() {
        let count = s.meta().map(|m| m.piece_count());
        let max = peer_wire::max_frame(count);
        let bitfield_len = count.map(|c| (c as usize).div_ceil(8));
        let key = keys[usize::from(who & 3) % keys.len()];
        match peer_wire::decode_frame(rest, max, bitfield_len) {
            Ok(Some((frame, used))) => {
                match frame {
                    Frame::Block { index, begin, data } => s.received_block(key, index, begin, data, now),
                    Frame::Message(m) => s.received(key, m, now),
                }
                buf = &rest[used..];
            }
            _ => break,
        }
        if who & 0x80 != 0 {
            now += Duration::from_millis(u64::from(who & 0x7f) * 100);
            s.tick(now);
        }
        while let Some(a) = s.poll_action() {
            match a {
                Action::Read { blocks, .. } => {
                    for (index, begin, length) in blocks {
                        let end = u64::from(index) * PIECE + u64::from(begin) + u64::from(length);
                        assert!(end <= total, "a read past the end: piece {index} at {begin} for {length}");
                    }
                }
                Action::Verify { index, data } => {
                    assert!(u64::from(index) * PIECE < total, "piece {index} is past the end");
                    let good = who & 0x40 != 0;
                    s.checked(index, data, good, now);
                }
                _ => {}
            }
        }
    }
    if mode & 0x40 != 0 {
        s.disconnected(keys[0]);
    }
    s.tick(now + Duration::from_secs(120));
    while s.poll_action().is_some() {}
});
