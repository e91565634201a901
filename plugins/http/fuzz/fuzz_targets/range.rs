//! `Range` (what a client asks our seed for) and `Content-Range` (what a server says it sent):
//! never panics; a partial reply lies inside the body; a parsed `Content-Range` is consistent
//! and survives being written back.
#![no_main]
use chiral_plugin_http::range::{content_range, parse_content_range, parse_range, ContentRange, RangeReply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (length, header) = match data.split_first() {
        // Small bodies mostly (edges), sometimes one of any size.
        Some((&n, rest)) if n < 0xf0 => (n as u64, rest),
        Some((_, rest)) if rest.len() >= 8 => (u64::from_le_bytes(rest[..8].try_into().unwrap()), &rest[8..]),
        Some((_, rest)) => (u64::MAX, rest),
        None => (0, data),
    };
    match parse_range(Some(header), length) {
        RangeReply::Partial { start, end } => assert!(start <= end && end < length, "{start}-{end}/{length}"),
        RangeReply::Unsatisfiable | RangeReply::Full => {}
    }
    match parse_content_range(header) {
        Some(ContentRange::Bytes { start, end, total }) => {
            assert!(start <= end && total.is_none_or(|t| end < t));
            if let Some(total) = total {
                let again = content_range(start, end, total);
                assert_eq!(
                    parse_content_range(again.as_bytes()),
                    Some(ContentRange::Bytes { start, end, total: Some(total) })
                );
            }
        }
        Some(ContentRange::Unsatisfied { .. }) | None => {}
    }
});
