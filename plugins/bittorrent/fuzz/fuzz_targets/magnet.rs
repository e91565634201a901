//! Magnet links and info-hash spellings.
#![no_main]
use chiral_plugin_bittorrent::magnet::{parse_info_hash, parse_magnet_uri, percent_decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_magnet_uri(s);
        let _ = parse_info_hash(s);
        let _ = percent_decode(s);
    }
});
