//! Merkle proofs and piece checks (`chiral_sdk::verify`): honest proofs verify; a proof made
//! of arbitrary bytes verifies only the true leaf at its index; any index and count, and a
//! verifier built from a hostile description (hash lists of any length, any piece count,
//! a root that is not 32 bytes), answer without a panic.
#![no_main]
use chiral_sdk::{
    ContentInfo,
    verify::{leaf_hash, merkle_proof, merkle_root, verify_proof, Hash32, PieceVerifier},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let count = usize::from(data[0] % 64) + 1;
    let index = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let body = &data[3..];
    let leaves: Vec<Hash32> = (0..count).map(|i| leaf_hash(&[body, &[i as u8]].concat())).collect();
    let root = merkle_root(&leaves);
    for (i, leaf) in leaves.iter().enumerate() {
        let proof = merkle_proof(&leaves, i).expect("a proof for every leaf");
        assert!(verify_proof(&root, i, count, leaf, &proof), "leaf {i} of {count}");
    }
    let forged: Vec<Hash32> = body.chunks_exact(32).map(|c| c.try_into().unwrap()).collect();
    for leaf in [leaf_hash(body), leaves[index % count]] {
        if verify_proof(&root, index, count, &leaf, &forged) {
            assert!(index < count && leaf == leaves[index], "a forged proof verified leaf {index} of {count}");
        }
    }
    let _ = verify_proof(&root, usize::MAX - index, usize::MAX, &leaves[0], &forged);

    let piece_count = match data[0] % 4 {
        0 => u64::from(data[1]),
        1 => (body.len() / 20) as u64,
        2 => (body.len() / 32) as u64,
        _ => u64::MAX - u64::from(data[2]),
    };
    let root32: [u8; 32] = body.get(..32).and_then(|r| r.try_into().ok()).unwrap_or([0; 32]);
    let infos = [
        ContentInfo::new("f", body.len() as u64).sha1_pieces(16, body.to_vec()),
        ContentInfo::new("f", body.len() as u64).sha256_merkle(16, body.to_vec(), root32),
        ContentInfo::new("f", body.len() as u64).sha256_merkle(16, body.get(32..).unwrap_or_default().to_vec(), root32),
    ];
    for info in infos {
        if let Ok(v) = PieceVerifier::for_content(&info, piece_count) {
            let _ = v.verify(index as u32, body);
            let _ = v.verify(u32::MAX, body);
        }
    }
});
