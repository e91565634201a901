//! `<data dir>/seeds.json`: every seed started, so that other commands can list, stop, forget
//! and restart them. Updates hold an exclusive lock on `seeds.lock` and replace the file
//! atomically (temp file + rename); a missing file is an empty list, a corrupt one is set
//! aside as `seeds.json.bad` with a warning.

use std::{
    fs::File,
    os::unix::{fs::OpenOptionsExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    session::redact,
    statefile::{self, Loaded},
};

#[derive(Debug, Error)]
pub enum BookError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedState {
    Running,
    Stopped,
}

/// One plugin's seed of a remembered path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedSeed {
    pub plugin: String,
    pub id: String,
    #[serde(default)]
    pub identifiers: Vec<String>,
}

/// A path seeded by `chiral seed` (or `get --seed`), with what it was started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRecord {
    /// Canonical path.
    pub path: String,
    /// Plugins asked for (`--via`); empty means every plugin that can seed.
    #[serde(default)]
    pub via: Vec<String>,
    /// Plugin options given on the command line (`--tracker`, `--option`).
    #[serde(default)]
    pub options: Vec<(String, String)>,
    /// The seeds the plugins started, with the identifiers they printed.
    #[serde(default)]
    pub seeds: Vec<RecordedSeed>,
    pub state: SeedState,
    /// The serving process while running.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub stopped_at: Option<u64>,
}

impl SeedRecord {
    /// The same path served through the same plugins is the same entry.
    pub fn same_entry(&self, other: &SeedRecord) -> bool {
        self.path == other.path && sorted(&self.via) == sorted(&other.via)
    }

    /// Whether `target` names it: its path, a seed id or an identifier.
    pub fn matches(&self, target: &str) -> bool {
        !target.is_empty()
            && (self.path == target
                || self
                    .seeds
                    .iter()
                    .any(|s| s.id == target || s.identifiers.iter().any(|i| i == target || redact(i) == target)))
    }

    pub fn is_running_in(&self, pid: u32) -> bool {
        self.state == SeedState::Running && self.pid == Some(pid)
    }

    pub fn mark_stopped(&mut self, at: u64) {
        self.state = SeedState::Stopped;
        self.pid = None;
        self.stopped_at = Some(at);
    }
}

fn sorted(v: &[String]) -> Vec<&String> {
    let mut v: Vec<&String> = v.iter().collect();
    v.sort();
    v.dedup();
    v
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    #[serde(default)]
    seeds: Vec<SeedRecord>,
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<Vec<SeedRecord>, serde_json::Error> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str::<FileFormat>(text).map(|f| f.seeds)
}

/// The file's text for `records`.
pub fn render(records: &[SeedRecord]) -> String {
    let mut s = serde_json::to_string_pretty(&FileFormat { seeds: records.to_vec() }).unwrap_or_default();
    s.push('\n');
    s
}

/// Adds `rec`, replacing the entry for the same path and plugins.
pub fn upsert(records: &mut Vec<SeedRecord>, rec: SeedRecord) {
    match records.iter_mut().find(|r| r.same_entry(&rec)) {
        Some(r) => *r = rec,
        None => records.push(rec),
    }
}

/// The seed list of one data dir.
#[derive(Debug, Clone)]
pub struct SeedBook {
    path: PathBuf,
    lock: PathBuf,
}

impl SeedBook {
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("seeds.json"), lock: data_dir.join("seeds.lock") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> BookError {
        let path = path.to_path_buf();
        move |source| BookError::Io { path: path.clone(), source }
    }

    /// The entries; a missing file is an empty list, an unreadable one too (with a warning).
    pub fn load(&self) -> Vec<SeedRecord> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => parse(&text).unwrap_or_else(|e| {
                tracing::warn!("{} is not a valid seed list ({e}); ignoring it", self.path.display());
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; ignoring it", self.path.display());
                Vec::new()
            }
        }
    }

    /// Runs `f` on the entries under the lock and saves them if `f` changed them.
    pub fn update<R>(&self, f: impl FnOnce(&mut Vec<SeedRecord>) -> R) -> Result<R, BookError> {
        let _lock = self.lock()?;
        let (mut records, corrupt) = match statefile::read(&self.path, "seed list", parse) {
            Ok(Loaded::Read(r)) => (r, false),
            Ok(Loaded::Missing) => (Vec::new(), false),
            Ok(Loaded::SetAside) => (Vec::new(), true),
            Err(e) => return Err(self.io(&self.path)(e)),
        };
        let before = records.clone();
        let r = f(&mut records);
        if records != before || corrupt {
            self.save(&records)?;
        }
        Ok(r)
    }

    fn lock(&self) -> Result<File, BookError> {
        let io = self.io(&self.lock);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(&io)?;
        loop {
            // SAFETY: flock on a descriptor we own; the lock goes with the file when it closes.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(f);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io(e));
            }
        }
    }

    fn save(&self, records: &[SeedRecord]) -> Result<(), BookError> {
        let tmp = self.path.with_extension(format!("json.tmp.{}", std::process::id()));
        statefile::replace(&self.path, &tmp, render(records).as_bytes()).map_err(self.io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, via: &[&str], pid: Option<u32>) -> SeedRecord {
        SeedRecord {
            path: path.into(),
            via: via.iter().map(|s| s.to_string()).collect(),
            options: vec![("tracker".into(), "http://t/announce".into())],
            seeds: vec![RecordedSeed {
                plugin: "http".into(),
                id: "ab12".into(),
                identifiers: vec!["http://h:1/ab12/f".into()],
            }],
            state: if pid.is_some() { SeedState::Running } else { SeedState::Stopped },
            pid,
            started_at: 1,
            stopped_at: None,
        }
    }

    #[test]
    fn upsert_replaces_the_same_path_and_plugins() {
        let mut v = Vec::new();
        upsert(&mut v, rec("/a", &["http", "ftp"], Some(1)));
        upsert(&mut v, rec("/a", &["ftp", "http"], Some(2)));
        upsert(&mut v, rec("/a", &["http"], Some(3)));
        upsert(&mut v, rec("/b", &[], Some(4)));
        assert_eq!(v.iter().map(|r| r.pid.unwrap()).collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn matches_path_id_and_identifiers() {
        let r = rec("/a", &[], None);
        assert!(r.matches("/a") && r.matches("ab12") && r.matches("http://h:1/ab12/f"));
        assert!(!r.matches("/b") && !r.matches("") && !r.matches("http"));
    }

    #[test]
    fn round_trips_and_tolerates_missing_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let book = SeedBook::new(dir.path());
        assert!(book.load().is_empty());
        book.update(|v| upsert(v, rec("/a", &["http"], Some(7)))).unwrap();
        assert_eq!(book.load(), vec![rec("/a", &["http"], Some(7))]);
        let mode = std::fs::metadata(book.path()).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        book.update(|v| v[0].mark_stopped(9)).unwrap();
        let got = book.load();
        assert_eq!((got[0].state, got[0].pid, got[0].stopped_at), (SeedState::Stopped, None, Some(9)));

        std::fs::write(book.path(), "{not json").unwrap();
        assert!(book.load().is_empty());
        book.update(|v| upsert(v, rec("/b", &[], Some(8)))).unwrap();
        assert_eq!(book.load().len(), 1);
        assert_eq!(std::fs::read_to_string(dir.path().join("seeds.json.bad")).unwrap(), "{not json");
        // No temp file left behind.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let book = SeedBook::new(dir.path());
                std::thread::spawn(move || {
                    for j in 0..10 {
                        book.update(|v| upsert(v, rec(&format!("/{i}/{j}"), &[], Some(1)))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(SeedBook::new(dir.path()).load().len(), 80);
    }
}
