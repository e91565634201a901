//! The Chiral network through the user's proxy: a libp2p transport that dials every
//! `/ip4|ip6|dns/.../tcp/PORT` address as a TCP tunnel through the SDK's dialer
//! ([`chiral_sdk::net::dial`], SOCKS5 or HTTP CONNECT) and listens nowhere. Used alone while a
//! proxy is set: no direct TCP, no QUIC or other UDP, no listener for peers to dial back (a
//! node behind a proxy is reachable only through the connections it opens).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use chiral_sdk::{net::Proxy, Events, HostConfig, PluginError};
use futures::future::BoxFuture;
use libp2p::{
    core::{
        multiaddr::Protocol,
        muxing::StreamMuxerBox,
        transport::{Boxed, DialOpts, ListenerId, TransportError, TransportEvent},
        upgrade::Version,
    },
    identity::Keypair,
    noise, yamux, Multiaddr, PeerId, Transport,
};

/// The host's proxy for the Chiral network, said once in the log; an unusable URL is an error.
pub fn proxy(config: &HostConfig, events: &Events) -> Result<Option<Proxy>, PluginError> {
    let proxy = Proxy::from_config(config).map_err(|e| PluginError::invalid(e.to_string()))?;
    if let Some(p) = &proxy {
        events.info(format!("chiral: every connection goes through the proxy {p}; no listener, no UDP"));
    }
    Ok(proxy)
}

/// TCP through `proxy`, secured with Noise and multiplexed with yamux (what the direct TCP
/// transport negotiates, so any node accepts it).
pub fn transport(
    key: &Keypair,
    proxy: &Proxy,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(ProxyTcp { proxy: proxy.clone() }
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Dials through the proxy; never listens.
#[derive(Clone, Debug)]
pub struct ProxyTcp {
    proxy: Proxy,
}

/// `host` and `port` of `/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT[/p2p/ID]`; `None` for anything
/// else (QUIC, WebSocket, a relay: nothing that could bypass the proxy).
fn target(addr: &Multiaddr) -> Option<(String, u16)> {
    let mut it = addr.iter();
    let host = match it.next()? {
        Protocol::Ip4(a) => a.to_string(),
        Protocol::Ip6(a) => a.to_string(),
        Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => h.to_string(),
        _ => return None,
    };
    let Protocol::Tcp(port) = it.next()? else { return None };
    match (it.next(), it.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some((host, port)),
        _ => None,
    }
}

impl Transport for ProxyTcp {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = futures::future::Pending<Result<Self::Output, io::Error>>;
    type Dial = BoxFuture<'static, Result<Self::Output, io::Error>>;

    fn listen_on(&mut self, _id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<io::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _id: ListenerId) -> bool {
        false
    }

    fn dial(&mut self, addr: Multiaddr, _opts: DialOpts) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some((host, port)) = target(&addr) else { return Err(TransportError::MultiaddrNotSupported(addr)) };
        let proxy = self.proxy.clone();
        Ok(Box::pin(async move {
            let s = chiral_sdk::net::dial(Some(&proxy), &host, port).await?;
            let _ = s.set_nodelay(true);
            Ok(libp2p::tcp::tokio::TcpStream(s))
        }))
    }

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_addresses_are_dialled() {
        let t = |s: &str| target(&s.parse().unwrap());
        assert_eq!(t("/ip4/127.0.0.1/tcp/4001"), Some(("127.0.0.1".into(), 4001)));
        assert_eq!(t("/dns/example.org/tcp/1"), Some(("example.org".into(), 1)));
        let id = PeerId::random();
        assert_eq!(t(&format!("/ip6/::1/tcp/2/p2p/{id}")), Some(("::1".into(), 2)));
        assert_eq!(t("/ip4/127.0.0.1/udp/4001/quic-v1"), None);
        assert_eq!(t("/ip4/127.0.0.1/tcp/1/ws"), None);
        let mut p = ProxyTcp { proxy: Proxy::parse("socks5h://127.0.0.1:1").unwrap() };
        assert!(p.listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().unwrap()).is_err());
    }
}
