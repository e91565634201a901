//! A Chiral content as an engine source: the providers found through the DHT, the manifest
//! (leaf hashes checked against the root), and chunk fetches spread over providers by
//! reputation and speed. Every chunk is checked (leaf hash and Merkle proof) before it is
//! handed over; a provider that sends bad data is penalised and not asked again.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chiral_sdk::ident::TorrentInfo;
use chiral_sdk::{
    abi::PeerStat,
    plugin::BoxFut,
    verify::{leaf_hash, merkle_root, verify_proof, Hash32, CHUNK_SIZE},
    ContentInfo, Events, HashKind, PieceSource, PluginError,
};
use libp2p::{Multiaddr, PeerId};

use crate::{
    node::Node,
    records::{self, chunk_count, content_id, FileMeta},
    reputation,
    wire::{Request, Response},
};

/// Attempts per chunk before the fetch fails (the engine retries on top).
const ATTEMPTS: usize = 4;

#[derive(Default)]
struct ProviderState {
    in_flight: usize,
    banned: bool,
    bytes: u64,
    chunks: u64,
    /// The wallet its signed metadata record publishes, if any.
    wallet: Option<String>,
}

/// A tag for each chunk verification, unique in this process (a random start, then counted):
/// the host bills a chunk once per content, and a chunk verified again after a crash, under
/// another tag, is recognised as billed already (docs/payments.md).
fn next_verification() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
    });
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The source handed to the engine (cheap to clone into fetch futures).
pub struct ChiralSource {
    inner: Arc<Inner>,
}

struct Inner {
    node: Node,
    root: Hash32,
    name: String,
    size: u64,
    leaves: Vec<Hash32>,
    providers: Mutex<HashMap<PeerId, ProviderState>>,
    events: Events,
    /// Opened for a magnet and the metadata record carries the info dictionary that hashes to
    /// its info hash: the source describes itself as the torrent (SHA-1 pieces, the dictionary
    /// in `root`), so the host can check it and the engine verifies every piece against it.
    torrent: Option<(Vec<u8>, TorrentInfo)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What is wrong with a manifest or a chunk a provider sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("{leaves} leaves for {size} bytes")]
    LeafCount { leaves: usize, size: u64 },
    #[error("the leaves do not add up to the root")]
    Root,
    #[error("no chunk {0}")]
    NoChunk(u32),
    #[error("chunk {index} has {got} bytes, expected {want}")]
    Length { index: u32, got: usize, want: u64 },
    #[error("chunk {0} does not match its leaf hash")]
    Leaf(u32),
    #[error("chunk {0} came with a wrong Merkle proof")]
    Proof(u32),
}

/// The file length the root commits to: every chunk but the last is `CHUNK_SIZE` long, and the
/// last one's bytes (checked against its leaf and the root) give the rest. A manifest's `size`
/// is only a claim; this is what decides.
pub fn committed_size(root: &Hash32, leaves: &[Hash32], last: &[u8], proof: &[Hash32]) -> Result<u64, ChunkError> {
    let index = leaves.len().checked_sub(1).ok_or(ChunkError::NoChunk(0))?;
    let i32 = index as u32;
    if last.len() as u64 > CHUNK_SIZE || (last.is_empty() && index > 0) {
        return Err(ChunkError::Length { index: i32, got: last.len(), want: CHUNK_SIZE });
    }
    let leaf = leaf_hash(last);
    if leaf != leaves[index] {
        return Err(ChunkError::Leaf(i32));
    }
    if !verify_proof(root, index, leaves.len(), &leaf, proof) {
        return Err(ChunkError::Proof(i32));
    }
    Ok(index as u64 * CHUNK_SIZE + last.len() as u64)
}

/// Checks a manifest against the root it was asked for.
pub fn check_manifest(root: &Hash32, size: u64, leaves: &[Hash32]) -> Result<(), ChunkError> {
    if leaves.len() as u64 != chunk_count(size) {
        return Err(ChunkError::LeafCount { leaves: leaves.len(), size });
    }
    if &merkle_root(leaves) != root {
        return Err(ChunkError::Root);
    }
    Ok(())
}

/// Checks one chunk: its length, its leaf hash and its proof up to the root.
pub fn check_chunk(
    root: &Hash32,
    leaves: &[Hash32],
    size: u64,
    index: u32,
    data: &[u8],
    proof: &[Hash32],
) -> Result<(), ChunkError> {
    let i = index as usize;
    let Some(expect) = leaves.get(i) else { return Err(ChunkError::NoChunk(index)) };
    let want = size.saturating_sub(index as u64 * CHUNK_SIZE).min(CHUNK_SIZE);
    if data.len() as u64 != want {
        return Err(ChunkError::Length { index, got: data.len(), want });
    }
    let leaf = leaf_hash(data);
    if &leaf != expect {
        return Err(ChunkError::Leaf(index));
    }
    if !verify_proof(root, i, leaves.len(), &leaf, proof) {
        return Err(ChunkError::Proof(index));
    }
    Ok(())
}

impl ChiralSource {
    /// Finds providers of `root` (DHT providers and the seeders of its metadata record), gets
    /// the manifest from the first that answers with a valid one.
    /// Opens the content `root`; `magnet_info_hash` when it was found for a magnet.
    pub async fn open(
        node: Node,
        root: Hash32,
        magnet_info_hash: Option<&str>,
        events: Events,
    ) -> Result<Arc<Self>, PluginError> {
        node.join().await;
        let cid = content_id(&root);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Metadata records, one per publisher (signed; each lists its publisher as the seeder).
        let mut metas_by: Vec<(PeerId, FileMeta)> = Vec::new();
        let mut candidates: Vec<PeerId> = Vec::new();
        let mut round = 0u32;
        loop {
            round += 1;
            let (providers, metas) = tokio::join!(
                node.get_providers(crate::records::meta_key(&root)),
                node.get_record(crate::records::meta_key(&root))
            );
            let providers = providers?;
            let copies = metas?;
            let mkey = records::meta_key(&root);
            let (found, refused) =
                records::meta_entries(&mkey, copies.iter().map(|(_, v)| v.as_slice()), records::now());
            for r in refused {
                events.warn(format!("metadata record rejected: {r}"));
            }
            for m in found {
                if !metas_by.iter().any(|(p, _)| *p == m.publisher) {
                    metas_by.push((m.publisher, m.body));
                }
            }
            let mut seen: HashSet<PeerId> = candidates.iter().copied().collect();
            for p in providers {
                if seen.insert(p) {
                    candidates.push(p);
                }
            }
            for (_, m) in &metas_by {
                for s in &m.seeders {
                    let Ok(p) = s.peer_id.parse::<PeerId>() else { continue };
                    let addrs: Vec<Multiaddr> = s.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    node.add_addresses(p, addrs);
                    if seen.insert(p) {
                        candidates.push(p);
                    }
                }
            }
            candidates.retain(|p| *p != node.peer_id());
            if !candidates.is_empty() || Instant::now() >= deadline {
                break;
            }
            events.debug(format!("{cid}: no provider yet (round {round}), asking again"));
            tokio::time::sleep(Duration::from_millis(500 * round.min(6) as u64)).await;
        }
        if candidates.is_empty() {
            return Err(PluginError::not_found(format!("no provider of {cid} found on the Chiral network")));
        }
        events.info(format!("{cid}: {} provider(s)", candidates.len()));

        // Manifest: best-reputed providers first, all asked until one gives a valid manifest.
        candidates.sort_by(|a, b| node.metrics_of(b).score.total_cmp(&node.metrics_of(a).score));
        let mut errors = Vec::new();
        let mut manifest = None;
        for p in &candidates {
            let t0 = Instant::now();
            match node.request(*p, Request::Manifest { root }).await {
                Ok(Response::Manifest { size, name, leaves }) => match check_manifest(&root, size, &leaves) {
                    Ok(()) => {
                        node.update_metrics(*p, |m| m.success(0, t0.elapsed()));
                        manifest = Some((*p, size, name, leaves));
                        break;
                    }
                    Err(e) => {
                        node.update_metrics(*p, |m| m.bad_data());
                        events.warn(format!("{p} sent a bad manifest: {e}"));
                        errors.push(format!("{p}: {e}"));
                    }
                },
                Ok(Response::Error { message }) => errors.push(format!("{p}: {}", chiral_sdk::text::line(&message))),
                Ok(_) => errors.push(format!("{p}: unexpected answer")),
                Err(e) => {
                    node.update_metrics(*p, |m| m.failure());
                    errors.push(e.message.to_string());
                }
            }
        }
        let Some((from, claimed, name, leaves)) = manifest else {
            return Err(PluginError::network(format!("no provider of {cid} gave its manifest: {}", errors.join("; "))));
        };
        // The length the root commits to, from the last chunk (verified), whoever claimed what.
        let size = committed_size_from(&node, &root, &leaves, from, &candidates, &events).await?;
        let mut banned = HashSet::new();
        if claimed != size {
            node.update_metrics(from, |m| m.bad_data());
            banned.insert(from);
            events.warn(format!(
                "{from} sent bad data, dropped: its manifest claims {claimed} bytes where the root commits to {size}"
            ));
        }
        let meta = metas_by.iter().map(|(_, m)| m).find(|m| m.size == size);
        let name = meta.map(|m| m.name.clone()).filter(|n| !n.is_empty()).unwrap_or(name);
        let torrent = match (magnet_info_hash, meta) {
            (Some(ih), Some(m)) if m.info_hash.as_deref() == Some(ih) => metas_by
                .iter()
                .filter(|(_, m)| m.size == size && m.info_hash.as_deref() == Some(ih))
                .find_map(|(_, m)| m.torrent_info()),
            _ => None,
        };
        if magnet_info_hash.is_some() && torrent.is_none() {
            events.info(format!("{cid}: no info dictionary for the magnet in its record; its bytes count only once the torrent's hashes are known"));
        }
        let wallets: HashMap<PeerId, Option<String>> = metas_by
            .iter()
            .map(|(p, m)| {
                let w = m.wallet();
                if w.is_none() && m.wallet.is_some() {
                    events.warn(format!(
                        "{p} published a malformed wallet {:?}: ignored",
                        chiral_sdk::text::line(m.wallet.as_deref().unwrap_or(""))
                    ));
                }
                (*p, w)
            })
            .collect();
        let providers = candidates
            .into_iter()
            .map(|p| {
                let st = ProviderState {
                    banned: banned.contains(&p),
                    wallet: wallets.get(&p).cloned().flatten(),
                    ..ProviderState::default()
                };
                (p, st)
            })
            .collect();
        let inner = Inner { node, root, name, size, leaves, providers: Mutex::new(providers), events, torrent };
        Ok(Arc::new(Self { inner: Arc::new(inner) }))
    }

    /// Whether the source describes itself as the torrent of the magnet it was opened for (its
    /// record's info dictionary hashes to the info hash).
    pub fn proven_torrent(&self) -> bool {
        self.inner.torrent.is_some()
    }

    /// Bytes and chunks each provider delivered so far.
    pub fn per_provider(&self) -> Vec<(String, u64, u64)> {
        self.inner.per_provider()
    }
}

/// Fetches the last chunk (the manifest's sender first, then the others) and returns the length
/// the root commits to.
async fn committed_size_from(
    node: &Node,
    root: &Hash32,
    leaves: &[Hash32],
    first: PeerId,
    candidates: &[PeerId],
    events: &Events,
) -> Result<u64, PluginError> {
    let index = (leaves.len() - 1) as u32;
    let order = std::iter::once(first).chain(candidates.iter().copied().filter(|p| *p != first));
    let mut errors = Vec::new();
    for p in order {
        match node.request(p, Request::Chunk { root: *root, index }).await {
            Ok(Response::Chunk { index: got, proof, data }) if got == index => {
                match committed_size(root, leaves, &data, &proof) {
                    Ok(size) => return Ok(size),
                    Err(e) => {
                        node.update_metrics(p, |m| m.bad_data());
                        events.warn(format!("{p} sent bad data: {e}"));
                        errors.push(format!("{p}: {e}"));
                    }
                }
            }
            Ok(Response::Error { message }) => errors.push(format!("{p}: {}", chiral_sdk::text::line(&message))),
            Ok(_) => errors.push(format!("{p}: unexpected answer")),
            Err(e) => errors.push(e.message.to_string()),
        }
    }
    Err(PluginError::network(format!("no provider of {} gave its last chunk: {}", content_id(root), errors.join("; "))))
}

impl Inner {
    fn pick(&self) -> Option<PeerId> {
        let mut provs = lock(&self.providers);
        // Protocol-aware: a peer whose identify lists protocols without the chunk protocol is
        // not asked (one not identified yet is).
        let live: Vec<PeerId> = provs
            .iter()
            .filter(|(p, s)| {
                let m = self.node.metrics_of(p);
                !s.banned && (m.protocols.is_empty() || m.supports(crate::wire::PROTOCOL.as_ref()))
            })
            .map(|(p, _)| *p)
            .collect();
        let cands: Vec<_> = live.iter().map(|p| (self.node.metrics_of(p), provs[p].in_flight)).collect();
        let i = reputation::pick(&cands)?;
        let peer = live[i];
        provs.get_mut(&peer).expect("listed").in_flight += 1;
        Some(peer)
    }

    async fn fetch_chunk(&self, index: u32) -> Result<Vec<u8>, PluginError> {
        let mut errors = Vec::new();
        for _ in 0..ATTEMPTS {
            let Some(peer) = self.pick() else { break };
            let t0 = Instant::now();
            let r = self.node.request(peer, Request::Chunk { root: self.root, index }).await;
            let took = t0.elapsed();
            let mut provs = lock(&self.providers);
            let st = provs.get_mut(&peer).expect("listed");
            st.in_flight -= 1;
            let err = match r {
                Ok(Response::Chunk { index: got, proof, data }) if got == index => {
                    match check_chunk(&self.root, &self.leaves, self.size, index, &data, &proof) {
                        Ok(()) => {
                            st.bytes += data.len() as u64;
                            st.chunks += 1;
                            let wallet = st.wallet.clone();
                            drop(provs);
                            // Owed for this verified chunk, tagged so that it is billed once.
                            if wallet.is_some() {
                                let tag = format!(
                                    "{peer} piece {}:{index}:{:016x}",
                                    hex::encode(self.root),
                                    next_verification()
                                );
                                self.events.payment_required(tag, wallet, data.len() as u64);
                            }
                            self.node.update_metrics(peer, |m| m.success(data.len() as u64, took));
                            return Ok(data);
                        }
                        Err(e) => {
                            st.banned = true;
                            drop(provs);
                            self.node.update_metrics(peer, |m| m.bad_data());
                            self.events.warn(format!("{peer} sent bad data, dropped: {e}"));
                            e.to_string()
                        }
                    }
                }
                Ok(Response::Chunk { index: got, .. }) => {
                    st.banned = true;
                    drop(provs);
                    self.node.update_metrics(peer, |m| m.bad_data());
                    format!("{peer} answered chunk {got} for {index}")
                }
                Ok(Response::Error { message }) => {
                    drop(provs);
                    self.node.update_metrics(peer, |m| m.failure());
                    format!("{peer}: {}", chiral_sdk::text::line(&message))
                }
                Ok(Response::Manifest { .. }) => {
                    drop(provs);
                    self.node.update_metrics(peer, |m| m.failure());
                    format!("{peer}: unexpected manifest")
                }
                Err(e) => {
                    drop(provs);
                    self.node.update_metrics(peer, |m| m.failure());
                    e.message.to_string()
                }
            };
            errors.push(err);
        }
        if errors.is_empty() {
            return Err(PluginError::network(format!("no usable provider left for chunk {index}")));
        }
        Err(PluginError::network(format!("chunk {index}: {}", errors.join("; "))))
    }

    fn per_provider(&self) -> Vec<(String, u64, u64)> {
        let provs = lock(&self.providers);
        let mut v: Vec<_> = provs.iter().map(|(p, s)| (p.to_string(), s.bytes, s.chunks)).collect();
        v.sort();
        v
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (peer, bytes, chunks) in self.per_provider() {
            self.events.info(format!("chiral provider {peer}: {bytes} bytes in {chunks} chunks"));
        }
        // Reputation lasts: scores are written to the data dir.
        let metrics = lock(&self.node.shared.metrics).clone();
        if let Err(e) = reputation::save(&self.node.shared.data_dir, &metrics) {
            self.events.warn(format!("cannot keep peer reputation: {e}"));
        }
    }
}

impl PieceSource for ChiralSource {
    fn info(&self) -> ContentInfo {
        let this = &self.inner;
        let n = lock(&this.providers).len();
        let label = format!("{} ({n} peers)", content_id(&this.root)).into();
        if let Some((dict, t)) = &this.torrent {
            return ContentInfo {
                name: this.name.as_str().into(),
                length: this.size,
                length_known: true,
                random_access: true,
                piece_length: t.piece_length,
                hash_kind: HashKind::Sha1Pieces,
                piece_hashes: t.pieces.clone().into(),
                root: dict.clone().into(),
                files: Default::default(),
                label,
            };
        }
        ContentInfo {
            name: this.name.as_str().into(),
            length: this.size,
            length_known: true,
            random_access: true,
            piece_length: CHUNK_SIZE,
            hash_kind: HashKind::Sha256Merkle,
            piece_hashes: this.leaves.iter().flatten().copied().collect(),
            root: this.root.to_vec().into(),
            files: Default::default(),
            label,
        }
    }

    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let this = self.inner.clone();
        Box::pin(async move {
            let end = offset.checked_add(length).filter(|e| *e <= this.size).ok_or_else(|| {
                PluginError::invalid(format!("range {offset}+{length} is outside {} bytes", this.size))
            })?;
            if length == 0 {
                return Ok(Default::default());
            }
            let first = (offset / CHUNK_SIZE) as u32;
            let last = ((end - 1) / CHUNK_SIZE) as u32;
            if first == last && offset == first as u64 * CHUNK_SIZE {
                // One chunk from its start (what the engine asks): its buffer as it came.
                let mut data = this.fetch_chunk(first).await?;
                data.truncate(length as usize);
                return Ok(data);
            }
            let mut out = Vec::with_capacity(length as usize);
            for index in first..=last {
                let data = this.fetch_chunk(index).await?;
                let base = index as u64 * CHUNK_SIZE;
                let from = offset.max(base) - base;
                let to = end.min(base + data.len() as u64) - base;
                out.extend_from_slice(&data[from as usize..to as usize]);
            }
            Ok(out)
        })
    }

    /// Every chunk passed `check_chunk` (leaf hash and Merkle proof) before it is returned.
    fn checks_pieces(&self) -> bool {
        true
    }

    fn peers(&self) -> Vec<PeerStat> {
        let provs = lock(&self.inner.providers);
        provs
            .iter()
            .map(|(p, s)| {
                PeerStat::new(p.to_string())
                    .bytes(s.bytes, 0)
                    .chiral_peer(p.to_string())
                    .reputation(reputation::per_mille(self.inner.node.metrics_of(p).score))
                    .banned(s.banned)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chiral_sdk::verify::{leaves_of, merkle_proof};

    #[test]
    fn manifests_and_chunks_are_checked() {
        let data: Vec<u8> = (0..(CHUNK_SIZE as usize * 2 + 9)).map(|i| (i % 7) as u8).collect();
        let leaves = leaves_of(&data);
        let root = merkle_root(&leaves);
        let size = data.len() as u64;
        assert!(check_manifest(&root, size, &leaves).is_ok());
        assert!(matches!(check_manifest(&root, size + CHUNK_SIZE, &leaves), Err(ChunkError::LeafCount { .. })));
        assert_eq!(check_manifest(&[0; 32], size, &leaves), Err(ChunkError::Root));
        let c = CHUNK_SIZE as usize;
        for i in 0..3 {
            let chunk = &data[i * c..((i + 1) * c).min(data.len())];
            let proof = merkle_proof(&leaves, i).unwrap();
            assert!(check_chunk(&root, &leaves, size, i as u32, chunk, &proof).is_ok());
        }
        let proof0 = merkle_proof(&leaves, 0).unwrap();
        let mut bad = data[..c].to_vec();
        bad[5] ^= 1;
        assert_eq!(check_chunk(&root, &leaves, size, 0, &bad, &proof0), Err(ChunkError::Leaf(0)));
        assert!(matches!(
            check_chunk(&root, &leaves, size, 0, &data[..c - 1], &proof0),
            Err(ChunkError::Length { .. })
        ));
        assert_eq!(check_chunk(&root, &leaves, size, 0, &data[..c], &proof0[1..]), Err(ChunkError::Proof(0)));
        assert!(check_chunk(&root, &leaves, size, 3, &[], &[]).is_err());
    }
}
