//! The multi-source engine: one content, N sources, every piece verified.
//!
//! The engine merges what the sources say of the content into one layout, asks each source for
//! pieces through a fixed number of slots (rarest first, see [`crate::picker`]), verifies each
//! piece with the [`PieceVerifier`], writes it at its offset in `.part` files and records it in
//! the resume state. A source that fails is retried, then dropped; a source that sends a piece
//! that fails verification is penalised, then dropped; the download goes on with the rest. When
//! no free piece is left, idle slots duplicate the slowest pieces (end-game) and the loser is
//! cancelled. On completion `.part` files are renamed to their final names.
//!
//! The engine is runtime-agnostic (plain futures): the host drives it with sources from every
//! plugin, and a plugin may drive it with its own sources for a whole download.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{
    future::{AbortHandle, Abortable},
    stream::FuturesUnordered,
    StreamExt as _,
};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::{
    abi::{ContentInfo, ErrorKind, HashKind, PluginError},
    layout::Layout,
    picker::PiecePicker,
    plugin::PieceSource,
    resume::{part_path, state_path, ResumeState},
    verify::PieceVerifier,
};

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
}

impl Options {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self { out_dir: out_dir.into(), slots_per_source: 8, sha256: None, max_failures: 3, max_bad_pieces: 2 }
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
    /// All pieces are in; the whole-file check (if any) and renames follow.
    Finishing,
}

/// Per-source totals at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReport {
    pub label: String,
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
}

impl From<EngineError> for PluginError {
    fn from(e: EngineError) -> Self {
        let kind = match &e {
            EngineError::Io { .. } | EngineError::Exists(_) => ErrorKind::Io,
            EngineError::Sha256Mismatch { .. } | EngineError::Layout(_) => ErrorKind::Invalid,
            EngineError::NoSources(_) | EngineError::AllFailed(_) => ErrorKind::Network,
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

struct StoredFile {
    final_path: PathBuf,
    part: PathBuf,
    offset: u64,
    length: u64,
    file: Option<File>,
}

/// The content's bytes on disk: one or more `.part` files at content offsets.
struct Storage {
    files: Vec<StoredFile>,
}

impl Storage {
    fn plan(out_dir: &Path, name: &str, info: &ContentInfo) -> Result<Self, EngineError> {
        if info.files.is_empty() {
            let final_path = out_dir.join(name);
            return Ok(Self {
                files: vec![StoredFile {
                    part: part_path(&final_path),
                    final_path,
                    offset: 0,
                    length: info.length,
                    file: None,
                }],
            });
        }
        let root = out_dir.join(name);
        let mut files = Vec::with_capacity(info.files.len());
        let mut expect = 0u64;
        for f in info.files.iter() {
            let rel = safe_relative(&f.path)
                .ok_or_else(|| EngineError::Layout(format!("file entry {:?} has no usable name", f.path)))?;
            if f.offset != expect || f.offset.checked_add(f.length).is_none() {
                return Err(EngineError::Layout("file entries do not tile the content".into()));
            }
            expect = f.offset + f.length;
            let final_path = root.join(rel);
            files.push(StoredFile {
                part: part_path(&final_path),
                final_path,
                offset: f.offset,
                length: f.length,
                file: None,
            });
        }
        if expect != info.length {
            return Err(EngineError::Layout(format!("files add up to {expect} bytes, content is {}", info.length)));
        }
        Ok(Self { files })
    }

    fn all_final_exist(&self) -> bool {
        self.files.iter().all(|f| f.final_path.is_file())
    }

    fn open(&mut self) -> Result<(), EngineError> {
        for f in &mut self.files {
            if let Some(dir) = f.part.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&f.part)
                .map_err(|e| io_err(&f.part, e))?;
            let len = file.metadata().map_err(|e| io_err(&f.part, e))?.len();
            if len != f.length {
                file.set_len(f.length).map_err(|e| io_err(&f.part, e))?;
            }
            f.file = Some(file);
        }
        Ok(())
    }

    /// Open the final files read-only (an already complete download being checked).
    fn open_finals(&mut self) -> Result<(), EngineError> {
        for f in &mut self.files {
            f.file = Some(File::open(&f.final_path).map_err(|e| io_err(&f.final_path, e))?);
        }
        Ok(())
    }

    fn segments(&self, offset: u64, len: u64) -> impl Iterator<Item = (&StoredFile, u64, u64, u64)> {
        let end = offset + len;
        self.files.iter().filter_map(move |f| {
            let s = offset.max(f.offset);
            let e = end.min(f.offset + f.length);
            (s < e).then(|| (f, s - f.offset, s - offset, e - s))
        })
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), EngineError> {
        for (f, at, from, n) in self.segments(offset, data.len() as u64) {
            let file = f.file.as_ref().expect("opened");
            file.write_all_at(&data[from as usize..(from + n) as usize], at).map_err(|e| io_err(&f.part, e))?;
        }
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), EngineError> {
        for (f, at, from, n) in self.segments(offset, buf.len() as u64) {
            let file = f.file.as_ref().expect("opened");
            file.read_exact_at(&mut buf[from as usize..(from + n) as usize], at).map_err(|e| io_err(&f.part, e))?;
        }
        Ok(())
    }

    fn sha256(&self, length: u64) -> Result<[u8; 32], EngineError> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < length {
            let n = (length - off).min(buf.len() as u64) as usize;
            self.read_at(off, &mut buf[..n])?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(h.finalize().into())
    }

    fn finish(&self) -> Result<Vec<PathBuf>, EngineError> {
        let mut out = Vec::with_capacity(self.files.len());
        for f in &self.files {
            std::fs::rename(&f.part, &f.final_path).map_err(|e| io_err(&f.final_path, e))?;
            out.push(f.final_path.clone());
        }
        Ok(out)
    }

    fn remove_parts(&self) {
        for f in &self.files {
            let _ = std::fs::remove_file(&f.part);
        }
    }
}

struct SourceState {
    src: Arc<dyn PieceSource>,
    report: SourceReport,
    /// Per-piece counts, `None` when the source serves every piece.
    availability: Option<Vec<u32>>,
    slots: usize,
    active: usize,
    consecutive_failures: u32,
    last_error: Option<String>,
    /// The source checked its pieces against the same hashes the layout uses: no second hash.
    pre_checked: bool,
}

/// Whether pieces a source checked itself (against `own`) need no second check against the
/// download's reference description `reference`: only when both are the same Merkle tree cut
/// the same way.
fn same_piece_hashes(own: &ContentInfo, reference: &ContentInfo) -> bool {
    own.hash_kind == HashKind::Sha256Merkle
        && reference.hash_kind == HashKind::Sha256Merkle
        && own.root.len() == 32
        && own.root == reference.root
        && own.piece_length == reference.piece_length
        && own.piece_hashes == reference.piece_hashes
}

impl SourceState {
    fn new(src: Arc<dyn PieceSource>, info: &ContentInfo, options: &Options) -> Self {
        Self {
            src,
            report: SourceReport {
                label: info.label.to_string(),
                bytes: 0,
                pieces: 0,
                failures: 0,
                bad_pieces: 0,
                dropped: None,
                peers: Vec::new(),
            },
            availability: None,
            slots: options.slots_per_source.max(1),
            active: 0,
            consecutive_failures: 0,
            last_error: None,
            pre_checked: false,
        }
    }

    /// The final report, with the source's own per-peer totals.
    fn into_report(self) -> SourceReport {
        SourceReport { peers: self.src.peers(), ..self.report }
    }

    fn has(&self, i: u32) -> bool {
        self.availability.as_ref().is_none_or(|a| a.get(i as usize).copied().unwrap_or(0) > 0)
    }
    fn live(&self) -> bool {
        self.report.dropped.is_none()
    }
}

/// Saves the resume state when the download stops for any reason (including being dropped).
struct ResumeGuard {
    path: PathBuf,
    layout: Layout,
    fingerprint: String,
    picker: PiecePicker,
    last_save: Instant,
    dirty: bool,
    active: bool,
}

impl ResumeGuard {
    fn save(&mut self) {
        if !self.active || !self.dirty {
            return;
        }
        let state = ResumeState::new(
            self.layout.length,
            self.layout.piece_length,
            self.fingerprint.clone(),
            self.picker.done_bits(),
        );
        // Losing the state only costs a re-download; never fail the transfer for it.
        let _ = state.save(&self.path);
        self.last_save = Instant::now();
        self.dirty = false;
    }
}

impl Drop for ResumeGuard {
    fn drop(&mut self) {
        self.save();
    }
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

type TaskResult = (usize, u32, Landed, Duration);

/// A few threads that verify and write pieces, so hashing and page-cache copies of several
/// pieces run in parallel with each other and with the network instead of on the one task
/// that drives the engine.
struct Workers {
    tx: Option<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn new(n: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let threads = (0..n)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("chiral-piece-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    })
                    .expect("spawn piece worker")
            })
            .collect();
        Self { tx: Some(tx), threads }
    }

    /// Runs `f` on a worker; the future resolves with its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Option<T>> {
        let (tx, rx) = futures::channel::oneshot::channel();
        if let Some(q) = &self.tx {
            let _ = q.send(Box::new(move || {
                let _ = tx.send(f());
            }));
        }
        async move { rx.await.ok() }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Waited {
    Task(Option<TaskResult>),
    Late(Option<Arc<dyn PieceSource>>),
}

/// Downloads one content from `sources` into `options.out_dir`.
pub async fn run(
    sources: Vec<Arc<dyn PieceSource>>,
    options: &Options,
    on_event: &(dyn Fn(EngineEvent) + Send + Sync),
) -> Result<Outcome, EngineError> {
    run_with_late_sources(sources, None, options, on_event).await
}

/// Like [`run`], and sources that open later (a magnet still fetching its metadata, a slow
/// mirror) join the download as they arrive on `late`. A late source whose length differs from
/// the download's is dropped. The download fails only when every source has failed and `late`
/// is closed (or absent).
pub async fn run_with_late_sources(
    sources: Vec<Arc<dyn PieceSource>>,
    mut late: Option<futures::channel::mpsc::UnboundedReceiver<Arc<dyn PieceSource>>>,
    options: &Options,
    on_event: &(dyn Fn(EngineEvent) + Send + Sync),
) -> Result<Outcome, EngineError> {
    let started = Instant::now();
    if sources.is_empty() {
        return Err(EngineError::NoSources("no sources given".into()));
    }
    let infos: Vec<ContentInfo> = sources.iter().map(|s| s.info()).collect();
    let mut states: Vec<SourceState> =
        sources.into_iter().zip(&infos).map(|(src, info)| SourceState::new(src, info, options)).collect();

    // The reference description: the first source with per-piece hashes, else the first with
    // a known length and random access.
    let usable = |i: &ContentInfo| i.random_access && i.length_known;
    let reference = infos
        .iter()
        .position(|i| usable(i) && i.hash_kind != HashKind::None)
        .or_else(|| infos.iter().position(usable))
        .ok_or_else(|| {
            EngineError::NoSources(format!("{} cannot serve byte ranges of a known length", infos[0].label))
        })?;
    let info = infos[reference].clone();
    for (s, i) in states.iter_mut().zip(&infos) {
        s.pre_checked = s.src.checks_pieces() && same_piece_hashes(i, &info);
    }
    let layout = if info.piece_length > 0 {
        Layout::new(info.length, info.piece_length).map_err(|e| EngineError::Layout(e.to_string()))?
    } else {
        Layout::for_byte_ranges(info.length)
    };
    let count = layout.piece_count();
    let verifier = PieceVerifier::for_content(&info, count as u64)
        .map_err(|e| EngineError::Layout(format!("{}: {e}", info.label)))?;
    for (s, i) in states.iter_mut().zip(&infos) {
        if !usable(i) {
            s.report.dropped = Some("cannot serve byte ranges of a known length".into());
        } else if i.length != info.length {
            s.report.dropped = Some(format!("reports {} bytes where {} reports {}", i.length, info.label, info.length));
        }
    }

    let name = safe_name(&info.name);
    let mut storage = Storage::plan(&options.out_dir, &name, &info)?;
    let labels: Vec<String> = states.iter().map(|s| s.report.label.clone()).collect();
    for s in states.iter().filter(|s| s.report.dropped.is_some()) {
        on_event(EngineEvent::SourceDropped {
            label: s.report.label.clone(),
            reason: s.report.dropped.clone().unwrap_or_default(),
        });
    }

    let top = options.out_dir.join(&name);
    let state_file = state_path(&top);
    let has_parts = storage.files.iter().any(|f| f.part.exists());
    // Already complete from an earlier run: check it and report, without touching the network.
    if !has_parts && storage.all_final_exist() {
        let sizes_match = storage.files.iter().all(|f| f.final_path.metadata().map(|m| m.len()).ok() == Some(f.length));
        if !sizes_match {
            return Err(EngineError::Exists(top));
        }
        storage.open_finals()?;
        verify_all(&storage, &layout, &verifier).map_err(|_| EngineError::Exists(top.clone()))?;
        check_sha256(&storage, info.length, options.sha256)?;
        on_event(EngineEvent::Started {
            name: name.clone(),
            total: info.length,
            resumed: info.length,
            sources: labels,
        });
        return Ok(Outcome {
            name,
            files: storage.files.iter().map(|f| f.final_path.clone()).collect(),
            length: info.length,
            resumed_bytes: info.length,
            sources: states.into_iter().map(SourceState::into_report).collect(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    storage.open()?;
    let storage = Arc::new(storage);
    let verifier = Arc::new(verifier);
    let workers = Workers::new(2);

    let fp = fingerprint(&info, &name);
    let mut picker = PiecePicker::new(count);
    let mut resumed_bytes = 0;
    if has_parts {
        if let Some(done) = ResumeState::load(&state_file)
            .filter(|s| s.length == layout.length && s.piece_length == layout.piece_length && s.fingerprint == fp)
            .and_then(|s| s.done_pieces(count))
        {
            let mut buf = Vec::new();
            for (i, _) in done.iter().enumerate().filter(|(_, d)| **d) {
                let i = i as u32;
                let (off, len) = layout.piece(i);
                if verifier.has_hashes() {
                    buf.resize(len as usize, 0);
                    if storage.read_at(off, &mut buf).is_err() || verifier.verify(i, &buf).is_err() {
                        continue;
                    }
                }
                picker.mark_done(i);
                resumed_bytes += len;
            }
        }
    }
    for s in states.iter_mut().filter(|s| s.live()) {
        let a = s.src.availability(layout.piece_length);
        s.availability = (!a.is_empty() && a.len() == count as usize).then_some(a);
        picker.add_availability(s.availability.as_deref());
    }
    on_event(EngineEvent::Started { name: name.clone(), total: info.length, resumed: resumed_bytes, sources: labels });

    let mut resume = ResumeGuard {
        path: state_file.clone(),
        layout,
        fingerprint: fp,
        picker,
        last_save: Instant::now(),
        dirty: true,
        active: true,
    };
    resume.save();

    let mut tasks: FuturesUnordered<_> = FuturesUnordered::new();
    let mut running: HashMap<(usize, u32), AbortHandle> = HashMap::new();
    while !resume.picker.is_complete() {
        // Fill every free slot of every live source.
        for (si, s) in states.iter_mut().enumerate() {
            while s.live() && s.active < s.slots {
                let picked = resume
                    .picker
                    .pick(|i| s.has(i))
                    .or_else(|| resume.picker.pick_duplicate(|i| s.has(i), |i| running.contains_key(&(si, i))));
                let Some(piece) = picked else { break };
                let (off, len) = layout.piece(piece);
                let (handle, reg) = AbortHandle::new_pair();
                running.insert((si, piece), handle);
                let fetch = s.src.fetch(off, len);
                s.active += 1;
                let (storage, verifier) = (storage.clone(), verifier.clone());
                let pre_checked = s.pre_checked;
                let land = &workers;
                tasks.push(async move {
                    let t0 = Instant::now();
                    let r = Abortable::new(fetch, reg).await.unwrap_or_else(|_| Err(PluginError::cancelled()));
                    let landed = match r {
                        Err(e) => Landed::Failed(e),
                        Ok(d) if d.len() as u64 != len => Landed::Failed(PluginError::invalid(format!(
                            "sent {} bytes for a {len}-byte piece",
                            d.len()
                        ))),
                        Ok(d) => land
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
                    (si, piece, landed, t0.elapsed()) as TaskResult
                });
            }
        }
        // Wait for a finished request or a late source, whichever comes first.
        let next = match late.as_mut() {
            Some(rx) if tasks.is_empty() => Waited::Late(rx.next().await),
            Some(rx) => futures::select_biased! {
                t = tasks.next() => Waited::Task(t),
                l = rx.next() => Waited::Late(l),
            },
            None => Waited::Task(tasks.next().await),
        };
        let (si, piece, result) = match next {
            Waited::Task(Some((si, piece, result, _elapsed))) => (si, piece, result),
            Waited::Late(Some(src)) => {
                let i = src.info();
                let mut st = SourceState::new(src, &i, options);
                st.pre_checked = st.src.checks_pieces() && same_piece_hashes(&i, &info);
                if !usable(&i) {
                    st.report.dropped = Some("cannot serve byte ranges of a known length".into());
                } else if i.length != layout.length {
                    st.report.dropped =
                        Some(format!("reports {} bytes where {} reports {}", i.length, info.label, layout.length));
                } else {
                    let a = st.src.availability(layout.piece_length);
                    st.availability = (!a.is_empty() && a.len() == count as usize).then_some(a);
                    resume.picker.add_availability(st.availability.as_deref());
                }
                on_event(EngineEvent::SourceAdded { label: st.report.label.clone() });
                if let Some(reason) = &st.report.dropped {
                    on_event(EngineEvent::SourceDropped { label: st.report.label.clone(), reason: reason.clone() });
                }
                states.push(st);
                continue;
            }
            Waited::Late(None) => {
                // No more late sources; carry on with what there is.
                late = None;
                continue;
            }
            Waited::Task(None) => {
                let reasons: Vec<String> = states
                    .iter()
                    .map(|s| {
                        let why = s.report.dropped.clone().or_else(|| s.last_error.clone());
                        format!(
                            "{}: {}",
                            s.report.label,
                            why.unwrap_or_else(|| "has none of the missing pieces".into())
                        )
                    })
                    .collect();
                return Err(EngineError::AllFailed(reasons.join("; ")));
            }
        };
        running.remove(&(si, piece));
        let s = &mut states[si];
        s.active -= 1;
        let (_, len) = layout.piece(piece);
        match result {
            Landed::Written => {}
            Landed::Failed(e) if e.kind == ErrorKind::Cancelled => {
                resume.picker.release(piece);
                continue;
            }
            Landed::Failed(e) => {
                resume.picker.release(piece);
                s.report.failures += 1;
                s.consecutive_failures += 1;
                let fatal = matches!(e.kind, ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Unsupported);
                s.last_error = Some(e.message.to_string());
                if fatal || s.consecutive_failures >= options.max_failures {
                    drop_source(s, &mut resume.picker, e.message.to_string(), on_event);
                }
                continue;
            }
            Landed::BadHash => {
                resume.picker.release(piece);
                s.report.bad_pieces += 1;
                s.slots = (s.slots / 2).max(1);
                s.last_error = Some(format!("piece {piece} failed verification"));
                if s.report.bad_pieces >= options.max_bad_pieces {
                    let why = format!("sent {} pieces that failed verification", s.report.bad_pieces);
                    drop_source(s, &mut resume.picker, why, on_event);
                }
                continue;
            }
            Landed::Disk(e) => return Err(e),
        }
        if resume.picker.is_done(piece) {
            // An end-game duplicate that lost the race (it wrote the same verified bytes).
            resume.picker.release(piece);
            continue;
        }
        s.consecutive_failures = 0;
        s.report.bytes += len;
        s.report.pieces += 1;
        resume.picker.finish(piece);
        resume.dirty = true;
        // Cancel the end-game duplicates of this piece.
        running.retain(|&(_, p), h| {
            if p == piece {
                h.abort();
            }
            p != piece
        });
        on_event(EngineEvent::Piece { source: si, bytes: len });
        if resume.last_save.elapsed() >= Duration::from_millis(250) {
            resume.save();
        }
    }
    // Abort whatever end-game duplicates are left.
    running.values().for_each(AbortHandle::abort);
    drop(tasks);
    drop(workers);

    on_event(EngineEvent::Finishing);
    resume.save();
    if let Err(e) = check_sha256(&storage, info.length, options.sha256) {
        // The bytes are wrong as a whole and nothing says which: start over next time.
        resume.active = false;
        storage.remove_parts();
        let _ = std::fs::remove_file(&state_file);
        return Err(e);
    }
    let files = storage.finish()?;
    resume.active = false;
    let _ = std::fs::remove_file(&state_file);
    Ok(Outcome {
        name,
        files,
        length: info.length,
        resumed_bytes,
        sources: states.into_iter().map(SourceState::into_report).collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A plugin's whole download (`Plugin::download`) through the engine: progress goes out as
/// plugin events (`Events::progress`, dropped sources as warnings) and the outcome is the
/// ABI's [`DownloadOutcome`].
pub async fn download_for_plugin(
    sources: Vec<Arc<dyn PieceSource>>,
    options: &Options,
    events: &crate::plugin::Events,
) -> Result<crate::abi::DownloadOutcome, PluginError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let done = AtomicU64::new(0);
    let total = AtomicU64::new(0);
    let peers = sources.len() as u32;
    let on_event = |event: EngineEvent| match event {
        EngineEvent::Started { total: t, resumed, .. } => {
            total.store(t, Ordering::Relaxed);
            done.store(resumed, Ordering::Relaxed);
            events.progress(resumed, t, peers);
        }
        EngineEvent::Piece { bytes, .. } => {
            let now = done.fetch_add(bytes, Ordering::Relaxed) + bytes;
            events.progress(now, total.load(Ordering::Relaxed), peers);
        }
        EngineEvent::SourceDropped { label, reason } => events.warn(format!("{label}: {reason}")),
        _ => {}
    };
    let out = run(sources, options, &on_event).await?;
    Ok(crate::abi::DownloadOutcome {
        files: out.files.iter().map(|p| p.to_string_lossy().into_owned().into()).collect(),
        bytes: out.length,
        resumed_bytes: out.resumed_bytes,
        per_source: out
            .sources
            .into_iter()
            .map(|s| crate::abi::SourceBytes { label: s.label.into(), bytes: s.bytes })
            .collect(),
    })
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

fn drop_source(
    s: &mut SourceState,
    picker: &mut PiecePicker,
    reason: String,
    on_event: &(dyn Fn(EngineEvent) + Send + Sync),
) {
    if s.report.dropped.is_some() {
        return;
    }
    picker.remove_availability(s.availability.as_deref());
    on_event(EngineEvent::SourceDropped { label: s.report.label.clone(), reason: reason.clone() });
    s.report.dropped = Some(reason);
}

fn verify_all(storage: &Storage, layout: &Layout, verifier: &PieceVerifier) -> Result<(), EngineError> {
    if !verifier.has_hashes() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for i in 0..layout.piece_count() {
        let (off, len) = layout.piece(i);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{abi::FileEntry, plugin::BoxFut, verify::sha1};
    use abi_stable::std_types::RVec;
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    };

    /// An in-memory source: serves `data`, optionally corrupting or failing some calls.
    struct MemSource {
        data: Arc<Vec<u8>>,
        info: ContentInfo,
        corrupt: bool,
        fail_after: Option<u32>,
        calls: AtomicU32,
        has: Option<Vec<u32>>,
    }

    impl PieceSource for MemSource {
        fn info(&self) -> ContentInfo {
            self.info.clone()
        }
        fn availability(&self, _: u64) -> Vec<u32> {
            self.has.clone().unwrap_or_default()
        }
        fn fetch(&self, offset: u64, length: u64) -> BoxFut<RVec<u8>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let mut chunk = self.data[offset as usize..(offset + length) as usize].to_vec();
            let fail = self.fail_after.is_some_and(|k| n >= k);
            if self.corrupt {
                chunk[0] ^= 0xff;
            }
            Box::pin(async move {
                if fail {
                    Err(PluginError::network("connection reset"))
                } else {
                    Ok(chunk.into())
                }
            })
        }
    }

    fn content(len: usize) -> Arc<Vec<u8>> {
        Arc::new((0..len).map(|i| (i * 7 + i / 251) as u8).collect())
    }

    fn info_for(data: &[u8], piece: u64, hashed: bool, label: &str) -> ContentInfo {
        let hashes: Vec<u8> = if hashed { data.chunks(piece as usize).flat_map(sha1).collect() } else { vec![] };
        ContentInfo {
            name: "file.bin".into(),
            length: data.len() as u64,
            length_known: true,
            random_access: true,
            piece_length: if hashed { piece } else { 0 },
            hash_kind: if hashed { HashKind::Sha1Pieces } else { HashKind::None },
            piece_hashes: hashes.into(),
            root: RVec::new(),
            files: RVec::new(),
            label: label.into(),
        }
    }

    fn src(data: &Arc<Vec<u8>>, info: ContentInfo) -> MemSource {
        MemSource { data: data.clone(), info, corrupt: false, fail_after: None, calls: AtomicU32::new(0), has: None }
    }

    fn run_blocking(
        sources: Vec<Arc<dyn PieceSource>>,
        opts: &Options,
    ) -> (Result<Outcome, EngineError>, Vec<EngineEvent>) {
        let events = Mutex::new(Vec::new());
        let r = futures::executor::block_on(run(sources, opts, &|e| events.lock().unwrap().push(e)));
        (r, events.into_inner().unwrap())
    }

    #[test]
    fn only_the_same_merkle_tree_skips_the_second_check() {
        let merkle = |root: u8, piece: u64| ContentInfo {
            name: "m".into(),
            length: 10,
            length_known: true,
            random_access: true,
            piece_length: piece,
            hash_kind: HashKind::Sha256Merkle,
            piece_hashes: vec![root; 32].into(),
            root: vec![root; 32].into(),
            files: Default::default(),
            label: "m".into(),
        };
        assert!(same_piece_hashes(&merkle(1, 16), &merkle(1, 16)));
        assert!(!same_piece_hashes(&merkle(1, 16), &merkle(2, 16)), "another root");
        assert!(!same_piece_hashes(&merkle(1, 16), &merkle(1, 32)), "another cut");
        let sha1 = info_for(&[0; 10], 16, true, "t");
        assert!(!same_piece_hashes(&merkle(1, 16), &sha1), "a torrent's pieces are checked by the engine");
        let mut no_root = merkle(1, 16);
        no_root.root = Default::default();
        assert!(!same_piece_hashes(&no_root, &no_root));
    }

    #[test]
    fn two_sources_share_the_work_and_result_is_exact() {
        let data = content(3 << 20);
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(src(&data, info_for(&data, 256 << 10, true, "a")));
        let b = Arc::new(src(&data, info_for(&data, 256 << 10, false, "b")));
        let mut opts = Options::new(dir.path());
        opts.slots_per_source = 2;
        opts.sha256 = Some(crate::verify::sha256(&data));
        let (r, _) = run_blocking(vec![a, b], &opts);
        let out = r.unwrap();
        assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
        assert!(out.sources.iter().all(|s| s.bytes > 0), "{:?}", out.sources);
        assert_eq!(out.sources.iter().map(|s| s.bytes).sum::<u64>(), data.len() as u64);
        assert!(!state_path(&dir.path().join("file.bin")).exists());
        assert!(!part_path(&dir.path().join("file.bin")).exists());
    }

    #[test]
    fn corrupt_source_is_dropped_and_download_completes() {
        let data = content(2 << 20);
        let dir = tempfile::tempdir().unwrap();
        let good = Arc::new(src(&data, info_for(&data, 128 << 10, true, "good")));
        let mut bad = src(&data, info_for(&data, 128 << 10, true, "bad"));
        bad.corrupt = true;
        let (r, events) = run_blocking(vec![Arc::new(bad), good], &Options::new(dir.path()));
        let out = r.unwrap();
        assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
        let bad = &out.sources[0];
        assert_eq!(bad.bytes, 0);
        assert!(bad.dropped.as_deref().unwrap().contains("verification"));
        assert!(events.iter().any(|e| matches!(e, EngineEvent::SourceDropped { label, .. } if label == "bad")));
    }

    #[test]
    fn failing_source_is_dropped_and_the_other_finishes() {
        let data = content(2 << 20);
        let dir = tempfile::tempdir().unwrap();
        let mut flaky = src(&data, info_for(&data, 0, false, "flaky"));
        flaky.fail_after = Some(2);
        let good = src(&data, info_for(&data, 0, false, "good"));
        let (r, _) = run_blocking(vec![Arc::new(flaky), Arc::new(good)], &Options::new(dir.path()));
        let out = r.unwrap();
        assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
        assert!(out.sources[0].dropped.is_some());
    }

    #[test]
    fn all_sources_failing_is_an_error_and_leaves_no_final_file() {
        let data = content(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let mut s = src(&data, info_for(&data, 0, false, "dead"));
        s.fail_after = Some(0);
        let (r, _) = run_blocking(vec![Arc::new(s)], &Options::new(dir.path()));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("dead: connection reset"), "{e}");
        assert!(!dir.path().join("file.bin").exists());
    }

    #[test]
    fn resumes_verified_pieces_only() {
        let data = content(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        // First run: the source dies after 2 pieces.
        let mut s = src(&data, info_for(&data, 128 << 10, true, "s"));
        s.fail_after = Some(2);
        let mut opts = Options::new(dir.path());
        opts.slots_per_source = 1;
        opts.max_failures = 1;
        assert!(run_blocking(vec![Arc::new(s)], &opts).0.is_err());
        // Damage one of the two done pieces on disk: it must be fetched again.
        let part = part_path(&dir.path().join("file.bin"));
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        let s2 = Arc::new(src(&data, info_for(&data, 128 << 10, true, "s")));
        let (r, _) = run_blocking(vec![s2.clone()], &opts);
        let out = r.unwrap();
        assert_eq!(out.resumed_bytes, 128 << 10);
        assert_eq!(s2.calls.load(Ordering::SeqCst), 7);
        assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    }

    #[test]
    fn a_late_source_joins_and_rescues_the_download() {
        let data = content(2 << 20);
        let dir = tempfile::tempdir().unwrap();
        let mut dying = src(&data, info_for(&data, 0, false, "dying"));
        dying.fail_after = Some(1);
        let (tx, rx) = futures::channel::mpsc::unbounded::<Arc<dyn PieceSource>>();
        let mut opts = Options::new(dir.path());
        opts.slots_per_source = 1;
        let events = Mutex::new(Vec::new());
        let late = Arc::new(src(&data, info_for(&data, 0, false, "late")));
        let small = content(100);
        let wrong = Arc::new(src(&small, info_for(&small, 0, false, "wrong-size")));
        let on = |e| events.lock().unwrap().push(e);
        let out = futures::executor::block_on(async {
            let engine = run_with_late_sources(vec![Arc::new(dying)], Some(rx), &opts, &on);
            let feed = async {
                tx.unbounded_send(wrong).unwrap();
                tx.unbounded_send(late).unwrap();
                drop(tx);
            };
            futures::join!(engine, feed).0
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
        assert_eq!(out.sources.len(), 3);
        assert!(out.sources[1].dropped.as_deref().unwrap().contains("reports 100 bytes"));
        assert!(out.sources[2].bytes > 0);
        let events = events.into_inner().unwrap();
        assert_eq!(events.iter().filter(|e| matches!(e, EngineEvent::SourceAdded { .. })).count(), 2);
    }

    #[test]
    fn without_late_sources_everything_failing_is_an_error() {
        let data = content(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = futures::channel::mpsc::unbounded::<Arc<dyn PieceSource>>();
        drop(tx);
        let mut s = src(&data, info_for(&data, 0, false, "dead"));
        s.fail_after = Some(0);
        let r = futures::executor::block_on(run_with_late_sources(
            vec![Arc::new(s)],
            Some(rx),
            &Options::new(dir.path()),
            &|_| {},
        ));
        assert!(matches!(r, Err(EngineError::AllFailed(_))));
    }

    #[test]
    fn sha256_mismatch_fails_and_removes_parts() {
        let data = content(300_000);
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::new(dir.path());
        opts.sha256 = Some([0; 32]);
        let (r, _) = run_blocking(vec![Arc::new(src(&data, info_for(&data, 0, false, "s")))], &opts);
        assert!(matches!(r, Err(EngineError::Sha256Mismatch { .. })));
        assert!(!dir.path().join("file.bin").exists());
        assert!(!part_path(&dir.path().join("file.bin")).exists());
    }

    #[test]
    fn rarest_piece_comes_from_the_only_holder() {
        let data = content(4 * 1024);
        let dir = tempfile::tempdir().unwrap();
        let mut partial = src(&data, info_for(&data, 1024, true, "partial"));
        partial.has = Some(vec![1, 1, 0, 0]);
        let mut other = src(&data, info_for(&data, 1024, true, "other"));
        other.has = Some(vec![0, 0, 1, 1]);
        let (r, _) = run_blocking(vec![Arc::new(partial), Arc::new(other)], &Options::new(dir.path()));
        let out = r.unwrap();
        assert_eq!(out.sources[0].bytes, 2048);
        assert_eq!(out.sources[1].bytes, 2048);
    }

    #[test]
    fn multi_file_layout_stays_inside_the_folder() {
        let data = content(10_000);
        let dir = tempfile::tempdir().unwrap();
        let mut info = info_for(&data, 4096, true, "t");
        info.name = "../evil".into();
        info.files = vec![
            FileEntry { path: "../../a.txt".into(), offset: 0, length: 3000 },
            FileEntry { path: "/abs/b.txt".into(), offset: 3000, length: 7000 },
        ]
        .into();
        let (r, _) = run_blocking(vec![Arc::new(src(&data, info))], &Options::new(dir.path().join("out")));
        let out = r.unwrap();
        for f in &out.files {
            assert!(f.starts_with(dir.path().join("out")), "{f:?}");
        }
        assert_eq!(out.files[0], dir.path().join("out/.._evil/a.txt"));
        assert_eq!(out.files[1], dir.path().join("out/.._evil/abs/b.txt"));
        let a = std::fs::read(&out.files[0]).unwrap();
        let b = std::fs::read(&out.files[1]).unwrap();
        assert_eq!([a, b].concat(), *data);
    }

    #[test]
    fn safe_names() {
        assert_eq!(safe_name(".."), "download");
        assert_eq!(safe_name("a/b"), "a_b");
        assert_eq!(safe_relative("../x/./y"), Some(PathBuf::from("x/y")));
        assert_eq!(safe_relative("/.."), None);
    }
}
