//! Magnet links (BEP 9), parsed and written one way for every plugin and host.
//!
//! Parsing is built on the `url` crate (query splitting, percent-decoding, `+` as a space) and
//! `data-encoding` (the info hash in 40 hex digits of either case, or 32 base32 characters).
//! Everything from the link is bounded: the link itself ([`MAX_MAGNET`]), the trackers, web
//! seeds, peers and selected files it may list. Nothing here touches the network: `x.pe` peers
//! given by name are kept as names for the caller to resolve.
//!
//! The display name (`dn`) is kept as given; show it through [`Magnet::display_name`], which
//! passes it through [`crate::text`].

use std::net::SocketAddr;

use data_encoding::{BASE32, HEXLOWER_PERMISSIVE};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::abi::PluginError;

/// Longest magnet link accepted.
pub const MAX_MAGNET: usize = 64 << 10;
/// Most trackers (`tr`) taken from one link.
pub const MAX_TRACKERS: usize = 64;
/// Most web seeds (`ws`) taken from one link.
pub const MAX_WEB_SEEDS: usize = 16;
/// Most direct peers (`x.pe`, addresses and names together) taken from one link.
pub const MAX_DIRECT_PEERS: usize = 64;
/// Most file indices `so` (BEP 53) may select, whatever its ranges say.
pub const MAX_SELECTED: usize = 1 << 16;

/// Why a text is not a usable magnet link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("magnet link longer than 64 KiB")]
    TooLong,
    #[error("not a magnet link")]
    NotMagnet,
    #[error("magnet link has no urn:btih info hash")]
    NoInfoHash,
    #[error("bad btih {0:?}: expected 40 hex digits or 32 base32 characters")]
    BadInfoHash(String),
}

impl From<MagnetError> for PluginError {
    fn from(e: MagnetError) -> Self {
        PluginError::invalid(e.to_string())
    }
}

/// What a magnet link carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    /// The BitTorrent v1 info hash (`xt=urn:btih:`).
    pub info_hash: [u8; 20],
    /// `dn`, as given (see [`Magnet::display_name`]).
    pub name: Option<String>,
    /// `xl`: the exact length in bytes.
    pub exact_length: Option<u64>,
    /// `tr` (and `tr.1`, ...), in order, without repeats.
    pub trackers: Vec<String>,
    /// `ws`: web seeds (BEP 19), in order, without repeats.
    pub web_seeds: Vec<String>,
    /// `x.pe` given as `ip:port`.
    pub peers: Vec<SocketAddr>,
    /// `x.pe` given as `hostname:port` (not resolved here).
    pub peer_names: Vec<String>,
    /// `so` (BEP 53) file indices, expanded; empty means all.
    pub select_only: Vec<u32>,
}

impl Magnet {
    /// A link naming `info_hash` and nothing else.
    pub fn new(info_hash: [u8; 20]) -> Self {
        Self {
            info_hash,
            name: None,
            exact_length: None,
            trackers: Vec::new(),
            web_seeds: Vec::new(),
            peers: Vec::new(),
            peer_names: Vec::new(),
            select_only: Vec::new(),
        }
    }

    /// A link naming the info hash written as 40 hex digits or 32 base32 characters.
    pub fn from_info_hash(text: &str) -> Result<Self, MagnetError> {
        Ok(Self::new(parse_info_hash(text).ok_or_else(|| bad_hash(text))?))
    }

    /// Parses a `magnet:?` link (scheme in any case).
    pub fn parse(uri: &str) -> Result<Self, MagnetError> {
        if uri.len() > MAX_MAGNET {
            return Err(MagnetError::TooLong);
        }
        let url = url::Url::parse(uri.trim()).map_err(|_| MagnetError::NotMagnet)?;
        if url.scheme() != "magnet" {
            return Err(MagnetError::NotMagnet);
        }
        let mut m = Magnet::new([0; 20]);
        let mut found = false;
        for (key, value) in url.query_pairs() {
            let key = key.to_ascii_lowercase();
            // `tr.1`, `xt.2`: numbered variants of a key; `x.pe` is a key of its own.
            let base = if key == "x.pe" { key.as_str() } else { key.split('.').next().unwrap_or(&key) };
            match base {
                "xt" if !found => {
                    if let Some(h) = strip_prefix_ci(&value, "urn:btih:") {
                        m.info_hash = parse_info_hash(h).ok_or_else(|| bad_hash(h))?;
                        found = true;
                    }
                }
                "dn" => m.name = Some(value.into_owned()),
                "xl" => m.exact_length = value.trim().parse().ok(),
                "tr" => push_unique(&mut m.trackers, value.trim(), MAX_TRACKERS),
                "ws" => push_unique(&mut m.web_seeds, value.trim(), MAX_WEB_SEEDS),
                "x.pe" => m.add_peer(value.trim()),
                "so" => parse_so(&value, &mut m.select_only),
                _ => {}
            }
        }
        if !found {
            return Err(MagnetError::NoInfoHash);
        }
        Ok(m)
    }

    /// The info hash as 40 lower-case hex digits.
    pub fn info_hash_hex(&self) -> String {
        HEXLOWER_PERMISSIVE.encode(&self.info_hash)
    }

    /// `dn` made safe to print (control characters shown, one line at most).
    pub fn display_name(&self) -> Option<String> {
        self.name.as_deref().map(crate::text::line)
    }

    /// Adds a tracker unless it is there already (or the list is full).
    pub fn add_tracker(&mut self, tracker: &str) {
        push_unique(&mut self.trackers, tracker.trim(), MAX_TRACKERS);
    }

    /// Adds an `x.pe` peer, `ip:port` or `hostname:port`; anything else is ignored.
    pub fn add_peer(&mut self, peer: &str) {
        if self.peers.len() + self.peer_names.len() >= MAX_DIRECT_PEERS {
            return;
        }
        if let Ok(a) = peer.parse::<SocketAddr>() {
            if !self.peers.contains(&a) {
                self.peers.push(a);
            }
        } else if is_host_port(peer) && !self.peer_names.iter().any(|p| p == peer) {
            self.peer_names.push(peer.to_string());
        }
    }

    /// The link: `xt`, then `dn`, `xl`, every `tr`, `ws`, `x.pe` and `so` it has.
    pub fn to_uri(&self) -> String {
        let mut s = format!("magnet:?xt=urn:btih:{}", self.info_hash_hex());
        let mut put = |k: &str, v: &str| {
            s.push('&');
            s.push_str(k);
            s.push('=');
            s.push_str(&percent_encode(v.as_bytes()));
        };
        if let Some(n) = &self.name {
            put("dn", n);
        }
        if let Some(l) = self.exact_length {
            put("xl", &l.to_string());
        }
        self.trackers.iter().for_each(|t| put("tr", t));
        self.web_seeds.iter().for_each(|w| put("ws", w));
        self.peers.iter().for_each(|p| put("x.pe", &p.to_string()));
        self.peer_names.iter().for_each(|p| put("x.pe", p));
        if !self.select_only.is_empty() {
            put("so", &so_ranges(&self.select_only));
        }
        s
    }
}

impl std::str::FromStr for Magnet {
    type Err = MagnetError;
    fn from_str(s: &str) -> Result<Self, MagnetError> {
        Self::parse(s)
    }
}

/// An info hash written as 40 hex digits (either case) or 32 base32 characters (either case).
pub fn parse_info_hash(s: &str) -> Option<[u8; 20]> {
    let bytes = match s.len() {
        40 => HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok()?,
        32 => BASE32.decode(s.to_ascii_uppercase().as_bytes()).ok()?,
        _ => return None,
    };
    bytes.try_into().ok()
}

/// `host:port` for an `x.pe`, IPv6 hosts in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Everything but RFC 3986's unreserved characters.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes every byte but the unreserved characters (RFC 3986), `%XX` upper case.
pub fn percent_encode(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, ENCODE).to_string()
}

/// Percent-decodes `s` (malformed escapes are kept as written).
pub fn percent_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

fn bad_hash(h: &str) -> MagnetError {
    MagnetError::BadInfoHash(crate::text::for_terminal(h, 64))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn push_unique(list: &mut Vec<String>, value: &str, max: usize) {
    if !value.is_empty() && list.len() < max && !list.iter().any(|v| v == value) {
        list.push(value.to_string());
    }
}

fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else { return false };
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.parse::<u16>().is_ok()
}

fn parse_so(s: &str, out: &mut Vec<u32>) {
    for part in s.split(',') {
        let room = MAX_SELECTED.saturating_sub(out.len());
        if room == 0 {
            return;
        }
        let part = part.trim();
        if let Some((a, b)) = part.split_once('-') {
            if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                if a <= b {
                    out.extend((a..=b).take(room));
                }
            }
        } else if let Ok(a) = part.parse() {
            out.push(a);
        }
    }
}

/// `0,2,4-6` from `[0, 2, 4, 5, 6]`.
fn so_ranges(sel: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sel.len() {
        let mut j = i;
        while j + 1 < sel.len() && sel[j].checked_add(1) == Some(sel[j + 1]) {
            j += 1;
        }
        parts.push(if i == j { sel[i].to_string() } else { format!("{}-{}", sel[i], sel[j]) });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const IH: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    #[test]
    fn hex_of_either_case_and_base32() {
        let lower = Magnet::parse(&format!("magnet:?xt=urn:btih:{IH}")).unwrap();
        assert_eq!(lower.info_hash_hex(), IH);
        let upper = Magnet::parse(&format!("MAGNET:?XT=URN:BTIH:{}", IH.to_ascii_uppercase())).unwrap();
        assert_eq!(upper.info_hash, lower.info_hash);
        let b32 = Magnet::parse("magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK").unwrap();
        assert_eq!(b32.info_hash, lower.info_hash);
        let b32_lower = Magnet::parse("magnet:?xt=urn:btih:yex6dqdlxisuvhoj6um3gnnkpqjwpkek").unwrap();
        assert_eq!(b32_lower.info_hash, lower.info_hash);
        assert_eq!(Magnet::from_info_hash(IH).unwrap().info_hash, lower.info_hash);
    }

    #[test]
    fn every_field() {
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{IH}&dn=My+File%20x&xl=1234&tr=http%3A%2F%2Ft%2Fa&tr=udp://u:1&tr.2=http://t/a\
             &x.pe=127.0.0.1:6881&x.pe=%5B%3A%3A1%5D%3A7&x.pe=seed.example:80&x.pe=bad&ws=http%3A%2F%2Fm%2Ff&so=0,2,4-6"
        ))
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("My File x"));
        assert_eq!(m.exact_length, Some(1234));
        assert_eq!(m.trackers, ["http://t/a", "udp://u:1"]);
        assert_eq!(m.peers, ["127.0.0.1:6881".parse::<SocketAddr>().unwrap(), "[::1]:7".parse().unwrap()]);
        assert_eq!(m.peer_names, ["seed.example:80"]);
        assert_eq!(m.web_seeds, ["http://m/f"]);
        assert_eq!(m.select_only, [0, 2, 4, 5, 6]);
        // Written back and read again: the same link.
        assert_eq!(Magnet::parse(&m.to_uri()).unwrap(), m);
    }

    #[test]
    fn written_links() {
        let mut m = Magnet::new([0xab; 20]);
        m.name = Some("a b&c".into());
        m.add_tracker("http://127.0.0.1:1/announce");
        m.add_tracker("http://127.0.0.1:1/announce");
        m.add_peer(&host_port("::1", 5));
        assert_eq!(
            m.to_uri(),
            "magnet:?xt=urn:btih:abababababababababababababababababababab&dn=a%20b%26c\
             &tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce&x.pe=%5B%3A%3A1%5D%3A5"
        );
        assert_eq!(Magnet::parse(&m.to_uri()).unwrap(), m);
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }

    #[test]
    fn names_are_shown_safely() {
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{IH}&dn=a%1B%5B2Jb%0Afake")).unwrap();
        assert_eq!(m.name.as_deref(), Some("a\x1b[2Jb\nfake"));
        let shown = m.display_name().unwrap();
        assert!(!shown.contains('\x1b') && !shown.contains('\n'), "{shown}");
    }

    #[test]
    fn bad_input_is_an_error() {
        for l in [
            "",
            "magnet:",
            "magnet:?",
            "magnet:?dn=x",
            "magnet:?xt=urn:btih:zz",
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a8",
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a8zz",
            "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1",
            "magnet:?xt=urn:btih:ééééééééééééééééééééé",
            "magnet:?xt=urn:btmh:1220abcd",
            "http://x",
            "magnetic:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a",
            "%%%",
        ] {
            assert!(Magnet::parse(l).is_err(), "{l}");
        }
        let long = format!("magnet:?xt=urn:btih:{IH}&dn={}", "x".repeat(70_000));
        assert_eq!(Magnet::parse(&long), Err(MagnetError::TooLong));
        let e: PluginError = Magnet::parse("magnet:?xt=urn:btih:zz").unwrap_err().into();
        assert_eq!(e.kind, crate::abi::ErrorKind::Invalid);
    }

    #[test]
    fn a_64_kib_link_cannot_ask_for_much() {
        let mut m = format!("magnet:?xt=urn:btih:{IH}&so=");
        while m.len() < 30_000 {
            m.push_str("0-4294967294,");
        }
        for i in 0..1500 {
            m.push_str(&format!("&ws=http://h/{i}&x.pe=127.0.0.1:{}&tr=udp://t/{i}", 1000 + i));
        }
        let m = Magnet::parse(&m[..MAX_MAGNET]).unwrap();
        assert_eq!(m.select_only.len(), MAX_SELECTED);
        assert_eq!(m.web_seeds.len(), MAX_WEB_SEEDS);
        assert_eq!(m.peers.len(), MAX_DIRECT_PEERS);
        assert_eq!(m.trackers.len(), MAX_TRACKERS);
    }
}
