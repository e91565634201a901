//! The piece verifier shared by the host and plugins.
//!
//! - BitTorrent v1: one SHA-1 per piece.
//! - Chiral: SHA-256 Merkle tree over 256 KiB chunks. Leaves are `SHA-256(0x00 || chunk)`,
//!   inner nodes `SHA-256(0x01 || left || right)` (the prefixes keep a leaf from passing for a
//!   node); a level with an odd count promotes its last node unchanged. Empty content has one
//!   empty chunk. A proof lists the sibling hashes from the leaf up, skipping promoted levels.

use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use thiserror::Error;

use crate::abi::{ContentInfo, HashKind};

/// Chunk size of Chiral content ids.
pub const CHUNK_SIZE: u64 = 256 * 1024;

pub type Hash32 = [u8; 32];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("piece {0} does not match its hash")]
    Mismatch(u32),
    #[error("piece {0} is outside the layout")]
    NoSuchPiece(u32),
    #[error("piece hashes are malformed: {0}")]
    Malformed(String),
    #[error("the leaf hashes do not add up to the content id")]
    RootMismatch,
}

pub fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

pub fn sha256(data: &[u8]) -> Hash32 {
    Sha256::digest(data).into()
}

pub fn leaf_hash(chunk: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(chunk);
    h.finalize().into()
}

pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Leaf hashes of `data` cut in `CHUNK_SIZE` chunks.
pub fn leaves_of(data: &[u8]) -> Vec<Hash32> {
    if data.is_empty() {
        return vec![leaf_hash(&[])];
    }
    data.chunks(CHUNK_SIZE as usize).map(leaf_hash).collect()
}

fn next_level(level: &[Hash32]) -> Vec<Hash32> {
    level.chunks(2).map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] }).collect()
}

/// Root over `leaves` (the hash of an empty chunk when there are none).
pub fn merkle_root(leaves: &[Hash32]) -> Hash32 {
    if leaves.is_empty() {
        return leaf_hash(&[]);
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// Sibling hashes proving leaf `index`, from the bottom up.
pub fn merkle_proof(leaves: &[Hash32], index: usize) -> Option<Vec<Hash32>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    let mut level = leaves.to_vec();
    let mut i = index;
    while level.len() > 1 {
        let sibling = i ^ 1;
        if sibling < level.len() {
            proof.push(level[sibling]);
        }
        level = next_level(&level);
        i /= 2;
    }
    Some(proof)
}

/// Checks that `leaf` is leaf `index` of `count` under `root`.
pub fn verify_proof(root: &Hash32, index: usize, count: usize, leaf: &Hash32, proof: &[Hash32]) -> bool {
    if index >= count {
        return false;
    }
    let (mut acc, mut i, mut width, mut used) = (*leaf, index, count, 0usize);
    while width > 1 {
        let sibling = i ^ 1;
        if sibling < width {
            let Some(s) = proof.get(used) else { return false };
            used += 1;
            acc = if i % 2 == 0 { node_hash(&acc, s) } else { node_hash(s, &acc) };
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    used == proof.len() && &acc == root
}

/// Checks pieces of one content layout against the hashes its source published.
#[derive(Clone, Debug)]
pub struct PieceVerifier {
    kind: HashKind,
    width: usize,
    hashes: Vec<u8>,
}

impl PieceVerifier {
    /// A verifier that accepts everything (no hashes known).
    pub fn none() -> Self {
        Self { kind: HashKind::None, width: 0, hashes: Vec::new() }
    }

    /// From a source's description, checking the hash list is consistent with the layout
    /// (and, for Merkle content, that the leaves add up to the root).
    pub fn for_content(info: &ContentInfo, piece_count: u64) -> Result<Self, VerifyError> {
        let width = match info.hash_kind {
            HashKind::None => return Ok(Self::none()),
            HashKind::Sha1Pieces => 20,
            HashKind::Sha256Merkle => 32,
        };
        let hashes = info.piece_hashes.to_vec();
        if piece_count.checked_mul(width as u64) != Some(hashes.len() as u64) {
            return Err(VerifyError::Malformed(format!(
                "{} bytes of hashes for {piece_count} pieces of {width}-byte hashes",
                hashes.len()
            )));
        }
        if info.hash_kind == HashKind::Sha256Merkle {
            let root: Hash32 =
                info.root.as_slice().try_into().map_err(|_| VerifyError::Malformed("root is not 32 bytes".into()))?;
            let leaves: Vec<Hash32> = hashes.chunks(32).map(|c| c.try_into().expect("32-byte chunks")).collect();
            if merkle_root(&leaves) != root {
                return Err(VerifyError::RootMismatch);
            }
        }
        Ok(Self { kind: info.hash_kind, width, hashes })
    }

    pub fn kind(&self) -> HashKind {
        self.kind
    }

    /// True when pieces can be checked one by one.
    pub fn has_hashes(&self) -> bool {
        self.kind != HashKind::None
    }

    pub fn verify(&self, index: u32, data: &[u8]) -> Result<(), VerifyError> {
        let expect = match self.kind {
            HashKind::None => return Ok(()),
            _ => {
                let at = index as usize * self.width;
                self.hashes.get(at..at + self.width).ok_or(VerifyError::NoSuchPiece(index))?
            }
        };
        let ok = match self.kind {
            HashKind::Sha1Pieces => sha1(data) == expect,
            HashKind::Sha256Merkle => leaf_hash(data) == expect,
            HashKind::None => true,
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError::Mismatch(index))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hx(b: &[u8]) -> String {
        hex::encode(b)
    }

    #[test]
    fn sha1_known_vectors() {
        assert_eq!(hx(&sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hx(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(hx(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    // Vectors computed independently with Python's hashlib following the definition above.
    #[test]
    fn merkle_known_vectors() {
        assert_eq!(
            hx(&merkle_root(&leaves_of(b""))),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            hx(&merkle_root(&leaves_of(b"abc"))),
            "609f6e36d2405585188d5cfd761f407c7cc46a7d3f314c88270469dde315fcd1"
        );
        let data: Vec<u8> = (0..(CHUNK_SIZE as usize * 5 + 7)).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            hx(&merkle_root(&leaves_of(&data))),
            "b1b7b10479243d720b25f9481016f5b775b936d30178ddff95e7439a7f85ec3d"
        );
    }

    #[test]
    fn proofs_verify_for_every_leaf_and_count() {
        for count in 1..=17usize {
            let leaves: Vec<Hash32> = (0..count).map(|i| leaf_hash(&[i as u8])).collect();
            let root = merkle_root(&leaves);
            for i in 0..count {
                let proof = merkle_proof(&leaves, i).unwrap();
                assert!(verify_proof(&root, i, count, &leaves[i], &proof), "count {count} leaf {i}");
                // a wrong leaf, index or truncated proof fails
                assert!(!verify_proof(&root, i, count, &leaf_hash(b"x"), &proof));
                if count > 1 {
                    assert!(
                        !verify_proof(&root, (i + 1) % count, count, &leaves[i], &proof)
                            || leaves[i] == leaves[(i + 1) % count]
                    );
                    assert!(!verify_proof(&root, i, count, &leaves[i], &proof[1..]));
                }
            }
            assert!(merkle_proof(&leaves, count).is_none());
        }
    }

    #[test]
    fn a_leaf_cannot_pass_for_a_node() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        let mut concat = a.to_vec();
        concat.extend_from_slice(&b);
        assert_ne!(leaf_hash(&concat), node_hash(&a, &b));
    }

    fn info(kind: HashKind, hashes: Vec<u8>, root: Vec<u8>) -> ContentInfo {
        ContentInfo {
            name: "x".into(),
            length: 0,
            length_known: true,
            random_access: true,
            piece_length: 4,
            hash_kind: kind,
            piece_hashes: hashes.into(),
            root: root.into(),
            files: Default::default(),
            label: "t".into(),
        }
    }

    #[test]
    fn piece_verifier_sha1() {
        let mut hashes = sha1(b"aaaa").to_vec();
        hashes.extend_from_slice(&sha1(b"bb"));
        let v = PieceVerifier::for_content(&info(HashKind::Sha1Pieces, hashes.clone(), vec![]), 2).unwrap();
        assert!(v.verify(0, b"aaaa").is_ok());
        assert!(v.verify(1, b"bb").is_ok());
        assert_eq!(v.verify(1, b"bc"), Err(VerifyError::Mismatch(1)));
        assert_eq!(v.verify(2, b"bb"), Err(VerifyError::NoSuchPiece(2)));
        assert!(PieceVerifier::for_content(&info(HashKind::Sha1Pieces, hashes, vec![]), 3).is_err());
    }

    #[test]
    fn piece_verifier_merkle_checks_root() {
        let leaves = [leaf_hash(b"one"), leaf_hash(b"two"), leaf_hash(b"three")];
        let flat: Vec<u8> = leaves.iter().flatten().copied().collect();
        let root = merkle_root(&leaves).to_vec();
        let v = PieceVerifier::for_content(&info(HashKind::Sha256Merkle, flat.clone(), root), 3).unwrap();
        assert!(v.verify(2, b"three").is_ok());
        assert!(v.verify(2, b"four").is_err());
        let wrong = PieceVerifier::for_content(&info(HashKind::Sha256Merkle, flat, vec![0; 32]), 3);
        assert_eq!(wrong.unwrap_err(), VerifyError::RootMismatch);
    }
}
