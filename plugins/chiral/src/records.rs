//! Content ids and the DHT records of the Chiral network, sans-IO.
//!
//! Keys (namespaced; the raw bytes of the Kademlia key):
//! - `<32 raw root bytes>`: the file's metadata record ([`FileMeta`], JSON) — "under the root";
//!   the provider records of the content use the same key;
//! - `info_hash_idx::<40 hex>`: [`RootList`] of the roots carrying that BitTorrent info hash;
//! - `keyword_idx::<word>`: [`RootList`] of the roots whose file name has that word.
//!
//! Index records are **merged, never overwritten**: a writer reads every copy it can find,
//! unions them with its root and puts the union (read-modify-write), and every node that
//! receives a put for an index key (or a metadata key) merges it with the copy it already
//! stores instead of replacing it (Kademlia's `StoreInserts::FilterBoth`). So two files sharing
//! a word that are published at the same time by different nodes still both end up listed: a
//! reader unions all the copies it finds. One record per (word, root) was the alternative; it
//! needs one lookup per root, and a word's roots cannot be enumerated without a list anyway.
//!
//! Every value is bounded ([`MAX_RECORD`]) and validated when read; a bad one is rejected with
//! a reason the caller logs.

use std::collections::BTreeSet;

use chiral_sdk::ident::TorrentInfo;
use chiral_sdk::verify::{Hash32, CHUNK_SIZE};
use serde::{Deserialize, Serialize};

/// Largest record value accepted or written.
pub const MAX_RECORD: usize = 64 * 1024;
/// Most roots one index record lists (64-hex each; keeps a list well inside `MAX_RECORD`).
pub const MAX_ROOTS: usize = 512;
/// Most seeders one metadata record lists.
pub const MAX_SEEDERS: usize = 32;
/// Most mirror URLs one metadata record lists.
pub const MAX_MIRRORS: usize = 32;

pub const INFO_HASH_PREFIX: &str = "info_hash_idx::";
pub const KEYWORD_PREFIX: &str = "keyword_idx::";

/// `chiral:<64 hex>` of a root.
pub fn content_id(root: &Hash32) -> String {
    format!("chiral:{}", hex::encode(root))
}

/// The root of a `chiral:<64 hex>` identifier (case-insensitive scheme and hex).
pub fn parse_content_id(id: &str) -> Option<Hash32> {
    let (scheme, rest) = id.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("chiral") {
        return None;
    }
    let rest = rest.trim_start_matches("//");
    parse_hex32(rest)
}

pub fn parse_hex32(s: &str) -> Option<Hash32> {
    if s.len() != 64 {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// A 40-hex BitTorrent v1 info hash, lowercased.
pub fn parse_info_hash(s: &str) -> Option<String> {
    (s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// Keywords of a file name: lowercased, split on non-alphanumerics, longer than 2 chars,
/// deduplicated, at most 32 of at most 64 chars.
pub fn keywords(name: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    name.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 2 && w.len() <= 64)
        .filter(|w| seen.insert(w.to_string()))
        .take(32)
        .map(str::to_string)
        .collect()
}

pub fn meta_key(root: &Hash32) -> Vec<u8> {
    root.to_vec()
}

pub fn info_hash_key(info_hash: &str) -> Vec<u8> {
    format!("{INFO_HASH_PREFIX}{info_hash}").into_bytes()
}

pub fn keyword_key(word: &str) -> Vec<u8> {
    format!("{KEYWORD_PREFIX}{word}").into_bytes()
}

/// A seeder as listed in a metadata record: its peer id and where it listens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seeder {
    pub peer_id: String,
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// The metadata record of one content.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileMeta {
    /// 64 hex: the Merkle root, also the record's key.
    pub root: String,
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_hash: Option<String>,
    /// The BitTorrent info dictionary (hex) whose SHA-1 is `info_hash`: lets a downloader that
    /// found this content by a magnet check it against the info hash (and resolve the magnet's
    /// metadata without the swarm). Checked on decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_dict: Option<String>,
    /// HTTP/FTP mirror URLs of the same bytes.
    #[serde(default)]
    pub mirrors: Vec<String>,
    #[serde(default)]
    pub seeders: Vec<Seeder>,
}

/// An index record: roots (64 hex each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RootList {
    pub roots: Vec<String>,
}

pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE).max(1)
}

impl FileMeta {
    pub fn new(root: &Hash32, name: &str, size: u64) -> Self {
        Self {
            root: hex::encode(root),
            name: name.to_string(),
            size,
            chunk_size: CHUNK_SIZE,
            chunk_count: chunk_count(size),
            info_hash: None,
            info_dict: None,
            mirrors: Vec::new(),
            seeders: Vec::new(),
        }
    }

    pub fn root_bytes(&self) -> Option<Hash32> {
        parse_hex32(&self.root)
    }

    /// Checks a record read under `key`.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, RecordError> {
        use RecordError::BadMetadata as Bad;
        check_size(value)?;
        let m: FileMeta = serde_json::from_slice(value).map_err(|e| RecordError::Json("metadata", e))?;
        let root = m.root_bytes().ok_or(Bad("root is not 64 hex".into()))?;
        if key != root.as_slice() {
            return Err(Bad("root differs from its key".into()));
        }
        if m.chunk_size != CHUNK_SIZE || m.chunk_count != chunk_count(m.size) {
            return Err(Bad(format!("{} chunks of {} do not fit {} bytes", m.chunk_count, m.chunk_size, m.size)));
        }
        if m.name.is_empty() || m.name.len() > 1024 {
            return Err(Bad("bad name".into()));
        }
        if m.info_hash.as_deref().is_some_and(|h| parse_info_hash(h).is_none()) {
            return Err(Bad("info_hash is not 40 hex".into()));
        }
        if m.info_dict.is_some() && m.torrent_info().is_none() {
            return Err(Bad("info_dict is not the info dictionary of info_hash for this size".into()));
        }
        if m.seeders.len() > MAX_SEEDERS || m.mirrors.len() > MAX_MIRRORS {
            return Err(Bad("too many seeders or mirrors".into()));
        }
        Ok(m)
    }

    /// The info dictionary and what it says, when it is there, hashes to `info_hash` and
    /// describes a single file of `size` bytes.
    pub fn torrent_info(&self) -> Option<(Vec<u8>, TorrentInfo)> {
        let (ih, hex_dict) = (self.info_hash.as_deref()?, self.info_dict.as_deref()?);
        let dict = hex::decode(hex_dict).ok()?;
        let t = TorrentInfo::parse(&dict)?;
        (TorrentInfo::matches_info_hash(&dict, ih) && t.length == self.size).then_some((dict, t))
    }

    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let v = serde_json::to_vec(self).map_err(|e| RecordError::Json("metadata", e))?;
        check_size(&v)?;
        Ok(v)
    }

    /// Union of seeders and mirrors of two copies of the same record (the newest seeders kept
    /// when over the bound).
    pub fn merge(&mut self, other: &FileMeta) {
        for s in &other.seeders {
            match self.seeders.iter_mut().find(|x| x.peer_id == s.peer_id) {
                Some(x) if x.addrs.is_empty() => x.addrs = s.addrs.clone(),
                Some(_) => {}
                None => self.seeders.push(s.clone()),
            }
        }
        if self.seeders.len() > MAX_SEEDERS {
            let extra = self.seeders.len() - MAX_SEEDERS;
            self.seeders.drain(..extra);
        }
        for m in &other.mirrors {
            if !self.mirrors.contains(m) && self.mirrors.len() < MAX_MIRRORS {
                self.mirrors.push(m.clone());
            }
        }
        if self.info_hash.is_none() {
            self.info_hash = other.info_hash.clone();
        }
        if self.info_dict.is_none() && self.info_hash == other.info_hash {
            self.info_dict = other.info_dict.clone();
        }
    }
}

impl RootList {
    pub fn decode(value: &[u8]) -> Result<Self, RecordError> {
        check_size(value)?;
        let l: RootList = serde_json::from_slice(value).map_err(|e| RecordError::Json("index", e))?;
        if l.roots.len() > MAX_ROOTS {
            return Err(RecordError::BadIndex(format!("lists {} roots (max {MAX_ROOTS})", l.roots.len())));
        }
        if let Some(bad) = l.roots.iter().find(|r| parse_hex32(r).is_none()) {
            return Err(RecordError::BadIndex(format!("{bad:?} is not a 64-hex root")));
        }
        Ok(l)
    }

    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let v = serde_json::to_vec(self).map_err(|e| RecordError::Json("index", e))?;
        check_size(&v)?;
        Ok(v)
    }

    /// Adds `root` if missing (dropping the oldest entries past `MAX_ROOTS`).
    pub fn add(&mut self, root: &str) {
        let root = root.to_ascii_lowercase();
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        if self.roots.len() > MAX_ROOTS {
            let extra = self.roots.len() - MAX_ROOTS;
            self.roots.drain(..extra);
        }
    }

    pub fn merge(&mut self, other: &RootList) {
        for r in &other.roots {
            self.add(r);
        }
    }
}

fn check_size(value: &[u8]) -> Result<(), RecordError> {
    if value.len() > MAX_RECORD {
        Err(RecordError::TooLarge(value.len()))
    } else {
        Ok(())
    }
}

/// Why a DHT record is refused (on read, and on store for the records other nodes put).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes exceeds {MAX_RECORD}")]
    TooLarge(usize),
    #[error("malformed {0} record: {1}")]
    Json(&'static str, serde_json::Error),
    #[error("metadata record: {0}")]
    BadMetadata(String),
    #[error("index record: {0}")]
    BadIndex(String),
    #[error("unknown record key of {0} bytes")]
    UnknownKey(usize),
}

/// What a record key is.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind {
    Meta,
    Index,
    Unknown,
}

pub fn key_kind(key: &[u8]) -> KeyKind {
    if key.starts_with(INFO_HASH_PREFIX.as_bytes()) || key.starts_with(KEYWORD_PREFIX.as_bytes()) {
        KeyKind::Index
    } else if key.len() == 32 {
        KeyKind::Meta
    } else {
        KeyKind::Unknown
    }
}

/// What a node stores when a peer puts `incoming` under `key` while it holds `existing`:
/// the validated merge of both, or the reason to refuse the put.
pub fn merge_for_store(key: &[u8], incoming: &[u8], existing: Option<&[u8]>) -> Result<Vec<u8>, RecordError> {
    match key_kind(key) {
        KeyKind::Meta => {
            let mut m = FileMeta::decode(key, incoming)?;
            if let Some(old) = existing.and_then(|e| FileMeta::decode(key, e).ok()) {
                if old.size == m.size {
                    m.merge(&old);
                }
            }
            m.encode()
        }
        KeyKind::Index => {
            let mut l = RootList::decode(incoming)?;
            if let Some(old) = existing.and_then(|e| RootList::decode(e).ok()) {
                // Older entries first, then the new ones: the bound drops the oldest.
                let mut merged = old;
                merged.merge(&l);
                l = merged;
            }
            l.encode()
        }
        KeyKind::Unknown => Err(RecordError::UnknownKey(key.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids() {
        let root = [0xab; 32];
        let id = content_id(&root);
        assert_eq!(id, format!("chiral:{}", "ab".repeat(32)));
        assert_eq!(parse_content_id(&id), Some(root));
        assert_eq!(parse_content_id(&id.to_uppercase()), Some(root));
        assert_eq!(parse_content_id("chiral:abc"), None);
        assert_eq!(parse_content_id("http://x"), None);
        assert_eq!(parse_content_id(&format!("chiral:{}", "zz".repeat(32))), None);
    }

    #[test]
    fn keyword_extraction() {
        assert_eq!(keywords("My_Holiday-Video.2024.MP4"), vec!["holiday", "video", "2024", "mp4"]);
        assert_eq!(keywords("a b cd"), Vec::<String>::new());
        assert_eq!(keywords("fixture-64M.bin"), vec!["fixture", "64m", "bin"]);
        assert_eq!(keywords("dup dup DUP"), vec!["dup"]);
        assert_eq!(keywords("Ünïcödé wörds"), vec!["ünïcödé", "wörds"]);
        assert!(keywords(&"word ".repeat(100)).len() == 1);
    }

    #[test]
    fn metadata_round_trip_and_validation() {
        let root = [1u8; 32];
        let mut m = FileMeta::new(&root, "f.bin", CHUNK_SIZE * 3 + 1);
        m.seeders.push(Seeder { peer_id: "p".into(), addrs: vec!["/ip4/127.0.0.1/tcp/1".into()] });
        let v = m.encode().unwrap();
        assert_eq!(FileMeta::decode(&root, &v).unwrap(), m);
        assert_eq!(m.chunk_count, 4);
        // wrong key, malformed, oversized, inconsistent
        assert!(FileMeta::decode(&[2u8; 32], &v).unwrap_err().to_string().contains("key"));
        assert!(FileMeta::decode(&root, b"{not json").unwrap_err().to_string().contains("malformed"));
        assert!(FileMeta::decode(&root, &vec![b' '; MAX_RECORD + 1]).unwrap_err().to_string().contains("exceeds"));
        let mut bad = m.clone();
        bad.chunk_count = 9;
        assert!(FileMeta::decode(&root, &serde_json::to_vec(&bad).unwrap())
            .unwrap_err()
            .to_string()
            .contains("chunks"));
        let mut bad = m.clone();
        bad.info_hash = Some("xyz".into());
        assert!(FileMeta::decode(&root, &serde_json::to_vec(&bad).unwrap()).is_err());
        let mut huge = m.clone();
        huge.name = "n".repeat(MAX_RECORD);
        assert!(huge.encode().is_err());
    }

    #[test]
    fn index_records_validate_and_merge() {
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        let mut l = RootList::default();
        l.add(&a);
        l.add(&a);
        assert_eq!(l.roots.len(), 1);
        let v = l.encode().unwrap();
        assert_eq!(RootList::decode(&v).unwrap(), l);
        assert!(RootList::decode(br#"{"roots":["nothex"]}"#).unwrap_err().to_string().contains("64-hex"));
        assert!(RootList::decode(b"[1,2]").unwrap_err().to_string().contains("malformed"));
        assert!(RootList::decode(&vec![b'x'; MAX_RECORD + 1]).unwrap_err().to_string().contains("exceeds"));
        let mut too_many = RootList::default();
        for i in 0..(MAX_ROOTS + 5) {
            too_many.add(&format!("{i:064x}"));
        }
        assert_eq!(too_many.roots.len(), MAX_ROOTS);
        assert!(too_many.encode().unwrap().len() <= MAX_RECORD);

        // A put of [b] where [a] is stored keeps both.
        let key = keyword_key("holiday");
        let incoming = RootList { roots: vec![b.clone()] }.encode().unwrap();
        let merged = merge_for_store(&key, &incoming, Some(&v)).unwrap();
        assert_eq!(RootList::decode(&merged).unwrap().roots, vec![a.clone(), b.clone()]);
        // A malformed put is refused; a malformed stored copy is replaced.
        assert!(merge_for_store(&key, b"garbage", Some(&v)).is_err());
        assert_eq!(RootList::decode(&merge_for_store(&key, &incoming, Some(b"junk")).unwrap()).unwrap().roots, vec![b]);
        assert!(merge_for_store(b"other", &incoming, None).is_err());
    }

    #[test]
    fn metadata_puts_merge_seeders() {
        let root = [3u8; 32];
        let mut one = FileMeta::new(&root, "x.bin", 10);
        one.seeders.push(Seeder { peer_id: "p1".into(), addrs: vec![] });
        let mut two = FileMeta::new(&root, "x.bin", 10);
        two.seeders.push(Seeder { peer_id: "p2".into(), addrs: vec![] });
        two.mirrors.push("http://m/x.bin".into());
        let merged = merge_for_store(&root, &two.encode().unwrap(), Some(&one.encode().unwrap())).unwrap();
        let m = FileMeta::decode(&root, &merged).unwrap();
        let ids: Vec<_> = m.seeders.iter().map(|s| s.peer_id.as_str()).collect();
        assert_eq!(ids, vec!["p2", "p1"]);
        assert_eq!(m.mirrors, vec!["http://m/x.bin"]);
    }
}
