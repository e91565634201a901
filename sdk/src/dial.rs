//! Which addresses a plugin may dial when the address came from the network.
//!
//! A tracker, the DHT or another peer can name any address as a "peer": a public torrent
//! whose tracker answers `127.0.0.1:6379` or `192.168.1.1:80` would make every client that
//! downloads it knock on services of the user's own machine or network (the server-side
//! request forgery class libtorrent filters). [`DialPolicy`] allows a loopback or private
//! address only when something the user chose is itself that local: a tracker, a peer or a
//! DHT bootstrap node given by the torrent, the magnet or the user on loopback allows loopback
//! and private peers; one on a private network allows private peers; or the user turns the
//! check off (`allow_local_peers`). Unspecified, multicast and broadcast addresses and port 0
//! are never dialled.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How local an address is, from the world's view to the machine's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Anywhere on the Internet.
    Global,
    /// A private, shared (carrier-grade NAT), link-local or unique-local network.
    Private,
    /// This machine.
    Loopback,
}

/// Where an address leads; `None` for addresses no peer can have (unspecified, multicast,
/// broadcast).
pub fn reach(ip: IpAddr) -> Option<Reach> {
    match ip {
        IpAddr::V4(v4) => reach_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => reach_v4(v4),
            None => reach_v6(v6),
        },
    }
}

fn reach_v4(ip: Ipv4Addr) -> Option<Reach> {
    let o = ip.octets();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || o[0] == 0 {
        None
    } else if ip.is_loopback() {
        Some(Reach::Loopback)
    } else if ip.is_private() || ip.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Some(Reach::Private)
    } else {
        Some(Reach::Global)
    }
}

fn reach_v6(ip: Ipv6Addr) -> Option<Reach> {
    let first = ip.segments()[0];
    if ip.is_unspecified() || ip.is_multicast() {
        None
    } else if ip.is_loopback() {
        Some(Reach::Loopback)
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        Some(Reach::Private)
    } else {
        Some(Reach::Global)
    }
}

/// How local a host named by a URL or `host:port` is: an IP literal by its address,
/// `localhost` as loopback, any other name as global (it is not resolved here).
pub fn reach_of_host(host_or_url: &str) -> Option<Reach> {
    let s = host_or_url.trim();
    let host = match url::Url::parse(s) {
        Ok(u) if u.has_host() => match u.host()? {
            url::Host::Ipv4(v4) => return reach(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => return reach(IpAddr::V6(v6)),
            url::Host::Domain(d) => d.to_string(),
        },
        _ => s.to_string(),
    };
    if let Ok(sa) = host.parse::<SocketAddr>() {
        return reach(sa.ip());
    }
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return reach(ip);
    }
    let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h).trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        Some(Reach::Loopback)
    } else {
        Some(Reach::Global)
    }
}

/// What a URL that a torrent or a magnet names is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedUrl {
    /// A tracker (`announce`, `announce-list`, `tr=`).
    Tracker,
    /// A web seed (`url-list`, `ws=`).
    WebSeed,
}

/// Why a URL that a torrent or a magnet names must not be requested, or `None` when it may be.
/// A torrent from the Internet could name a service of the user's own machine or network as a
/// "tracker" or "web seed" and have every client that opens it send a request there; so, like
/// libtorrent's SSRF mitigation (extended from loopback to private networks), a tracker on a
/// loopback or private address must be an `/announce` path, and a web seed there may carry no
/// query string. No address a peer cannot have (unspecified, multicast, broadcast) is requested.
/// What the user names directly (`--option tracker=`, `web_seed=`) is not checked.
pub fn refuse_named_url(url: &str, what: NamedUrl) -> Option<String> {
    let Ok(u) = url::Url::parse(url.trim()) else {
        return Some("not a URL".into());
    };
    if !u.has_host() {
        return Some("no host".into());
    }
    match reach_of_host(url) {
        None => Some("an address no server can have".into()),
        Some(Reach::Global) => None,
        Some(_) if u.scheme() == "udp" => None,
        Some(_) => match what {
            NamedUrl::Tracker if !u.path().ends_with("/announce") => {
                Some("a tracker on a local address must be an /announce URL".into())
            }
            NamedUrl::WebSeed if u.query().is_some() => {
                Some("a web seed on a local address may not carry a query string".into())
            }
            _ => None,
        },
    }
}

/// Whether an HTTP redirect from `from` to `to` (a tracker's, a web seed's or a `.torrent`
/// URL's) may be followed: never to a host more local than the one that redirected (a public
/// server cannot bounce a request onto the user's machine or network), never to an address no
/// server can have.
pub fn redirect_permitted(from: &str, to: &str) -> bool {
    match (reach_of_host(from), reach_of_host(to)) {
        (Some(f), Some(t)) => t <= f,
        _ => false,
    }
}

/// The addresses one download may dial (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialPolicy {
    /// The most local reach allowed.
    up_to: Reach,
}

impl Default for DialPolicy {
    /// Global addresses only.
    fn default() -> Self {
        Self { up_to: Reach::Global }
    }
}

impl DialPolicy {
    /// Every address a peer can have (the user allowed local peers).
    pub fn any() -> Self {
        Self { up_to: Reach::Loopback }
    }

    /// The policy of a download whose chosen endpoints are `origins` (tracker URLs, peer
    /// addresses, DHT bootstrap nodes, as URLs or `host:port`): as local as the most local
    /// of them; a loopback origin allows private addresses too.
    pub fn from_origins<S: AsRef<str>>(origins: impl IntoIterator<Item = S>) -> Self {
        let mut p = Self::default();
        p.widen(origins);
        p
    }

    /// Allows what `origins` allow too.
    pub fn widen<S: AsRef<str>>(&mut self, origins: impl IntoIterator<Item = S>) {
        for o in origins {
            if let Some(r) = reach_of_host(o.as_ref()) {
                self.up_to = self.up_to.max(r);
            }
        }
    }

    /// Allows addresses as local as `addr` (an address the user or the torrent named).
    pub fn widen_to(&mut self, addr: SocketAddr) {
        if let Some(r) = reach(addr.ip()) {
            self.widen_to_reach(r);
        }
    }

    /// Allows addresses as local as `reach`.
    pub fn widen_to_reach(&mut self, reach: Reach) {
        self.up_to = self.up_to.max(reach);
    }

    /// Whether an address of this reach may be dialled.
    pub fn allows(&self, reach: Reach) -> bool {
        reach <= self.up_to
    }

    /// Whether `addr`, learned from the network, may be dialled.
    pub fn permits(&self, addr: SocketAddr) -> bool {
        addr.port() != 0 && reach(addr.ip()).is_some_and(|r| self.allows(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_by_reach() {
        let cases = [
            ("127.0.0.1:1", Some(Reach::Loopback)),
            ("[::1]:1", Some(Reach::Loopback)),
            ("[::ffff:127.0.0.2]:1", Some(Reach::Loopback)),
            ("10.1.2.3:1", Some(Reach::Private)),
            ("172.16.0.1:1", Some(Reach::Private)),
            ("192.168.1.1:1", Some(Reach::Private)),
            ("169.254.1.1:1", Some(Reach::Private)),
            ("100.64.0.1:1", Some(Reach::Private)),
            ("[fd00::1]:1", Some(Reach::Private)),
            ("[fe80::1]:1", Some(Reach::Private)),
            ("8.8.8.8:1", Some(Reach::Global)),
            ("100.128.0.1:1", Some(Reach::Global)),
            ("[2001:db8::1]:1", Some(Reach::Global)),
            ("0.0.0.0:1", None),
            ("0.1.2.3:1", None),
            ("224.0.0.1:1", None),
            ("255.255.255.255:1", None),
            ("[::]:1", None),
            ("[ff02::1]:1", None),
        ];
        for (a, want) in cases {
            assert_eq!(reach(sa(a).ip()), want, "{a}");
        }
    }

    #[test]
    fn hosts_of_urls_and_names() {
        assert_eq!(reach_of_host("http://127.0.0.1:6969/announce"), Some(Reach::Loopback));
        assert_eq!(reach_of_host("udp://[::1]:6969"), Some(Reach::Loopback));
        assert_eq!(reach_of_host("http://LocalHost:80/x"), Some(Reach::Loopback));
        assert_eq!(reach_of_host("192.168.0.9:6881"), Some(Reach::Private));
        assert_eq!(reach_of_host("router.bittorrent.com:6881"), Some(Reach::Global));
        assert_eq!(reach_of_host("https://tracker.example.org/announce"), Some(Reach::Global));
        assert_eq!(reach_of_host("http://0.0.0.0/"), None);
    }

    #[test]
    fn local_trackers_and_web_seeds_named_by_a_torrent() {
        use NamedUrl::*;
        assert_eq!(refuse_named_url("https://tracker.example.org/x?y=1", Tracker), None);
        assert_eq!(refuse_named_url("http://127.0.0.1:6969/announce", Tracker), None);
        assert_eq!(refuse_named_url("http://127.0.0.1:6969/announce?passkey=1", Tracker), None);
        assert_eq!(refuse_named_url("udp://127.0.0.1:6969", Tracker), None);
        assert!(refuse_named_url("http://127.0.0.1:6379/flushall", Tracker).is_some());
        assert!(refuse_named_url("http://192.168.1.1/admin/reboot.cgi", Tracker).is_some());
        assert!(refuse_named_url("http://localhost:8080/api", Tracker).is_some());
        assert!(refuse_named_url("http://0.0.0.0/announce", Tracker).is_some());
        assert!(refuse_named_url("not a url", Tracker).is_some());
        assert_eq!(refuse_named_url("http://127.0.0.1:8080/files/", WebSeed), None);
        assert_eq!(refuse_named_url("http://mirror.example.org/f?x=1", WebSeed), None);
        assert!(refuse_named_url("http://10.0.0.1/cgi-bin/x?cmd=reboot", WebSeed).is_some());
    }

    #[test]
    fn redirects_never_lead_somewhere_more_local() {
        assert!(redirect_permitted("https://a.example.org/t", "https://b.example.org/t"));
        assert!(redirect_permitted("http://127.0.0.1:1/a", "http://127.0.0.1:2/b"));
        assert!(redirect_permitted("http://192.168.0.2/a", "https://example.org/b"));
        assert!(!redirect_permitted("https://a.example.org/t", "http://127.0.0.1:6379/"));
        assert!(!redirect_permitted("https://a.example.org/t", "http://192.168.1.1/"));
        assert!(!redirect_permitted("https://a.example.org/t", "http://localhost/"));
        assert!(!redirect_permitted("http://192.168.0.2/a", "http://127.0.0.1/"));
        assert!(!redirect_permitted("https://a.example.org/t", "http://0.0.0.0/"));
    }

    #[test]
    fn a_public_torrent_dials_no_local_peer() {
        let p = DialPolicy::from_origins(["https://tracker.example.org/announce", "router.bittorrent.com:6881"]);
        assert!(p.permits(sa("8.8.8.8:6881")));
        assert!(!p.permits(sa("127.0.0.1:6379")));
        assert!(!p.permits(sa("192.168.1.1:80")));
        assert!(!p.permits(sa("[::1]:6881")));
        assert!(!p.permits(sa("8.8.8.8:0")));
        assert!(!p.permits(sa("0.0.0.0:6881")));
    }

    #[test]
    fn a_local_origin_or_the_user_allows_local_peers() {
        let lan = DialPolicy::from_origins(["http://192.168.1.5:6969/announce"]);
        assert!(lan.permits(sa("192.168.1.7:6881")) && !lan.permits(sa("127.0.0.1:6881")));
        let lo = DialPolicy::from_origins(["http://127.0.0.1:6969/announce"]);
        assert!(lo.permits(sa("127.0.0.1:6881")) && lo.permits(sa("10.0.0.2:6881")));
        let mut by_peer = DialPolicy::default();
        by_peer.widen_to(sa("127.0.0.1:51413"));
        assert!(by_peer.permits(sa("127.0.0.1:6881")));
        assert!(DialPolicy::any().permits(sa("127.0.0.1:6881")));
        assert!(!DialPolicy::any().permits(sa("224.0.0.1:6881")));
    }
}
