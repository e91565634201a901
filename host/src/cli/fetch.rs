//! A download with the progress bar, as `get` and `demo` run it, and the summary line after it.

use std::sync::Arc;

use anyhow::Result;
use chiral_host::{
    session::{GetReport, GetRequest},
    Host,
};
use indicatif::HumanBytes;

use super::{exit::UsageError, progress::ProgressUi, shutdown_signal};

/// `--sha256 HEX` as bytes.
pub(super) fn parse_sha256(hex_str: &str) -> Result<[u8; 32], UsageError> {
    let bytes = hex::decode(hex_str.trim()).map_err(|_| UsageError("--sha256 must be 64 hex digits"))?;
    bytes.try_into().map_err(|_| UsageError("--sha256 must be 64 hex digits"))
}

/// Runs the download with progress on stderr (none when `quiet`); `None` when SIGINT/SIGTERM
/// came first.
pub(super) async fn download(host: &Host, req: GetRequest, quiet: bool) -> Result<Option<GetReport>> {
    let ui = Arc::new(ProgressUi::new(quiet));
    let cb = ui.clone();
    let result = tokio::select! {
        r = host.get(&req, Arc::new(move |e| cb.on_event(e))) => Some(r),
        _ = shutdown_signal() => None,
    };
    ui.finish();
    match result {
        None => Ok(None),
        Some(r) => Ok(Some(r?)),
    }
}

/// `done: NAME (SIZE) in S s, RATE/s[, N resumed][; from ...]; <how it was verified>`.
pub(super) fn summary_line(r: &GetReport) -> String {
    let fresh = r.bytes.saturating_sub(r.resumed_bytes);
    let rate = if r.seconds > 0.0 { fresh as f64 / r.seconds } else { 0.0 };
    let from: Vec<String> =
        r.sources.iter().filter(|s| s.bytes > 0).map(|s| format!("{} {}", s.label, HumanBytes(s.bytes))).collect();
    let mut line =
        format!("done: {} ({}) in {:.2} s, {}/s", r.name, HumanBytes(r.bytes), r.seconds, HumanBytes(rate as u64));
    if r.resumed_bytes > 0 {
        line.push_str(&format!(", {} resumed", HumanBytes(r.resumed_bytes)));
    }
    if !from.is_empty() {
        line.push_str(&format!("; from {}", from.join(", ")));
    }
    if r.sha256.is_some() {
        line.push_str("; sha256 ok");
    } else if r.verified {
        line.push_str("; every piece verified");
    } else {
        line.push_str("; unverified (no hashes and no --sha256)");
    }
    chiral_sdk::text::line(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_flag_is_64_hex_digits() {
        let ok = parse_sha256(&format!(" {} ", "ab".repeat(32))).unwrap();
        assert_eq!(ok, [0xab; 32]);
        for bad in ["", "abc", &"ab".repeat(31), &"zz".repeat(32), &"ab".repeat(33)] {
            assert_eq!(parse_sha256(bad).unwrap_err().to_string(), "--sha256 must be 64 hex digits", "{bad:?}");
        }
    }

    #[test]
    fn summary_says_how_it_was_checked() {
        let report = |sha256: Option<&str>, verified| GetReport {
            name: "a.bin".into(),
            files: vec!["a.bin".into()],
            bytes: 2 << 20,
            resumed_bytes: 1 << 20,
            seconds: 1.0,
            mode: "engine",
            sources: Vec::new(),
            sha256: sha256.map(str::to_string),
            verified,
        };
        assert_eq!(
            summary_line(&report(None, false)),
            "done: a.bin (2.00 MiB) in 1.00 s, 1.00 MiB/s, 1.00 MiB resumed; unverified (no hashes and no --sha256)"
        );
        assert!(summary_line(&report(None, true)).ends_with("; every piece verified"));
        assert!(summary_line(&report(Some("00"), true)).ends_with("; sha256 ok"));
    }
}
