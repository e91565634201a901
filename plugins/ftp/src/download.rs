//! Whole downloads run by the plugin itself (the host calls `download` when no source gives
//! piece access, e.g. a server without `REST`; other hosts may call it directly).
//!
//! A server that restarts transfers at an offset goes through the SDK's engine with this
//! plugin's source: parallel connections and resume. Otherwise each file is streamed in one
//! `RETR` into `<name>.part` and renamed when complete, so a file at the final name is always
//! a whole one.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use chiral_sdk::{
    engine::{self, safe_name, safe_relative},
    options::Opts,
    resume::part_path,
    DownloadOutcome, DownloadRequest, Events, PieceSource, PluginError,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    conn::{io_reason, Conn, StartError, READ_TIMEOUT},
    source::{self, FtpSource, RemoteFile},
    Settings,
};

/// Connections used when the request leaves the choice to the plugin.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Read and write size of the streaming path.
const STREAM_BUFFER: usize = 1 << 20;
/// Least time between two progress events of the streaming path.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Downloads `request.identifier` into `request.out_dir`.
pub async fn download(
    settings: Arc<Settings>,
    request: DownloadRequest,
    events: Events,
) -> Result<DownloadOutcome, PluginError> {
    let target = settings.target(&request.identifier, &Opts::from_abi(&request.options))?;
    let tls = settings.tls_for(&target)?;
    let out_dir = PathBuf::from(request.out_dir.as_str());
    let source = source::open(target, tls, &events).await?;
    let info = source.info();
    if info.random_access && info.length_known {
        let connections = match request.connections {
            0 => DEFAULT_CONNECTIONS,
            n => n as usize,
        };
        with_engine(source, out_dir, connections, &events).await
    } else {
        events.debug(format!("{} does not restart transfers at an offset: one stream per file", info.label));
        stream_all(&source, &out_dir, &events).await
    }
}

/// Parallel ranged download through the SDK engine (resumable, `connections` fetches at once).
async fn with_engine(
    source: FtpSource,
    out_dir: PathBuf,
    connections: usize,
    events: &Events,
) -> Result<DownloadOutcome, PluginError> {
    let source: Arc<dyn PieceSource> = Arc::new(source);
    let mut opts = engine::Options::new(out_dir);
    opts.slots_per_source = connections;
    engine::download_for_plugin(vec![source], &opts, events).await
}

/// Progress of the streaming path across files.
struct Progress<'a> {
    events: &'a Events,
    done: u64,
    total: u64,
    last: Instant,
}

impl Progress<'_> {
    fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.events.progress(self.done, self.total, 1);
            self.last = Instant::now();
        }
    }
}

/// Every file of the content, one `RETR` each, in order, on one session.
async fn stream_all(source: &FtpSource, out_dir: &Path, events: &Events) -> Result<DownloadOutcome, PluginError> {
    let info = source.info();
    let (files, pool) = source::files_of(source);
    let name = safe_name(&info.name);
    let single = info.files.is_empty();
    let mut written = Vec::with_capacity(files.len());
    let mut progress =
        Progress { events, done: 0, total: if info.length_known { info.length } else { 0 }, last: Instant::now() };
    events.progress(0, progress.total, 1);
    let (mut conn, _) = pool.take().await?;
    let mut resumed = 0u64;
    let mut delivered = 0u64;
    for f in files {
        let final_path = if single {
            out_dir.join(&name)
        } else {
            let rel =
                safe_relative(&f.rel).ok_or_else(|| PluginError::invalid(format!("unusable file name {:?}", f.rel)))?;
            out_dir.join(&name).join(rel)
        };
        if final_path.exists() {
            // Complete from an earlier run (as the engine reports it), else not ours to touch.
            let len = std::fs::metadata(&final_path).map(|m| m.len()).ok();
            if info.length_known && chiral_sdk::resume::is_own_file(&final_path) && len == Some(f.length) {
                resumed += f.length;
                progress.add(f.length);
                written.push(path_string(&final_path));
                continue;
            }
            return Err(PluginError::io(format!(
                "{} already exists with other content; move it away to download again",
                final_path.display()
            )));
        }
        let label = if f.rel.is_empty() {
            info.label.to_string()
        } else {
            format!("{}{}", info.label, crate::target::encode_path(&f.rel))
        };
        let got = stream_file(&mut conn, f, info.length_known, out_dir, &final_path, &label, &mut progress).await?;
        delivered += got;
        written.push(path_string(&final_path));
    }
    pool.give(conn);
    let total = resumed + delivered;
    events.progress(total, total, 1);
    Ok(DownloadOutcome::new(written, total).resumed(resumed).source(info.label.as_str(), delivered))
}

/// One whole file into `<final>.part`, renamed to `final_path` when complete.
async fn stream_file(
    conn: &mut Conn,
    f: &RemoteFile,
    length_known: bool,
    out_dir: &Path,
    final_path: &Path,
    label: &str,
    progress: &mut Progress<'_>,
) -> Result<u64, PluginError> {
    let mut data = match conn.start(&format!("RETR {}", f.path), 0, None).await {
        Ok(d) => d,
        Err(StartError::Refused(r)) | Err(StartError::RestRefused(r)) => {
            let text = format!("{label}: {}", conn.scrub(&r.text));
            return Err(if r.is_unavailable() {
                PluginError::not_found(format!("no such file: {text}"))
            } else if r.is_transient() {
                PluginError::network(text)
            } else {
                PluginError::other(text)
            });
        }
        Err(StartError::Failed(e)) => return Err(e),
    };
    if let Some(dir) = final_path.parent() {
        chiral_sdk::resume::create_dirs_within(out_dir, dir).map_err(|e| io_error(dir, e))?;
    }
    let part = part_path(final_path);
    let mut file =
        tokio::fs::File::from_std(chiral_sdk::resume::open_part(&part, true).map_err(|e| io_error(&part, e))?);
    let mut guard = engine::RemoveOnDrop { path: &part, armed: true };
    let mut buf = vec![0u8; STREAM_BUFFER];
    let mut got = 0u64;
    loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, data.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                conn.broken = true;
                return Err(PluginError::network(format!("{} after {got} bytes: {label}", io_reason(&e))));
            }
            Err(_) => {
                conn.broken = true;
                return Err(PluginError::network(format!("stalled after {got} bytes: {label}")));
            }
        };
        if n == 0 {
            break;
        }
        got += n as u64;
        if length_known && got > f.length {
            conn.broken = true;
            return Err(PluginError::invalid(format!(
                "server sent more than the {} bytes it announced: {label}",
                f.length
            )));
        }
        file.write_all(&buf[..n]).await.map_err(|e| io_error(&part, e))?;
        progress.add(n as u64);
    }
    drop(data);
    file.flush().await.map_err(|e| io_error(&part, e))?;
    drop(file);
    let end = conn.finish("RETR").await?;
    if !end.is_success() {
        return Err(PluginError::network(format!("transfer failed: {label}: {}", conn.scrub(&end.text))));
    }
    if length_known && got != f.length {
        return Err(PluginError::network(format!("short read: {got} of {} bytes: {label}", f.length)));
    }
    tokio::fs::rename(&part, final_path).await.map_err(|e| io_error(final_path, e))?;
    guard.armed = false;
    Ok(got)
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn io_error(path: &Path, e: std::io::Error) -> PluginError {
    PluginError::io(format!("{}: {e}", path.display()))
}
