//! Piece geometry from untrusted lengths (a `Content-Range`, a torrent, a manifest): bounded,
//! never panics; pieces tile the content exactly. Also the output-name guards `safe_name` and
//! `safe_relative`: whatever a server names a file, it stays inside the output folder.
#![no_main]
use std::path::Component;

use chiral_sdk::{
    engine::{safe_name, safe_relative},
    layout::{Layout, MAX_PIECES, MAX_PIECE_LENGTH},
};
use libfuzzer_sys::fuzz_target;

fn check(l: Layout) {
    assert!(l.piece_length >= 1 && l.piece_length <= MAX_PIECE_LENGTH);
    let count = l.piece_count() as u64;
    assert!(count <= MAX_PIECES);
    assert_eq!(count, l.length.div_ceil(l.piece_length));
    if count == 0 {
        return;
    }
    let (first_off, first_len) = l.piece(0);
    assert_eq!(first_off, 0);
    assert!(first_len >= 1 && first_len <= l.piece_length);
    let (last_off, last_len) = l.piece(count as u32 - 1);
    assert!(last_len >= 1);
    assert_eq!(last_off + last_len, l.length);
    assert_eq!(l.piece(count as u32).1, 0);
}

fn word(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in data.iter().skip(at).take(8).enumerate() {
        b[i] = *x;
    }
    u64::from_le_bytes(b)
}

fn check_name(n: &str) {
    assert!(!n.is_empty() && n != "." && n != "..");
    assert!(!n.contains(['/', '\\', '\0']) && !n.chars().any(char::is_control));
}

fuzz_target!(|data: &[u8]| {
    let (length, piece_length) = (word(data, 0), word(data, 8));
    if let Ok(l) = Layout::new(length, piece_length) {
        check(l);
    }
    // Small piece lengths too, which a random u64 rarely is.
    if let Ok(l) = Layout::new(length, piece_length % (1 << 20) + 1) {
        check(l);
    }
    if let Ok(l) = Layout::for_byte_ranges(length) {
        assert!(l.piece_length.is_power_of_two());
        check(l);
    }

    let Ok(text) = std::str::from_utf8(data.get(16..).unwrap_or_default()) else { return };
    check_name(&safe_name(text));
    if let Some(p) = safe_relative(text) {
        for c in p.components() {
            let Component::Normal(c) = c else { panic!("{p:?} leaves its folder") };
            check_name(c.to_str().expect("UTF-8 in, UTF-8 out"));
        }
    }
});
