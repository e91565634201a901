//! The peer wire protocol (BEP 3, with BEP 10's extension bit and message), sans-IO: bytes in,
//! messages out, and back. Every length prefix is checked against a bound before anything is
//! allocated.

pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
pub const HANDSHAKE_LEN: usize = 68;
/// Standard request size.
pub const BLOCK: u32 = 16 * 1024;
/// Largest block we serve or accept (some clients ask 32 KiB; 128 KiB is the usual hard cap).
pub const MAX_BLOCK: u32 = 128 * 1024;
/// Largest extension message (a 16 KiB ut_metadata piece plus its dictionary).
pub const MAX_EXTENDED: usize = 16 * 1024 + 1024;

/// Reserved bits: BEP 10 extension protocol (byte 5, 0x10) and DHT (byte 7, 0x01).
pub fn reserved(dht: bool) -> [u8; 8] {
    let mut r = [0u8; 8];
    r[5] |= 0x10;
    if dht {
        r[7] |= 0x01;
    }
    r
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut b = [0u8; HANDSHAKE_LEN];
        b[0] = 19;
        b[1..20].copy_from_slice(PROTOCOL);
        b[20..28].copy_from_slice(&self.reserved);
        b[28..48].copy_from_slice(&self.info_hash);
        b[48..68].copy_from_slice(&self.peer_id);
        b
    }

    /// Parses the 68 handshake bytes (`Ok(None)` while fewer have arrived).
    pub fn decode(b: &[u8]) -> Result<Option<Handshake>, WireError> {
        if !b.is_empty() && b[0] != 19 {
            return Err(WireError(format!("handshake protocol length {} is not 19", b[0])));
        }
        if b.len() >= 20 && &b[1..20] != PROTOCOL {
            return Err(WireError("not the BitTorrent protocol".into()));
        }
        if b.len() < HANDSHAKE_LEN {
            return Ok(None);
        }
        let mut h = Handshake { reserved: [0; 8], info_hash: [0; 20], peer_id: [0; 20] };
        h.reserved.copy_from_slice(&b[20..28]);
        h.info_hash.copy_from_slice(&b[28..48]);
        h.peer_id.copy_from_slice(&b[48..68]);
        Ok(Some(h))
    }

    pub fn supports_extensions(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Vec<u8>),
    Request {
        index: u32,
        begin: u32,
        length: u32,
    },
    Piece {
        index: u32,
        begin: u32,
        data: Vec<u8>,
    },
    Cancel {
        index: u32,
        begin: u32,
        length: u32,
    },
    Port(u16),
    /// BEP 6 (not advertised by us, tolerated from others).
    HaveAll,
    HaveNone,
    Extended {
        id: u8,
        payload: Vec<u8>,
    },
    /// A message id we do not know (ignored).
    Unknown(u8),
}

/// A frame that breaks the peer wire protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// The largest frame a peer may send for a torrent of `piece_count` pieces (unknown: the
/// largest a torrent may have).
pub fn max_frame(piece_count: Option<u32>) -> usize {
    let bitfield = match piece_count {
        Some(n) => (n as usize).div_ceil(8),
        None => (crate::metainfo::MAX_PIECES as usize).div_ceil(8),
    };
    (1 + bitfield).max(9 + MAX_BLOCK as usize).max(2 + MAX_EXTENDED)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One decoded frame: a block (`piece` message) borrowed from the read buffer, so it is copied
/// once, into its piece; anything else as a [`Message`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Block { index: u32, begin: u32, data: &'a [u8] },
    Message(Message),
}

/// Decodes one frame from the start of `buf`: `Ok(None)` if incomplete, else the message and
/// the bytes it used. `bitfield_len` (when the piece count is known) is the exact bitfield size.
pub fn decode(
    buf: &[u8],
    max_frame: usize,
    bitfield_len: Option<usize>,
) -> Result<Option<(Message, usize)>, WireError> {
    Ok(decode_frame(buf, max_frame, bitfield_len)?.map(|(f, used)| match f {
        Frame::Block { index, begin, data } => (Message::Piece { index, begin, data: data.to_vec() }, used),
        Frame::Message(m) => (m, used),
    }))
}

/// [`decode`] with a `piece` message's block left in `buf`.
pub fn decode_frame(
    buf: &[u8],
    max_frame: usize,
    bitfield_len: Option<usize>,
) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32_at(buf, 0) as usize;
    if len > max_frame {
        return Err(WireError(format!("frame of {len} bytes is over the {max_frame} limit")));
    }
    if len == 0 {
        return Ok(Some((Frame::Message(Message::KeepAlive), 4)));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let body = &buf[4..4 + len];
    let id = body[0];
    let p = &body[1..];
    let exact = |n: usize| -> Result<(), WireError> {
        if p.len() != n {
            Err(WireError(format!("message {id} has {} payload bytes, expected {n}", p.len())))
        } else {
            Ok(())
        }
    };
    let msg = match id {
        0 => exact(0).map(|_| Message::Choke)?,
        1 => exact(0).map(|_| Message::Unchoke)?,
        2 => exact(0).map(|_| Message::Interested)?,
        3 => exact(0).map(|_| Message::NotInterested)?,
        4 => {
            exact(4)?;
            Message::Have(u32_at(p, 0))
        }
        5 => {
            if let Some(n) = bitfield_len {
                exact(n)?;
            }
            Message::Bitfield(p.to_vec())
        }
        6 | 8 => {
            exact(12)?;
            let (index, begin, length) = (u32_at(p, 0), u32_at(p, 4), u32_at(p, 8));
            if length == 0 || length > MAX_BLOCK {
                return Err(WireError(format!("request of {length} bytes")));
            }
            if id == 6 {
                Message::Request { index, begin, length }
            } else {
                Message::Cancel { index, begin, length }
            }
        }
        7 => {
            if p.len() < 8 || p.len() - 8 > MAX_BLOCK as usize {
                return Err(WireError(format!("piece message of {} bytes", p.len())));
            }
            return Ok(Some((Frame::Block { index: u32_at(p, 0), begin: u32_at(p, 4), data: &p[8..] }, 4 + len)));
        }
        9 => {
            exact(2)?;
            Message::Port(u16::from_be_bytes([p[0], p[1]]))
        }
        0x0e => exact(0).map(|_| Message::HaveAll)?,
        0x0f => exact(0).map(|_| Message::HaveNone)?,
        20 => {
            if p.is_empty() || p.len() - 1 > MAX_EXTENDED {
                return Err(WireError(format!("extended message of {} bytes", p.len())));
            }
            Message::Extended { id: p[0], payload: p[1..].to_vec() }
        }
        other => Message::Unknown(other),
    };
    Ok(Some((Frame::Message(msg), 4 + len)))
}

fn frame(out: &mut Vec<u8>, id: u8, payload_len: usize) {
    out.extend_from_slice(&((payload_len + 1) as u32).to_be_bytes());
    out.push(id);
}

/// Appends the encoding of `m` to `out`.
pub fn encode(m: &Message, out: &mut Vec<u8>) {
    match m {
        Message::KeepAlive => out.extend_from_slice(&[0, 0, 0, 0]),
        Message::Choke => frame(out, 0, 0),
        Message::Unchoke => frame(out, 1, 0),
        Message::Interested => frame(out, 2, 0),
        Message::NotInterested => frame(out, 3, 0),
        Message::Have(i) => {
            frame(out, 4, 4);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Message::Bitfield(b) => {
            frame(out, 5, b.len());
            out.extend_from_slice(b);
        }
        Message::Request { index, begin, length } | Message::Cancel { index, begin, length } => {
            frame(out, if matches!(m, Message::Request { .. }) { 6 } else { 8 }, 12);
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&begin.to_be_bytes());
            out.extend_from_slice(&length.to_be_bytes());
        }
        Message::Piece { index, begin, data } => {
            piece_header(*index, *begin, data.len(), out);
            out.extend_from_slice(data);
        }
        Message::Port(p) => {
            frame(out, 9, 2);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Message::HaveAll => frame(out, 0x0e, 0),
        Message::HaveNone => frame(out, 0x0f, 0),
        Message::Extended { id, payload } => {
            frame(out, 20, 1 + payload.len());
            out.push(*id);
            out.extend_from_slice(payload);
        }
        Message::Unknown(id) => frame(out, *id, 0),
    }
}

/// The 13-byte header of a piece message carrying `len` data bytes (the data follows).
pub fn piece_header(index: u32, begin: u32, len: usize, out: &mut Vec<u8>) {
    frame(out, 7, 8 + len);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&begin.to_be_bytes());
}

/// Bitfield bytes for `have` (bit 7 of byte 0 = piece 0).
pub fn bitfield_bytes(have: &[bool]) -> Vec<u8> {
    chiral_sdk::resume::pack(have)
}

/// Piece flags from bitfield bytes; spare bits must be zero.
pub fn bitfield_flags(bytes: &[u8], count: u32) -> Result<Vec<bool>, WireError> {
    if bytes.len() != (count as usize).div_ceil(8) {
        return Err(WireError(format!("bitfield of {} bytes for {count} pieces", bytes.len())));
    }
    let flags: Vec<bool> = (0..count as usize).map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0).collect();
    let spare = (count as usize..bytes.len() * 8).any(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0);
    if spare {
        return Err(WireError("bitfield has spare bits set".into()));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(m: Message) {
        let mut b = Vec::new();
        encode(&m, &mut b);
        let (back, used) = decode(&b, max_frame(Some(100)), Some(13)).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(used, b.len());
        // every strict prefix is incomplete, never an error
        for n in 0..b.len() {
            assert_eq!(decode(&b[..n], max_frame(Some(100)), Some(13)).unwrap(), None, "{m:?} prefix {n}");
        }
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(vec![0xff; 13]),
            Message::Request { index: 1, begin: 16384, length: 16384 },
            Message::Cancel { index: 1, begin: 0, length: 16384 },
            Message::Piece { index: 3, begin: 32768, data: vec![9; 16384] },
            Message::Port(6881),
            Message::HaveAll,
            Message::Extended { id: 0, payload: b"d1:md11:ut_metadatai1eee".to_vec() },
        ] {
            rt(m);
        }
    }

    #[test]
    fn a_block_is_borrowed_from_the_buffer() {
        let mut b = Vec::new();
        encode(&Message::Piece { index: 2, begin: 16384, data: vec![7; 100] }, &mut b);
        encode(&Message::Have(1), &mut b);
        let (f, used) = decode_frame(&b, max_frame(Some(10)), None).unwrap().unwrap();
        assert_eq!(f, Frame::Block { index: 2, begin: 16384, data: &b[13..113] });
        assert_eq!(used, 113);
        let (f, _) = decode_frame(&b[used..], max_frame(Some(10)), None).unwrap().unwrap();
        assert_eq!(f, Frame::Message(Message::Have(1)));
        assert_eq!(decode_frame(&b[..50], max_frame(Some(10)), None).unwrap(), None);
    }

    #[test]
    fn known_bytes() {
        let mut b = Vec::new();
        encode(&Message::Request { index: 1, begin: 2, length: 3 }, &mut b);
        assert_eq!(b, [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        let (m, n) = decode(&[0, 0, 0, 5, 4, 0, 0, 1, 0, 0xaa], 100, None).unwrap().unwrap();
        assert_eq!((m, n), (Message::Have(256), 9));
    }

    #[test]
    fn oversized_and_malformed_frames() {
        // length prefix over the bound: refused before waiting for (or allocating) the body
        assert!(decode(&[0x7f, 0xff, 0xff, 0xff], max_frame(Some(10)), None).is_err());
        assert!(decode(&[0, 0x10, 0, 0], max_frame(Some(10)), None).is_err());
        // wrong payload sizes
        assert!(decode(&[0, 0, 0, 2, 0, 0], 100, None).is_err());
        assert!(decode(&[0, 0, 0, 4, 4, 0, 0, 1], 100, None).is_err());
        assert!(decode(&[0, 0, 0, 3, 5, 0xff, 0], 100, Some(1)).is_err());
        // a request for a huge block
        let mut b = Vec::new();
        encode(&Message::Request { index: 0, begin: 0, length: 1 << 20 }, &mut b);
        assert!(decode(&b, max_frame(None), None).is_err());
        let mut b = Vec::new();
        encode(&Message::Request { index: 0, begin: 0, length: 0 }, &mut b);
        assert!(decode(&b, max_frame(None), None).is_err());
        // piece message too short to hold its header
        assert!(decode(&[0, 0, 0, 5, 7, 0, 0, 0, 0], 100, None).is_err());
        // unknown ids are tolerated
        assert_eq!(decode(&[0, 0, 0, 1, 99], 100, None).unwrap().unwrap().0, Message::Unknown(99));
        assert!(max_frame(Some(10)) < 200_000);
    }

    #[test]
    fn handshake() {
        let h = Handshake { reserved: reserved(false), info_hash: [1; 20], peer_id: [2; 20] };
        let b = h.encode();
        assert_eq!(Handshake::decode(&b).unwrap(), Some(h.clone()));
        assert!(h.supports_extensions());
        assert_eq!(Handshake::decode(&b[..30]).unwrap(), None);
        assert!(Handshake::decode(&[18]).is_err());
        let mut bad = b;
        bad[5] = b'x';
        assert!(Handshake::decode(&bad).is_err());
    }

    #[test]
    fn bitfields() {
        let f = [true, false, true, true, false, false, false, false, true];
        let b = bitfield_bytes(&f);
        assert_eq!(b, vec![0b1011_0000, 0b1000_0000]);
        assert_eq!(bitfield_flags(&b, 9).unwrap(), f);
        assert!(bitfield_flags(&[0xff, 0xff], 9).is_err());
        assert!(bitfield_flags(&[0xff], 9).is_err());
    }
}
