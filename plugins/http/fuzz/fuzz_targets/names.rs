//! File names from the network: the URL path and `Content-Disposition` (RFC 6266, `filename*`
//! RFC 8187). Never panics; the name a download is saved under is one safe path component;
//! redacted labels carry no password; path segments round-trip through their encoding.
#![no_main]
use chiral_plugin_http::names::{
    decode_segment, disposition_file_name, encode_segment, file_name, label, redacted, shorten,
};
use libfuzzer_sys::fuzz_target;
use url::Url;

fn safe(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\\', '\0']) && !n.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    // `<url>\n<Content-Disposition>`, or the disposition alone.
    let (url, cd) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    if let Some(name) = disposition_file_name(cd) {
        assert!(!name.trim().is_empty() && !name.contains(['/', '\\']), "{name:?}");
    }
    let text = String::from_utf8_lossy(cd);
    assert!(shorten(&text).chars().count() <= 201);
    assert_eq!(decode_segment(&encode_segment(&text)), text);
    let Some(url) = url.and_then(|u| Url::parse(u).ok()) else { return };
    let name = file_name(&url, Some(cd));
    assert!(safe(&name), "{name:?}");
    let name = file_name(&url, None);
    assert!(safe(&name), "{name:?}");
    for shown in [redacted(&url), label(&url)] {
        if let Some(p) = url.password() {
            assert!(!Url::parse(&shown).is_ok_and(|u| u.password() == Some(p)), "{shown}");
        }
    }
});
