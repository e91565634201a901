//! The chain over JSON-RPC (a handful of `eth_` methods, answers checked and bounded) and value
//! transfers signed locally with the chain id: EIP-1559 where blocks carry a base fee, EIP-155
//! legacy otherwise.

use std::time::Duration;

use alloy_consensus::{SignableTransaction as _, TxEip1559, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::Encodable2718 as _;
use alloy_primitives::{Address, Bytes, TxKind, B256, U256};
use alloy_signer::SignerSync as _;
use alloy_signer_local::PrivateKeySigner;
use serde_json::{json, Value};
use thiserror::Error;

/// Gas of a plain value transfer.
pub const TRANSFER_GAS: u64 = 21_000;
/// Largest JSON-RPC answer read (a block with full transactions).
const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, Error)]
pub enum ChainError {
    /// No answer: refused, timed out, not HTTP.
    #[error("chain unreachable at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The node answered with a JSON-RPC error.
    #[error("chain refused {method}: {message}")]
    Rpc { method: String, code: i64, message: String },
    /// An answer that is not what the method returns.
    #[error("chain answered {method} with something unexpected: {message}")]
    Bad { method: String, message: String },
    /// The fee the chain asks for now is over `max_fee_wei`.
    #[error("the chain's fee ({need} wei for a transfer) is over max_fee_wei ({cap})")]
    FeeTooHigh { need: U256, cap: U256 },
    #[error("signing failed: {0}")]
    Sign(String),
}

impl ChainError {
    /// Whether the chain could not be reached at all (as opposed to answering).
    pub fn unreachable(&self) -> bool {
        matches!(self, ChainError::Unreachable { .. })
    }
}

/// A JSON-RPC endpoint.
#[derive(Clone, Debug)]
pub struct Chain {
    url: String,
    client: reqwest::Client,
}

/// A receipt's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Reverted,
}

/// An incoming transfer found in a block.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub hash: B256,
    pub from: Address,
    pub value: U256,
}

/// What a transfer pays in fees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fees {
    Eip1559 { max_fee_per_gas: u128, max_priority_fee_per_gas: u128 },
    Legacy { gas_price: u128 },
}

impl Chain {
    /// `timeout` bounds each request. With `proxy` (the host's `--proxy` / `proxy`, already
    /// checked), every request goes through it, a loopback RPC too: never around it. The
    /// environment's proxy variables are not read.
    pub fn new(url: &str, timeout: Duration, proxy: Option<&str>) -> Result<Self, ChainError> {
        let fail = |e: reqwest::Error| ChainError::Unreachable {
            url: url.to_string(),
            message: chiral_sdk::text::line(&e.to_string()),
        };
        let mut b = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).no_proxy();
        if let Some(p) = proxy {
            b = b.proxy(reqwest::Proxy::all(p).map_err(fail)?);
        }
        Ok(Self { url: url.to_string(), client: b.build().map_err(fail)? })
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, ChainError> {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        let unreachable = |e: &dyn std::fmt::Display| ChainError::Unreachable {
            url: self.url.clone(),
            message: chiral_sdk::text::line(&e.to_string()),
        };
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(unreachable(&format!("HTTP {}", resp.status())));
        }
        let bad = |m: String| ChainError::Bad { method: method.to_string(), message: m };
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(bad("answer too large".into()));
        }
        let bytes = resp.bytes().await.map_err(|e| unreachable(&e))?;
        if bytes.len() > MAX_ANSWER {
            return Err(bad("answer too large".into()));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let message = err["message"].as_str().unwrap_or("error");
            return Err(ChainError::Rpc {
                method: method.to_string(),
                code: err["code"].as_i64().unwrap_or(0),
                message: chiral_sdk::text::for_terminal(message, 300),
            });
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    fn quantity(method: &str, v: &Value) -> Result<U256, ChainError> {
        let bad = || ChainError::Bad { method: method.to_string(), message: format!("not a quantity: {v:.80}") };
        let s = v.as_str().ok_or_else(bad)?;
        let h = s.strip_prefix("0x").ok_or_else(bad)?;
        if h.is_empty() || h.len() > 64 {
            return Err(bad());
        }
        U256::from_str_radix(h, 16).map_err(|_| bad())
    }

    fn small(method: &str, v: &Value) -> Result<u64, ChainError> {
        u64::try_from(Self::quantity(method, v)?)
            .map_err(|_| ChainError::Bad { method: method.to_string(), message: "number too large".into() })
    }

    fn fee(method: &str, v: &Value) -> Result<u128, ChainError> {
        u128::try_from(Self::quantity(method, v)?)
            .map_err(|_| ChainError::Bad { method: method.to_string(), message: "fee too large".into() })
    }

    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        Self::small("eth_chainId", &self.call("eth_chainId", json!([])).await?)
    }

    pub async fn block_number(&self) -> Result<u64, ChainError> {
        Self::small("eth_blockNumber", &self.call("eth_blockNumber", json!([])).await?)
    }

    pub async fn balance(&self, a: Address) -> Result<U256, ChainError> {
        Self::quantity("eth_getBalance", &self.call("eth_getBalance", json!([a, "latest"])).await?)
    }

    /// Transactions sent from `a` (`pending`: counting those not yet mined).
    pub async fn nonce(&self, a: Address, pending: bool) -> Result<u64, ChainError> {
        let tag = if pending { "pending" } else { "latest" };
        Self::small("eth_getTransactionCount", &self.call("eth_getTransactionCount", json!([a, tag])).await?)
    }

    /// Fees for a transfer now, the whole fee at most `cap`.
    pub async fn fees(&self, cap: U256) -> Result<Fees, ChainError> {
        let block = self.call("eth_getBlockByNumber", json!(["latest", false])).await?;
        let per_gas_cap = u128::try_from(cap / U256::from(TRANSFER_GAS)).unwrap_or(u128::MAX);
        let too_high = |per_gas: u128| ChainError::FeeTooHigh {
            need: U256::from(per_gas).saturating_mul(U256::from(TRANSFER_GAS)),
            cap,
        };
        match block.get("baseFeePerGas").filter(|v| !v.is_null()) {
            Some(base) => {
                let base = Self::fee("eth_getBlockByNumber", base)?;
                let tip = match self.call("eth_maxPriorityFeePerGas", json!([])).await {
                    Ok(v) => Self::fee("eth_maxPriorityFeePerGas", &v)?,
                    Err(ChainError::Rpc { .. }) => 1_000_000_000,
                    Err(e) => return Err(e),
                };
                if base.saturating_add(tip) > per_gas_cap {
                    return Err(too_high(base.saturating_add(tip)));
                }
                // Room for the base fee to double, within the cap.
                let max_fee = base.saturating_mul(2).saturating_add(tip).min(per_gas_cap);
                Ok(Fees::Eip1559 { max_fee_per_gas: max_fee, max_priority_fee_per_gas: tip })
            }
            None => {
                let price = Self::fee("eth_gasPrice", &self.call("eth_gasPrice", json!([])).await?)?;
                if price > per_gas_cap {
                    return Err(too_high(price));
                }
                Ok(Fees::Legacy { gas_price: price })
            }
        }
    }

    /// Broadcasts a signed transaction; one the node already has counts as sent.
    pub async fn send_raw(&self, raw: &[u8]) -> Result<(), ChainError> {
        match self.call("eth_sendRawTransaction", json!([format!("0x{}", hex::encode(raw))])).await {
            Ok(_) => Ok(()),
            Err(ChainError::Rpc { message, .. }) if message.to_ascii_lowercase().contains("already known") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The receipt's outcome, `None` while the transaction is not mined.
    pub async fn receipt(&self, hash: B256) -> Result<Option<Outcome>, ChainError> {
        let r = self.call("eth_getTransactionReceipt", json!([hash])).await?;
        if r.is_null() {
            return Ok(None);
        }
        let status = Self::small("eth_getTransactionReceipt", &r["status"])?;
        Ok(Some(if status == 1 { Outcome::Success } else { Outcome::Reverted }))
    }

    /// Whether the node knows the transaction (mined or waiting).
    pub async fn knows(&self, hash: B256) -> Result<bool, ChainError> {
        Ok(!self.call("eth_getTransactionByHash", json!([hash])).await?.is_null())
    }

    /// Value transfers to `to` in block `n` whose receipt succeeded.
    pub async fn incoming(&self, n: u64, to: Address) -> Result<Vec<Incoming>, ChainError> {
        const M: &str = "eth_getBlockByNumber";
        let block = self.call(M, json!([format!("0x{n:x}"), true])).await?;
        let mut out = Vec::new();
        for tx in block["transactions"].as_array().into_iter().flatten() {
            let Some(t) = tx["to"].as_str().and_then(|s| s.parse::<Address>().ok()) else { continue };
            if t != to {
                continue;
            }
            let value = Self::quantity(M, &tx["value"])?;
            let (Some(hash), Some(from)) = (
                tx["hash"].as_str().and_then(|s| s.parse::<B256>().ok()),
                tx["from"].as_str().and_then(|s| s.parse::<Address>().ok()),
            ) else {
                continue;
            };
            if value.is_zero() || self.receipt(hash).await? != Some(Outcome::Success) {
                continue;
            }
            out.push(Incoming { hash, from, value });
        }
        Ok(out)
    }
}

/// A value transfer of `value` wei to `to`, signed: its hash and its raw bytes (EIP-2718).
pub fn sign_transfer(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    to: Address,
    value: U256,
    fees: Fees,
) -> Result<(B256, Vec<u8>), ChainError> {
    let sign = |h: B256| signer.sign_hash_sync(&h).map_err(|e| ChainError::Sign(e.to_string()));
    let envelope: TxEnvelope = match fees {
        Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } => {
            let tx = TxEip1559 {
                chain_id,
                nonce,
                gas_limit: TRANSFER_GAS,
                max_fee_per_gas,
                max_priority_fee_per_gas,
                to: TxKind::Call(to),
                value,
                access_list: Default::default(),
                input: Bytes::new(),
            };
            let sig = sign(tx.signature_hash())?;
            tx.into_signed(sig).into()
        }
        Fees::Legacy { gas_price } => {
            let tx = TxLegacy {
                chain_id: Some(chain_id),
                nonce,
                gas_price,
                gas_limit: TRANSFER_GAS,
                to: TxKind::Call(to),
                value,
                input: Bytes::new(),
            };
            let sig = sign(tx.signature_hash())?;
            tx.into_signed(sig).into()
        }
    };
    Ok((*envelope.tx_hash(), envelope.encoded_2718()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_signed_for_the_chain() {
        let signer: PrivateKeySigner =
            "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80".parse().unwrap();
        let to: Address = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8".parse().unwrap();
        let fees = Fees::Eip1559 { max_fee_per_gas: 2_000_000_000, max_priority_fee_per_gas: 1_000_000_000 };
        let (h, raw) = sign_transfer(&signer, 98765, 7, to, U256::from(5u64), fees).unwrap();
        assert_eq!(raw[0], 2, "EIP-1559 envelope");
        assert_eq!(h, alloy_primitives::keccak256(&raw));
        let (h2, raw2) = sign_transfer(&signer, 98765, 7, to, U256::from(5u64), fees).unwrap();
        assert_eq!((h2, &raw2), (h, &raw), "deterministic (RFC 6979): the same bytes for the same transfer");
        let (_, legacy) =
            sign_transfer(&signer, 98765, 7, to, U256::from(5u64), Fees::Legacy { gas_price: 1 }).unwrap();
        assert!(legacy[0] >= 0xc0, "legacy RLP list");
    }

    #[test]
    fn quantities_are_bounded() {
        assert_eq!(Chain::small("m", &json!("0x10")).unwrap(), 16);
        for bad in [json!(16), json!("16"), json!("0x"), json!(format!("0x{}", "f".repeat(65))), json!("0xzz")] {
            assert!(Chain::quantity("m", &bad).is_err(), "{bad}");
        }
        assert!(Chain::small("m", &json!(format!("0x1{}", "0".repeat(16)))).is_err());
    }
}
