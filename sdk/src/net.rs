//! Outgoing TCP connections, direct or through the user's proxy: the one dialer every plugin
//! uses, so that a proxy set in the host's configuration covers every connection.
//!
//! Proxies: `socks5h://` (names resolved by the proxy), `socks5://` (names resolved here, which
//! tells the local resolver which hosts are contacted), `http://` (HTTP `CONNECT`). Credentials
//! come from the URL's user info (`socks5h://user:pass@host:port`); they are never formatted
//! into a message ([`Proxy`]'s `Display` hides the password).
//!
//! While a proxy is set a plugin must not open any other socket to the network: no direct TCP,
//! no UDP (neither SOCKS5 `UDP ASSOCIATE` nor HTTP can carry it here), no advertised listener.

use std::{io, net::IpAddr, time::Duration};

use percent_encoding::percent_decode_str;
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};
use tokio_socks::tcp::Socks5Stream;

use crate::abi::HostConfig;

/// How long a proxy may take to answer its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest HTTP `CONNECT` reply head read.
const MAX_CONNECT_REPLY: usize = 8 * 1024;

/// A proxy URL that cannot be used (never ignored: a download that should be proxied does not
/// go out directly instead).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("proxy URL is not a URL: {0}")]
    NotUrl(String),
    #[error("proxy scheme {0:?} is not supported (socks5h://, socks5://, http://)")]
    Scheme(String),
    #[error("proxy URL has no host")]
    NoHost,
    #[error("proxy URL has no port")]
    NoPort,
    #[error("proxy URL has a path, query or fragment")]
    Extra,
    #[error("proxy user name or password is longer than 255 bytes")]
    LongCredentials,
}

/// How the proxy is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// SOCKS5; `remote_dns`: host names go to the proxy (`socks5h://`).
    Socks5 { remote_dns: bool },
    /// HTTP `CONNECT` (`http://`).
    HttpConnect,
}

/// A parsed proxy URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    user: Option<String>,
    password: Option<String>,
    /// The URL as given (for clients that take a URL, e.g. reqwest). Secret: holds the password.
    url: String,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// `scheme://[user:***@]host:port`: the password never shows.
impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Socks5 { remote_dns: true } => "socks5h",
            ProxyKind::Socks5 { remote_dns: false } => "socks5",
            ProxyKind::HttpConnect => "http",
        };
        write!(f, "{scheme}://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}{}@", if self.password.is_some() { ":***" } else { "" })?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Proxy {
    /// Parses `socks5h://[user:pass@]host:port`, `socks5://...` or `http://...`.
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        let text = text.trim();
        let url = url::Url::parse(text).map_err(|e| ProxyError::NotUrl(e.to_string()))?;
        let kind = match url.scheme() {
            "socks5h" => ProxyKind::Socks5 { remote_dns: true },
            "socks5" => ProxyKind::Socks5 { remote_dns: false },
            "http" => ProxyKind::HttpConnect,
            other => return Err(ProxyError::Scheme(other.to_string())),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(ProxyError::NoHost),
        };
        if host.is_empty() {
            return Err(ProxyError::NoHost);
        }
        let port = match (url.port(), kind) {
            (Some(p), _) => p,
            (None, ProxyKind::HttpConnect) => 80,
            (None, ProxyKind::Socks5 { .. }) => 1080,
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(ProxyError::Extra);
        }
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = Some(decode(url.username())).filter(|u| !u.is_empty());
        let password = url.password().map(decode);
        if user.as_ref().is_some_and(|u| u.len() > 255) || password.as_ref().is_some_and(|p| p.len() > 255) {
            return Err(ProxyError::LongCredentials);
        }
        Ok(Self { kind, host, port, user, password, url: text.to_string() })
    }

    /// The host's proxy: `None` when none is set; an unusable URL is an error.
    pub fn from_config(config: &HostConfig) -> Result<Option<Self>, ProxyError> {
        match config.proxy_url().map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(None),
            Some(p) => Self::parse(p).map(Some),
        }
    }

    /// The URL as given, credentials included (for clients that take a proxy URL).
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn connect_to_proxy(&self, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("proxy host {} not found", self.host)))?;
        connect_socket(addr, rcvbuf).await
    }

    async fn tunnel(&self, host: &str, port: u16, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
        let stream = self.connect_to_proxy(rcvbuf).await?;
        let work = async {
            match self.kind {
                ProxyKind::Socks5 { remote_dns } => {
                    let target = match host.parse::<IpAddr>() {
                        Ok(ip) => tokio_socks::TargetAddr::Ip((ip, port).into()),
                        Err(_) if remote_dns => tokio_socks::TargetAddr::Domain(host.to_string().into(), port),
                        Err(_) => tokio::net::lookup_host((host, port))
                            .await?
                            .next()
                            .map(tokio_socks::TargetAddr::Ip)
                            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} not found")))?,
                    };
                    let s = match (&self.user, &self.password) {
                        (Some(u), p) => {
                            Socks5Stream::connect_with_password_and_socket(
                                stream,
                                target,
                                u,
                                p.as_deref().unwrap_or(""),
                            )
                            .await
                        }
                        (None, _) => Socks5Stream::connect_with_socket(stream, target).await,
                    };
                    s.map(Socks5Stream::into_inner).map_err(socks_error)
                }
                ProxyKind::HttpConnect => self.http_connect(stream, host, port).await,
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the proxy did not answer in time"))?
    }

    async fn http_connect(&self, mut stream: TcpStream, host: &str, port: u16) -> io::Result<TcpStream> {
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        if authority.contains(['\r', '\n', ' ']) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad host name"));
        }
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(u) = &self.user {
            let token = data_encoding::BASE64
                .encode(format!("{u}:{}", self.password.as_deref().unwrap_or_default()).as_bytes());
            req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        // Read the reply head byte by byte: nothing past it may be consumed (it is the tunnel's).
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_CONNECT_REPLY {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the proxy's CONNECT reply is too long"));
            }
            let b = stream.read_u8().await?;
            head.push(b);
        }
        let status = parse_connect_status(&head)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the proxy's CONNECT reply is not HTTP"))?;
        if !(200..300).contains(&status) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the proxy refused CONNECT {authority} (HTTP {status})"),
            ));
        }
        Ok(stream)
    }
}

/// The status code of an HTTP reply head (`HTTP/1.x NNN ...`).
fn parse_connect_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// A UDP path through a SOCKS5 proxy (RFC 1928 `UDP ASSOCIATE`): each datagram goes to the
/// proxy's relay with the destination in a header, and answers come back the same way. Lives
/// as long as its control connection to the proxy (kept here). Not every proxy relays UDP
/// (microsocks does not; Dante does): [`Proxy::udp_associate`] says so in its error.
pub struct UdpRelay {
    _control: TcpStream,
    socket: tokio::net::UdpSocket,
    relay: std::net::SocketAddr,
    remote_dns: bool,
}

/// The SOCKS5 address field (`ATYP`, address, port) for `host:port`.
fn socks_address(host: &str, port: u16, out: &mut Vec<u8>) -> io::Result<()> {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            out.push(1);
            out.extend_from_slice(&v4.octets());
        }
        Ok(IpAddr::V6(v6)) => {
            out.push(4);
            out.extend_from_slice(&v6.octets());
        }
        Err(_) if host.is_empty() || host.len() > 255 => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a host name of 1 to 255 bytes"))
        }
        Err(_) => {
            out.push(3);
            out.push(host.len() as u8);
            out.extend_from_slice(host.as_bytes());
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    Ok(())
}

/// Reads a SOCKS5 address field at the start of `b`: the address and the field's length.
fn read_socks_address(b: &[u8]) -> Option<(Option<std::net::SocketAddr>, usize)> {
    let (ip, len): (Option<IpAddr>, usize) = match *b.first()? {
        1 => (Some(IpAddr::from(<[u8; 4]>::try_from(b.get(1..5)?).ok()?)), 4),
        4 => (Some(IpAddr::from(<[u8; 16]>::try_from(b.get(1..17)?).ok()?)), 16),
        3 => (None, 1 + *b.get(1)? as usize),
        _ => return None,
    };
    let port = u16::from_be_bytes(b.get(1 + len..3 + len)?.try_into().ok()?);
    Some((ip.map(|ip| std::net::SocketAddr::new(ip, port)), 3 + len))
}

impl UdpRelay {
    /// Sends `data` to `host:port` through the relay (a name is resolved by the proxy with
    /// `socks5h://`, here with `socks5://`).
    pub async fn send_to(&self, data: &[u8], host: &str, port: u16) -> io::Result<()> {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let resolved;
        let host = if !self.remote_dns && host.parse::<IpAddr>().is_err() {
            resolved = tokio::net::lookup_host((host, port))
                .await?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} not found")))?
                .ip()
                .to_string();
            resolved.as_str()
        } else {
            host
        };
        let mut packet = vec![0, 0, 0];
        socks_address(host, port, &mut packet)?;
        packet.extend_from_slice(data);
        self.socket.send_to(&packet, self.relay).await.map(|_| ())
    }

    /// The next datagram from the relay, its header removed: its payload's length in `buf`.
    /// Datagrams from anywhere but the relay, fragments and malformed headers are dropped.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut packet = vec![0u8; buf.len() + 262];
        loop {
            let (n, from) = self.socket.recv_from(&mut packet).await?;
            if from != self.relay || n < 4 || packet[2] != 0 {
                continue;
            }
            let Some((_, len)) = read_socks_address(&packet[3..n]) else { continue };
            let payload = &packet[3 + len..n];
            let m = payload.len().min(buf.len());
            buf[..m].copy_from_slice(&payload[..m]);
            return Ok(m);
        }
    }
}

impl Proxy {
    /// A UDP relay through this proxy (SOCKS5 `UDP ASSOCIATE`). An HTTP proxy cannot carry UDP,
    /// and a SOCKS5 proxy may refuse: both are errors, never a reason to send UDP directly.
    pub async fn udp_associate(&self) -> io::Result<UdpRelay> {
        let ProxyKind::Socks5 { remote_dns } = self.kind else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "an HTTP proxy cannot carry UDP"));
        };
        let work = async {
            let mut control = self.connect_to_proxy(None).await?;
            let local = control.local_addr()?;
            let socket = tokio::net::UdpSocket::bind((local.ip(), 0)).await?;
            // Greeting, and user/password (RFC 1929) when the URL has them.
            let auth = self.user.is_some();
            control.write_all(if auth { &[5, 2, 0, 2] } else { &[5, 1, 0] }).await?;
            let mut two = [0u8; 2];
            control.read_exact(&mut two).await?;
            match two {
                [5, 0] => {}
                [5, 2] if auth => {
                    let (u, p) = (self.user.as_deref().unwrap_or(""), self.password.as_deref().unwrap_or(""));
                    let mut m = vec![1, u.len() as u8];
                    m.extend_from_slice(u.as_bytes());
                    m.push(p.len() as u8);
                    m.extend_from_slice(p.as_bytes());
                    control.write_all(&m).await?;
                    control.read_exact(&mut two).await?;
                    if two[1] != 0 {
                        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "proxy: login refused"));
                    }
                }
                _ => return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "proxy: no acceptable login method")),
            }
            // UDP ASSOCIATE, naming the address our datagrams will come from.
            let from = socket.local_addr()?;
            let mut req = vec![5, 3, 0];
            socks_address(&from.ip().to_string(), from.port(), &mut req)?;
            control.write_all(&req).await?;
            let mut head = [0u8; 4];
            control.read_exact(&mut head).await?;
            if head[1] != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the proxy does not relay UDP (UDP ASSOCIATE answered {})", head[1]),
                ));
            }
            let rest = match head[3] {
                1 => 6,
                4 => 18,
                3 => {
                    let mut l = [0u8; 1];
                    control.read_exact(&mut l).await?;
                    l[0] as usize + 2
                }
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "proxy: bad address type")),
            };
            let mut addr = vec![head[3]];
            if head[3] == 3 {
                addr.push((rest - 2) as u8);
            }
            let mut tail = vec![0u8; rest];
            control.read_exact(&mut tail).await?;
            addr.extend_from_slice(&tail);
            let bound = read_socks_address(&addr).and_then(|(a, _)| a);
            // An unspecified (or named) relay address means "the proxy's own address".
            let relay = match bound {
                Some(a) if !a.ip().is_unspecified() => a,
                Some(a) => std::net::SocketAddr::new(control.peer_addr()?.ip(), a.port()),
                None => {
                    let port = u16::from_be_bytes([tail[rest - 2], tail[rest - 1]]);
                    std::net::SocketAddr::new(control.peer_addr()?.ip(), port)
                }
            };
            Ok(UdpRelay { _control: control, socket, relay, remote_dns })
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the proxy did not answer in time"))?
    }
}

fn socks_error(e: tokio_socks::Error) -> io::Error {
    match e {
        tokio_socks::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::ConnectionRefused, format!("proxy: {other}")),
    }
}

async fn connect_socket(addr: std::net::SocketAddr, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.connect(addr).await
}

/// A TCP connection to `host:port` (a name or an address), through `proxy` when one is given.
pub async fn dial(proxy: Option<&Proxy>, host: &str, port: u16) -> io::Result<TcpStream> {
    dial_with(proxy, host, port, None).await
}

/// [`dial`], with the socket's receive buffer fixed to `rcvbuf` bytes (for the connection to
/// the proxy when there is one).
pub async fn dial_with(proxy: Option<&Proxy>, host: &str, port: u16, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match proxy {
        Some(p) => p.tunnel(host, port, rcvbuf).await,
        None => {
            let mut last = None;
            for addr in tokio::net::lookup_host((host, port)).await? {
                match connect_socket(addr, rcvbuf).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} not found"))))
        }
    }
}

/// [`dial`] to a socket address.
pub async fn dial_addr(proxy: Option<&Proxy>, addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    match proxy {
        Some(p) => p.tunnel(&addr.ip().to_string(), addr.port(), None).await,
        None => TcpStream::connect(addr).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks_address_fields_both_ways() {
        for (host, port) in [("127.0.0.1", 6969u16), ("::1", 1), ("tracker.example.org", 80)] {
            let mut b = Vec::new();
            socks_address(host, port, &mut b).unwrap();
            let (addr, len) = read_socks_address(&b).unwrap();
            assert_eq!(len, b.len(), "{host}");
            match host.parse::<IpAddr>() {
                Ok(ip) => assert_eq!(addr, Some(std::net::SocketAddr::new(ip, port))),
                Err(_) => assert_eq!((addr, b[0], b[1] as usize), (None, 3, host.len())),
            }
        }
        assert!(socks_address(&"x".repeat(256), 1, &mut Vec::new()).is_err());
        assert!(read_socks_address(&[1, 127, 0]).is_none());
        assert!(read_socks_address(&[3, 200, b'a']).is_none());
        assert!(read_socks_address(&[9]).is_none());
    }

    #[test]
    fn parses_and_hides_the_password() {
        let p = Proxy::parse("socks5h://us%40er:p%3Ass@127.0.0.1:1080").unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5 { remote_dns: true });
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 1080));
        assert_eq!(p.user.as_deref(), Some("us@er"));
        assert_eq!(p.password.as_deref(), Some("p:ss"));
        assert_eq!(p.to_string(), "socks5h://us@er:***@127.0.0.1:1080");
        assert!(!format!("{p:?}").contains("p:ss"));
        assert_eq!(Proxy::parse("http://[::1]:3128").unwrap().to_string(), "http://[::1]:3128");
        assert_eq!(Proxy::parse("socks5://h").unwrap().port, 1080);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(matches!(Proxy::parse("127.0.0.1:1080"), Err(ProxyError::Scheme(_) | ProxyError::NotUrl(_))));
        assert!(matches!(Proxy::parse("socks4://h:1"), Err(ProxyError::Scheme(_))));
        assert!(matches!(Proxy::parse("https://h:1"), Err(ProxyError::Scheme(_))));
        assert!(matches!(Proxy::parse("socks5h://h:1/x"), Err(ProxyError::Extra)));
        assert!(matches!(Proxy::parse("not a url"), Err(ProxyError::NotUrl(_))));
        let long = "a".repeat(256);
        assert_eq!(Proxy::parse(&format!("socks5h://{long}:x@h:1")), Err(ProxyError::LongCredentials));
    }

    #[test]
    fn connect_status() {
        assert_eq!(parse_connect_status(b"HTTP/1.1 200 Connection established\r\n\r\n"), Some(200));
        assert_eq!(parse_connect_status(b"HTTP/1.0 407 Auth\r\n\r\n"), Some(407));
        assert_eq!(parse_connect_status(b"SSH-2.0\r\n\r\n"), None);
    }

    /// A SOCKS5 server on loopback (no auth, CONNECT to an IPv4 address or a name) that
    /// relays one connection: the dialer's bytes arrive at the target.
    #[test]
    fn dials_through_socks5_and_http_connect() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tport = target.local_addr().unwrap().port();
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = target.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut b = [0u8; 5];
                        s.read_exact(&mut b).await.unwrap();
                        s.write_all(&b).await.unwrap();
                    });
                }
            });
            let socks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sport = socks.local_addr().unwrap().port();
            tokio::spawn(async move {
                loop {
                    let (mut c, _) = socks.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut g = [0u8; 3];
                        c.read_exact(&mut g).await.unwrap();
                        c.write_all(&[5, 0]).await.unwrap();
                        let mut h = [0u8; 4];
                        c.read_exact(&mut h).await.unwrap();
                        let port = match h[3] {
                            1 => {
                                let mut a = [0u8; 6];
                                c.read_exact(&mut a).await.unwrap();
                                u16::from_be_bytes([a[4], a[5]])
                            }
                            3 => {
                                let n = c.read_u8().await.unwrap() as usize;
                                let mut a = vec![0u8; n + 2];
                                c.read_exact(&mut a).await.unwrap();
                                assert_eq!(&a[..n], b"localhost");
                                u16::from_be_bytes([a[n], a[n + 1]])
                            }
                            _ => unreachable!(),
                        };
                        let mut up = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                        c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                    });
                }
            });
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let hport = http.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut c, _) = http.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(c.read_u8().await.unwrap());
                }
                let line = String::from_utf8(head).unwrap();
                let port: u16 = line.split_whitespace().nth(1).unwrap().rsplit(':').next().unwrap().parse().unwrap();
                let mut up = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                c.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
            });
            for (url, host) in [
                (format!("socks5h://127.0.0.1:{sport}"), "localhost"),
                (format!("socks5://127.0.0.1:{sport}"), "127.0.0.1"),
                (format!("http://127.0.0.1:{hport}"), "localhost"),
            ] {
                let p = Proxy::parse(&url).unwrap();
                let mut s = dial(Some(&p), host, tport).await.unwrap();
                s.write_all(b"hello").await.unwrap();
                let mut b = [0u8; 5];
                s.read_exact(&mut b).await.unwrap();
                assert_eq!(&b, b"hello", "{url}");
            }
        });
    }
}
