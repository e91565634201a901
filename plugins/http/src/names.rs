//! Names derived from URLs and headers: the file name a download is saved under, the label it is
//! accounted by, and the URL text shown in messages (which must never carry a password).

use chiral_sdk::engine::safe_name;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Url;

/// Name used when neither the URL path nor the headers offer one (what browsers save `/` as).
pub const FALLBACK_NAME: &str = "index.html";

/// Characters escaped in a URL path segment: everything but RFC 3986's unreserved set, so any
/// file name (spaces, `#`, `?`, `%`, non-ASCII) survives the round trip through a URL.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The file name for a download of `url`: its last non-empty path segment, percent-decoded;
/// else the `Content-Disposition` file name; else [`FALLBACK_NAME`]. Always safe to join to the
/// output folder (no separators, not `.`/`..`).
pub fn file_name(url: &Url, content_disposition: Option<&[u8]>) -> String {
    let from_path = url
        .path_segments()
        .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .filter(|s| usable(s));
    let name = from_path
        .or_else(|| content_disposition.and_then(disposition_file_name).filter(|s| usable(s)))
        .unwrap_or_else(|| FALLBACK_NAME.to_string());
    safe_name(&name)
}

/// A decoded name worth keeping: not blank and not a path step.
fn usable(name: &str) -> bool {
    let t = name.trim();
    !t.is_empty() && t != "." && t != ".."
}

/// The file name in a `Content-Disposition` header (RFC 6266): `filename*=UTF-8''…` wins over
/// `filename=…`; only the last path component is kept, since the value comes from the server.
pub fn disposition_file_name(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut plain = None;
    let mut extended = None;
    for param in split_params(&text) {
        let Some((key, value)) = param.split_once('=') else { continue };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        if key == "filename*" {
            // charset'language'percent-encoded; only UTF-8 (and its ASCII subset) is decoded.
            let mut parts = value.splitn(3, '\'');
            let (charset, _lang, encoded) = (parts.next()?, parts.next(), parts.next());
            if let Some(encoded) = encoded {
                if charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii") {
                    extended = Some(percent_decode_str(encoded).decode_utf8_lossy().into_owned());
                }
            }
        } else if key == "filename" {
            plain = Some(unquote(value));
        }
    }
    let name = extended.or(plain)?;
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default().trim().to_string();
    usable(&last).then_some(last)
}

/// Splits header parameters on `;` outside quoted strings.
fn split_params(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// A token or quoted-string value, with quotes and backslash escapes removed.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"') else { return value.to_string() };
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The URL without user name and password: what messages show.
pub fn redacted(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.as_str().to_string();
    }
    let mut u = url.clone();
    // Only fails for URLs that cannot have credentials, which then have none to remove.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.as_str().to_string()
}

/// The accounting label of a source: `scheme://host[:port]/path`, without credentials, query or
/// fragment (a signed query string is a secret too). The port shows when it is not the default.
pub fn label(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.as_str().to_string()
}

/// An identifier cut to a length that fits in a one-line message.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let mut s: String = text.chars().take(MAX).collect();
    s.push('…');
    s
}

/// A file name as one URL path segment.
pub fn encode_segment(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// A URL path segment back to the name it encodes.
pub fn decode_segment(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn name_from_last_path_segment() {
        assert_eq!(file_name(&url("http://h/a/b/file.iso"), None), "file.iso");
        assert_eq!(file_name(&url("http://h/a/dir/"), None), "dir");
        assert_eq!(file_name(&url("http://h/my%20file%23.txt?x=1#f"), None), "my file#.txt");
        assert_eq!(file_name(&url("http://h/caf%C3%A9.bin"), None), "café.bin");
        // A decoded slash cannot escape the output folder.
        assert_eq!(file_name(&url("http://h/a%2F..%2Fb"), None), "a_.._b");
        assert_eq!(file_name(&url("http://h/%2E%2E"), Some(b"attachment; filename=x.bin")), "x.bin");
    }

    #[test]
    fn name_falls_back_to_disposition_then_default() {
        let u = url("http://h/");
        assert_eq!(file_name(&u, Some(b"attachment; filename=\"report v2.pdf\"")), "report v2.pdf");
        assert_eq!(
            file_name(&u, Some(b"attachment; filename*=UTF-8''na%C3%AFve.txt; filename=naive.txt")),
            "naïve.txt"
        );
        assert_eq!(file_name(&u, Some(b"attachment; filename=\"../../etc/passwd\"")), "passwd");
        assert_eq!(file_name(&u, Some(b"inline")), FALLBACK_NAME);
        assert_eq!(file_name(&u, None), FALLBACK_NAME);
        assert_eq!(file_name(&url("http://h"), None), FALLBACK_NAME);
    }

    #[test]
    fn disposition_parsing() {
        assert_eq!(disposition_file_name(b"attachment; filename=plain.bin").as_deref(), Some("plain.bin"));
        assert_eq!(disposition_file_name(b"attachment; FILENAME=\"a;b.bin\"").as_deref(), Some("a;b.bin"));
        assert_eq!(disposition_file_name(b"attachment; filename=\"q\\\"uote\"").as_deref(), Some("q\"uote"));
        assert_eq!(disposition_file_name(b"attachment; filename=\"\"").as_deref(), None);
        assert_eq!(disposition_file_name(b"attachment; filename*=ISO-8859-1''x").as_deref(), None);
        assert_eq!(disposition_file_name(b"attachment; filename=\"C:\\\\dir\\\\x.exe\"").as_deref(), Some("x.exe"));
    }

    #[test]
    fn labels_and_redaction_hide_secrets() {
        let u = url("https://user:pw@example.com:8443/a/b?sig=secret#frag");
        assert_eq!(label(&u), "https://example.com:8443/a/b");
        assert_eq!(redacted(&u), "https://example.com:8443/a/b?sig=secret#frag");
        assert_eq!(label(&url("http://127.0.0.1:8080/x")), "http://127.0.0.1:8080/x");
        assert_eq!(label(&url("http://example.com:80/x")), "http://example.com/x");
    }

    #[test]
    fn segments_round_trip() {
        for name in ["plain.bin", "a b#c?d%e.txt", "ünï cødé", "x/y"] {
            let enc = encode_segment(name);
            assert!(!enc.contains(['/', ' ', '#', '?']), "{enc}");
            assert_eq!(decode_segment(&enc), name);
        }
        assert_eq!(shorten(&"x".repeat(500)).chars().count(), 201);
    }
}
