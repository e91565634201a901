//! Tracker replies: HTTP (bencoded, compact and dictionary peers) and UDP connect/announce.
#![no_main]
use chiral_plugin_bittorrent::tracker::{parse_http_reply, parse_udp_announce, parse_udp_connect, MAX_PEERS_PER_REPLY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_http_reply(data) {
        assert!(r.peers.len() <= 2 * MAX_PEERS_PER_REPLY);
    }
    let tx = data.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
    let _ = parse_udp_connect(data, tx);
    let _ = parse_udp_announce(data, tx, false);
    let _ = parse_udp_announce(data, tx, true);
});
