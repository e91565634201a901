#![allow(non_local_definitions)] // emitted by abi_stable's sabi_trait macro
//! The plugin boundary: FFI-safe types, the `#[sabi_trait]` objects a plugin hands to the host,
//! and the root module every plugin library exports.
//!
//! Everything here is laid out by `abi_stable`, which checks the layout when a plugin is loaded.
//! Changing a field or a method signature is a breaking change (see `docs/abi.md`); new methods
//! are appended after the last prefix field so older hosts keep working.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RString, RVec, Tuple2},
    StableAbi,
};
use async_ffi::FfiFuture;

/// Key/value settings the ABI does not name (plugin options from the config file, future
/// settings): appending here never changes a layout.
pub type Options = RVec<Tuple2<RString, RString>>;

/// What a plugin can do, as bit flags.
pub mod capability {
    /// `download(identifier)` runs a whole download.
    pub const DOWNLOAD: u32 = 1;
    /// `seed(path)` serves content and returns identifiers.
    pub const SEED: u32 = 1 << 1;
    /// `open_source(identifier)` gives piece/byte-range access for the multi-source engine.
    pub const SOURCE: u32 = 1 << 2;
    /// seeds can be listed and stopped.
    pub const SEED_MANAGE: u32 = 1 << 3;
    /// For identifiers another plugin wins (same scheme or suffix), also open a source: an
    /// extra place to get the same content from (the Chiral network finding seeders of a
    /// magnet's info hash). Failures of extra sources are not errors.
    pub const EXTRA_SOURCE: u32 = 1 << 4;
    /// Its sources are peers its network proves and ranks by reputation (the Chiral network):
    /// the engine prefers them to plain sources. A flag, not a name, so any plugin with such a
    /// network can say it.
    pub const REPUTED_PEERS: u32 = 1 << 5;
    /// One source's requests share its peers' connections (a swarm, a multiplexed network)
    /// rather than each taking a connection of its own: the engine sizes how many it keeps
    /// outstanding by the source's measured bandwidth x delay, not by `--connections`.
    pub const PIPELINED: u32 = 1 << 6;
}

/// Who a plugin is and what it claims. Returned before any handler exists.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginDescriptor {
    /// Short unique name, also the `--via` / `--backend` name (`http`, `bittorrent`).
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// The SDK version it was built against.
    pub sdk_version: RString,
    /// URI schemes it claims, lowercase, without `:` (`http`, `https`, `magnet`).
    pub schemes: RVec<RString>,
    /// File-name suffixes it claims whatever the scheme (`.torrent`).
    pub suffixes: RVec<RString>,
    /// `capability::*` bits.
    pub capabilities: u32,
    /// Higher wins when two plugins claim the same scheme and the user did not choose.
    pub priority: i32,
    /// One line for `chiral plugins`.
    pub description: RString,
}

/// Host settings a handler is built from.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct HostConfig {
    /// Directory for state (resume files, seeds, identity).
    pub data_dir: RString,
    /// Address servers bind to (`0.0.0.0`, `127.0.0.1`).
    pub listen_addr: RString,
    /// Port servers bind to; 0 picks a free one.
    pub listen_port: u16,
    /// Host name or address put in identifiers this node prints (URLs).
    pub advertise_host: RString,
    /// Parallel connections per source.
    pub connections: u32,
    /// Proxy URL for outgoing connections, if any.
    pub proxy: ROption<RString>,
    /// Chiral network peers to join.
    pub bootstrap: RVec<RString>,
    /// Turn off DHTs.
    pub no_dht: bool,
    /// Settings from the config file's `[plugins.<name>]` table and future settings.
    pub options: Options,
}

/// Broad error classes so callers can react without parsing text.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The identifier is not one this plugin handles.
    Unsupported,
    /// The content does not exist there (HTTP 404, missing file).
    NotFound,
    /// Connection refused, reset, timed out.
    Network,
    /// Local I/O (disk full, permissions).
    Io,
    /// Input that breaks the rules (malformed data, lying peer, bad hash).
    Invalid,
    /// The call was cancelled.
    Cancelled,
    /// The plugin panicked; the call was turned into this error.
    Panic,
    /// Anything else.
    Other,
}

/// The error value every fallible ABI call returns (never a panic across the boundary).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginError {
    pub kind: ErrorKind,
    /// One line, safe to show to users (no passwords).
    pub message: RString,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut m: String = message.into();
        // Errors are shown as one line.
        if m.contains('\n') {
            m = m.replace('\n', " ");
        }
        Self { kind, message: m.into() }
    }
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn network(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Network, m)
    }
    pub fn io(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, m)
    }
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "cancelled")
    }
    pub fn other(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, m)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

impl From<std::io::Error> for PluginError {
    fn from(e: std::io::Error) -> Self {
        PluginError::io(e.to_string())
    }
}

/// How pieces of a content are checked.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    /// No per-piece hashes (plain byte ranges); only a whole-file `--sha256` can check it.
    None,
    /// BitTorrent v1: 20-byte SHA-1 per piece.
    Sha1Pieces,
    /// Chiral: SHA-256 Merkle tree over fixed chunks; `root` holds the 32-byte root and
    /// `piece_hashes` the 32-byte leaf hashes.
    Sha256Merkle,
}

/// One file inside a content (multi-file torrents); offsets are into the content's bytes.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative path with `/` separators, already sanitised by the plugin.
    pub path: RString,
    pub offset: u64,
    pub length: u64,
}

/// What a source knows of its content.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct ContentInfo {
    /// Suggested file (or top folder) name.
    pub name: RString,
    /// Total length in bytes; meaningful only when `length_known`.
    pub length: u64,
    pub length_known: bool,
    /// The source can serve any byte range (`fetch` at any offset).
    pub random_access: bool,
    /// Piece length when the protocol defines pieces, else 0 (the engine chooses).
    pub piece_length: u64,
    pub hash_kind: HashKind,
    /// Concatenated per-piece hashes (20 bytes each for SHA-1, 32 for Merkle leaves).
    pub piece_hashes: RVec<u8>,
    /// Merkle root for `Sha256Merkle`, empty otherwise.
    pub root: RVec<u8>,
    /// Files inside the content; empty means one file named `name`.
    pub files: RVec<FileEntry>,
    /// Label for accounting and progress (`http://127.0.0.1:8080`, a peer id).
    pub label: RString,
}

/// One remote peer behind a source, for per-peer totals in reports.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerStat {
    /// The protocol's id for the peer (libp2p peer id, BitTorrent client name), or its address.
    pub id: RString,
    /// Where it was reached (`127.0.0.1:6881`, a multiaddr).
    pub address: RString,
    /// Verified content bytes received from it.
    pub downloaded: u64,
    /// Bytes sent to it.
    pub uploaded: u64,
    /// Its Chiral peer id when it proved to be a Chiral client (BEP 10 `chiral` exchange, a
    /// Chiral node), empty otherwise.
    pub chiral_peer_id: RString,
    /// Reputation when the protocol keeps one, per mille (0..=1000), else `ROption::RNone`.
    pub reputation: ROption<i64>,
    /// Dropped or banned for bad data or repeated failures.
    pub banned: bool,
}

/// Whole-download request (the seed contract's `download(identifier)`).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct DownloadRequest {
    pub identifier: RString,
    /// Folder the result goes in.
    pub out_dir: RString,
    /// Parallel connections wanted; 0 = plugin default.
    pub connections: u32,
    pub options: Options,
}

/// Bytes one source delivered.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct SourceBytes {
    pub label: RString,
    pub bytes: u64,
}

/// What a finished download produced.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct DownloadOutcome {
    /// Paths of the files written.
    pub files: RVec<RString>,
    /// Total content bytes.
    pub bytes: u64,
    /// Bytes already on disk before this run (resume).
    pub resumed_bytes: u64,
    pub per_source: RVec<SourceBytes>,
}

/// Seed request: serve `path`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct SeedRequest {
    pub path: RString,
    /// Plugin options (`tracker=URL`, repeated keys allowed).
    pub options: Options,
}

/// A running seed.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct SeedInfo {
    /// Handle used by `stop_seed`.
    pub id: RString,
    pub path: RString,
    /// Identifiers others can download it by (URL, magnet, `chiral:`).
    pub identifiers: RVec<RString>,
    pub bytes_served: u64,
}

/// Log levels carried by `Event::Log`.
pub mod level {
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;
}

/// Events a plugin reports while it works.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug)]
pub enum Event {
    Log {
        level: u8,
        message: RString,
    },
    /// Progress of a whole download run by the plugin.
    Progress {
        done: u64,
        total: u64,
        peers: u32,
    },
    /// A peer's transferred bytes crossed the payment threshold.
    PaymentRequired {
        peer: RString,
        wallet: ROption<RString>,
        bytes: u64,
    },
}

/// Host-implemented receiver of events. Implementations must not block.
#[sabi_trait]
pub trait EventSink: Send + Sync {
    #[sabi(last_prefix_field)]
    fn emit(&self, event: Event);
}

/// A boxed event sink as it crosses the boundary.
pub type EventSinkBox = EventSink_TO<'static, RBox<()>>;

/// Piece / byte-range access to one content at one place (a mirror, a swarm, a peer set).
#[sabi_trait]
pub trait Source: Send + Sync {
    /// The content as this source knows it.
    fn info(&self) -> ContentInfo;

    /// Per-piece availability (how many peers have each piece, for rarest-first) for a layout of
    /// `piece_length` bytes. Empty means every piece is available (byte-range sources).
    fn availability(&self, piece_length: u64) -> RVec<u32>;

    /// Bytes `[offset, offset + length)`; exactly `length` bytes or an error.
    #[sabi(last_prefix_field)]
    fn fetch(&self, offset: u64, length: u64) -> FfiFuture<RResult<RVec<u8>, PluginError>>;

    /// The remote peers behind this source and what each has sent and received (a swarm's
    /// peers, a Chiral download's providers). Added in sdk 0.1.1: a source from an older plugin
    /// has no such entry and the default (none) answers.
    fn peers(&self) -> RVec<PeerStat> {
        RVec::new()
    }

    /// True when every piece `fetch` returns was already checked by the source against the
    /// hashes its `info` lists (a Chiral source checks each chunk's leaf and Merkle proof itself,
    /// to know which provider sent bad data). The engine then does not hash such a piece again
    /// when the download's layout has the same root and piece length. Added in sdk 0.1.2; the
    /// default (no) keeps the engine checking everything.
    fn checks_pieces(&self) -> bool {
        false
    }

    /// The engine tells the source how many other live sources feed the same download (0: it
    /// is the only one), and again whenever that changes. A source that reads ahead — fetches
    /// pieces it was not asked for, expecting to be asked next, as a swarm does to keep its
    /// peers busy — should do so only while it is alone: beside other sources the engine gives
    /// those pieces to whichever source is free, and what was read ahead is sent twice. Added
    /// in sdk 0.1.3; a source from an older plugin ignores it.
    fn set_other_sources(&self, count: u32) {
        let _ = count;
    }
}

/// A boxed source as it crosses the boundary.
pub type SourceBox = Source_TO<'static, RBox<()>>;

/// What a plugin's handler does. Every method returns errors as values; futures are cancelled
/// by dropping them.
#[sabi_trait]
pub trait ProtocolHandler: Send + Sync {
    fn descriptor(&self) -> PluginDescriptor;

    /// Run a whole download of `identifier` into `out_dir`.
    fn download(
        &self,
        request: DownloadRequest,
        events: EventSinkBox,
    ) -> FfiFuture<RResult<DownloadOutcome, PluginError>>;

    /// Serve `path`; resolves once serving has started, with the identifiers to share.
    fn seed(&self, request: SeedRequest, events: EventSinkBox) -> FfiFuture<RResult<SeedInfo, PluginError>>;

    fn list_seeds(&self) -> RVec<SeedInfo>;

    fn stop_seed(&self, id: RString) -> RResult<(), PluginError>;

    /// Open piece access for the engine (capability `SOURCE`).
    fn open_source(&self, identifier: RString, events: EventSinkBox) -> FfiFuture<RResult<SourceBox, PluginError>>;

    /// A plugin-specific command (`create` for BitTorrent: make a .torrent), with its
    /// arguments as options; returns one JSON document. Unknown commands are `Unsupported`.
    #[sabi(last_prefix_field)]
    fn command(&self, name: RString, args: Options, events: EventSinkBox) -> FfiFuture<RResult<RString, PluginError>>;
}

/// A boxed handler as it crosses the boundary.
pub type HandlerBox = ProtocolHandler_TO<'static, RBox<()>>;

/// The root module every plugin library exports (see `export_plugin!`).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Who the plugin is; callable before any handler exists.
    pub descriptor: extern "C" fn() -> RResult<PluginDescriptor, PluginError>,
    /// Build a handler from the host's configuration; `events` receives its log lines.
    #[sabi(last_prefix_field)]
    pub new_handler: extern "C" fn(HostConfig, EventSinkBox) -> RResult<HandlerBox, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "chiral_plugin";
    const NAME: &'static str = "chiral_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Name of the plain C symbol every plugin exports with its SDK version (a NUL-terminated
/// string), read before the layout check so a mismatch is reported in one line.
pub const SDK_VERSION_SYMBOL: &[u8] = b"chiral_plugin_sdk_version\0";
