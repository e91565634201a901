//! Content ids and the DHT records of the Chiral network, sans-IO.
//!
//! Keys (namespaced; the raw bytes of the Kademlia key):
//! - `<32 raw root bytes>`: the metadata records of the content ([`FileMeta`]), one per
//!   publisher — "under the root"; the provider records of the content use the same key;
//! - `info_hash_idx::<40 hex>`: index entries naming the roots that carry that BitTorrent
//!   info hash;
//! - `keyword_idx::<word>`: index entries naming the roots whose file name has that word.
//!
//! Every value is a [`SignedSet`] (version 2): a list of entries, each signed by its
//! publisher's node key (the ed25519 identity the node already has) over the record key and the
//! entry's body, so an entry cannot be forged, altered or replayed under another key. Entries
//! are per publisher: a node that receives a put merges the incoming entries into what it
//! stores ([`merge_for_store`]) instead of replacing it, and a reader merges every copy it
//! finds the same way ([`merge_copies`]). The bounds make flooding useless:
//! - at most [`MAX_ENTRIES_PER_PUBLISHER`] index entries per publisher and key (its newest);
//! - at most [`MAX_ENTRIES_PER_KEY`] entries per key: past it, the publisher with the most
//!   entries loses its oldest first, so one publisher cannot evict another's single entry;
//! - one metadata record per publisher and root, at most [`MAX_META_PUBLISHERS`] per root;
//! - every entry expires ([`ENTRY_TTL`], at most [`MAX_TTL`] ahead); expired ones are dropped,
//!   older live ones are kept; the publisher re-signs them while it seeds;
//! - a keyword entry must carry the name it was made from, and the word must be one of that
//!   name's [`keywords`]; an info-hash entry must carry that info hash;
//! - a storing node keeps entries of one publisher under at most [`MAX_KEYS_PER_PUBLISHER`]
//!   keys (per-peer store quota, enforced by the node with [`merge_for_store`]'s `allow`).
//!
//! Every value is bounded ([`MAX_RECORD`]) and validated when read; a bad one is rejected with
//! a reason the caller logs.

use std::collections::{BTreeSet, HashMap};

use chiral_sdk::ident::TorrentInfo;
use chiral_sdk::verify::{Hash32, CHUNK_SIZE};
use libp2p::{identity, PeerId};
use serde::{Deserialize, Serialize};

/// Largest record value accepted or written.
pub const MAX_RECORD: usize = 64 * 1024;
/// Most seeders one metadata record lists.
pub const MAX_SEEDERS: usize = 32;
/// Most mirror URLs one metadata record lists.
pub const MAX_MIRRORS: usize = 32;
/// Most index entries one publisher keeps under one key.
pub const MAX_ENTRIES_PER_PUBLISHER: usize = 16;
/// Most entries kept under one key.
pub const MAX_ENTRIES_PER_KEY: usize = 128;
/// Most publishers whose metadata record is kept under one root.
pub const MAX_META_PUBLISHERS: usize = 32;
/// Most keys under which a storing node keeps entries of one publisher.
pub const MAX_KEYS_PER_PUBLISHER: usize = 2048;
/// Lifetime of an entry when it is signed (seconds); the publisher re-signs before it ends.
pub const ENTRY_TTL: u64 = 24 * 3600;
/// Latest expiry accepted, from now (seconds).
pub const MAX_TTL: u64 = 48 * 3600;
/// Version of the record format ([`SignedSet::v`]).
pub const RECORD_VERSION: u32 = 2;
/// What a signature covers starts with this (then the key's length, the key, the body).
const DOMAIN: &[u8] = b"chiral-record-v2\0";

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

/// A wallet address as payments use it: `0x` and 40 hex digits.
pub fn parse_wallet(s: &str) -> Option<String> {
    let hexpart = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    (hexpart.len() == 40 && hexpart.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("0x{hexpart}"))
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

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A seeder as listed in a metadata record: its peer id and where it listens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seeder {
    pub peer_id: String,
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// The metadata record of one content, as one publisher describes it (it lists itself as the
/// seeder).
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
    /// The publisher itself (peer id and listen addresses).
    #[serde(default)]
    pub seeders: Vec<Seeder>,
    /// The publisher's wallet address (`0x` + 40 hex), for payments; as published, checked by
    /// [`FileMeta::wallet`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet: Option<String>,
    /// Unix seconds after which the record is dropped.
    #[serde(default)]
    pub expires: u64,
}

/// An index entry's body: a root, and what ties it to its key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexBody {
    /// 64 hex.
    pub root: String,
    /// For `keyword_idx::`: the file name the word comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `info_hash_idx::`: the info hash (the key's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_hash: Option<String>,
    /// Unix seconds after which the entry is dropped.
    pub expires: u64,
}

/// One signed entry: the publisher's public key (protobuf, hex), the body (JSON text, signed
/// as bytes) and the signature (hex) over `DOMAIN || u16 key length || key || body`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signed {
    pub pk: String,
    pub body: String,
    pub sig: String,
}

/// The value stored under every key: signed entries of one or more publishers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SignedSet {
    pub v: u32,
    pub entries: Vec<Signed>,
}

/// An entry whose signature and body were checked, with its publisher.
#[derive(Clone, Debug)]
pub struct Entry<T> {
    pub publisher: PeerId,
    pub body: T,
}

pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE).max(1)
}

fn signed_message(key: &[u8], body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 2 + key.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&(key.len().min(u16::MAX as usize) as u16).to_be_bytes());
    m.extend_from_slice(key);
    m.extend_from_slice(body.as_bytes());
    m
}

/// Signs `body` for `key` with the node's key.
pub fn sign(keypair: &identity::Keypair, key: &[u8], body: String) -> Result<Signed, RecordError> {
    let sig = keypair.sign(&signed_message(key, &body)).map_err(|e| RecordError::Sign(e.to_string()))?;
    Ok(Signed { pk: hex::encode(keypair.public().encode_protobuf()), body, sig: hex::encode(sig) })
}

impl Signed {
    /// The publisher named by the key, without checking the signature: for entries this node
    /// checked when it stored them.
    fn claimed_publisher(&self) -> Result<PeerId, RecordError> {
        let pk = hex::decode(&self.pk).map_err(|_| RecordError::BadSignature("key is not hex"))?;
        let pk = identity::PublicKey::try_decode_protobuf(&pk).map_err(|_| RecordError::BadSignature("bad key"))?;
        Ok(pk.to_peer_id())
    }

    /// The publisher, when the signature over `key` and the body holds.
    pub fn publisher(&self, key: &[u8]) -> Result<PeerId, RecordError> {
        let pk = hex::decode(&self.pk).map_err(|_| RecordError::BadSignature("key is not hex"))?;
        let pk = identity::PublicKey::try_decode_protobuf(&pk).map_err(|_| RecordError::BadSignature("bad key"))?;
        let sig = hex::decode(&self.sig).map_err(|_| RecordError::BadSignature("signature is not hex"))?;
        if !pk.verify(&signed_message(key, &self.body), &sig) {
            return Err(RecordError::BadSignature("does not verify"));
        }
        Ok(pk.to_peer_id())
    }
}

/// Whether `expires` is live at `now` and not too far ahead.
fn check_expiry(expires: u64, now: u64) -> Result<(), RecordError> {
    if expires <= now {
        return Err(RecordError::Expired);
    }
    if expires > now + MAX_TTL {
        return Err(RecordError::BadIndex(format!("expires {} s ahead (max {MAX_TTL})", expires - now)));
    }
    Ok(())
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
            wallet: None,
            expires: 0,
        }
    }

    pub fn root_bytes(&self) -> Option<Hash32> {
        parse_hex32(&self.root)
    }

    /// The published wallet, when it is a well-formed address.
    pub fn wallet(&self) -> Option<String> {
        self.wallet.as_deref().and_then(parse_wallet)
    }

    /// Checks a metadata body read under `key`, published by `publisher`.
    pub fn check(key: &[u8], body: &str, publisher: &PeerId, now: u64) -> Result<Self, RecordError> {
        use RecordError::BadMetadata as Bad;
        let m: FileMeta = serde_json::from_str(body).map_err(|e| RecordError::Json("metadata", e))?;
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
        if m.seeders.iter().any(|s| s.peer_id != publisher.to_string()) {
            return Err(Bad("lists a seeder other than its publisher".into()));
        }
        check_expiry(m.expires, now)?;
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

    /// The body to sign (JSON text), bounded.
    pub fn body(&self) -> Result<String, RecordError> {
        let v = serde_json::to_string(self).map_err(|e| RecordError::Json("metadata", e))?;
        check_size(v.as_bytes())?;
        Ok(v)
    }
}

impl IndexBody {
    /// Checks an index body read under `key`.
    pub fn check(key: &[u8], body: &str, now: u64) -> Result<Self, RecordError> {
        use RecordError::BadIndex as Bad;
        let b: IndexBody = serde_json::from_str(body).map_err(|e| RecordError::Json("index", e))?;
        if parse_hex32(&b.root).is_none() {
            return Err(Bad(format!("{:?} is not a 64-hex root", b.root.chars().take(80).collect::<String>())));
        }
        if let Some(word) = key.strip_prefix(KEYWORD_PREFIX.as_bytes()) {
            let word = std::str::from_utf8(word).map_err(|_| Bad("keyword is not UTF-8".into()))?;
            let name = b.name.as_deref().ok_or(Bad("keyword entry without the name".into()))?;
            if name.len() > 1024 || !keywords(name).iter().any(|w| w == word) {
                return Err(Bad(format!("{word:?} is not a word of the entry's name")));
            }
        } else if let Some(ih) = key.strip_prefix(INFO_HASH_PREFIX.as_bytes()) {
            if b.info_hash.as_deref().map(str::as_bytes) != Some(ih)
                || parse_info_hash(b.info_hash.as_deref().unwrap_or("")).is_none()
            {
                return Err(Bad("entry does not carry its key's info hash".into()));
            }
        } else {
            return Err(RecordError::UnknownKey(key.len()));
        }
        check_expiry(b.expires, now)?;
        Ok(b)
    }
}

fn check_size(value: &[u8]) -> Result<(), RecordError> {
    if value.len() > MAX_RECORD {
        Err(RecordError::TooLarge(value.len()))
    } else {
        Ok(())
    }
}

/// Why a DHT record (or one entry of it) is refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes exceeds {MAX_RECORD}")]
    TooLarge(usize),
    #[error("malformed {0} record: {1}")]
    Json(&'static str, serde_json::Error),
    #[error("record format version {0} (this node reads version {RECORD_VERSION})")]
    Version(u32),
    #[error("signature {0}")]
    BadSignature(&'static str),
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("entry expired")]
    Expired,
    #[error("metadata record: {0}")]
    BadMetadata(String),
    #[error("index record: {0}")]
    BadIndex(String),
    #[error("unknown record key of {0} bytes")]
    UnknownKey(usize),
    #[error("publisher {0} is over its store quota")]
    Quota(PeerId),
    #[error("no valid entry")]
    Empty,
}

/// What a record key is.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
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

impl SignedSet {
    pub fn decode(value: &[u8]) -> Result<Self, RecordError> {
        check_size(value)?;
        let s: SignedSet = serde_json::from_slice(value).map_err(|e| RecordError::Json("signed", e))?;
        if s.v != RECORD_VERSION {
            return Err(RecordError::Version(s.v));
        }
        if s.entries.len() > MAX_ENTRIES_PER_KEY * 2 {
            return Err(RecordError::BadIndex(format!("{} entries", s.entries.len())));
        }
        Ok(s)
    }

    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let v = serde_json::to_vec(self).map_err(|e| RecordError::Json("signed", e))?;
        check_size(&v)?;
        Ok(v)
    }

    pub fn of(entries: Vec<Signed>) -> Self {
        Self { v: RECORD_VERSION, entries }
    }
}

/// A checked entry, with what decides which copies and entries are kept.
struct Checked {
    publisher: PeerId,
    expires: u64,
    /// Index: the root (one entry per publisher and root); metadata: empty (one per publisher).
    what: String,
    signed: Signed,
}

/// Checks an entry; `stored`: it comes from this node's own store, whose entries were all
/// checked on the way in, so the signature is not verified again (a put costs the incoming
/// entries' verifications, not the stored ones').
fn check_entry(key: &[u8], s: &Signed, now: u64, stored: bool) -> Result<Checked, RecordError> {
    let publisher = if stored { s.claimed_publisher()? } else { s.publisher(key)? };
    let (expires, what) = match key_kind(key) {
        KeyKind::Meta => (FileMeta::check(key, &s.body, &publisher, now)?.expires, String::new()),
        KeyKind::Index => {
            let b = IndexBody::check(key, &s.body, now)?;
            (b.expires, b.root.to_ascii_lowercase())
        }
        KeyKind::Unknown => return Err(RecordError::UnknownKey(key.len())),
    };
    Ok(Checked { publisher, expires, what, signed: s.clone() })
}

/// Folds checked entries into `kept`: the newest per (publisher, what), then the bounds.
fn fold(kind: KeyKind, kept: &mut Vec<Checked>, new: Checked) {
    match kept.iter_mut().find(|c| c.publisher == new.publisher && c.what == new.what) {
        Some(c) if c.expires >= new.expires => {}
        Some(c) => *c = new,
        None => kept.push(new),
    }
    let (per_publisher, per_key) = match kind {
        KeyKind::Meta => (1, MAX_META_PUBLISHERS),
        _ => (MAX_ENTRIES_PER_PUBLISHER, MAX_ENTRIES_PER_KEY),
    };
    trim(kept, per_publisher, per_key);
}

/// Drops the oldest entry of the publisher with the most entries until every publisher has at
/// most `per_publisher` and the key at most `per_key`.
fn trim(kept: &mut Vec<Checked>, per_publisher: usize, per_key: usize) {
    loop {
        let mut counts: HashMap<PeerId, usize> = HashMap::new();
        for c in kept.iter() {
            *counts.entry(c.publisher).or_default() += 1;
        }
        let Some((&top, &n)) = counts.iter().max_by_key(|(p, n)| (**n, p.to_bytes())) else { return };
        if n <= per_publisher && kept.len() <= per_key {
            return;
        }
        drop_oldest_of(kept, &top);
    }
}

fn drop_oldest_of(kept: &mut Vec<Checked>, publisher: &PeerId) {
    if let Some(i) = kept
        .iter()
        .enumerate()
        .filter(|(_, c)| &c.publisher == publisher)
        .min_by_key(|(_, c)| c.expires)
        .map(|(i, _)| i)
    {
        kept.remove(i);
    }
}

/// Keeps the set within [`MAX_RECORD`] once encoded (the biggest publisher loses first).
fn encode_bounded(mut kept: Vec<Checked>) -> Result<Vec<u8>, RecordError> {
    loop {
        let v = SignedSet::of(kept.iter().map(|c| c.signed.clone()).collect()).encode();
        match v {
            Err(RecordError::TooLarge(_)) if kept.len() > 1 => {
                let mut counts: HashMap<PeerId, usize> = HashMap::new();
                for c in kept.iter() {
                    *counts.entry(c.publisher).or_default() += 1;
                }
                let top = *counts.iter().max_by_key(|(p, n)| (**n, p.to_bytes())).expect("non-empty").0;
                drop_oldest_of(&mut kept, &top);
            }
            other => return other,
        }
    }
}

/// Every valid entry of the copies of the record under `key` (from several nodes), merged and
/// bounded as a storing node would; the reasons entries or copies were refused alongside.
fn merge_checked<'a>(
    key: &[u8],
    copies: impl IntoIterator<Item = &'a [u8]>,
    now: u64,
    stored: bool,
) -> (Vec<Checked>, Vec<RecordError>) {
    let kind = key_kind(key);
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for copy in copies {
        match SignedSet::decode(copy) {
            Ok(set) => {
                for s in &set.entries {
                    match check_entry(key, s, now, stored) {
                        Ok(c) => fold(kind, &mut kept, c),
                        Err(RecordError::Expired) => {}
                        Err(e) => refused.push(e),
                    }
                }
            }
            Err(e) => refused.push(e),
        }
    }
    (kept, refused)
}

/// What a node stores when a peer puts `incoming` under `key` while it holds `existing`: the
/// stored entries plus the incoming ones that verify and whose publisher `allow`s (the store
/// quota), bounded; or the reason to refuse the put (nothing valid in it).
pub fn merge_for_store(
    key: &[u8],
    incoming: &[u8],
    existing: Option<&[u8]>,
    now: u64,
    allow: impl Fn(&PeerId) -> bool,
) -> Result<Vec<u8>, RecordError> {
    let kind = key_kind(key);
    if kind == KeyKind::Unknown {
        return Err(RecordError::UnknownKey(key.len()));
    }
    let set = SignedSet::decode(incoming)?;
    let (mut kept, _) = merge_checked(key, existing, now, true);
    let mut added = 0;
    let mut first_error = None;
    for s in &set.entries {
        match check_entry(key, s, now, false) {
            Ok(c) if !allow(&c.publisher) => {
                first_error.get_or_insert(RecordError::Quota(c.publisher));
            }
            Ok(c) => {
                added += 1;
                fold(kind, &mut kept, c);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if added == 0 {
        return Err(first_error.unwrap_or(RecordError::Empty));
    }
    encode_bounded(kept)
}

/// The merged value of the local copy and this node's new entries (what a publisher stores
/// and sends).
pub fn merge_local(key: &[u8], existing: Option<&[u8]>, own: Vec<Signed>, now: u64) -> Result<Vec<u8>, RecordError> {
    let (mut kept, _) = merge_checked(key, existing, now, true);
    let kind = key_kind(key);
    for s in &own {
        fold(kind, &mut kept, check_entry(key, s, now, false)?);
    }
    encode_bounded(kept)
}

/// The publishers of the entries of `value` (for the store quota's bookkeeping).
pub fn publishers(key: &[u8], value: &[u8], now: u64) -> Vec<PeerId> {
    let (kept, _) = merge_checked(key, Some(value), now, true);
    let mut out: Vec<PeerId> = kept.iter().map(|c| c.publisher).collect();
    out.sort();
    out.dedup();
    out
}

/// Every valid entry of the copies found under `key` (from several nodes), merged as a storing
/// node would, with its body: [`IndexBody`] under index keys, [`FileMeta`] (one per publisher)
/// under a root; the reasons entries or copies were refused alongside.
pub fn entries<'a, T: serde::de::DeserializeOwned>(
    key: &[u8],
    copies: impl IntoIterator<Item = &'a [u8]>,
    now: u64,
) -> (Vec<Entry<T>>, Vec<RecordError>) {
    let (kept, refused) = merge_checked(key, copies, now, false);
    let entries = kept
        .into_iter()
        .filter_map(|c| {
            let body = serde_json::from_str(&c.signed.body).ok()?;
            Some(Entry { publisher: c.publisher, body })
        })
        .collect();
    (entries, refused)
}

pub fn index_entries<'a>(
    key: &[u8],
    copies: impl IntoIterator<Item = &'a [u8]>,
    now: u64,
) -> (Vec<Entry<IndexBody>>, Vec<RecordError>) {
    entries(key, copies, now)
}

pub fn meta_entries<'a>(
    key: &[u8],
    copies: impl IntoIterator<Item = &'a [u8]>,
    now: u64,
) -> (Vec<Entry<FileMeta>>, Vec<RecordError>) {
    entries(key, copies, now)
}

/// The roots of index entries, each once, in the order found.
pub fn roots_of(entries: &[Entry<IndexBody>]) -> Vec<Hash32> {
    let mut out: Vec<Hash32> = Vec::new();
    for e in entries {
        if let Some(r) = parse_hex32(&e.body.root) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> identity::Keypair {
        identity::Keypair::generate_ed25519()
    }

    fn index_entry(k: &identity::Keypair, key: &[u8], root: &str, name: &str, expires: u64) -> Signed {
        let body = IndexBody { root: root.into(), name: Some(name.into()), info_hash: None, expires };
        sign(k, key, serde_json::to_string(&body).unwrap()).unwrap()
    }

    fn meta_entry(k: &identity::Keypair, root: &Hash32, size: u64, expires: u64) -> Signed {
        let mut m = FileMeta::new(root, "x.bin", size);
        m.expires = expires;
        m.seeders.push(Seeder { peer_id: k.public().to_peer_id().to_string(), addrs: vec![] });
        sign(k, &meta_key(root), m.body().unwrap()).unwrap()
    }

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
    fn wallets() {
        let w = format!("0x{}", "aB".repeat(20));
        assert_eq!(parse_wallet(&w), Some(w.clone()));
        assert_eq!(parse_wallet("0x12"), None);
        assert_eq!(parse_wallet(&"ab".repeat(20)), None);
        assert_eq!(parse_wallet(&format!("0x{}", "zz".repeat(20))), None);
    }

    #[test]
    fn signatures_bind_publisher_key_and_body() {
        let k = key();
        let t = now();
        let kk = keyword_key("holiday");
        let s = index_entry(&k, &kk, &"aa".repeat(32), "holiday.bin", t + 100);
        assert_eq!(s.publisher(&kk).unwrap(), k.public().to_peer_id());
        // Replayed under another key, altered body, another key's signature: refused.
        assert!(s.publisher(&keyword_key("bin")).is_err());
        let mut altered = s.clone();
        altered.body = altered.body.replace("aaaa", "bbbb");
        assert!(altered.publisher(&kk).is_err());
        let mut stolen = s.clone();
        stolen.pk = hex::encode(key().public().encode_protobuf());
        assert!(stolen.publisher(&kk).is_err());
        // The word must be one of the name's.
        let bad = index_entry(&k, &keyword_key("other"), &"aa".repeat(32), "holiday.bin", t + 100);
        let v = SignedSet::of(vec![bad]).encode().unwrap();
        let e = merge_for_store(&keyword_key("other"), &v, None, t, |_| true).unwrap_err();
        assert!(e.to_string().contains("not a word"), "{e}");
        // Expired or too far ahead.
        let old = index_entry(&k, &kk, &"aa".repeat(32), "holiday.bin", t - 1);
        let v = SignedSet::of(vec![old]).encode().unwrap();
        assert!(merge_for_store(&kk, &v, None, t, |_| true).is_err());
        let far = index_entry(&k, &kk, &"aa".repeat(32), "holiday.bin", t + MAX_TTL + 10);
        let v = SignedSet::of(vec![far]).encode().unwrap();
        assert!(merge_for_store(&kk, &v, None, t, |_| true).is_err());
        // Garbage and old unsigned formats.
        assert!(merge_for_store(&kk, b"{not json", None, t, |_| true).unwrap_err().to_string().contains("malformed"));
        let v1 = format!(r#"{{"roots":["{}"]}}"#, "aa".repeat(32));
        assert!(merge_for_store(&kk, v1.as_bytes(), None, t, |_| true).is_err());
        assert!(merge_for_store(&kk, &vec![b' '; MAX_RECORD + 1], None, t, |_| true)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
        assert!(merge_for_store(b"other", &SignedSet::of(vec![]).encode().unwrap(), None, t, |_| true).is_err());
    }

    #[test]
    fn a_flood_of_one_publisher_leaves_the_others() {
        let (honest, flooder) = (key(), key());
        let t = now();
        let kk = keyword_key("holiday");
        let mine = "11".repeat(32);
        let stored = SignedSet::of(vec![index_entry(&honest, &kk, &mine, "holiday.bin", t + 100)]).encode().unwrap();
        let mut value = stored.clone();
        // 512 roots in puts of 64 entries each, newest expiry last.
        for batch in 0..8u64 {
            let entries = (0..64u64)
                .map(|i| index_entry(&flooder, &kk, &format!("{:064x}", batch * 64 + i), "holiday.x", t + 200 + batch))
                .collect();
            let put = SignedSet::of(entries).encode().unwrap();
            value = merge_for_store(&kk, &put, Some(&value), t, |_| true).unwrap();
        }
        let (entries, refused) = index_entries(&kk, [value.as_slice()], t);
        assert!(refused.is_empty());
        let roots: Vec<String> = entries.iter().map(|e| e.body.root.clone()).collect();
        assert!(roots.contains(&mine), "the honest entry survives");
        assert_eq!(
            entries.iter().filter(|e| e.publisher == flooder.public().to_peer_id()).count(),
            MAX_ENTRIES_PER_PUBLISHER
        );
        // The reader's merge of a flooded copy with an honest one keeps it too.
        let (entries, _) = index_entries(&kk, [value.as_slice(), stored.as_slice()], t);
        assert!(entries.iter().any(|e| e.body.root == mine));
        // Many publishers: the key bound holds and the one-entry publishers are the last to go.
        let mut v = stored;
        for _ in 0..(MAX_ENTRIES_PER_KEY / MAX_ENTRIES_PER_PUBLISHER + 2) {
            let f = key();
            let entries = (0..MAX_ENTRIES_PER_PUBLISHER as u64)
                .map(|i| index_entry(&f, &kk, &format!("{i:064x}"), "holiday", t + 300))
                .collect();
            v = merge_for_store(&kk, &SignedSet::of(entries).encode().unwrap(), Some(&v), t, |_| true).unwrap();
        }
        let (entries, _) = index_entries(&kk, [v.as_slice()], t);
        assert!(entries.len() <= MAX_ENTRIES_PER_KEY);
        assert!(entries.iter().any(|e| e.body.root == mine));
        // The quota refuses a publisher, with the reason.
        let put = SignedSet::of(vec![index_entry(&flooder, &kk, &mine, "holiday", t + 5)]).encode().unwrap();
        assert!(matches!(merge_for_store(&kk, &put, None, t, |_| false), Err(RecordError::Quota(_))));
    }

    #[test]
    fn metadata_is_per_publisher() {
        let (honest, liar) = (key(), key());
        let t = now();
        let root = [3u8; 32];
        let good = SignedSet::of(vec![meta_entry(&honest, &root, 10, t + 100)]).encode().unwrap();
        let stored = merge_for_store(&root, &good, None, t, |_| true).unwrap();
        // Another node puts a record with another size: kept as its own, never replacing.
        let lie = SignedSet::of(vec![meta_entry(&liar, &root, 99, t + 500)]).encode().unwrap();
        let stored = merge_for_store(&root, &lie, Some(&stored), t, |_| true).unwrap();
        let (metas, _) = meta_entries(&root, [stored.as_slice()], t);
        assert_eq!(metas.len(), 2);
        let h = metas.iter().find(|m| m.publisher == honest.public().to_peer_id()).unwrap();
        assert_eq!(h.body.size, 10);
        // A newer record of the same publisher replaces its older one.
        let newer = SignedSet::of(vec![meta_entry(&honest, &root, 10, t + 900)]).encode().unwrap();
        let stored = merge_for_store(&root, &newer, Some(&stored), t, |_| true).unwrap();
        let (metas, _) = meta_entries(&root, [stored.as_slice()], t);
        assert_eq!(metas.len(), 2);
        // Listing someone else as the seeder is refused.
        let mut m = FileMeta::new(&root, "x.bin", 10);
        m.expires = t + 10;
        m.seeders.push(Seeder { peer_id: honest.public().to_peer_id().to_string(), addrs: vec![] });
        let forged = SignedSet::of(vec![sign(&liar, &root, m.body().unwrap()).unwrap()]).encode().unwrap();
        assert!(merge_for_store(&root, &forged, None, t, |_| true).unwrap_err().to_string().contains("seeder"));
        // Under another root: refused.
        assert!(merge_for_store(&[4u8; 32], &good, None, t, |_| true).is_err());
        // Inconsistent chunk count.
        let mut bad = FileMeta::new(&root, "x.bin", CHUNK_SIZE * 3 + 1);
        bad.chunk_count = 9;
        bad.expires = t + 10;
        let v = SignedSet::of(vec![sign(&honest, &root, bad.body().unwrap()).unwrap()]).encode().unwrap();
        assert!(merge_for_store(&root, &v, None, t, |_| true).unwrap_err().to_string().contains("chunks"));
    }
}
