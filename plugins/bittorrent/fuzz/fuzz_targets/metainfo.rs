//! .torrent files and BEP 9 info dictionaries: errors, never panics; names stay sanitised.
#![no_main]
use chiral_plugin_bittorrent::metainfo::{parse_info, parse_torrent_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for m in [parse_torrent_file(data), parse_info(data)].into_iter().flatten() {
        assert!(m.files.iter().all(|f| f.path.iter().all(|c| !c.is_empty() && c != ".." && !c.contains('/'))));
        assert_eq!(m.files.iter().map(|f| f.length).sum::<u64>(), m.length);
        assert_eq!(m.pieces.len() as u64, m.piece_count() as u64 * 20);
    }
});
