//! The node's wallet: one secp256k1 key in an encrypted Web3 secret-storage keystore (scrypt
//! and AES-128-CTR, as geth and alloy write it), readable by its owner only. The address is
//! written beside the ciphertext (geth's `address` field), so it can be announced without the
//! passphrase.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;

use super::{parse_wallet, PaymentError};

/// The keystore file at `path`.
#[derive(Clone, Debug)]
pub struct Keystore {
    path: PathBuf,
}

impl Keystore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    fn err(&self, message: impl std::fmt::Display) -> PaymentError {
        PaymentError::Keystore { path: self.path.clone(), message: message.to_string() }
    }

    /// The address the keystore holds the key of (no passphrase needed).
    pub fn address(&self) -> Result<Address, PaymentError> {
        if !self.exists() {
            return Err(PaymentError::NoWallet(self.path.clone()));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.err(e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| self.err(format!("not JSON: {e}")))?;
        let a = v["address"].as_str().ok_or_else(|| self.err("no address in the keystore"))?;
        let with_prefix = if a.starts_with("0x") { a.to_string() } else { format!("0x{a}") };
        parse_wallet(&with_prefix).ok_or_else(|| self.err("the keystore's address is malformed"))
    }

    /// A new random key, stored; refuses to replace an existing keystore.
    pub fn create(&self, passphrase: &str) -> Result<Address, PaymentError> {
        let signer = PrivateKeySigner::random();
        self.store(&signer.to_bytes().0, passphrase)
    }

    /// The key in `text` (`0x` and 64 hex digits, surrounding white space ignored), stored;
    /// refuses to replace an existing keystore.
    pub fn import(&self, text: &str, passphrase: &str) -> Result<Address, PaymentError> {
        let hex_key = text.trim();
        let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
        let bad = || PaymentError::Invalid("the private key file must hold 0x and 64 hex digits".into());
        if hex_key.len() != 64 {
            return Err(bad());
        }
        let key: [u8; 32] = hex::decode(hex_key).map_err(|_| bad())?.try_into().map_err(|_| bad())?;
        PrivateKeySigner::from_slice(&key).map_err(|_| PaymentError::Invalid("not a valid secp256k1 key".into()))?;
        self.store(&key, passphrase)
    }

    /// The signing key, decrypted with `passphrase`.
    pub fn unlock(&self, passphrase: &str) -> Result<PrivateKeySigner, PaymentError> {
        if !self.exists() {
            return Err(PaymentError::NoWallet(self.path.clone()));
        }
        let signer = PrivateKeySigner::decrypt_keystore(&self.path, passphrase)
            .map_err(|e| self.err(format!("cannot unlock (wrong passphrase?): {e}")))?;
        if self.address().is_ok_and(|a| a != signer.address()) {
            return Err(self.err("the key does not match the address written beside it"));
        }
        Ok(signer)
    }

    fn store(&self, key: &[u8; 32], passphrase: &str) -> Result<Address, PaymentError> {
        if passphrase.is_empty() {
            return Err(PaymentError::Invalid("the passphrase must not be empty".into()));
        }
        if self.path.exists() {
            return Err(self.err("a wallet is already there; it is never replaced"));
        }
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        let tmp_name = format!(".wallet-{}.tmp", std::process::id());
        let tmp = dir.join(&tmp_name);
        let made = PrivateKeySigner::encrypt_keystore(dir, &mut rand::thread_rng(), key, passphrase, Some(&tmp_name));
        let result = made.map_err(|e| self.err(e)).and_then(|(signer, _)| {
            let text = std::fs::read_to_string(&tmp).map_err(|e| self.err(e))?;
            let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| self.err(e))?;
            v["address"] = hex::encode(signer.address().as_slice()).into();
            let out = dir.join(format!("{tmp_name}.json"));
            let _ = std::fs::remove_file(&out);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .map_err(|e| self.err(e))?;
            f.write_all(v.to_string().as_bytes()).and_then(|_| f.sync_all()).map_err(|e| self.err(e))?;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).map_err(|e| self.err(e))?;
            // A link, not a rename: a keystore made meanwhile by another process stays.
            let linked = std::fs::hard_link(&out, &self.path).map_err(|e| self.err(e));
            let _ = std::fs::remove_file(&out);
            linked.map(|_| signer.address())
        });
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keystore_is_encrypted_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::new(dir.path().join("wallet.json"));
        assert!(matches!(ks.address(), Err(PaymentError::NoWallet(_))));
        let key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        let a = ks.import(&format!("{key}\n"), "pw").unwrap();
        assert_eq!(super::super::wallet_text(&a), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
        assert_eq!(ks.address().unwrap(), a);
        let text = std::fs::read_to_string(ks.path()).unwrap();
        assert!(!text.contains(&key[2..]), "the key is not in plain text");
        let mode = std::fs::metadata(ks.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ks.unlock("pw").unwrap().address(), a);
        assert!(ks.unlock("wrong").is_err());
        assert!(ks.create("pw").is_err(), "never replaced");
        assert!(ks.import(key, "pw").is_err(), "never replaced");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        let other = Keystore::new(dir.path().join("w2.json"));
        for bad in ["", "0x12", &format!("{key}00"), "0xzz74bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"]
        {
            assert!(matches!(other.import(bad, "pw"), Err(PaymentError::Invalid(_))), "{bad:?}");
        }
        assert_ne!(other.create("pw2").unwrap(), a);
    }
}
