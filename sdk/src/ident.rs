//! What an identifier promises about its content, read the same way by every host: whether it
//! carries a hash (so a download of it can be verified), and which.

/// The hash an identifier names its content by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustRoot {
    /// `magnet:?xt=urn:btih:` as 40 lower-case hex digits (base32 links are converted).
    InfoHash(String),
    /// A `.torrent` file or URL: the info hash is in the file.
    TorrentFile,
    /// `chiral:<64 hex>`: the SHA-256 Merkle root.
    MerkleRoot([u8; 32]),
}

/// The trust root `identifier` carries, if any. Plain URLs carry none.
pub fn trust_root(identifier: &str) -> Option<TrustRoot> {
    let id = identifier.trim();
    if strip_prefix_ci(id, "magnet:").is_some() {
        return crate::magnet::Magnet::parse(id).ok().map(|m| TrustRoot::InfoHash(m.info_hash_hex()));
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

/// The info hash of a `magnet:?xt=urn:btih:` link (hex or base32) as 40 lower-case hex digits.
pub fn magnet_info_hash_hex(identifier: &str) -> Option<String> {
    match trust_root(identifier)? {
        TrustRoot::InfoHash(h) => Some(h),
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
        assert_eq!(
            trust_root("magnet:?xt=urn:btih:CIMUQ2LKNJ2G64TJMVZGC3DVNZSXE5DF"),
            Some(TrustRoot::InfoHash("121948696a6a746f72696572616c756e65727465".into()))
        );
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
        assert_eq!(
            magnet_info_hash_hex("magnet:?xt=urn:btih:cimuq2lknj2g64tjmvzgc3dvnzsxe5df").as_deref(),
            Some("121948696a6a746f72696572616c756e65727465")
        );
        assert_eq!(magnet_info_hash_hex("magnet:?xt=urn:btih:CIMUQ2LKNJ2G64TJMVZGC3DVNZSXE5D1"), None);
    }
}

/// What a host checks of a BitTorrent v1 info dictionary found on the side (the Chiral
/// network answering a magnet): single-file length, piece length and the SHA-1 piece hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorrentInfo {
    pub length: u64,
    pub piece_length: u64,
    pub pieces: Vec<u8>,
}

impl TorrentInfo {
    /// Reads a bencoded info dictionary (at most 4 MiB, nesting at most 32 deep). Multi-file
    /// dictionaries and anything malformed give `None`.
    pub fn parse(info: &[u8]) -> Option<Self> {
        use crate::bencode::{decode, Limits, Value};
        let limits = Limits { max_input: 4 << 20, max_depth: 32, max_items: 200_000 };
        let Value::Dict(d) = decode(info, limits).ok()? else { return None };
        if d.contains_key(&b"files"[..]) {
            return None;
        }
        let int = |k: &[u8]| match d.get(k) {
            Some(Value::Int(i)) => u64::try_from(*i).ok(),
            _ => None,
        };
        let (length, piece_length) = (int(b"length")?, int(b"piece length")?);
        let Some(Value::Bytes(pieces)) = d.get(&b"pieces"[..]) else { return None };
        let count = if piece_length == 0 { return None } else { length.div_ceil(piece_length) };
        (pieces.len() as u64 == count.checked_mul(20)?).then(|| Self { length, piece_length, pieces: pieces.clone() })
    }

    /// Whether `info` is the dictionary the magnet `info_hash` (40 hex) names.
    pub fn matches_info_hash(info: &[u8], info_hash_hex: &str) -> bool {
        hex::encode(crate::verify::sha1(info)).eq_ignore_ascii_case(info_hash_hex)
    }
}

#[cfg(test)]
mod torrent_info_tests {
    use super::*;

    #[test]
    fn info_dictionaries() {
        let pieces = [7u8; 40];
        let mut d = b"d6:lengthi40000e4:name5:a.bin12:piece lengthi32768e6:pieces40:".to_vec();
        d.extend_from_slice(&pieces);
        d.extend_from_slice(b"7:privatei1e1:xli-3ed1:ai1eeee");
        let t = TorrentInfo::parse(&d).unwrap();
        assert_eq!((t.length, t.piece_length, t.pieces.len()), (40000, 32768, 40));
        let ih = hex::encode(crate::verify::sha1(&d));
        assert!(TorrentInfo::matches_info_hash(&d, &ih.to_ascii_uppercase()));
        assert!(!TorrentInfo::matches_info_hash(&d[1..], &ih));
        // Wrong piece count, trailing bytes, multi-file, truncation, zero piece length.
        assert!(TorrentInfo::parse(&d[..d.len() - 1]).is_none());
        assert!(TorrentInfo::parse(&[d.clone(), b"x".to_vec()].concat()).is_none());
        assert!(
            TorrentInfo::parse(b"d5:filesle6:lengthi1e12:piece lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaae").is_none()
        );
        assert!(TorrentInfo::parse(b"d6:lengthi1e12:piece lengthi0e6:pieces0:e").is_none());
        assert!(TorrentInfo::parse(b"d6:lengthi40000e12:piece lengthi32768e6:pieces20:aaaaaaaaaaaaaaaaaaaae").is_none());
        assert!(TorrentInfo::parse(&[b"d1:x".to_vec(), b"l".repeat(100), b"e".repeat(100), b"e".to_vec()].concat())
            .is_none());
        assert!(TorrentInfo::parse(b"d6:lengthi1e12:piece lengthi1e6:pieces99999999999999999999999:e").is_none());
    }
}
