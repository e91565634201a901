//! The byte-range source the engine pulls pieces through: a probe that learns what an `ftp://`
//! identifier names (a file's size, or a folder's tree), and a small pool of logged-in sessions,
//! one per concurrent fetch, reused from fetch to fetch.
//!
//! A fetch is `REST offset` + `RETR` and reads exactly the range into a buffer of its final
//! size; a range that ends before the file does closes the data connection there and reads the
//! server's 426 so the session stays usable (else it is dropped and the next fetch logs in
//! anew). A folder is one content whose files follow each other (`ContentInfo.files`, sorted by
//! path), so the engine downloads a tree with the same parallel connections and resume.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use chiral_sdk::{layout::MAX_PIECE_LENGTH, plugin::BoxFut, ContentInfo, Events, PieceSource, PluginError};
use suppaftp::tokio_rustls::rustls::ClientConfig;
use tokio::sync::Notify;

use crate::{
    conn::{io_reason, read_exact_into, Conn, OpenError, Slot, StartError, EOF_WAIT},
    reply::{self, Kind, Reply},
    target::Target,
};

/// Idle sessions kept per source.
const MAX_IDLE: usize = 32;
/// A session idle longer than this is checked with `NOOP` before it is used again.
const STALE_AFTER: Duration = Duration::from_secs(15);
/// How long a fetch waits for a session when the server allows no more.
const BUSY_WAIT: Duration = Duration::from_secs(120);
/// Most folders and files a tree download may list (bounds the work a hostile server can cause).
const MAX_DEPTH: usize = 64;
const MAX_FILES: usize = 200_000;
/// Most folders a tree download may have waiting to be listed.
const MAX_PENDING_FOLDERS: usize = 100_000;

/// One remote file of a content, at its offset in the content's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// The path as sent in commands.
    pub path: String,
    /// Relative path in the download (empty for a single file).
    pub rel: String,
    pub offset: u64,
    pub length: u64,
}

/// Logged-in sessions to one server, shared by the fetches of a source.
///
/// A server that turns a session away for having too many (many limit each address to a few)
/// caps the pool at the number open: further fetches wait for a session to come back instead of
/// failing.
pub struct Pool {
    target: Target,
    tls: Option<Arc<ClientConfig>>,
    epsv: Arc<AtomicBool>,
    idle: Mutex<Vec<(Conn, Instant)>>,
    /// Sessions open now (idle or in use).
    live: Arc<AtomicUsize>,
    /// Most sessions the server accepted at once, once it refused one more.
    cap: AtomicUsize,
    /// Signalled when a session is given back or closed.
    freed: Arc<Notify>,
}

impl Pool {
    pub fn new(target: Target, tls: Option<Arc<ClientConfig>>) -> Self {
        Self {
            target,
            tls,
            epsv: Arc::new(AtomicBool::new(true)),
            idle: Mutex::new(Vec::new()),
            live: Arc::new(AtomicUsize::new(0)),
            cap: AtomicUsize::new(usize::MAX),
            freed: Arc::new(Notify::new()),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A new session, counted as open.
    pub async fn connect(&self) -> Result<Conn, OpenError> {
        let mut conn = Conn::open(&self.target, self.tls.clone(), self.epsv.clone()).await?;
        conn.slot = Some(Slot::new(self.live.clone(), self.freed.clone()));
        Ok(conn)
    }

    /// An idle session if there is one (`true`: reused), else a new one; when the server has
    /// no room for another, waits for one of ours.
    pub async fn take(&self) -> Result<(Conn, bool), PluginError> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            if let Some((mut conn, since)) = next {
                // Long idle: the server may have hung up.
                if since.elapsed() < STALE_AFTER || matches!(conn.cmd("NOOP").await, Ok(r) if r.is_success()) {
                    return Ok((conn, true));
                }
                continue;
            }
            let live = self.live.load(Ordering::SeqCst);
            if live < self.cap.load(Ordering::SeqCst) {
                match self.connect().await {
                    Ok(conn) => return Ok((conn, false)),
                    Err(e) if e.busy && self.live.load(Ordering::SeqCst) > 0 => {
                        self.cap.store(self.live.load(Ordering::SeqCst).max(1), Ordering::SeqCst);
                        continue;
                    }
                    Err(e) => return Err(e.error),
                }
            }
            if tokio::time::timeout(BUSY_WAIT, freed).await.is_err() {
                return Err(PluginError::network(format!(
                    "{}: no session free for {}s (the server allows {} at once)",
                    self.target.label,
                    BUSY_WAIT.as_secs(),
                    self.cap.load(Ordering::SeqCst)
                )));
            }
        }
    }

    /// Returns a session for reuse, unless it is out of step.
    pub fn give(&self, conn: Conn) {
        if conn.broken {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
            drop(idle);
            self.freed.notify_one();
        }
    }
}

/// What a probe learned.
pub struct Probe {
    pub info: ContentInfo,
    pub files: Vec<RemoteFile>,
    pub pool: Arc<Pool>,
}

/// Logs in and learns what `target` names: a file (its size by `SIZE`, else `LIST`) or a
/// folder (its tree), and whether the server restarts transfers at an offset (`REST`).
pub async fn probe(target: Target, tls: Option<Arc<ClientConfig>>, events: &Events) -> Result<Probe, PluginError> {
    let pool = Arc::new(Pool::new(target, tls));
    let mut conn = pool.connect().await?;
    let t = pool.target().clone();
    let (files, length_known, is_dir) = if t.is_dir {
        (walk(&mut conn, &t, events).await?, true, true)
    } else {
        match conn.size(&t.path).await? {
            Ok(Some(n)) => (vec![single(&t, n)], true, false),
            Ok(None) => match list_size(&mut conn, &t).await? {
                Some(n) => (vec![single(&t, n)], true, false),
                None => (vec![single(&t, 0)], false, false),
            },
            Err(refused) => {
                // 550 for a folder named without its trailing slash, too.
                // (The login folder is asked first: PWD after the CWD would be the folder.)
                let home = conn.home().await?;
                if refused.is_unavailable() && conn.cwd(&t.path).await? {
                    if !conn.cwd(&home).await? {
                        conn.broken = true;
                    }
                    let mut dir = t.clone();
                    dir.is_dir = true;
                    (walk(&mut conn, &dir, events).await?, true, true)
                } else {
                    return Err(missing(&t, &refused, &conn));
                }
            }
        }
    };
    if is_dir && files.is_empty() {
        return Err(PluginError::not_found(format!("no files in the folder {}", t.label)));
    }
    let random_access = conn.supports_rest().await?;
    pool.give(conn);
    let length: u64 = files.iter().map(|f| f.length).sum();
    let mut info = ContentInfo::new(t.name(), length).label(t.label.as_str());
    info.length_known = length_known;
    info.random_access = random_access;
    if is_dir {
        for f in &files {
            info = info.file(f.rel.as_str(), f.offset, f.length);
        }
    }
    Ok(Probe { info, files, pool })
}

fn single(t: &Target, length: u64) -> RemoteFile {
    RemoteFile { path: t.path.clone(), rel: String::new(), offset: 0, length }
}

/// The error for a file the server refused to size or send.
pub fn missing(t: &Target, r: &Reply, conn: &Conn) -> PluginError {
    let text = format!("{}: {}", t.label, conn.scrub(&r.text));
    if r.is_unavailable() {
        PluginError::not_found(format!("no such file: {text}"))
    } else if r.is_transient() {
        PluginError::network(text)
    } else {
        PluginError::other(text)
    }
}

/// The size of a file as its `LIST` line gives it (servers without `SIZE`).
async fn list_size(conn: &mut Conn, t: &Target) -> Result<Option<u64>, PluginError> {
    match conn.listing(&format!("LIST {}", t.path)).await? {
        Ok(lines) => Ok(lines
            .iter()
            .filter_map(|l| reply::parse_list_line(l))
            .find(|e| e.kind == Kind::File)
            .and_then(|e| e.size)),
        Err(r) if r.is_unavailable() => Err(missing(t, &r, conn)),
        Err(_) => Ok(None),
    }
}

/// `base` + `/` + `name` for command paths (`base` empty: relative to the login folder).
fn join(base: &str, name: &str) -> String {
    match base {
        "" => name.to_string(),
        b if b.ends_with('/') => format!("{b}{name}"),
        b => format!("{b}/{name}"),
    }
}

/// Lists the tree below `t` (a folder): every regular file with its size, sorted by relative
/// path so the layout is the same from run to run (resume depends on it). Symbolic links are
/// not followed. The session ends back in its login folder.
async fn walk(conn: &mut Conn, t: &Target, events: &Events) -> Result<Vec<RemoteFile>, PluginError> {
    let home = conn.home().await?;
    let root = if t.path.starts_with('/') { t.path.clone() } else { join(&home, &t.path) };
    let feats = conn.features().await?;
    let use_mlsd = feats.iter().any(|f| f == "MLSD");
    let mut found: Vec<(String, String, Option<u64>)> = Vec::new();
    let mut stack = vec![(String::new(), root.clone(), 0usize)];
    while let Some((rel, abs, depth)) = stack.pop() {
        if !conn.cwd(&abs).await? {
            if rel.is_empty() {
                return Err(PluginError::not_found(format!("no such folder: {}", t.label)));
            }
            events.warn(format!("{}: cannot enter {rel}, left out", t.label));
            continue;
        }
        let lines = if use_mlsd { conn.listing("MLSD").await? } else { conn.listing("LIST").await? };
        let lines = match lines {
            Ok(l) => l,
            Err(r) => {
                let e = PluginError::other(format!(
                    "{}: cannot list {}: {}",
                    t.label,
                    if rel.is_empty() { "the folder" } else { &rel },
                    conn.scrub(&r.text)
                ));
                if rel.is_empty() {
                    return Err(e);
                }
                events.warn(e.message.to_string());
                continue;
            }
        };
        let mut entries: Vec<reply::Entry> = lines
            .iter()
            .filter_map(|l| if use_mlsd { reply::parse_mlsd_line(l) } else { reply::parse_list_line(l) })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let child_rel = join(&rel, &e.name);
            let child_abs = join(&abs, &e.name);
            match e.kind {
                Kind::File => {
                    if found.len() >= MAX_FILES {
                        return Err(PluginError::invalid(format!("{}: more than {MAX_FILES} files", t.label)));
                    }
                    found.push((child_rel, child_abs, e.size));
                }
                Kind::Dir if depth + 1 < MAX_DEPTH => {
                    if stack.len() >= MAX_PENDING_FOLDERS {
                        return Err(PluginError::invalid(format!(
                            "{}: more than {MAX_PENDING_FOLDERS} folders to list",
                            t.label
                        )));
                    }
                    stack.push((child_rel, child_abs, depth + 1));
                }
                Kind::Dir => events.warn(format!("{}: {child_rel} is nested too deep, left out", t.label)),
                Kind::Link => events.debug(format!("{}: {child_rel} is a symbolic link, not followed", t.label)),
                Kind::Other => {}
            }
        }
    }
    if !conn.cwd(&home).await? {
        conn.broken = true;
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut files = Vec::with_capacity(found.len());
    let mut offset = 0u64;
    for (rel, abs, size) in found {
        let length = match size {
            Some(n) => n,
            None => match conn.size(&abs).await? {
                Ok(Some(n)) => n,
                _ => {
                    events.warn(format!("{}: size of {rel} unknown, left out", t.label));
                    continue;
                }
            },
        };
        files.push(RemoteFile { path: abs, rel, offset, length });
        offset = offset
            .checked_add(length)
            .ok_or_else(|| PluginError::invalid(format!("{}: file sizes add up past 2^64", t.label)))?;
    }
    Ok(files)
}

/// Byte-range access to a probed content, for the engine.
pub struct FtpSource {
    inner: Arc<Inner>,
}

struct Inner {
    info: ContentInfo,
    files: Vec<RemoteFile>,
    pool: Arc<Pool>,
}

impl FtpSource {
    pub fn new(probe: Probe) -> Self {
        Self { inner: Arc::new(Inner { info: probe.info, files: probe.files, pool: probe.pool }) }
    }
}

impl PieceSource for FtpSource {
    fn info(&self) -> ContentInfo {
        self.inner.info.clone()
    }

    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.fetch(offset, length).await })
    }
}

/// How a fetch on one session failed.
struct Failed {
    error: PluginError,
    /// Data had started to flow (the session was alive): no silent retry.
    started: bool,
}

impl Inner {
    async fn fetch(&self, offset: u64, length: u64) -> Result<Vec<u8>, PluginError> {
        let label = &self.pool.target().label;
        if length == 0 {
            return Ok(Vec::new());
        }
        if length > MAX_PIECE_LENGTH {
            return Err(PluginError::invalid(format!("a {length}-byte range is larger than one piece may be")));
        }
        let end = offset.checked_add(length).filter(|e| !self.info.length_known || *e <= self.info.length);
        let Some(end) = end else {
            return Err(PluginError::invalid(format!("range {offset}+{length} is past the end of {label}")));
        };
        let cap = usize::try_from(length).map_err(|_| PluginError::invalid("range too large for this machine"))?;
        let (conn, reused) = self.pool.take().await?;
        let mut buf = Vec::with_capacity(cap);
        match self.fetch_on(conn, offset, end, &mut buf).await {
            Ok(conn) => {
                self.pool.give(conn);
                Ok(buf)
            }
            // A reused session that failed before any data came was most likely closed by the
            // server while idle: once more on a fresh one.
            Err(f) if reused && !f.started => {
                buf.clear();
                let conn = self.pool.connect().await.map_err(|e| e.error)?;
                let conn = self.fetch_on(conn, offset, end, &mut buf).await.map_err(|f| f.error)?;
                self.pool.give(conn);
                Ok(buf)
            }
            Err(f) => Err(f.error),
        }
    }

    /// Reads content bytes `[offset, end)` onto `buf`, file by file, on `conn`.
    async fn fetch_on(&self, mut conn: Conn, offset: u64, end: u64, buf: &mut Vec<u8>) -> Result<Conn, Failed> {
        let first = self.files.partition_point(|f| f.offset + f.length <= offset);
        for f in &self.files[first..] {
            if f.offset >= end {
                break;
            }
            let from = offset.max(f.offset) - f.offset;
            let to = end.min(f.offset + f.length) - f.offset;
            if to <= from {
                continue;
            }
            let at_eof = self.info.length_known && to == f.length;
            let started = !buf.is_empty();
            retr_range(&mut conn, &self.pool.target().with_label_of(f), &f.path, from, to - from, at_eof, buf)
                .await
                .map_err(|(error, data)| Failed { error, started: started || data })?;
        }
        Ok(conn)
    }
}

impl Target {
    /// This target's label, or the label of one file below it (for messages).
    fn with_label_of(&self, f: &RemoteFile) -> std::borrow::Cow<'_, str> {
        if f.rel.is_empty() {
            std::borrow::Cow::Borrowed(self.label.as_str())
        } else {
            std::borrow::Cow::Owned(format!(
                "{}/{}",
                self.label.trim_end_matches('/'),
                crate::target::encode_path(&f.rel)
            ))
        }
    }
}

/// `REST from` + `RETR path`, then exactly `len` bytes onto `buf`. `at_eof`: the range ends at
/// the file's end, so the transfer completes normally; else the data connection is closed at
/// the range end and the server's reaction read. The error's flag says whether data had flowed.
async fn retr_range(
    conn: &mut Conn,
    label: &str,
    path: &str,
    from: u64,
    len: u64,
    at_eof: bool,
    buf: &mut Vec<u8>,
) -> Result<(), (PluginError, bool)> {
    let rcvbuf = (!at_eof).then(|| crate::conn::range_rcvbuf(len));
    let mut data = match conn.start(&format!("RETR {path}"), from, rcvbuf).await {
        Ok(d) => d,
        Err(StartError::RestRefused(r)) => {
            return Err((
                PluginError::invalid(format!(
                    "{label}: the server refused to start at an offset: {}",
                    conn.scrub(&r.text)
                )),
                false,
            ))
        }
        Err(StartError::Refused(r)) => {
            let text = format!("{label}: {}", conn.scrub(&r.text));
            let e = if r.is_unavailable() {
                PluginError::not_found(format!("no such file: {text}"))
            } else if r.is_transient() {
                PluginError::network(text)
            } else {
                PluginError::other(text)
            };
            return Err((e, false));
        }
        Err(StartError::Failed(e)) => return Err((e, false)),
    };
    let before = buf.len();
    let n = usize::try_from(len).map_err(|_| (PluginError::invalid("range too large"), false))?;
    if let Err(e) = read_exact_into(&mut data, buf, n).await {
        let got = buf.len() - before;
        conn.broken = true;
        return Err((PluginError::network(format!("{} after {got} of {len} bytes: {label}", io_reason(&e))), got > 0));
    }
    if at_eof {
        // The server closes the data connection at the end of the file.
        let mut one = [0u8; 1];
        let eof = matches!(
            tokio::time::timeout(EOF_WAIT, tokio::io::AsyncReadExt::read(&mut data, &mut one)).await,
            Ok(Ok(0))
        );
        drop(data);
        if eof {
            match conn.finish("RETR").await {
                // The bytes are all here; a late complaint only means the session is suspect.
                Ok(r) if !r.is_success() => conn.broken = true,
                Ok(_) => {}
                Err(_) => conn.broken = true,
            }
            return Ok(());
        }
        // More than the size said: the file grew. These bytes are still the range asked for.
    } else {
        drop(data);
    }
    if conn.abandon().await.is_err() {
        conn.broken = true;
    }
    Ok(())
}

/// Opens `target` as an engine source.
pub async fn open(target: Target, tls: Option<Arc<ClientConfig>>, events: &Events) -> Result<FtpSource, PluginError> {
    let probe = probe(target, tls, events).await?;
    let info = &probe.info;
    events.debug(format!(
        "{}: {} bytes{}{}, REST {}",
        info.label,
        info.length,
        if info.length_known { "" } else { " (unknown)" },
        if info.files.is_empty() { String::new() } else { format!(" in {} files", info.files.len()) },
        if info.random_access { "yes" } else { "no" }
    ));
    Ok(FtpSource::new(probe))
}

/// The files of a probed content (for the plugin's own streaming download).
pub fn files_of(source: &FtpSource) -> (&[RemoteFile], &Arc<Pool>) {
    (&source.inner.files, &source.inner.pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/x", "a b"), "/x/a b");
        assert_eq!(join("x/", "a"), "x/a");
    }

    #[test]
    fn file_labels() {
        let t = Target::parse("ftp://u:pw@h/dir/", &Default::default()).unwrap();
        let f = RemoteFile { path: "/dir/a b".into(), rel: "a b".into(), offset: 0, length: 1 };
        assert_eq!(t.with_label_of(&f), "ftp://h/dir/a%20b");
        let s = RemoteFile { path: "x".into(), rel: String::new(), offset: 0, length: 1 };
        assert_eq!(t.with_label_of(&s), "ftp://h/dir/");
    }
}
