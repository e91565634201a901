//! Identifiers: what a `download` identifier is (magnet, `.torrent` URL, local `.torrent`), and
//! magnet links for seeds. No librqbit type leaves this crate.

use std::{net::SocketAddr, path::Path};

use chiral_sdk::PluginError;

/// Torrent files larger than this are refused (same bound as the native plugin).
pub const MAX_TORRENT_BYTES: u64 = 64 << 20;

/// What an identifier names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    /// A magnet link with its BTv1 info hash (hex, lowercase) and `x.pe` peers.
    Magnet { uri: String, info_hash: String, peers: Vec<SocketAddr> },
    /// An `http(s)://…/x.torrent` URL.
    Url(String),
    /// A local `.torrent` file (path, `file://` stripped).
    File(String),
}

/// Classifies `id` without touching the network. Anything that is not ours is `Unsupported`.
pub fn classify(id: &str) -> Result<Ident, PluginError> {
    let id = id.trim();
    if id.len() > 65_536 {
        return Err(PluginError::unsupported("identifier longer than 64 KiB"));
    }
    if id.is_empty() || id.contains('\0') {
        return Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent")));
    }
    let lower = id.to_ascii_lowercase();
    if lower.starts_with("magnet:") {
        let m = librqbit::Magnet::parse(id).map_err(|e| PluginError::invalid(format!("bad magnet link: {e:#}")))?;
        let ih = m.as_id20().ok_or_else(|| PluginError::invalid("the magnet link has no BTv1 (btih) info hash"))?;
        return Ok(Ident::Magnet { uri: id.to_string(), info_hash: ih.as_string(), peers: magnet_peers(id) });
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let path_part = lower.split(['?', '#']).next().unwrap_or_default();
        if !path_part.ends_with(".torrent") {
            return Err(PluginError::unsupported(format!("{id} is not a .torrent URL")));
        }
        return Ok(Ident::Url(id.to_string()));
    }
    let path = id.strip_prefix("file://").unwrap_or(id);
    if path.is_empty() || (lower.contains("://") && !lower.starts_with("file://")) {
        return Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent")));
    }
    match std::fs::metadata(Path::new(path)) {
        Ok(m) if m.is_file() => {
            if m.len() > MAX_TORRENT_BYTES {
                return Err(PluginError::invalid(format!("{path}: torrent file over 64 MiB")));
            }
            Ok(Ident::File(path.to_string()))
        }
        Ok(_) => Err(PluginError::unsupported(format!("{path} is not a .torrent file"))),
        Err(e) if lower.ends_with(".torrent") => Err(PluginError::not_found(format!("{path}: {e}"))),
        Err(_) => Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent"))),
    }
}

/// The `x.pe` (BEP 9 peer address) values of a magnet link.
pub fn magnet_peers(uri: &str) -> Vec<SocketAddr> {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.eq_ignore_ascii_case("x.pe"))
        .filter_map(|(_, v)| String::from_utf8(percent_decode(v)).ok())
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// `uri` with one `tr=` appended per tracker it does not already carry.
pub fn magnet_with_trackers(uri: &str, trackers: &[String]) -> String {
    let mut out = uri.to_string();
    for t in trackers {
        let enc = percent_encode(t.as_bytes());
        if !out.contains(&format!("tr={enc}")) && !out.contains(&format!("tr={t}")) {
            out.push_str(if out.contains('?') { "&tr=" } else { "?tr=" });
            out.push_str(&enc);
        }
    }
    out
}

/// A magnet link: `xt`, `dn`, one `tr` per tracker, and `x.pe` for this node when given.
pub fn build_magnet(info_hash_hex: &str, name: &str, trackers: &[String], peer: Option<&str>) -> String {
    let mut m = format!("magnet:?xt=urn:btih:{info_hash_hex}");
    if !name.is_empty() {
        m.push_str("&dn=");
        m.push_str(&percent_encode(name.as_bytes()));
    }
    for t in trackers {
        m.push_str("&tr=");
        m.push_str(&percent_encode(t.as_bytes()));
    }
    if let Some(p) = peer {
        m.push_str("&x.pe=");
        m.push_str(&percent_encode(p.as_bytes()));
    }
    m
}

/// `host:port`, bracketing IPv6 hosts.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub fn percent_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-_.~".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
