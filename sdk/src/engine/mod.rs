//! The multi-source engine: one content, N sources, every piece verified against one trust
//! root.
//!
//! Parts, each small enough to hold in one's head:
//! - [`scheduler`]: which source fetches which piece, a deterministic state machine (sources,
//!   pieces, time passed in, decisions out), unit-tested without I/O;
//! - `storage`: the `.part` files at content offsets, renamed on completion;
//! - `workers`: threads that verify and write pieces and hash whole files, off the async
//!   threads;
//! - this module: the thin driver. It decides the trust root, turns scheduler decisions into
//!   `fetch` calls, feeds their outcomes back, adopts hashes that arrive late, and reports.
//!
//! **The trust root.** What the download must equal comes from a source marked
//! [`EngineSource::authority`]: the source the host opened for an identifier the user gave
//! that carries a hash (a torrent's info dictionary, a `chiral:` Merkle root), never from
//! whichever source answers first. Every other source's bytes are checked against its piece
//! hashes. When an authority is expected ([`Options::await_authority`]) but not open yet (a
//! magnet still fetching its metadata), the download starts from the others into a provisional
//! layout; when the authority arrives its hashes are adopted, what is on disk is verified
//! again, the sources whose pieces fail are blamed, and the download cannot complete before
//! that. Without any hash (plain URLs) the result is "unverified" unless `--sha256` is given.
//! The engine is runtime-agnostic (plain futures and a ticker thread).

pub mod playhead;
mod scheduler;
mod storage;
#[cfg(test)]
mod tests;
mod workers;

pub use scheduler::{Decision, Limits, Scheduler};

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{
    future::{AbortHandle, Abortable, Either},
    stream::FuturesUnordered,
    FutureExt as _, StreamExt as _,
};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::{
    abi::{ContentInfo, ErrorKind, HashKind, PluginError},
    layout::Layout,
    plugin::PieceSource,
    resume::{state_path, ResumeState},
    verify::PieceVerifier,
};
use storage::Storage;
use workers::Workers;

/// Engine settings for one download.
#[derive(Clone, Debug)]
pub struct Options {
    /// Folder the content goes in.
    pub out_dir: PathBuf,
    /// Concurrent requests per source.
    pub slots_per_source: usize,
    /// Whole-content SHA-256 the result must have.
    pub sha256: Option<[u8; 32]>,
    /// Consecutive failed requests after which a source is dropped.
    pub max_failures: u32,
    /// Pieces failing verification after which a source is dropped.
    pub max_bad_pieces: u32,
    /// An identifier the user gave carries a hash, so an [`EngineSource::authority`] is on its
    /// way: the download never completes without its hashes.
    pub await_authority: bool,
    /// How long to wait for that authority before starting provisionally with the others.
    pub authority_wait: Duration,
    /// Shared download rate: every request reserves its bytes here before it starts.
    pub download_rate: Option<Arc<crate::rate::RateLimiter>>,
    /// Only these files of a multi-file content: the others are neither created nor written
    /// (a piece they share with a wanted file is fetched and verified whole, and only the
    /// wanted file's bytes of it are written).
    pub files: Option<crate::select::FileSelection>,
    /// Pieces in order, lowest first, instead of rarest first (a file can be played while it
    /// downloads).
    pub sequential: bool,
    /// A reader playing the content while it downloads: the engine publishes what is on disk
    /// into it and fetches the pieces under its cursor first.
    pub playhead: Option<Arc<playhead::Playhead>>,
}

impl Options {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            slots_per_source: 8,
            sha256: None,
            max_failures: 3,
            max_bad_pieces: 2,
            await_authority: false,
            authority_wait: Duration::from_secs(3),
            download_rate: None,
            files: None,
            sequential: false,
            playhead: None,
        }
    }
}

/// One source of a download, with what the driver needs to know of it.
#[derive(Clone)]
pub struct EngineSource {
    pub source: Arc<dyn PieceSource>,
    /// The identifier it serves, as given (reports).
    pub identifier: String,
    /// The plugin that opened it (reports).
    pub plugin: String,
    /// Its description is what the user asked for: the download adopts its length, pieces and
    /// hashes. Only a source opened for an identifier that carries a hash, by the plugin that
    /// won that identifier, may be one.
    pub authority: bool,
    /// Preference among sources, higher first (a proven Chiral peer above a plain mirror).
    pub reputation: i32,
    /// Its requests share connections (capability `PIPELINED`): how many it keeps
    /// outstanding follows its bandwidth x delay rather than `--connections`.
    pub pipelined: bool,
}

impl EngineSource {
    /// The same, with its requests sharing connections (capability `PIPELINED`) or not.
    pub fn pipelined(mut self, on: bool) -> Self {
        self.pipelined = on;
        self
    }

    /// A source as a plugin running its own download has it: an authority when it has hashes.
    pub fn from_source(source: Arc<dyn PieceSource>) -> Self {
        let info = source.info();
        Self {
            authority: info.hash_kind != HashKind::None,
            identifier: info.label.to_string(),
            plugin: String::new(),
            reputation: 0,
            pipelined: false,
            source,
        }
    }
}

impl std::fmt::Debug for EngineSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSource")
            .field("identifier", &self.identifier)
            .field("plugin", &self.plugin)
            .field("authority", &self.authority)
            .finish()
    }
}

/// What the engine reports while it works (more kinds may come: match with a `_` arm).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum EngineEvent {
    Started {
        name: String,
        total: u64,
        resumed: u64,
        sources: Vec<String>,
    },
    /// A piece from source `source` (index into `Started::sources`) was verified and written.
    Piece {
        source: usize,
        bytes: u64,
    },
    SourceDropped {
        label: String,
        reason: String,
    },
    /// A source that opened late joined the download (index = its order of arrival).
    SourceAdded {
        label: String,
    },
    /// The trust root arrived with `label` (a magnet's metadata): what was on disk was checked
    /// against it, and `done` bytes of it stand.
    Adopted {
        label: String,
        done: u64,
    },
    /// Every byte is on disk but nothing has vouched for it yet: the download waits for the
    /// source of an identifier that names its content by a hash (a magnet's metadata).
    AwaitingTrustRoot,
    /// All pieces are in; the whole-file check (if any) and renames follow.
    Finishing,
    /// The peers behind source `source` (index as in `Piece`) as it reports them now; sent
    /// about once a second for each live source that has any.
    Peers {
        source: usize,
        peers: Vec<crate::abi::PeerStat>,
    },
}

/// Per-source totals at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReport {
    pub label: String,
    pub identifier: String,
    pub plugin: String,
    pub bytes: u64,
    pub pieces: u32,
    pub failures: u32,
    pub bad_pieces: u32,
    /// Why the source was dropped, if it was.
    pub dropped: Option<String>,
    /// The peers behind the source (swarm members, providers) as the source reports them at
    /// the end; empty for single-server sources.
    pub peers: Vec<crate::abi::PeerStat>,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub files: Vec<PathBuf>,
    pub length: u64,
    /// Bytes already verified on disk before this run.
    pub resumed_bytes: u64,
    pub sources: Vec<SourceReport>,
    pub seconds: f64,
    /// Every piece was checked against hashes from the trust root, or the whole result
    /// against `--sha256`. False only for plain byte ranges with neither.
    pub verified: bool,
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("no usable source: {0}")]
    NoSources(String),
    #[error("all sources failed: {0}")]
    AllFailed(String),
    #[error("{0}")]
    Layout(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0} already exists with other content; move it away to download again")]
    Exists(PathBuf),
    #[error("SHA-256 of the result is {got}, expected {want}")]
    Sha256Mismatch { got: String, want: String },
    #[error("nothing described the content the identifiers name ({0}), so no byte could be checked; what is on disk is kept to resume")]
    NoTrustRoot(String),
}

impl From<EngineError> for PluginError {
    fn from(e: EngineError) -> Self {
        let kind = match &e {
            EngineError::Io { .. } | EngineError::Exists(_) => ErrorKind::Io,
            EngineError::Sha256Mismatch { .. } | EngineError::Layout(_) => ErrorKind::Invalid,
            EngineError::NoSources(_) | EngineError::AllFailed(_) | EngineError::NoTrustRoot(_) => ErrorKind::Network,
        };
        PluginError::new(kind, e.to_string())
    }
}

fn io_err(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// A file or folder name safe to create inside the output folder: no separators, not `.`/`..`,
/// not empty.
pub fn safe_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c == '/' || c == '\\' || c == '\0' || c.is_control() { '_' } else { c }).collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() || trimmed == "." || trimmed == ".." {
        "download".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A relative path (with `/` separators) made safe: absolute roots, `.`, `..` and empty
/// components are dropped, so the result always stays inside the folder it is joined to.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in Path::new(path).components() {
        if let Component::Normal(c) = comp {
            out.push(safe_name(&c.to_string_lossy()));
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Removes a file when dropped unless disarmed: the `.part` of a stream that cannot resume
/// (no ranges), whether the download ends by error or by being cancelled.
pub struct RemoveOnDrop<'a> {
    pub path: &'a Path,
    pub armed: bool,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// Whether pieces a source checked itself (against `own`) need no second check against the
/// download's reference description `reference`: only when both are the same Merkle tree cut
/// the same way.
/// Whether the engine may take a source's pieces without hashing them again: the source says it
/// checks every piece ([`crate::abi::Source::checks_pieces`]) against hashes that are the
/// layout's. For a Merkle tree the root names the hashes; a list of SHA-1s counts only from the
/// authority, whose list *is* the layout (another source with the same list — a Chiral node
/// answering a magnet checks its own Merkle leaves, not these — is hashed by the engine).
fn skips_second_check(authority: bool, checks_pieces: bool, own: &ContentInfo, layout: &ContentInfo) -> bool {
    checks_pieces
        && (same_piece_hashes(own, layout)
            || (authority
                && own.hash_kind == HashKind::Sha1Pieces
                && layout.hash_kind == HashKind::Sha1Pieces
                && own.piece_length == layout.piece_length
                && !own.piece_hashes.is_empty()
                && own.piece_hashes == layout.piece_hashes))
}

fn same_piece_hashes(own: &ContentInfo, reference: &ContentInfo) -> bool {
    own.hash_kind == HashKind::Sha256Merkle
        && reference.hash_kind == HashKind::Sha256Merkle
        && own.root.len() == 32
        && own.root == reference.root
        && own.piece_length == reference.piece_length
        && own.piece_hashes == reference.piece_hashes
}

fn usable(i: &ContentInfo) -> bool {
    i.random_access && i.length_known
}

fn fingerprint(info: &ContentInfo, name: &str) -> String {
    match info.hash_kind {
        HashKind::None => format!("len:{}:{}", info.length, name),
        _ => {
            let mut h = Sha256::new();
            h.update(info.piece_hashes.as_slice());
            h.update(info.root.as_slice());
            hex::encode(h.finalize())
        }
    }
}

/// How a piece request ended, after verification and the write (done off the engine's task).
enum Landed {
    Written,
    Failed(PluginError),
    BadHash,
    Disk(EngineError),
}

/// (layout generation, source, piece, outcome)
type TaskResult = (u64, usize, u32, Landed);
type Task = futures::future::BoxFuture<'static, TaskResult>;

/// A source as the driver tracks it.
struct Src {
    es: EngineSource,
    info: ContentInfo,
    report: SourceReport,
    last_error: Option<String>,
    /// The source checked its pieces against the same hashes the layout uses: no second hash.
    pre_checked: bool,
    /// What the source was last told of the other live sources (`set_other_sources`).
    told_others: Option<u32>,
}

impl Src {
    fn new(es: EngineSource) -> Self {
        let info = es.source.info();
        let report = SourceReport {
            label: info.label.to_string(),
            identifier: es.identifier.clone(),
            plugin: es.plugin.clone(),
            bytes: 0,
            pieces: 0,
            failures: 0,
            bad_pieces: 0,
            dropped: None,
            peers: Vec::new(),
        };
        Self { es, info, report, last_error: None, pre_checked: false, told_others: None }
    }

    fn into_report(self) -> SourceReport {
        SourceReport { peers: self.es.source.peers(), ..self.report }
    }
}

/// Where the download's hashes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trust {
    /// Plain byte ranges, nothing to check pieces against (maybe a whole-file `--sha256`).
    Unverified,
    /// An authority is expected and has not arrived: the layout is provisional.
    Pending,
    /// The layout is the authority's, with its hashes.
    Held,
}

/// One layout in force: the reference description, its geometry and hashes, the files on
/// disk, the scheduler, and the resume state (saved when the phase ends for any reason).
struct Phase {
    info: ContentInfo,
    layout: Layout,
    verifier: Arc<PieceVerifier>,
    storage: Arc<Storage>,
    sched: Scheduler,
    /// Which source wrote each piece in this run (blamed if later hashes reject it).
    writer: Vec<Option<usize>>,
    state_file: PathBuf,
    fingerprint: String,
    last_save: Instant,
    dirty: bool,
    active: bool,
}

impl Phase {
    fn plan(
        info: &ContentInfo,
        name: &str,
        options: &Options,
    ) -> Result<(Layout, PieceVerifier, Storage), EngineError> {
        let bad = |e: String| EngineError::Layout(format!("{}: {e}", info.label));
        let layout = if info.piece_length > 0 {
            Layout::new(info.length, info.piece_length)
        } else {
            Layout::for_byte_ranges(info.length)
        }
        .map_err(|e| bad(e.to_string()))?;
        let verifier = PieceVerifier::for_content(info, layout.piece_count() as u64).map_err(|e| bad(e.to_string()))?;
        let storage = Storage::plan(&options.out_dir, name, info, options.files.as_ref())?;
        Ok((layout, verifier, storage))
    }

    fn new(
        info: ContentInfo,
        name: &str,
        layout: Layout,
        verifier: PieceVerifier,
        storage: Arc<Storage>,
        options: &Options,
    ) -> Self {
        let limits =
            Limits { max_failures: options.max_failures.max(1), max_bad_pieces: options.max_bad_pieces.max(1) };
        let mut sched = Scheduler::new(layout, limits);
        sched.set_sequential(options.sequential);
        for p in 0..layout.piece_count() {
            let (off, len) = layout.piece(p);
            if !storage.wants(off, len) {
                sched.mark_done(p);
            }
        }
        Self {
            fingerprint: fingerprint(&info, name),
            state_file: state_path(&options.out_dir.join(name)),
            info,
            layout,
            verifier: Arc::new(verifier),
            storage,
            sched,
            writer: vec![None; layout.piece_count() as usize],
            last_save: Instant::now(),
            dirty: true,
            active: true,
        }
    }

    fn save(&mut self) {
        if !self.active || !self.dirty {
            return;
        }
        let state = ResumeState::new(
            self.layout.length,
            self.layout.piece_length,
            self.fingerprint.clone(),
            self.sched.done_bits(),
        );
        // Losing the state only costs a re-download; never fail the transfer for it.
        let _ = state.save(&self.state_file);
        self.last_save = Instant::now();
        self.dirty = false;
    }

    /// Tells the reader (if any) the layout, the files and what is done.
    fn publish(&self, options: &Options) {
        if let Some(ph) = &options.playhead {
            let files = self
                .storage
                .files
                .iter()
                .map(|f| playhead::PlayFile {
                    final_path: f.final_path.clone(),
                    part: f.part.clone(),
                    offset: f.offset,
                    length: f.length,
                    wanted: f.wanted,
                })
                .collect();
            ph.publish(self.layout, files, self.sched.done_bits());
        }
    }

    fn done_bytes(&self) -> u64 {
        (0..self.layout.piece_count()).filter(|&i| self.sched.is_done(i)).map(|i| self.layout.piece(i).1).sum()
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.save();
    }
}

/// A stream of ticks every `every`, from a thread that ends with the receiver.
fn ticker(every: Duration) -> futures::channel::mpsc::Receiver<()> {
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    // Without the thread the download still runs, on request outcomes alone.
    let _ = std::thread::Builder::new().name("chiral-engine-tick".into()).spawn(move || loop {
        std::thread::sleep(every);
        if let Err(e) = tx.try_send(()) {
            if e.is_disconnected() {
                return;
            }
        }
    });
    rx
}

const TICK: Duration = Duration::from_millis(250);
/// How often the sources' availability is read again.
const REFRESH: Duration = Duration::from_secs(1);

enum Waited {
    Task(TaskResult),
    Late(Option<EngineSource>),
    Tick,
}

/// Downloads one content from `sources` into `options.out_dir`. A source with piece hashes is
/// an authority (see [`EngineSource::from_source`]).
pub async fn run(
    sources: Vec<Arc<dyn PieceSource>>,
    options: &Options,
    on_event: &(dyn Fn(EngineEvent) + Send + Sync),
) -> Result<Outcome, EngineError> {
    run_with_late_sources(sources.into_iter().map(EngineSource::from_source).collect(), None, options, on_event).await
}

/// Like [`run`], and sources that open later (a magnet still fetching its metadata, a slow
/// mirror) join the download as they arrive on `late`. A late source whose length differs from
/// the download's is dropped. The download fails only when every source has failed and `late`
/// is closed (or absent). The first source names the result.
pub async fn run_with_late_sources(
    sources: Vec<EngineSource>,
    late: Option<futures::channel::mpsc::UnboundedReceiver<EngineSource>>,
    options: &Options,
    on_event: &(dyn Fn(EngineEvent) + Send + Sync),
) -> Result<Outcome, EngineError> {
    let started = Instant::now();
    if sources.is_empty() {
        return Err(EngineError::NoSources("no sources given".into()));
    }
    let mut ticks = ticker(TICK);
    let mut late = late;
    let mut srcs: Vec<Src> = sources.into_iter().map(Src::new).collect();
    let name = safe_name(&srcs[0].info.name);
    let is_authority = |s: &Src| s.es.authority && usable(&s.info) && s.info.hash_kind != HashKind::None;

    // An authority is on its way and not here: give it a moment before starting without it.
    if options.await_authority && !srcs.iter().any(is_authority) {
        let deadline = Instant::now() + options.authority_wait;
        while Instant::now() < deadline {
            let Some(rx) = late.as_mut() else { break };
            futures::select_biased! {
                s = rx.next() => match s {
                    Some(es) => {
                        let s = Src::new(es);
                        on_event(EngineEvent::SourceAdded { label: s.report.label.clone() });
                        let found = is_authority(&s);
                        srcs.push(s);
                        if found {
                            break;
                        }
                    }
                    None => late = None,
                },
                _ = ticks.next() => {}
            }
        }
    }

    let authority = srcs.iter().position(is_authority);
    let trust = match authority {
        Some(_) => Trust::Held,
        None if options.await_authority => Trust::Pending,
        None => Trust::Unverified,
    };
    let reference = authority.or_else(|| srcs.iter().position(|s| usable(&s.info))).ok_or_else(|| {
        EngineError::NoSources(format!("{} cannot serve byte ranges of a known length", srcs[0].report.label))
    })?;
    let info = srcs[reference].info.clone();
    let (layout, verifier, storage) = Phase::plan(&info, &name, options)?;
    if options.sha256.is_some() && storage.is_partial() {
        return Err(EngineError::Layout(
            "a whole-content SHA-256 cannot be checked when only some files are chosen".into(),
        ));
    }

    let has_parts = storage.has_parts();
    // Already complete from an earlier run: check it and report, without touching the network.
    if trust != Trust::Pending && !has_parts && storage.all_final_exist() {
        return already_complete(storage, layout, verifier, &info, srcs, &name, options, on_event, started, trust)
            .await;
    }

    let workers = Arc::new(Workers::new(2));
    let mut storage = storage;
    storage.open()?;
    let mut phase = Phase::new(info, &name, layout, verifier, Arc::new(storage), options);
    let mut driver = Driver {
        options,
        on_event,
        srcs: Vec::new(),
        workers,
        tasks: FuturesUnordered::new(),
        running: HashMap::new(),
        gen: 0,
        trust,
        name: name.clone(),
    };
    for s in srcs {
        driver.srcs.push(s);
    }
    for i in 0..driver.srcs.len() {
        driver.enlist(&mut phase, i);
    }
    let mut resumed_bytes = 0;
    if has_parts {
        resumed_bytes = driver.resume(&mut phase).await;
    }
    phase.publish(options);
    // However the run ends, a reader waiting on it looks again.
    struct EndOnDrop<'a>(Option<&'a playhead::Playhead>);
    impl Drop for EndOnDrop<'_> {
        fn drop(&mut self) {
            if let Some(ph) = self.0 {
                ph.ended();
            }
        }
    }
    let _end = EndOnDrop(options.playhead.as_deref());
    let labels: Vec<String> = driver.srcs.iter().map(|s| s.report.label.clone()).collect();
    on_event(EngineEvent::Started {
        name: name.clone(),
        total: phase.layout.length,
        resumed: resumed_bytes,
        sources: labels,
    });
    phase.save();

    let mut last_refresh = Instant::now();
    let mut told_waiting = false;
    loop {
        let complete = phase.sched.is_complete();
        if complete && driver.trust != Trust::Pending {
            break;
        }
        if complete {
            // Everything is on disk but nothing has vouched for it yet: stop the duplicates
            // and wait for the authority.
            driver.abort_all().await;
            if !told_waiting {
                told_waiting = true;
                on_event(EngineEvent::AwaitingTrustRoot);
            }
        } else {
            driver.fill(&mut phase);
        }
        if driver.tasks.is_empty() && late.is_none() {
            if driver.trust == Trust::Pending {
                let ids: Vec<&str> = driver.srcs.iter().map(|s| s.es.identifier.as_str()).collect();
                return Err(EngineError::NoTrustRoot(ids.join(", ")));
            }
            return Err(EngineError::AllFailed(driver.reasons()));
        }
        let next = {
            let late_next = match late.as_mut() {
                Some(rx) => Either::Left(rx.next()),
                None => Either::Right(futures::future::pending()),
            };
            futures::select_biased! {
                t = driver.tasks.select_next_some() => Waited::Task(t),
                l = late_next.fuse() => Waited::Late(l),
                _ = ticks.next() => Waited::Tick,
            }
        };
        match next {
            Waited::Task(t) => driver.landed(&mut phase, t)?,
            Waited::Late(None) => late = None,
            Waited::Late(Some(es)) => {
                let s = Src::new(es);
                on_event(EngineEvent::SourceAdded { label: s.report.label.clone() });
                let adopt = driver.trust != Trust::Held && is_authority(&s);
                driver.srcs.push(s);
                let i = driver.srcs.len() - 1;
                if adopt {
                    if let Some(new) = driver.adopt(&mut phase, i).await? {
                        phase.active = false;
                        phase = new;
                        phase.save();
                        phase.publish(options);
                        resumed_bytes = resumed_bytes.min(phase.done_bytes());
                    }
                } else {
                    driver.enlist(&mut phase, i);
                }
            }
            Waited::Tick => {
                if let Some(ph) = &options.playhead {
                    phase.sched.set_cursor(ph.cursor_piece(&phase.layout));
                }
                if last_refresh.elapsed() >= REFRESH {
                    last_refresh = Instant::now();
                    driver.refresh(&mut phase);
                    driver.report_peers(&phase);
                }
            }
        }
        if phase.last_save.elapsed() >= Duration::from_millis(250) {
            phase.save();
        }
    }
    // Abort whatever end-game duplicates are left, and let every write under way finish
    // before the files are checked and renamed.
    driver.abort_all().await;
    on_event(EngineEvent::Finishing);
    phase.save();
    let storage = phase.storage.clone();
    let (length, want) = (phase.layout.length, options.sha256);
    let checked = driver.workers.run(move || check_sha256(&storage, length, want)).await.unwrap_or_else(worker_gone);
    if let Err(e) = checked {
        // The bytes are wrong as a whole and nothing says which: start over next time.
        phase.active = false;
        phase.storage.remove_parts();
        let _ = std::fs::remove_file(&phase.state_file);
        return Err(e);
    }
    let files = phase.storage.finish()?;
    phase.active = false;
    let _ = std::fs::remove_file(&phase.state_file);
    let verified = driver.trust == Trust::Held || options.sha256.is_some();
    Ok(Outcome {
        name,
        files,
        length: phase.layout.length,
        resumed_bytes,
        sources: driver.srcs.into_iter().map(Src::into_report).collect(),
        seconds: started.elapsed().as_secs_f64(),
        verified,
    })
}

#[allow(clippy::too_many_arguments)]
async fn already_complete(
    mut storage: Storage,
    layout: Layout,
    verifier: PieceVerifier,
    info: &ContentInfo,
    srcs: Vec<Src>,
    name: &str,
    options: &Options,
    on_event: &(dyn Fn(EngineEvent) + Send + Sync),
    started: Instant,
    trust: Trust,
) -> Result<Outcome, EngineError> {
    let top = options.out_dir.join(name);
    let sizes_match = storage
        .files
        .iter()
        .filter(|f| f.wanted)
        .all(|f| f.final_path.metadata().map(|m| m.len()).ok() == Some(f.length));
    if !sizes_match {
        return Err(EngineError::Exists(top));
    }
    storage.open_finals()?;
    let storage = Arc::new(storage);
    let workers = Workers::new(1);
    let (st, want, length) = (storage.clone(), options.sha256, info.length);
    let checked = workers
        .run(move || {
            verify_all(&st, &layout, &verifier).map_err(|_| EngineError::Exists(top))?;
            check_sha256(&st, length, want)
        })
        .await
        .unwrap_or_else(worker_gone);
    checked?;
    let labels = srcs.iter().map(|s| s.report.label.clone()).collect();
    on_event(EngineEvent::Started {
        name: name.to_string(),
        total: info.length,
        resumed: info.length,
        sources: labels,
    });
    Ok(Outcome {
        name: name.to_string(),
        files: storage.files.iter().filter(|f| f.wanted).map(|f| f.final_path.clone()).collect(),
        length: info.length,
        resumed_bytes: info.length,
        sources: srcs.into_iter().map(Src::into_report).collect(),
        seconds: started.elapsed().as_secs_f64(),
        verified: trust == Trust::Held || options.sha256.is_some(),
    })
}

/// Bytes a pipelined source (a swarm: one with per-piece availability, or a plugin that says
/// `PIPELINED`) keeps requested at least: its slots are pieces spread over all its peers rather
/// than connections, and since it reads nothing ahead beside other sources, small pieces would
/// otherwise leave its peers idle (8 pieces of 64 KiB are 512 KiB for the whole swarm). Above
/// this the scheduler grows the window by measured bandwidth x delay.
const SWARM_MIN_IN_FLIGHT: u64 = 8 << 20;

/// Requests a source may have at once to start with: `configured` (`--connections`: for a
/// mirror each is a connection), and for a pipelined source at least [`SWARM_MIN_IN_FLIGHT`]
/// bytes of pieces; never more than [`scheduler::MAX_IN_FLIGHT`] bytes (each request is a
/// piece held in memory: 8 requests of 512 MiB pieces would be 4 GiB), one at least.
fn slots_for(pipelined: bool, piece_length: u64, configured: usize) -> usize {
    let piece_length = piece_length.max(1);
    let by_memory = (scheduler::MAX_IN_FLIGHT / piece_length).clamp(1, scheduler::MAX_SLOTS as u64) as usize;
    let configured = configured.clamp(1, scheduler::MAX_SLOTS);
    if !pipelined {
        return configured.min(by_memory);
    }
    let by_bytes = SWARM_MIN_IN_FLIGHT.div_ceil(piece_length).min(scheduler::MAX_SLOTS as u64) as usize;
    configured.max(by_bytes).min(by_memory)
}

/// The I/O around the scheduler: requests, their outcomes, late sources, adoption.
struct Driver<'a> {
    options: &'a Options,
    on_event: &'a (dyn Fn(EngineEvent) + Send + Sync),
    srcs: Vec<Src>,
    workers: Arc<Workers>,
    tasks: FuturesUnordered<Task>,
    running: HashMap<(usize, u32), AbortHandle>,
    /// Bumped on every new layout: outcomes of requests from an older one are ignored.
    gen: u64,
    trust: Trust,
    name: String,
}

impl Driver<'_> {
    /// Registers source `i` with the phase's scheduler (same index), dropping it with a reason
    /// when it cannot serve this layout.
    fn enlist(&mut self, phase: &mut Phase, i: usize) {
        let s = &mut self.srcs[i];
        s.pre_checked = skips_second_check(s.es.authority, s.es.source.checks_pieces(), &s.info, &phase.info);
        let why = if let Some(d) = &s.report.dropped {
            Some(d.clone())
        } else if !usable(&s.info) {
            Some("cannot serve byte ranges of a known length".to_string())
        } else if s.info.length != phase.layout.length {
            Some(format!("reports {} bytes where {} reports {}", s.info.length, phase.info.label, phase.layout.length))
        } else if s.info.hash_kind != HashKind::None
            && phase.info.hash_kind == s.info.hash_kind
            && s.info.piece_length == phase.info.piece_length
            && s.info.piece_hashes != phase.info.piece_hashes
        {
            Some(format!("its piece hashes contradict those of {}", phase.info.label))
        } else {
            None
        };
        match why {
            Some(reason) => {
                let at = phase.sched.add_dropped();
                debug_assert_eq!(at, i);
                if s.report.dropped.is_none() {
                    (self.on_event)(EngineEvent::SourceDropped {
                        label: s.report.label.clone(),
                        reason: reason.clone(),
                    });
                    s.report.dropped = Some(reason);
                }
            }
            None => {
                let a = s.es.source.availability(phase.layout.piece_length);
                let pipelined = s.es.pipelined || !a.is_empty();
                let slots = slots_for(pipelined, phase.layout.piece_length, self.options.slots_per_source);
                let at = phase.sched.add_source(a, slots, s.es.reputation);
                debug_assert_eq!(at, i);
                if pipelined {
                    phase.sched.set_pipelined(at);
                }
            }
        }
    }

    /// Loads the resume state and re-checks the pieces it lists (on a worker thread).
    async fn resume(&mut self, phase: &mut Phase) -> u64 {
        let count = phase.layout.piece_count();
        let Some(done) = ResumeState::load(&phase.state_file)
            .filter(|s| {
                s.length == phase.layout.length
                    && s.piece_length == phase.layout.piece_length
                    && s.fingerprint == phase.fingerprint
            })
            .and_then(|s| s.done_pieces(count))
        else {
            return 0;
        };
        let cands: Vec<u32> = done.iter().enumerate().filter(|(_, d)| **d).map(|(i, _)| i as u32).collect();
        let ok = self.check_on_disk(phase, cands).await;
        let mut bytes = 0;
        for (i, good) in ok {
            if good {
                phase.sched.mark_done(i);
                bytes += phase.layout.piece(i).1;
            }
        }
        bytes
    }

    /// Reads and verifies `pieces` from disk on a worker: (piece, matches).
    fn check_on_disk(
        &self,
        phase: &Phase,
        pieces: Vec<u32>,
    ) -> impl std::future::Future<Output = Vec<(u32, bool)>> + Send {
        let (storage, verifier, layout) = (phase.storage.clone(), phase.verifier.clone(), phase.layout);
        let workers = self.workers.clone();
        async move {
            workers
                .run(move || {
                    let mut buf = Vec::new();
                    pieces
                        .into_iter()
                        .map(|i| {
                            let (off, len) = layout.piece(i);
                            buf.resize(len as usize, 0);
                            let ok = storage.read_at(off, &mut buf).is_ok()
                                && (!verifier.has_hashes() || verifier.verify(i, &buf).is_ok());
                            (i, ok)
                        })
                        .collect()
                })
                .await
                .unwrap_or_default()
        }
    }

    fn fill(&mut self, phase: &mut Phase) {
        self.tell_others(phase);
        let decisions = phase.sched.fill(Instant::now());
        for d in decisions {
            if let Decision::Fetch { source, piece } = d {
                self.start(phase, source, piece);
            }
        }
    }

    /// Tells each live source how many others feed the download, when that changed (a swarm
    /// reads ahead only while it is alone).
    fn tell_others(&mut self, phase: &Phase) {
        let known = self.srcs.len().min(phase.sched.source_count());
        let live: Vec<usize> = (0..known).filter(|&i| phase.sched.source(i).live).collect();
        let others = live.len().saturating_sub(1) as u32;
        for i in live {
            let s = &mut self.srcs[i];
            if s.told_others != Some(others) {
                s.told_others = Some(others);
                s.es.source.set_other_sources(others);
            }
        }
    }

    fn start(&mut self, phase: &Phase, si: usize, piece: u32) {
        let (off, len) = phase.layout.piece(piece);
        let (handle, reg) = AbortHandle::new_pair();
        self.running.insert((si, piece), handle);
        tracing::trace!(source = %self.srcs[si].report.label, piece, "request");
        let source = self.srcs[si].es.source.clone();
        let rate = self.options.download_rate.clone();
        let (storage, verifier, workers) = (phase.storage.clone(), phase.verifier.clone(), self.workers.clone());
        let pre_checked = self.srcs[si].pre_checked;
        let gen = self.gen;
        self.tasks.push(
            async move {
                let fetch = async move {
                    // The request starts once its bytes fit the rate (so the source sends them
                    // at it, whatever the protocol).
                    if let Some(rate) = rate {
                        rate.acquire(len).await;
                    }
                    source.fetch(off, len).await
                };
                let r = Abortable::new(fetch, reg).await.unwrap_or_else(|_| Err(PluginError::cancelled()));
                let landed = match r {
                    Err(e) => Landed::Failed(e),
                    Ok(d) if d.len() as u64 != len => {
                        Landed::Failed(PluginError::invalid(format!("sent {} bytes for a {len}-byte piece", d.len())))
                    }
                    Ok(d) => workers
                        .run(move || {
                            if !pre_checked && verifier.verify(piece, &d).is_err() {
                                Landed::BadHash
                            } else {
                                match storage.write_at(off, &d) {
                                    Ok(()) => Landed::Written,
                                    Err(e) => Landed::Disk(e),
                                }
                            }
                        })
                        .await
                        .unwrap_or_else(|| Landed::Failed(PluginError::cancelled())),
                };
                (gen, si, piece, landed)
            }
            .boxed(),
        );
    }

    fn apply(&mut self, decisions: Vec<Decision>) {
        for d in decisions {
            match d {
                Decision::Fetch { .. } => {}
                Decision::Cancel { source, piece } => {
                    if let Some(h) = self.running.remove(&(source, piece)) {
                        tracing::debug!(source = %self.srcs[source].report.label, piece, "request cancelled");
                        h.abort();
                    }
                }
                Decision::Dropped { source, reason } => {
                    let s = &mut self.srcs[source];
                    if s.report.dropped.is_none() {
                        tracing::info!(source = %s.report.label, %reason, "source dropped");
                        (self.on_event)(EngineEvent::SourceDropped {
                            label: s.report.label.clone(),
                            reason: reason.clone(),
                        });
                        s.report.dropped = Some(reason);
                    }
                }
            }
        }
    }

    fn landed(&mut self, phase: &mut Phase, (gen, si, piece, landed): TaskResult) -> Result<(), EngineError> {
        if gen != self.gen {
            return Ok(());
        }
        self.running.remove(&(si, piece));
        let now = Instant::now();
        let len = phase.layout.piece(piece).1;
        match landed {
            Landed::Written => {
                let written = phase.sched.on_written(si, piece, len, now);
                tracing::debug!(source = %self.srcs[si].report.label, piece, first = written.is_some(), "piece written");
                if let Some(cancels) = written {
                    let s = &mut self.srcs[si];
                    s.report.bytes += len;
                    s.report.pieces += 1;
                    phase.writer[piece as usize] = Some(si);
                    phase.dirty = true;
                    if let Some(ph) = &self.options.playhead {
                        ph.piece_done(piece);
                    }
                    (self.on_event)(EngineEvent::Piece { source: si, bytes: len });
                    self.apply(cancels);
                }
            }
            Landed::Failed(e) if e.kind == ErrorKind::Cancelled => phase.sched.on_cancelled(si, piece),
            Landed::Failed(e) => {
                let s = &mut self.srcs[si];
                s.report.failures += 1;
                s.last_error = Some(e.message.to_string());
                let fatal = matches!(e.kind, ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Unsupported);
                let d = phase.sched.on_failed(si, piece, fatal, e.message.as_str());
                self.apply(d);
            }
            Landed::BadHash => {
                let s = &mut self.srcs[si];
                s.report.bad_pieces += 1;
                s.last_error = Some(format!("piece {piece} failed verification"));
                let d = phase.sched.on_bad_piece(si, piece);
                self.apply(d);
            }
            Landed::Disk(e) => return Err(e),
        }
        Ok(())
    }

    /// Reads every live source's availability again (a swarm's peers come and go).
    fn refresh(&mut self, phase: &mut Phase) {
        for (i, s) in self.srcs.iter().enumerate() {
            if s.report.dropped.is_none() && phase.sched.source(i).live {
                phase.sched.set_availability(i, s.es.source.availability(phase.layout.piece_length));
            }
        }
    }

    /// Tells the peers behind each live source (a swarm's members, a network's providers).
    fn report_peers(&self, phase: &Phase) {
        for (i, s) in self.srcs.iter().enumerate() {
            if s.report.dropped.is_none() && phase.sched.source(i).live {
                let peers = s.es.source.peers();
                if !peers.is_empty() {
                    (self.on_event)(EngineEvent::Peers { source: i, peers });
                }
            }
        }
    }

    /// Aborts every request and waits until each has come back, so no write is under way.
    async fn abort_all(&mut self) {
        for (_, h) in self.running.drain() {
            h.abort();
        }
        while self.tasks.next().await.is_some() {}
        self.gen += 1;
    }

    /// The trust root arrived with source `i`: its description becomes the layout, what is on
    /// disk is checked against its hashes, and the sources whose bytes fail are blamed.
    /// Returns the new phase, or `None` when the authority's description is unusable (it is
    /// dropped and the download stays provisional).
    async fn adopt(&mut self, old: &mut Phase, i: usize) -> Result<Option<Phase>, EngineError> {
        let info = self.srcs[i].info.clone();
        let (layout, verifier, storage) = match Phase::plan(&info, &self.name, self.options) {
            Ok(p) => p,
            Err(e) => {
                let at = old.sched.add_dropped();
                debug_assert_eq!(at, i);
                self.apply(vec![Decision::Dropped { source: i, reason: e.to_string() }]);
                return Ok(None);
            }
        };
        self.abort_all().await;
        let same_files = storage.files.len() == old.storage.files.len()
            && storage
                .files
                .iter()
                .zip(&old.storage.files)
                .all(|(a, b)| a.part == b.part && a.offset == b.offset && a.length == b.length);
        let storage = if same_files {
            old.storage.clone()
        } else {
            old.storage.remove_parts();
            let mut s = storage;
            s.open()?;
            Arc::new(s)
        };
        let mut phase = Phase::new(info, &self.name, layout, verifier, storage, self.options);
        self.trust = Trust::Held;
        for k in 0..self.srcs.len() {
            self.enlist(&mut phase, k);
        }
        if same_files {
            // New pieces whose bytes were all written (or resumed) under the old layout.
            let covered = |p: u32| {
                let (off, len) = phase.layout.piece(p);
                let first = (off / old.layout.piece_length) as u32;
                let last = ((off + len).saturating_sub(1) / old.layout.piece_length) as u32;
                len > 0 && (first..=last).all(|q| old.sched.is_done(q))
            };
            let cands: Vec<u32> = (0..phase.layout.piece_count()).filter(|&p| covered(p)).collect();
            for (p, ok) in self.check_on_disk(&phase, cands).await {
                if ok {
                    phase.sched.mark_done(p);
                    continue;
                }
                let (off, len) = phase.layout.piece(p);
                let first = (off / old.layout.piece_length) as usize;
                let last = ((off + len).saturating_sub(1) / old.layout.piece_length) as usize;
                let mut writers: Vec<usize> =
                    old.writer.get(first..=last).unwrap_or_default().iter().flatten().copied().collect();
                writers.sort_unstable();
                writers.dedup();
                for w in writers {
                    self.srcs[w].report.bad_pieces += 1;
                    self.srcs[w].last_error = Some(format!("bytes at {off} failed the trust root's piece {p}"));
                    let d = phase.sched.blame(w, p);
                    self.apply(d);
                }
            }
        }
        (self.on_event)(EngineEvent::Adopted { label: self.srcs[i].report.label.clone(), done: phase.done_bytes() });
        Ok(Some(phase))
    }

    fn reasons(&self) -> String {
        self.srcs
            .iter()
            .map(|s| {
                let why = s.report.dropped.clone().or_else(|| s.last_error.clone());
                format!("{}: {}", s.report.label, why.unwrap_or_else(|| "has none of the missing pieces".into()))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How [`download_for_plugin_with`] reports to the host beyond the defaults: a live peer count,
/// a floor on the time between progress events, and a per-source breakdown of its own (a swarm
/// that is one engine source but many peers).
pub struct PluginReport<'a> {
    peers: Option<&'a (dyn Fn() -> u32 + Send + Sync)>,
    progress_every: Duration,
    per_source: Option<&'a PerSourceLines<'a>>,
}

/// Per-source lines (label, bytes) of an outcome, for [`PluginReport::per_source`].
pub type PerSourceLines<'a> = dyn Fn(&Outcome) -> Vec<(String, u64)> + Send + Sync + 'a;

impl Default for PluginReport<'_> {
    fn default() -> Self {
        PluginReport { peers: None, progress_every: Duration::ZERO, per_source: None }
    }
}

impl<'a> PluginReport<'a> {
    /// The peer count each progress event carries (default: the number of engine sources).
    pub fn peers(mut self, count: &'a (dyn Fn() -> u32 + Send + Sync)) -> Self {
        self.peers = Some(count);
        self
    }

    /// At most one progress event per `every` (the first and the last always go out).
    pub fn progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every;
        self
    }

    /// The outcome's per-source lines (label, bytes) from the engine's outcome, instead of one
    /// line per engine source.
    pub fn per_source(mut self, lines: &'a PerSourceLines<'a>) -> Self {
        self.per_source = Some(lines);
        self
    }
}

/// A plugin's whole download (`Plugin::download`) through the engine: progress goes out as
/// plugin events (`Events::progress`, dropped sources as warnings) and the outcome is the
/// ABI's [`DownloadOutcome`](crate::abi::DownloadOutcome).
pub async fn download_for_plugin(
    sources: Vec<Arc<dyn PieceSource>>,
    options: &Options,
    events: &crate::plugin::Events,
) -> Result<crate::abi::DownloadOutcome, PluginError> {
    download_for_plugin_with(sources, options, events, &PluginReport::default()).await
}

/// [`download_for_plugin`] with the reporting of `report`.
pub async fn download_for_plugin_with(
    sources: Vec<Arc<dyn PieceSource>>,
    options: &Options,
    events: &crate::plugin::Events,
    report: &PluginReport<'_>,
) -> Result<crate::abi::DownloadOutcome, PluginError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let done = AtomicU64::new(0);
    let total = AtomicU64::new(0);
    let n_sources = sources.len() as u32;
    let peers = || report.peers.map_or(n_sources, |f| f());
    // When the last progress event went out (None: none yet).
    let last = std::sync::Mutex::new(None::<Instant>);
    let progress = |now: u64, force: bool| {
        let t = total.load(Ordering::Relaxed);
        let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
        if force || now >= t || l.is_none_or(|at| at.elapsed() >= report.progress_every) {
            *l = Some(Instant::now());
            drop(l);
            events.progress(now, t, peers());
        }
    };
    let on_event = |event: EngineEvent| match event {
        EngineEvent::Started { total: t, resumed, .. } => {
            total.store(t, Ordering::Relaxed);
            done.store(resumed, Ordering::Relaxed);
            progress(resumed, true);
        }
        EngineEvent::Piece { bytes, .. } => progress(done.fetch_add(bytes, Ordering::Relaxed) + bytes, false),
        EngineEvent::Adopted { done: d, .. } => {
            done.store(d, Ordering::Relaxed);
            progress(d, true);
        }
        EngineEvent::SourceDropped { label, reason } => events.warn(format!("{label}: {reason}")),
        _ => {}
    };
    let out = run(sources, options, &on_event).await?;
    let lines: Vec<(String, u64)> = match report.per_source {
        Some(f) => f(&out),
        None => out.sources.iter().map(|s| (s.label.clone(), s.bytes)).collect(),
    };
    Ok(crate::abi::DownloadOutcome {
        files: out.files.iter().map(|p| p.to_string_lossy().into_owned().into()).collect(),
        bytes: out.length,
        resumed_bytes: out.resumed_bytes,
        per_source: lines
            .into_iter()
            .map(|(label, bytes)| crate::abi::SourceBytes { label: label.into(), bytes })
            .collect(),
    })
}

fn worker_gone() -> Result<(), EngineError> {
    Err(EngineError::Layout("the hashing thread stopped".into()))
}

fn verify_all(storage: &Storage, layout: &Layout, verifier: &PieceVerifier) -> Result<(), EngineError> {
    if !verifier.has_hashes() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for i in 0..layout.piece_count() {
        let (off, len) = layout.piece(i);
        // A piece with bytes of an unchosen file was checked whole when it arrived.
        if !storage.wants_all(off, len) {
            continue;
        }
        buf.resize(len as usize, 0);
        storage.read_at(off, &mut buf)?;
        verifier.verify(i, &buf).map_err(|e| EngineError::Layout(e.to_string()))?;
    }
    Ok(())
}

fn check_sha256(storage: &Storage, length: u64, want: Option<[u8; 32]>) -> Result<(), EngineError> {
    let Some(want) = want else { return Ok(()) };
    let got = storage.sha256(length)?;
    if got != want {
        return Err(EngineError::Sha256Mismatch { got: hex::encode(got), want: hex::encode(want) });
    }
    Ok(())
}
