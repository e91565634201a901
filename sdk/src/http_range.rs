//! Byte-range headers, both directions, as pure functions so they can be tested on bytes alone.
//!
//! The server side reads `Range` (RFC 9110 §14.2) and decides between a full body, one partial
//! body and 416; the client side reads `Content-Range` to check that a server answered the range
//! that was asked for and to learn the total length.

/// What the server should send for a request's `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeReply {
    /// 200 with the whole body: no `Range`, a syntax the server may ignore, or several ranges
    /// (RFC 9110 lets a server answer a multi-range request with the full representation).
    Full,
    /// 206 with bytes `start..=end` (inclusive, as HTTP writes them).
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */<length>`.
    Unsatisfiable,
}

/// Decides the reply for a `Range` header value over a body of `length` bytes.
///
/// Invalid syntax is ignored (full body), as RFC 9110 requires of a server that does not
/// understand the header; only a well-formed range that lies wholly past the end is 416.
pub fn parse_range(header: Option<&[u8]>, length: u64) -> RangeReply {
    let Some(raw) = header else { return RangeReply::Full };
    let Ok(text) = std::str::from_utf8(raw) else { return RangeReply::Full };
    let text = text.trim();
    let Some(spec) = strip_prefix_ignore_case(text, "bytes=") else { return RangeReply::Full };
    if spec.contains(',') {
        return RangeReply::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeReply::Full };
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => {
            let Some(n) = parse_digits(last) else { return RangeReply::Full };
            if n == 0 || length == 0 {
                return RangeReply::Unsatisfiable;
            }
            RangeReply::Partial { start: length - n.min(length), end: length - 1 }
        }
        // `a-`: from a to the end.
        (false, true) => {
            let Some(start) = parse_digits(first) else { return RangeReply::Full };
            if start >= length {
                return RangeReply::Unsatisfiable;
            }
            RangeReply::Partial { start, end: length - 1 }
        }
        // `a-b`: inclusive, the end clamped to the body.
        (false, false) => {
            let (Some(start), Some(end)) = (parse_digits(first), parse_digits(last)) else {
                return RangeReply::Full;
            };
            if end < start {
                return RangeReply::Full;
            }
            if start >= length {
                return RangeReply::Unsatisfiable;
            }
            RangeReply::Partial { start, end: end.min(length - 1) }
        }
        (true, true) => RangeReply::Full,
    }
}

/// A parsed `Content-Range` response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes a-b/N` (or `/*` when the total is unknown): bytes `start..=end` of `total`.
    Bytes { start: u64, end: u64, total: Option<u64> },
    /// `bytes */N`, sent with 416: the range did not fit a body of `N` bytes.
    Unsatisfied { total: u64 },
}

/// Parses a `Content-Range` value; `None` for anything malformed or inconsistent.
pub fn parse_content_range(raw: &[u8]) -> Option<ContentRange> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let rest = strip_prefix_ignore_case(text, "bytes")?;
    // At least one space separates the unit from the range.
    let rest = rest.strip_prefix(' ')?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim();
    let range = range.trim();
    if range == "*" {
        return Some(ContentRange::Unsatisfied { total: parse_digits(total)? });
    }
    let total = if total == "*" { None } else { Some(parse_digits(total)?) };
    let (start, end) = range.split_once('-')?;
    let (start, end) = (parse_digits(start.trim())?, parse_digits(end.trim())?);
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some(ContentRange::Bytes { start, end, total })
}

/// The `Content-Range` value for bytes `start..=end` of `total`.
pub fn content_range(start: u64, end: u64, total: u64) -> String {
    format!("bytes {start}-{end}/{total}")
}

/// A non-empty run of ASCII digits that fits a `u64` (no sign, no spaces, no overflow).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(h: &str, len: u64) -> RangeReply {
        parse_range(Some(h.as_bytes()), len)
    }

    #[test]
    fn no_header_is_full() {
        assert_eq!(parse_range(None, 10), RangeReply::Full);
    }

    #[test]
    fn closed_ranges() {
        assert_eq!(r("bytes=0-0", 10), RangeReply::Partial { start: 0, end: 0 });
        assert_eq!(r("bytes=2-5", 10), RangeReply::Partial { start: 2, end: 5 });
        // The end is clamped to the body.
        assert_eq!(r("bytes=2-500", 10), RangeReply::Partial { start: 2, end: 9 });
        assert_eq!(r("BYTES=9-9", 10), RangeReply::Partial { start: 9, end: 9 });
        assert_eq!(r(" bytes= 1 - 2 ", 10), RangeReply::Partial { start: 1, end: 2 });
    }

    #[test]
    fn open_ended_and_suffix() {
        assert_eq!(r("bytes=4-", 10), RangeReply::Partial { start: 4, end: 9 });
        assert_eq!(r("bytes=-3", 10), RangeReply::Partial { start: 7, end: 9 });
        // A suffix longer than the body is the whole body, as a 206.
        assert_eq!(r("bytes=-30", 10), RangeReply::Partial { start: 0, end: 9 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(r("bytes=10-", 10), RangeReply::Unsatisfiable);
        assert_eq!(r("bytes=10-20", 10), RangeReply::Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), RangeReply::Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), RangeReply::Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), RangeReply::Unsatisfiable);
    }

    #[test]
    fn garbage_and_multi_range_are_ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=+1-2",
            "bytes=1-2-3",
            "items=0-1",
            "bytes=0-1,4-5",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(r(h, 10), RangeReply::Full, "{h:?}");
        }
        assert_eq!(parse_range(Some(&[0xff, 0xfe]), 10), RangeReply::Full);
    }

    #[test]
    fn content_range_values() {
        let p = |s: &str| parse_content_range(s.as_bytes());
        assert_eq!(p("bytes 0-0/10"), Some(ContentRange::Bytes { start: 0, end: 0, total: Some(10) }));
        assert_eq!(p("bytes 5-9/*"), Some(ContentRange::Bytes { start: 5, end: 9, total: None }));
        assert_eq!(p("Bytes  3-4/5"), Some(ContentRange::Bytes { start: 3, end: 4, total: Some(5) }));
        assert_eq!(p("bytes */0"), Some(ContentRange::Unsatisfied { total: 0 }));
        for bad in
            ["", "bytes", "bytes 0-0", "bytes 5-4/10", "bytes 0-10/10", "bytes a-b/c", "bits 0-0/1", "bytes0-0/1"]
        {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(content_range(2, 5, 10), "bytes 2-5/10");
        // What one side writes the other reads back.
        assert_eq!(p(&content_range(2, 5, 10)), Some(ContentRange::Bytes { start: 2, end: 5, total: Some(10) }));
    }
}
