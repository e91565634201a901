//! This node's Chiral identity on BitTorrent: an ed25519 key whose public half, in lowercase
//! hex, is the Chiral peer id. A peer proves its id by signing a nonce the other side chose
//! (see [`Identity::prove`] and [`Identity::verify`]), so the id cannot be claimed by copying it.

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// The key file's name in the plugin's data dir.
pub const KEY_FILE: &str = "chiral_key";
/// Domain separation: what a hello signature is over, before the info hash and the nonce.
const CONTEXT: &[u8] = b"chiral-bt-hello-v1";

pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl Identity {
    /// A new random key (kept nowhere).
    pub fn generate() -> Identity {
        Identity { key: SigningKey::from_bytes(&random32()) }
    }

    /// The key kept in `<dir>/chiral_key` (a 32-byte seed in hex), made on first use with mode
    /// 0600. A symbolic link there is never followed, and it or a file that is not a key is
    /// replaced by a new key. The second value says what went wrong, for the caller to log:
    /// the key was replaced, or could not be saved (it then lasts only as long as this process).
    pub fn load_or_create(dir: &Path) -> (Identity, Option<String>) {
        let path = dir.join(KEY_FILE);
        let replace = match read_key(&path) {
            Ok(Some(seed)) => return (Identity { key: SigningKey::from_bytes(&seed) }, None),
            Ok(None) => None,
            Err(Bad::Replace(why)) => Some(why),
            Err(Bad::Fatal(why)) => {
                return (Identity::generate(), Some(format!("{}: {why}; using a temporary Chiral key", path.display())))
            }
        };
        let new = Identity::generate();
        match save_key(dir, &path, &new.key.to_bytes(), replace.is_some()) {
            Ok(Saved::Ours) => {
                (new, replace.map(|why| format!("{}: {why}; replaced with a new Chiral key", path.display())))
            }
            // Another process made the key in the meantime: use that one.
            Ok(Saved::Theirs) => match read_key(&path) {
                Ok(Some(seed)) => (Identity { key: SigningKey::from_bytes(&seed) }, None),
                _ => (new, Some(format!("{}: unreadable; using a temporary Chiral key", path.display()))),
            },
            Err(e) => {
                let why = replace.map(|w| format!("{w}, ")).unwrap_or_default();
                (
                    new,
                    Some(format!("{}: {why}cannot save a new key ({e}); using a temporary Chiral key", path.display())),
                )
            }
        }
    }

    /// The Chiral peer id: the public key in lowercase hex (64 characters).
    pub fn id(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The signature proving this id to a peer that sent `nonce`, on the torrent `info_hash`.
    pub fn prove(&self, nonce: &[u8], info_hash: &[u8; 20]) -> Vec<u8> {
        self.key.sign(&message(nonce, info_hash)).to_bytes().to_vec()
    }

    /// Whether `signature` proves `claimed_id` for `nonce` and `info_hash`. False for anything
    /// malformed: an id that is not 64 lowercase hex digits or not a valid (non-weak) key, a
    /// signature that is not 64 bytes or not canonical.
    pub fn verify(claimed_id: &str, nonce: &[u8], info_hash: &[u8; 20], signature: &[u8]) -> bool {
        if claimed_id.len() != 64 || !claimed_id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return false;
        }
        let mut pk = [0u8; 32];
        let (Ok(()), Ok(sig)) = (hex::decode_to_slice(claimed_id, &mut pk), Signature::from_slice(signature)) else {
            return false;
        };
        VerifyingKey::from_bytes(&pk).is_ok_and(|k| k.verify_strict(&message(nonce, info_hash), &sig).is_ok())
    }

    /// Whether `signature` by the Chiral network key `network_key` vouches for the BitTorrent
    /// Chiral peer id `bt_id` (`chiral_sdk::link`): the peer holds that network identity.
    pub fn verify_link(bt_id: &str, network_key: &[u8; 32], signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        VerifyingKey::from_bytes(network_key)
            .is_ok_and(|k| k.verify_strict(&chiral_sdk::link::message(bt_id), &sig).is_ok())
    }

    /// A fresh random nonce for a peer to sign.
    pub fn new_nonce() -> [u8; 32] {
        random32()
    }
}

fn message(nonce: &[u8], info_hash: &[u8; 20]) -> Vec<u8> {
    [CONTEXT, info_hash, nonce].concat()
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

enum Bad {
    /// Not a key (a link, not a regular file, wrong contents): replace it.
    Replace(String),
    /// Cannot be read (e.g. permissions): leave it alone.
    Fatal(String),
}

/// The seed in `path`; `None` when there is no file.
fn read_key(path: &Path) -> Result<Option<[u8; 32]>, Bad> {
    // O_NONBLOCK: a FIFO planted there must not hang the open.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Bad::Replace("a symbolic link, not followed".into()))
        }
        Err(e) => return Err(Bad::Fatal(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| Bad::Fatal(e.to_string()))?;
    if !meta.is_file() {
        return Err(Bad::Replace("not a regular file".into()));
    }
    let mut text = Vec::new();
    (&file).take(256).read_to_end(&mut text).map_err(|e| Bad::Fatal(e.to_string()))?;
    let mut seed = [0u8; 32];
    let ok = match text.len() {
        32 => {
            seed.copy_from_slice(&text);
            true
        }
        _ => hex::decode_to_slice(text.trim_ascii(), &mut seed).is_ok(),
    };
    if !ok {
        return Err(Bad::Replace("not a Chiral key".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        // Best effort: the key is ours alone.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    Ok(Some(seed))
}

enum Saved {
    Ours,
    /// There was a key file already (made concurrently) and it was left alone.
    Theirs,
}

/// Writes the seed to a new private file beside `path`, then puts it in place atomically:
/// linked (never overwriting a key another process just made), or renamed over what is there
/// when `overwrite` (a rename replaces a symbolic link itself, never its target).
fn save_key(dir: &Path, path: &Path, seed: &[u8; 32], overwrite: bool) -> std::io::Result<Saved> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", hex::encode(&random32()[..8])));
    let written = (|| {
        let mut f =
            OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        f.write_all(format!("{}\n", hex::encode(seed)).as_bytes())?;
        f.sync_all()?;
        if overwrite {
            std::fs::rename(&tmp, path).map(|_| Saved::Ours)
        } else {
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => Ok(Saved::Ours),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Saved::Theirs),
                // A file system without hard links: a rename it is.
                Err(_) => std::fs::rename(&tmp, path).map(|_| Saved::Ours),
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const IH: [u8; 20] = [7; 20];

    #[test]
    fn proves_and_verifies() {
        let me = Identity::generate();
        let id = me.id();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let nonce = Identity::new_nonce();
        assert_ne!(nonce, Identity::new_nonce());
        let sig = me.prove(&nonce, &IH);
        assert_eq!(sig.len(), 64);
        assert!(Identity::verify(&id, &nonce, &IH, &sig));

        // Another nonce, another torrent, another key, a changed bit: no.
        assert!(!Identity::verify(&id, &Identity::new_nonce(), &IH, &sig));
        assert!(!Identity::verify(&id, &nonce, &[8; 20], &sig));
        let other = Identity::generate();
        assert!(!Identity::verify(&other.id(), &nonce, &IH, &sig));
        assert!(!Identity::verify(&id, &nonce, &IH, &other.prove(&nonce, &IH)));
        for i in [0, 31, 32, 63] {
            let mut bad = sig.clone();
            bad[i] ^= 1;
            assert!(!Identity::verify(&id, &nonce, &IH, &bad));
        }
        // The id in upper case is not the same id.
        assert!(!Identity::verify(&id.to_uppercase(), &nonce, &IH, &sig));
    }

    #[test]
    fn garbage_never_verifies_nor_panics() {
        let me = Identity::generate();
        let (id, nonce) = (me.id(), [1u8; 32]);
        let sig = me.prove(&nonce, &IH);
        for n in 0..200 {
            let junk = vec![0xffu8; n];
            assert!(!Identity::verify(&id, &nonce, &IH, &junk));
            assert!(!Identity::verify(&id, &nonce, &IH, &vec![0u8; n]));
            let hexish: String = "ab".repeat(n).chars().take(n).collect();
            assert!(!Identity::verify(&hexish, &nonce, &IH, &sig));
            assert!(!Identity::verify(&"z".repeat(n), &nonce, &IH, &sig));
            assert!(!Identity::verify(&"é".repeat(n), &nonce, &IH, &sig));
            assert!(!Identity::verify(&id[..n.min(63)], &nonce, &IH, &sig));
        }
        assert!(!Identity::verify("", &[], &IH, &[]));
        // Weak keys (the identity point, a small-order point) and keys that do not decode.
        for pk in [
            "01".to_string() + &"00".repeat(31),
            "00".repeat(32),
            "ff".repeat(32),
            "ec".to_string() + &"ff".repeat(30) + "7f",
        ] {
            assert!(!Identity::verify(&pk, &nonce, &IH, &sig), "{pk}");
            assert!(!Identity::verify(&pk, &nonce, &IH, &[0; 64]), "{pk}");
        }
        // A signature whose s is not reduced (s + l) is refused.
        let mut s_plus_l = sig.clone();
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = s_plus_l[32 + i] as u16 + l[i] as u16 + carry;
            s_plus_l[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(!Identity::verify(&id, &nonce, &IH, &s_plus_l));
    }

    #[test]
    fn the_key_file_is_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let kd = dir.path().join("bittorrent");
        let (a, note) = Identity::load_or_create(&kd);
        assert_eq!(note, None);
        let (b, note) = Identity::load_or_create(&kd);
        assert_eq!(note, None);
        assert_eq!(a.id(), b.id());
        let meta = std::fs::symlink_metadata(kd.join(KEY_FILE)).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&kd).unwrap().count(), 1, "no temporary file left");

        // A raw 32-byte seed is read too, and loose permissions are tightened.
        std::fs::write(kd.join(KEY_FILE), a.key.to_bytes()).unwrap();
        std::fs::set_permissions(kd.join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Identity::load_or_create(&kd).0.id(), a.id());
        assert_eq!(std::fs::metadata(kd.join(KEY_FILE)).unwrap().permissions().mode() & 0o777, 0o600);

        // A corrupt file: a new key, saved, and a message.
        std::fs::write(kd.join(KEY_FILE), "not a key").unwrap();
        let (c, note) = Identity::load_or_create(&kd);
        assert!(note.unwrap().contains("not a Chiral key"));
        assert_ne!(c.id(), a.id());
        assert_eq!(Identity::load_or_create(&kd).0.id(), c.id());
    }

    #[test]
    fn a_symlink_at_the_key_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let kd = dir.path().join("bt");
        std::fs::create_dir_all(&kd).unwrap();
        // An attacker's key elsewhere, linked in: neither read nor written through.
        let theirs = Identity::generate();
        let target = dir.path().join("planted");
        std::fs::write(&target, hex::encode(theirs.key.to_bytes())).unwrap();
        std::os::unix::fs::symlink(&target, kd.join(KEY_FILE)).unwrap();
        let (mine, note) = Identity::load_or_create(&kd);
        assert!(note.unwrap().contains("symbolic link"));
        assert_ne!(mine.id(), theirs.id());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), hex::encode(theirs.key.to_bytes()));
        assert!(std::fs::symlink_metadata(kd.join(KEY_FILE)).unwrap().is_file(), "the link was replaced");
        assert_eq!(Identity::load_or_create(&kd).0.id(), mine.id());

        // A dangling link (where a new key would be written): replaced, the target not created.
        let kd2 = dir.path().join("bt2");
        std::fs::create_dir_all(&kd2).unwrap();
        let nowhere = dir.path().join("nowhere");
        std::os::unix::fs::symlink(&nowhere, kd2.join(KEY_FILE)).unwrap();
        let (k, note) = Identity::load_or_create(&kd2);
        assert!(note.is_some());
        assert!(!nowhere.exists());
        assert_eq!(Identity::load_or_create(&kd2).0.id(), k.id());
    }

    #[test]
    fn an_unwritable_dir_gives_a_temporary_key() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the dir should be: nothing can be saved under it.
        let not_dir = dir.path().join("file");
        std::fs::write(&not_dir, b"x").unwrap();
        let (a, note) = Identity::load_or_create(&not_dir);
        assert!(note.unwrap().contains("temporary"));
        let (b, _) = Identity::load_or_create(&not_dir);
        assert_ne!(a.id(), b.id());
    }
}
