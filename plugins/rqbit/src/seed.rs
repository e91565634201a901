//! Seeding through librqbit (create the torrent, serve it, return a magnet link with one `tr=`
//! per tracker and this node's `x.pe`), listing and stopping seeds, and `command("create")`
//! (the native plugin's contract: `path`, `output`, `tracker`*, `piece_size`, `name`; answers
//! `{torrent, info_hash, magnet, name, length, piece_length, pieces}`).

use std::{path::PathBuf, sync::Arc, time::Duration};

use chiral_sdk::{
    magnet::{self, Magnet},
    options::Opts,
    seeds::Seeded,
    Events, PluginError, SeedInfo,
};
use librqbit::{AddTorrent, AddTorrentOptions, AddTorrentResponse, ManagedTorrent, Session};

use crate::{
    create::{self, CreateOptions},
    ledger::Ledger,
    one_line, RqbitPlugin, NAME,
};

pub struct SeedEntry {
    pub path: String,
    pub magnet: String,
    pub(crate) handle: Arc<ManagedTorrent>,
    monitor: tokio::task::JoinHandle<()>,
}

impl Seeded for SeedEntry {
    fn info(&self, id: &str) -> SeedInfo {
        SeedInfo {
            bytes_served: self.handle.stats().uploaded_bytes,
            ..SeedInfo::new(id, self.path.as_str(), [self.magnet.as_str()])
        }
    }
}

/// A magnet link: `xt`, `dn`, one `tr` per tracker, and `x.pe` for this node when given.
pub(crate) fn build_magnet(
    info_hash_hex: &str,
    name: &str,
    trackers: &[String],
    peer: Option<&str>,
) -> Result<String, PluginError> {
    let mut m = Magnet::from_info_hash(info_hash_hex)?;
    m.name = Some(name.to_string()).filter(|n| !n.is_empty());
    m.trackers = trackers.to_vec();
    if let Some(p) = peer {
        m.add_peer(p);
    }
    Ok(m.to_uri())
}

fn create_options(opts: &Opts) -> Result<CreateOptions, PluginError> {
    Ok(CreateOptions {
        trackers: opts.get_all("tracker"),
        web_seeds: opts.get_all("web_seed"),
        piece_length: opts.get_bytes("piece_size")?,
        private: opts.flag("private")?,
        name: opts.get_str("name").map(str::to_string),
    })
}

/// Hashes `path` off the runtime.
async fn build(path: PathBuf, co: CreateOptions) -> Result<create::Built, PluginError> {
    tokio::task::spawn_blocking(move || create::build(&path, &co))
        .await
        .map_err(|e| PluginError::other(format!("hashing task: {e}")))?
}

pub async fn start(
    plugin: &Arc<RqbitPlugin>,
    path: &str,
    opts: &Opts,
    events: Events,
) -> Result<SeedInfo, PluginError> {
    let p = PathBuf::from(path);
    if path.is_empty() || tokio::fs::symlink_metadata(&p).await.is_err() {
        return Err(PluginError::not_found(format!("{path}: no such file or folder")));
    }
    let mut co = create_options(opts)?;
    co.name = None; // librqbit serves the files under their own names
    let trackers = co.trackers.clone();
    let session = plugin.session().await?;
    let built = build(p.clone(), co).await?;
    let id = built.info_hash_hex.clone();
    if let Some(s) = plugin.seeds.get(&id) {
        return Ok(s.info(&id));
    }
    let added = session
        .add_torrent(
            AddTorrent::from_bytes(built.bytes.clone()),
            Some(AddTorrentOptions {
                overwrite: true,
                output_folder: Some(built.output_folder.to_string_lossy().into_owned()),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| PluginError::io(format!("{path}: {}", one_line(format!("{e:#}")))))?;
    let handle = match added {
        AddTorrentResponse::Added(_, h) | AddTorrentResponse::AlreadyManaged(_, h) => h,
        AddTorrentResponse::ListOnly(_) => {
            return Err(PluginError::other(format!("{path}: librqbit only listed the torrent")))
        }
    };
    // Serving starts once librqbit has checked the files it serves.
    handle
        .wait_until_initialized()
        .await
        .map_err(|e| PluginError::io(format!("{path}: {}", one_line(format!("{e:#}")))))?;
    let name = built.name.clone();
    let port = plugin.port().unwrap_or(0);
    let pe = magnet::host_port(&plugin.advertise_host(), port);
    let magnet = build_magnet(&id, &name, &trackers, Some(&pe))?;
    let total = handle.stats().total_bytes;
    events.info(format!("rqbit: seeding {name} ({total} bytes) on port {port}"));
    let monitor = tokio::spawn(account_uploads(handle.clone(), plugin.settings.payment_threshold, events));
    let entry = SeedEntry { path: path.to_string(), magnet, handle, monitor };
    match plugin.seeds.try_insert(&id, entry) {
        Ok(s) => Ok(s.info(&id)),
        Err((there, refused)) => {
            refused.monitor.abort();
            Ok(there.info(&id))
        }
    }
}

/// Emits `PaymentRequired` for the peers of a seed as their traffic crosses the threshold.
async fn account_uploads(handle: Arc<ManagedTorrent>, threshold: u64, events: Events) {
    let mut ledger = Ledger::new(threshold);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(live) = handle.live() else { continue };
        let snapshot = live.per_peer_stats_snapshot(serde_json::from_str(r#"{"state":"all"}"#).unwrap_or_default());
        for (peer, ps) in snapshot.peers.iter() {
            if let Some(bytes) = ledger.update(peer, ps.counters.fetched_bytes, ps.counters.uploaded_bytes) {
                events.payment_required(peer.as_str(), None, bytes);
            }
        }
    }
}

pub fn list(plugin: &RqbitPlugin) -> Vec<SeedInfo> {
    plugin.seeds.list()
}

pub fn stop(plugin: &RqbitPlugin, id: &str) -> Result<(), PluginError> {
    let s = plugin.seeds.remove(id)?;
    s.monitor.abort();
    let torrent_id = s.handle.id();
    let rt = plugin.runtime_handle();
    let session: Option<Arc<Session>> = plugin.session_if_started();
    if let Some(session) = session {
        rt.spawn(async move {
            let _ = session.delete(torrent_id.into(), false).await;
        });
    }
    Ok(())
}

pub async fn create_command(opts: Opts) -> Result<String, PluginError> {
    let path = opts.get_str("path").ok_or_else(|| PluginError::invalid("create needs path"))?.to_string();
    let output = opts.get_str("output").ok_or_else(|| PluginError::invalid("create needs output"))?.to_string();
    let p = PathBuf::from(&path);
    if tokio::fs::symlink_metadata(&p).await.is_err() {
        return Err(PluginError::not_found(format!("{path}: no such file or folder")));
    }
    let co = create_options(&opts)?;
    let trackers = co.trackers.clone();
    let built = build(p, co).await?;
    tokio::fs::write(&output, &built.bytes).await.map_err(|e| PluginError::io(format!("{output}: {e}")))?;
    Ok(serde_json::json!({
        "torrent": output,
        "info_hash": built.info_hash_hex,
        "magnet": build_magnet(&built.info_hash_hex, &built.name, &trackers, None)?,
        "name": built.name,
        "length": built.length,
        "piece_length": built.piece_length,
        "pieces": built.pieces,
        "backend": NAME,
    })
    .to_string())
}
