//! The long-lived node behind `chiral daemon`: one process, the plugins loaded once, many
//! downloads and seeds at a time, driven over an HTTP API ([`api`]) with a web page.
//!
//! - [`Daemon`]: the downloads (a queue with a maximum of active ones; pause, resume, delete)
//!   and the seeds (start, stop, remove), with their state in `<data dir>/daemon.json`
//!   ([`store`]) so that after a restart, or a `kill -9`, every unfinished download resumes
//!   from what is verified on disk (the engine's resume files) and every seed is served again;
//! - changes go out as [`Change`]s on a broadcast channel (the API's event stream): state
//!   changes at once, progress at most once a second per download;
//! - the daemon's seeds are in the seed list and answer on a control socket like any serving
//!   process's, so `chiral seeds`, `chiral stop` and `chiral remove` see them.
//!
//! A custom host builds a [`Daemon`] over its own [`Host`] and serves [`api::router`].

pub mod api;
mod multipart;
pub mod store;
pub mod stream;

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chiral_sdk::{
    engine::{playhead::Playhead, EngineEvent},
    rate::RateLimiter,
    select::FileSelection,
    text,
};
use serde::Serialize;
use thiserror::Error;
use tokio::{sync::broadcast, task::JoinHandle};

use crate::{
    control::{ControlSocket, LiveSeed, SeedControl},
    lifecycle::ServedSeeds,
    seedbook::{self, SeedBook},
    session::{redact, GetRequest, HostError, PeerLine},
    Host,
};
pub use store::{DownloadRecord, DownloadState, PeerView, SeedEntry, SourceView};
use store::{Saved, StateWriter, Store};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    /// Where a download goes when no `out_dir` is given.
    pub download_dir: PathBuf,
    /// Downloads transferring at once; the others wait in the queue.
    pub max_active: usize,
    /// Parallel requests per source.
    pub connections: u32,
}

/// Why a daemon operation was refused; [`DaemonError::status`] is its HTTP status.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl DaemonError {
    pub fn status(&self) -> u16 {
        match self {
            DaemonError::BadRequest(_) => 400,
            DaemonError::NotFound(_) => 404,
            DaemonError::Conflict(_) => 409,
            DaemonError::Internal(_) => 500,
        }
    }

    /// A host failure: what the caller asked wrong is 400, a missing file 404, the rest 500.
    fn host(e: HostError) -> Self {
        let line = text::line(&e.to_string());
        match e {
            HostError::Io { ref error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                DaemonError::NotFound(line)
            }
            HostError::Dispatch(_)
            | HostError::NoPluginNamed { .. }
            | HostError::NoPluginCan(_)
            | HostError::Request(_)
            | HostError::Io { .. } => DaemonError::BadRequest(line),
            HostError::Plugin { .. } | HostError::Engine(_) => DaemonError::Internal(line),
        }
    }
}

/// A download as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadView {
    pub id: String,
    pub name: String,
    pub state: DownloadState,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Bytes this process's run found already verified on disk when it started (a resumed
    /// download skips them); none before the run starts.
    pub bytes_resumed: Option<u64>,
    /// Bytes per second over the last seconds.
    pub speed: u64,
    pub eta_seconds: Option<u64>,
    /// Sources feeding it now (for a finished one: the peers and servers it came from).
    pub peers: u64,
    pub identifiers: Vec<String>,
    pub out_dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub error: Option<String>,
    pub sources: Vec<SourceView>,
    pub added_at: u64,
    pub completed_at: Option<u64>,
    /// Its own download limit in bytes per second (null: only the daemon's global one).
    pub max_download_rate: Option<u64>,
    /// The files chosen of a multi-file content (null: all, or what a magnet's `so=` says).
    pub file_selection: Option<String>,
    pub sequential: bool,
}

/// A seed as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SeedView {
    pub id: String,
    pub path: String,
    pub plugin: String,
    pub state: &'static str,
    pub identifiers: Vec<String>,
    pub bytes_served: u64,
    pub error: Option<String>,
    pub added_at: u64,
    /// Its own upload limit (bytes per second), inside the global one; none: the global alone.
    pub max_upload_rate: Option<u64>,
}

/// One change for the event stream: `kind` is `download`, `seed` or `removed`; `data` its JSON.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: &'static str,
    pub data: String,
}

/// A download being asked for.
#[derive(Debug, Clone, Default)]
pub struct AddRequest {
    pub identifiers: Vec<String>,
    pub out_dir: Option<PathBuf>,
    pub backend: Option<String>,
    /// The bytes of an uploaded `.torrent` (kept in the data dir and used as the identifier).
    pub torrent: Option<Vec<u8>>,
    /// Bytes per second (0 or none: no limit of its own).
    pub max_download_rate: Option<u64>,
    /// `1,3-5` or a glob.
    pub file_selection: Option<String>,
    pub sequential: bool,
}

/// A change to a download's options (`PATCH`): each field given replaces the one it had;
/// `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub max_download_rate: Option<Option<u64>>,
    pub file_selection: Option<Option<String>>,
    pub sequential: Option<bool>,
}

/// Live figures of a download that runs.
#[derive(Default)]
struct Live {
    sources: Vec<LiveSource>,
    /// (when, bytes_done) over the last seconds, for the speed.
    samples: VecDeque<(Instant, u64)>,
    speed: u64,
    /// Bytes found verified on disk when this process's run of the download started.
    resumed: Option<u64>,
    /// Progress not sent on the event stream yet.
    dirty: bool,
}

struct LiveSource {
    label: String,
    plugin: String,
    bytes: u64,
    /// The peers behind it, as the engine last reported them.
    peers: Vec<PeerView>,
    dropped: Option<String>,
    /// Bytes per second, smoothed over the ticks, and the bytes at the last tick.
    speed: u64,
    at_tick: u64,
}

struct Dl {
    rec: DownloadRecord,
    /// Its own rate, inside the host's; changed in place while it runs.
    rate: Arc<RateLimiter>,
    /// What its runs publish for the stream endpoint (pieces on disk, files), and the reader's
    /// cursor they fetch first.
    playhead: Arc<Playhead>,
    /// The run in flight and its generation (events of an older run are ignored).
    task: Option<JoinHandle<()>>,
    gen: u64,
    live: Live,
}

struct Sd {
    entry: SeedEntry,
    /// The plugin's id of the seed served by this process.
    live_id: Option<String>,
    error: Option<String>,
    served: u64,
}

struct Inner {
    next_id: u64,
    /// In the order they were added.
    downloads: Vec<Dl>,
    seeds: Vec<Sd>,
    gen: u64,
    /// Progress changed since the last save.
    unsaved: bool,
}

/// The daemon: downloads, seeds, their state file and the event channel.
pub struct Daemon {
    host: Arc<Host>,
    opts: DaemonOptions,
    /// Writes the state file off the state lock, newest snapshot last.
    writer: StateWriter,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Change>,
    control: Arc<ServedSeeds>,
    /// Pays what a finished download owes (below the threshold too), when set.
    payments: std::sync::OnceLock<Arc<crate::payments::PaymentService>>,
}

impl Dl {
    /// A download not running, with its own rate limiter inside the host's.
    fn new(rec: DownloadRecord, host: &Host) -> Self {
        let rate = Arc::new(RateLimiter::within(rec.max_download_rate.unwrap_or(0), host.download_rate.clone()));
        Dl { rec, rate, playhead: Arc::default(), task: None, gen: 0, live: Live::default() }
    }
}

/// A file selection as given: trimmed, none when empty, refused (400) when it does not parse.
fn checked_selection(spec: Option<&str>) -> Result<Option<String>, DaemonError> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    if let Some(s) = spec {
        FileSelection::parse(s).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
    }
    Ok(spec.map(str::to_string))
}

/// Peers shown per source of a running download (the ones that gave most).
const MAX_LIVE_PEERS: usize = 200;

/// A peer as the API shows it, its strings made safe for display.
fn peer_view(p: &PeerLine) -> PeerView {
    PeerView {
        address: text::line(&p.address),
        chiral_peer_id: p.chiral_peer_id.as_deref().map(text::line),
        reputation: p.reputation,
        bytes: p.downloaded,
    }
}

/// How often progress goes out and is saved.
const TICK: Duration = Duration::from_secs(1);
/// Ticks a second.
const TICK_HZ: u64 = 1;
/// The window the speed is measured over.
const SPEED_WINDOW: Duration = Duration::from_secs(5);

impl Daemon {
    /// The daemon over `host`, with what the state file remembers (nothing runs yet: see
    /// [`Daemon::start`]).
    pub fn new(host: Arc<Host>, opts: DaemonOptions) -> Arc<Self> {
        let store = Store::new(&opts.data_dir);
        let saved = store.load();
        let downloads = saved
            .downloads
            .into_iter()
            .map(|mut rec| {
                // A run cut short (a restart, a crash) is queued again: it resumes from what
                // is verified on disk.
                if rec.state == DownloadState::Running {
                    rec.state = DownloadState::Queued;
                }
                Dl::new(rec, &host)
            })
            .collect();
        let seeds = saved.seeds.into_iter().map(|entry| Sd { entry, live_id: None, error: None, served: 0 }).collect();
        let (events, _) = broadcast::channel(1024);
        let control = Arc::new(ServedSeeds::new(host.clone(), &opts.data_dir));
        Arc::new(Self {
            host,
            writer: StateWriter::start(store),
            inner: Mutex::new(Inner { next_id: saved.next_id, downloads, seeds, gen: 0, unsaved: false }),
            events,
            control,
            opts,
            payments: std::sync::OnceLock::new(),
        })
    }

    /// The payment service that settles each download's debt when it completes (as
    /// `chiral get` does before it exits); debts over the threshold are paid as they grow by
    /// the service itself.
    pub fn set_payments(&self, p: Arc<crate::payments::PaymentService>) {
        let _ = self.payments.set(p);
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    pub fn options(&self) -> &DaemonOptions {
        &self.opts
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the queued downloads, serves the remembered seeds again, and runs the ticker
    /// (progress events, speeds, saving) and the control socket until the daemon is dropped.
    pub async fn start(self: &Arc<Self>) {
        self.schedule();
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.tick();
            }
        });
        let me = self.clone();
        tokio::spawn(async move { me.serve_control().await });
        self.restore_seeds().await;
    }

    /// `chiral seeds/stop/remove` reach the daemon's seeds through its control socket.
    async fn serve_control(self: Arc<Self>) {
        let socket = match ControlSocket::bind(&self.opts.data_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket: {e}; `chiral seeds` and `chiral stop` will not see the daemon");
                return;
            }
        };
        let ctl: Arc<dyn SeedControl + Send + Sync> = self.control.clone();
        loop {
            // Returns when a stop leaves no seed: the daemon goes on.
            socket.serve(ctl.clone()).await;
        }
    }

    /// Stops the seeds and the runs (their resume state is saved as they stop); what is
    /// remembered stays as it is, for the next start.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut inner = self.lock();
            inner.downloads.iter_mut().filter_map(|d| d.task.take()).collect()
        };
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        self.save();
        self.control.finish();
    }

    /// A receiver of changes; take it before the snapshot so nothing falls between them.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.events.subscribe()
    }

    /// One change per download and per seed, as they are now.
    pub fn snapshot(&self) -> Vec<Change> {
        let mut out: Vec<Change> = self.downloads().iter().map(|d| change("download", d)).collect();
        out.extend(self.seeds().iter().map(|s| change("seed", s)));
        out
    }

    fn emit(&self, c: Change) {
        let _ = self.events.send(c);
    }

    fn new_id(inner: &mut Inner, prefix: &str) -> String {
        inner.next_id += 1;
        format!("{prefix}{}", inner.next_id)
    }

    // ---- downloads ----------------------------------------------------------------------------

    pub fn downloads(&self) -> Vec<DownloadView> {
        let inner = self.lock();
        inner.downloads.iter().map(|d| self.view(d)).collect()
    }

    pub fn download(&self, id: &str) -> Result<DownloadView, DaemonError> {
        let inner = self.lock();
        inner.downloads.iter().find(|d| d.rec.id == id).map(|d| self.view(d)).ok_or_else(|| not_found(id))
    }

    /// What the stream endpoint reads of download `id`: its playhead, and its state.
    pub fn stream_target(&self, id: &str) -> Result<stream::Target, DaemonError> {
        let inner = self.lock();
        let d = inner.downloads.iter().find(|d| d.rec.id == id).ok_or_else(|| not_found(id))?;
        Ok(stream::Target { playhead: d.playhead.clone(), state: d.rec.state, files: d.rec.files.clone() })
    }

    /// Adds a download (queued, or running at once when a slot is free).
    pub fn add(self: &Arc<Self>, req: AddRequest) -> Result<DownloadView, DaemonError> {
        let mut identifiers: Vec<String> =
            req.identifiers.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if identifiers.is_empty() && req.torrent.is_none() {
            return Err(DaemonError::BadRequest("nothing to download: give at least one identifier".into()));
        }
        let out_dir = req.out_dir.clone().unwrap_or_else(|| self.opts.download_dir.clone());
        if !out_dir.is_absolute() {
            return Err(DaemonError::BadRequest(format!("out_dir must be an absolute path: {}", out_dir.display())));
        }
        for id in &identifiers {
            self.host.registry.route(id, req.backend.as_deref()).map_err(|e| DaemonError::host(e.into()))?;
        }
        let file_selection = checked_selection(req.file_selection.as_deref())?;
        let max_download_rate = req.max_download_rate.filter(|&r| r > 0);
        let torrent_name = match &req.torrent {
            Some(bytes) => Some(torrent_name(bytes).ok_or_else(|| {
                DaemonError::BadRequest("the uploaded file is not a torrent (no info dictionary with a name)".into())
            })?),
            None => None,
        };
        let mut inner = self.lock();
        let id = Self::new_id(&mut inner, "d");
        let mut torrent_file = None;
        if let Some(bytes) = &req.torrent {
            let dir = self.opts.data_dir.join("torrents");
            let path = dir.join(format!("{id}.torrent"));
            write_private(&dir, &path, bytes).map_err(|e| DaemonError::Internal(format!("{}: {e}", path.display())))?;
            identifiers.insert(0, path.to_string_lossy().into_owned());
            torrent_file = Some(path);
        }
        let name = torrent_name.unwrap_or_else(|| guess_name(&identifiers[0]));
        let rec = DownloadRecord {
            id: id.clone(),
            identifiers,
            out_dir,
            backend: req.backend.clone(),
            name,
            disk_name: None,
            state: DownloadState::Queued,
            bytes_total: 0,
            bytes_done: 0,
            files: Vec::new(),
            error: None,
            sources: Vec::new(),
            torrent_file,
            added_at: seedbook::now(),
            completed_at: None,
            max_download_rate,
            file_selection,
            sequential: req.sequential,
        };
        inner.downloads.push(Dl::new(rec, &self.host));
        self.start_queued(&mut inner);
        self.save_locked(&mut inner);
        let view =
            inner.downloads.iter().find(|d| d.rec.id == id).map(|d| self.view(d)).ok_or_else(|| not_found(&id))?;
        drop(inner);
        if view.state == DownloadState::Queued {
            // (one that started at once went out as it started)
            self.emit(change("download", &view));
        }
        Ok(view)
    }

    /// Pauses a queued or running download: its requests in flight are cancelled.
    pub async fn pause(self: &Arc<Self>, id: &str) -> Result<DownloadView, DaemonError> {
        let (view, task) = {
            let mut inner = self.lock();
            let d = inner.downloads.iter_mut().find(|d| d.rec.id == id).ok_or_else(|| not_found(id))?;
            match d.rec.state {
                DownloadState::Queued | DownloadState::Running => {}
                DownloadState::Paused => {
                    let v = self.view(d);
                    return Ok(v);
                }
                s => {
                    return Err(DaemonError::Conflict(format!("download {id} is {}: nothing to pause", state_name(s))))
                }
            }
            d.rec.state = DownloadState::Paused;
            d.gen = 0;
            d.live.speed = 0;
            d.live.samples.clear();
            d.live.dirty = false;
            let task = d.task.take();
            let view = self.view(d);
            self.save_locked(&mut inner);
            (view, task)
        };
        self.emit(change("download", &view));
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        self.schedule();
        Ok(view)
    }

    /// Queues a paused or failed download again.
    pub fn resume(self: &Arc<Self>, id: &str) -> Result<DownloadView, DaemonError> {
        let view = {
            let mut inner = self.lock();
            let d = inner.downloads.iter_mut().find(|d| d.rec.id == id).ok_or_else(|| not_found(id))?;
            if matches!(d.rec.state, DownloadState::Paused | DownloadState::Failed) {
                d.rec.state = DownloadState::Queued;
                d.rec.error = None;
            }
            self.start_queued(&mut inner);
            self.save_locked(&mut inner);
            inner.downloads.iter().find(|d| d.rec.id == id).map(|d| self.view(d)).ok_or_else(|| not_found(id))?
        };
        self.emit(change("download", &view));
        Ok(view)
    }

    /// Changes a download's options. A new rate holds at once, even mid-run; a new file
    /// selection or order restarts a running download's run, which resumes from what is
    /// verified on disk (the files no longer chosen keep what they have and get no more).
    pub async fn update(self: &Arc<Self>, id: &str, u: Update) -> Result<DownloadView, DaemonError> {
        let file_selection = u.file_selection.map(|s| checked_selection(s.as_deref())).transpose()?;
        let (view, task) = {
            let mut inner = self.lock();
            let d = inner.downloads.iter_mut().find(|d| d.rec.id == id).ok_or_else(|| not_found(id))?;
            let reorder = (file_selection.is_some() && file_selection.as_ref() != Some(&d.rec.file_selection))
                || u.sequential.is_some_and(|s| s != d.rec.sequential);
            if reorder && d.rec.state == DownloadState::Completed {
                return Err(DaemonError::Conflict(format!(
                    "download {id} is completed: add it again to choose other files"
                )));
            }
            if let Some(rate) = u.max_download_rate {
                let rate = rate.filter(|&r| r > 0);
                d.rec.max_download_rate = rate;
                d.rate.set_bytes_per_sec(rate.unwrap_or(0));
            }
            if let Some(sel) = file_selection {
                d.rec.file_selection = sel;
            }
            if let Some(seq) = u.sequential {
                d.rec.sequential = seq;
            }
            let mut task = None;
            if reorder && d.rec.state == DownloadState::Running {
                // Its run ends here; the queue starts a new one with the new choice.
                d.rec.state = DownloadState::Queued;
                d.gen = 0;
                d.live = Live { resumed: d.live.resumed, ..Live::default() };
                task = d.task.take();
            }
            let view = self.view(d);
            self.save_locked(&mut inner);
            (view, task)
        };
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
            self.schedule();
            return self.download(id);
        }
        self.emit(change("download", &view));
        Ok(view)
    }

    /// Forgets a download, stopping it first; with `delete_files`, its files go too (with their
    /// `.part` and resume files).
    pub async fn delete(self: &Arc<Self>, id: &str, delete_files: bool) -> Result<(), DaemonError> {
        let (dl, task) = {
            let mut inner = self.lock();
            let at = inner.downloads.iter().position(|d| d.rec.id == id).ok_or_else(|| not_found(id))?;
            let mut dl = inner.downloads.remove(at);
            let task = dl.task.take();
            self.save_locked(&mut inner);
            (dl, task)
        };
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        if let Some(t) = &dl.rec.torrent_file {
            let _ = std::fs::remove_file(t);
        }
        if delete_files {
            remove_files(&dl.rec);
        }
        self.emit(Change { kind: "removed", data: serde_json::json!({ "id": id, "kind": "download" }).to_string() });
        self.schedule();
        Ok(())
    }

    /// Starts queued downloads while slots are free.
    fn schedule(self: &Arc<Self>) {
        let mut inner = self.lock();
        if self.start_queued(&mut inner) {
            self.save_locked(&mut inner);
        }
    }

    fn start_queued(self: &Arc<Self>, inner: &mut Inner) -> bool {
        let mut running = inner.downloads.iter().filter(|d| d.rec.state == DownloadState::Running).count();
        let mut started = Vec::new();
        for i in 0..inner.downloads.len() {
            if running >= self.opts.max_active.max(1) {
                break;
            }
            if inner.downloads[i].rec.state != DownloadState::Queued {
                continue;
            }
            inner.gen += 1;
            let gen = inner.gen;
            let d = &mut inner.downloads[i];
            d.rec.state = DownloadState::Running;
            d.gen = gen;
            d.live = Live { dirty: true, ..Live::default() };
            d.task = Some(self.spawn_run(d, gen));
            running += 1;
            started.push(self.view(d));
        }
        for v in &started {
            self.emit(change("download", v));
        }
        !started.is_empty()
    }

    fn spawn_run(self: &Arc<Self>, d: &Dl, gen: u64) -> JoinHandle<()> {
        let rec = &d.rec;
        let req = GetRequest {
            identifiers: rec.identifiers.clone(),
            out_dir: rec.out_dir.clone(),
            backend: rec.backend.clone(),
            connections: self.opts.connections.max(1),
            sha256: None,
            // (checked when it was given)
            files: rec.file_selection.as_deref().and_then(|s| FileSelection::parse(s).ok()),
            sequential: rec.sequential,
            download_rate: Some(d.rate.clone()),
            playhead: Some(d.playhead.clone()),
        };
        let id = rec.id.clone();
        let (me, host) = (self.clone(), self.host.clone());
        let (me2, id2) = (self.clone(), id.clone());
        let on_event = Arc::new(move |e: EngineEvent| me2.on_engine_event(&id2, gen, e));
        tokio::spawn(async move {
            let _ = std::fs::create_dir_all(&req.out_dir);
            let outcome = host.get(&req, on_event).await;
            me.finished(&id, gen, outcome);
        })
    }

    fn on_engine_event(&self, id: &str, gen: u64, e: EngineEvent) {
        let mut inner = self.lock();
        let Some(d) = inner.downloads.iter_mut().find(|d| d.rec.id == id && d.gen == gen) else { return };
        let live = &mut d.live;
        match e {
            EngineEvent::Started { name, total, resumed, sources } => {
                if !name.is_empty() {
                    d.rec.name = text::line(&name);
                    d.rec.disk_name = Some(chiral_sdk::engine::safe_name(&name));
                }
                d.rec.bytes_total = total;
                d.rec.bytes_done = resumed;
                live.resumed = Some(resumed);
                live.samples.clear();
                live.sources = sources.into_iter().map(|l| self.live_source(l)).collect();
            }
            EngineEvent::Piece { source, bytes } => {
                d.rec.bytes_done += bytes;
                if d.rec.bytes_total > 0 {
                    d.rec.bytes_done = d.rec.bytes_done.min(d.rec.bytes_total);
                }
                if let Some(s) = live.sources.get_mut(source) {
                    s.bytes += bytes;
                }
            }
            EngineEvent::SourceAdded { label } => live.sources.push(self.live_source(label)),
            EngineEvent::SourceDropped { label, reason } => {
                if let Some(s) = live.sources.iter_mut().find(|s| s.label == label && s.dropped.is_none()) {
                    s.dropped = Some(text::line(&reason));
                }
            }
            EngineEvent::Adopted { done, .. } => d.rec.bytes_done = done,
            EngineEvent::Peers { source, peers } => {
                if let Some(s) = live.sources.get_mut(source) {
                    s.peers = PeerLine::from_stats(peers).iter().take(MAX_LIVE_PEERS).map(peer_view).collect();
                }
            }
            _ => {}
        }
        live.dirty = true;
        inner.unsaved = true;
    }

    fn live_source(&self, label: String) -> LiveSource {
        let plugin = match self.host.registry.route(&label, None) {
            Ok(e) if label.contains("://") => e.name().unwrap_or_default().to_string(),
            _ => label.split(':').next().unwrap_or_default().to_string(),
        };
        LiveSource {
            label: text::line(&redact(&label)),
            plugin,
            bytes: 0,
            dropped: None,
            speed: 0,
            at_tick: 0,
            peers: Vec::new(),
        }
    }

    fn finished(self: &Arc<Self>, id: &str, gen: u64, outcome: Result<crate::session::GetReport, HostError>) {
        let view = {
            let mut inner = self.lock();
            let Some(d) = inner.downloads.iter_mut().find(|d| d.rec.id == id && d.gen == gen) else { return };
            d.task = None;
            d.gen = 0;
            match outcome {
                Ok(r) => {
                    if let Some(p) = self.payments.get().cloned() {
                        // Off this task: the chain may be slow or down (the debt then stays
                        // owed, and the next settlement pays it).
                        tokio::spawn(async move { p.settle_before_exit().await });
                    }
                    d.rec.state = DownloadState::Completed;
                    if !r.name.is_empty() {
                        d.rec.name = text::line(&r.name);
                    }
                    d.rec.files = r.files.clone();
                    d.rec.bytes_total = r.bytes;
                    d.rec.bytes_done = r.bytes;
                    d.rec.completed_at = Some(seedbook::now());
                    d.rec.error = None;
                    d.rec.sources = r
                        .sources
                        .iter()
                        .map(|s| SourceView {
                            plugin: s.plugin.clone(),
                            identifier: text::line(&s.identifier),
                            bytes: s.bytes,
                            speed: s.speed,
                            peers: s.peers.iter().map(peer_view).collect(),
                            dropped: s.dropped.as_deref().map(text::line),
                        })
                        .collect();
                }
                Err(e) => {
                    d.rec.state = DownloadState::Failed;
                    d.rec.error = Some(text::line(&format!("{e:#}")));
                }
            }
            // What the run resumed from stays visible after it ends.
            d.live = Live { resumed: d.live.resumed, ..Live::default() };
            let view = self.view(d);
            self.save_locked(&mut inner);
            view
        };
        self.emit(change("download", &view));
        self.schedule();
    }

    fn view(&self, d: &Dl) -> DownloadView {
        let r = &d.rec;
        let running = r.state == DownloadState::Running;
        let live_sources: Vec<SourceView> = d
            .live
            .sources
            .iter()
            .map(|s| SourceView {
                plugin: s.plugin.clone(),
                identifier: s.label.clone(),
                bytes: s.bytes,
                speed: s.speed,
                peers: s.peers.clone(),
                dropped: s.dropped.clone(),
            })
            .collect();
        let sources = if !r.sources.is_empty() {
            r.sources.clone()
        } else if running && !live_sources.is_empty() {
            live_sources
        } else {
            // Not described yet: the identifiers, each with the plugin that claims it.
            r.identifiers
                .iter()
                .map(|i| SourceView {
                    plugin: self
                        .host
                        .registry
                        .route(i, r.backend.as_deref())
                        .ok()
                        .and_then(|e| e.name())
                        .unwrap_or_default()
                        .to_string(),
                    identifier: text::line(&redact(i)),
                    bytes: 0,
                    speed: 0,
                    peers: Vec::new(),
                    dropped: None,
                })
                .collect()
        };
        let speed = if running { d.live.speed } else { 0 };
        let left = r.bytes_total.saturating_sub(r.bytes_done);
        let eta_seconds = match r.state {
            DownloadState::Completed => Some(0),
            _ if running && speed > 0 && r.bytes_total > 0 => Some(left.div_ceil(speed)),
            _ => None,
        };
        let peers = if running {
            d.live.sources.iter().filter(|s| s.dropped.is_none()).count() as u64
        } else if r.state == DownloadState::Completed {
            r.sources.iter().map(|s| (s.peers.len() as u64).max(u64::from(s.bytes > 0))).sum()
        } else {
            0
        };
        DownloadView {
            id: r.id.clone(),
            name: r.name.clone(),
            state: r.state,
            bytes_total: r.bytes_total,
            bytes_done: r.bytes_done,
            bytes_resumed: d.live.resumed,
            speed,
            eta_seconds,
            peers,
            identifiers: r.identifiers.iter().map(|i| redact(i)).collect(),
            out_dir: r.out_dir.clone(),
            files: r.files.clone(),
            error: r.error.clone(),
            sources,
            added_at: r.added_at,
            completed_at: r.completed_at,
            max_download_rate: r.max_download_rate,
            file_selection: r.file_selection.clone(),
            sequential: r.sequential,
        }
    }

    /// Once a second: speeds, progress events of the downloads that moved, seed changes, and
    /// the state file when progress changed.
    fn tick(&self) {
        let now = Instant::now();
        let live_seeds = self.host.list_seeds();
        let mut changes = Vec::new();
        let mut inner = self.lock();
        for d in inner.downloads.iter_mut().filter(|d| d.rec.state == DownloadState::Running) {
            let live = &mut d.live;
            live.samples.push_back((now, d.rec.bytes_done));
            while live.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > SPEED_WINDOW) {
                live.samples.pop_front();
            }
            let speed = match (live.samples.front(), live.samples.back()) {
                (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                    (b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()) as u64
                }
                _ => 0,
            };
            if speed != live.speed {
                live.speed = speed;
                live.dirty = true;
            }
            for s in &mut live.sources {
                // Bytes since the last tick (a second), averaged with the speed before.
                let fresh = s.bytes.saturating_sub(s.at_tick) * TICK_HZ;
                s.at_tick = s.bytes;
                let smoothed = (s.speed + fresh) / 2;
                if smoothed != s.speed {
                    s.speed = smoothed;
                    live.dirty = true;
                }
            }
        }
        let mut stopped_outside = false;
        for s in inner.seeds.iter_mut() {
            let Some(live_id) = s.live_id.clone() else { continue };
            match live_seeds.iter().find(|l| l.plugin == s.entry.plugin && l.id == live_id) {
                Some(l) => {
                    if l.bytes_served != s.served {
                        s.served = l.bytes_served;
                        changes.push(("seed", s.entry.id.clone()));
                    }
                }
                None => {
                    // Stopped from outside (`chiral stop`): not served again after a restart.
                    s.live_id = None;
                    s.entry.running = false;
                    stopped_outside = true;
                    changes.push(("seed", s.entry.id.clone()));
                }
            }
        }
        for d in inner.downloads.iter_mut().filter(|d| d.live.dirty) {
            d.live.dirty = false;
            changes.push(("download", d.rec.id.clone()));
        }
        if inner.unsaved || stopped_outside {
            self.save_locked(&mut inner);
        }
        let out: Vec<Change> = changes
            .into_iter()
            .filter_map(|(kind, id)| match kind {
                "download" => inner.downloads.iter().find(|d| d.rec.id == id).map(|d| change(kind, &self.view(d))),
                _ => inner.seeds.iter().find(|s| s.entry.id == id).map(|s| change(kind, &seed_view(s, &live_seeds))),
            })
            .collect();
        drop(inner);
        for c in out {
            self.emit(c);
        }
    }

    // ---- seeds --------------------------------------------------------------------------------

    pub fn seeds(&self) -> Vec<SeedView> {
        let live = self.host.list_seeds();
        let inner = self.lock();
        inner.seeds.iter().map(|s| seed_view(s, &live)).collect()
    }

    pub fn seed_by_id(&self, id: &str) -> Result<SeedView, DaemonError> {
        let live = self.host.list_seeds();
        let inner = self.lock();
        inner
            .seeds
            .iter()
            .find(|s| s.entry.id == id)
            .map(|s| seed_view(s, &live))
            .ok_or_else(|| DaemonError::NotFound(format!("no seed {}", text::line(id))))
    }

    /// Seeds `path` through each plugin of `via` (every seeding plugin when empty): one seed
    /// per plugin.
    pub async fn add_seed(
        self: &Arc<Self>,
        path: &Path,
        via: &[String],
        options: &[(String, String)],
    ) -> Result<Vec<SeedView>, DaemonError> {
        if !path.is_absolute() {
            return Err(DaemonError::BadRequest(format!("path must be absolute: {}", path.display())));
        }
        let lines = self.host.seed(path, via, options).await.map_err(DaemonError::host)?;
        let mut ids = Vec::new();
        {
            let mut inner = self.lock();
            for l in &lines {
                let canonical = l.path.clone();
                let existing = inner.seeds.iter().position(|s| s.entry.path == canonical && s.entry.plugin == l.plugin);
                let at = match existing {
                    Some(at) => at,
                    None => {
                        let id = Self::new_id(&mut inner, "s");
                        let entry = SeedEntry {
                            id,
                            path: canonical.clone(),
                            plugin: l.plugin.clone(),
                            options: options.to_vec(),
                            running: true,
                            identifiers: Vec::new(),
                            added_at: seedbook::now(),
                        };
                        inner.seeds.push(Sd { entry, live_id: None, error: None, served: 0 });
                        inner.seeds.len() - 1
                    }
                };
                let s = &mut inner.seeds[at];
                s.entry.running = true;
                s.entry.identifiers = l.identifiers.clone();
                s.entry.options = options.to_vec();
                s.live_id = Some(l.id.clone());
                s.error = None;
                s.served = l.bytes_served;
                ids.push(s.entry.id.clone());
            }
            self.save_locked(&mut inner);
        }
        for l in &lines {
            self.control.record(&l.path, std::slice::from_ref(&l.plugin), options, std::slice::from_ref(l));
        }
        let views: Vec<SeedView> = ids.iter().filter_map(|id| self.seed_by_id(id).ok()).collect();
        for v in &views {
            self.emit(change("seed", v));
        }
        Ok(views)
    }

    /// Serves a stopped seed again.
    pub async fn start_seed(self: &Arc<Self>, id: &str) -> Result<SeedView, DaemonError> {
        let (path, plugin, options) = {
            let inner = self.lock();
            let s = inner.seeds.iter().find(|s| s.entry.id == id).ok_or_else(|| not_found_seed(id))?;
            (s.entry.path.clone(), s.entry.plugin.clone(), s.entry.options.clone())
        };
        if self.seed_by_id(id)?.state == "running" {
            return self.seed_by_id(id);
        }
        self.add_seed(Path::new(&path), &[plugin], &options).await?;
        self.seed_by_id(id)
    }

    /// Stops a seed (it stays listed, stopped, and is not served after a restart).
    pub fn stop_seed(&self, id: &str) -> Result<SeedView, DaemonError> {
        let (plugin, live_id, path) = {
            let mut inner = self.lock();
            let s = inner.seeds.iter_mut().find(|s| s.entry.id == id).ok_or_else(|| not_found_seed(id))?;
            s.entry.running = false;
            let r = (s.entry.plugin.clone(), s.live_id.take(), s.entry.path.clone());
            self.save_locked(&mut inner);
            r
        };
        if let Some(live_id) = live_id {
            if let Err(e) = self.host.stop_seed(&plugin, &live_id) {
                tracing::warn!("stopping seed {id}: {e}");
            }
            let stopped = LiveSeed {
                plugin: plugin.clone(),
                id: live_id,
                path,
                identifiers: Vec::new(),
                bytes_served: 0,
                pid: std::process::id(),
                started_at: 0,
            };
            self.control.after_stop(&[stopped], &self.control.seeds());
        }
        let v = self.seed_by_id(id)?;
        self.emit(change("seed", &v));
        Ok(v)
    }

    /// Stops a seed if it runs and forgets it (the file stays).
    pub fn remove_seed(&self, id: &str) -> Result<(), DaemonError> {
        self.stop_seed(id)?;
        let entry = {
            let mut inner = self.lock();
            let at = inner.seeds.iter().position(|s| s.entry.id == id).ok_or_else(|| not_found_seed(id))?;
            let s = inner.seeds.remove(at);
            self.save_locked(&mut inner);
            s.entry
        };
        let book = SeedBook::new(&self.opts.data_dir);
        let pid = std::process::id();
        let forget = |r: &seedbook::SeedRecord| {
            r.path == entry.path
                && r.via == [entry.plugin.clone()]
                && (r.pid.is_none() || r.pid == Some(pid))
                && r.seeds.iter().all(|s| s.plugin == entry.plugin)
        };
        if book.load().iter().any(forget) {
            if let Err(e) = book.update(|v| v.retain(|r| !forget(r))) {
                tracing::warn!("seed list not updated: {e}");
            }
        }
        self.emit(Change { kind: "removed", data: serde_json::json!({ "id": id, "kind": "seed" }).to_string() });
        Ok(())
    }

    /// The seeds that ran when the daemon last stopped, served again.
    async fn restore_seeds(self: &Arc<Self>) {
        let todo: Vec<SeedEntry> = {
            let inner = self.lock();
            inner.seeds.iter().filter(|s| s.entry.running && s.live_id.is_none()).map(|s| s.entry.clone()).collect()
        };
        for SeedEntry { id, path, plugin, options, .. } in todo {
            if let Err(e) = self.add_seed(Path::new(&path), std::slice::from_ref(&plugin), &options).await {
                tracing::warn!("seed {id} ({path} through {plugin}) not served again: {e}");
                let v = {
                    let mut inner = self.lock();
                    let Some(s) = inner.seeds.iter_mut().find(|s| s.entry.id == id) else { continue };
                    s.error = Some(e.to_string());
                    s.entry.id.clone()
                };
                if let Ok(v) = self.seed_by_id(&v) {
                    self.emit(change("seed", &v));
                }
            }
        }
    }

    // ---- the state file -----------------------------------------------------------------------

    fn saved(inner: &Inner) -> Saved {
        Saved {
            next_id: inner.next_id,
            downloads: inner.downloads.iter().map(|d| d.rec.clone()).collect(),
            seeds: inner.seeds.iter().map(|s| s.entry.clone()).collect(),
        }
    }

    /// Hands the state to the writer. The snapshot is taken under the state lock, so the
    /// writer receives them in the order of the changes; the file is written on the writer's
    /// thread, never under the state lock.
    fn save_locked(&self, inner: &mut MutexGuard<'_, Inner>) {
        inner.unsaved = false;
        // A running download is written as running: a restart queues it again.
        let saved = Self::saved(inner);
        match serde_json::to_string_pretty(&saved) {
            Ok(text) => self.writer.save(text),
            Err(e) => tracing::warn!("daemon state not saved: {e}"),
        }
    }

    /// Saves the state now and waits until it is on disk.
    fn save(&self) {
        {
            let mut inner = self.lock();
            self.save_locked(&mut inner);
        }
        self.writer.flush();
    }
}

/// The API token of a data dir: `<data dir>/daemon.token` (mode 0600), made on first use and
/// kept across restarts (a page's cookie and a script's copy stay valid).
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    use std::{io::Read as _, os::unix::fs::PermissionsExt as _};
    let path = data_dir.join("daemon.token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = text.trim();
        if t.len() >= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric()) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(t.to_string());
        }
    }
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let token = hex::encode(raw);
    let tmp = data_dir.join("daemon.token.tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private(data_dir, &tmp, format!("{token}\n").as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

/// Holds `<data dir>/daemon.lock` for the life of the process: one daemon per data dir.
pub fn lock_data_dir(data_dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::{fs::OpenOptionsExt as _, io::AsRawFd as _};
    let path = data_dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
    // SAFETY: flock on a descriptor we own; the lock goes with the file when it closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another chiral daemon runs with the data dir {}", data_dir.display()),
        ));
    }
    Ok(f)
}

/// The page's URL for a bound address: loopback when bound to every address.
pub fn page_url(bound: std::net::SocketAddr, token: &str) -> String {
    let ip = bound.ip();
    let host = match ip {
        _ if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        _ if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    };
    format!("http://{host}:{}/#token={token}", bound.port())
}

fn change<T: Serialize>(kind: &'static str, v: &T) -> Change {
    Change { kind, data: serde_json::to_string(v).unwrap_or_default() }
}

fn not_found(id: &str) -> DaemonError {
    DaemonError::NotFound(format!("no download {}", text::line(id)))
}

fn not_found_seed(id: &str) -> DaemonError {
    DaemonError::NotFound(format!("no seed {}", text::line(id)))
}

fn state_name(s: DownloadState) -> &'static str {
    match s {
        DownloadState::Queued => "queued",
        DownloadState::Running => "running",
        DownloadState::Paused => "paused",
        DownloadState::Completed => "completed",
        DownloadState::Failed => "failed",
    }
}

fn seed_view(s: &Sd, live: &[crate::session::SeedLine]) -> SeedView {
    let running = s.live_id.as_ref().and_then(|id| live.iter().find(|l| l.plugin == s.entry.plugin && &l.id == id));
    SeedView {
        id: s.entry.id.clone(),
        path: s.entry.path.clone(),
        plugin: s.entry.plugin.clone(),
        state: if running.is_some() { "running" } else { "stopped" },
        identifiers: running.map_or_else(|| s.entry.identifiers.clone(), |l| l.identifiers.clone()),
        bytes_served: running.map_or(s.served, |l| l.bytes_served),
        error: s.error.clone(),
        added_at: s.entry.added_at,
        max_upload_rate: s.entry.options.iter().find(|(k, _)| k == "upload_rate").and_then(|(_, v)| v.parse().ok()),
    }
}

/// A name to show before the content describes itself: a magnet's `dn`, a URL's last path
/// segment, a file's name.
pub fn guess_name(identifier: &str) -> String {
    if let Ok(m) = chiral_sdk::magnet::Magnet::parse(identifier) {
        return m.display_name().unwrap_or_else(|| m.info_hash_hex());
    }
    let path = identifier.split(['?', '#']).next().unwrap_or(identifier);
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or(path);
    let decoded = String::from_utf8_lossy(&chiral_sdk::magnet::percent_decode(last)).into_owned();
    if decoded.is_empty() {
        text::line(identifier)
    } else {
        text::line(&decoded)
    }
}

/// The `name` in a `.torrent`'s info dictionary, made safe as a file name.
pub fn torrent_name(bytes: &[u8]) -> Option<String> {
    use chiral_sdk::bencode::{decode, Limits};
    let v = decode(bytes, Limits::TORRENT).ok()?;
    let name = v.get("info")?.get("name")?.as_bytes()?;
    Some(chiral_sdk::engine::safe_name(&String::from_utf8_lossy(name)))
}

fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

/// Removes what a download wrote: its files when complete, else its `.part` files and resume
/// state. Only names the download made are touched: a folder is emptied of its `.part` files
/// and removed only when nothing else is left in it.
fn remove_files(rec: &DownloadRecord) {
    for f in &rec.files {
        if f.starts_with(&rec.out_dir) {
            let _ = std::fs::remove_file(f);
            prune_empty_dirs(f.parent(), &rec.out_dir);
        }
    }
    let Some(name) = rec.disk_name.as_deref().filter(|n| !n.is_empty() && *n != "." && *n != "..") else { return };
    let base = rec.out_dir.join(name);
    for suffix in [".part", ".chiral-resume", ".chiral-resume.tmp"] {
        let mut p = base.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    if base.is_dir() && !base.is_symlink() {
        remove_parts_in(&base);
        let _ = std::fs::remove_dir(&base);
    }
}

fn remove_parts_in(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            remove_parts_in(&p);
            let _ = std::fs::remove_dir(&p);
        } else if t.is_file() && p.extension().is_some_and(|x| x == "part") {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn prune_empty_dirs(mut dir: Option<&Path>, stop: &Path) {
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(dir.path()).unwrap();
        assert_eq!(t.len(), 48);
        let mode = std::fs::metadata(dir.path().join("daemon.token")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t);
        assert_eq!(page_url("0.0.0.0:7878".parse().unwrap(), "x"), "http://127.0.0.1:7878/#token=x");
        let _held = lock_data_dir(dir.path()).unwrap();
        assert!(lock_data_dir(dir.path()).is_err());
    }

    #[test]
    fn names_before_the_content_says_its_own() {
        assert_eq!(guess_name("http://h/a/b%20c.bin?x=1"), "b c.bin");
        assert_eq!(guess_name(&format!("magnet:?xt=urn:btih:{}&dn=f.iso", "ab".repeat(20))), "f.iso");
        assert_eq!(guess_name(&format!("magnet:?xt=urn:btih:{}", "ab".repeat(20))), "ab".repeat(20));
        assert_eq!(guess_name("http://h/x%1b%5b2J"), "x\\u{1b}[2J");
    }

    #[test]
    fn torrent_names_are_safe_file_names() {
        let t = b"d4:infod6:lengthi1e4:name6:../a/b12:piece lengthi16384e6:pieces0:ee";
        assert_eq!(torrent_name(t).as_deref(), Some(".._a_b"));
        assert_eq!(torrent_name(b"d4:infodee"), None);
        assert_eq!(torrent_name(b"not bencode"), None);
    }

    #[test]
    fn deleting_files_touches_only_what_the_download_made() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_path_buf();
        std::fs::write(out.join("a.bin.part"), b"x").unwrap();
        std::fs::write(out.join("a.bin.chiral-resume"), b"{}").unwrap();
        std::fs::write(out.join("other.bin"), b"keep").unwrap();
        std::fs::create_dir_all(out.join("multi/sub")).unwrap();
        std::fs::write(out.join("multi/sub/f.part"), b"x").unwrap();
        std::fs::write(out.join("multi/mine.txt"), b"keep").unwrap();
        let mut rec = DownloadRecord {
            id: "d1".into(),
            identifiers: vec![],
            out_dir: out.clone(),
            backend: None,
            name: "a.bin".into(),
            disk_name: Some("a.bin".into()),
            state: DownloadState::Paused,
            bytes_total: 0,
            bytes_done: 0,
            files: vec![],
            error: None,
            sources: vec![],
            torrent_file: None,
            added_at: 0,
            completed_at: None,
            max_download_rate: None,
            file_selection: None,
            sequential: false,
        };
        remove_files(&rec);
        assert!(!out.join("a.bin.part").exists() && !out.join("a.bin.chiral-resume").exists());
        assert!(out.join("other.bin").exists());
        rec.disk_name = Some("multi".into());
        remove_files(&rec);
        assert!(!out.join("multi/sub").exists(), "an emptied folder goes");
        assert!(out.join("multi/mine.txt").exists(), "a file the download did not make stays");
        rec.disk_name = Some("..".into());
        remove_files(&rec);
        assert!(out.exists());
    }
}
