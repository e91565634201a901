//! `chiral wallet new|import|address|balance`: the node's key, in an encrypted keystore.

use std::{io::Write as _, process::ExitCode};

use anyhow::{bail, Context as _, Result};
use chiral_host::payments::{wallet::Keystore, wallet_text, PaymentService};
use serde_json::json;

use super::{
    args::{Global, WalletArgs, WalletCommand},
    setup::{payments_config, settings},
};

pub(crate) async fn run(g: &Global, a: WalletArgs) -> Result<ExitCode> {
    let s = settings(g)?;
    let cfg = payments_config(&s)?;
    let ks = Keystore::new(&cfg.keystore);
    match a.what {
        WalletCommand::New => {
            if ks.exists() {
                bail!("a wallet is already at {}; it is never replaced", ks.path().display());
            }
            let address = ks.create(&passphrase(true)?)?;
            println!("{}", wallet_text(&address));
            if !g.quiet {
                eprintln!("wallet made: {} (keep the passphrase: it cannot be recovered)", ks.path().display());
            }
        }
        WalletCommand::Import { private_key_file } => {
            if ks.exists() {
                bail!("a wallet is already at {}; it is never replaced", ks.path().display());
            }
            let meta =
                std::fs::metadata(&private_key_file).with_context(|| format!("{}", private_key_file.display()))?;
            if meta.len() > 4096 {
                bail!("{}: too large for a private key file", private_key_file.display());
            }
            let text = std::fs::read_to_string(&private_key_file)
                .with_context(|| format!("{}", private_key_file.display()))?;
            let address = ks.import(&text, &passphrase(true)?)?;
            println!("{}", wallet_text(&address));
        }
        WalletCommand::Address { json } => {
            let address = wallet_text(&ks.address()?);
            if json {
                println!("{}", json!({ "address": address }));
            } else {
                println!("{address}");
            }
        }
        WalletCommand::Balance { json } => {
            let service = PaymentService::open(cfg)?;
            let (address, balance) = service.balance().await?;
            if json {
                println!("{}", json!({ "address": wallet_text(&address), "balance_wei": balance.to_string() }));
            } else {
                println!("{}\t{balance} wei", wallet_text(&address));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The keystore's passphrase: `CHIRAL_WALLET_PASSPHRASE`, else asked on the terminal (twice
/// when `confirm`) with echo off.
pub(super) fn passphrase(confirm: bool) -> Result<String> {
    if let Some(p) = std::env::var("CHIRAL_WALLET_PASSPHRASE").ok().filter(|p| !p.is_empty()) {
        return Ok(p);
    }
    let Some(first) = prompt("wallet passphrase: ")? else {
        bail!("no passphrase: set CHIRAL_WALLET_PASSPHRASE or run on a terminal");
    };
    if confirm && prompt("again: ")?.as_deref() != Some(first.as_str()) {
        bail!("the two passphrases differ");
    }
    if first.is_empty() {
        bail!("the passphrase must not be empty");
    }
    Ok(first)
}

/// One line read from the controlling terminal with echo off; `None` without a terminal.
fn prompt(label: &str) -> Result<Option<String>> {
    use std::{io::BufRead as _, os::fd::AsRawFd as _};
    let Ok(tty) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty") else { return Ok(None) };
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data filled by tcgetattr on an open descriptor; the old
    // settings are put back before the descriptor is closed.
    let old = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Ok(None);
        }
        let mut quiet = t;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        libc::tcsetattr(fd, libc::TCSANOW, &quiet);
        t
    };
    let mut out = &tty;
    let _ = out.write_all(label.as_bytes());
    let _ = out.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: as above, same descriptor, the settings read before.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, &old);
    }
    read?;
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
}
