//! .torrent files (BEP 3, 12, 19, 27): parsing with limits and path sanitising, and building
//! (the `create` command and seeding) deterministically.

use std::{
    collections::HashSet,
    io::Read as _,
    path::{Path, PathBuf},
};

use chiral_sdk::verify::sha1;

use crate::bencode::{self, dict, Limits, Value};

pub const MAX_TORRENT_BYTES: usize = 64 << 20;
pub const MIN_PIECE_LENGTH: u64 = 16 << 10;
pub const MAX_PIECE_LENGTH: u64 = 512 << 20;
pub const MAX_PIECES: u64 = 1 << 22;
pub const MAX_FILES: usize = 100_000;
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_COMPONENT_BYTES: usize = 255;
pub const MAX_PATH_DEPTH: usize = 64;
/// 1 PiB: more is a lie or an overflow attempt.
pub const MAX_TOTAL_LENGTH: u64 = 1 << 50;

/// One file of the content, with its sanitised relative path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Components, each safe (no separators, not `.`/`..`, not empty).
    pub path: Vec<String>,
    pub length: u64,
    pub offset: u64,
}

impl FileInfo {
    pub fn joined(&self) -> String {
        self.path.join("/")
    }
}

/// A parsed torrent (or the info dictionary fetched for a magnet, plus its trackers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorrentMetadata {
    pub info_hash: [u8; 20],
    /// The exact bytes of the `info` dictionary (served to BEP 9 peers).
    pub info_bytes: Vec<u8>,
    /// Sanitised name (file name, or top folder of a multi-file torrent).
    pub name: String,
    pub piece_length: u64,
    /// 20 bytes per piece.
    pub pieces: Vec<u8>,
    pub length: u64,
    pub files: Vec<FileInfo>,
    pub multi_file: bool,
    pub private: bool,
    /// Announce tiers (BEP 12); `announce` alone is one tier of one.
    pub trackers: Vec<Vec<String>>,
    /// BEP 19 web seeds (`url-list`).
    pub web_seeds: Vec<String>,
    /// BEP 17 HTTP seeds (`httpseeds`): scripts answering `?info_hash=&piece=&ranges=`.
    pub http_seeds: Vec<String>,
}

/// `File(..)` for a .torrent, `Magnet(..)` for a magnet link.
#[derive(Clone, Debug)]
pub enum Torrent {
    File(TorrentMetadata),
    Magnet(crate::magnet::Magnet),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaError(pub String);

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for MetaError {}

impl From<bencode::DecodeError> for MetaError {
    fn from(e: bencode::DecodeError) -> Self {
        MetaError(e.to_string())
    }
}

impl From<MetaError> for chiral_sdk::PluginError {
    fn from(e: MetaError) -> Self {
        chiral_sdk::PluginError::invalid(e.0)
    }
}

fn bad<T>(m: impl Into<String>) -> Result<T, MetaError> {
    Err(MetaError(m.into()))
}

impl TorrentMetadata {
    pub fn piece_count(&self) -> u32 {
        (self.pieces.len() / 20) as u32
    }
    pub fn piece_len(&self, i: u32) -> u64 {
        let off = i as u64 * self.piece_length;
        self.piece_length.min(self.length.saturating_sub(off))
    }
    pub fn piece_hash(&self, i: u32) -> Option<&[u8]> {
        self.pieces.get(i as usize * 20..i as usize * 20 + 20)
    }
    pub fn info_hash_hex(&self) -> String {
        hex::encode(self.info_hash)
    }
    /// All tracker URLs, tier by tier, without duplicates.
    pub fn tracker_urls(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.trackers.iter().flatten().filter(|u| seen.insert(u.as_str())).cloned().collect()
    }
    /// A magnet link with `dn` and one `tr` per tracker.
    pub fn magnet(&self) -> String {
        let mut m = crate::magnet::Magnet::new(self.info_hash);
        m.name = Some(self.name.clone());
        m.trackers = self.tracker_urls();
        m.to_uri()
    }
}

/// Parses a whole .torrent file.
pub fn parse_torrent_file(data: &[u8]) -> Result<TorrentMetadata, MetaError> {
    if data.len() > MAX_TORRENT_BYTES {
        return bad(format!("torrent file of {} bytes is over the {MAX_TORRENT_BYTES} limit", data.len()));
    }
    let (root, spans) = bencode::decode_with_spans(data, Limits::TORRENT)?;
    if root.as_dict().is_none() {
        return bad("torrent file is not a dictionary");
    }
    let span = spans
        .iter()
        .find(|(k, _)| k == b"info")
        .map(|(_, r)| r.clone())
        .ok_or_else(|| MetaError("torrent has no info dictionary".into()))?;
    let info_bytes = data[span].to_vec();
    let mut meta = parse_info(&info_bytes)?;

    let mut tiers: Vec<Vec<String>> = Vec::new();
    if let Some(list) = root.get("announce-list").and_then(Value::as_list) {
        for tier in list.iter().take(64) {
            let urls: Vec<String> =
                tier.as_list().unwrap_or_default().iter().take(64).filter_map(|u| good_url(u.as_str()?)).collect();
            if !urls.is_empty() {
                tiers.push(urls);
            }
        }
    }
    if tiers.is_empty() {
        if let Some(u) = root.get("announce").and_then(Value::as_str).and_then(good_url) {
            tiers.push(vec![u]);
        }
    }
    meta.trackers = tiers;
    meta.web_seeds = match root.get("url-list") {
        Some(Value::Bytes(b)) => std::str::from_utf8(b).ok().and_then(good_url).into_iter().collect(),
        Some(Value::List(l)) => l.iter().take(64).filter_map(|u| good_url(u.as_str()?)).collect(),
        _ => Vec::new(),
    };
    meta.http_seeds = match root.get("httpseeds") {
        Some(Value::List(l)) => l.iter().take(16).filter_map(|u| good_url(u.as_str()?)).collect(),
        _ => Vec::new(),
    };
    Ok(meta)
}

fn good_url(u: &str) -> Option<String> {
    let u = u.trim();
    (u.len() <= 2048 && (u.starts_with("http://") || u.starts_with("https://") || u.starts_with("udp://")))
        .then(|| u.to_string())
}

/// Parses an `info` dictionary (from a file or fetched with BEP 9); the info hash is SHA-1 of
/// exactly these bytes.
pub fn parse_info(info_bytes: &[u8]) -> Result<TorrentMetadata, MetaError> {
    let info = bencode::decode(info_bytes, Limits::TORRENT)?;
    if info.as_dict().is_none() {
        return bad("info is not a dictionary");
    }
    let info_hash = sha1(info_bytes);
    let raw_name = info
        .get("name.utf-8")
        .and_then(Value::as_bytes)
        .or_else(|| info.get("name").and_then(Value::as_bytes))
        .ok_or_else(|| MetaError("info has no name".into()))?;
    let name = sanitize_component(&String::from_utf8_lossy(raw_name)).unwrap_or_else(|| "download".to_string());
    let piece_length =
        info.get("piece length").and_then(Value::as_int).ok_or_else(|| MetaError("no piece length".into()))?;
    if piece_length < MIN_PIECE_LENGTH as i64 || piece_length > MAX_PIECE_LENGTH as i64 {
        return bad(format!("piece length {piece_length} is outside 16 KiB..512 MiB"));
    }
    let piece_length = piece_length as u64;
    let pieces = info.get("pieces").and_then(Value::as_bytes).ok_or_else(|| MetaError("no pieces".into()))?;
    if pieces.len() % 20 != 0 {
        return bad("pieces is not a multiple of 20 bytes");
    }
    if pieces.len() as u64 / 20 > MAX_PIECES {
        return bad(format!("more than {MAX_PIECES} pieces"));
    }
    let private = info.get("private").and_then(Value::as_int) == Some(1);

    let (files, length, multi_file) = if let Some(list) = info.get("files") {
        let list = list.as_list().ok_or_else(|| MetaError("files is not a list".into()))?;
        if list.is_empty() {
            return bad("files is empty");
        }
        if list.len() > MAX_FILES {
            return bad(format!("more than {MAX_FILES} files"));
        }
        let mut files = Vec::with_capacity(list.len());
        let mut offset: u64 = 0;
        let mut seen = HashSet::new();
        for f in list {
            let len = f.get("length").and_then(Value::as_int).ok_or_else(|| MetaError("file without length".into()))?;
            if len < 0 {
                return bad("negative file length");
            }
            let path = f
                .get("path.utf-8")
                .or_else(|| f.get("path"))
                .and_then(Value::as_list)
                .ok_or_else(|| MetaError("file without path".into()))?;
            let path = sanitize_path(path)?;
            if !seen.insert(path.join("/").to_lowercase()) {
                return bad(format!("two files at {:?}", path.join("/")));
            }
            files.push(FileInfo { path, length: len as u64, offset });
            offset = offset
                .checked_add(len as u64)
                .filter(|t| *t <= MAX_TOTAL_LENGTH)
                .ok_or_else(|| MetaError("total length overflows".into()))?;
        }
        // A file may not also be a folder of another.
        for f in &files {
            for n in 1..f.path.len() {
                if seen.contains(&f.path[..n].join("/").to_lowercase()) {
                    return bad(format!("{:?} is both a file and a folder", f.path[..n].join("/")));
                }
            }
        }
        (files, offset, true)
    } else {
        let len = info
            .get("length")
            .and_then(Value::as_int)
            .ok_or_else(|| MetaError("info has neither length nor files".into()))?;
        if len < 0 || len as u64 > MAX_TOTAL_LENGTH {
            return bad(format!("length {len} out of range"));
        }
        (vec![FileInfo { path: vec![name.clone()], length: len as u64, offset: 0 }], len as u64, false)
    };
    let want = length.div_ceil(piece_length);
    if want != pieces.len() as u64 / 20 {
        return bad(format!("{} piece hashes for {length} bytes in pieces of {piece_length}", pieces.len() / 20));
    }
    Ok(TorrentMetadata {
        info_hash,
        info_bytes: info_bytes.to_vec(),
        name,
        piece_length,
        pieces: pieces.to_vec(),
        length,
        files,
        multi_file,
        private,
        trackers: Vec::new(),
        web_seeds: Vec::new(),
        http_seeds: Vec::new(),
    })
}

/// One path component made safe, or `None` when nothing usable is left (empty, `.`).
/// `..` is neutralised to `_..` rather than dropped, separators and control characters become
/// `_`, and overlong components are refused by the caller.
pub fn sanitize_component(raw: &str) -> Option<String> {
    let cleaned: String =
        raw.chars().map(|c| if c == '/' || c == '\\' || c == '\0' || c.is_control() { '_' } else { c }).collect();
    let t = cleaned.trim();
    match t {
        "" | "." => None,
        ".." => Some("_..".to_string()),
        _ => Some(t.to_string()),
    }
}

fn sanitize_path(list: &[Value]) -> Result<Vec<String>, MetaError> {
    if list.len() > MAX_PATH_DEPTH {
        return bad(format!("path deeper than {MAX_PATH_DEPTH}"));
    }
    let mut out = Vec::new();
    let mut total = 0;
    for c in list {
        let raw = c.as_bytes().ok_or_else(|| MetaError("path component is not a string".into()))?;
        if raw.len() > MAX_COMPONENT_BYTES {
            return bad("path component longer than 255 bytes");
        }
        total += raw.len() + 1;
        if let Some(s) = sanitize_component(&String::from_utf8_lossy(raw)) {
            out.push(s);
        }
    }
    if total > MAX_PATH_BYTES {
        return bad("path longer than 4096 bytes");
    }
    if out.is_empty() {
        return bad("file with an empty path");
    }
    Ok(out)
}

/// What `create` and `seed` build from.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub trackers: Vec<String>,
    pub web_seeds: Vec<String>,
    /// BEP 17 HTTP seeds (`httpseeds`).
    pub http_seeds: Vec<String>,
    pub piece_size: Option<u64>,
    pub private: bool,
    pub name: Option<String>,
    /// Reuse the info dictionary of a matching `.torrent` beside a single file (see
    /// [`matching_sibling`]) so the swarm others already know is the one seeded.
    pub reuse_sibling: bool,
}

/// A `.torrent` beside `file` (`<stem>.torrent` or `<name>.torrent`) describing exactly this
/// file: single-file, same name and length, every piece hash matching, and compatible with the
/// options (same piece size if one is asked, private if asked).
pub fn matching_sibling(file: &Path, opts: &CreateOptions) -> Option<TorrentMetadata> {
    let name = file.file_name()?.to_string_lossy().into_owned();
    let len = std::fs::metadata(file).ok().filter(|m| m.is_file())?.len();
    let dir = file.parent()?;
    let stem = file.file_stem()?.to_string_lossy().into_owned();
    for cand in [dir.join(format!("{stem}.torrent")), dir.join(format!("{name}.torrent"))] {
        let Ok(m) = std::fs::metadata(&cand) else { continue };
        if !m.is_file() || m.len() > MAX_TORRENT_BYTES as u64 {
            continue;
        }
        let Ok(meta) = std::fs::read(&cand).map_err(|_| ()).and_then(|b| parse_torrent_file(&b).map_err(|_| ())) else {
            continue;
        };
        let compatible = !meta.multi_file
            && meta.name == name
            && meta.length == len
            && opts.piece_size.is_none_or(|p| p == meta.piece_length)
            && (!opts.private || meta.private)
            && opts.name.as_ref().is_none_or(|n| *n == meta.name);
        if compatible && verify_file(file, &meta) {
            return Some(meta);
        }
    }
    None
}

fn verify_file(file: &Path, meta: &TorrentMetadata) -> bool {
    let Ok(mut f) = std::fs::File::open(file) else { return false };
    let mut buf = vec![0u8; meta.piece_length as usize];
    for i in 0..meta.piece_count() {
        let n = meta.piece_len(i) as usize;
        if f.read_exact(&mut buf[..n]).is_err() || Some(&sha1(&buf[..n])[..]) != meta.piece_hash(i) {
            return false;
        }
    }
    true
}

/// The bytes of a .torrent around existing raw `info` bytes (keys in sorted order).
fn torrent_bytes(info_bytes: &[u8], opts: &CreateOptions) -> Vec<u8> {
    let mut out = b"d".to_vec();
    let put = |k: &str, v: &Value, out: &mut Vec<u8>| {
        bencode::encode_into(&Value::str(k), out);
        bencode::encode_into(v, out);
    };
    if let Some(first) = opts.trackers.first() {
        put("announce", &Value::str(first), &mut out);
        if opts.trackers.len() > 1 {
            put(
                "announce-list",
                &Value::List(opts.trackers.iter().map(|t| Value::List(vec![Value::str(t)])).collect()),
                &mut out,
            );
        }
    }
    put("created by", &Value::str(concat!("chiral ", env!("CARGO_PKG_VERSION"))), &mut out);
    if !opts.http_seeds.is_empty() {
        put("httpseeds", &Value::List(opts.http_seeds.iter().map(|w| Value::str(w)).collect()), &mut out);
    }
    bencode::encode_into(&Value::str("info"), &mut out);
    out.extend_from_slice(info_bytes);
    if !opts.web_seeds.is_empty() {
        put("url-list", &Value::List(opts.web_seeds.iter().map(|w| Value::str(w)).collect()), &mut out);
    }
    out.push(b'e');
    out
}

/// A power of two between 16 KiB and 16 MiB giving 1000-2000 pieces where possible.
pub fn default_piece_size(length: u64) -> u64 {
    (length / 2000).max(1).next_power_of_two().clamp(MIN_PIECE_LENGTH, 16 << 20)
}

/// The files under `path` (itself if a file), sorted, with their relative components.
fn collect_files(path: &Path) -> Result<Vec<(PathBuf, Vec<String>, u64)>, MetaError> {
    let meta = std::fs::metadata(path).map_err(|e| MetaError(format!("{}: {e}", path.display())))?;
    if meta.is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![(path.to_path_buf(), vec![name], meta.len())]);
    }
    let mut out = Vec::new();
    fn walk(dir: &Path, rel: &mut Vec<String>, out: &mut Vec<(PathBuf, Vec<String>, u64)>) -> Result<(), MetaError> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| MetaError(format!("{}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = std::fs::metadata(&p).map_err(|e| MetaError(format!("{}: {e}", p.display())))?;
            rel.push(name);
            if ft.is_dir() {
                walk(&p, rel, out)?;
            } else if ft.is_file() {
                out.push((p, rel.clone(), ft.len()));
            }
            rel.pop();
            if out.len() > MAX_FILES {
                return bad(format!("more than {MAX_FILES} files"));
            }
        }
        Ok(())
    }
    walk(path, &mut Vec::new(), &mut out)?;
    if out.is_empty() {
        return bad(format!("{} holds no files", path.display()));
    }
    Ok(out)
}

/// Hashes `path` (a file or a folder) into a torrent. Returns the metadata and the bytes of
/// the .torrent file. The same content with the same options always gives the same bytes.
pub fn build(path: &Path, opts: &CreateOptions) -> Result<(TorrentMetadata, Vec<u8>), MetaError> {
    let meta = std::fs::metadata(path).map_err(|e| MetaError(format!("{}: {e}", path.display())))?;
    if opts.reuse_sibling && meta.is_file() {
        if let Some(sib) = matching_sibling(path, opts) {
            let bytes = torrent_bytes(&sib.info_bytes, opts);
            let mut parsed = parse_torrent_file(&bytes)?;
            if parsed.trackers.is_empty() && !opts.trackers.is_empty() {
                parsed.trackers = opts.trackers.iter().map(|t| vec![t.clone()]).collect();
            }
            return Ok((parsed, bytes));
        }
    }
    let files = collect_files(path)?;
    let total: u64 = files.iter().map(|f| f.2).sum();
    let piece_length = match opts.piece_size {
        Some(p) if !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&p) => {
            return bad(format!("piece size {p} is outside 16 KiB..512 MiB"))
        }
        Some(p) => p,
        None => default_piece_size(total),
    };
    let name = match &opts.name {
        Some(n) => sanitize_component(n).ok_or_else(|| MetaError(format!("unusable name {n:?}")))?,
        None => path
            .file_name()
            .and_then(|n| sanitize_component(&n.to_string_lossy()))
            .unwrap_or_else(|| "download".to_string()),
    };
    // Hash pieces across file boundaries.
    let mut pieces = Vec::with_capacity((total.div_ceil(piece_length) * 20) as usize);
    let mut piece = Vec::with_capacity(piece_length as usize);
    let mut buf = vec![0u8; (4 << 20).min(piece_length as usize).max(64 << 10)];
    for (p, _, len) in &files {
        let mut f = std::fs::File::open(p).map_err(|e| MetaError(format!("{}: {e}", p.display())))?;
        let mut left = *len;
        while left > 0 {
            let want = (piece_length as usize - piece.len()).min(buf.len()).min(left as usize);
            let n = f.read(&mut buf[..want]).map_err(|e| MetaError(format!("{}: {e}", p.display())))?;
            if n == 0 {
                return bad(format!("{} changed while being read", p.display()));
            }
            piece.extend_from_slice(&buf[..n]);
            left -= n as u64;
            if piece.len() as u64 == piece_length {
                pieces.extend_from_slice(&sha1(&piece));
                piece.clear();
            }
        }
    }
    if !piece.is_empty() {
        pieces.extend_from_slice(&sha1(&piece));
    }
    let mut info = vec![
        ("name", Value::str(&name)),
        ("piece length", Value::Int(piece_length as i64)),
        ("pieces", Value::Bytes(pieces)),
    ];
    if meta.is_file() {
        info.push(("length", Value::Int(total as i64)));
    } else {
        let list = files
            .iter()
            .map(|(_, rel, len)| {
                dict([
                    ("length", Value::Int(*len as i64)),
                    ("path", Value::List(rel.iter().map(|c| Value::str(c)).collect())),
                ])
            })
            .collect();
        info.push(("files", Value::List(list)));
    }
    if opts.private {
        info.push(("private", Value::Int(1)));
    }
    let info = dict(info);
    let info_bytes = bencode::encode(&info);
    let mut root = vec![("info", info), ("created by", Value::str(concat!("chiral ", env!("CARGO_PKG_VERSION"))))];
    if let Some(first) = opts.trackers.first() {
        root.push(("announce", Value::str(first)));
        if opts.trackers.len() > 1 {
            root.push((
                "announce-list",
                Value::List(opts.trackers.iter().map(|t| Value::List(vec![Value::str(t)])).collect()),
            ));
        }
    }
    if !opts.web_seeds.is_empty() {
        root.push(("url-list", Value::List(opts.web_seeds.iter().map(|w| Value::str(w)).collect())));
    }
    if !opts.http_seeds.is_empty() {
        root.push(("httpseeds", Value::List(opts.http_seeds.iter().map(|w| Value::str(w)).collect())));
    }
    let file_bytes = bencode::encode(&dict(root));
    let mut parsed = parse_torrent_file(&file_bytes)?;
    debug_assert_eq!(parsed.info_bytes, info_bytes);
    // Keep every tracker given (even schemes the parser would skip) for announcing.
    if parsed.trackers.is_empty() && !opts.trackers.is_empty() {
        parsed.trackers = opts.trackers.iter().map(|t| vec![t.clone()]).collect();
    }
    Ok((parsed, file_bytes))
}

/// Where the files of `meta` live when seeding from `path` (a file, or the top folder).
pub fn disk_paths(meta: &TorrentMetadata, path: &Path) -> Vec<PathBuf> {
    if !meta.multi_file {
        return vec![path.to_path_buf()];
    }
    meta.files.iter().map(|f| f.path.iter().fold(path.to_path_buf(), |p, c| p.join(c))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent(info: Value, extra: Vec<(&'static str, Value)>) -> Vec<u8> {
        let mut root = vec![("info", info)];
        root.extend(extra);
        bencode::encode(&dict(root))
    }

    fn single(len: i64, plen: i64) -> Value {
        let n = (len.max(0) as u64).div_ceil(plen as u64).min(100) as usize;
        dict([
            ("name", Value::str("a.bin")),
            ("length", Value::Int(len)),
            ("piece length", Value::Int(plen)),
            ("pieces", Value::Bytes(vec![7; n * 20])),
        ])
    }

    #[test]
    fn single_file_with_trackers_and_web_seeds() {
        let data = torrent(
            single(40_000, 16384),
            vec![
                ("announce", Value::str("http://t/a")),
                (
                    "announce-list",
                    Value::List(vec![
                        Value::List(vec![Value::str("udp://u:1"), Value::str("http://t/a")]),
                        Value::List(vec![Value::str("https://x/y")]),
                    ]),
                ),
                ("url-list", Value::str("http://mirror/a.bin")),
            ],
        );
        let m = parse_torrent_file(&data).unwrap();
        assert_eq!(m.name, "a.bin");
        assert_eq!(m.length, 40_000);
        assert_eq!(m.piece_count(), 3);
        assert_eq!(m.piece_len(2), 40_000 - 2 * 16384);
        assert_eq!(m.trackers, vec![vec!["udp://u:1".to_string(), "http://t/a".into()], vec!["https://x/y".into()]]);
        assert_eq!(m.web_seeds, vec!["http://mirror/a.bin".to_string()]);
        assert!(!m.private && !m.multi_file);
        assert_eq!(m.info_hash, sha1(&bencode::encode(&single(40_000, 16384))));
    }

    #[test]
    fn info_hash_uses_the_raw_bytes_even_when_keys_are_unsorted() {
        // keys out of order: re-encoding would change the hash
        let info = b"d6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaa7:privatei1ee";
        let unsorted = b"d4:name1:x6:lengthi5e12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        for i in [&info[..], &unsorted[..]] {
            let file = [b"d8:announce10:http://t/a4:info".to_vec(), i.to_vec(), b"e".to_vec()].concat();
            let m = parse_torrent_file(&file).unwrap();
            assert_eq!(m.info_hash, sha1(i));
            assert_eq!(m.info_bytes, i);
        }
        assert!(parse_torrent_file(&[b"d4:info".to_vec(), info.to_vec(), b"e".to_vec()].concat()).unwrap().private);
    }

    #[test]
    fn multi_file_paths_are_sanitised() {
        let files = Value::List(vec![
            dict([
                ("length", Value::Int(10)),
                (
                    "path",
                    Value::List(vec![Value::str(".."), Value::str(".."), Value::str("etc"), Value::str("passwd")]),
                ),
            ]),
            dict([
                ("length", Value::Int(20)),
                ("path", Value::List(vec![Value::str("/abs"), Value::str("a/b\\c"), Value::str(""), Value::str(".")])),
            ]),
            dict([("length", Value::Int(0)), ("path", Value::List(vec![Value::str("ok.txt")]))]),
        ]);
        let info = dict([
            ("name", Value::str("../top")),
            ("piece length", Value::Int(16384)),
            ("pieces", Value::Bytes(vec![1; 20])),
            ("files", files),
        ]);
        let m = parse_torrent_file(&torrent(info, vec![])).unwrap();
        assert!(m.multi_file);
        assert_eq!(m.name, ".._top");
        let paths: Vec<String> = m.files.iter().map(|f| f.joined()).collect();
        assert_eq!(paths, vec!["_../_../etc/passwd", "_abs/a_b_c", "ok.txt"]);
        assert_eq!(m.files[1].offset, 10);
        assert_eq!(m.length, 30);
        for p in &paths {
            assert!(!p.split('/').any(|c| c == ".." || c.is_empty() || c == "."));
        }
    }

    #[test]
    fn malformed_and_out_of_bounds_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            b"le".to_vec(),
            b"d8:announce3:abce".to_vec(),
            torrent(single(40_000, 1000), vec![]),    // piece too small
            torrent(single(40_000, 1 << 30), vec![]), // too large
            torrent(single(-1, 16384), vec![]),
            torrent(
                dict([
                    ("name", Value::str("x")),
                    ("length", Value::Int(40_000)),
                    ("piece length", Value::Int(16384)),
                    ("pieces", Value::Bytes(vec![0; 20])),
                ]),
                vec![],
            ), // wrong count
            torrent(
                dict([
                    ("name", Value::str("x")),
                    ("length", Value::Int(1)),
                    ("piece length", Value::Int(16384)),
                    ("pieces", Value::Bytes(vec![0; 21])),
                ]),
                vec![],
            ),
            torrent(
                dict([
                    ("name", Value::str("x")),
                    ("piece length", Value::Int(16384)),
                    ("pieces", Value::Bytes(vec![0; 20])),
                    (
                        "files",
                        Value::List(vec![
                            dict([("length", Value::Int(i64::MAX)), ("path", Value::List(vec![Value::str("a")]))]),
                            dict([("length", Value::Int(i64::MAX)), ("path", Value::List(vec![Value::str("b")]))]),
                        ]),
                    ),
                ]),
                vec![],
            ), // overflow
            torrent(
                dict([
                    ("name", Value::str("x")),
                    ("piece length", Value::Int(16384)),
                    ("pieces", Value::Bytes(vec![0; 20])),
                    (
                        "files",
                        Value::List(vec![
                            dict([("length", Value::Int(1)), ("path", Value::List(vec![Value::str("a")]))]),
                            dict([("length", Value::Int(1)), ("path", Value::List(vec![Value::str("a")]))]),
                        ]),
                    ),
                ]),
                vec![],
            ), // duplicate
            torrent(
                dict([
                    ("name", Value::str("x")),
                    ("piece length", Value::Int(16384)),
                    ("pieces", Value::Bytes(vec![0; 20])),
                    (
                        "files",
                        Value::List(vec![dict([
                            ("length", Value::Int(1)),
                            ("path", Value::List(vec![Value::str(".."), Value::str("")])),
                        ])]),
                    ),
                ]),
                vec![],
            ), // nothing usable... ("_.." survives, so this one is fine) -> replaced below
        ];
        for (i, c) in cases.iter().enumerate().take(cases.len() - 1) {
            assert!(parse_torrent_file(c).is_err(), "case {i} accepted");
        }
        let empty_path = torrent(
            dict([
                ("name", Value::str("x")),
                ("piece length", Value::Int(16384)),
                ("pieces", Value::Bytes(vec![0; 20])),
                (
                    "files",
                    Value::List(vec![dict([
                        ("length", Value::Int(1)),
                        ("path", Value::List(vec![Value::str("."), Value::str("")])),
                    ])]),
                ),
            ]),
            vec![],
        );
        assert!(parse_torrent_file(&empty_path).is_err());
        assert!(parse_torrent_file(&vec![b'l'; MAX_TORRENT_BYTES + 1]).is_err());
    }

    #[test]
    fn build_is_deterministic_and_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&f, &data).unwrap();
        let opts = CreateOptions {
            trackers: vec!["http://127.0.0.1:1/announce".into()],
            piece_size: Some(16384),
            ..Default::default()
        };
        let (m, bytes) = build(&f, &opts).unwrap();
        let (m2, bytes2) = build(&f, &opts).unwrap();
        assert_eq!(bytes, bytes2);
        assert_eq!(m.info_hash, m2.info_hash);
        assert_eq!(m.piece_count(), 7);
        assert_eq!(m.piece_hash(0).unwrap(), sha1(&data[..16384]));
        assert_eq!(m.piece_hash(6).unwrap(), sha1(&data[6 * 16384..]));
        assert!(m.magnet().contains("&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce"));
        // A folder: files in sorted order, offsets tile.
        let d = dir.path().join("folder");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("b.txt"), vec![1u8; 20_000]).unwrap();
        std::fs::write(d.join("sub/a.txt"), vec![2u8; 30_000]).unwrap();
        let (m, _) = build(&d, &CreateOptions { private: true, ..Default::default() }).unwrap();
        assert!(m.multi_file && m.private);
        assert_eq!(m.files.iter().map(|f| f.joined()).collect::<Vec<_>>(), vec!["b.txt", "sub/a.txt"]);
        assert_eq!(m.length, 50_000);
        assert_eq!(disk_paths(&m, &d)[1], d.join("sub/a.txt"));
        assert_eq!(default_piece_size(64 << 20), 64 << 10);
        // A matching .torrent beside the file is reused (same info hash), unless it conflicts.
        let other = CreateOptions { piece_size: Some(32768), private: true, ..Default::default() };
        let (sib, sib_bytes) = build(&f, &other).unwrap();
        std::fs::write(dir.path().join("data.torrent"), &sib_bytes).unwrap();
        let reuse = CreateOptions { reuse_sibling: true, trackers: vec!["udp://x:1".into()], ..Default::default() };
        let (m3, b3) = build(&f, &reuse).unwrap();
        assert_eq!(m3.info_hash, sib.info_hash);
        assert!(m3.private);
        assert_eq!(parse_torrent_file(&b3).unwrap().trackers, vec![vec!["udp://x:1".to_string()]]);
        let (m4, _) = build(&f, &CreateOptions { piece_size: Some(16384), ..reuse.clone() }).unwrap();
        assert_ne!(m4.info_hash, sib.info_hash);
        std::fs::write(&f, vec![0u8; data.len()]).unwrap();
        assert_ne!(build(&f, &reuse).unwrap().0.info_hash, sib.info_hash, "content changed: not reused");
        assert_eq!(default_piece_size(10), 16 << 10);
        assert_eq!(default_piece_size(1 << 40), 16 << 20);
    }
}
