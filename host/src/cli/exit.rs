//! Exit codes: what `chiral` tells a script about how a command ended (docs/cli.md, "Exit
//! codes"). Errors are sorted at the binary's edge, from the kinds the host library keeps
//! ([`HostError::kind`], the plugins' [`ErrorKind`]), never from their text.

use std::process::ExitCode;

use chiral_host::{
    config::ConfigError,
    engine::EngineError,
    registry::DispatchError,
    session::{engine_error_kind, io_error_kind, HostError},
};
use chiral_sdk::{ErrorKind, PluginError};
use thiserror::Error;

/// How a command ended, one code each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// What was asked is done: complete and verified (as far as the identifiers allow).
    Ok,
    /// Any other failure: a plugin's own error or panic, nothing matching `stop`/`remove`,
    /// several sources failing for different reasons.
    Failure,
    /// The command line or the config file is wrong (clap's own usage errors use it too).
    Usage,
    /// No installed plugin claims the identifier, is named so, or can do what was asked.
    Unsupported,
    /// The content or file is not there (HTTP 404, a missing path).
    NotFound,
    /// The sources could not be reached or gave up (refused, reset, timed out, every
    /// source failed).
    Network,
    /// Data did not verify: a hash or `--sha256` mismatch, a malformed description.
    Verification,
    /// Local I/O: the disk is full, permissions, a different file already at the final name.
    Io,
    /// Interrupted by SIGINT/SIGTERM: what is on disk resumes with the same command. Only the
    /// user's signal gives it (128 + SIGINT, as shells do); a plugin's own `Cancelled` is a
    /// `Failure`, so that scripts reading 101 and above as "crashed or killed" stay right.
    Interrupted,
}

impl Exit {
    /// Every code, in the order of the table in docs/cli.md.
    pub const ALL: [Exit; 9] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Unsupported,
        Exit::NotFound,
        Exit::Network,
        Exit::Verification,
        Exit::Io,
        Exit::Interrupted,
    ];

    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Unsupported => 3,
            Exit::NotFound => 4,
            Exit::Network => 5,
            Exit::Verification => 6,
            Exit::Io => 7,
            Exit::Interrupted => 130,
        }
    }

    /// The code for a plugin's (or the host's) class of error.
    pub const fn of_kind(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::Unsupported => Exit::Unsupported,
            ErrorKind::NotFound => Exit::NotFound,
            ErrorKind::Network => Exit::Network,
            ErrorKind::Invalid => Exit::Verification,
            ErrorKind::Io => Exit::Io,
            ErrorKind::Cancelled | ErrorKind::Panic | ErrorKind::Other => Exit::Failure,
        }
    }

    /// The code for a failed command: the outermost error in the chain whose kind is known
    /// decides (context lines added on the way up do not hide it); anything else is `Failure`.
    pub fn of_error(e: &anyhow::Error) -> Exit {
        e.chain().find_map(Exit::of_cause).unwrap_or(Exit::Failure)
    }

    fn of_cause(e: &(dyn std::error::Error + 'static)) -> Option<Exit> {
        if e.is::<UsageError>() || e.is::<ConfigError>() {
            return Some(Exit::Usage);
        }
        if let Some(h) = e.downcast_ref::<HostError>() {
            return Some(match h {
                HostError::Request(_) => Exit::Usage,
                other => Exit::of_kind(other.kind()),
            });
        }
        if e.is::<DispatchError>() {
            return Some(Exit::Unsupported);
        }
        if let Some(engine) = e.downcast_ref::<EngineError>() {
            return Some(Exit::of_kind(engine_error_kind(engine)));
        }
        if let Some(p) = e.downcast_ref::<PluginError>() {
            return Some(Exit::of_kind(p.kind));
        }
        e.downcast_ref::<std::io::Error>().map(|io| Exit::of_kind(io_error_kind(io)))
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// A flag's value that clap could not check (`--sha256` that is not 64 hex digits).
#[derive(Debug, Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub &'static str);

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use anyhow::{anyhow, Context as _};

    use super::*;

    fn exit_of(e: impl Into<anyhow::Error>) -> Exit {
        Exit::of_error(&e.into())
    }

    #[test]
    fn codes_are_distinct_and_zero_only_for_success() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes[0], 0);
        assert!(Exit::ALL[1..].iter().all(|e| e.code() != 0));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len(), "two exits share a code");
        // Fixed numbers: scripts test them.
        let table: Vec<(Exit, u8)> = Exit::ALL.iter().map(|e| (*e, e.code())).collect();
        assert_eq!(
            table,
            [
                (Exit::Ok, 0),
                (Exit::Failure, 1),
                (Exit::Usage, 2),
                (Exit::Unsupported, 3),
                (Exit::NotFound, 4),
                (Exit::Network, 5),
                (Exit::Verification, 6),
                (Exit::Io, 7),
                (Exit::Interrupted, 130),
            ]
        );
    }

    #[test]
    fn every_error_kind_has_its_code() {
        let cases = [
            (ErrorKind::Unsupported, 3),
            (ErrorKind::NotFound, 4),
            (ErrorKind::Network, 5),
            (ErrorKind::Invalid, 6),
            (ErrorKind::Io, 7),
            (ErrorKind::Cancelled, 1),
            (ErrorKind::Panic, 1),
            (ErrorKind::Other, 1),
        ];
        for (kind, code) in cases {
            assert_eq!(Exit::of_kind(kind).code(), code, "{kind:?}");
            assert_eq!(exit_of(HostError::plugin(kind, "x")).code(), code, "{kind:?} through HostError");
            assert_eq!(exit_of(PluginError::new(kind, "x")).code(), code, "{kind:?} as a PluginError");
        }
    }

    #[test]
    fn host_errors_keep_their_class() {
        let unclaimed = DispatchError::Unclaimed { what: "gopher://x".into(), installed: "http: (http)".into() };
        assert_eq!(exit_of(HostError::from(unclaimed)), Exit::Unsupported);
        let backend =
            DispatchError::Backend { backend: "nope".into(), what: "magnet:".into(), installed: String::new() };
        assert_eq!(exit_of(backend), Exit::Unsupported);
        assert_eq!(exit_of(HostError::NoPluginNamed { name: "x".into(), installed: None }), Exit::Unsupported);
        assert_eq!(exit_of(HostError::NoPluginCan("no installed plugin can seed")), Exit::Unsupported);
        assert_eq!(exit_of(HostError::Request("--sha256 needs a single-file download")), Exit::Usage);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(exit_of(HostError::Io { path: "a".into(), error: missing }), Exit::NotFound);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(exit_of(HostError::Io { path: "a".into(), error: denied }), Exit::Io);
    }

    #[test]
    fn engine_errors_sort_into_data_disk_and_network() {
        let sha = EngineError::Sha256Mismatch { got: "00".into(), want: "11".into() };
        assert_eq!(exit_of(HostError::from(sha)), Exit::Verification);
        assert_eq!(exit_of(EngineError::Layout("piece 3 is 5 bytes".into())), Exit::Verification);
        assert_eq!(exit_of(EngineError::Io { path: PathBuf::from("a"), message: "full".into() }), Exit::Io);
        assert_eq!(exit_of(EngineError::Exists(PathBuf::from("a"))), Exit::Io);
        assert_eq!(exit_of(EngineError::AllFailed("refused".into())), Exit::Network);
        assert_eq!(exit_of(EngineError::NoSources("none".into())), Exit::Network);
        assert_eq!(exit_of(EngineError::NoTrustRoot("magnet:".into())), Exit::Network);
    }

    #[test]
    fn context_does_not_hide_the_cause() {
        let e = anyhow::Error::from(HostError::plugin(ErrorKind::NotFound, "HTTP 404")).context("while getting");
        assert_eq!(Exit::of_error(&e), Exit::NotFound);
        let io: anyhow::Result<()> = Err(std::io::Error::from(std::io::ErrorKind::NotFound).into());
        assert_eq!(Exit::of_error(&io.context("./missing.iso").unwrap_err()), Exit::NotFound);
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        assert_eq!(exit_of(anyhow::Error::from(full).context("data dir /x")), Exit::Io);
    }

    #[test]
    fn usage_and_everything_else() {
        assert_eq!(exit_of(UsageError("--sha256 must be 64 hex digits")), Exit::Usage);
        let config = ConfigError::Parse { path: "c.toml".into(), message: "unknown field".into() };
        assert_eq!(exit_of(config), Exit::Usage);
        assert_eq!(Exit::of_error(&anyhow!("no running seed matches x")), Exit::Failure);
        assert_eq!(exit_of(serde_json::from_str::<u8>("x").unwrap_err()), Exit::Failure);
    }

    /// docs/cli.md lists every code with the name used here, and no other.
    #[test]
    fn the_documented_table_is_this_one() {
        let doc = include_str!("../../../docs/cli.md");
        let section = doc.split("## Exit codes").nth(1).expect("docs/cli.md has an \"Exit codes\" section");
        let section = section.split("\n## ").next().unwrap_or_default();
        let rows: Vec<u8> =
            section.lines().filter_map(|l| l.strip_prefix("| `")?.split('`').next()?.parse().ok()).collect();
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(rows, codes, "the rows of docs/cli.md's exit code table");
    }
}
