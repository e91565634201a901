//! What an identifier promises about its content, read the same way by every host: whether it
//! carries a hash (so a download of it can be verified), and which.

/// The hash an identifier names its content by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustRoot {
    /// `magnet:?xt=urn:btih:` (hex, lower-cased; base32 links are kept as given).
    InfoHash(String),
    /// A `.torrent` file or URL: the info hash is in the file.
    TorrentFile,
    /// `chiral:<64 hex>`: the SHA-256 Merkle root.
    MerkleRoot([u8; 32]),
}

/// The trust root `identifier` carries, if any. Plain URLs carry none.
pub fn trust_root(identifier: &str) -> Option<TrustRoot> {
    let id = identifier.trim();
    if let Some(q) = strip_prefix_ci(id, "magnet:?") {
        return q.split('&').find_map(|kv| {
            let v = strip_prefix_ci(kv, "xt=urn:btih:")?;
            match v.len() {
                40 if v.bytes().all(|b| b.is_ascii_hexdigit()) => Some(TrustRoot::InfoHash(v.to_ascii_lowercase())),
                32 if v.bytes().all(|b| b.is_ascii_alphanumeric()) => Some(TrustRoot::InfoHash(v.to_string())),
                _ => None,
            }
        });
    }
    if let Some(hex_root) = strip_prefix_ci(id, "chiral:") {
        let mut root = [0u8; 32];
        return hex::decode_to_slice(hex_root.trim_start_matches("//"), &mut root)
            .ok()
            .map(|()| TrustRoot::MerkleRoot(root));
    }
    let path = id.split(['?', '#']).next().unwrap_or(id);
    path.to_ascii_lowercase().ends_with(".torrent").then_some(TrustRoot::TorrentFile)
}

/// The 40-hex info hash of a `magnet:?xt=urn:btih:<40 hex>` link, lower-cased.
pub fn magnet_info_hash_hex(identifier: &str) -> Option<String> {
    match trust_root(identifier)? {
        TrustRoot::InfoHash(h) if h.len() == 40 => Some(h),
        _ => None,
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_identifiers_promise() {
        let ih = "AB".repeat(20);
        assert_eq!(
            trust_root(&format!("magnet:?dn=x&xt=urn:btih:{ih}&tr=u")),
            Some(TrustRoot::InfoHash("ab".repeat(20)))
        );
        assert!(matches!(
            trust_root("magnet:?xt=urn:btih:CIMUQ2LKNJ2G64TJMVZGC3DVNZSXE5DF"),
            Some(TrustRoot::InfoHash(_))
        ));
        assert_eq!(trust_root("magnet:?xt=urn:btih:zz"), None);
        assert_eq!(trust_root("http://h/magnet:?xt=urn:btih:00"), None);
        assert_eq!(trust_root("http://h/a.TORRENT?x=1"), Some(TrustRoot::TorrentFile));
        assert_eq!(trust_root("/tmp/x.torrent"), Some(TrustRoot::TorrentFile));
        assert_eq!(trust_root(&format!("chiral:{}", "0f".repeat(32))), Some(TrustRoot::MerkleRoot([0x0f; 32])));
        assert_eq!(trust_root("chiral:abc"), None);
        assert_eq!(trust_root("https://h/f.bin"), None);
        assert_eq!(trust_root("ftp://h/f.iso"), None);
        assert_eq!(trust_root("é"), None);
        assert_eq!(magnet_info_hash_hex(&format!("magnet:?xt=urn:btih:{ih}")), Some("ab".repeat(20)));
        assert_eq!(magnet_info_hash_hex("magnet:?xt=urn:btih:CIMUQ2LKNJ2G64TJMVZGC3DVNZSXE5DF"), None);
    }
}
