//! # chiral-sdk
//!
//! Everything a Chiral protocol plugin (or a host) needs:
//! - [`abi`]: the stable plugin boundary (descriptor, handler, source, events, root module);
//! - [`plugin`]: the idiomatic [`plugin::Plugin`] trait and [`export_plugin!`], which wrap a plugin
//!   so that every entry point catches panics and every future runs on the plugin's own runtime;
//! - [`verify`]: the piece verifier (SHA-1 pieces, SHA-256 Merkle chunks with proofs);
//! - [`layout`], [`picker`], [`resume`], [`engine`]: the multi-source engine, usable by a host
//!   and by a plugin that runs a whole download itself;
//! - [`http_range`]: `Range` and `Content-Range` headers as pure functions (the HTTP plugin and
//!   the daemon's stream endpoint);
//! - [`dial`]: which addresses from the network may be dialled (no local peers from a public
//!   torrent);
//! - [`bencode`]: the bounded bencode decoder and canonical encoder;
//! - [`ident`]: what an identifier promises (the hash a download of it is checked against);
//! - [`magnet`]: the one magnet-link parser and writer (bounded, `url` + `data-encoding`);
//! - [`options`]: typed plugin options with one error style ([`options::OptionError`]);
//! - [`listen`]: the connection cap of every listener (idle crowds evicted, oldest first);
//! - [`net`]: the one outgoing TCP dialer, direct or through the user's SOCKS5 / HTTP proxy;
//! - [`rate`]: the shared token bucket that holds download and upload rates;
//! - [`select`]: which files of a multi-file content to download (`--files`, BEP 53 `so`);
//! - [`seeds`]: the seed table every seeding plugin keeps, and seed-server helpers;
//! - [`text`]: the sanitiser for text from the network on its way to a terminal;
//! - [`testkit`]: conformance checks a plugin author runs against their plugin.
//!
//! No tokio type appears in the ABI: each plugin owns its runtime ([`runtime::PluginRuntime`]).

pub mod abi;
pub mod bencode;
pub mod dial;
pub mod engine;
pub mod http_range;
pub mod ident;
pub mod layout;
pub mod link;
pub mod listen;
pub mod magnet;
pub mod net;
pub mod options;
pub mod picker;
pub mod plugin;
pub mod rate;
pub mod resume;
pub mod runtime;
pub mod seeds;
pub mod select;
pub mod testkit;
pub mod text;
pub mod verify;

pub use abi::*;
pub use plugin::{BoxFut, Events, PieceSource, Plugin};

/// Re-exported so `export_plugin!` works in crates that depend on `chiral-sdk` alone.
#[doc(hidden)]
pub use abi_stable;
#[doc(hidden)]
pub use async_ffi;

/// The SDK version a plugin or host is built against.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");
/// [`SDK_VERSION`] with a trailing NUL, for the plain C version symbol.
#[doc(hidden)]
pub const SDK_VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The compatibility rule between a host and a plugin's SDK versions (see `docs/abi.md`):
/// same major (same minor while the major is 0), any patch release on either side. Within a
/// series the ABI only grows by appending (methods after a prefix answer their defaults for an
/// older plugin), so a plugin built against 0.1.0 loads in a 0.1.4 host and the other way round;
/// abi_stable's layout check still guards every type. Returns a one-line reason on a mismatch.
pub fn check_compatible(host: &str, plugin: &str) -> Result<(), SdkMismatch> {
    fn parse(v: &str) -> Option<(u64, u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next().unwrap_or(Some(0))?))
    }
    let h = parse(host).ok_or_else(|| SdkMismatch::NotSemver { whose: "host", version: host.into() })?;
    let p = parse(plugin).ok_or_else(|| SdkMismatch::NotSemver { whose: "plugin", version: plugin.into() })?;
    let same_series = if h.0 == 0 { p.0 == 0 && p.1 == h.1 } else { p.0 == h.0 };
    if !same_series {
        let need = if h.0 == 0 { format!("{}.{}.x", h.0, h.1) } else { format!("{}.x", h.0) };
        return Err(SdkMismatch::OtherSeries { plugin: plugin.into(), need });
    }
    Ok(())
}

/// Why a host refuses a plugin's SDK version ([`check_compatible`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdkMismatch {
    #[error("{whose} sdk version {version:?} is not semver")]
    NotSemver { whose: &'static str, version: String },
    #[error("built against sdk {plugin}, this host needs sdk {need}: rebuild it")]
    OtherSeries { plugin: String, need: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rule() {
        assert!(check_compatible("0.1.0", "0.1.0").is_ok());
        assert!(check_compatible("0.1.0", "0.1.3").is_ok());
        assert!(check_compatible("0.1.3", "0.1.0").is_ok());
        assert!(check_compatible("0.1.2", "0.2.0").unwrap_err().to_string().contains("rebuild"));
        assert!(check_compatible("0.1.0", "0.2.0").is_err());
        assert!(check_compatible("1.2.0", "1.3.1").is_ok());
        assert!(check_compatible("1.2.0", "2.0.0").is_err());
        assert!(check_compatible("1.2.0", "1.1.9").is_ok());
        assert!(check_compatible("1.2.0", "garbage").is_err());
    }

    #[test]
    fn root_module_symbol_name_matches_abi_stable() {
        // export_plugin! spells the loader static's name out; it must be abi_stable's.
        assert_eq!(plugin::ROOT_MODULE_LOADER_NAME, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }
}
