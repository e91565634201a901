//! The link between a node's two Chiral identities: its Chiral network key (libp2p, ed25519)
//! and the ed25519 key its BitTorrent plugin proves in the BEP 10 `chiral` message. The network
//! key signs [`message`] over the BitTorrent Chiral peer id; a BitTorrent peer that shows this
//! signature beside its proven id is the holder of that network identity, so what the Chiral
//! network learned of it (its reputation) applies to it on BitTorrent too. The host carries the
//! proof from one plugin to the other (commands `link_proof` and `link`) and the scores
//! (`reputation`, `network_reputation`): docs/chiral-network.md.

/// Domain separation: a link signature is over this, then the BitTorrent Chiral peer id.
pub const CONTEXT: &[u8] = b"chiral-network-link-v1:";

/// What the network key signs to vouch for the BitTorrent Chiral peer id `bt_id` (64 lowercase
/// hex characters: an ed25519 public key).
pub fn message(bt_id: &str) -> Vec<u8> {
    [CONTEXT, bt_id.as_bytes()].concat()
}

/// Whether `s` is a Chiral peer id or network key as the link carries them: 64 lowercase hex.
pub fn is_key_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_keys() {
        assert_eq!(message("ab"), b"chiral-network-link-v1:ab".to_vec());
        assert!(is_key_hex(&"0f".repeat(32)));
        assert!(!is_key_hex(&"0F".repeat(32)) && !is_key_hex("00") && !is_key_hex(&"g0".repeat(32)));
    }
}
