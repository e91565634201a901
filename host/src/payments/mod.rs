//! Payments: the node pays the peers that delivered verified content to it, on an
//! Ethereum-compatible chain (see docs/payments.md).
//!
//! - [`wallet`]: the node's key in an encrypted Web3 keystore (`<data dir>/wallet.json`);
//! - [`ledger`]: what is owed per wallet and every transaction, in SQLite, written before a
//!   transaction is sent, so a crash never pays twice nor forgets a debt;
//! - [`chain`]: JSON-RPC and locally signed value transfers (EIP-1559, or EIP-155 legacy);
//! - [`service`]: takes `PaymentRequired` events from every plugin, prices them, accumulates
//!   per wallet and settles at a threshold and on demand.

pub mod chain;
pub mod ledger;
pub mod service;
pub mod wallet;

use std::{path::Path, path::PathBuf, time::Duration};

use alloy_primitives::{Address, U256};
use serde::Deserialize;
use thiserror::Error;

pub use service::PaymentService;

/// Why a payment operation failed.
#[derive(Debug, Error)]
pub enum PaymentError {
    /// The `[payments]` table cannot be used as written.
    #[error("[payments] {0}")]
    Config(String),
    /// No keystore where one is needed.
    #[error("no wallet at {}: make one with `chiral wallet new` or `chiral wallet import`", .0.display())]
    NoWallet(PathBuf),
    /// The keystore could not be made, read or unlocked.
    #[error("wallet {}: {message}", path.display())]
    Keystore { path: PathBuf, message: String },
    /// The ledger's database failed.
    #[error("ledger {}: {message}", path.display())]
    Ledger { path: PathBuf, message: String },
    /// The chain could not be reached or refused a request.
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
    /// No `rpc` in `[payments]`.
    #[error("no chain configured: set rpc in the config's [payments] table")]
    NoChain,
    /// Input that is not what it must be (a private key file, an amount).
    #[error("{0}")]
    Invalid(String),
}

/// The `[payments]` table as written (every field optional; amounts as decimal strings, or
/// numbers).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PaymentsFile {
    pub rpc: Option<String>,
    pub chain_id: Option<toml::Value>,
    pub price_per_mib: Option<toml::Value>,
    pub threshold_wei: Option<toml::Value>,
    pub max_fee_wei: Option<toml::Value>,
    pub keystore: Option<PathBuf>,
    pub settle_timeout: Option<toml::Value>,
    /// `"all"` (default) or `"paid"`: who gets the Chiral fast lane when we seed.
    pub fast_lane: Option<String>,
}

/// Default chain: the Chiral chain's id.
pub const DEFAULT_CHAIN_ID: u64 = 98765;
/// Default `settle_timeout`: how long `chiral get` waits for the chain before it exits.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `threshold_wei`: 0.01 ether owed to one wallet starts a payment.
pub const DEFAULT_THRESHOLD_WEI: u128 = 10_000_000_000_000_000;
/// Default `max_fee_wei`: at most 0.001 ether of fees for one transfer.
pub const DEFAULT_MAX_FEE_WEI: u128 = 1_000_000_000_000_000;

/// The `[payments]` settings in force.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// JSON-RPC URL of the chain; none: debts are recorded, nothing is paid.
    pub rpc: Option<String>,
    pub chain_id: u64,
    /// Wei per MiB (2^20 bytes) of verified content; zero: nothing is owed.
    pub price_per_mib: U256,
    /// A wallet owed this much or more is paid at once (during a download).
    pub threshold_wei: U256,
    /// Cap on the whole fee of one transaction (gas limit × max fee per gas).
    pub max_fee_wei: U256,
    /// The keystore (default `<data dir>/wallet.json`).
    pub keystore: PathBuf,
    pub settle_timeout: Duration,
    /// The ledger database (`<data dir>/payments.sqlite`).
    pub ledger: PathBuf,
    /// Keep the Chiral fast lane for peers that are not behind on payment (`fast_lane = "paid"`).
    pub fast_lane_paid: bool,
    /// The host's proxy URL: the JSON-RPC to the chain goes through it (set by the caller).
    pub proxy: Option<String>,
}

impl PaymentsConfig {
    /// The settings from the config file's table, defaults filled in for `data_dir`.
    pub fn from_file(f: &PaymentsFile, data_dir: &Path) -> Result<Self, PaymentError> {
        let rpc = f.rpc.clone().filter(|r| !r.trim().is_empty());
        if let Some(r) = &rpc {
            if !(r.starts_with("http://") || r.starts_with("https://")) {
                return Err(PaymentError::Config(format!("rpc must be an http:// or https:// URL, not {r:?}")));
            }
        }
        let chain_id = match &f.chain_id {
            None => DEFAULT_CHAIN_ID,
            Some(v) => u64::try_from(amount(v, "chain_id")?)
                .map_err(|_| PaymentError::Config("chain_id is too large".into()))?,
        };
        let settle_timeout = match &f.settle_timeout {
            None => DEFAULT_SETTLE_TIMEOUT,
            Some(v) => Duration::from_secs(
                u64::try_from(amount(v, "settle_timeout")?)
                    .map_err(|_| PaymentError::Config("settle_timeout is too large".into()))?,
            ),
        };
        let fast_lane_paid = match f.fast_lane.as_deref().map(str::trim) {
            None | Some("all") => false,
            Some("paid") => true,
            Some(other) => {
                return Err(PaymentError::Config(format!(
                    "fast_lane = {:?}: \"all\" or \"paid\"",
                    chiral_sdk::text::for_terminal(other, 20)
                )))
            }
        };
        let opt = |v: &Option<toml::Value>, name: &str, default: u128| -> Result<U256, PaymentError> {
            v.as_ref().map_or(Ok(U256::from(default)), |v| amount(v, name))
        };
        Ok(Self {
            rpc,
            chain_id,
            price_per_mib: opt(&f.price_per_mib, "price_per_mib", 0)?,
            threshold_wei: opt(&f.threshold_wei, "threshold_wei", DEFAULT_THRESHOLD_WEI)?,
            max_fee_wei: opt(&f.max_fee_wei, "max_fee_wei", DEFAULT_MAX_FEE_WEI)?,
            keystore: match &f.keystore {
                Some(p) if p.is_absolute() => p.clone(),
                Some(p) => data_dir.join(p),
                None => data_dir.join("wallet.json"),
            },
            settle_timeout,
            ledger: data_dir.join("payments.sqlite"),
            fast_lane_paid,
            proxy: None,
        })
    }
}

/// How often the seeder judges again who is behind on payment (`fast_lane = "paid"`).
pub const STANDING_EVERY: Duration = Duration::from_secs(10);

/// With `fast_lane = "paid"`: keeps the Chiral fast lane of every started plugin for the
/// peers not behind on payment ([`service::PaymentService::behind`]), judged again every
/// [`STANDING_EVERY`] for as long as the process runs. Plugins without a fast lane answer
/// the command with an error, which is ignored. While the chain cannot be read, the last
/// judgement stays (at first: only Chiral peers with a wallet have it).
pub fn spawn_fast_lane(service: std::sync::Arc<service::PaymentService>, host: std::sync::Arc<crate::Host>) {
    if !service.config().fast_lane_paid {
        return;
    }
    tokio::spawn(async move {
        let mut last: Vec<String> = Vec::new();
        loop {
            match service.behind().await {
                Ok(behind) => {
                    if behind != last {
                        tracing::info!("payments: {} wallet(s) behind on payment: no fast lane for them", behind.len());
                    }
                    last = behind;
                }
                Err(e) => tracing::debug!("payments: who is behind on payment is not known now: {e}"),
            }
            // Every round, so that a plugin started since gets it too (unchanged, it is a no-op).
            let args = vec![("mode".to_string(), "paid".to_string()), ("behind".to_string(), last.join(","))];
            host.command_started("fast_lane", &args).await;
            tokio::time::sleep(STANDING_EVERY).await;
        }
    });
}

/// A non-negative decimal integer: a string of digits (TOML integers overflow at about 9.2
/// ether) or a non-negative integer.
fn amount(v: &toml::Value, name: &str) -> Result<U256, PaymentError> {
    let bad = || PaymentError::Config(format!("{name} must be a non-negative decimal integer (a string of digits)"));
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(U256::from(*i as u64)),
        toml::Value::String(s) => parse_wei(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// A decimal integer of at most 78 digits (what fits in 256 bits), nothing else.
pub fn parse_wei(s: &str) -> Option<U256> {
    let s = s.trim();
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    U256::from_str_radix(s, 10).ok()
}

/// What `bytes` of verified content cost: `floor(bytes × price_per_mib / 2^20)`.
pub fn price(bytes: u64, price_per_mib: U256) -> U256 {
    U256::from(bytes).saturating_mul(price_per_mib) >> 20
}

/// A wallet address as a peer announced it: `0x` and 40 hex digits (mixed case only with a
/// valid EIP-55 checksum), not the zero address. `None` for anything else.
pub fn parse_wallet(s: &str) -> Option<Address> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mixed = hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    let addr = if mixed { Address::parse_checksummed(format!("0x{hex}"), None).ok()? } else { hex.parse().ok()? };
    (addr != Address::ZERO).then_some(addr)
}

/// An address as the ledger and JSON write it: `0x` and 40 lowercase hex digits.
pub fn wallet_text(a: &Address) -> String {
    format!("0x{}", hex::encode(a.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_price_is_floored_per_report() {
        let p = U256::from(1_000_000_000_000_000u64);
        assert_eq!(price(1 << 20, p), p);
        assert_eq!(price(16384, p), U256::from(15_625_000_000_000u64));
        assert_eq!(price(1, U256::from(1_048_575u64)), U256::ZERO);
        assert_eq!(price(3, U256::from(1u64 << 20)), U256::from(3u64));
        assert_eq!(price(u64::MAX, U256::MAX), U256::MAX >> 20, "saturates, never wraps");
    }

    #[test]
    fn wallets_from_the_wire_are_checked() {
        let ok = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
        assert_eq!(wallet_text(&parse_wallet(ok).unwrap()), ok);
        assert!(parse_wallet("0x70997970C51812dc3A010C7d01b50e0d17dc79C8").is_some(), "valid checksum");
        assert!(parse_wallet("0x70997970C51812DC3a010C7d01b50e0d17dc79C8").is_none(), "bad checksum");
        assert!(parse_wallet(&ok.to_uppercase().replacen("0X", "0x", 1)).is_some());
        for bad in [
            "",
            "0x",
            "70997970c51812dc3a010c7d01b50e0d17dc79c8",
            "0xseeder",
            &format!("{ok}00"),
            &ok[..41],
            "0x70997970c51812dc3a010c7d01b50e0d17dc79cg",
            "0x0000000000000000000000000000000000000000",
            " 0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
        ] {
            assert!(parse_wallet(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn amounts_are_decimal_strings_or_numbers() {
        let f: PaymentsFile = toml::from_str(
            "rpc = \"http://127.0.0.1:8545\"\nprice_per_mib = \"1000000000000000000000\"\nthreshold_wei = 5\nmax_fee_wei = \"7\"\nsettle_timeout = 3\n",
        )
        .unwrap();
        let c = PaymentsConfig::from_file(&f, Path::new("/d")).unwrap();
        assert_eq!(c.price_per_mib, U256::from(10u64).pow(U256::from(21u64)));
        assert_eq!((c.threshold_wei, c.max_fee_wei), (U256::from(5u64), U256::from(7u64)));
        assert_eq!((c.chain_id, c.settle_timeout), (DEFAULT_CHAIN_ID, Duration::from_secs(3)));
        assert_eq!(c.keystore, Path::new("/d/wallet.json"));
        for bad in [
            "price_per_mib = \"-1\"",
            "price_per_mib = \"1e3\"",
            "price_per_mib = -1",
            "threshold_wei = 1.5",
            "rpc = \"ftp://x\"",
        ] {
            let f: PaymentsFile = toml::from_str(bad).unwrap();
            assert!(PaymentsConfig::from_file(&f, Path::new("/d")).is_err(), "{bad}");
        }
    }
}
