//! A whole download through librqbit.
//!
//! librqbit writes into `<out_dir>/.chiral-rqbit-<info hash>.part/` (kept between runs, so a
//! second run resumes after librqbit's initial check); only once every piece is in and the
//! torrent is removed from the session are the file (or top folder) renamed to their final
//! names in `out_dir`. A failure or a cancel (the future dropped) removes the torrent from
//! the session and leaves nothing at the final names.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use chiral_sdk::{engine::safe_name, DownloadOutcome, DownloadRequest, Events, PluginError};
use librqbit::{AddTorrent, AddTorrentOptions, AddTorrentResponse, Session};

use crate::{
    ident::{self, Ident},
    ledger::Ledger,
    one_line, RqbitPlugin,
};

/// How long a magnet (or a `.torrent` URL) may take to resolve.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(180);
/// A download with no new verified byte for this long fails.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How often progress and per-peer counters are read.
const TICK: Duration = Duration::from_millis(100);

/// The temporary folder of one torrent inside `out_dir`.
pub fn temp_dir(out_dir: &Path, info_hash_hex: &str) -> PathBuf {
    out_dir.join(format!(".chiral-rqbit-{info_hash_hex}.part"))
}

/// Removes the torrent from the session when dropped (cancel, failure), keeping its files.
struct Managed {
    session: Arc<Session>,
    id: usize,
    armed: bool,
}

impl Drop for Managed {
    fn drop(&mut self) {
        if self.armed {
            let (session, id) = (self.session.clone(), self.id);
            // Runs on the plugin's runtime (the dropped future was polled there); a runtime
            // that is shutting down takes the torrent with it anyway.
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = session.delete(id.into(), false).await;
                });
            }
        }
    }
}

pub async fn run(
    plugin: Arc<RqbitPlugin>,
    request: DownloadRequest,
    events: Events,
) -> Result<DownloadOutcome, PluginError> {
    let opts = plugin.options.merged(&request.options);
    let ident = ident::classify(&request.identifier)?;
    let out_dir = PathBuf::from(request.out_dir.as_str());
    if out_dir.as_os_str().is_empty() {
        return Err(PluginError::invalid("no output folder"));
    }
    let proxied = plugin.settings.proxy.is_some();
    let mut trackers = opts.get_all("tracker");
    let mut udp_dropped = 0;
    if proxied {
        let before = trackers.len();
        trackers.retain(|t| !is_udp(t.as_bytes()));
        udp_dropped += before - trackers.len();
    }
    let mut peers: Vec<std::net::SocketAddr> = Vec::new();
    for p in opts.get_all("peer") {
        match tokio::net::lookup_host(p.as_str()).await {
            Ok(mut a) => peers.extend(a.next()),
            Err(e) => events.warn(format!("rqbit: peer {p} ignored: {e}")),
        }
    }
    let session = plugin.session().await?;

    // Everything as torrent bytes or a magnet, with its info hash (for the temp folder).
    let (add, info_hash) = match ident {
        Ident::Magnet(mut magnet) => {
            peers.extend(magnet.peers.iter().copied());
            for t in &trackers {
                magnet.add_tracker(t);
            }
            if proxied {
                let before = magnet.trackers.len();
                magnet.trackers.retain(|t| !is_udp(t.as_bytes()));
                udp_dropped += before - magnet.trackers.len();
            }
            (AddTorrent::from_url(magnet.to_uri()), magnet.info_hash_hex())
        }
        Ident::File(path) => {
            let bytes = tokio::fs::read(&path).await.map_err(|e| PluginError::io(format!("{path}: {e}")))?;
            let ih = info_hash_of(&bytes).map_err(|e| PluginError::invalid(format!("{path}: {e}")))?;
            (AddTorrent::from_bytes(bytes), ih)
        }
        Ident::Url(url) => {
            let listed = tokio::time::timeout(
                METADATA_TIMEOUT,
                session.add_torrent(
                    AddTorrent::from_url(url.clone()),
                    Some(AddTorrentOptions { list_only: true, ..Default::default() }),
                ),
            )
            .await
            .map_err(|_| PluginError::network(format!("{url}: no answer in {METADATA_TIMEOUT:?}")))?
            .map_err(|e| url_error(&url, e))?;
            let AddTorrentResponse::ListOnly(l) = listed else {
                return Err(PluginError::other(format!("{url}: librqbit did not list the torrent")));
            };
            let bytes = l.torrent_bytes.to_vec();
            if bytes.len() as u64 > ident::MAX_TORRENT_BYTES {
                return Err(PluginError::invalid(format!("{url}: torrent file over 64 MiB")));
            }
            (AddTorrent::from_bytes(bytes), l.info_hash.as_string())
        }
    };

    // Through a proxy, a torrent's UDP trackers are not contacted (UDP cannot go through it).
    let add = match add {
        AddTorrent::TorrentFileBytes(bytes) if proxied => {
            let (stripped, n) = without_udp_trackers(&bytes)?;
            udp_dropped += n;
            AddTorrent::from_bytes(stripped)
        }
        other => other,
    };
    if udp_dropped > 0 {
        events
            .warn(format!("rqbit: {udp_dropped} UDP tracker(s) skipped: a proxy is set and UDP cannot go through it"));
    }
    let tmp = temp_dir(&out_dir, &info_hash);
    tokio::fs::create_dir_all(&tmp).await.map_err(|e| PluginError::io(format!("{}: {e}", tmp.display())))?;
    let add_opts = AddTorrentOptions {
        overwrite: true,
        output_folder: Some(tmp.to_string_lossy().into_owned()),
        initial_peers: if peers.is_empty() { None } else { Some(peers.clone()) },
        trackers: if trackers.is_empty() { None } else { Some(trackers.clone()) },
        ..Default::default()
    };
    let label = format!("rqbit {}", &info_hash[..info_hash.len().min(8)]);
    let added = tokio::time::timeout(METADATA_TIMEOUT, session.add_torrent(add, Some(add_opts)))
        .await
        .map_err(|_| PluginError::network(format!("{label}: no peer sent the metadata in {METADATA_TIMEOUT:?}")))?
        .map_err(|e| add_error(&label, e))?;
    let handle = match added {
        AddTorrentResponse::Added(_, h) => h,
        AddTorrentResponse::AlreadyManaged(..) => {
            return Err(PluginError::other(format!(
                "{label}: this torrent is already being downloaded or seeded by this node's rqbit session"
            )))
        }
        AddTorrentResponse::ListOnly(_) => {
            return Err(PluginError::other(format!("{label}: librqbit only listed the torrent")))
        }
    };
    let mut managed = Managed { session: session.clone(), id: handle.id(), armed: true };
    let t0 = Instant::now();

    // The initial check of what the temp folder already holds (resume).
    let mut init = handle.wait_until_initialized();
    loop {
        tokio::select! {
            r = &mut init => {
                r.map_err(|e| PluginError::io(format!("{label}: {}", one_line(format!("{e:#}")))))?;
                break;
            }
            _ = tokio::time::sleep(TICK) => {
                let st = handle.stats();
                events.progress(st.progress_bytes, st.total_bytes, 0);
            }
        }
    }
    drop(init);
    let resumed = handle.stats().progress_bytes;
    events.debug(format!("{label}: {} of {} bytes already on disk", resumed, handle.stats().total_bytes));

    let mut ledger = Ledger::new(plugin.settings.payment_threshold);
    let mut done = handle.wait_until_completed();
    let mut last_bytes = resumed;
    let mut last_move = Instant::now();
    let mut finished = false;
    while !finished {
        tokio::select! {
            r = &mut done => {
                r.map_err(|e| PluginError::network(format!("{label}: {}", one_line(format!("{e:#}")))))?;
                finished = true;
            }
            _ = tokio::time::sleep(TICK) => {}
        }
        let st = handle.stats();
        if let Some(err) = &st.error {
            return Err(PluginError::network(format!("{label}: {}", one_line(err))));
        }
        let live_peers = st.live.as_ref().map(|l| l.snapshot.peer_stats.live).unwrap_or(0);
        events.progress(st.progress_bytes, st.total_bytes, live_peers);
        if let Some(live) = handle.live() {
            // Every peer seen, connected or not: their counters survive disconnections.
            let snapshot = live.per_peer_stats_snapshot(serde_json::from_str(r#"{"state":"all"}"#).unwrap_or_default());
            for (peer, ps) in snapshot.peers.iter() {
                if let Some(bytes) = ledger.update(peer, ps.counters.fetched_bytes, ps.counters.uploaded_bytes) {
                    events.payment_required(peer.as_str(), None, bytes);
                }
            }
        }
        if st.progress_bytes != last_bytes {
            last_bytes = st.progress_bytes;
            last_move = Instant::now();
        } else if !finished && last_move.elapsed() > STALL_TIMEOUT {
            return Err(PluginError::network(format!(
                "{label}: no data for {STALL_TIMEOUT:?} ({} of {} bytes, {live_peers} peers)",
                st.progress_bytes, st.total_bytes
            )));
        }
    }
    drop(done);

    // Which files librqbit wrote, then release them before renaming.
    let (name, multi, files, total) = handle
        .with_metadata(|m| {
            let info = m.info.info();
            let name = info.name.as_ref().map(|n| String::from_utf8_lossy(n.as_ref()).into_owned()).unwrap_or_default();
            let files: Vec<PathBuf> =
                m.file_infos.iter().filter(|f| !f.attrs.padding).map(|f| f.relative_filename.clone()).collect();
            (name, info.files.is_some(), files, m.lengths().total_length())
        })
        .map_err(|e| PluginError::other(format!("{label}: {}", one_line(format!("{e:#}")))))?;
    managed.armed = false;
    session
        .delete(managed.id.into(), false)
        .await
        .map_err(|e| PluginError::other(format!("{label}: {}", one_line(format!("{e:#}")))))?;
    drop(handle);
    let finals = finish(&tmp, &out_dir, &name, multi, &files).await?;
    events.progress(total, total, 0);
    let mut per_source: Vec<(String, u64)> = ledger.downloaded().into_iter().map(|(l, b)| (l.to_string(), b)).collect();
    if per_source.is_empty() && total > resumed {
        // Peers librqbit dropped between two samples take their counters with them.
        per_source.push(("rqbit swarm".into(), total - resumed));
    }
    events.debug(format!("{label}: {total} bytes in {:.2}s", t0.elapsed().as_secs_f64()));
    let outcome = DownloadOutcome::new(finals.iter().map(|p| p.to_string_lossy()), total).resumed(resumed);
    Ok(per_source.into_iter().fold(outcome, |o, (label, bytes)| o.source(label, bytes)))
}

/// Moves the complete content from `tmp` to its final name(s) in `out_dir`.
pub async fn finish(
    tmp: &Path,
    out_dir: &Path,
    name: &str,
    multi: bool,
    files: &[PathBuf],
) -> Result<Vec<PathBuf>, PluginError> {
    let io = |p: &Path, e: std::io::Error| PluginError::io(format!("{}: {e}", p.display()));
    if multi {
        // librqbit wrote the files straight under `tmp`: the folder itself becomes `<name>/`.
        let dst = out_dir.join(safe_name(name));
        if tokio::fs::symlink_metadata(&dst).await.is_ok() {
            return Err(PluginError::io(format!("{} already exists; move it away to download again", dst.display())));
        }
        tokio::fs::rename(tmp, &dst).await.map_err(|e| io(&dst, e))?;
        return Ok(files.iter().map(|f| dst.join(f)).collect());
    }
    let [rel] = files else {
        return Err(PluginError::other(format!("single-file torrent with {} files", files.len())));
    };
    let src = tmp.join(rel);
    let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_string());
    let dst = out_dir.join(safe_name(&file_name));
    if tokio::fs::symlink_metadata(&dst).await.is_ok() {
        if !same_content(&src, &dst).await {
            return Err(PluginError::io(format!(
                "{} already exists with other content; move it away to download again",
                dst.display()
            )));
        }
        tokio::fs::remove_file(&src).await.map_err(|e| io(&src, e))?;
    } else {
        tokio::fs::rename(&src, &dst).await.map_err(|e| io(&dst, e))?;
    }
    let _ = tokio::fs::remove_dir_all(tmp).await;
    Ok(vec![dst])
}

async fn same_content(a: &Path, b: &Path) -> bool {
    let (a, b) = (a.to_path_buf(), b.to_path_buf());
    tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        use std::io::Read as _;
        let (fa, fb) = (std::fs::File::open(&a)?, std::fs::File::open(&b)?);
        if fa.metadata()?.len() != fb.metadata()?.len() {
            return Ok(false);
        }
        let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
        let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        loop {
            let n = ra.read(&mut ba)?;
            if n == 0 {
                return Ok(true);
            }
            rb.read_exact(&mut bb[..n])?;
            if ba[..n] != bb[..n] {
                return Ok(false);
            }
        }
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or(false)
}

/// A file that does not parse as a `.torrent`.
#[derive(Debug, thiserror::Error)]
#[error("not a torrent file: {0}")]
pub struct NotATorrent(anyhow::Error);

/// The BTv1 info hash (hex) of a `.torrent`.
fn is_udp(url: &[u8]) -> bool {
    url.len() >= 6 && url[..6].eq_ignore_ascii_case(b"udp://")
}

/// `torrent` without its UDP trackers (`announce`, `announce-list`), and how many it had: what
/// librqbit gets while a proxy is set (UDP cannot go through it). Every other value, the info
/// dictionary first of all, is copied byte for byte, so the info hash stays.
pub fn without_udp_trackers(torrent: &[u8]) -> Result<(Vec<u8>, usize), PluginError> {
    use chiral_sdk::bencode::{decode_with_spans, encode, Limits, Value};
    let (v, spans) =
        decode_with_spans(torrent, Limits::TORRENT).map_err(|e| PluginError::invalid(format!("torrent: {e}")))?;
    let mut out = Vec::with_capacity(torrent.len());
    out.push(b'd');
    let mut dropped = 0;
    for (key, range) in &spans {
        let kept: Option<Vec<u8>> = match key.as_slice() {
            b"announce" if v.get("announce").and_then(Value::as_bytes).is_some_and(is_udp) => {
                dropped += 1;
                None
            }
            b"announce-list" => {
                let tiers: Vec<Value> = v
                    .get("announce-list")
                    .and_then(Value::as_list)
                    .unwrap_or_default()
                    .iter()
                    .map(|tier| {
                        let urls = tier.as_list().unwrap_or_default();
                        let keep: Vec<Value> =
                            urls.iter().filter(|u| !u.as_bytes().is_some_and(is_udp)).cloned().collect();
                        dropped += urls.len() - keep.len();
                        Value::List(keep)
                    })
                    .filter(|tier| tier.as_list().is_some_and(|l| !l.is_empty()))
                    .collect();
                (!tiers.is_empty()).then(|| encode(&Value::List(tiers)))
            }
            _ => Some(torrent[range.clone()].to_vec()),
        };
        if let Some(value) = kept {
            out.extend_from_slice(format!("{}:", key.len()).as_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&value);
        }
    }
    out.push(b'e');
    Ok((out, dropped))
}

pub fn info_hash_of(bytes: &[u8]) -> Result<String, NotATorrent> {
    librqbit::torrent_from_bytes(bytes).map(|t| t.info_hash.as_string()).map_err(|e| NotATorrent(e.into()))
}

fn add_error(label: &str, e: anyhow::Error) -> PluginError {
    let text = one_line(format!("{e:#}"));
    let lower = text.to_ascii_lowercase();
    if lower.contains("decod")
        || lower.contains("travers")
        || lower.contains("invalid")
        || lower.contains("bad torrent")
    {
        PluginError::invalid(format!("{label}: {text}"))
    } else {
        PluginError::network(format!("{label}: {text}"))
    }
}

fn url_error(url: &str, e: anyhow::Error) -> PluginError {
    let text = one_line(format!("{e:#}"));
    if text.contains("404") {
        PluginError::not_found(format!("{url}: {text}"))
    } else {
        PluginError::network(format!("{url}: {text}"))
    }
}
