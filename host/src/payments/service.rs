//! The payment service: takes `PaymentRequired` from every plugin, prices what was verified,
//! accumulates it per wallet in the ledger and pays it on the chain — at `threshold_wei`
//! during a download, everything at the end of one, and on demand.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use chiral_sdk::Event;
use serde::Serialize;
use tokio::sync::{broadcast, Notify};

use super::{
    chain::{sign_transfer, Chain, Outcome},
    ledger::{Billed, Ledger, ReceivedLine, TxRow, TxState, WalletLine},
    parse_wallet, price,
    wallet::Keystore,
    wallet_text, PaymentError, PaymentsConfig,
};

/// How long one JSON-RPC request may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// After the chain failed, automatic payments wait this long before they try again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Most blocks one `received` scan reads; the next one goes on from there.
const MAX_SCAN: u64 = 10_000;
/// Test hook: `CHIRAL_PAYMENTS_CRASH=signed` (or `sent`) aborts the process right after a
/// transaction reached that state in the ledger, as a crash there would.
const CRASH_ENV: &str = "CHIRAL_PAYMENTS_CRASH";

/// A payment event, for the daemon's event stream.
#[derive(Clone, Debug, Serialize)]
pub struct PaymentNotice {
    /// `owed`, `signed`, `sent`, `confirmed`, `failed` or `refused` (a malformed wallet).
    pub state: &'static str,
    pub wallet: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_wei: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `chiral payments --json`.
#[derive(Clone, Debug, Serialize)]
pub struct PaymentsReport {
    pub wallet: Option<String>,
    pub payments: Vec<WalletLine>,
}

/// `chiral payments received --json`.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedReport {
    pub wallet: String,
    pub received: Vec<ReceivedLine>,
    pub total_wei: String,
}

/// What one settling did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Settled {
    /// Transactions signed now.
    pub signed: usize,
    /// Transactions confirmed now (earlier ones found on the chain included).
    pub confirmed: usize,
    /// Transactions still waiting for the chain.
    pub pending: usize,
}

pub struct PaymentService {
    cfg: PaymentsConfig,
    ledger: Ledger,
    me: Option<Address>,
    signer: Mutex<Option<PrivateKeySigner>>,
    chain: Option<Chain>,
    wake: Notify,
    settling: tokio::sync::Mutex<()>,
    notices: broadcast::Sender<PaymentNotice>,
}

/// What the `peer` of a `PaymentRequired` says besides the peer's id (see docs/payments.md):
/// ` piece <content>:<index>:<verification>` (a verified piece's bytes from that peer) or
/// ` served` (bytes we served it: no debt).
enum Tag<'a> {
    Piece { key: &'a str, verification: &'a str },
    Served,
    Plain,
}

fn tag(peer: &str) -> (&str, Tag<'_>) {
    if let Some(id) = peer.strip_suffix(" served") {
        return (id, Tag::Served);
    }
    match peer.split_once(" piece ").and_then(|(id, rest)| Some((id, rest.rsplit_once(':')?))) {
        Some((id, (key, verification))) if !key.is_empty() && key.len() <= 200 && verification.len() <= 64 => {
            (id, Tag::Piece { key, verification })
        }
        _ => (peer, Tag::Plain),
    }
}

impl PaymentService {
    /// The service over the ledger in the data dir; the keystore's address (if any) is ours.
    /// Nothing is unlocked: see [`PaymentService::unlock`].
    pub fn open(cfg: PaymentsConfig) -> Result<Arc<Self>, PaymentError> {
        let ledger = Ledger::open(&cfg.ledger)?;
        let me = Keystore::new(&cfg.keystore).address().ok();
        let chain = cfg.rpc.as_deref().map(|u| Chain::new(u, RPC_TIMEOUT, cfg.proxy.as_deref())).transpose()?;
        Ok(Arc::new(Self {
            cfg,
            ledger,
            me,
            signer: Mutex::new(None),
            chain,
            wake: Notify::new(),
            settling: tokio::sync::Mutex::new(()),
            notices: broadcast::channel(256).0,
        }))
    }

    pub fn config(&self) -> &PaymentsConfig {
        &self.cfg
    }

    /// Our wallet's address (from the keystore), announced to peers so they can pay us.
    pub fn address(&self) -> Option<Address> {
        self.me
    }

    /// Decrypts the keystore so debts can be paid.
    pub fn unlock(&self, passphrase: &str) -> Result<(), PaymentError> {
        let signer = Keystore::new(&self.cfg.keystore).unlock(passphrase)?;
        *self.signer.lock().unwrap_or_else(|p| p.into_inner()) = Some(signer);
        Ok(())
    }

    /// Payment events as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<PaymentNotice> {
        self.notices.subscribe()
    }

    fn notice(&self, state: &'static str, wallet: &str, amount: Option<U256>, hash: Option<&str>) {
        let _ = self.notices.send(PaymentNotice {
            state,
            wallet: wallet.to_string(),
            amount_wei: amount.map(|a| a.to_string()),
            hash: hash.map(str::to_string),
        });
    }

    /// Takes one plugin event (called on the plugin's thread; the ledger is written before it
    /// returns, so the plugin hands the piece on only after its debt is recorded).
    pub fn on_event(&self, plugin: &str, e: &Event) {
        let Event::PaymentRequired { peer, wallet, bytes } = e else { return };
        let (id, tag) = tag(peer.as_str());
        let shown_id = chiral_sdk::text::for_terminal(id, 80);
        let wallet = wallet.as_ref().into_option().map(|w| w.as_str());
        let parsed = wallet.map(|w| (w, parse_wallet(w)));
        if let Some((raw, None)) = parsed {
            tracing::warn!(
                plugin,
                peer = %shown_id,
                "refused the malformed wallet {:?} of a peer: it is never paid",
                chiral_sdk::text::for_terminal(raw, 60)
            );
            self.notice("refused", &chiral_sdk::text::for_terminal(raw, 60), None, None);
        }
        let payee = parsed.and_then(|(_, a)| a).filter(|a| Some(*a) != self.me).map(|a| wallet_text(&a));
        let result = match tag {
            Tag::Served => match &payee {
                Some(w) => self.ledger.served(w, *bytes).map(|_| None),
                None => Ok(None),
            },
            Tag::Piece { key, verification } => {
                let key = format!("{plugin}:{key}");
                let amount = price(*bytes, self.cfg.price_per_mib);
                let to = payee.as_deref().filter(|_| !amount.is_zero());
                let billed = if to.is_some() { amount } else { U256::ZERO };
                self.ledger.bill(Some((&key, verification)), to, *bytes, amount).map(|b| Some((b, billed)))
            }
            Tag::Plain => {
                let amount = price(*bytes, self.cfg.price_per_mib);
                match payee.as_deref().filter(|_| !amount.is_zero()) {
                    Some(w) => self.ledger.bill(None, Some(w), *bytes, amount).map(|b| Some((b, amount))),
                    None => Ok(None),
                }
            }
        };
        match result {
            Ok(Some((Billed::Owed(total), amount))) if !amount.is_zero() => {
                let w = payee.as_deref().unwrap_or_default();
                tracing::debug!(plugin, peer = %shown_id, wallet = w, bytes, %amount, %total, "owed");
                self.notice("owed", w, Some(amount), None);
                if total >= self.cfg.threshold_wei {
                    self.wake.notify_one();
                }
            }
            Ok(Some((Billed::AlreadyBilled, _))) => {
                tracing::debug!(plugin, peer = %shown_id, "piece billed before: not again")
            }
            Ok(_) => {}
            Err(e) => tracing::error!("payments: {e}"),
        }
    }

    /// Pays automatically, in the background on the current tokio runtime: at start (what an
    /// earlier run left pending) and whenever a wallet is owed `threshold_wei`.
    pub fn start(self: &Arc<Self>) {
        if self.chain.is_none() {
            return;
        }
        let s = self.clone();
        self.wake.notify_one();
        // Lives as long as the process (the service is the process's).
        tokio::spawn(async move {
            loop {
                s.wake.notified().await;
                let threshold = s.cfg.threshold_wei.max(U256::from(1u64));
                if let Err(e) = s.settle(threshold, false).await {
                    tracing::warn!("payments: {e}; the debt is kept and paid later");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        });
    }

    /// Finishes what the ledger left pending, then pays every wallet owed at least `min` (at
    /// least 1 wei); with `wait`, waits for the receipts (the caller bounds the time).
    pub async fn settle(&self, min: U256, wait: bool) -> Result<Settled, PaymentError> {
        let chain = self.chain.as_ref().ok_or(PaymentError::NoChain)?;
        let _one = self.settling.lock().await;
        let mut out = Settled::default();
        out.confirmed += self.reconcile(chain).await?;
        let owed: Vec<(String, U256)> =
            self.ledger.owed()?.into_iter().filter(|(_, a)| *a >= min.max(U256::from(1u64))).collect();
        if !owed.is_empty() {
            let signer = self.signer.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
                PaymentError::Invalid("the wallet is locked: set CHIRAL_WALLET_PASSPHRASE to pay".into())
            })?;
            let id = chain.chain_id().await?;
            if id != self.cfg.chain_id {
                return Err(PaymentError::Config(format!(
                    "chain_id is {} but the chain at rpc says {id}: nothing is paid",
                    self.cfg.chain_id
                )));
            }
            for (wallet, amount) in owed {
                let Some(to) = parse_wallet(&wallet) else { continue };
                let fees = chain.fees(self.cfg.max_fee_wei).await?;
                let nonce = chain.nonce(signer.address(), true).await?;
                let row = self.ledger.record_signed(&wallet, amount, nonce, |n| {
                    let (h, raw) = sign_transfer(&signer, self.cfg.chain_id, n, to, amount, fees)?;
                    Ok((hash_text(&h), raw))
                })?;
                out.signed += 1;
                self.notice("signed", &wallet, Some(amount), Some(&row.hash));
                crash_point("signed");
                self.broadcast(chain, &row).await?;
            }
        }
        if wait {
            out.confirmed += self.await_receipts(chain).await?;
        }
        out.pending = self.ledger.pending()?.len();
        Ok(out)
    }

    /// Settles everything owed and waits for the receipts, at most `settle_timeout`; the
    /// debt stays owed when the chain does not answer in time (logged, not an error).
    pub async fn settle_before_exit(&self) {
        if self.chain.is_none()
            || self.ledger.owed().is_ok_and(|o| o.is_empty()) && self.ledger.pending().is_ok_and(|p| p.is_empty())
        {
            return;
        }
        match tokio::time::timeout(self.cfg.settle_timeout, self.settle(U256::from(1u64), true)).await {
            Ok(Ok(s)) if s.pending == 0 => {}
            Ok(Ok(s)) => tracing::warn!("payments: {} transaction(s) not confirmed yet; `chiral payments settle` finishes them", s.pending),
            Ok(Err(e)) => tracing::warn!("payments: {e}; the debt is kept: `chiral payments settle` pays it later"),
            Err(_) => tracing::warn!("payments: the chain did not settle within settle_timeout; the debt is kept: `chiral payments settle` pays it later"),
        }
    }

    async fn broadcast(&self, chain: &Chain, row: &TxRow) -> Result<(), PaymentError> {
        chain.send_raw(&row.raw).await?;
        self.ledger.set_state(&row.hash, TxState::Sent)?;
        self.notice("sent", &row.wallet, Some(row.amount), Some(&row.hash));
        crash_point("sent");
        Ok(())
    }

    fn mark(&self, row: &TxRow, o: Outcome) -> Result<(), PaymentError> {
        let (state, name) = match o {
            Outcome::Success => (TxState::Confirmed, "confirmed"),
            Outcome::Reverted => (TxState::Failed, "failed"),
        };
        self.ledger.set_state(&row.hash, state)?;
        self.notice(name, &row.wallet, Some(row.amount), Some(&row.hash));
        Ok(())
    }

    /// Every pending transaction checked with the chain: mined ones get their outcome; one the
    /// chain does not know is broadcast again with the same bytes (never signed anew) unless
    /// its nonce went to another transaction, when it failed and its amount is owed again.
    /// Returns how many were confirmed.
    async fn reconcile(&self, chain: &Chain) -> Result<usize, PaymentError> {
        let mut confirmed = 0;
        for row in self.ledger.pending()? {
            let h = parse_hash(&row.hash)?;
            if let Some(o) = chain.receipt(h).await? {
                self.mark(&row, o)?;
                confirmed += usize::from(o == Outcome::Success);
                continue;
            }
            if chain.knows(h).await? {
                self.ledger.set_state(&row.hash, TxState::Sent)?;
                continue;
            }
            let from = self.signer_address().or(self.me);
            let taken = match from {
                Some(a) => chain.nonce(a, false).await? > row.nonce,
                None => false,
            };
            if taken {
                // Mined just now after all?
                if let Some(o) = chain.receipt(h).await? {
                    self.mark(&row, o)?;
                    confirmed += usize::from(o == Outcome::Success);
                } else {
                    tracing::warn!(
                        "payments: transaction {} was dropped (its nonce went to another); owed again",
                        row.hash
                    );
                    self.mark(&row, Outcome::Reverted)?;
                }
                continue;
            }
            self.broadcast(chain, &row).await?;
        }
        Ok(confirmed)
    }

    fn signer_address(&self) -> Option<Address> {
        self.signer.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.address())
    }

    async fn await_receipts(&self, chain: &Chain) -> Result<usize, PaymentError> {
        let mut confirmed = 0;
        loop {
            let pending = self.ledger.pending()?;
            if pending.is_empty() {
                return Ok(confirmed);
            }
            for row in &pending {
                if let Some(o) = chain.receipt(parse_hash(&row.hash)?).await? {
                    self.mark(row, o)?;
                    confirmed += usize::from(o == Outcome::Success);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The ledger per wallet; first brought up to date with the chain when it answers.
    pub async fn report(&self) -> Result<PaymentsReport, PaymentError> {
        if let Some(chain) = &self.chain {
            let _one = self.settling.lock().await;
            if let Err(e) = self.reconcile(chain).await {
                tracing::debug!("payments: not checked with the chain: {e}");
            }
        }
        Ok(PaymentsReport { wallet: self.me.as_ref().map(wallet_text), payments: self.ledger.report()? })
    }

    /// The ledger per wallet as it is (no chain).
    pub fn ledger_report(&self) -> Result<PaymentsReport, PaymentError> {
        Ok(PaymentsReport { wallet: self.me.as_ref().map(wallet_text), payments: self.ledger.report()? })
    }

    /// Transfers into our wallet found on the chain (scanned on from where the last scan
    /// stopped), per payer, with the bytes we served each.
    pub async fn received(&self) -> Result<ReceivedReport, PaymentError> {
        let me = self.scan_incoming().await?;
        let received = self.ledger.received()?;
        let total = received
            .iter()
            .fold(U256::ZERO, |a, r| a.saturating_add(super::parse_wei(&r.received_wei).unwrap_or_default()));
        Ok(ReceivedReport { wallet: wallet_text(&me), received, total_wei: total.to_string() })
    }

    /// Records the transfers into our wallet in the blocks not scanned yet (at most
    /// `MAX_SCAN` a call); our address.
    async fn scan_incoming(&self) -> Result<Address, PaymentError> {
        let me = self.me.ok_or_else(|| PaymentError::NoWallet(self.cfg.keystore.clone()))?;
        let chain = self.chain.as_ref().ok_or(PaymentError::NoChain)?;
        let head = chain.block_number().await?;
        let mut from = self.ledger.scan_from()?;
        if from == 0 && head > MAX_SCAN {
            from = head - MAX_SCAN;
        }
        let to = head.min(from.saturating_add(MAX_SCAN));
        let mut found = Vec::new();
        let mut n = from;
        while n <= to {
            for t in chain.incoming(n, me).await? {
                found.push((hash_text(&t.hash), wallet_text(&t.from), t.value, n));
            }
            n += 1;
        }
        self.ledger.add_received(&found, to + 1)?;
        Ok(me)
    }

    /// The wallets we served that are behind on payment: what we served them, at our own
    /// `price_per_mib`, is more than what they sent us (scanned from the chain now) by over
    /// two `threshold_wei` (a payer pays once it owes its threshold; one more may be on its
    /// way). Lowercase.
    pub async fn behind(&self) -> Result<Vec<String>, PaymentError> {
        self.scan_incoming().await?;
        let allowance = self.cfg.threshold_wei.saturating_mul(U256::from(2u64));
        Ok(self
            .ledger
            .standing()?
            .into_iter()
            .filter(|(_, bytes, paid)| super::price(*bytes, self.cfg.price_per_mib) > paid.saturating_add(allowance))
            .map(|(w, ..)| w.to_ascii_lowercase())
            .collect())
    }

    /// Our wallet's balance on the chain.
    pub async fn balance(&self) -> Result<(Address, U256), PaymentError> {
        let me = self.me.ok_or_else(|| PaymentError::NoWallet(self.cfg.keystore.clone()))?;
        let chain = self.chain.as_ref().ok_or(PaymentError::NoChain)?;
        Ok((me, chain.balance(me).await?))
    }
}

fn hash_text(h: &B256) -> String {
    format!("0x{}", hex::encode(h.as_slice()))
}

fn parse_hash(s: &str) -> Result<B256, PaymentError> {
    s.parse().map_err(|_| PaymentError::Invalid(format!("ledger hash {s:?} is malformed")))
}

fn crash_point(at: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == at) {
        eprintln!("chiral: {CRASH_ENV}={at}: aborting here (test hook)");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_field_says_what_is_paid_for() {
        assert!(matches!(tag("abc piece ih:3:00ff"), ("abc", Tag::Piece { key: "ih:3", verification: "00ff" })));
        assert!(matches!(tag("abc served"), ("abc", Tag::Served)));
        assert!(matches!(tag("1.2.3.4:5"), ("1.2.3.4:5", Tag::Plain)));
        assert!(matches!(tag("abc piece nocolon"), (_, Tag::Plain)));
    }
}
