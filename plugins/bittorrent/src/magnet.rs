//! Magnet links (BEP 9): `xt=urn:btih:` in hex or base32, `dn`, `tr` (several), `x.pe`, `ws`, `so`.

use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: [u8; 20],
    pub name: Option<String>,
    pub trackers: Vec<String>,
    /// `x.pe` peer addresses.
    pub peers: Vec<SocketAddr>,
    /// `ws` web seeds.
    pub web_seeds: Vec<String>,
    /// `so` selected file indices (BEP 53), expanded; empty = all.
    pub select_only: Vec<u32>,
}

const MAX_MAGNET: usize = 64 << 10;

pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hexval(b[i + 1]), hexval(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn base32(s: &str) -> Option<Vec<u8>> {
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        bits = bits << 5 | v as u64;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

pub fn parse_info_hash(s: &str) -> Option<[u8; 20]> {
    let v = match s.len() {
        40 => hex::decode(s).ok()?,
        32 => base32(s)?,
        _ => return None,
    };
    v.try_into().ok()
}

/// Most file indices a magnet's `so=` may select (BEP 53), whatever its ranges say.
pub const MAX_SELECTED: usize = 1 << 16;
/// Most web seeds (`ws=`) and direct peers (`x.pe=`) taken from one magnet.
pub const MAX_WEB_SEEDS: usize = 16;
pub const MAX_DIRECT_PEERS: usize = 64;

fn parse_so(s: &str, out: &mut Vec<u32>) {
    for part in s.split(',') {
        let room = MAX_SELECTED.saturating_sub(out.len());
        if room == 0 {
            return;
        }
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

pub fn parse_magnet_uri(uri: &str) -> Result<Magnet, String> {
    if uri.len() > MAX_MAGNET {
        return Err("magnet link longer than 64 KiB".into());
    }
    let rest = uri
        .strip_prefix("magnet:?")
        .or_else(|| uri.strip_prefix("MAGNET:?"))
        .ok_or_else(|| "not a magnet link".to_string())?;
    let mut m = Magnet {
        info_hash: [0; 20],
        name: None,
        trackers: vec![],
        peers: vec![],
        web_seeds: vec![],
        select_only: vec![],
    };
    let mut found = false;
    for pair in rest.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let val = String::from_utf8_lossy(&percent_decode(v)).into_owned();
        // `tr.1`, `xt.1`: numbered variants of the same key.
        let key = k.split('.').next().unwrap_or(k);
        match (key, k) {
            ("xt", _) => {
                if let Some(h) = val.strip_prefix("urn:btih:") {
                    if found {
                        continue;
                    }
                    m.info_hash = parse_info_hash(h).ok_or_else(|| format!("bad btih {h:?}"))?;
                    found = true;
                }
            }
            ("dn", _) => m.name = Some(val),
            ("tr", _) if !val.is_empty() && !m.trackers.contains(&val) && m.trackers.len() < 64 => m.trackers.push(val),
            ("x", "x.pe") if m.peers.len() >= MAX_DIRECT_PEERS => {}
            ("x", "x.pe") => {
                if let Ok(a) = val.parse() {
                    m.peers.push(a)
                } else if let Ok(mut addrs) = std::net::ToSocketAddrs::to_socket_addrs(&val) {
                    if let Some(a) = addrs.next() {
                        m.peers.push(a)
                    }
                }
            }
            ("ws", _) if m.web_seeds.len() < MAX_WEB_SEEDS && !m.web_seeds.contains(&val) => m.web_seeds.push(val),
            ("ws", _) => {}
            ("so", _) => parse_so(&val, &mut m.select_only),
            _ => {}
        }
    }
    if !found {
        return Err("magnet link has no urn:btih info hash".into());
    }
    Ok(m)
}

pub fn make_magnet(info_hash: &[u8; 20], name: Option<&str>, trackers: &[String]) -> String {
    let mut s = format!("magnet:?xt=urn:btih:{}", hex::encode(info_hash));
    if let Some(n) = name {
        s.push_str("&dn=");
        s.push_str(&percent_encode(n.as_bytes()));
    }
    for t in trackers {
        s.push_str("&tr=");
        s.push_str(&percent_encode(t.as_bytes()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_64_kib_magnet_cannot_ask_for_much() {
        let ih = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
        let mut m = format!("magnet:?xt=urn:btih:{ih}&so=");
        while m.len() < 30_000 {
            m.push_str("0-4294967294,");
        }
        for i in 0..1500 {
            m.push_str(&format!("&ws=http://h/{i}&x.pe=127.0.0.1:{}", 1000 + i));
        }
        let m = parse_magnet_uri(&m[..m.len().min(MAX_MAGNET)]).unwrap();
        assert_eq!(m.select_only.len(), MAX_SELECTED);
        assert_eq!(m.web_seeds.len(), MAX_WEB_SEEDS);
        assert_eq!(m.peers.len(), MAX_DIRECT_PEERS);
    }

    #[test]
    fn hex_and_base32_and_fields() {
        let m = parse_magnet_uri(
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=My+File%20x&tr=http%3A%2F%2Ft%2Fa&tr=udp://u:1&tr.2=http://t/a&x.pe=127.0.0.1:6881&ws=http%3A%2F%2Fm%2Ff&so=0,2,4-6",
        )
        .unwrap();
        assert_eq!(hex::encode(m.info_hash), "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
        assert_eq!(m.name.as_deref(), Some("My File x"));
        assert_eq!(m.trackers, vec!["http://t/a".to_string(), "udp://u:1".into()]);
        assert_eq!(m.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
        assert_eq!(m.web_seeds, vec!["http://m/f".to_string()]);
        assert_eq!(m.select_only, vec![0, 2, 4, 5, 6]);
        let b32 = parse_magnet_uri("magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK").unwrap();
        assert_eq!(b32.info_hash, m.info_hash);
    }

    #[test]
    fn bad_links() {
        for l in [
            "",
            "magnet:",
            "magnet:?dn=x",
            "magnet:?xt=urn:btih:zz",
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a8",
            "http://x",
        ] {
            assert!(parse_magnet_uri(l).is_err(), "{l}");
        }
        assert!(parse_magnet_uri(&format!("magnet:?xt=urn:btih:{}&dn={}", "a".repeat(40), "x".repeat(70_000))).is_err());
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }

    #[test]
    fn make_round_trips() {
        let h = [0xab; 20];
        let s = make_magnet(&h, Some("a b&c"), &["http://127.0.0.1:1/announce".into()]);
        assert_eq!(s, "magnet:?xt=urn:btih:abababababababababababababababababababab&dn=a%20b%26c&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce");
        let m = parse_magnet_uri(&s).unwrap();
        assert_eq!(m.info_hash, h);
        assert_eq!(m.name.as_deref(), Some("a b&c"));
    }
}
