//! Bounded bencode: never panics; what decodes re-encodes to a value that decodes the same.
#![no_main]
use chiral_plugin_bittorrent::bencode::{decode, decode_prefix, encode, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode(data, Limits::MESSAGE) {
        let again = encode(&v);
        assert_eq!(decode(&again, Limits::MESSAGE).ok().as_ref(), Some(&v));
    }
    let _ = decode_prefix(data, Limits::MESSAGE);
});
