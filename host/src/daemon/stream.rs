//! `GET /api/v1/downloads/{id}/stream`: one file of a download served over HTTP while it
//! downloads, with `Range`, so a media player can play a torrent as it arrives.
//!
//! The engine publishes into the download's [`Playhead`] which pieces are verified and on disk
//! and where each file lies (`.part` until the end, then its final name). A reader sends bytes
//! only from pieces that are done, sets the playhead's cursor to where it reads, so the engine
//! fetches the pieces from there on first, and waits for the next piece when it catches up. A
//! finished download is read from its files. Nothing here reads a byte the engine has not
//! verified.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderValue, StatusCode},
    response::Response,
};
use chiral_sdk::{
    engine::playhead::{PlayFile, Playhead},
    http_range::{content_range, parse_range, RangeReply},
};

use super::{store::DownloadState, Daemon, DaemonError};

/// Bytes read and sent at once, at most.
const CHUNK: u64 = 1 << 20;
/// How long a running download may take to publish its files before the request gives up.
const START_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting reader looks at the download's state again even without a new piece.
const RECHECK: Duration = Duration::from_secs(5);

/// What the daemon knows of the download being streamed.
pub struct Target {
    pub playhead: Arc<Playhead>,
    pub state: DownloadState,
    /// The files it wrote, when finished.
    pub files: Vec<PathBuf>,
}

/// The answer to a stream request for file `file` (default: the first chosen file) of download
/// `id`, with the request's `Range` header.
pub async fn respond(
    daemon: Arc<Daemon>,
    id: String,
    file: Option<usize>,
    range: Option<Vec<u8>>,
) -> Result<Response, DaemonError> {
    let t = daemon.stream_target(&id)?;
    let (files, complete) = match t.state {
        // The same numbering as while it ran (every file of the content) when this daemon ran
        // it; a download finished before a restart only knows the files it wrote.
        DownloadState::Completed => match t.playhead.files() {
            Some(files) => (files, true),
            None => (finished_files(&t.files)?, true),
        },
        DownloadState::Queued => {
            return Err(DaemonError::Conflict(format!("{id} is queued: it can be streamed once it runs")))
        }
        DownloadState::Paused | DownloadState::Failed => {
            return Err(DaemonError::Conflict(format!("{id} is not running: resume it to stream it")))
        }
        DownloadState::Running => (published_files(&t.playhead, &id).await?, false),
    };
    let index = match file {
        Some(n) => n,
        None => files.iter().position(|f| f.wanted).unwrap_or(0),
    };
    let f = files
        .get(index)
        .cloned()
        .ok_or_else(|| DaemonError::NotFound(format!("{id} has no file {index} (it has {})", files.len())))?;
    if !f.wanted {
        return Err(DaemonError::Conflict(format!("file {index} of {id} is not chosen for download")));
    }
    let (start, end, status) = match parse_range(range.as_deref(), f.length) {
        RangeReply::Full => (0, f.length, StatusCode::OK),
        RangeReply::Partial { start, end } => (start, end + 1, StatusCode::PARTIAL_CONTENT),
        RangeReply::Unsatisfiable => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            r.headers_mut().insert(header::CONTENT_RANGE, header_value(&format!("bytes */{}", f.length)));
            return Ok(r);
        }
    };
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type(&f.final_path)));
    h.insert(header::CONTENT_LENGTH, header_value(&(end - start).to_string()));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(header::CONTENT_RANGE, header_value(&content_range(start, end - 1, f.length)));
    }
    let reader = Reader { daemon, id, playhead: t.playhead.clone(), file: f, pos: start, end, complete };
    *r.body_mut() = Body::from_stream(futures::stream::unfold(reader, |mut rd| async move {
        match rd.next().await {
            Ok(Some(b)) => Some((Ok(b), rd)),
            Ok(None) => None,
            // The body ends short of its length: the player sees a broken transfer, not bad bytes.
            Err(e) => {
                rd.pos = rd.end;
                Some((Err(e), rd))
            }
        }
    }));
    Ok(r)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The files a finished download wrote (one after the other in the content).
fn finished_files(paths: &[PathBuf]) -> Result<Vec<PlayFile>, DaemonError> {
    let mut offset = 0;
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let length = std::fs::metadata(p)
            .map_err(|e| DaemonError::Conflict(format!("{}: {e}", chiral_sdk::text::line(&p.display().to_string()))))?
            .len();
        out.push(PlayFile { final_path: p.clone(), part: p.clone(), offset, length, wanted: true });
        offset += length;
    }
    Ok(out)
}

/// The files of a running download, once its engine has published them.
async fn published_files(ph: &Playhead, id: &str) -> Result<Vec<PlayFile>, DaemonError> {
    let mut rx = ph.watch();
    let wait = async {
        loop {
            rx.borrow_and_update();
            if let Some(files) = ph.files() {
                return files;
            }
            if rx.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    };
    tokio::time::timeout(START_WAIT, wait).await.map_err(|_| {
        DaemonError::Conflict(format!(
            "{id} has not said which pieces it has within {}s (a backend that runs the whole download itself, \
             such as rqbit, can be streamed once complete)",
            START_WAIT.as_secs()
        ))
    })
}

/// A media type from the file name, for players that look at it.
fn media_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "avi" => "video/x-msvideo",
        "mov" => "video/quicktime",
        "ts" => "video/mp2t",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" => "audio/ogg",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// One response body: file bytes `pos..end`, each sent once its piece is on disk.
struct Reader {
    daemon: Arc<Daemon>,
    id: String,
    playhead: Arc<Playhead>,
    file: PlayFile,
    pos: u64,
    end: u64,
    /// The download is finished: every byte is there.
    complete: bool,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.playhead.clear_cursor();
    }
}

impl Reader {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        let mut rx = self.playhead.watch();
        loop {
            if self.pos >= self.end {
                return Ok(None);
            }
            let want = (self.end - self.pos).min(CHUNK);
            rx.borrow_and_update();
            let n = if self.complete {
                want
            } else {
                let at = self.file.offset + self.pos;
                self.playhead.set_cursor(at);
                self.playhead.ready(at, want)
            };
            if n > 0 {
                let bytes = read_at(&self.file, self.pos, n).await?;
                self.pos += n;
                return Ok(Some(Bytes::from(bytes)));
            }
            let _ = tokio::time::timeout(RECHECK, rx.changed()).await;
            match self.daemon.stream_target(&self.id).map(|t| t.state) {
                Ok(DownloadState::Running) => {}
                Ok(DownloadState::Completed) => self.complete = true,
                Ok(state) => return Err(io::Error::other(format!("the download stopped ({state:?})"))),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }
}

/// `n` bytes of `file` from `pos`: from its `.part` while it downloads, from its final name
/// once renamed.
async fn read_at(file: &PlayFile, pos: u64, n: u64) -> io::Result<Vec<u8>> {
    let (part, final_path) = (file.part.clone(), file.final_path.clone());
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt as _;
        let f = match std::fs::File::open(&part) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::File::open(&final_path)?,
            other => other?,
        };
        let mut buf = vec![0u8; n as usize];
        f.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_by_extension() {
        assert_eq!(media_type(Path::new("a/Movie.MKV")), "video/x-matroska");
        assert_eq!(media_type(Path::new("b.mp4")), "video/mp4");
        assert_eq!(media_type(Path::new("noext")), "application/octet-stream");
    }
}
