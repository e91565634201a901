//! The ledger: what is owed to each wallet, every transaction (nonce, hash, raw bytes, amount,
//! state), the pieces already billed, what was served and what was received, in one SQLite
//! database in the data dir. A transaction is written (state `signed`, its amount moved out of
//! `owed`) in the same database transaction that takes the nonce, before it is broadcast.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use alloy_primitives::U256;
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};
use serde::Serialize;

use super::{parse_wei, PaymentError};

/// A transaction's state. `Failed`: mined and reverted, or dropped with its nonce taken by
/// another; its amount is owed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TxState {
    Signed,
    Sent,
    Confirmed,
    Failed,
}

impl TxState {
    fn as_str(self) -> &'static str {
        match self {
            TxState::Signed => "signed",
            TxState::Sent => "sent",
            TxState::Confirmed => "confirmed",
            TxState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> TxState {
        match s {
            "sent" => TxState::Sent,
            "confirmed" => TxState::Confirmed,
            "failed" => TxState::Failed,
            _ => TxState::Signed,
        }
    }
}

/// One transaction as the ledger holds it.
#[derive(Clone, Debug)]
pub struct TxRow {
    pub wallet: String,
    pub amount: U256,
    pub nonce: u64,
    pub hash: String,
    pub raw: Vec<u8>,
    pub state: TxState,
}

/// A transaction as `chiral payments --json` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TxLine {
    pub hash: String,
    pub nonce: u64,
    pub amount_wei: String,
    pub state: TxState,
}

/// One wallet as `chiral payments --json` shows it: `owed_wei` is everything not in a
/// confirmed transaction, `paid_wei` the confirmed ones.
#[derive(Clone, Debug, Serialize)]
pub struct WalletLine {
    pub wallet: String,
    pub owed_wei: String,
    pub paid_wei: String,
    pub bytes: u64,
    pub transactions: Vec<TxLine>,
}

/// One payer as `chiral payments received --json` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedLine {
    pub from: String,
    pub received_wei: String,
    pub served_bytes: u64,
}

/// What a billed report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Billed {
    /// Added to what the wallet is owed; the wallet's total owed now.
    Owed(U256),
    /// The piece was billed by an earlier verification (a crash made it come again).
    AlreadyBilled,
}

pub struct Ledger {
    path: PathBuf,
    db: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS owed (wallet TEXT PRIMARY KEY, wei TEXT NOT NULL, bytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pieces (piece TEXT PRIMARY KEY, verification TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    wallet TEXT NOT NULL,
    amount_wei TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL,
    state TEXT NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS served (wallet TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS received (hash TEXT PRIMARY KEY, from_wallet TEXT NOT NULL, amount_wei TEXT NOT NULL, block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn wei(s: &str) -> U256 {
    parse_wei(s).unwrap_or_default()
}

impl Ledger {
    /// Opens (or makes) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, PaymentError> {
        let err = |e: rusqlite::Error| PaymentError::Ledger { path: path.to_path_buf(), message: e.to_string() };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = Connection::open(path).map_err(err)?;
        db.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // WAL: a commit is in the log before the call returns, so a killed process loses
        // nothing it committed (only the machine's crash could, with synchronous=NORMAL).
        db.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        db.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        db.execute_batch(SCHEMA).map_err(err)?;
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        Ok(Self { path: path.to_path_buf(), db: Mutex::new(db) })
    }

    fn err(&self, e: rusqlite::Error) -> PaymentError {
        PaymentError::Ledger { path: self.path.clone(), message: e.to_string() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, PaymentError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut db).map_err(|e| self.err(e))
    }

    /// Bills `amount` for `bytes` to `wallet`. With `piece` (`(piece key, verification)`), a
    /// piece already billed by another verification is not billed again; the parts of one
    /// verification (several peers) all are.
    pub fn bill(
        &self,
        piece: Option<(&str, &str)>,
        wallet: Option<&str>,
        bytes: u64,
        amount: U256,
    ) -> Result<Billed, PaymentError> {
        self.with(|db| {
            let t = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some((key, verification)) = piece {
                let first: Option<String> =
                    t.query_row("SELECT verification FROM pieces WHERE piece = ?1", [key], |r| r.get(0)).optional()?;
                match first {
                    Some(v) if v != verification => return Ok(Billed::AlreadyBilled),
                    Some(_) => {}
                    None => {
                        t.execute("INSERT INTO pieces (piece, verification) VALUES (?1, ?2)", [key, verification])?;
                    }
                }
            }
            let Some(wallet) = wallet else {
                t.commit()?;
                return Ok(Billed::Owed(U256::ZERO));
            };
            let (old, old_bytes): (U256, i64) = t
                .query_row("SELECT wei, bytes FROM owed WHERE wallet = ?1", [wallet], |r| {
                    Ok((wei(&r.get::<_, String>(0)?), r.get(1)?))
                })
                .optional()?
                .unwrap_or_default();
            let total = old.saturating_add(amount);
            t.execute(
                "INSERT INTO owed (wallet, wei, bytes) VALUES (?1, ?2, ?3)
                 ON CONFLICT(wallet) DO UPDATE SET wei = excluded.wei, bytes = excluded.bytes",
                params![wallet, total.to_string(), old_bytes.saturating_add(bytes.min(i64::MAX as u64) as i64)],
            )?;
            t.commit()?;
            Ok(Billed::Owed(total))
        })
    }

    /// What each wallet is owed and not yet in a transaction, largest first.
    pub fn owed(&self) -> Result<Vec<(String, U256)>, PaymentError> {
        let mut v = self.with(|db| {
            let mut st = db.prepare("SELECT wallet, wei FROM owed")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, wei(&r.get::<_, String>(1)?))))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        v.retain(|(_, w)| !w.is_zero());
        v.sort_by_key(|o| std::cmp::Reverse(o.1));
        Ok(v)
    }

    /// Writes a signed transaction of `amount` to `wallet` with `nonce`, moving the amount out
    /// of what is owed; `nonce` is raised past every nonce the ledger used (returned). `sign`
    /// makes `(hash, raw)` for the nonce. Fails without writing when less is owed.
    pub fn record_signed(
        &self,
        wallet: &str,
        amount: U256,
        nonce: u64,
        sign: impl FnOnce(u64) -> Result<(String, Vec<u8>), PaymentError>,
    ) -> Result<TxRow, PaymentError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let t = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        let owed: U256 = t
            .query_row("SELECT wei FROM owed WHERE wallet = ?1", [wallet], |r| Ok(wei(&r.get::<_, String>(0)?)))
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or_default();
        if owed < amount || amount.is_zero() {
            return Err(PaymentError::Invalid(format!("{wallet} is owed {owed} wei, not {amount}")));
        }
        let used: Option<i64> = t.query_row("SELECT MAX(nonce) FROM txs", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        let nonce = used.map_or(nonce, |u| nonce.max(u as u64 + 1));
        let (hash, raw) = sign(nonce)?;
        t.execute("UPDATE owed SET wei = ?2 WHERE wallet = ?1", params![wallet, (owed - amount).to_string()])
            .map_err(|e| self.err(e))?;
        t.execute(
            "INSERT INTO txs (wallet, amount_wei, nonce, hash, raw, state, updated) VALUES (?1, ?2, ?3, ?4, ?5, 'signed', ?6)",
            params![wallet, amount.to_string(), nonce as i64, hash, raw, now()],
        )
        .map_err(|e| self.err(e))?;
        t.commit().map_err(|e| self.err(e))?;
        Ok(TxRow { wallet: wallet.to_string(), amount, nonce, hash, raw, state: TxState::Signed })
    }

    /// Moves a transaction to `state`; `Failed` makes its amount owed again (once).
    pub fn set_state(&self, hash: &str, state: TxState) -> Result<(), PaymentError> {
        self.with(|db| {
            let t = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(String, String, String)> = t
                .query_row("SELECT wallet, amount_wei, state FROM txs WHERE hash = ?1", [hash], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((wallet, amount, old)) = row else { return Ok(()) };
            let old = TxState::parse(&old);
            if old == state || matches!(old, TxState::Confirmed | TxState::Failed) {
                return Ok(());
            }
            t.execute("UPDATE txs SET state = ?2, updated = ?3 WHERE hash = ?1", params![hash, state.as_str(), now()])?;
            if state == TxState::Failed {
                let owed: U256 = t
                    .query_row("SELECT wei FROM owed WHERE wallet = ?1", [&wallet], |r| Ok(wei(&r.get::<_, String>(0)?)))
                    .optional()?
                    .unwrap_or_default();
                t.execute(
                    "INSERT INTO owed (wallet, wei) VALUES (?1, ?2) ON CONFLICT(wallet) DO UPDATE SET wei = excluded.wei",
                    params![wallet, owed.saturating_add(wei(&amount)).to_string()],
                )?;
            }
            t.commit()
        })
    }

    /// Transactions not yet confirmed or failed, by nonce.
    pub fn pending(&self) -> Result<Vec<TxRow>, PaymentError> {
        self.txs("WHERE state IN ('signed', 'sent') ORDER BY nonce")
    }

    fn txs(&self, tail: &str) -> Result<Vec<TxRow>, PaymentError> {
        self.with(|db| {
            let mut st = db.prepare(&format!("SELECT wallet, amount_wei, nonce, hash, raw, state FROM txs {tail}"))?;
            let rows = st.query_map([], |r| {
                Ok(TxRow {
                    wallet: r.get(0)?,
                    amount: wei(&r.get::<_, String>(1)?),
                    nonce: r.get::<_, i64>(2)? as u64,
                    hash: r.get(3)?,
                    raw: r.get(4)?,
                    state: TxState::parse(&r.get::<_, String>(5)?),
                })
            })?;
            rows.collect()
        })
    }

    /// Every wallet with its owed and paid amounts and its transactions.
    pub fn report(&self) -> Result<Vec<WalletLine>, PaymentError> {
        let owed: Vec<(String, U256, u64)> = self.with(|db| {
            let mut st = db.prepare("SELECT wallet, wei, bytes FROM owed")?;
            let rows =
                st.query_map([], |r| Ok((r.get(0)?, wei(&r.get::<_, String>(1)?), r.get::<_, i64>(2)?.max(0) as u64)))?;
            rows.collect()
        })?;
        let txs = self.txs("ORDER BY nonce")?;
        let mut wallets: Vec<String> =
            owed.iter().map(|o| o.0.clone()).chain(txs.iter().map(|t| t.wallet.clone())).collect();
        wallets.sort();
        wallets.dedup();
        Ok(wallets
            .into_iter()
            .map(|w| {
                let (mut owed_wei, bytes) = owed.iter().find(|o| o.0 == w).map(|o| (o.1, o.2)).unwrap_or_default();
                let mut paid = U256::ZERO;
                let mut lines = Vec::new();
                for t in txs.iter().filter(|t| t.wallet == w) {
                    match t.state {
                        TxState::Confirmed => paid = paid.saturating_add(t.amount),
                        TxState::Signed | TxState::Sent => owed_wei = owed_wei.saturating_add(t.amount),
                        TxState::Failed => {}
                    }
                    lines.push(TxLine {
                        hash: t.hash.clone(),
                        nonce: t.nonce,
                        amount_wei: t.amount.to_string(),
                        state: t.state,
                    });
                }
                WalletLine {
                    wallet: w,
                    owed_wei: owed_wei.to_string(),
                    paid_wei: paid.to_string(),
                    bytes,
                    transactions: lines,
                }
            })
            .collect())
    }

    /// Adds `bytes` served to `wallet`.
    pub fn served(&self, wallet: &str, bytes: u64) -> Result<(), PaymentError> {
        let bytes = bytes.min(i64::MAX as u64) as i64;
        self.with(|db| {
            db.execute(
                "INSERT INTO served (wallet, bytes) VALUES (?1, ?2)
                 ON CONFLICT(wallet) DO UPDATE SET bytes = MIN(bytes + excluded.bytes, 9223372036854775807)",
                params![wallet, bytes],
            )
            .map(|_| ())
        })
    }

    /// The next block to scan for incoming transfers.
    pub fn scan_from(&self) -> Result<u64, PaymentError> {
        let v: Option<String> = self
            .with(|db| db.query_row("SELECT value FROM meta WHERE key = 'scan_from'", [], |r| r.get(0)).optional())?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Records the transfers found in blocks up to `next - 1`, and `next` as where to go on.
    pub fn add_received(&self, found: &[(String, String, U256, u64)], next: u64) -> Result<(), PaymentError> {
        self.with(|db| {
            let t = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (hash, from, amount, block) in found {
                t.execute(
                    "INSERT OR IGNORE INTO received (hash, from_wallet, amount_wei, block) VALUES (?1, ?2, ?3, ?4)",
                    params![hash, from, amount.to_string(), *block as i64],
                )?;
            }
            t.execute(
                "INSERT INTO meta (key, value) VALUES ('scan_from', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [next.to_string()],
            )?;
            t.commit()
        })
    }

    /// Per payer: what it sent us and what we served it.
    pub fn received(&self) -> Result<Vec<ReceivedLine>, PaymentError> {
        let (rows, served) = (self.received_rows()?, self.served_rows()?);
        let mut out: Vec<(String, U256)> = Vec::new();
        for (from, amount) in rows {
            match out.iter_mut().find(|o| o.0 == from) {
                Some(o) => o.1 = o.1.saturating_add(wei(&amount)),
                None => out.push((from, wei(&amount))),
            }
        }
        Ok(out
            .into_iter()
            .map(|(from, amount)| ReceivedLine {
                served_bytes: served.iter().find(|s| s.0 == from).map_or(0, |s| s.1.max(0) as u64),
                from,
                received_wei: amount.to_string(),
            })
            .collect())
    }
}

impl Ledger {
    /// (payer, amount in wei as text) of every transfer into our wallet found.
    fn received_rows(&self) -> Result<Vec<(String, String)>, PaymentError> {
        self.with(|db| {
            let mut st = db.prepare("SELECT from_wallet, amount_wei FROM received")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// (wallet, bytes) we served.
    fn served_rows(&self) -> Result<Vec<(String, i64)>, PaymentError> {
        self.with(|db| {
            let mut st = db.prepare("SELECT wallet, bytes FROM served")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Per wallet we served: the bytes served and what it sent us, in all.
    pub fn standing(&self) -> Result<Vec<(String, u64, U256)>, PaymentError> {
        let (served, received) = (self.served_rows()?, self.received_rows()?);
        Ok(served
            .into_iter()
            .map(|(w, bytes)| {
                let paid = received
                    .iter()
                    .filter(|(from, _)| from.eq_ignore_ascii_case(&w))
                    .fold(U256::ZERO, |a, (_, amount)| a.saturating_add(wei(amount)));
                (w, bytes.max(0) as u64, paid)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("p.sqlite")).unwrap();
        (dir, l)
    }

    #[test]
    fn a_piece_is_billed_once_whatever_comes_again() {
        let (_d, l) = ledger();
        let w = U256::from(10u64);
        assert_eq!(l.bill(Some(("ih:0", "v1")), Some(A), 16, w).unwrap(), Billed::Owed(w));
        // A second peer's part of the same verification is billed too.
        assert_eq!(l.bill(Some(("ih:0", "v1")), Some(A), 16, w).unwrap(), Billed::Owed(U256::from(20u64)));
        // The same piece verified again after a crash is not.
        assert_eq!(l.bill(Some(("ih:0", "v2")), Some(A), 16, w).unwrap(), Billed::AlreadyBilled);
        assert_eq!(l.bill(None, Some(A), 16, w).unwrap(), Billed::Owed(U256::from(30u64)));
        assert_eq!(l.owed().unwrap(), vec![(A.to_string(), U256::from(30u64))]);
    }

    #[test]
    fn a_transaction_moves_the_debt_and_a_failure_moves_it_back() {
        let (_d, l) = ledger();
        l.bill(None, Some(A), 1, U256::from(100u64)).unwrap();
        assert!(l.record_signed(A, U256::from(101u64), 0, |_| unreachable!()).is_err(), "more than owed");
        let t = l.record_signed(A, U256::from(60u64), 5, |n| Ok((format!("0xh{n}"), vec![n as u8]))).unwrap();
        assert_eq!((t.nonce, t.hash.as_str()), (5, "0xh5"));
        // The next nonce is past the ledger's even if the chain says less.
        let t2 = l.record_signed(A, U256::from(40u64), 0, |n| Ok((format!("0xh{n}"), vec![]))).unwrap();
        assert_eq!(t2.nonce, 6);
        let r = &l.report().unwrap()[0];
        assert_eq!((r.owed_wei.as_str(), r.paid_wei.as_str()), ("100", "0"), "unconfirmed counts as owed");
        l.set_state("0xh5", TxState::Confirmed).unwrap();
        l.set_state("0xh6", TxState::Failed).unwrap();
        l.set_state("0xh6", TxState::Failed).unwrap();
        let r = &l.report().unwrap()[0];
        assert_eq!((r.owed_wei.as_str(), r.paid_wei.as_str()), ("40", "60"));
        assert_eq!(l.owed().unwrap(), vec![(A.to_string(), U256::from(40u64))], "failed once, owed again once");
        assert!(l.pending().unwrap().is_empty());
        // A signing failure writes nothing.
        assert!(l.record_signed(A, U256::from(1u64), 0, |_| Err(PaymentError::Invalid("x".into()))).is_err());
        assert_eq!(l.owed().unwrap()[0].1, U256::from(40u64));
    }

    #[test]
    fn received_is_matched_with_served() {
        let (_d, l) = ledger();
        l.served(A, 5).unwrap();
        l.served(A, 7).unwrap();
        let found = [
            ("0x1".to_string(), A.to_string(), U256::from(3u64), 4),
            ("0x1".to_string(), A.to_string(), U256::from(3u64), 4),
        ];
        l.add_received(&found, 9).unwrap();
        assert_eq!(l.scan_from().unwrap(), 9);
        let r = l.received().unwrap();
        assert_eq!((r.len(), r[0].received_wei.as_str(), r[0].served_bytes), (1, "3", 12));
    }
}
