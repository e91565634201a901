//! DHT records other nodes put and we read: metadata (JSON under a 32-byte root) and keyword /
//! info-hash indexes (JSON lists of roots). Never panics; what a node stores after a put is a
//! record that itself passes the checks, within the bounds; identifiers and keywords parse
//! within theirs.
#![no_main]
use chiral_plugin_chiral::records::{
    content_id, info_hash_key, keyword_key, keywords, merge_for_store, parse_content_id, parse_hex32, parse_info_hash,
    FileMeta, RootList, MAX_MIRRORS, MAX_RECORD, MAX_ROOTS, MAX_SEEDERS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `<mode><incoming>[0xff<existing>]`: 0xff never occurs in UTF-8 JSON.
    let Some((&mode, rest)) = data.split_first() else { return };
    let (incoming, existing) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let key = match mode % 3 {
        // A metadata record stored under the root it names (else nothing gets past the key check).
        0 => serde_json::from_slice::<serde_json::Value>(incoming)
            .ok()
            .and_then(|v| v.get("root")?.as_str().and_then(parse_hex32))
            .map(|r| r.to_vec())
            .unwrap_or_else(|| incoming.iter().take(32).copied().collect()),
        1 => keyword_key("word"),
        _ => info_hash_key("0123456789abcdef0123456789abcdef01234567"),
    };
    if let Ok(stored) = merge_for_store(&key, incoming, existing) {
        assert!(stored.len() <= MAX_RECORD);
        if mode % 3 == 0 {
            let m = FileMeta::decode(&key, &stored).expect("a stored record passes the checks");
            assert!(m.seeders.len() <= MAX_SEEDERS && m.mirrors.len() <= MAX_MIRRORS);
        } else {
            let l = RootList::decode(&stored).expect("a stored index passes the checks");
            assert!(l.roots.len() <= MAX_ROOTS);
        }
    }

    let Ok(text) = std::str::from_utf8(incoming) else { return };
    if let Some(root) = parse_content_id(text) {
        assert_eq!(parse_content_id(&content_id(&root)), Some(root));
    }
    if let Some(h) = parse_info_hash(text) {
        assert_eq!(h.len(), 40);
    }
    let words = keywords(text);
    assert!(words.len() <= 32 && words.iter().all(|w| w.len() <= 64 && w.chars().count() > 2));
});
