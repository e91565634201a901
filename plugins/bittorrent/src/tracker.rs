//! Trackers: HTTP(S) (BEP 3, compact peers BEP 23) and UDP (BEP 15), tried tier by tier
//! (BEP 12). Request building and response parsing are sans-IO; `announce` does the I/O.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use crate::{
    bencode::{self, Limits, Value},
    magnet::percent_encode,
};

pub const MAX_PEERS_PER_REPLY: usize = 2000;

/// Why an announce failed. Text from the tracker is kept as it came (lossy UTF-8, bounded);
/// it is sanitised where it is shown.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("tracker reply: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("tracker refused: {0}")]
    Refused(String),
    #[error("bad UDP {0} reply")]
    BadUdpReply(&'static str),
    #[error("reply over 1 MiB")]
    TooLarge,
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no address")]
    NoAddress,
    #[error("no reply")]
    NoReply,
    #[error("unsupported tracker scheme")]
    UnsupportedScheme,
    #[error("no trackers")]
    NoTrackers,
    /// One tracker's failure, with its URL.
    #[error("{url}: {error}")]
    At { url: String, error: Box<TrackerError> },
    /// Every tracker of every tier failed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    All(Vec<TrackerError>),
}

impl TrackerError {
    fn at(url: &str) -> impl FnOnce(TrackerError) -> TrackerError + '_ {
        move |error| TrackerError::At { url: url.to_string(), error: Box::new(error) }
    }
}
const MAX_HTTP_REPLY: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    fn http(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
    fn udp(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Announce {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    pub numwant: u32,
    pub key: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceReply {
    pub interval: u32,
    pub peers: Vec<SocketAddr>,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
}

/// The announce URL with its query (info hash and peer id percent-encoded byte by byte).
pub fn http_url(base: &str, a: &Announce) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut u = format!(
        "{base}{sep}info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant={}&key={:08x}",
        percent_encode(&a.info_hash),
        percent_encode(&a.peer_id),
        a.port,
        a.uploaded,
        a.downloaded,
        a.left,
        a.numwant,
        a.key
    );
    if let Some(e) = a.event.http() {
        u.push_str("&event=");
        u.push_str(e);
    }
    u
}

fn compact_v4(b: &[u8], out: &mut Vec<SocketAddr>) {
    for c in b.chunks_exact(6).take(MAX_PEERS_PER_REPLY) {
        let port = u16::from_be_bytes([c[4], c[5]]);
        if port != 0 {
            out.push(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(c[0], c[1], c[2], c[3]), port)));
        }
    }
}

fn compact_v6(b: &[u8], out: &mut Vec<SocketAddr>) {
    for c in b.chunks_exact(18).take(MAX_PEERS_PER_REPLY) {
        let ip: [u8; 16] = c[..16].try_into().expect("16 bytes");
        let port = u16::from_be_bytes([c[16], c[17]]);
        if port != 0 {
            out.push(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0)));
        }
    }
}

/// Parses an HTTP tracker's bencoded reply.
pub fn parse_http_reply(body: &[u8]) -> Result<AnnounceReply, TrackerError> {
    let v = bencode::decode(body, Limits::MESSAGE)?;
    if let Some(f) = v.get("failure reason") {
        let why = f.as_bytes().unwrap_or(b"?");
        return Err(TrackerError::Refused(String::from_utf8_lossy(&why[..why.len().min(300)]).into_owned()));
    }
    let interval = v.get("interval").and_then(Value::as_int).unwrap_or(1800).clamp(10, 86_400) as u32;
    let mut peers = Vec::new();
    match v.get("peers") {
        Some(Value::Bytes(b)) => compact_v4(b, &mut peers),
        Some(Value::List(l)) => {
            for p in l.iter().take(MAX_PEERS_PER_REPLY) {
                let ip = p.get("ip").and_then(Value::as_str).and_then(|s| s.parse::<std::net::IpAddr>().ok());
                let port = p.get("port").and_then(Value::as_int).filter(|p| (1..=65535).contains(p));
                if let (Some(ip), Some(port)) = (ip, port) {
                    peers.push(SocketAddr::new(ip, port as u16));
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Bytes(b)) = v.get("peers6") {
        compact_v6(b, &mut peers);
    }
    let count = |k| v.get(k).and_then(Value::as_int).filter(|n| *n >= 0).map(|n| n.min(u32::MAX as i64) as u32);
    Ok(AnnounceReply { interval, peers, seeders: count("complete"), leechers: count("incomplete") })
}

pub const UDP_MAGIC: u64 = 0x41727101980;

pub fn udp_connect_request(tx: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&UDP_MAGIC.to_be_bytes());
    b[12..].copy_from_slice(&tx.to_be_bytes());
    b
}

fn udp_error(b: &[u8]) -> Option<TrackerError> {
    (b.len() >= 8 && u32::from_be_bytes(b[..4].try_into().ok()?) == 3)
        .then(|| TrackerError::Refused(String::from_utf8_lossy(&b[8..b.len().min(300)]).into_owned()))
}

pub fn parse_udp_connect(b: &[u8], tx: u32) -> Result<u64, TrackerError> {
    if let Some(e) = udp_error(b) {
        return Err(e);
    }
    if b.len() < 16 || b[..4] != [0, 0, 0, 0] || b[4..8] != tx.to_be_bytes() {
        return Err(TrackerError::BadUdpReply("connect"));
    }
    Ok(u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")))
}

pub fn udp_announce_request(conn: u64, tx: u32, a: &Announce) -> [u8; 98] {
    let mut b = [0u8; 98];
    b[..8].copy_from_slice(&conn.to_be_bytes());
    b[8..12].copy_from_slice(&1u32.to_be_bytes());
    b[12..16].copy_from_slice(&tx.to_be_bytes());
    b[16..36].copy_from_slice(&a.info_hash);
    b[36..56].copy_from_slice(&a.peer_id);
    b[56..64].copy_from_slice(&a.downloaded.to_be_bytes());
    b[64..72].copy_from_slice(&a.left.to_be_bytes());
    b[72..80].copy_from_slice(&a.uploaded.to_be_bytes());
    b[80..84].copy_from_slice(&a.event.udp().to_be_bytes());
    // 84..88 IP = 0 (the sender's)
    b[88..92].copy_from_slice(&a.key.to_be_bytes());
    b[92..96].copy_from_slice(&(a.numwant as i32).to_be_bytes());
    b[96..98].copy_from_slice(&a.port.to_be_bytes());
    b
}

pub fn parse_udp_announce(b: &[u8], tx: u32, v6: bool) -> Result<AnnounceReply, TrackerError> {
    if let Some(e) = udp_error(b) {
        return Err(e);
    }
    if b.len() < 20 || b[..4] != [0, 0, 0, 1] || b[4..8] != tx.to_be_bytes() {
        return Err(TrackerError::BadUdpReply("announce"));
    }
    let word = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let mut peers = Vec::new();
    if v6 {
        compact_v6(&b[20..], &mut peers);
    } else {
        compact_v4(&b[20..], &mut peers);
    }
    Ok(AnnounceReply { interval: word(8).clamp(10, 86_400), leechers: Some(word(12)), seeders: Some(word(16)), peers })
}

async fn announce_http(client: &reqwest::Client, url: &str, a: &Announce) -> Result<AnnounceReply, TrackerError> {
    let full = http_url(url, a);
    let mut resp = client.get(&full).timeout(Duration::from_secs(15)).send().await?;
    if !resp.status().is_success() {
        return Err(TrackerError::Status(resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_HTTP_REPLY {
            return Err(TrackerError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    parse_http_reply(&body)
}

/// Where a UDP tracker's datagrams go: straight to it, or through the proxy's UDP relay.
enum UdpLink {
    Direct(tokio::net::UdpSocket),
    Relay(chiral_sdk::net::UdpRelay, String, u16),
}

impl UdpLink {
    async fn send(&self, data: &[u8]) -> std::io::Result<()> {
        match self {
            UdpLink::Direct(s) => s.send(data).await.map(|_| ()),
            UdpLink::Relay(r, host, port) => r.send_to(data, host, *port).await,
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            UdpLink::Direct(s) => s.recv(buf).await,
            UdpLink::Relay(r, ..) => r.recv(buf).await,
        }
    }
}

/// BEP 15 over UDP, through `proxy`'s UDP relay when one is given (the tracker's name then
/// goes to the proxy, never to a local resolver with `socks5h://`).
async fn announce_udp(
    url: &str,
    a: &Announce,
    proxy: Option<&chiral_sdk::net::Proxy>,
) -> Result<AnnounceReply, TrackerError> {
    let hostport = url
        .strip_prefix("udp://")
        .ok_or(TrackerError::UnsupportedScheme)?
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_string();
    let (link, v6) = match proxy {
        Some(p) => {
            let (host, port) = hostport.rsplit_once(':').ok_or(TrackerError::NoAddress)?;
            let port: u16 = port.parse().map_err(|_| TrackerError::NoAddress)?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let v6 = host.parse::<std::net::Ipv6Addr>().is_ok();
            (UdpLink::Relay(p.udp_associate().await?, host, port), v6)
        }
        None => {
            let addr = tokio::net::lookup_host(&hostport).await?.next().ok_or(TrackerError::NoAddress)?;
            let bind: SocketAddr =
                if addr.is_ipv4() { "0.0.0.0:0".parse().expect("addr") } else { "[::]:0".parse().expect("addr") };
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.connect(addr).await?;
            (UdpLink::Direct(sock), addr.is_ipv6())
        }
    };
    let mut buf = vec![0u8; 20 + 18 * MAX_PEERS_PER_REPLY];
    for attempt in 0..3u32 {
        let wait = Duration::from_secs(2 << attempt);
        let tx = crate::random_u32();
        let _ = link.send(&udp_connect_request(tx)).await;
        let conn = match tokio::time::timeout(wait, link.recv(&mut buf)).await {
            Ok(Ok(n)) => parse_udp_connect(&buf[..n], tx)?,
            _ => continue,
        };
        let tx = crate::random_u32();
        let _ = link.send(&udp_announce_request(conn, tx, a)).await;
        match tokio::time::timeout(wait, link.recv(&mut buf)).await {
            Ok(Ok(n)) => return parse_udp_announce(&buf[..n], tx, v6),
            _ => continue,
        }
    }
    Err(TrackerError::NoReply)
}

/// Announces to one tracker URL.
/// `proxy`: UDP trackers are asked through its UDP relay (HTTP ones through `client`, which
/// has the proxy already).
pub async fn announce(
    client: &reqwest::Client,
    url: &str,
    a: &Announce,
    proxy: Option<&chiral_sdk::net::Proxy>,
) -> Result<AnnounceReply, TrackerError> {
    let r = if url.starts_with("udp://") {
        announce_udp(url, a, proxy).await
    } else if url.starts_with("http://") || url.starts_with("https://") {
        announce_http(client, url, a).await
    } else {
        Err(TrackerError::UnsupportedScheme)
    };
    r.map_err(TrackerError::at(url))
}

/// Announces tier by tier (BEP 12): the first tracker of a tier that answers wins and moves to
/// the front of its tier; the next tier is only tried when a whole tier failed.
pub async fn announce_tiers(
    client: &reqwest::Client,
    tiers: &mut [Vec<String>],
    a: &Announce,
    proxy: Option<&chiral_sdk::net::Proxy>,
) -> Result<AnnounceReply, TrackerError> {
    let mut errors = Vec::new();
    for tier in tiers.iter_mut() {
        for i in 0..tier.len() {
            match announce(client, &tier[i], a, proxy).await {
                Ok(r) => {
                    let u = tier.remove(i);
                    tier.insert(0, u);
                    return Ok(r);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    Err(if errors.is_empty() { TrackerError::NoTrackers } else { TrackerError::All(errors) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Announce {
        Announce {
            info_hash: [0xab; 20],
            peer_id: *b"-CH0001-abcdefghijkl",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Started,
            numwant: 50,
            key: 7,
        }
    }

    #[test]
    fn http_url_encodes_binary() {
        let u = http_url("http://t:1/announce", &a());
        assert!(u.starts_with("http://t:1/announce?info_hash=%AB%AB"), "{u}");
        assert!(u.contains("&peer_id=-CH0001-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=3&compact=1"));
        assert!(u.ends_with("&event=started"));
        assert!(http_url("http://t/a?k=v", &a()).starts_with("http://t/a?k=v&info_hash="));
    }

    #[test]
    fn http_replies() {
        let r =
            parse_http_reply(b"d8:intervali900e5:peers12:\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x00\x50e").unwrap();
        assert_eq!(r.interval, 900);
        assert_eq!(r.peers, vec!["127.0.0.1:6881".parse().unwrap(), "10.0.0.2:80".parse().unwrap()]);
        let r = parse_http_reply(b"d8:intervali60e5:peersld2:ip9:127.0.0.14:porti51413eeee").unwrap();
        assert_eq!(r.peers, vec!["127.0.0.1:51413".parse().unwrap()]);
        let e = parse_http_reply(b"d14:failure reason25:Requested download is note").unwrap_err();
        assert!(matches!(&e, TrackerError::Refused(why) if why.contains("Requested download")), "{e}");
        assert!(parse_http_reply(b"<html>").is_err());
        // a trailing partial compact entry is ignored, a zero port dropped
        let r = parse_http_reply(b"d5:peers8:\x7f\x00\x00\x01\x00\x00\x01\x02e").unwrap();
        assert!(r.peers.is_empty());
        assert_eq!(r.interval, 1800);
    }

    #[test]
    fn udp_packets() {
        let c = udp_connect_request(0x01020304);
        assert_eq!(&c[..8], &UDP_MAGIC.to_be_bytes());
        assert_eq!(&c[8..], &[0, 0, 0, 0, 1, 2, 3, 4]);
        let mut reply = vec![0, 0, 0, 0, 1, 2, 3, 4];
        reply.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(parse_udp_connect(&reply, 0x01020304).unwrap(), 42);
        assert!(parse_udp_connect(&reply, 9).is_err());
        assert!(parse_udp_connect(&reply[..10], 0x01020304).is_err());
        let req = udp_announce_request(42, 5, &a());
        assert_eq!(&req[8..12], &[0, 0, 0, 1]);
        assert_eq!(&req[80..84], &[0, 0, 0, 2]);
        assert_eq!(&req[96..], &6881u16.to_be_bytes());
        let mut ar = vec![0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 60, 0, 0, 0, 1, 0, 0, 0, 2];
        ar.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1]);
        let r = parse_udp_announce(&ar, 5, false).unwrap();
        assert_eq!((r.interval, r.leechers, r.seeders), (60, Some(1), Some(2)));
        assert_eq!(r.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
        let mut err = vec![0, 0, 0, 3, 0, 0, 0, 5];
        err.extend_from_slice(b"nope");
        assert_eq!(parse_udp_announce(&err, 5, false).unwrap_err().to_string(), "tracker refused: nope");
    }
}
