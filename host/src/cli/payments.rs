//! `chiral payments [--json]`, `chiral payments settle`, `chiral payments received [--json]`.

use std::{io::Write as _, process::ExitCode};

use alloy_primitives::U256;
use anyhow::Result;
use serde_json::json;

use super::{
    args::{Global, PaymentsArgs, PaymentsCommand},
    setup::{payment_ledger, settings},
    shown,
    wallet::passphrase,
};

pub(crate) async fn run(g: &Global, a: PaymentsArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    // Listing never pays; `settle` pays, itself, below.
    let Some(service) = payment_ledger(&s)? else { anyhow::bail!("payments are off") };
    match a.what {
        None => {
            let r = service.report().await?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            for w in &r.payments {
                writeln!(
                    out,
                    "{}\towed {} wei\tpaid {} wei\t{} transaction(s)",
                    w.wallet,
                    w.owed_wei,
                    w.paid_wei,
                    w.transactions.len()
                )?;
                for t in &w.transactions {
                    writeln!(
                        out,
                        "  {}\tnonce {}\t{} wei\t{}",
                        t.hash,
                        t.nonce,
                        t.amount_wei,
                        json!(t.state).as_str().unwrap_or("")
                    )?;
                }
            }
            if r.payments.is_empty() && !g.quiet {
                eprintln!("nothing owed or paid");
            }
        }
        Some(PaymentsCommand::Settle) => {
            let owes = service.ledger_report()?.payments.iter().any(|w| w.owed_wei != "0");
            if owes {
                service.unlock(&passphrase(false)?)?;
            }
            let done = tokio::time::timeout(
                service.config().settle_timeout.max(std::time::Duration::from_secs(10)),
                service.settle(U256::from(1u64), true),
            )
            .await;
            let done = match done {
                Ok(r) => r?,
                Err(_) => anyhow::bail!("the chain did not confirm in time; run `chiral payments settle` again"),
            };
            if !g.quiet {
                eprintln!(
                    "settled: {} transaction(s) sent, {} confirmed, {} pending",
                    done.signed, done.confirmed, done.pending
                );
            }
        }
        Some(PaymentsCommand::Received { json }) => {
            let r = service.received().await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            for l in &r.received {
                writeln!(out, "{}\t{} wei\tserved {} bytes", shown(&l.from), l.received_wei, l.served_bytes)?;
            }
            writeln!(out, "total\t{} wei", r.total_wei)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
