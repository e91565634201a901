//! Magnet links and info-hash spellings: bounded, never panics; a parsed link written back with
//! `to_uri` parses to the same link; percent-encoding round-trips.
#![no_main]
use chiral_sdk::magnet::{
    parse_info_hash, percent_decode, percent_encode, Magnet, MAX_DIRECT_PEERS, MAX_MAGNET, MAX_SELECTED, MAX_TRACKERS,
    MAX_WEB_SEEDS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(percent_decode(&percent_encode(data)), data);
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = percent_decode(s);
    if let Some(h) = parse_info_hash(s) {
        assert_eq!(Magnet::from_info_hash(s).map(|m| m.info_hash).ok(), Some(h));
    }
    if let Ok(m) = Magnet::parse(s) {
        assert!(m.trackers.len() <= MAX_TRACKERS && m.web_seeds.len() <= MAX_WEB_SEEDS);
        assert!(m.peers.len() + m.peer_names.len() <= MAX_DIRECT_PEERS);
        assert!(m.select_only.len() <= MAX_SELECTED);
        if let Some(name) = m.display_name() {
            assert!(!name.chars().any(|c| c.is_control()));
        }
        let uri = m.to_uri();
        if uri.len() <= MAX_MAGNET {
            assert_eq!(Magnet::parse(&uri).as_ref().ok(), Some(&m), "{uri}");
        }
    }
});
