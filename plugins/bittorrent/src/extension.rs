//! BEP 10 extension messages: the extended handshake, BEP 9 `ut_metadata`, and the `chiral`
//! identification message. Sans-IO.

use std::collections::BTreeMap;

use crate::bencode::{self, dict, Limits, Value};

/// Our local ids for the extensions we offer (peers use these ids when sending to us).
pub const UT_METADATA_ID: u8 = 1;
pub const CHIRAL_ID: u8 = 2;
pub const UT_PEX_ID: u8 = 3;
/// Most peers one PEX message may add (or drop); more are ignored, never stored.
pub const MAX_PEX: usize = 50;
/// Largest metadata (info dictionary) we accept from a peer.
pub const MAX_METADATA: u64 = 16 << 20;
pub const METADATA_PIECE: usize = 16 * 1024;
/// Bounds of an accepted `chiral_nonce`.
pub const CHIRAL_NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;
/// Length of an ed25519 signature, the only `signature` a hello may carry.
pub const CHIRAL_SIGNATURE_LEN: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// Extension name -> the id the sender wants to receive it as (0 = disabled).
    pub m: BTreeMap<String, u8>,
    pub metadata_size: Option<u64>,
    pub port: Option<u16>,
    pub client: Option<String>,
    pub reqq: Option<u32>,
    /// The sender's Chiral node id, when it speaks the chiral extension.
    pub chiral: Option<String>,
    /// The nonce the receiver signs in its `chiral` hello to prove its own id (16..=64 bytes).
    pub chiral_nonce: Option<Vec<u8>>,
}

impl ExtHandshake {
    /// Our handshake, asking the peer to prove its Chiral id by signing `nonce` (see
    /// [`crate::identity`]); an empty `nonce` asks for nothing.
    pub fn ours(metadata_size: Option<u64>, port: u16, chiral_id: &str, nonce: &[u8]) -> Self {
        let mut m = BTreeMap::new();
        m.insert("ut_metadata".to_string(), UT_METADATA_ID);
        m.insert("chiral".to_string(), CHIRAL_ID);
        m.insert("ut_pex".to_string(), UT_PEX_ID);
        Self {
            m,
            metadata_size,
            port: Some(port),
            client: Some(format!("Chiral {}", env!("CARGO_PKG_VERSION"))),
            reqq: Some(1024),
            chiral: Some(chiral_id.to_string()),
            chiral_nonce: Some(nonce.to_vec()).filter(|n| !n.is_empty()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let m = Value::Dict(self.m.iter().map(|(k, v)| (k.as_bytes().to_vec(), Value::Int(*v as i64))).collect());
        let mut items = vec![("m", m)];
        if let Some(s) = self.metadata_size {
            items.push(("metadata_size", Value::Int(s as i64)));
        }
        if let Some(p) = self.port {
            items.push(("p", Value::Int(p as i64)));
        }
        if let Some(v) = &self.client {
            items.push(("v", Value::str(v)));
        }
        if let Some(q) = self.reqq {
            items.push(("reqq", Value::Int(q as i64)));
        }
        if let Some(c) = &self.chiral {
            items.push(("chiral", Value::str(c)));
        }
        if let Some(n) = &self.chiral_nonce {
            items.push(("chiral_nonce", Value::Bytes(n.clone())));
        }
        bencode::encode(&dict(items))
    }

    pub fn decode(b: &[u8]) -> Result<Self, ExtensionError> {
        let v = bencode::decode(b, Limits::MESSAGE)?;
        if v.as_dict().is_none() {
            return Err(ExtensionError::NotADictionary);
        }
        let mut m = BTreeMap::new();
        if let Some(d) = v.get("m").and_then(Value::as_dict) {
            for (k, id) in d.iter().take(64) {
                if let (Ok(k), Some(id)) = (std::str::from_utf8(k), id.as_int()) {
                    if (0..=255).contains(&id) {
                        m.insert(k.to_string(), id as u8);
                    }
                }
            }
        }
        let metadata_size = v.get("metadata_size").and_then(Value::as_int).filter(|n| *n > 0).map(|n| n as u64);
        let port = v.get("p").and_then(Value::as_int).filter(|p| (1..=65535).contains(p)).map(|p| p as u16);
        let client = v.get("v").and_then(Value::as_str).map(|s| s.chars().take(64).collect());
        let reqq = v.get("reqq").and_then(Value::as_int).filter(|n| *n > 0).map(|n| n.min(100_000) as u32);
        let chiral = m
            .get("chiral")
            .filter(|id| **id != 0)
            .and_then(|_| v.get("chiral").and_then(Value::as_str).map(|s| s.chars().take(128).collect()));
        let chiral_nonce = v
            .get("chiral_nonce")
            .and_then(Value::as_bytes)
            .filter(|n| CHIRAL_NONCE_LEN.contains(&n.len()))
            .map(<[u8]>::to_vec);
        Ok(Self { m, metadata_size, port, client, reqq, chiral, chiral_nonce })
    }

    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.m.get(name).copied().filter(|id| *id != 0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metadata {
    Request { piece: u32 },
    Data { piece: u32, total_size: u64, data: Vec<u8> },
    Reject { piece: u32 },
}

impl Metadata {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Metadata::Request { piece } => {
                bencode::encode(&dict([("msg_type", Value::Int(0)), ("piece", Value::Int(*piece as i64))]))
            }
            Metadata::Data { piece, total_size, data } => {
                let mut b = bencode::encode(&dict([
                    ("msg_type", Value::Int(1)),
                    ("piece", Value::Int(*piece as i64)),
                    ("total_size", Value::Int(*total_size as i64)),
                ]));
                b.extend_from_slice(data);
                b
            }
            Metadata::Reject { piece } => {
                bencode::encode(&dict([("msg_type", Value::Int(2)), ("piece", Value::Int(*piece as i64))]))
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, ExtensionError> {
        let (v, used) = bencode::decode_prefix(b, Limits::MESSAGE)?;
        let piece = v
            .get("piece")
            .and_then(Value::as_int)
            .filter(|p| (0..1 << 20).contains(p))
            .ok_or(ExtensionError::Missing("piece"))? as u32;
        match v.get("msg_type").and_then(Value::as_int) {
            Some(0) => Ok(Metadata::Request { piece }),
            Some(1) => {
                let total = v
                    .get("total_size")
                    .and_then(Value::as_int)
                    .filter(|n| *n > 0)
                    .ok_or(ExtensionError::Missing("total_size"))? as u64;
                let data = b[used..].to_vec();
                if data.len() > METADATA_PIECE {
                    return Err(ExtensionError::MetadataPieceTooLarge);
                }
                Ok(Metadata::Data { piece, total_size: total, data })
            }
            Some(2) => Ok(Metadata::Reject { piece }),
            _ => Err(ExtensionError::UnknownMsgType),
        }
    }
}

/// The Chiral identification message two Chiral peers exchange after the extended handshake.
#[derive(Clone, Debug, PartialEq)]
pub struct ChiralHello {
    pub msg_type: String,
    pub chiral_peer_id: String,
    /// Reputation in thousandths (bencode has no floats): 0..=1000.
    pub reputation_score: i64,
    pub wallet_address: Option<String>,
    /// The sender's proof of `chiral_peer_id`: its signature over the nonce the receiver sent
    /// in its extended handshake (see [`crate::identity::Identity::prove`]). Without it (or
    /// with one of another length) the hello is unproven.
    pub signature: Option<Vec<u8>>,
    /// The sender's Chiral network identity, vouching for `chiral_peer_id`
    /// (`chiral_sdk::link`): the network's ed25519 key and its signature. Checked by the
    /// receiver ([`crate::identity::Identity::verify_link`]); dropped when of another length.
    pub network_link: Option<([u8; 32], [u8; 64])>,
}

impl ChiralHello {
    pub fn encode(&self) -> Vec<u8> {
        let mut items = vec![
            ("msg_type", Value::str(&self.msg_type)),
            ("chiral_peer_id", Value::str(&self.chiral_peer_id)),
            ("reputation_score", Value::Int(self.reputation_score)),
        ];
        if let Some(w) = &self.wallet_address {
            items.push(("wallet_address", Value::str(w)));
        }
        if let Some(sig) = &self.signature {
            items.push(("signature", Value::Bytes(sig.clone())));
        }
        if let Some((key, sig)) = &self.network_link {
            items.push(("network_key", Value::Bytes(key.to_vec())));
            items.push(("network_sig", Value::Bytes(sig.to_vec())));
        }
        bencode::encode(&dict(items))
    }

    pub fn decode(b: &[u8]) -> Result<Self, ExtensionError> {
        let v = bencode::decode(b, Limits::MESSAGE)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(|s| s.chars().take(256).collect::<String>());
        Ok(Self {
            msg_type: s("msg_type").ok_or(ExtensionError::Missing("msg_type"))?,
            chiral_peer_id: s("chiral_peer_id").ok_or(ExtensionError::Missing("chiral_peer_id"))?,
            reputation_score: v.get("reputation_score").and_then(Value::as_int).unwrap_or(0).clamp(0, 1000),
            wallet_address: s("wallet_address").filter(|w| !w.is_empty()),
            signature: v
                .get("signature")
                .and_then(Value::as_bytes)
                .filter(|sig| sig.len() == CHIRAL_SIGNATURE_LEN)
                .map(<[u8]>::to_vec),
            network_link: {
                let bytes = |k: &str| v.get(k).and_then(Value::as_bytes);
                match (bytes("network_key").map(<[u8; 32]>::try_from), bytes("network_sig").map(<[u8; 64]>::try_from)) {
                    (Some(Ok(key)), Some(Ok(sig))) => Some((key, sig)),
                    _ => None,
                }
            },
        })
    }
}

/// BEP 11 peer exchange: peers the sender connected to (`added`, `added6`) and left (`dropped`,
/// `dropped6`) since its last message, compact addresses. At most [`MAX_PEX`] of each are kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pex {
    pub added: Vec<std::net::SocketAddr>,
    pub dropped: Vec<std::net::SocketAddr>,
}

impl Pex {
    pub fn encode(&self) -> Vec<u8> {
        let pack = |v4: bool, list: &[std::net::SocketAddr]| {
            let mut b = Vec::new();
            for a in list.iter().take(MAX_PEX) {
                match a.ip() {
                    std::net::IpAddr::V4(ip) if v4 => b.extend_from_slice(&ip.octets()),
                    std::net::IpAddr::V6(ip) if !v4 => b.extend_from_slice(&ip.octets()),
                    _ => continue,
                }
                b.extend_from_slice(&a.port().to_be_bytes());
            }
            Value::Bytes(b)
        };
        let n4 = self.added.iter().take(MAX_PEX).filter(|a| a.is_ipv4()).count();
        bencode::encode(&dict([
            ("added", pack(true, &self.added)),
            ("added.f", Value::Bytes(vec![0; n4])),
            ("added6", pack(false, &self.added)),
            ("dropped", pack(true, &self.dropped)),
            ("dropped6", pack(false, &self.dropped)),
        ]))
    }

    pub fn decode(b: &[u8]) -> Result<Self, ExtensionError> {
        let v = bencode::decode(b, Limits::MESSAGE)?;
        if v.as_dict().is_none() {
            return Err(ExtensionError::NotADictionary);
        }
        let unpack = |k4: &str, k6: &str| {
            let mut out = Vec::new();
            let v4 = v.get(k4).and_then(Value::as_bytes).unwrap_or_default();
            for c in v4.chunks_exact(6).take(MAX_PEX) {
                let ip = std::net::Ipv4Addr::new(c[0], c[1], c[2], c[3]);
                out.push(std::net::SocketAddr::from((ip, u16::from_be_bytes([c[4], c[5]]))));
            }
            let v6 = v.get(k6).and_then(Value::as_bytes).unwrap_or_default();
            for c in v6.chunks_exact(18).take(MAX_PEX - out.len().min(MAX_PEX)) {
                let ip: [u8; 16] = c[..16].try_into().unwrap_or([0; 16]);
                out.push(std::net::SocketAddr::from((
                    std::net::Ipv6Addr::from(ip),
                    u16::from_be_bytes([c[16], c[17]]),
                )));
            }
            out.retain(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast());
            out
        };
        Ok(Self { added: unpack("added", "added6"), dropped: unpack("dropped", "dropped6") })
    }
}

/// Why an extension message (BEP 10 handshake, BEP 9 `ut_metadata`, the `chiral` hello) is
/// refused; the peer that sent it is dropped.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error(transparent)]
    Bencode(#[from] bencode::DecodeError),
    #[error("extended handshake is not a dictionary")]
    NotADictionary,
    #[error("no {0}")]
    Missing(&'static str),
    #[error("metadata piece over 16 KiB")]
    MetadataPieceTooLarge,
    #[error("unknown ut_metadata msg_type")]
    UnknownMsgType,
    #[error("metadata size {0} out of range")]
    MetadataSize(u64),
}

/// Why a metadata piece or the whole assembly was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The piece that peer sent is malformed (index or length): that peer is at fault.
    #[error("{0}")]
    Malformed(String),
    /// Every piece came from this peer and the whole does not hash to the info hash: a liar.
    #[error("metadata does not match the info hash")]
    Liar(u64),
    /// Pieces from several peers do not hash to the info hash and nothing says whose piece is
    /// wrong: the assembly starts again, taking pieces from one peer at a time.
    #[error("metadata from several peers does not match the info hash")]
    Unknown,
}

/// A magnet's metadata (BEP 9) being put together from `ut_metadata` pieces, for one
/// announced size. Sans-IO: pieces and the peer that sent each in, the whole or a verdict out.
///
/// A lying peer can neither stall it nor get an honest peer blamed: when a complete assembly
/// fails the info hash check and every piece came from one peer, that peer is named a liar;
/// when the pieces came from several, the assembly restarts in single-source mode, where only
/// the first peer to send a piece is listened to until it completes (or leaves, see
/// [`forget`](Self::forget)) — so each liar in turn is found alone and an honest peer finishes.
#[derive(Debug)]
pub struct MetadataAssembly {
    pub size: usize,
    pieces: Vec<Option<(Vec<u8>, u64)>>,
    /// After an `Unknown` failure: pieces are taken from one peer only.
    single_source: bool,
    sole: Option<u64>,
}

impl MetadataAssembly {
    pub fn new(size: u64) -> Result<Self, ExtensionError> {
        if size == 0 || size > MAX_METADATA {
            return Err(ExtensionError::MetadataSize(size));
        }
        Ok(Self {
            size: size as usize,
            pieces: vec![None; (size as usize).div_ceil(METADATA_PIECE)],
            single_source: false,
            sole: None,
        })
    }

    /// Pieces still missing that `peer` may be asked for.
    pub fn missing_for(&self, peer: u64) -> Vec<u32> {
        if self.sole.is_some_and(|s| s != peer) {
            return Vec::new();
        }
        self.pieces.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i as u32).collect()
    }

    /// Stores piece `piece` sent by `from`; returns the whole metadata once every piece is in
    /// and it hashes to `info_hash`.
    pub fn add(
        &mut self,
        piece: u32,
        data: Vec<u8>,
        from: u64,
        info_hash: &[u8; 20],
    ) -> Result<Option<Vec<u8>>, MetadataError> {
        let i = piece as usize;
        if i >= self.pieces.len() {
            return Err(MetadataError::Malformed(format!("metadata piece {piece} out of range")));
        }
        let want = if i + 1 == self.pieces.len() { self.size - i * METADATA_PIECE } else { METADATA_PIECE };
        if data.len() != want {
            return Err(MetadataError::Malformed(format!(
                "metadata piece {piece} has {} bytes, expected {want}",
                data.len()
            )));
        }
        if self.single_source {
            match self.sole {
                None => self.sole = Some(from),
                Some(s) if s != from => return Ok(None),
                Some(_) => {}
            }
        }
        self.pieces[i] = Some((data, from));
        if self.pieces.iter().any(Option::is_none) {
            return Ok(None);
        }
        let all: Vec<u8> = self
            .pieces
            .iter()
            .flat_map(|p| p.as_ref().map(|(d, _)| d.as_slice()).unwrap_or_default())
            .copied()
            .collect();
        if &chiral_sdk::verify::sha1(&all) == info_hash {
            return Ok(Some(all));
        }
        let mut senders: Vec<u64> = self.pieces.iter().flatten().map(|(_, f)| *f).collect();
        senders.sort_unstable();
        senders.dedup();
        self.pieces.iter_mut().for_each(|p| *p = None);
        self.sole = None;
        match senders.as_slice() {
            [one] => Err(MetadataError::Liar(*one)),
            _ => {
                self.single_source = true;
                Err(MetadataError::Unknown)
            }
        }
    }

    /// `peer` left: in single-source mode, its pieces go and the next peer gets the turn.
    pub fn forget(&mut self, peer: u64) {
        if self.sole == Some(peer) {
            self.sole = None;
            for p in &mut self.pieces {
                if p.as_ref().is_some_and(|(_, f)| *f == peer) {
                    *p = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pex_round_trip_and_bounds() {
        let a: std::net::SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let b: std::net::SocketAddr = "[2001:db8::1]:51413".parse().unwrap();
        let m = Pex { added: vec![a, b], dropped: vec!["10.0.0.2:1".parse().unwrap()] };
        assert_eq!(Pex::decode(&m.encode()).unwrap(), m);
        // 1000 peers in: 50 kept; port 0 and garbage tails dropped.
        let mut many = Vec::new();
        for i in 1..=1000u32 {
            many.extend_from_slice(&i.to_be_bytes());
            many.extend_from_slice(&[0x1a, 0xe1]);
        }
        many.extend_from_slice(&[1, 2, 3]);
        let msg = bencode::encode(&dict([("added", Value::Bytes(many))]));
        let p = Pex::decode(&msg).unwrap();
        assert_eq!(p.added.len(), MAX_PEX);
        let zero = bencode::encode(&dict([("added", Value::Bytes(vec![1, 2, 3, 4, 0, 0]))]));
        assert!(Pex::decode(&zero).unwrap().added.is_empty());
        assert!(Pex::decode(b"i3e").is_err());
    }

    #[test]
    fn handshake_round_trip() {
        let h = ExtHandshake::ours(Some(1234), 6881, "node-1", &[]);
        let back = ExtHandshake::decode(&h.encode()).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.id_of("ut_metadata"), Some(UT_METADATA_ID));
        // an ordinary client: no chiral key
        let plain = ExtHandshake::decode(b"d1:md11:ut_metadatai3ee13:metadata_sizei99ee").unwrap();
        assert_eq!(plain.id_of("ut_metadata"), Some(3));
        assert_eq!(plain.chiral, None);
        assert_eq!(plain.metadata_size, Some(99));
        assert!(ExtHandshake::decode(b"le").is_err());
        assert!(ExtHandshake::decode(b"d1:m").is_err());
    }

    #[test]
    fn handshake_nonce() {
        assert_eq!(ExtHandshake::ours(None, 1, "n", &[]).chiral_nonce, None);
        let nonce = [9u8; 32];
        let h = ExtHandshake::ours(Some(5), 6881, "node-1", &nonce);
        assert_eq!(h.chiral_nonce.as_deref(), Some(&nonce[..]));
        let back = ExtHandshake::decode(&h.encode()).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.chiral.as_deref(), Some("node-1"));
        // Bounds: 16..=64 bytes, a byte string; anything else is no nonce.
        for (n, ok) in [(0, false), (15, false), (16, true), (64, true), (65, false), (1000, false)] {
            let mut h = ExtHandshake::ours(None, 1, "node-1", &[]);
            h.chiral_nonce = Some(vec![0xa5; n]);
            let back = ExtHandshake::decode(&h.encode()).unwrap();
            assert_eq!(back.chiral_nonce.is_some(), ok, "{n} bytes");
            if ok {
                assert_eq!(back, h);
            }
        }
        let int = ExtHandshake::decode(b"d1:mde12:chiral_noncei7ee").unwrap();
        assert_eq!(int.chiral_nonce, None);
    }

    #[test]
    fn metadata_messages() {
        for m in [
            Metadata::Request { piece: 2 },
            Metadata::Reject { piece: 1 },
            Metadata::Data { piece: 0, total_size: 5, data: b"hello".to_vec() },
        ] {
            assert_eq!(Metadata::decode(&m.encode()).unwrap(), m);
        }
        assert_eq!(Metadata::Request { piece: 0 }.encode(), b"d8:msg_typei0e5:piecei0ee");
        assert!(Metadata::decode(b"d8:msg_typei9e5:piecei0ee").is_err());
        assert!(Metadata::decode(b"d8:msg_typei1e5:piecei0ee").is_err());
        let mut big = Metadata::Data { piece: 0, total_size: 5, data: vec![] }.encode();
        big.extend(vec![0; METADATA_PIECE + 1]);
        assert!(Metadata::decode(&big).is_err());
    }

    #[test]
    fn chiral_hello() {
        let h = ChiralHello {
            msg_type: "hello".into(),
            chiral_peer_id: "abc".into(),
            reputation_score: 900,
            wallet_address: Some("0xw".into()),
            signature: None,
            network_link: None,
        };
        assert_eq!(ChiralHello::decode(&h.encode()).unwrap(), h);
        // A network link: a 32-byte key and a 64-byte signature, else dropped.
        let linked = ChiralHello { network_link: Some(([3; 32], [4; 64])), ..h.clone() };
        assert_eq!(ChiralHello::decode(&linked.encode()).unwrap(), linked);
        let short =
            [h.encode().strip_suffix(b"e").unwrap(), b"11:network_key2:ab11:network_sig1:ce".as_slice()].concat();
        assert_eq!(ChiralHello::decode(&short).unwrap().network_link, None);
        assert!(ChiralHello::decode(b"de").is_err());
        // An older hello without a signature still decodes (unproven).
        let old = b"d14:chiral_peer_id3:abc8:msg_type5:hello16:reputation_scorei900ee";
        assert_eq!(ChiralHello::decode(old).unwrap(), ChiralHello { wallet_address: None, ..h.clone() });
        // Signed: exactly 64 bytes, else dropped.
        for (n, ok) in [(0, false), (63, false), (64, true), (65, false), (128, false)] {
            let signed = ChiralHello { signature: Some((0..n as u8).collect()), ..h.clone() };
            let back = ChiralHello::decode(&signed.encode()).unwrap();
            assert_eq!(back.signature.is_some(), ok, "{n} bytes");
            assert_eq!(back, if ok { signed } else { h.clone() });
        }
    }

    #[test]
    fn metadata_assembly() {
        let info: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let hash = chiral_sdk::verify::sha1(&info);
        let mut a = MetadataAssembly::new(info.len() as u64).unwrap();
        assert_eq!(a.missing_for(1), vec![0, 1, 2]);
        assert!(a.add(0, info[..16384].to_vec(), 1, &hash).unwrap().is_none());
        assert!(a.add(2, info[..10].to_vec(), 1, &hash).is_err());
        assert!(a.add(3, vec![], 1, &hash).is_err());
        assert!(a.add(2, info[32768..].to_vec(), 1, &hash).unwrap().is_none());
        assert_eq!(a.add(1, info[16384..32768].to_vec(), 1, &hash).unwrap().unwrap(), info);
        let mut b = MetadataAssembly::new(5).unwrap();
        assert_eq!(b.add(0, b"wrong".to_vec(), 7, &hash), Err(MetadataError::Liar(7)));
        assert_eq!(b.missing_for(7), vec![0]);
        assert!(MetadataAssembly::new(MAX_METADATA + 1).is_err());
    }

    #[test]
    fn a_lying_peer_cannot_keep_the_metadata_from_resolving() {
        let info: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        let hash = chiral_sdk::verify::sha1(&info);
        let piece = |i: usize| info[i * METADATA_PIECE..((i + 1) * METADATA_PIECE).min(info.len())].to_vec();
        let lie = |i: usize| piece(i).iter().map(|b| !b).collect::<Vec<u8>>();
        let (honest, liar) = (1u64, 2u64);
        let mut a = MetadataAssembly::new(info.len() as u64).unwrap();
        // Mixed: the liar's piece 1 spoils the first attempt; nobody is blamed yet.
        assert_eq!(a.add(0, piece(0), honest, &hash), Ok(None));
        assert_eq!(a.add(1, lie(1), liar, &hash), Ok(None));
        assert_eq!(a.add(2, piece(2), honest, &hash), Err(MetadataError::Unknown));
        // Single source from now on: the liar speaks first, alone, and is named.
        assert_eq!(a.add(0, lie(0), liar, &hash), Ok(None));
        assert!(a.missing_for(honest).is_empty(), "one peer at a time");
        assert_eq!(a.add(0, piece(0), honest, &hash), Ok(None), "ignored while it is the liar's turn");
        assert_eq!(a.add(1, lie(1), liar, &hash), Ok(None));
        assert_eq!(a.add(2, lie(2), liar, &hash), Err(MetadataError::Liar(liar)));
        // The honest peer's turn: it completes.
        assert_eq!(a.add(0, piece(0), honest, &hash), Ok(None));
        assert_eq!(a.add(1, piece(1), honest, &hash), Ok(None));
        assert_eq!(a.add(2, piece(2), honest, &hash), Ok(Some(info.clone())));

        // A peer that leaves mid-turn hands it on.
        let mut b = MetadataAssembly::new(info.len() as u64).unwrap();
        b.add(0, lie(0), liar, &hash).unwrap();
        b.add(1, piece(1), honest, &hash).unwrap();
        assert_eq!(b.add(2, piece(2), honest, &hash), Err(MetadataError::Unknown));
        b.add(0, piece(0), liar, &hash).unwrap();
        b.forget(liar);
        assert_eq!(b.missing_for(honest), vec![0, 1, 2]);
        for i in 0..2 {
            b.add(i as u32, piece(i), honest, &hash).unwrap();
        }
        assert_eq!(b.add(2, piece(2), honest, &hash), Ok(Some(info)));
    }
}
