//! DHT records other nodes put and we read (version 2: signed entries per publisher). Never
//! panics; what a node stores after a put passes its own checks again, within the bounds;
//! what a reader merges is bounded; identifiers and keywords parse within theirs.
//!
//! Input: `<mode><incoming>[0xff<existing>]` (0xff never occurs in UTF-8 JSON). Modes 0-2 take
//! `incoming` as a stored value (a signed set, as a peer sends it: mostly signatures that do not
//! verify); modes 3-5 take it as an entry's body and sign it with a fixed key, so the body
//! checks (metadata, keyword and info-hash entries) are reached.
#![no_main]
use chiral_plugin_chiral::records::{
    content_id, index_entries, info_hash_key, keyword_key, keywords, merge_for_store, meta_entries, parse_content_id,
    parse_hex32, parse_info_hash, publishers, sign, SignedSet, MAX_ENTRIES_PER_KEY, MAX_MIRRORS, MAX_RECORD,
    MAX_SEEDERS,
};
use libfuzzer_sys::fuzz_target;

/// A fixed clock, inside the expiry window of the seeds.
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
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
            .unwrap_or_else(|| {
                let mut k: Vec<u8> = incoming.iter().take(32).copied().collect();
                k.resize(32, 0);
                k
            }),
        1 => keyword_key("word"),
        _ => info_hash_key("0123456789abcdef0123456789abcdef01234567"),
    };
    let signed_value;
    let value: &[u8] = if mode % 6 >= 3 {
        let Ok(body) = std::str::from_utf8(incoming) else { return };
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32]).expect("a key");
        let Ok(s) = sign(&keypair, &key, body.to_string()) else { return };
        let Ok(v) = SignedSet::of(vec![s]).encode() else { return };
        signed_value = v;
        &signed_value
    } else {
        incoming
    };

    if let Ok(stored) = merge_for_store(&key, value, existing, NOW, |_| true) {
        assert!(stored.len() <= MAX_RECORD);
        let set = SignedSet::decode(&stored).expect("a stored value decodes");
        assert!(set.entries.len() <= MAX_ENTRIES_PER_KEY, "{} entries stored", set.entries.len());
        // What a node stores passes its own checks when put again.
        let again = merge_for_store(&key, &stored, None, NOW, |_| true).expect("a stored value is accepted again");
        assert!(again.len() <= MAX_RECORD);
        assert!(!publishers(&key, &stored, NOW).is_empty());
    }
    // A reader merging copies from several nodes: bounded, whatever they hold.
    let copies: Vec<&[u8]> = [Some(value), existing].into_iter().flatten().collect();
    if mode % 3 == 0 {
        let (metas, _) = meta_entries(&key, copies, NOW);
        for m in &metas {
            assert!(m.body.seeders.len() <= MAX_SEEDERS && m.body.mirrors.len() <= MAX_MIRRORS);
        }
    } else {
        let (entries, _) = index_entries(&key, copies, NOW);
        assert!(entries.len() <= 2 * MAX_ENTRIES_PER_KEY);
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
