//! The chunk exchange protocol `/chiral/chunk/1.0.0`, sans-IO: messages and their byte
//! encoding (tested without sockets), plus the thin libp2p request-response codec that frames
//! them on a stream.
//!
//! Every message travels as one frame: a big-endian `u32` length, then that many bytes. Each
//! length is checked against a bound before anything is allocated.
//!
//! Requests (fixed size):
//! - `0x01 root[32]`: the manifest of `root` (its name, size and leaf hashes);
//! - `0x02 root[32] index:u32`: chunk `index` with its Merkle proof.
//!
//! Responses:
//! - `0x01 size:u64 name_len:u16 name leaf_count:u32 leaves[32 * leaf_count]`;
//! - `0x02 index:u32 proof_len:u8 proof[32 * proof_len] data_len:u32 data`;
//! - `0x03 msg_len:u16 msg` (the peer does not have it, or cannot read it).

use std::io;

use chiral_sdk::verify::{Hash32, CHUNK_SIZE};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/chiral/chunk/1.0.0");

/// Largest request frame (a chunk request is 37 bytes).
pub const MAX_REQUEST: usize = 64;
/// Most leaves a manifest may list: 1 Mi chunks of 256 KiB = 256 GiB of content (32 MiB of leaves).
pub const MAX_LEAVES: usize = 1 << 20;
/// Longest file name carried in a manifest.
pub const MAX_NAME: usize = 1024;
/// Longest proof (a tree over `MAX_LEAVES` leaves is 22 levels deep; 64 is generous).
pub const MAX_PROOF: usize = 64;
/// Largest response frame: the biggest manifest or a chunk with its proof.
pub const MAX_RESPONSE: usize = 1 + 8 + 2 + MAX_NAME + 4 + 32 * MAX_LEAVES;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Manifest { root: Hash32 },
    Chunk { root: Hash32, index: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Manifest { size: u64, name: String, leaves: Vec<Hash32> },
    Chunk { index: u32, proof: Vec<Hash32>, data: Vec<u8> },
    Error { message: String },
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A cursor over a frame that never reads past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(bad(format!("truncated message: need {n} bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn hash(&mut self) -> io::Result<Hash32> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    fn hashes(&mut self, n: usize) -> io::Result<Vec<Hash32>> {
        let raw = self.take(32 * n)?;
        Ok(raw.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect())
    }
    fn end(&self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(37);
    match r {
        Request::Manifest { root } => {
            out.push(1);
            out.extend_from_slice(root);
        }
        Request::Chunk { root, index } => {
            out.push(2);
            out.extend_from_slice(root);
            out.extend_from_slice(&index.to_be_bytes());
        }
    }
    out
}

pub fn decode_request(buf: &[u8]) -> io::Result<Request> {
    let mut r = Reader { buf };
    let req = match r.u8()? {
        1 => Request::Manifest { root: r.hash()? },
        2 => Request::Chunk { root: r.hash()?, index: r.u32()? },
        t => return Err(bad(format!("unknown request type {t}"))),
    };
    r.end()?;
    Ok(req)
}

/// Encodes a response; refuses values beyond the protocol's bounds (so a peer never sends
/// what the other side would reject).
pub fn encode_response(r: &Response) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match r {
        Response::Manifest { size, name, leaves } => {
            if name.len() > MAX_NAME || leaves.len() > MAX_LEAVES {
                return Err(bad("manifest beyond the protocol's bounds"));
            }
            out.reserve(15 + name.len() + 32 * leaves.len());
            out.push(1);
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(leaves.len() as u32).to_be_bytes());
            for l in leaves {
                out.extend_from_slice(l);
            }
        }
        Response::Chunk { index, proof, data } => {
            if proof.len() > MAX_PROOF || data.len() as u64 > CHUNK_SIZE {
                return Err(bad("chunk beyond the protocol's bounds"));
            }
            out.reserve(10 + 32 * proof.len() + data.len());
            out.push(2);
            out.extend_from_slice(&index.to_be_bytes());
            out.push(proof.len() as u8);
            for p in proof {
                out.extend_from_slice(p);
            }
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        Response::Error { message } => {
            let m: String = message.chars().take(512).collect();
            out.push(3);
            out.extend_from_slice(&(m.len() as u16).to_be_bytes());
            out.extend_from_slice(m.as_bytes());
        }
    }
    Ok(out)
}

pub fn decode_response(buf: &[u8]) -> io::Result<Response> {
    let mut r = Reader { buf };
    let resp = match r.u8()? {
        1 => {
            let size = r.u64()?;
            let name_len = r.u16()? as usize;
            if name_len > MAX_NAME {
                return Err(bad(format!("name of {name_len} bytes")));
            }
            let name = String::from_utf8(r.take(name_len)?.to_vec()).map_err(|_| bad("name is not UTF-8"))?;
            let count = r.u32()? as usize;
            if count > MAX_LEAVES {
                return Err(bad(format!("{count} leaves")));
            }
            Response::Manifest { size, name, leaves: r.hashes(count)? }
        }
        2 => {
            let index = r.u32()?;
            let proof_len = r.u8()? as usize;
            if proof_len > MAX_PROOF {
                return Err(bad(format!("proof of {proof_len} hashes")));
            }
            let proof = r.hashes(proof_len)?;
            let data_len = r.u32()? as u64;
            if data_len > CHUNK_SIZE {
                return Err(bad(format!("chunk of {data_len} bytes")));
            }
            Response::Chunk { index, proof, data: r.take(data_len as usize)?.to_vec() }
        }
        3 => {
            let n = r.u16()? as usize;
            Response::Error { message: String::from_utf8_lossy(r.take(n)?).into_owned() }
        }
        t => return Err(bad(format!("unknown response type {t}"))),
    };
    r.end()?;
    Ok(resp)
}

/// Reads one frame of at most `max` bytes (checked before allocating).
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(bad(format!("frame of {len} bytes exceeds the bound of {max}")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, body: &[u8]) -> io::Result<()> {
    io.write_all(&(body.len() as u32).to_be_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// The libp2p request-response codec of the chunk protocol.
#[derive(Clone, Default)]
pub struct ChunkCodec;

impl libp2p::request_response::Codec for ChunkCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_request(&read_frame(io, MAX_REQUEST).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_response(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Request) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode_request(&req)).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, resp: Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_response(io, &resp).await
    }
}

/// Writes a response as one frame; a chunk's data goes out from its own buffer (no copy into a
/// frame buffer).
pub async fn write_response<T: AsyncWrite + Unpin>(io: &mut T, resp: &Response) -> io::Result<()> {
    let Response::Chunk { index, proof, data } = resp else {
        return write_frame(io, &encode_response(resp)?).await;
    };
    if proof.len() > MAX_PROOF || data.len() as u64 > CHUNK_SIZE {
        return Err(bad("chunk beyond the protocol's bounds"));
    }
    let mut head = Vec::with_capacity(14 + 32 * proof.len());
    let body_len = 1 + 4 + 1 + 32 * proof.len() + 4 + data.len();
    head.extend_from_slice(&(body_len as u32).to_be_bytes());
    head.push(2);
    head.extend_from_slice(&index.to_be_bytes());
    head.push(proof.len() as u8);
    for p in proof {
        head.extend_from_slice(p);
    }
    head.extend_from_slice(&(data.len() as u32).to_be_bytes());
    io.write_all(&head).await?;
    io.write_all(data).await?;
    io.flush().await
}

/// Reads one response frame; a chunk's data is read straight into its own buffer (no frame
/// buffer, no copy). Every length is checked against its bound before anything is allocated.
pub async fn read_response<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Response> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RESPONSE {
        return Err(bad(format!("frame of {len} bytes exceeds the bound of {MAX_RESPONSE}")));
    }
    if len < 6 {
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        return decode_response(&buf);
    }
    let mut head = [0u8; 6];
    io.read_exact(&mut head).await?;
    if head[0] != 2 {
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&head);
        buf.resize(len, 0);
        io.read_exact(&mut buf[6..]).await?;
        return decode_response(&buf);
    }
    let index = u32::from_be_bytes(head[1..5].try_into().expect("4 bytes"));
    let proof_len = head[5] as usize;
    if proof_len > MAX_PROOF {
        return Err(bad(format!("proof of {proof_len} hashes")));
    }
    let mut rest = vec![0u8; 32 * proof_len + 4];
    io.read_exact(&mut rest).await?;
    let proof = rest[..32 * proof_len].chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
    let data_len = u32::from_be_bytes(rest[32 * proof_len..].try_into().expect("4 bytes")) as usize;
    if data_len as u64 > CHUNK_SIZE {
        return Err(bad(format!("chunk of {data_len} bytes")));
    }
    if 6 + rest.len() + data_len != len {
        return Err(bad(format!("chunk frame of {len} bytes carries {data_len} bytes of data")));
    }
    let mut data = vec![0u8; data_len];
    io.read_exact(&mut data).await?;
    Ok(Response::Chunk { index, proof, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn requests_round_trip_and_reject_garbage() {
        for r in [Request::Manifest { root: [7; 32] }, Request::Chunk { root: [9; 32], index: 123_456 }] {
            assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        }
        assert!(decode_request(&[]).is_err());
        assert!(decode_request(&[9; 33]).is_err());
        assert!(decode_request(&[1; 20]).is_err(), "truncated root");
        let mut long = encode_request(&Request::Manifest { root: [1; 32] });
        long.push(0);
        assert!(decode_request(&long).is_err(), "trailing bytes");
    }

    #[test]
    fn responses_round_trip() {
        let rs = [
            Response::Manifest { size: 1 << 40, name: "ünïcode.bin".into(), leaves: vec![[1; 32], [2; 32]] },
            Response::Chunk { index: 3, proof: vec![[4; 32]; 5], data: vec![5; CHUNK_SIZE as usize] },
            Response::Error { message: "no such content".into() },
        ];
        for r in rs {
            assert_eq!(decode_response(&encode_response(&r).unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn response_bounds_are_enforced_both_ways() {
        let big = Response::Chunk { index: 0, proof: vec![], data: vec![0; CHUNK_SIZE as usize + 1] };
        assert!(encode_response(&big).is_err());
        // A hand-made chunk claiming more than CHUNK_SIZE bytes is refused before reading them.
        let mut raw = vec![2, 0, 0, 0, 0, 0];
        raw.extend_from_slice(&(CHUNK_SIZE as u32 + 1).to_be_bytes());
        assert!(decode_response(&raw).unwrap_err().to_string().contains("chunk of"));
        // A proof longer than MAX_PROOF.
        assert!(decode_response(&[2, 0, 0, 0, 0, 200]).unwrap_err().to_string().contains("proof"));
        // A manifest claiming more leaves than allowed, or more than it carries.
        let mut m = vec![1];
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        let mut huge = m.clone();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_response(&huge).unwrap_err().to_string().contains("leaves"));
        m.extend_from_slice(&3u32.to_be_bytes());
        m.extend_from_slice(&[0; 64]);
        assert!(decode_response(&m).unwrap_err().to_string().contains("truncated"));
        assert!(decode_response(&[0x7f]).is_err());
    }

    #[test]
    fn streamed_responses_match_the_frame_codec() {
        let rs = [
            Response::Manifest { size: 9, name: "n".into(), leaves: vec![[1; 32]] },
            Response::Chunk { index: 3, proof: vec![[4; 32]; 5], data: vec![5; 1000] },
            Response::Chunk { index: 0, proof: vec![], data: vec![] },
            Response::Error { message: "no".into() },
        ];
        for r in rs {
            let mut wire = Vec::new();
            block_on(write_response(&mut wire, &r)).unwrap();
            let mut framed = Vec::new();
            block_on(write_frame(&mut framed, &encode_response(&r).unwrap())).unwrap();
            assert_eq!(wire, framed);
            assert_eq!(block_on(read_response(&mut &wire[..])).unwrap(), r);
        }
        // A chunk frame whose lengths disagree, a data length over the bound: refused.
        let mut wire = Vec::new();
        block_on(write_response(&mut wire, &Response::Chunk { index: 1, proof: vec![], data: vec![1; 10] })).unwrap();
        wire[3] += 1;
        wire.push(0);
        assert!(block_on(read_response(&mut &wire[..])).is_err());
        let mut raw = 10u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&[2, 0, 0, 0, 0, 0]);
        raw.extend_from_slice(&(CHUNK_SIZE as u32 + 1).to_be_bytes());
        assert!(block_on(read_response(&mut &raw[..])).unwrap_err().to_string().contains("chunk of"));
    }

    #[test]
    fn frames_are_bounded_before_allocation() {
        let mut wire = Vec::new();
        block_on(write_frame(&mut wire, b"hello")).unwrap();
        assert_eq!(block_on(read_frame(&mut &wire[..], 5)).unwrap(), b"hello");
        assert!(block_on(read_frame(&mut &wire[..], 4)).is_err());
        // A length of 4 GiB with no body: refused on the length alone.
        let lie = u32::MAX.to_be_bytes();
        let e = block_on(read_frame(&mut &lie[..], MAX_RESPONSE)).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        // A truncated body is an error, not a hang.
        assert!(block_on(read_frame(&mut &[0, 0, 0, 9, 1][..], 100)).is_err());
    }
}
