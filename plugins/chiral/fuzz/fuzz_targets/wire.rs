//! The Chiral chunk protocol's frames (requests and responses from any peer): bounded, never
//! panics; a decoded request is the canonical encoding of itself; a decoded response encodes
//! back (within the protocol's bounds) to one that decodes the same.
#![no_main]
use chiral_plugin_chiral::wire::{
    decode_request, decode_response, encode_request, encode_response, Response, MAX_LEAVES, MAX_NAME, MAX_PROOF,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_request(data) {
        assert_eq!(encode_request(&r), data);
    }
    let Ok(r) = decode_response(data) else { return };
    match &r {
        Response::Manifest { name, leaves, .. } => assert!(name.len() <= MAX_NAME && leaves.len() <= MAX_LEAVES),
        Response::Chunk { proof, .. } => assert!(proof.len() <= MAX_PROOF),
        Response::Error { .. } => {}
    }
    let bytes = encode_response(&r).expect("a decoded response is within the bounds");
    let again = decode_response(&bytes).expect("an encoded response decodes");
    match (&r, &again) {
        // Error texts are cut to 512 characters on the way out, and were made UTF-8 on the way in.
        (Response::Error { message: a }, Response::Error { message: b }) => {
            assert_eq!(a.chars().take(512).collect::<String>(), *b)
        }
        _ => {
            assert_eq!(again, r);
            assert_eq!(bytes, data);
        }
    }
});
