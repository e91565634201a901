//! What the host does with plugins: downloads (one content, every identifier a source) and
//! seeds.
//!
//! A download opens a source per identifier through its plugin, merges them in the SDK's
//! multi-source engine and verifies every piece. When no source gives piece access (a plugin
//! without the `SOURCE` capability, an HTTP server that ignores `Range`), the first identifier's
//! plugin runs the whole download itself.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use abi_stable::std_types::{RString, RVec, Tuple2};
use chiral_sdk::{
    capability,
    engine::{self, EngineError, EngineEvent},
    ident,
    plugin::AbiSource,
    select::FileSelection,
    DownloadRequest, ErrorKind, Event, Events, PieceSource, SeedInfo, SeedRequest,
};
use futures::{
    future::{select, BoxFuture, Either},
    stream::FuturesUnordered,
    StreamExt as _,
};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::registry::{DispatchError, Registry};

/// Why a host operation failed. [`HostError::kind`] sorts every variant into the SDK's broad
/// [`ErrorKind`]s, so callers (the `chiral` binary's exit codes) react without parsing text.
#[derive(Debug, Error)]
pub enum HostError {
    /// No plugin claims the identifier, or the `--backend` asked for does not.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// A plugin's own failure, with the kind it gave (a 404 is `NotFound`, a refused
    /// connection `Network`, ...). Several failures of one kind keep it; mixed ones are `Other`.
    #[error("{message}")]
    Plugin { kind: ErrorKind, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A plugin was named (`--via`, a remembered seed) that is not installed.
    #[error("no plugin named {name:?}{}", installed.as_deref().map(|i| format!("; installed: {i}")).unwrap_or_default())]
    NoPluginNamed { name: String, installed: Option<String> },
    /// No installed plugin can do what was asked (seed; download identifiers no source opens).
    #[error("{0}")]
    NoPluginCan(&'static str),
    /// A local file could not be read. The message already says why, so the I/O error is
    /// kept as a value, not as a `source` that would repeat it in `{:#}` chains.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// The request cannot be carried out as given (no identifier; `--sha256` with a download
    /// of several files).
    #[error("{0}")]
    Request(&'static str),
}

impl HostError {
    /// A plugin's failure, kind kept.
    pub fn plugin(kind: ErrorKind, message: impl Into<String>) -> Self {
        HostError::Plugin { kind, message: message.into() }
    }

    /// A plugin that could not be started (its handler failed to build), with the kind it gave.
    fn handler(e: chiral_sdk::PluginError) -> Self {
        HostError::plugin(e.kind, e.message.to_string())
    }

    /// The broad class of the failure. [`HostError::Request`] has no class of its own in the
    /// SDK's list: it is `Other` here, and callers that tell usage errors apart match it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HostError::Dispatch(_) | HostError::NoPluginNamed { .. } | HostError::NoPluginCan(_) => {
                ErrorKind::Unsupported
            }
            HostError::Plugin { kind, .. } => *kind,
            HostError::Engine(e) => engine_error_kind(e),
            HostError::Io { error, .. } => io_error_kind(error),
            HostError::Request(_) => ErrorKind::Other,
        }
    }
}

/// The kind of an engine failure: local files are `Io`, content that does not check out is
/// `Invalid`, and sources that could not give it (unreachable, gone, no description) `Network`.
pub fn engine_error_kind(e: &EngineError) -> ErrorKind {
    match e {
        EngineError::Io { .. } | EngineError::Exists(_) => ErrorKind::Io,
        EngineError::Sha256Mismatch { .. } | EngineError::Layout(_) => ErrorKind::Invalid,
        EngineError::NoSources(_) | EngineError::AllFailed(_) | EngineError::NoTrustRoot(_) => ErrorKind::Network,
    }
}

/// A missing file is `NotFound`; any other local I/O failure `Io`.
pub fn io_error_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Io,
    }
}

/// The kind several failures share, or `Other` when they differ (or there are none).
fn common_kind(kinds: impl IntoIterator<Item = ErrorKind>) -> ErrorKind {
    let mut kinds = kinds.into_iter();
    let Some(first) = kinds.next() else { return ErrorKind::Other };
    if kinds.all(|k| k == first) {
        first
    } else {
        ErrorKind::Other
    }
}

/// One download as asked.
#[derive(Clone, Debug, Default)]
pub struct GetRequest {
    /// Identifiers of the same content; each one is a source.
    pub identifiers: Vec<String>,
    pub out_dir: PathBuf,
    /// Plugin to use where it claims an identifier (`--backend`).
    pub backend: Option<String>,
    /// Parallel requests per source.
    pub connections: u32,
    pub sha256: Option<[u8; 32]>,
    /// Only these files (`--files`); `None`: all, or what a magnet's `so=` selects.
    pub files: Option<chiral_sdk::select::FileSelection>,
    /// Pieces in order, lowest first (`--sequential`).
    pub sequential: bool,
    /// This download's own rate limit (else the host's, [`Host::with_download_rate`]).
    pub download_rate: Option<Arc<chiral_sdk::rate::RateLimiter>>,
    /// A reader playing it while it downloads (the daemon's stream endpoint).
    pub playhead: Option<Arc<chiral_sdk::engine::playhead::Playhead>>,
}

/// Per-source totals of a finished download.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceLine {
    pub identifier: String,
    pub plugin: String,
    pub label: String,
    pub bytes: u64,
    /// Average bytes per second it delivered over the download.
    pub speed: u64,
    pub pieces: u32,
    pub failures: u32,
    pub dropped: Option<String>,
    /// The peers behind the source (swarm members, Chiral providers), most bytes first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerLine>,
}

/// One remote peer of a source, as `--json` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerLine {
    pub id: String,
    pub address: String,
    pub downloaded: u64,
    pub uploaded: u64,
    /// Set when the peer proved to be a Chiral client.
    pub chiral_peer_id: Option<String>,
    pub reputation: Option<i64>,
    pub banned: bool,
}

impl PeerLine {
    /// Lines for `stats`, the peers that gave most first.
    pub fn from_stats(mut stats: Vec<chiral_sdk::abi::PeerStat>) -> Vec<PeerLine> {
        stats.sort_by(|a, b| b.downloaded.cmp(&a.downloaded).then(b.uploaded.cmp(&a.uploaded)));
        stats
            .into_iter()
            .map(|p| PeerLine {
                id: p.id.into(),
                address: p.address.into(),
                downloaded: p.downloaded,
                uploaded: p.uploaded,
                chiral_peer_id: Some(p.chiral_peer_id.to_string()).filter(|s| !s.is_empty()),
                reputation: p.reputation.into_option(),
                banned: p.banned,
            })
            .collect()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GetReport {
    pub name: String,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    pub resumed_bytes: u64,
    pub seconds: f64,
    /// `engine` (pieces from sources) or `plugin` (a plugin's own whole download).
    pub mode: &'static str,
    pub sources: Vec<SourceLine>,
    /// Whole-file SHA-256 when it was checked.
    pub sha256: Option<String>,
    /// Every piece was checked against the hashes the identifiers name (a torrent's info
    /// hash, a `chiral:` root) or the whole file against `--sha256`; false for plain URLs
    /// with neither.
    pub verified: bool,
}

/// A seed started through a plugin.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeedLine {
    pub plugin: String,
    pub id: String,
    pub path: String,
    pub identifiers: Vec<String>,
    pub bytes_served: u64,
}

/// Host operations over a registry.
pub struct Host {
    pub registry: Registry,
    /// The download rate every download of this host shares (`--max-download-rate`), unless a
    /// request brings its own.
    pub download_rate: Option<Arc<chiral_sdk::rate::RateLimiter>>,
    /// The BitTorrent plugin was handed the identity link (once per host).
    linked: tokio::sync::OnceCell<bool>,
}

type OnEvent = Arc<dyn Fn(EngineEvent) + Send + Sync>;

fn options(pairs: &[(String, String)]) -> RVec<Tuple2<RString, RString>> {
    pairs.iter().map(|(k, v)| Tuple2(RString::from(k.as_str()), RString::from(v.as_str()))).collect()
}

fn log_sink(plugin: String) -> chiral_sdk::EventSinkBox {
    Events::sink_from_fn(move |e| log_event(&plugin, &e))
}

/// Plugin log lines and events go to the host's tracing output.
pub fn log_event(plugin: &str, e: &Event) {
    match e {
        Event::Log { level, message } => match *level {
            chiral_sdk::level::ERROR => tracing::error!(plugin, "{message}"),
            chiral_sdk::level::WARN => tracing::warn!(plugin, "{message}"),
            chiral_sdk::level::INFO => tracing::info!(plugin, "{message}"),
            chiral_sdk::level::DEBUG => tracing::debug!(plugin, "{message}"),
            _ => tracing::trace!(plugin, "{message}"),
        },
        // Only a peer with a wallet can be paid: one without is logged at debug level, not
        // once per MiB at info (every plain BitTorrent peer).
        Event::PaymentRequired { peer, wallet, bytes } => match wallet.as_ref().into_option() {
            Some(w) => tracing::info!(plugin, %peer, wallet = w.as_str(), bytes, "payment required"),
            None => tracing::debug!(plugin, %peer, bytes, "payment required (no wallet)"),
        },
        Event::Progress { .. } => {}
    }
}

impl Host {
    pub fn new(registry: Registry) -> Self {
        Self { registry, download_rate: None, linked: tokio::sync::OnceCell::new() }
    }

    /// Links this node's two Chiral identities (`chiral_sdk::link`) when both the BitTorrent and
    /// the Chiral network plugins are loaded: the network key vouches for the BitTorrent Chiral
    /// peer id (once per host), then the BitTorrent plugin is told which network keys have a poor
    /// reputation there (every call, so a long-running host passes on what it learned). Local
    /// work only: no node is started, nothing is sent. Not done through a proxy. Failures are
    /// logged at debug level.
    pub async fn link_identities(&self) {
        if self.registry.by_name("bittorrent").is_none() || self.registry.by_name("chiral").is_none() {
            return;
        }
        // Through a proxy, the two identities stay apart: the link would let BitTorrent peers
        // tie this node to its Chiral network key (docs/privacy.md).
        if self.registry.config().proxy.is_some() {
            return;
        }
        let linked = *self
            .linked
            .get_or_init(|| async {
                let step = async {
                    let id = self.command(Some("bittorrent"), "", "chiral_id", &[]).await?;
                    let id = id["id"].as_str().unwrap_or_default().to_string();
                    let proof = self.command(Some("chiral"), "", "link_proof", &[("bt_id".into(), id)]).await?;
                    let arg = |k: &str| (k.to_string(), proof[k].as_str().unwrap_or_default().to_string());
                    self.command(Some("bittorrent"), "", "link", &[arg("key"), arg("signature")]).await
                };
                match step.await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!("no identity link between the BitTorrent and Chiral network plugins: {e}");
                        false
                    }
                }
            })
            .await;
        if !linked {
            return;
        }
        let poor = match self.command(Some("chiral"), "", "reputation", &[]).await {
            Ok(v) => v["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["poor"].as_bool() == Some(true))
                .filter_map(|p| p["key"].as_str().map(str::to_string))
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::debug!("no Chiral network reputation for the BitTorrent fast lane: {e}");
                return;
            }
        };
        if let Err(e) =
            self.command(Some("bittorrent"), "", "network_reputation", &[("poor".into(), poor.join(","))]).await
        {
            tracing::debug!("the BitTorrent plugin took no Chiral network reputation: {e}");
        }
    }

    /// The same, with one download rate for all its downloads (bytes per second).
    pub fn with_download_rate(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.download_rate = chiral_sdk::rate::limiter(bytes_per_sec);
        self
    }

    /// Downloads one content from every identifier in `req`.
    pub async fn get(&self, req: &GetRequest, on_event: OnEvent) -> Result<GetReport, HostError> {
        if req.identifiers.is_empty() {
            return Err(HostError::Request("nothing to download: give at least one identifier"));
        }
        let started = Instant::now();
        // Dispatch every identifier first: an unclaimed one is the user's mistake, say so.
        let mut routed = Vec::new();
        let mut extras = Vec::new();
        let mut seed_lists = Vec::new();
        for id in &req.identifiers {
            let entry = self.registry.route(id, req.backend.as_deref())?;
            let handler = self.registry.handler(entry).map_err(HostError::handler)?;
            routed.push((
                id.clone(),
                entry.name().unwrap_or_default().to_string(),
                entry.has(capability::SOURCE),
                handler,
            ));
            // Extra sources join only a download the engine runs, where their bytes are checked
            // against the identifier's own hashes; a whole-download plugin has no such check.
            let extras_for =
                if entry.has(capability::SOURCE) { self.registry.extra_sources(id, entry) } else { Vec::new() };
            for extra in extras_for {
                match self.registry.handler(extra) {
                    Ok(h) => extras.push((id.clone(), extra.name().unwrap_or_default().to_string(), h)),
                    Err(e) => tracing::debug!("{e}"),
                }
            }
            // A torrent's web seeds (BEP 19) join as sources of their own, through the plugin
            // for their scheme; like every extra source, their bytes count only when they
            // verify against the torrent's pieces. Asked for below, beside the sources opening.
            if entry.has(capability::SOURCE) && ident::trust_root(id).is_some() {
                seed_lists.push((entry, id.clone()));
            }
        }

        if routed.iter().any(|r| r.1 == "bittorrent") || extras.iter().any(|e| e.1 == "bittorrent") {
            self.link_identities().await;
        }

        // An identifier names its content by a hash, but the plugin that won it gives no piece
        // access (a whole-download backend such as rqbit): nothing could check the other
        // sources' bytes against that hash, so that plugin downloads it alone.
        let carries = |id: &str| ident::trust_root(id).is_some();
        if routed.iter().any(|r| carries(&r.0)) && !routed.iter().any(|r| carries(&r.0) && r.2) {
            let whole =
                routed.iter().find(|r| carries(&r.0) && r.3.descriptor().capabilities & capability::DOWNLOAD != 0);
            if let Some((id, plugin, _, handler)) = whole {
                if routed.len() > 1 {
                    tracing::warn!(
                        "{plugin} gives no piece access for {id}: the other identifiers are not used, as their bytes could not be checked against it"
                    );
                }
                return self.whole_download(req, id, plugin, handler, on_event, started).await;
            }
        }

        // Open every source at once; the download starts with the first that can serve byte
        // ranges and the others join as they open (a magnet may take a while to resolve).
        // Extra sources (another network that may have the same content) are best effort:
        // their failures are only logged, and they never define what the content is.
        let primaries = routed.iter().filter(|r| r.2).map(|(id, plugin, _, handler)| (id, plugin, handler, false));
        let others = extras.iter().map(|(id, plugin, handler)| (id, plugin, handler, true));
        let mut pending: FuturesUnordered<BoxFuture<'_, Opening>> = primaries
            .chain(others)
            .map(|(id, plugin, handler, extra)| open(id, plugin, handler, extra, self.registry.sink(plugin)))
            .collect();
        let mut known: Vec<String> = req.identifiers.iter().chain(extras.iter().map(|e| &e.0)).cloned().collect();
        for (entry, id) in seed_lists {
            pending.push(Box::pin(async move { Opening::WebSeeds(self.web_seeds(entry, &id).await) }));
        }
        let mut failures: Vec<chiral_sdk::PluginError> = Vec::new();
        let mut streaming_only = Vec::new();
        let mut first: Option<engine::EngineSource> = None;
        // The first identifier names the result, so the same command always writes the same
        // file: a source of another identifier that opens first waits (up to NAME_WAIT) for it.
        let lead = routed.first().map(|r| r.0.clone()).unwrap_or_default();
        let mut early: Vec<engine::EngineSource> = Vec::new();
        let mut lead_failed = false;
        let mut give_up: Option<futures::channel::oneshot::Receiver<()>> = None;
        loop {
            let next = match give_up.as_mut() {
                None => pending.next().await,
                Some(timer) => match select(pending.next(), timer).await {
                    Either::Left((n, _)) => n,
                    Either::Right(_) => break,
                },
            };
            let (id, extra, r) = match next {
                None => break,
                Some(Opening::WebSeeds(urls)) => {
                    pending.extend(self.web_seed_sources(urls, &mut known));
                    continue;
                }
                Some(Opening::Source(id, extra, r)) => (id, extra, r),
            };
            let Some(r) = r else { continue };
            match r {
                Ok(src) => {
                    let info = src.source.info();
                    if info.random_access && info.length_known {
                        if id == lead && !extra {
                            first = Some(src);
                            break;
                        }
                        early.push(src);
                        if lead_failed {
                            break;
                        }
                        give_up.get_or_insert_with(|| after(NAME_WAIT));
                        continue;
                    }
                    streaming_only.push(id);
                }
                Err(e) => {
                    failures.push(e);
                    if id == lead {
                        lead_failed = true;
                        if !early.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        if first.is_none() && !early.is_empty() {
            first = Some(early.remove(0));
        }

        let Some(first) = first else {
            // Nothing gives piece access: a plugin's own whole download, if one can.
            let whole = routed.iter().find(|r| {
                r.3.descriptor().capabilities & capability::DOWNLOAD != 0 && (!r.2 || streaming_only.contains(&r.0))
            });
            return match whole {
                Some((id, plugin, _, handler)) => {
                    self.whole_download(req, id, plugin, handler, on_event, started).await
                }
                None if failures.len() == 1 => {
                    let e = failures.remove(0);
                    Err(HostError::plugin(e.kind, e.message))
                }
                None if !failures.is_empty() => {
                    let kind = common_kind(failures.iter().map(|e| e.kind));
                    let messages: Vec<&str> = failures.iter().map(|e| e.message.as_str()).collect();
                    Err(HostError::plugin(kind, format!("every source failed: {}", messages.join("; "))))
                }
                None => Err(HostError::NoPluginCan("no plugin can download these identifiers")),
            };
        };
        for f in &failures {
            tracing::warn!("source left out: {f}");
        }
        let (late_tx, late_rx) = futures::channel::mpsc::unbounded::<engine::EngineSource>();
        // Sources that opened while the lead was awaited join first, in their order.
        for src in early {
            let _ = late_tx.unbounded_send(src);
        }
        let feeder = async move {
            while let Some(opened) = pending.next().await {
                match opened {
                    Opening::WebSeeds(urls) => pending.extend(self.web_seed_sources(urls, &mut known)),
                    Opening::Source(_, _, None) => {}
                    Opening::Source(_, _, Some(Ok(src))) => {
                        let _ = late_tx.unbounded_send(src);
                    }
                    Opening::Source(_, _, Some(Err(e))) => tracing::warn!("source left out: {e}"),
                }
            }
        };

        let mut opts = engine::Options::new(&req.out_dir);
        opts.slots_per_source = req.connections.max(1) as usize;
        opts.sha256 = req.sha256;
        opts.download_rate = req.download_rate.clone().or_else(|| self.download_rate.clone());
        opts.sequential = req.sequential;
        opts.playhead = req.playhead.clone();
        // `--files`, else the first magnet's `so=` (BEP 53).
        opts.files = req.files.clone().or_else(|| {
            req.identifiers.iter().find_map(|id| {
                chiral_sdk::magnet::Magnet::parse(id).ok().and_then(|m| FileSelection::from_magnet_so(&m.select_only))
            })
        });
        // An identifier that names its content by a hash: nothing completes without it.
        opts.await_authority = req.identifiers.iter().any(|id| ident::trust_root(id).is_some());
        let cb = on_event.clone();
        let on = move |e| cb(e);
        let engine = engine::run_with_late_sources(vec![first], Some(late_rx), &opts, &on);
        let out = match select(std::pin::pin!(engine), std::pin::pin!(feeder)).await {
            Either::Left((out, _still_opening)) => out?,
            Either::Right(((), engine)) => engine.await?,
        };
        Ok(GetReport {
            name: out.name,
            files: out.files,
            bytes: out.length,
            resumed_bytes: out.resumed_bytes,
            seconds: started.elapsed().as_secs_f64(),
            mode: "engine",
            sha256: req.sha256.map(hex::encode),
            verified: out.verified,
            sources: out
                .sources
                .into_iter()
                .map(|r| SourceLine {
                    identifier: redact(&r.identifier),
                    plugin: r.plugin,
                    label: r.label,
                    bytes: r.bytes,
                    speed: (r.bytes as f64 / out.seconds.max(1e-3)) as u64,
                    pieces: r.pieces,
                    failures: r.failures + r.bad_pieces,
                    dropped: r.dropped,
                    peers: PeerLine::from_stats(r.peers),
                })
                .collect(),
        })
    }

    /// Opens the web seeds not already among the sources (`known`), each through the plugin
    /// for its scheme, as extra sources.
    fn web_seed_sources(&self, urls: Vec<String>, known: &mut Vec<String>) -> Vec<BoxFuture<'static, Opening>> {
        let mut out = Vec::new();
        for url in urls.into_iter().take(MAX_WEB_SEEDS) {
            if known.contains(&url) {
                continue;
            }
            let Ok(e) = self.registry.route(&url, None) else { continue };
            if !e.has(capability::SOURCE) {
                continue;
            }
            match self.registry.handler(e) {
                Ok(h) => {
                    out.push(open(
                        &url,
                        e.name().unwrap_or_default(),
                        &h,
                        true,
                        self.registry.sink(e.name().unwrap_or_default()),
                    ));
                    known.push(url);
                }
                Err(m) => tracing::debug!("{m}"),
            }
        }
        out
    }

    /// The web seeds the plugin of `identifier` lists for it (its `web_seeds` command; none
    /// when the plugin has no such command or answers slowly).
    async fn web_seeds(&self, entry: &crate::registry::Entry, identifier: &str) -> Vec<String> {
        let args = [("identifier".to_string(), identifier.to_string())];
        let ask = self.command(entry.name(), "", "web_seeds", &args);
        let answer = match select(std::pin::pin!(ask), after(WEB_SEEDS_WAIT)).await {
            Either::Left((Ok(v), _)) => v,
            Either::Left((Err(e), _)) => {
                tracing::debug!("no web seeds for {}: {e}", redact(identifier));
                return Vec::new();
            }
            Either::Right(_) => return Vec::new(),
        };
        let urls = answer["web_seeds"].as_array().cloned().unwrap_or_default();
        let urls: Vec<String> = urls.iter().filter_map(|u| u.as_str().map(str::to_string)).collect();
        if !urls.is_empty() {
            tracing::info!("{} web seed(s) as sources: {}", urls.len(), chiral_sdk::text::line(&urls.join(", ")));
        }
        urls
    }

    async fn whole_download(
        &self,
        req: &GetRequest,
        id: &str,
        plugin: &str,
        handler: &chiral_sdk::HandlerBox,
        on_event: OnEvent,
        started: Instant,
    ) -> Result<GetReport, HostError> {
        // Map the plugin's progress events onto the engine's, so callers see one kind.
        let last = Arc::new(Mutex::new(None::<u64>));
        let (cb, name, p) = (on_event.clone(), plugin.to_string(), plugin.to_string());
        let events = self.registry.events();
        let sink = Events::sink_from_fn(move |e| match e {
            Event::Progress { done, total, .. } => {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let prev = match *last {
                    Some(prev) => prev,
                    None => {
                        cb(EngineEvent::Started {
                            name: String::new(),
                            total,
                            resumed: done,
                            sources: vec![name.clone()],
                        });
                        done
                    }
                };
                if done > prev {
                    cb(EngineEvent::Piece { source: 0, bytes: done - prev });
                }
                *last = Some(done.max(prev));
            }
            other => events(&p, other),
        });
        let request = DownloadRequest {
            identifier: id.into(),
            out_dir: req.out_dir.to_string_lossy().into_owned().into(),
            connections: req.connections,
            options: RVec::new(),
        };
        let out =
            handler.download(request, sink).await.into_result().map_err(|e| HostError::plugin(e.kind, e.message))?;
        let files: Vec<PathBuf> = out.files.iter().map(|f| PathBuf::from(f.as_str())).collect();
        if let Some(want) = req.sha256 {
            let [file] = files.as_slice() else {
                return Err(HostError::Request("--sha256 needs a single-file download"));
            };
            let got = sha256_file(file).map_err(|error| HostError::Io { path: file.clone(), error })?;
            if got != want {
                let _ = std::fs::remove_file(file);
                return Err(EngineError::Sha256Mismatch { got: hex::encode(got), want: hex::encode(want) }.into());
            }
        }
        Ok(GetReport {
            name: files
                .first()
                .and_then(|f| f.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            files,
            bytes: out.bytes,
            resumed_bytes: out.resumed_bytes,
            seconds: started.elapsed().as_secs_f64(),
            mode: "plugin",
            sha256: req.sha256.map(hex::encode),
            verified: req.sha256.is_some() || ident::trust_root(id).is_some(),
            sources: out
                .per_source
                .iter()
                .map(|s| SourceLine {
                    identifier: redact(id),
                    plugin: plugin.to_string(),
                    label: s.label.to_string(),
                    bytes: s.bytes,
                    speed: (s.bytes.saturating_sub(out.resumed_bytes) as f64
                        / started.elapsed().as_secs_f64().max(1e-3)) as u64,
                    pieces: 0,
                    failures: 0,
                    dropped: None,
                    peers: Vec::new(),
                })
                .collect(),
        })
    }

    /// Starts seeding `path` through each plugin named in `via` (every seed-capable plugin if
    /// empty); fails only if none could.
    pub async fn seed(
        &self,
        path: &Path,
        via: &[String],
        opts: &[(String, String)],
    ) -> Result<Vec<SeedLine>, HostError> {
        let path = std::fs::canonicalize(path).map_err(|error| HostError::Io { path: path.to_path_buf(), error })?;
        let entries: Vec<_> = if via.is_empty() {
            self.registry.loaded().filter(|e| e.has(capability::SEED)).collect()
        } else {
            via.iter()
                .map(|n| {
                    self.registry.by_name(n).ok_or_else(|| HostError::NoPluginNamed {
                        name: n.clone(),
                        installed: Some(self.registry.installed_schemes()),
                    })
                })
                .collect::<Result<_, _>>()?
        };
        if entries.is_empty() {
            return Err(HostError::NoPluginCan("no installed plugin can seed"));
        }
        // Plugins that make magnet links seed first, so the others (the Chiral network's
        // `info_hash_idx`) can be told the info hash and a magnet finds every seed.
        let mut entries = entries;
        entries
            .sort_by_key(|e| !e.descriptor.as_ref().is_some_and(|d| d.schemes.iter().any(|s| s.as_str() == "magnet")));
        let mut opts = opts.to_vec();
        let mut lines: Vec<SeedLine> = Vec::new();
        let mut errors = Vec::new();
        for e in entries {
            if !opts.iter().any(|(k, _)| k == "info_hash") {
                let found = lines
                    .iter()
                    .find_map(|l| l.identifiers.iter().find_map(|i| ident::magnet_info_hash_hex(i)).map(|ih| (l, ih)));
                if let Some((line, ih)) = found {
                    // With its info dictionary, so a downloader that finds this content by the
                    // magnet can check it against the info hash.
                    let args = [("info_hash".to_string(), ih.clone())];
                    match self.command(Some(&line.plugin), "", "info_dict", &args).await {
                        Ok(v) => {
                            if let Some(d) = v["info_dict"].as_str() {
                                opts.push(("info_dict".into(), d.to_string()));
                            }
                        }
                        Err(e) => tracing::debug!("no info dictionary for {ih}: {e}"),
                    }
                    opts.push(("info_hash".into(), ih));
                }
            }
            let opts = opts.as_slice();
            let name = e.name().unwrap_or_default().to_string();
            let handler = match self.registry.handler(e) {
                Ok(h) => h,
                Err(m) => {
                    errors.push((ErrorKind::Other, m.to_string()));
                    continue;
                }
            };
            if name == "bittorrent" {
                self.link_identities().await;
            }
            let req = SeedRequest { path: path.to_string_lossy().into_owned().into(), options: options(opts) };
            match handler.seed(req, self.registry.sink(&name)).await.into_result() {
                Ok(info) => lines.push(seed_line(&name, info)),
                Err(err) => errors.push((err.kind, format!("{name}: {err}"))),
            }
        }
        if lines.is_empty() {
            let kind = common_kind(errors.iter().map(|e| e.0));
            let messages: Vec<&str> = errors.iter().map(|e| e.1.as_str()).collect();
            return Err(HostError::plugin(kind, messages.join("; ")));
        }
        for (_, e) in errors {
            tracing::warn!("{e}");
        }
        Ok(lines)
    }

    /// Runs a plugin-specific command (`create`) on `plugin`, or on the plugin that claims
    /// `route_hint` when no plugin is named; returns the plugin's JSON answer.
    pub async fn command(
        &self,
        plugin: Option<&str>,
        route_hint: &str,
        name: &str,
        args: &[(String, String)],
    ) -> Result<serde_json::Value, HostError> {
        let entry = match plugin {
            Some(p) => self.registry.by_name(p).ok_or_else(|| HostError::NoPluginNamed {
                name: p.to_string(),
                installed: Some(self.registry.installed_schemes()),
            })?,
            None => self.registry.route(route_hint, None)?,
        };
        let pname = entry.name().unwrap_or_default().to_string();
        let handler = self.registry.handler(entry).map_err(HostError::handler)?;
        let text = handler
            .command(name.into(), options(args), log_sink(pname.clone()))
            .await
            .into_result()
            .map_err(|e| HostError::plugin(e.kind, format!("{pname}: {e}")))?;
        serde_json::from_str(&text)
            .map_err(|e| HostError::plugin(ErrorKind::Other, format!("{pname} answered {name} with invalid JSON: {e}")))
    }

    /// Sends a command to every started plugin (one never started is not started for it);
    /// a plugin that does not know the command answers an error, logged at debug level.
    pub async fn command_started(&self, name: &str, args: &[(String, String)]) {
        for e in self.registry.loaded() {
            let Some(h) = self.registry.started_handler(e) else { continue };
            let pname = e.name().unwrap_or_default().to_string();
            if let Err(err) = h.command(name.into(), options(args), log_sink(pname.clone())).await.into_result() {
                tracing::debug!(plugin = %pname, "{name}: {err}");
            }
        }
    }

    /// Every seed every started plugin is running (a plugin never started has none, and is not
    /// started to be asked).
    pub fn list_seeds(&self) -> Vec<SeedLine> {
        let mut out = Vec::new();
        for e in self.registry.loaded().filter(|e| e.has(capability::SEED_MANAGE)) {
            if let Some(h) = self.registry.started_handler(e) {
                out.extend(h.list_seeds().into_iter().map(|s| seed_line(e.name().unwrap_or_default(), s)));
            }
        }
        out
    }

    pub fn stop_seed(&self, plugin: &str, id: &str) -> Result<(), HostError> {
        let e = self
            .registry
            .by_name(plugin)
            .ok_or_else(|| HostError::NoPluginNamed { name: plugin.to_string(), installed: None })?;
        let h = self.registry.handler(e).map_err(HostError::handler)?;
        h.stop_seed(id.into()).into_result().map_err(|e| HostError::plugin(e.kind, e.message))
    }
}

/// An identifier as it may be shown: the password of `scheme://user:password@host/...` removed.
pub fn redact(identifier: &str) -> String {
    let Some((scheme, rest)) = identifier.split_once("://") else { return identifier.to_string() };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    match auth.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => identifier.to_string(),
    }
}

/// How long a download whose first identifier is slow to open waits for it before it starts
/// with another (and is named after that one).
const NAME_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a plugin may take to list a torrent's web seeds (a .torrent URL is fetched first).
const WEB_SEEDS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves after `d` without needing any async runtime (the host library runs on any).
fn after(d: std::time::Duration) -> futures::channel::oneshot::Receiver<()> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    rx
}

/// An opened source as the engine takes it. The source of an identifier that names its content
/// by a hash, opened by the plugin that won that identifier, is the download's authority (its
/// description is the trust root) — and for `chiral:` only when its root is the one named.
/// Extra sources never are. Chiral-network sources rank first.
/// A source being opened, or the web seeds an identifier's plugin listed (to open next).
enum Opening {
    /// Identifier, whether it is an extra source, and the outcome (`None`: an extra source
    /// that failed, already logged).
    Source(String, bool, Option<Result<engine::EngineSource, chiral_sdk::PluginError>>),
    WebSeeds(Vec<String>),
}

/// Most web seeds of one identifier opened as sources (a torrent may list hundreds).
const MAX_WEB_SEEDS: usize = 8;

/// Opens `id` through `handler`; an extra source's failure is only logged.
fn open(
    id: &str,
    plugin: &str,
    handler: &Arc<chiral_sdk::HandlerBox>,
    extra: bool,
    sink: chiral_sdk::EventSinkBox,
) -> BoxFuture<'static, Opening> {
    let f = handler.open_source(id.into(), sink);
    let caps = handler.descriptor().capabilities;
    let (reputed, pipelined) = (caps & capability::REPUTED_PEERS != 0, caps & capability::PIPELINED != 0);
    let (id, plugin) = (id.to_string(), plugin.to_string());
    Box::pin(async move {
        let r = match f.await.into_result() {
            Err(e) if extra => {
                tracing::debug!("extra source {plugin} for {id}: {e}");
                None
            }
            other => Some(
                other.map(|src| engine_source(id.clone(), plugin.clone(), extra, reputed, src).pipelined(pipelined)),
            ),
        };
        Opening::Source(id, extra, r)
    })
}

fn engine_source(
    identifier: String,
    plugin: String,
    extra: bool,
    reputed: bool,
    src: chiral_sdk::SourceBox,
) -> engine::EngineSource {
    let source: Arc<dyn PieceSource> = Arc::new(AbiSource::new(src));
    let info = source.info();
    // An extra source is an authority only when it proves itself: a torrent description whose
    // info dictionary (in `root`) hashes to the magnet's info hash and says the same pieces.
    let proven = extra
        && info.hash_kind == chiral_sdk::HashKind::Sha1Pieces
        && ident::magnet_info_hash_hex(&identifier).is_some_and(|ih| {
            ident::TorrentInfo::matches_info_hash(&info.root, &ih)
                && ident::TorrentInfo::parse(&info.root).is_some_and(|t| {
                    t.length == info.length
                        && t.piece_length == info.piece_length
                        && t.pieces.as_slice() == info.piece_hashes.as_slice()
                })
        });
    if proven {
        tracing::info!(
            "{plugin} answered {identifier} with the torrent's own info dictionary, checked against the info hash"
        );
    }
    let authority = proven
        || !extra
            && info.hash_kind != chiral_sdk::HashKind::None
            && match ident::trust_root(&identifier) {
                Some(ident::TrustRoot::MerkleRoot(root)) => {
                    let same = info.root.as_slice() == root.as_slice();
                    if !same {
                        tracing::warn!("{plugin} answered {identifier} with another Merkle root: not trusted");
                    }
                    same
                }
                _ => true,
            };
    // Peers proven and ranked by their network first (capability REPUTED_PEERS).
    let reputation = i32::from(reputed);
    engine::EngineSource { source, identifier, plugin, authority, reputation, pipelined: false }
}

fn seed_line(plugin: &str, s: SeedInfo) -> SeedLine {
    SeedLine {
        plugin: plugin.to_string(),
        id: s.id.into(),
        path: s.path.into(),
        identifiers: s.identifiers.into_iter().map(RString::into_string).collect(),
        bytes_served: s.bytes_served,
    }
}

/// SHA-256 of a whole file.
pub fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_and_their_one_line_text() {
        let e = HostError::plugin(ErrorKind::NotFound, "HTTP 404 Not Found: http://h/a");
        assert_eq!((e.kind(), e.to_string().as_str()), (ErrorKind::NotFound, "HTTP 404 Not Found: http://h/a"));
        let e = HostError::NoPluginNamed { name: "nope".into(), installed: Some("http: (http)".into()) };
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (ErrorKind::Unsupported, "no plugin named \"nope\"; installed: http: (http)")
        );
        let e = HostError::NoPluginNamed { name: "nope".into(), installed: None };
        assert_eq!(e.to_string(), "no plugin named \"nope\"");
        let e = HostError::Io { path: "/x/a".into(), error: std::io::Error::from(std::io::ErrorKind::NotFound) };
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().starts_with("/x/a: "), "{e}");
        assert!(std::error::Error::source(&e).is_none(), "the I/O error is in the text, not repeated as a source");
        let e = HostError::from(EngineError::Sha256Mismatch { got: "a".into(), want: "b".into() });
        assert_eq!((e.kind(), e.to_string().as_str()), (ErrorKind::Invalid, "SHA-256 of the result is a, expected b"));
        assert_eq!(HostError::Request("x").kind(), ErrorKind::Other);
    }

    #[test]
    fn several_failures_keep_a_kind_only_when_they_share_it() {
        assert_eq!(common_kind([ErrorKind::Network, ErrorKind::Network]), ErrorKind::Network);
        assert_eq!(common_kind([ErrorKind::NotFound]), ErrorKind::NotFound);
        assert_eq!(common_kind([ErrorKind::NotFound, ErrorKind::Network]), ErrorKind::Other);
        assert_eq!(common_kind([]), ErrorKind::Other);
    }

    #[test]
    fn passwords_never_shown() {
        use super::redact;
        assert_eq!(redact("ftp://bob:s3cr3t@h:21/a/b"), "ftp://bob@h:21/a/b");
        assert_eq!(redact("ftp://bob@h/x"), "ftp://bob@h/x");
        assert_eq!(redact("https://h/p?q=a:b@c"), "https://h/p?q=a:b@c");
        assert_eq!(redact("magnet:?xt=urn:btih:00"), "magnet:?xt=urn:btih:00");
        assert_eq!(redact("ftp://u:p@ss@h/x"), "ftp://u@h/x");
    }
}
