//! Seeded content: a file hashed once into its Merkle tree (the SDK's definition), kept with
//! every level so chunk proofs are cheap, and served chunk by chunk from disk.

use std::{
    fs::File,
    io::Read as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use chiral_sdk::{
    rate::RateLimiter,
    verify::{leaf_hash, node_hash, Hash32, CHUNK_SIZE},
    PluginError,
};

use crate::wire::Response;

/// Every level of a Merkle tree, leaves first (odd nodes promoted, as in `chiral_sdk::verify`).
#[derive(Clone, Debug)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash32>>,
}

impl MerkleTree {
    pub fn new(leaves: Vec<Hash32>) -> Self {
        let leaves = if leaves.is_empty() { vec![leaf_hash(&[])] } else { leaves };
        let mut levels = vec![leaves];
        while levels.last().expect("one level").len() > 1 {
            let next = levels
                .last()
                .expect("one level")
                .chunks(2)
                .map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }
    pub fn root(&self) -> Hash32 {
        self.levels.last().expect("one level")[0]
    }
    pub fn leaves(&self) -> &[Hash32] {
        &self.levels[0]
    }
    /// Sibling hashes from the leaf up, skipping promoted levels (= `verify::merkle_proof`).
    pub fn proof(&self, index: usize) -> Option<Vec<Hash32>> {
        if index >= self.levels[0].len() {
            return None;
        }
        let mut i = index;
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(s) = level.get(i ^ 1) {
                proof.push(*s);
            }
            i /= 2;
        }
        Some(proof)
    }
}

/// Leaf hashes of a file read in `CHUNK_SIZE` chunks, and its length.
pub fn hash_file(path: &Path) -> std::io::Result<(Vec<Hash32>, u64)> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut leaves = Vec::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        size += filled as u64;
        leaves.push(leaf_hash(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    if leaves.is_empty() {
        leaves.push(leaf_hash(&[]));
    }
    Ok((leaves, size))
}

/// One file being served.
pub struct SeedEntry {
    pub id: String,
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
    pub tree: MerkleTree,
    pub identifiers: Vec<String>,
    pub served: AtomicU64,
    file: File,
    /// Upload cap of this seed (`upload_rate` option) inside the plugin's (`max_upload_rate`).
    pacer: Option<Arc<RateLimiter>>,
}

impl SeedEntry {
    pub fn open(
        path: &Path,
        name: String,
        identifiers: Vec<String>,
        tree: MerkleTree,
        size: u64,
    ) -> Result<Self, PluginError> {
        let file = File::open(path).map_err(|e| PluginError::io(format!("{}: {e}", path.display())))?;
        Ok(Self {
            id: hex::encode(tree.root()),
            path: path.to_path_buf(),
            name,
            size,
            tree,
            identifiers,
            served: AtomicU64::new(0),
            file,
            pacer: None,
        })
    }

    /// Caps what this seed sends to `rate` bytes per second, inside `shared` (the plugin's
    /// rate, which every seed pays too).
    pub fn with_upload_rate(mut self, rate: Option<u64>, shared: Option<Arc<RateLimiter>>) -> Self {
        self.pacer = chiral_sdk::rate::seed_limiter(rate, &shared);
        self
    }

    pub fn manifest(&self) -> Response {
        Response::Manifest { size: self.size, name: self.name.clone(), leaves: self.tree.leaves().to_vec() }
    }

    /// Chunk `index` with its proof, read from disk (blocking).
    pub fn chunk(&self, index: u32) -> Response {
        let Some(proof) = self.tree.proof(index as usize) else {
            return Response::Error { message: format!("no chunk {index}") };
        };
        let offset = index as u64 * CHUNK_SIZE;
        let len = self.size.saturating_sub(offset).min(CHUNK_SIZE) as usize;
        if let Some(p) = &self.pacer {
            std::thread::sleep(p.reserve(len as u64));
        }
        let mut data = vec![0u8; len];
        if let Err(e) = self.file.read_exact_at(&mut data, offset) {
            return Response::Error { message: format!("cannot read chunk {index}: {e}") };
        }
        self.served.fetch_add(len as u64, Ordering::Relaxed);
        Response::Chunk { index, proof, data }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_seed_pays_its_own_rate_and_the_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, vec![7u8; 3 * CHUNK_SIZE as usize]).unwrap();
        let (leaves, size) = hash_file(&path).unwrap();
        let open = || SeedEntry::open(&path, "f.bin".into(), vec![], MerkleTree::new(leaves.clone()), size).unwrap();
        assert!(open().with_upload_rate(None, None).pacer.is_none());
        let plugin = Arc::new(RateLimiter::new(CHUNK_SIZE));
        let seed = open().with_upload_rate(Some(CHUNK_SIZE * 1000), Some(plugin.clone()));
        // The first chunk goes at once; the plugin's bucket is paid for it too.
        let t0 = std::time::Instant::now();
        assert!(matches!(seed.chunk(0), Response::Chunk { .. }));
        assert!(t0.elapsed() < std::time::Duration::from_millis(500));
        assert!(plugin.reserve(1) >= std::time::Duration::from_millis(900));
    }

    use super::*;
    use chiral_sdk::verify::{leaves_of, merkle_proof, merkle_root, verify_proof};

    #[test]
    fn tree_matches_the_sdk() {
        for count in 1..=19usize {
            let leaves: Vec<Hash32> = (0..count).map(|i| leaf_hash(&[i as u8, 1])).collect();
            let t = MerkleTree::new(leaves.clone());
            assert_eq!(t.root(), merkle_root(&leaves));
            for i in 0..count {
                assert_eq!(t.proof(i), merkle_proof(&leaves, i), "count {count} leaf {i}");
            }
            assert!(t.proof(count).is_none());
        }
    }

    #[test]
    fn content_id_of_a_known_file_is_the_sdk_root() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, CHUNK_SIZE as usize, CHUNK_SIZE as usize * 3 + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            let (leaves, len) = hash_file(&p).unwrap();
            assert_eq!(len, size as u64);
            assert_eq!(leaves, leaves_of(&data));
            assert_eq!(MerkleTree::new(leaves).root(), merkle_root(&leaves_of(&data)));
        }
        // The SDK's known vector for a 5-chunk-and-7-bytes file.
        let data: Vec<u8> = (0..(CHUNK_SIZE as usize * 5 + 7)).map(|i| (i % 251) as u8).collect();
        let p = dir.path().join("vector");
        std::fs::write(&p, &data).unwrap();
        let (leaves, _) = hash_file(&p).unwrap();
        assert_eq!(
            hex::encode(MerkleTree::new(leaves).root()),
            "b1b7b10479243d720b25f9481016f5b775b936d30178ddff95e7439a7f85ec3d"
        );
    }

    #[test]
    fn served_chunks_carry_valid_proofs() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(CHUNK_SIZE as usize * 2 + 5)).map(|i| (i % 13) as u8).collect();
        let p = dir.path().join("x");
        std::fs::write(&p, &data).unwrap();
        let (leaves, size) = hash_file(&p).unwrap();
        let tree = MerkleTree::new(leaves);
        let root = tree.root();
        let e = SeedEntry::open(&p, "x".into(), vec![], tree, size).unwrap();
        for i in 0..3u32 {
            let Response::Chunk { index, proof, data: got } = e.chunk(i) else { panic!("chunk") };
            assert_eq!(index, i);
            let at = i as usize * CHUNK_SIZE as usize;
            assert_eq!(got, data[at..(at + CHUNK_SIZE as usize).min(data.len())]);
            assert!(verify_proof(&root, i as usize, 3, &leaf_hash(&got), &proof));
        }
        assert!(matches!(e.chunk(3), Response::Error { .. }));
        assert_eq!(e.served.load(Ordering::Relaxed), data.len() as u64);
    }
}
