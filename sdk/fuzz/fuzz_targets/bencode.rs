//! Bounded bencode: never panics; what decodes re-encodes canonically to a value that decodes
//! the same; a prefix never claims more bytes than it was given; value spans point at values.
#![no_main]
use chiral_sdk::bencode::{decode, decode_prefix, decode_with_spans, encode, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode(data, Limits::MESSAGE) {
        let again = encode(&v);
        assert_eq!(decode(&again, Limits::MESSAGE).ok().as_ref(), Some(&v));
        // Canonical: encoding the re-decoded value gives the same bytes.
        assert_eq!(encode(&decode(&again, Limits::MESSAGE).unwrap()), again);
    }
    if let Ok((v, used)) = decode_prefix(data, Limits::MESSAGE) {
        assert!(used > 0 && used <= data.len());
        assert_eq!(decode(&data[..used], Limits::MESSAGE).ok().as_ref(), Some(&v));
    }
    if let Ok((v, spans)) = decode_with_spans(data, Limits::MESSAGE) {
        for (key, span) in &spans {
            assert!(span.start <= span.end && span.end <= data.len());
            let inner = decode(&data[span.clone()], Limits::MESSAGE).expect("a span holds one value");
            if let Some(d) = v.as_dict() {
                assert_eq!(d.get(key), Some(&inner));
            }
        }
    }
});
