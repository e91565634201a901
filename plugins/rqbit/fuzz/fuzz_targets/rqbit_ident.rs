//! `ident::classify`, what the rqbit backend makes of a `download` identifier: never panics;
//! a magnet is the SDK's parse of it (its URI parses back to the same info hash); a URL is an
//! `http(s)` `.torrent` URL; a file is one that exists; an identifier over 64 KiB is refused.
#![no_main]
use chiral_plugin_rqbit::ident::{classify, Ident};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(id) = std::str::from_utf8(data) else { return };
    match classify(id) {
        Ok(Ident::Magnet(m)) => {
            assert!(id.len() <= 65_536);
            let again = chiral_sdk::magnet::Magnet::parse(&m.to_uri()).expect("a parsed magnet's URI parses");
            assert_eq!(again.info_hash, m.info_hash);
        }
        Ok(Ident::Url(u)) => {
            let l = u.to_ascii_lowercase();
            assert!(l.starts_with("http://") || l.starts_with("https://"), "{u}");
            assert!(l.split(['?', '#']).next().unwrap_or_default().ends_with(".torrent"), "{u}");
        }
        Ok(Ident::File(p)) => assert!(std::path::Path::new(&p).is_file(), "{p}"),
        Err(_) => {}
    }
});
