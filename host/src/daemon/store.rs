//! `<data dir>/daemon.json`: the daemon's downloads and seeds, so that ids, folders, progress
//! and states survive a restart (or a `kill -9`). Replaced atomically (temporary file, fsync,
//! rename), mode 0600 (identifiers may carry credentials); a corrupt file is set aside as
//! `daemon.json.bad` and the daemon starts empty.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
};

use serde::{Deserialize, Serialize};

use crate::statefile::{self, Loaded};

/// Where a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadState {
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
}

impl DownloadState {
    /// Waiting for a slot or transferring: what a restart resumes.
    pub fn is_active(self) -> bool {
        matches!(self, DownloadState::Queued | DownloadState::Running)
    }
}

/// One source of a download as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceView {
    pub plugin: String,
    pub identifier: String,
    pub bytes: u64,
    /// Bytes per second.
    pub speed: u64,
    #[serde(default)]
    pub peers: Vec<PeerView>,
    /// Why the source was dropped, if it was.
    #[serde(default)]
    pub dropped: Option<String>,
}

/// One remote peer behind a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub address: String,
    pub chiral_peer_id: Option<String>,
    pub reputation: Option<i64>,
    pub bytes: u64,
}

/// A download as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRecord {
    pub id: String,
    /// As given (they may carry credentials: the API shows them redacted).
    pub identifiers: Vec<String>,
    pub out_dir: PathBuf,
    #[serde(default)]
    pub backend: Option<String>,
    /// For display: from the identifiers first, then the content's own name.
    pub name: String,
    /// The name the engine writes under `out_dir` (set once the content is described).
    #[serde(default)]
    pub disk_name: Option<String>,
    pub state: DownloadState,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub files: Vec<PathBuf>,
    #[serde(default)]
    pub error: Option<String>,
    /// The sources of a finished download, with their totals.
    #[serde(default)]
    pub sources: Vec<SourceView>,
    /// A `.torrent` uploaded to the daemon, kept in the data dir while the download exists.
    #[serde(default)]
    pub torrent_file: Option<PathBuf>,
    #[serde(default)]
    pub added_at: u64,
    #[serde(default)]
    pub completed_at: Option<u64>,
    /// Its own download limit in bytes per second (inside the daemon's global one).
    #[serde(default)]
    pub max_download_rate: Option<u64>,
    /// Which files of a multi-file content (`1,3-5` or a glob, as `chiral get --files`).
    #[serde(default)]
    pub file_selection: Option<String>,
    /// Pieces in order (`chiral get --sequential`).
    #[serde(default)]
    pub sequential: bool,
}

/// A seed as remembered: one path through one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedEntry {
    pub id: String,
    /// Canonical path.
    pub path: String,
    pub plugin: String,
    #[serde(default)]
    pub options: Vec<(String, String)>,
    /// Served again after a restart.
    pub running: bool,
    /// The identifiers it had when last served (a restart may change them).
    #[serde(default)]
    pub identifiers: Vec<String>,
    #[serde(default)]
    pub added_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    pub next_id: u64,
    #[serde(default)]
    pub downloads: Vec<DownloadRecord>,
    #[serde(default)]
    pub seeds: Vec<SeedEntry>,
}

/// The state file of one data dir.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("daemon.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was saved; nothing for a missing file, nothing (and the file set aside) for a
    /// corrupt one.
    pub fn load(&self) -> Saved {
        statefile::read(&self.path, "daemon state", |t| serde_json::from_str::<Saved>(t))
            .unwrap_or_else(|e| {
                tracing::warn!("cannot read {}: {e}; starting empty", self.path.display());
                Loaded::Missing
            })
            .or_default()
    }

    /// Replaces the file with `text` atomically.
    pub fn save_text(&self, text: &str) -> std::io::Result<()> {
        statefile::replace(&self.path, &self.path.with_extension("json.tmp"), text.as_bytes())
    }
}

/// The one thread that writes a data dir's state file. Snapshots are handed over in order
/// (under the daemon's state lock); when several wait, only the newest is written, so an older
/// snapshot never lands after a newer one, and no lock of the daemon is held while the disk
/// works.
#[derive(Debug)]
pub struct StateWriter {
    tx: mpsc::Sender<WriterMsg>,
}

#[derive(Debug)]
enum WriterMsg {
    State(String),
    /// Answered once everything sent before it is written.
    Flush(mpsc::SyncSender<()>),
}

impl StateWriter {
    /// The writer of `store`; its thread ends when the writer is dropped, after the last
    /// snapshot is written.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel::<WriterMsg>();
        let spawned = std::thread::Builder::new().name("daemon-state".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut latest = None;
                let mut acks = Vec::new();
                for msg in std::iter::once(first).chain(rx.try_iter()) {
                    match msg {
                        WriterMsg::State(text) => latest = Some(text),
                        WriterMsg::Flush(ack) => acks.push(ack),
                    }
                }
                if let Some(text) = latest {
                    if let Err(e) = store.save_text(&text) {
                        tracing::warn!("{}: {e}", store.path().display());
                    }
                }
                for ack in acks {
                    let _ = ack.send(());
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("the daemon's state writer did not start ({e}): its state will not be saved");
        }
        Self { tx }
    }

    /// Queues `text` to be written (never blocks on the disk).
    pub fn save(&self, text: String) {
        let _ = self.tx.send(WriterMsg::State(text));
    }

    /// Waits until everything queued so far is on disk (or the writer is gone).
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(WriterMsg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sets_a_corrupt_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.load(), Saved::default());
        let saved = Saved {
            next_id: 3,
            downloads: vec![DownloadRecord {
                max_download_rate: Some(1 << 20),
                file_selection: Some("1,3-5".into()),
                sequential: true,
                id: "d1".into(),
                identifiers: vec!["http://h/a.bin".into()],
                out_dir: "/o".into(),
                backend: None,
                name: "a.bin".into(),
                disk_name: Some("a.bin".into()),
                state: DownloadState::Running,
                bytes_total: 10,
                bytes_done: 4,
                files: vec![],
                error: None,
                sources: vec![],
                torrent_file: None,
                added_at: 1,
                completed_at: None,
            }],
            seeds: vec![SeedEntry {
                id: "s2".into(),
                path: "/f".into(),
                plugin: "http".into(),
                options: vec![],
                running: true,
                identifiers: vec!["http://127.0.0.1:1/x/f".into()],
                added_at: 2,
            }],
        };
        store.save_text(&serde_json::to_string(&saved).unwrap()).unwrap();
        assert_eq!(store.load(), saved);
        let mode = std::fs::metadata(store.path()).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        std::fs::write(store.path(), "{oops").unwrap();
        assert_eq!(store.load(), Saved::default());
        assert!(dir.path().join("daemon.json.bad").exists());
    }

    #[test]
    fn the_writer_lands_the_newest_snapshot_last() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StateWriter::start(Store::new(dir.path()));
        for n in 0..200u64 {
            let saved = Saved { next_id: n, ..Saved::default() };
            writer.save(serde_json::to_string(&saved).unwrap());
        }
        writer.flush();
        assert_eq!(Store::new(dir.path()).load().next_id, 199);
    }
}
