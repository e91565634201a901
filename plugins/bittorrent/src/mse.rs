//! Message Stream Encryption / Protocol Encryption (MSE/PE), the obfuscation every mainstream
//! client speaks: a 768-bit Diffie-Hellman exchange, then RC4 (first 1024 bytes of each key
//! stream discarded) on both directions, or plaintext when both ends agree to it.
//!
//! The wire parts are pure (keys, hashes, the step-3 and step-4 messages, the
//! synchronisation search); [`initiate`] and [`respond`] are the thin async layer, and
//! [`PeerStream`] is the connection afterwards (plain TCP, or TCP with RC4 both ways).
//!
//! Bounds from the spec: each pad is at most 512 bytes, so the responder finds
//! `HASH('req1', S)` within 512 + 20 bytes after the initiator's key, and the initiator finds
//! the encrypted verification constant within 512 + 8 bytes after the responder's key. The
//! initial payload (IA) is accepted up to [`MAX_IA`] bytes.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use num_bigint::BigUint;
use rc4::{consts::U20, KeyInit as _, Rc4, StreamCipher as _};
use sha1::{Digest as _, Sha1};
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};

/// The 768-bit MODP prime of the spec (generator 2).
const PRIME_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";
/// Bytes of a public key (and of the shared secret).
pub const KEY_LEN: usize = 96;
/// Longest padding either side may send.
pub const MAX_PAD: usize = 512;
/// Longest initial payload accepted from an initiator.
pub const MAX_IA: usize = 4096;
/// `crypto_provide` / `crypto_select` bits.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
pub const CRYPTO_RC4: u32 = 0x02;
/// How long a whole handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// What this end asks for and accepts (`encryption = allow | prefer | require | off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Off: plaintext BitTorrent only (an encrypted incoming handshake is refused).
    Off,
    /// Allow (the default): dial with a plain handshake, and again with MSE offering RC4 or
    /// plaintext when the peer drops it (it requires encryption); accept both, choosing
    /// plaintext when offered. Clients users run (qBittorrent, Transmission) pick RC4 whenever
    /// MSE offers it, and RC4 on the data stream costs both ends CPU.
    #[default]
    Allow,
    /// Dial with MSE offering RC4 or plaintext (falling back to a plain handshake when the peer
    /// does not answer MSE); accept both; RC4 chosen when offered.
    Prefer,
    /// RC4 only, both ways.
    Require,
}

impl Policy {
    pub fn parse(v: &str) -> Option<Self> {
        match v.trim().to_ascii_lowercase().as_str() {
            "off" | "no" | "false" | "plaintext" | "disabled" => Some(Self::Off),
            "allow" | "allowed" | "enabled" | "auto" | "on" | "tolerate" | "tolerated" => Some(Self::Allow),
            "prefer" | "prefered" | "preferred" => Some(Self::Prefer),
            "require" | "required" | "force" | "forced" => Some(Self::Require),
            _ => None,
        }
    }

    /// The `crypto_provide` an initiator sends.
    pub fn provide(self) -> u32 {
        match self {
            Self::Require => CRYPTO_RC4,
            _ => CRYPTO_RC4 | CRYPTO_PLAINTEXT,
        }
    }

    /// What a responder selects from `provide`, if anything.
    pub fn select(self, provide: u32) -> Option<u32> {
        let plain = (provide & CRYPTO_PLAINTEXT != 0).then_some(CRYPTO_PLAINTEXT);
        let rc4 = (provide & CRYPTO_RC4 != 0).then_some(CRYPTO_RC4);
        match self {
            Self::Off => plain,
            Self::Allow => plain.or(rc4),
            Self::Prefer => rc4.or(plain),
            Self::Require => rc4,
        }
    }

    /// Whether an initiator accepts the responder's `select`.
    pub fn accepts(provided: u32, select: u32) -> bool {
        (select == CRYPTO_RC4 || select == CRYPTO_PLAINTEXT) && provided & select != 0
    }
}

#[derive(Debug, Error)]
pub enum MseError {
    #[error("MSE: the peer's public key is out of range")]
    BadKey,
    #[error("MSE: no synchronisation within the padding bounds")]
    NoSync,
    #[error("MSE: the peer's torrent is not one of ours")]
    UnknownTorrent,
    #[error("MSE: bad verification constant")]
    BadVc,
    #[error("MSE: the peer offers no method we accept ({0:#x})")]
    NoMethod(u32),
    #[error("MSE: padding of {0} bytes is over the limit")]
    Pad(usize),
    #[error("MSE: initial payload of {0} bytes is over the limit")]
    Ia(usize),
    #[error("MSE: plaintext handshake refused (encryption is required)")]
    PlaintextRefused,
    #[error("MSE: encrypted handshake refused (encryption is off)")]
    EncryptedRefused,
    #[error("MSE: handshake timed out")]
    Timeout,
    #[error("MSE: {0}")]
    Io(#[from] io::Error),
}

fn prime() -> BigUint {
    BigUint::parse_bytes(PRIME_HEX.as_bytes(), 16).unwrap_or_default()
}

/// SHA-1 over the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `n` as exactly 96 big-endian bytes.
fn to_key(n: &BigUint) -> [u8; KEY_LEN] {
    let b = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    out[KEY_LEN - b.len().min(KEY_LEN)..].copy_from_slice(&b[b.len().saturating_sub(KEY_LEN)..]);
    out
}

/// One side's Diffie-Hellman key pair.
pub struct KeyPair {
    private: BigUint,
    pub public: [u8; KEY_LEN],
}

impl KeyPair {
    /// From 20 random bytes (a 160-bit private key, as the spec suggests).
    pub fn from_random(random: [u8; 20]) -> Self {
        let private = BigUint::from_bytes_be(&random);
        let public = to_key(&BigUint::from(2u32).modpow(&private, &prime()));
        Self { private, public }
    }

    pub fn generate() -> Self {
        let mut r = [0u8; 20];
        fill_random(&mut r);
        Self::from_random(r)
    }

    /// The shared secret S with the peer's public key (refused unless 1 < Y < P - 1).
    pub fn secret(&self, theirs: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN], MseError> {
        let p = prime();
        let y = BigUint::from_bytes_be(theirs);
        if y <= BigUint::from(1u32) || y >= &p - 1u32 {
            return Err(MseError::BadKey);
        }
        Ok(to_key(&y.modpow(&self.private, &p)))
    }
}

fn fill_random(b: &mut [u8]) {
    if getrandom::fill(b).is_err() {
        // No system randomness: still different per call (the keys only obfuscate).
        for (i, x) in b.iter_mut().enumerate() {
            *x = (crate::random_u64() >> (i % 8)) as u8;
        }
    }
}

/// An RC4 key stream as MSE uses it: keyed with a 20-byte hash, first 1024 bytes discarded.
pub struct Cipher(Box<Rc4<U20>>);

impl Cipher {
    pub fn new(key: &[u8; 20]) -> Self {
        let mut c = Rc4::<U20>::new(key.into());
        let mut discard = [0u8; 1024];
        c.apply_keystream(&mut discard);
        Self(Box::new(c))
    }

    pub fn apply(&mut self, data: &mut [u8]) {
        self.0.apply_keystream(data);
    }
}

/// Both directions' ciphers; `initiator` says which end this is.
pub fn ciphers(secret: &[u8; KEY_LEN], skey: &[u8; 20], initiator: bool) -> (Cipher, Cipher) {
    let a = Cipher::new(&hash(&[b"keyA", secret, skey]));
    let b = Cipher::new(&hash(&[b"keyB", secret, skey]));
    // (encrypt, decrypt): A encrypts with keyA.
    if initiator {
        (a, b)
    } else {
        (b, a)
    }
}

/// `HASH('req1', S)`: the responder synchronises on it.
pub fn req1(secret: &[u8; KEY_LEN]) -> [u8; 20] {
    hash(&[b"req1", secret])
}

/// `HASH('req2', SKEY) xor HASH('req3', S)`: names the torrent without revealing it.
pub fn req23(skey: &[u8; 20], secret: &[u8; KEY_LEN]) -> [u8; 20] {
    let a = hash(&[b"req2", skey]);
    let b = hash(&[b"req3", secret]);
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Step 3 after the two hashes, encrypted: VC, crypto_provide, len(PadC) = 0, len(IA) = 0
/// (the BitTorrent handshake follows through the negotiated stream).
pub fn step3_tail(enc: &mut Cipher, provide: u32) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    m.extend_from_slice(&provide.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    enc.apply(&mut m);
    m
}

/// Step 4, encrypted: VC, crypto_select, len(PadD) = 0.
pub fn step4(enc: &mut Cipher, select: u32) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    m.extend_from_slice(&select.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    enc.apply(&mut m);
    m
}

/// Where `needle` ends in `hay`, if it is there.
pub fn find_end(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle).map(|p| p + needle.len())
}

fn random_pad() -> Vec<u8> {
    let mut len = [0u8; 2];
    fill_random(&mut len);
    let mut pad = vec![0u8; (u16::from_be_bytes(len) as usize) % 257];
    fill_random(&mut pad);
    pad
}

/// Reads one byte at a time until `needle` has been read, at most `limit` bytes: nothing past
/// it is consumed (what follows belongs to the next step).
async fn sync_on<R: AsyncRead + Unpin>(r: &mut R, needle: &[u8], limit: usize) -> Result<(), MseError> {
    let mut seen = Vec::with_capacity(limit.min(1024));
    while seen.len() < limit {
        seen.push(r.read_u8().await?);
        if seen.ends_with(needle) {
            return Ok(());
        }
    }
    Err(MseError::NoSync)
}

/// Dials as A offering `provide` (a [`Policy::provide`]): DH, then the negotiated stream (RC4
/// or plaintext) over `tcp`.
pub async fn initiate(tcp: TcpStream, skey: &[u8; 20], provide: u32) -> Result<PeerStream, MseError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, initiate_on(tcp, skey, provide)).await.map_err(|_| MseError::Timeout)?
}

async fn initiate_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: S,
    skey: &[u8; 20],
    provide: u32,
) -> Result<PeerStream<S>, MseError> {
    let keys = KeyPair::generate();
    let mut first = keys.public.to_vec();
    first.extend(random_pad());
    tcp.write_all(&first).await?;
    let mut yb = [0u8; KEY_LEN];
    tcp.read_exact(&mut yb).await?;
    let s = keys.secret(&yb)?;
    let (mut enc, mut dec) = ciphers(&s, skey, true);
    let mut third = req1(&s).to_vec();
    third.extend_from_slice(&req23(skey, &s));
    third.extend(step3_tail(&mut enc, provide));
    tcp.write_all(&third).await?;
    // The responder's encrypted VC: 8 zero bytes through its key stream.
    let mut vc = [0u8; 8];
    dec.apply(&mut vc);
    sync_on(&mut tcp, &vc, MAX_PAD + 8).await?;
    let mut head = [0u8; 6];
    tcp.read_exact(&mut head).await?;
    dec.apply(&mut head);
    let select = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let pad = u16::from_be_bytes([head[4], head[5]]) as usize;
    if pad > MAX_PAD {
        return Err(MseError::Pad(pad));
    }
    let mut padd = vec![0u8; pad];
    tcp.read_exact(&mut padd).await?;
    dec.apply(&mut padd);
    if !Policy::accepts(provide, select) {
        return Err(MseError::NoMethod(select));
    }
    Ok(PeerStream::negotiated(tcp, select, enc, dec, Vec::new()))
}

/// What the first bytes of an incoming connection are.
pub enum Incoming<S = TcpStream> {
    /// A plaintext BitTorrent handshake (its first 20 bytes were read, and are read again).
    Plain(PeerStream<S>),
    /// An MSE handshake for one of our torrents, done: the info hash, and the stream with the
    /// initiator's initial payload (usually its BitTorrent handshake) ready to read.
    Encrypted([u8; 20], PeerStream<S>),
}

/// Answers an incoming connection as B. `first20` are its first 20 bytes (already read): the
/// plaintext protocol header, else the start of an MSE key. `skeys`: the info hashes we serve.
pub async fn respond(
    tcp: TcpStream,
    first20: [u8; 20],
    skeys: &[[u8; 20]],
    policy: Policy,
) -> Result<Incoming, MseError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, respond_on(tcp, first20, skeys, policy))
        .await
        .map_err(|_| MseError::Timeout)?
}

async fn respond_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: S,
    first20: [u8; 20],
    skeys: &[[u8; 20]],
    policy: Policy,
) -> Result<Incoming<S>, MseError> {
    if first20[0] == 19 && &first20[1..20] == crate::peer_wire::PROTOCOL {
        if policy == Policy::Require {
            return Err(MseError::PlaintextRefused);
        }
        return Ok(Incoming::Plain(PeerStream::plain_with(tcp, first20.to_vec())));
    }
    if policy == Policy::Off {
        return Err(MseError::EncryptedRefused);
    }
    let mut ya = [0u8; KEY_LEN];
    ya[..20].copy_from_slice(&first20);
    tcp.read_exact(&mut ya[20..]).await?;
    let keys = KeyPair::generate();
    let s = keys.secret(&ya)?;
    let mut second = keys.public.to_vec();
    second.extend(random_pad());
    tcp.write_all(&second).await?;
    sync_on(&mut tcp, &req1(&s), MAX_PAD + 20).await?;
    let mut x = [0u8; 20];
    tcp.read_exact(&mut x).await?;
    let skey = *skeys.iter().find(|k| req23(k, &s) == x).ok_or(MseError::UnknownTorrent)?;
    let (mut enc, mut dec) = ciphers(&s, &skey, false);
    let mut head = [0u8; 14];
    tcp.read_exact(&mut head).await?;
    dec.apply(&mut head);
    if head[..8] != [0u8; 8] {
        return Err(MseError::BadVc);
    }
    let provide = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    let pad = u16::from_be_bytes([head[12], head[13]]) as usize;
    if pad > MAX_PAD {
        return Err(MseError::Pad(pad));
    }
    let mut padc = vec![0u8; pad + 2];
    tcp.read_exact(&mut padc).await?;
    dec.apply(&mut padc);
    let ia_len = u16::from_be_bytes([padc[pad], padc[pad + 1]]) as usize;
    if ia_len > MAX_IA {
        return Err(MseError::Ia(ia_len));
    }
    let mut ia = vec![0u8; ia_len];
    tcp.read_exact(&mut ia).await?;
    dec.apply(&mut ia);
    let select = policy.select(provide).ok_or(MseError::NoMethod(provide))?;
    tcp.write_all(&step4(&mut enc, select)).await?;
    Ok(Incoming::Encrypted(skey, PeerStream::negotiated(tcp, select, enc, dec, ia)))
}

/// A peer connection after the handshake: plaintext or RC4 both ways, with bytes already
/// received (a plaintext header, an MSE initial payload) served first.
pub struct PeerStream<S = TcpStream> {
    inner: S,
    prefix: Vec<u8>,
    at: usize,
    /// (encrypt, decrypt) when RC4 was negotiated.
    rc4: Option<(Cipher, Cipher)>,
    /// Encrypted bytes accepted by `poll_write` and not yet taken by the socket.
    pending: Vec<u8>,
    sent: usize,
}

impl<S> PeerStream<S> {
    pub fn plain(inner: S) -> Self {
        Self::plain_with(inner, Vec::new())
    }

    fn plain_with(inner: S, prefix: Vec<u8>) -> Self {
        Self { inner, prefix, at: 0, rc4: None, pending: Vec::new(), sent: 0 }
    }

    fn negotiated(inner: S, select: u32, enc: Cipher, dec: Cipher, prefix: Vec<u8>) -> Self {
        let rc4 = (select == CRYPTO_RC4).then_some((enc, dec));
        Self { inner, prefix, at: 0, rc4, pending: Vec::new(), sent: 0 }
    }

    pub fn is_encrypted(&self) -> bool {
        self.rc4.is_some()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> PeerStream<S> {
    /// Hands what is pending to the socket.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.prefix.len() {
            let n = (me.prefix.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.prefix[me.at..me.at + n]);
            me.at += n;
            if me.at == me.prefix.len() {
                me.prefix = Vec::new();
                me.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut me.inner).poll_read(cx, buf))?;
        if let Some((_, dec)) = me.rc4.as_mut() {
            dec.apply(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.rc4.is_none() {
            return Pin::new(&mut me.inner).poll_write(cx, data);
        }
        // Encrypted bytes cannot be taken back: accept `data` only once the last batch is out.
        if !me.pending.is_empty() {
            ready!(me.poll_pending(cx))?;
        }
        let n = data.len().min(256 << 10);
        me.pending.extend_from_slice(&data[..n]);
        if let Some((enc, _)) = me.rc4.as_mut() {
            enc.apply(&mut me.pending);
        }
        // Start sending; whatever the socket does not take now goes on the next write/flush.
        if let Poll::Ready(Err(e)) = me.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_pending(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_pending(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_derive_the_same_secret() {
        let a = KeyPair::from_random([7; 20]);
        let b = KeyPair::from_random([9; 20]);
        assert_eq!(a.secret(&b.public).unwrap(), b.secret(&a.public).unwrap());
        assert!(matches!(a.secret(&[0; KEY_LEN]), Err(MseError::BadKey)));
        let mut one = [0u8; KEY_LEN];
        one[KEY_LEN - 1] = 1;
        assert!(matches!(a.secret(&one), Err(MseError::BadKey)));
        assert!(matches!(a.secret(&[0xff; KEY_LEN]), Err(MseError::BadKey)));
    }

    #[test]
    fn rc4_discards_1024_bytes() {
        // The classic vector: key "Key", "Plaintext" -> bbf316e8d940af0ad3.
        let mut c = Rc4::<rc4::consts::U3>::new(b"Key".into());
        let mut m = *b"Plaintext";
        c.apply_keystream(&mut m);
        assert_eq!(hex::encode(m), "bbf316e8d940af0ad3");
        // MSE's cipher is the same key stream 1024 bytes in.
        let key = [0x42u8; 20];
        let mut raw = Rc4::<U20>::new(&key.into());
        let mut stream = vec![0u8; 1024 + 16];
        raw.apply_keystream(&mut stream);
        let mut ours = [0u8; 16];
        Cipher::new(&key).apply(&mut ours);
        assert_eq!(ours[..], stream[1024..]);
        // Each side's decryptor is the other's encryptor.
        let (mut ea, mut da) = ciphers(&[3; KEY_LEN], &[4; 20], true);
        let (mut eb, mut db) = ciphers(&[3; KEY_LEN], &[4; 20], false);
        let mut m = *b"hello, peer";
        ea.apply(&mut m);
        assert_ne!(&m, b"hello, peer");
        db.apply(&mut m);
        assert_eq!(&m, b"hello, peer");
        eb.apply(&mut m);
        da.apply(&mut m);
        assert_eq!(&m, b"hello, peer");
    }

    #[test]
    fn policies() {
        assert_eq!(Policy::parse("Require"), Some(Policy::Require));
        assert_eq!(Policy::parse("x"), None);
        assert_eq!(Policy::Prefer.select(3), Some(CRYPTO_RC4));
        assert_eq!(Policy::Prefer.select(1), Some(CRYPTO_PLAINTEXT));
        assert_eq!(Policy::Require.select(1), None);
        assert_eq!(Policy::Off.select(2), None);
        assert_eq!(Policy::Allow.select(3), Some(CRYPTO_PLAINTEXT));
        assert_eq!(Policy::Allow.select(2), Some(CRYPTO_RC4));
        assert_eq!(Policy::default(), Policy::Allow);
        assert_eq!(Policy::parse("allow"), Some(Policy::Allow));
        assert_eq!(Policy::parse("prefer"), Some(Policy::Prefer));
        assert!(Policy::accepts(3, 1) && !Policy::accepts(2, 1) && !Policy::accepts(3, 3));
        assert_eq!(find_end(b"xxabcyy", b"abc"), Some(5));
        assert_eq!(find_end(b"xxab", b"abc"), None);
    }

    async fn handshake(
        a: Policy,
        b: Policy,
    ) -> (Result<PeerStream<tokio::io::DuplexStream>, MseError>, Result<Incoming<tokio::io::DuplexStream>, MseError>)
    {
        let (x, mut y) = tokio::io::duplex(1 << 16);
        let ih = [5u8; 20];
        let resp = async move {
            let mut first = [0u8; 20];
            y.read_exact(&mut first).await?;
            respond_on(y, first, &[[1; 20], ih], b).await
        };
        tokio::join!(initiate_on(x, &ih, a.provide()), resp)
    }

    #[test]
    fn initiator_and_responder_agree_and_carry_bytes() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for (a, b, rc4) in [
                (Policy::Prefer, Policy::Prefer, true),
                (Policy::Require, Policy::Prefer, true),
                (Policy::Prefer, Policy::Require, true),
                (Policy::Require, Policy::Allow, true),
                (Policy::Allow, Policy::Require, true),
                (Policy::Allow, Policy::Prefer, true),
                // The default answering: plaintext whenever the dialler offers it.
                (Policy::Allow, Policy::Allow, false),
                (Policy::Prefer, Policy::Allow, false),
            ] {
                let (ra, rb) = handshake(a, b).await;
                let mut sa = ra.unwrap();
                let Incoming::Encrypted(ih, mut sb) = rb.unwrap() else { panic!("not encrypted") };
                assert_eq!(ih, [5u8; 20]);
                assert_eq!((sa.is_encrypted(), sb.is_encrypted()), (rc4, rc4));
                let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
                let send = big.clone();
                let w = async move {
                    sa.write_all(&send).await.unwrap();
                    sa.flush().await.unwrap();
                    sa
                };
                let r = async move {
                    let mut got = vec![0u8; 300_000];
                    sb.read_exact(&mut got).await.unwrap();
                    got
                };
                let (_, got) = tokio::join!(w, r);
                assert!(got == big);
            }
            // Require against plaintext-only: no method.
            let (ra, rb) = handshake(Policy::Require, Policy::Off).await;
            assert!(ra.is_err() && rb.is_err());
        });
    }

    #[test]
    fn plaintext_header_and_garbage() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut hdr = [0u8; 20];
            hdr[0] = 19;
            hdr[1..].copy_from_slice(crate::peer_wire::PROTOCOL);
            let (_x, y) = tokio::io::duplex(1024);
            let Ok(Incoming::Plain(mut s)) = respond_on(y, hdr, &[], Policy::Prefer).await else { panic!() };
            let mut back = [0u8; 20];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, hdr);
            let (_x, y) = tokio::io::duplex(1024);
            assert!(matches!(respond_on(y, hdr, &[], Policy::Require).await, Err(MseError::PlaintextRefused)));
            // A key followed by 2000 bytes of noise: the search stops at its bound.
            let (mut x, y) = tokio::io::duplex(1 << 16);
            let k = KeyPair::from_random([3; 20]);
            x.write_all(&k.public[20..]).await.unwrap();
            x.write_all(&[0xAB; 2000]).await.unwrap();
            let mut first = [0u8; 20];
            first.copy_from_slice(&k.public[..20]);
            assert!(matches!(respond_on(y, first, &[[1; 20]], Policy::Prefer).await, Err(MseError::NoSync)));
        });
    }
}
