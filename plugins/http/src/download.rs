//! Whole downloads run by the plugin itself (the seed contract's `download(identifier)`).
//!
//! A server that serves byte ranges of a known length goes through the SDK's engine, which
//! gives parallel connections and resume for free. Anything else (ranges ignored, length
//! unknown) is streamed in one request into `<name>.part` and renamed when complete, so a
//! file at the final name is always a whole one.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use chiral_sdk::{
    engine::{self, RemoveOnDrop},
    resume::part_path,
    DownloadOutcome, DownloadRequest, Events, PieceSource, PluginError,
};
use reqwest::{header::CONTENT_LENGTH, Client, StatusCode};
use tokio::io::AsyncWriteExt as _;

use crate::client::{self, HttpSource, Probe};

/// Connections used when the request leaves the choice to the plugin.
pub const DEFAULT_CONNECTIONS: usize = 8;
/// Write buffer of the streaming path: large writes, few system calls.
const STREAM_BUFFER: usize = 1 << 20;
/// Least time between two progress events of the streaming path.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Downloads `request.identifier` into `request.out_dir`.
pub async fn download(
    client: Client,
    request: DownloadRequest,
    events: Events,
) -> Result<DownloadOutcome, PluginError> {
    let url = client::parse_url(&request.identifier)?;
    let out_dir = PathBuf::from(request.out_dir.as_str());
    let probe = client::probe(&client, &url).await?;
    if probe.info.random_access && probe.info.length_known {
        let connections = match request.connections {
            0 => DEFAULT_CONNECTIONS,
            n => n as usize,
        };
        with_engine(client, probe, out_dir, connections, &events).await
    } else {
        events.debug(format!("{} does not serve byte ranges of a known length: one stream", probe.info.label));
        stream_whole(&client, probe, &out_dir, &events).await
    }
}

/// Parallel ranged download through the SDK engine (resumable, `connections` requests at once).
async fn with_engine(
    client: Client,
    probe: Probe,
    out_dir: PathBuf,
    connections: usize,
    events: &Events,
) -> Result<DownloadOutcome, PluginError> {
    let source: Arc<dyn PieceSource> = Arc::new(HttpSource::new(client, probe));
    let mut opts = engine::Options::new(out_dir);
    opts.slots_per_source = connections;
    engine::download_for_plugin(vec![source], &opts, events).await
}

/// One plain `GET` of the whole body into `<name>.part`, renamed to `<name>` when complete.
async fn stream_whole(
    client: &Client,
    probe: Probe,
    out_dir: &Path,
    events: &Events,
) -> Result<DownloadOutcome, PluginError> {
    let label = probe.info.label.to_string();
    let final_path = out_dir.join(engine::safe_name(&probe.info.name));
    let shown = crate::names::redacted(&probe.final_url);

    if final_path.exists() {
        // Already complete from an earlier run (as the engine reports it), else not ours to touch.
        let len = std::fs::metadata(&final_path).map(|m| m.len()).ok();
        if probe.info.length_known && chiral_sdk::resume::is_own_file(&final_path) && len == Some(probe.info.length) {
            events.progress(probe.info.length, probe.info.length, 0);
            return Ok(outcome(&final_path, probe.info.length, probe.info.length, label, 0));
        }
        return Err(PluginError::io(format!(
            "{} already exists with other content; move it away to download again",
            final_path.display()
        )));
    }

    let mut resp = client.get(probe.final_url.clone()).send().await.map_err(|e| client::request_error(&e, &shown))?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::PARTIAL_CONTENT => {
            return Err(PluginError::invalid(format!("server sent a partial body to a plain GET: {shown}")))
        }
        s => return Err(client::status_error(s, &shown)),
    }
    // This response's own length is the one its body must match.
    let expected = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(probe.info.length_known.then_some(probe.info.length));

    tokio::fs::create_dir_all(out_dir).await.map_err(|e| io_error(out_dir, e))?;
    let part = part_path(&final_path);
    let file = tokio::fs::File::from_std(chiral_sdk::resume::open_part(&part, true).map_err(|e| io_error(&part, e))?);
    let mut guard = RemoveOnDrop { path: &part, armed: true };
    let mut out = tokio::io::BufWriter::with_capacity(STREAM_BUFFER, file);
    let total = expected.unwrap_or(0);
    let mut got: u64 = 0;
    let mut last_event = Instant::now();
    events.progress(0, total, 1);
    while let Some(chunk) = resp.chunk().await.map_err(|e| client::request_error(&e, &shown))? {
        got += chunk.len() as u64;
        if expected.is_some_and(|n| got > n) {
            return Err(PluginError::invalid(format!("server sent more than the {total} bytes it announced: {shown}")));
        }
        out.write_all(&chunk).await.map_err(|e| io_error(&part, e))?;
        if last_event.elapsed() >= PROGRESS_EVERY {
            events.progress(got, total, 1);
            last_event = Instant::now();
        }
    }
    out.flush().await.map_err(|e| io_error(&part, e))?;
    drop(out);
    if let Some(n) = expected {
        if got != n {
            return Err(PluginError::network(format!("short read: {got} of {n} bytes: {shown}")));
        }
    }
    tokio::fs::rename(&part, &final_path).await.map_err(|e| io_error(&final_path, e))?;
    guard.armed = false;
    events.progress(got, expected.unwrap_or(got), 1);
    Ok(outcome(&final_path, got, 0, label, got))
}

fn outcome(path: &Path, bytes: u64, resumed: u64, label: String, delivered: u64) -> DownloadOutcome {
    DownloadOutcome::new([path.to_string_lossy()], bytes).resumed(resumed).source(label, delivered)
}

fn io_error(path: &Path, e: std::io::Error) -> PluginError {
    PluginError::io(format!("{}: {e}", path.display()))
}
