//! The idiomatic side of the boundary: plugin authors implement [`Plugin`] (and
//! [`PieceSource`] for engine access) with ordinary Rust futures, and [`export_plugin!`] turns it
//! into the ABI objects of [`crate::abi`].
//!
//! The adapters here are why a plugin cannot take the host down:
//! - every entry point runs under `catch_unwind`; a panic becomes `ErrorKind::Panic`;
//! - every future is spawned on the plugin's own runtime; the host only awaits a channel, and
//!   dropping that future aborts the plugin's task.

use std::{
    any::Any,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, ROption, RResult, RString, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use futures::{
    channel::oneshot,
    future::{AbortHandle, Abortable},
    FutureExt as _,
};

use crate::abi::*;

/// A boxed, sendable future resolving to a plugin result.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, PluginError>> + Send + 'static>>;

/// The exported name of abi_stable's library header static (checked against abi_stable's own
/// constant by a unit test), spelled out so `export_plugin!` needs no abi_stable proc macro.
pub const ROOT_MODULE_LOADER_NAME: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Piece / byte-range access to one content, Rust side.
pub trait PieceSource: Send + Sync + 'static {
    fn info(&self) -> ContentInfo;
    /// Per-piece availability for pieces of `piece_length`; empty = all available.
    fn availability(&self, _piece_length: u64) -> Vec<u32> {
        Vec::new()
    }
    /// Exactly `length` bytes at `offset`, as a plain `Vec` (the SDK converts it for the ABI).
    ///
    /// A range that does not lie inside the content (`offset + length` past `info().length`,
    /// or overflowing) is an [`ErrorKind::Invalid`] error, never a panic or a short answer. A
    /// zero-length range inside the content is `Ok(vec![])`. The engine asks for one piece at a
    /// time: `info().piece_length` when the source sets it, else pieces it chooses of 256 KiB to
    /// 4 MiB; nothing larger than [`crate::layout::MAX_PIECE_LENGTH`] (512 MiB) is ever asked.
    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>>;
    /// Per-peer totals for reports (a swarm's peers, a network's providers); none by default.
    fn peers(&self) -> Vec<PeerStat> {
        Vec::new()
    }
    /// Pieces from `fetch` are already checked against the hashes in `info` (see
    /// [`crate::abi::Source::checks_pieces`]); say so only when it is true for every piece.
    fn checks_pieces(&self) -> bool {
        false
    }
    /// How many other live sources feed the same download (see
    /// [`crate::abi::Source::set_other_sources`]): read ahead only while it is 0.
    fn set_other_sources(&self, _count: u32) {}
}

/// A protocol plugin. Only `descriptor`, `new` and `runtime` are required; the rest answer
/// "unsupported" until implemented.
pub trait Plugin: Send + Sync + Sized + 'static {
    fn descriptor() -> PluginDescriptor;
    fn new(config: HostConfig, events: Events) -> Result<Self, PluginError>;
    /// The runtime every call of this plugin is spawned on.
    fn runtime(&self) -> tokio::runtime::Handle;

    fn download(self: Arc<Self>, request: DownloadRequest, _events: Events) -> BoxFut<DownloadOutcome> {
        let name = Self::descriptor().name;
        Box::pin(async move {
            Err(PluginError::unsupported(format!("plugin {name} cannot download {}", request.identifier)))
        })
    }
    fn seed(self: Arc<Self>, _request: SeedRequest, _events: Events) -> BoxFut<SeedInfo> {
        let name = Self::descriptor().name;
        Box::pin(async move { Err(PluginError::unsupported(format!("plugin {name} cannot seed"))) })
    }
    fn list_seeds(&self) -> Vec<SeedInfo> {
        Vec::new()
    }
    fn stop_seed(&self, id: &str) -> Result<(), PluginError> {
        Err(PluginError::not_found(format!("no seed {id}")))
    }
    fn open_source(self: Arc<Self>, identifier: String, _events: Events) -> BoxFut<Arc<dyn PieceSource>> {
        let name = Self::descriptor().name;
        Box::pin(async move {
            Err(PluginError::unsupported(format!("plugin {name} gives no piece access to {identifier}")))
        })
    }
    /// A plugin-specific command; `args` are key/value pairs (keys may repeat). Returns JSON.
    fn command(self: Arc<Self>, name: String, _args: Vec<(String, String)>, _events: Events) -> BoxFut<String> {
        let plugin = Self::descriptor().name;
        Box::pin(async move { Err(PluginError::unsupported(format!("plugin {plugin} has no command {name:?}"))) })
    }
}

impl PluginDescriptor {
    /// A descriptor with this SDK's version filled in.
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            sdk_version: crate::SDK_VERSION.into(),
            schemes: RVec::new(),
            suffixes: RVec::new(),
            capabilities: 0,
            priority: 0,
            description: RString::new(),
        }
    }
    pub fn schemes(mut self, schemes: &[&str]) -> Self {
        self.schemes = schemes.iter().map(|s| RString::from(s.to_ascii_lowercase())).collect();
        self
    }
    pub fn suffixes(mut self, suffixes: &[&str]) -> Self {
        self.suffixes = suffixes.iter().map(|s| RString::from(s.to_ascii_lowercase())).collect();
        self
    }
    pub fn capabilities(mut self, bits: u32) -> Self {
        self.capabilities = bits;
        self
    }
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    pub fn description(mut self, text: &str) -> Self {
        self.description = text.into();
        self
    }
}

impl ContentInfo {
    /// A content of `length` bytes named `name`: length known, any byte range servable, no
    /// pieces of its own (the engine chooses), no hashes, one file, labelled by its name.
    /// Refine it with the builder methods below.
    pub fn new(name: impl Into<String>, length: u64) -> Self {
        let name: String = name.into();
        Self {
            label: name.as_str().into(),
            name: name.into(),
            length,
            length_known: true,
            random_access: true,
            piece_length: 0,
            hash_kind: HashKind::None,
            piece_hashes: RVec::new(),
            root: RVec::new(),
            files: RVec::new(),
        }
    }
    /// The length is not known before the end (a stream): the host cannot run the multi-source
    /// engine on such a source and asks the plugin's `download` instead.
    pub fn unknown_length(mut self) -> Self {
        self.length_known = false;
        self.length = 0;
        self
    }
    /// `fetch` only works front to back (no random access): the host asks the plugin's
    /// `download` instead of fetching pieces.
    pub fn sequential(mut self) -> Self {
        self.random_access = false;
        self
    }
    /// The protocol's own piece length (the engine then asks for exactly these pieces).
    pub fn piece_length(mut self, piece_length: u64) -> Self {
        self.piece_length = piece_length;
        self
    }
    /// BitTorrent-style pieces: `piece_length` bytes each, `hashes` the concatenated 20-byte
    /// SHA-1 of every piece in order. The host checks every piece against them.
    pub fn sha1_pieces(mut self, piece_length: u64, hashes: impl Into<Vec<u8>>) -> Self {
        self.piece_length = piece_length;
        self.hash_kind = HashKind::Sha1Pieces;
        self.piece_hashes = hashes.into().into();
        self.root = RVec::new();
        self
    }
    /// Chiral-style SHA-256 Merkle tree over `chunk_length`-byte chunks: `leaves` the
    /// concatenated 32-byte leaf hashes, `root` the 32-byte root.
    pub fn sha256_merkle(mut self, chunk_length: u64, leaves: impl Into<Vec<u8>>, root: [u8; 32]) -> Self {
        self.piece_length = chunk_length;
        self.hash_kind = HashKind::Sha256Merkle;
        self.piece_hashes = leaves.into().into();
        self.root = root.to_vec().into();
        self
    }
    /// One more file inside the content (multi-file contents); `path` is relative, with `/`.
    pub fn file(mut self, path: impl Into<String>, offset: u64, length: u64) -> Self {
        self.files.push(FileEntry::new(path, offset, length));
        self
    }
    /// What progress and reports call this source (`http://mirror:8080`, a peer id).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into().into();
        self
    }
    /// No hashes of its own (a mirror of content whose hashes come from elsewhere); the piece
    /// length stays.
    pub fn without_hashes(mut self) -> Self {
        self.hash_kind = HashKind::None;
        self.piece_hashes = RVec::new();
        self.root = RVec::new();
        self
    }
}

impl PeerStat {
    /// A peer known by `id` (the protocol's id for it, or its address), nothing transferred yet.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into().into(), ..Self::default() }
    }
    /// Where it was reached (`127.0.0.1:6881`, a multiaddr).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into().into();
        self
    }
    /// Verified content bytes received from it, and bytes sent to it.
    pub fn bytes(mut self, downloaded: u64, uploaded: u64) -> Self {
        self.downloaded = downloaded;
        self.uploaded = uploaded;
        self
    }
    /// It proved to be the Chiral client with this peer id.
    pub fn chiral_peer(mut self, peer_id: impl Into<String>) -> Self {
        self.chiral_peer_id = peer_id.into().into();
        self
    }
    /// Its reputation, per mille (clamped to 0..=1000).
    pub fn reputation(mut self, per_mille: i64) -> Self {
        self.reputation = ROption::RSome(per_mille.clamp(0, 1000));
        self
    }
    /// Dropped or banned for bad data or repeated failures.
    pub fn banned(mut self, banned: bool) -> Self {
        self.banned = banned;
        self
    }
}

impl HostConfig {
    /// The proxy URL outgoing connections must use, if the user set one.
    pub fn proxy_url(&self) -> Option<&str> {
        self.proxy.as_ref().map(|p| p.as_str()).into_option()
    }
}

impl FileEntry {
    pub fn new(path: impl Into<String>, offset: u64, length: u64) -> Self {
        Self { path: path.into().into(), offset, length }
    }
}

impl DownloadRequest {
    /// A request for `identifier` into `out_dir`, plugin defaults for the rest.
    pub fn new(identifier: impl Into<String>, out_dir: impl Into<String>) -> Self {
        Self {
            identifier: identifier.into().into(),
            out_dir: out_dir.into().into(),
            connections: 0,
            options: RVec::new(),
        }
    }
    /// The request's options as plain pairs (keys may repeat).
    pub fn option_pairs(&self) -> Vec<(String, String)> {
        pairs(&self.options)
    }
}

impl DownloadOutcome {
    /// A finished download that wrote `files` (paths) holding `bytes` content bytes.
    pub fn new<S: Into<String>>(files: impl IntoIterator<Item = S>, bytes: u64) -> Self {
        Self {
            files: files.into_iter().map(|f| RString::from(f.into())).collect(),
            bytes,
            resumed_bytes: 0,
            per_source: RVec::new(),
        }
    }
    /// Bytes that were already on disk before this run.
    pub fn resumed(mut self, bytes: u64) -> Self {
        self.resumed_bytes = bytes;
        self
    }
    /// Bytes one source (by its label) delivered.
    pub fn source(mut self, label: impl Into<String>, bytes: u64) -> Self {
        self.per_source.push(SourceBytes { label: label.into().into(), bytes });
        self
    }
}

impl SeedRequest {
    pub fn new(path: impl Into<String>) -> Self {
        Self { path: path.into().into(), options: RVec::new() }
    }
    /// The request's options as plain pairs (keys may repeat).
    pub fn option_pairs(&self) -> Vec<(String, String)> {
        pairs(&self.options)
    }
}

impl SeedInfo {
    /// A running seed: `id` for `stop_seed`, the `path` served, the identifiers to share.
    pub fn new<S: Into<String>>(
        id: impl Into<String>,
        path: impl Into<String>,
        identifiers: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            id: id.into().into(),
            path: path.into().into(),
            identifiers: identifiers.into_iter().map(|i| RString::from(i.into())).collect(),
            bytes_served: 0,
        }
    }
}

fn pairs(options: &Options) -> Vec<(String, String)> {
    options.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect()
}

/// Where a plugin sends events; cheap to clone, a no-op when the host gave no sink.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<EventSinkBox>>);

impl Events {
    pub fn none() -> Self {
        Self(None)
    }
    pub fn from_box(sink: EventSinkBox) -> Self {
        Self(Some(Arc::new(sink)))
    }
    /// Host side: an event sink calling `f` (which must not block).
    pub fn sink_from_fn(f: impl Fn(Event) + Send + Sync + 'static) -> EventSinkBox {
        EventSink_TO::from_value(FnSink(Box::new(f)), TD_Opaque)
    }
    pub fn emit(&self, event: Event) {
        if let Some(s) = &self.0 {
            s.emit(event);
        }
    }
    pub fn log(&self, level: u8, message: impl Into<String>) {
        self.emit(Event::Log { level, message: RString::from(message.into()) });
    }
    pub fn info(&self, message: impl Into<String>) {
        self.log(level::INFO, message)
    }
    pub fn warn(&self, message: impl Into<String>) {
        self.log(level::WARN, message)
    }
    pub fn debug(&self, message: impl Into<String>) {
        self.log(level::DEBUG, message)
    }
    pub fn progress(&self, done: u64, total: u64, peers: u32) {
        self.emit(Event::Progress { done, total, peers });
    }
    /// `peer` (by its protocol id) crossed the payment threshold with `bytes`; `wallet` is its
    /// announced address when it has one.
    pub fn payment_required(&self, peer: impl Into<String>, wallet: Option<String>, bytes: u64) {
        self.emit(Event::PaymentRequired { peer: peer.into().into(), wallet: wallet.map(RString::from).into(), bytes });
    }
}

struct FnSink(Box<dyn Fn(Event) + Send + Sync>);

impl EventSink for FnSink {
    fn emit(&self, event: Event) {
        // A sink that panics must not unwind into the plugin's FFI frame.
        let _ = catch_unwind(AssertUnwindSafe(|| (self.0)(event)));
    }
}

/// The one-line text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

std::thread_local! {
    /// Where the last panic on this thread happened (set by the plugin's panic hook).
    static LAST_PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Replaces the default panic output of the plugin's own std (a cdylib has its own copy, so
/// the host's hook is untouched) with nothing: the panic reaches the caller as one error line
/// carrying the location. `CHIRAL_PLUGIN_PANIC_TRACE=1` restores the default output.
#[doc(hidden)]
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            LAST_PANIC_AT.with(|c| *c.borrow_mut() = at);
            if std::env::var_os("CHIRAL_PLUGIN_PANIC_TRACE").is_some() {
                default(info);
            }
        }));
    });
}

fn panic_error(payload: Box<dyn Any + Send>) -> PluginError {
    let at = LAST_PANIC_AT.with(|c| c.borrow_mut().take()).map(|a| format!(" at {a}")).unwrap_or_default();
    PluginError::new(ErrorKind::Panic, format!("plugin panicked{at}: {}", panic_message(&*payload)))
}

/// Runs `f`, turning a panic into an error value.
pub fn guard<T>(f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e),
        Err(p) => RErr(panic_error(p)),
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns the future `make` builds on the plugin's runtime and returns an FFI future that only
/// waits for its result; dropping the FFI future aborts the task.
pub fn bridge<T, F>(rt: &tokio::runtime::Handle, make: F) -> FfiFuture<RResult<T, PluginError>>
where
    T: Send + 'static,
    F: FnOnce() -> BoxFut<T> + Send + 'static,
{
    let (tx, rx) = oneshot::channel::<Result<T, PluginError>>();
    let (abort, registration) = AbortHandle::new_pair();
    let task = async move {
        let fut = match catch_unwind(AssertUnwindSafe(make)) {
            Ok(f) => f,
            Err(p) => {
                let _ = tx.send(Err(panic_error(p)));
                return;
            }
        };
        match Abortable::new(AssertUnwindSafe(fut).catch_unwind(), registration).await {
            Ok(Ok(result)) => {
                let _ = tx.send(result);
            }
            Ok(Err(p)) => {
                let _ = tx.send(Err(panic_error(p)));
            }
            Err(_aborted) => {}
        }
    };
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| drop(rt.spawn(task)))) {
        let e = panic_error(p);
        return async move { RErr(e) }.into_ffi();
    }
    let guard = AbortOnDrop(abort);
    async move {
        let _guard = guard;
        match rx.await {
            Ok(Ok(v)) => ROk(v),
            Ok(Err(e)) => RErr(e),
            Err(_) => RErr(PluginError::other("the plugin's task ended without a result")),
        }
    }
    .into_ffi()
}

struct Handler<P: Plugin> {
    inner: Arc<P>,
}

impl<P: Plugin> ProtocolHandler for Handler<P> {
    fn descriptor(&self) -> PluginDescriptor {
        catch_unwind(P::descriptor).unwrap_or_else(|_| PluginDescriptor::new("invalid", "0.0.0"))
    }

    fn download(
        &self,
        request: DownloadRequest,
        events: EventSinkBox,
    ) -> FfiFuture<RResult<DownloadOutcome, PluginError>> {
        let inner = self.inner.clone();
        bridge(&self.runtime(), move || inner.download(request, Events::from_box(events)))
    }

    fn seed(&self, request: SeedRequest, events: EventSinkBox) -> FfiFuture<RResult<SeedInfo, PluginError>> {
        let inner = self.inner.clone();
        bridge(&self.runtime(), move || inner.seed(request, Events::from_box(events)))
    }

    fn list_seeds(&self) -> RVec<SeedInfo> {
        catch_unwind(AssertUnwindSafe(|| self.inner.list_seeds())).map(RVec::from).unwrap_or_default()
    }

    fn stop_seed(&self, id: RString) -> RResult<(), PluginError> {
        guard(|| self.inner.stop_seed(&id))
    }

    fn open_source(&self, identifier: RString, events: EventSinkBox) -> FfiFuture<RResult<SourceBox, PluginError>> {
        let inner = self.inner.clone();
        let rt = self.runtime();
        let rt2 = rt.clone();
        bridge(&rt, move || {
            let opening = inner.open_source(identifier.into_string(), Events::from_box(events));
            Box::pin(async move {
                let src = opening.await?;
                let info = src.info();
                Ok(Source_TO::from_value(SourceAdapter { inner: src, info, rt: rt2 }, TD_Opaque))
            })
        })
    }

    fn command(&self, name: RString, args: Options, events: EventSinkBox) -> FfiFuture<RResult<RString, PluginError>> {
        self.command_impl(name, args, events)
    }
}

impl<P: Plugin> Handler<P> {
    fn command_impl(
        &self,
        name: RString,
        args: Options,
        events: EventSinkBox,
    ) -> FfiFuture<RResult<RString, PluginError>> {
        let inner = self.inner.clone();
        bridge(&self.runtime(), move || {
            let args = args.into_iter().map(|t| (t.0.into_string(), t.1.into_string())).collect();
            let fut = inner.command(name.into_string(), args, Events::from_box(events));
            Box::pin(async move { fut.await.map(RString::from) })
        })
    }

    fn runtime(&self) -> tokio::runtime::Handle {
        self.inner.runtime()
    }
}

struct SourceAdapter {
    inner: Arc<dyn PieceSource>,
    /// Taken once when the source opens (under the panic guard of `open_source`).
    info: ContentInfo,
    rt: tokio::runtime::Handle,
}

impl Source for SourceAdapter {
    fn info(&self) -> ContentInfo {
        self.info.clone()
    }

    fn availability(&self, piece_length: u64) -> RVec<u32> {
        catch_unwind(AssertUnwindSafe(|| self.inner.availability(piece_length))).map(RVec::from).unwrap_or_default()
    }

    fn fetch(&self, offset: u64, length: u64) -> FfiFuture<RResult<RVec<u8>, PluginError>> {
        let inner = self.inner.clone();
        bridge(&self.rt, move || {
            let fetching = inner.fetch(offset, length);
            Box::pin(async move { fetching.await.map(RVec::from) })
        })
    }

    fn peers(&self) -> RVec<PeerStat> {
        catch_unwind(AssertUnwindSafe(|| self.inner.peers())).map(RVec::from).unwrap_or_default()
    }

    fn checks_pieces(&self) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.inner.checks_pieces())).unwrap_or(false)
    }

    fn set_other_sources(&self, count: u32) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.inner.set_other_sources(count)));
    }
}

/// Host side: an ABI source seen as a [`PieceSource`], so the engine treats sources from every
/// plugin (and in-process ones) alike.
pub struct AbiSource {
    inner: SourceBox,
    info: ContentInfo,
    checks_pieces: bool,
}

impl AbiSource {
    pub fn new(inner: SourceBox) -> Self {
        let info = inner.info();
        let checks_pieces = inner.checks_pieces();
        Self { inner, info, checks_pieces }
    }
}

impl PieceSource for AbiSource {
    fn info(&self) -> ContentInfo {
        self.info.clone()
    }
    fn availability(&self, piece_length: u64) -> Vec<u32> {
        self.inner.availability(piece_length).into_vec()
    }
    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let f = self.inner.fetch(offset, length);
        // No copy when the plugin's allocation is compatible with ours (abi_stable checks).
        Box::pin(async move { f.await.into_result().map(RVec::into_vec) })
    }
    fn peers(&self) -> Vec<PeerStat> {
        self.inner.peers().into_vec()
    }
    fn checks_pieces(&self) -> bool {
        self.checks_pieces
    }
    fn set_other_sources(&self, count: u32) {
        self.inner.set_other_sources(count)
    }
}

#[doc(hidden)]
pub extern "C" fn descriptor_entry<P: Plugin>() -> RResult<PluginDescriptor, PluginError> {
    guard(|| Ok(P::descriptor()))
}

#[doc(hidden)]
pub extern "C" fn new_handler_entry<P: Plugin>(
    config: HostConfig,
    events: EventSinkBox,
) -> RResult<HandlerBox, PluginError> {
    guard(|| {
        let plugin = P::new(config, Events::from_box(events))?;
        Ok(ProtocolHandler_TO::from_value(Handler { inner: Arc::new(plugin) }, TD_Opaque))
    })
}

#[doc(hidden)]
pub fn root_module<P: Plugin>() -> PluginModRef {
    PluginMod { descriptor: descriptor_entry::<P>, new_handler: new_handler_entry::<P> }.leak_into_prefix()
}

/// Exports `$ty` (a [`Plugin`]) from a `cdylib`: the plain SDK-version symbol the host reads
/// first, and abi_stable's layout-checked root module.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        /// The SDK version this plugin was built against (read by hosts before loading).
        #[no_mangle]
        pub extern "C" fn chiral_plugin_sdk_version() -> *const ::std::os::raw::c_char {
            $crate::SDK_VERSION_NUL.as_ptr() as *const ::std::os::raw::c_char
        }

        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __chiral_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::plugin::install_panic_hook();
                $crate::abi_stable::library::__call_root_module_loader($crate::plugin::root_module::<$ty>)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginModRef>(
                    __chiral_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
