//! This node's side of the identity link (`chiral_sdk::link`): the network key's signature over
//! the BitTorrent plugin's Chiral peer id, and the scores of peers with ed25519 identities, keyed
//! by their public key (what the BitTorrent plugin sees of them).

use std::collections::HashMap;

use chiral_sdk::PluginError;
use libp2p::{identity, PeerId};

use crate::reputation::{PeerMetrics, MAX_KEPT, POOR_SCORE};

/// `(network key, signature)`, both hex, vouching for `bt_id`.
pub fn prove(key: &identity::Keypair, bt_id: &str) -> Result<(String, String), PluginError> {
    if !chiral_sdk::link::is_key_hex(bt_id) {
        return Err(PluginError::invalid("link_proof: bt_id must be 64 lowercase hex characters"));
    }
    let public = key
        .public()
        .try_into_ed25519()
        .map_err(|_| PluginError::unsupported("link_proof: this node's key is not ed25519"))?;
    let sig = key.sign(&chiral_sdk::link::message(bt_id)).map_err(|e| PluginError::other(e.to_string()))?;
    Ok((hex::encode(public.to_bytes()), hex::encode(sig)))
}

/// The ed25519 public key a peer id carries (peer ids of ed25519 keys embed the key).
pub fn ed25519_key(peer: &PeerId) -> Option<[u8; 32]> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let public = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(public.try_into_ed25519().ok()?.to_bytes())
}

/// Every kept score of a peer with an ed25519 identity, as `{"key": hex, "score", "bad_data",
/// "poor"}` (`poor`: under [`POOR_SCORE`]).
pub fn scores(metrics: &HashMap<PeerId, PeerMetrics>) -> Vec<serde_json::Value> {
    metrics
        .iter()
        .filter(|(_, m)| m.successes + m.failures + m.bad_data > 0)
        .filter_map(|(p, m)| {
            let key = ed25519_key(p)?;
            Some(serde_json::json!({
                "key": hex::encode(key), "score": m.score, "bad_data": m.bad_data, "poor": m.score < POOR_SCORE,
            }))
        })
        .take(MAX_KEPT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_with_the_key_the_peer_id_carries() {
        let key = identity::Keypair::generate_ed25519();
        let bt_id = "ab".repeat(32);
        let (pk, sig) = prove(&key, &bt_id).unwrap();
        let carried = ed25519_key(&key.public().to_peer_id()).unwrap();
        assert_eq!(hex::encode(carried), pk);
        let public = identity::PublicKey::from(identity::ed25519::PublicKey::try_from_bytes(&carried).unwrap());
        assert!(public.verify(&chiral_sdk::link::message(&bt_id), &hex::decode(&sig).unwrap()));
        assert!(!public.verify(&chiral_sdk::link::message(&"cd".repeat(32)), &hex::decode(&sig).unwrap()));
        assert!(prove(&key, "not hex").is_err());
        let mut m = HashMap::new();
        m.insert(key.public().to_peer_id(), PeerMetrics { bad_data: 2, score: 0.05, ..PeerMetrics::default() });
        m.insert(PeerId::random(), PeerMetrics { successes: 1, ..PeerMetrics::default() });
        let s = scores(&m);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0]["key"], pk);
        assert_eq!(s[0]["poor"], true);
    }
}
