//! Which addresses the node dials: the SDK's [`DialPolicy`] applied to libp2p multiaddrs.
//!
//! Other nodes tell us addresses: identify's listen addresses, Kademlia's closer peers and
//! providers. A hostile node could name a service of the user's own machine or network
//! (`/ip4/127.0.0.1/tcp/6379`, `/ip4/192.168.1.1/tcp/80`) and have every node that looks a key
//! up knock on it. [`Filtered`] wraps a behaviour and drops, from the addresses it offers for a
//! dial, those the policy does not permit; a connection that still reaches such an address (an
//! address given with the dial itself) is refused before any protocol runs on it. The policy
//! allows loopback and private addresses when the node's own bootstrap nodes or listen address
//! are that local (a test network on loopback, a LAN), or with the option `allow_local_peers`.

use std::task::{Context, Poll};

use chiral_sdk::dial::{reach, reach_of_host, DialPolicy, Reach};
use libp2p::{
    core::{transport::PortUse, Endpoint},
    multiaddr::Protocol,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
    },
    Multiaddr, PeerId,
};

/// How local the host of `addr` is (`None`: an address no node can have, or no host in it),
/// and its TCP or UDP port.
fn reach_of(addr: &Multiaddr) -> (Option<Reach>, Option<u16>) {
    let (mut host, mut port) = (None, None);
    for p in addr.iter() {
        match p {
            Protocol::Ip4(ip) => host = reach(ip.into()),
            Protocol::Ip6(ip) => host = reach(ip.into()),
            Protocol::Dns(n) | Protocol::Dns4(n) | Protocol::Dns6(n) | Protocol::Dnsaddr(n) => host = reach_of_host(&n),
            Protocol::Tcp(p) | Protocol::Udp(p) => port = Some(p),
            _ => {}
        }
    }
    (host, port)
}

/// The node's policy: as local as its bootstrap nodes and its own listen address, or any
/// address with `allow_local`.
pub fn policy(bootstrap: &[Multiaddr], listen: &Multiaddr, allow_local: bool) -> DialPolicy {
    if allow_local {
        return DialPolicy::any();
    }
    let mut p = DialPolicy::default();
    for r in bootstrap.iter().chain([listen]).filter_map(|a| reach_of(a).0) {
        p.widen_to_reach(r);
    }
    p
}

/// Whether the node may dial `addr`.
pub fn permits(policy: &DialPolicy, addr: &Multiaddr) -> bool {
    match reach_of(addr) {
        (Some(r), Some(port)) => port != 0 && policy.allows(r),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}: an address the dial policy does not permit (allow_local_peers)")]
struct Refused(Multiaddr);

/// `B` whose offered dial addresses pass the policy (see the module documentation).
pub struct Filtered<B> {
    inner: B,
    policy: DialPolicy,
}

impl<B> Filtered<B> {
    pub fn new(inner: B, policy: DialPolicy) -> Self {
        Self { inner, policy }
    }
}

impl<B> Filtered<B> {
    /// Whether the policy permits dialling `addr`.
    pub fn permits(&self, addr: &Multiaddr) -> bool {
        permits(&self.policy, addr)
    }
}

impl<B> std::ops::Deref for Filtered<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Filtered<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Filtered<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let mut offered = self.inner.handle_pending_outbound_connection(id, peer, addresses, role)?;
        offered.retain(|a| permits(&self.policy, a));
        Ok(offered)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !permits(&self.policy, addr) {
            return Err(ConnectionDenied::new(Refused(addr.clone())));
        }
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_public_node_dials_no_local_address() {
        let p = policy(&[ma("/dns4/boot.example.org/tcp/4001")], &ma("/ip4/0.0.0.0/tcp/4001"), false);
        assert!(permits(&p, &ma("/ip4/8.8.8.8/tcp/4001")));
        assert!(permits(
            &p,
            &ma("/ip4/8.8.8.8/udp/4001/quic-v1/p2p/12D3KooWAyGjDEBHZZ7Pt4iMBXRVzj4Ge2jEK1fyUUqY9ZgcnJjE")
        ));
        assert!(permits(&p, &ma("/dns4/node.example.org/tcp/4001")));
        assert!(!permits(&p, &ma("/ip4/127.0.0.1/tcp/6379")));
        assert!(!permits(&p, &ma("/ip4/192.168.1.1/tcp/80")));
        assert!(!permits(&p, &ma("/ip6/::1/tcp/4001")));
        assert!(!permits(&p, &ma("/dns4/localhost/tcp/4001")));
        assert!(!permits(&p, &ma("/ip4/8.8.8.8/tcp/0")));
        assert!(!permits(&p, &ma("/ip4/0.0.0.0/tcp/4001")));
        assert!(!permits(&p, &ma("/ip4/8.8.8.8")));
    }

    #[test]
    fn a_local_bootstrap_or_listen_address_or_the_user_allows_local_nodes() {
        let lan = policy(&[ma("/ip4/192.168.1.20/tcp/4001")], &ma("/ip4/0.0.0.0/tcp/0"), false);
        assert!(permits(&lan, &ma("/ip4/192.168.1.30/tcp/4001")));
        assert!(!permits(&lan, &ma("/ip4/127.0.0.1/tcp/4001")));
        let test_net = policy(&[], &ma("/ip4/127.0.0.1/tcp/0"), false);
        assert!(permits(&test_net, &ma("/ip4/127.0.0.1/tcp/4001")));
        assert!(permits(&test_net, &ma("/ip4/10.0.0.2/tcp/4001")));
        let boot = policy(
            &[ma("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAyGjDEBHZZ7Pt4iMBXRVzj4Ge2jEK1fyUUqY9ZgcnJjE")],
            &ma("/ip4/0.0.0.0/tcp/0"),
            false,
        );
        assert!(permits(&boot, &ma("/ip4/127.0.0.1/tcp/5001")));
        let user = policy(&[], &ma("/ip4/0.0.0.0/tcp/0"), true);
        assert!(permits(&user, &ma("/ip4/127.0.0.1/tcp/4001")));
        assert!(!permits(&user, &ma("/ip4/224.0.0.1/tcp/4001")));
    }
}
