//! The seeding lifecycle across processes, without a daemon: each serving process answers on
//! its control socket ([`crate::control`]) and remembers what it serves in the seed list
//! ([`crate::seedbook`]); `chiral seeds`, `stop` and `remove` read both.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    control::{self, socket, LiveSeed, Request, Response, SeedControl},
    seedbook::{self, RecordedSeed, SeedBook, SeedRecord, SeedState},
    session::{HostError, SeedLine},
    Host,
};

/// How long `stop` waits for a process whose last seed it stopped to exit.
pub const EXIT_WAIT: Duration = Duration::from_secs(15);

/// The seeds of this process, as the control socket shows them.
pub struct ServedSeeds {
    host: Arc<Host>,
    book: SeedBook,
    pid: u32,
    started: Mutex<HashMap<(String, String), u64>>,
}

impl ServedSeeds {
    pub fn new(host: Arc<Host>, data_dir: &Path) -> Self {
        Self { host, book: SeedBook::new(data_dir), pid: std::process::id(), started: Mutex::new(HashMap::new()) }
    }

    /// Remembers seeds started for `path` (as `via` and `options` asked) in the seed list.
    pub fn record(&self, path: &str, via: &[String], options: &[(String, String)], lines: &[SeedLine]) {
        let at = seedbook::now();
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        for l in lines {
            started.insert((l.plugin.clone(), l.id.clone()), at);
        }
        drop(started);
        let rec = SeedRecord {
            path: path.to_string(),
            via: via.to_vec(),
            options: options.to_vec(),
            seeds: lines
                .iter()
                .map(|l| RecordedSeed {
                    plugin: l.plugin.clone(),
                    id: l.id.clone(),
                    identifiers: l.identifiers.clone(),
                })
                .collect(),
            state: SeedState::Running,
            pid: Some(self.pid),
            started_at: at,
            stopped_at: None,
        };
        if let Err(e) = self.book.update(|v| seedbook::upsert(v, rec)) {
            tracing::warn!("seed list not updated: {e}");
        }
    }

    /// Stops every seed left and marks this process's entries stopped (on exit).
    pub fn finish(&self) {
        for s in self.host.list_seeds() {
            let _ = self.host.stop_seed(&s.plugin, &s.id);
        }
        let (pid, at) = (self.pid, seedbook::now());
        let r = self.book.update(|v| v.iter_mut().filter(|r| r.is_running_in(pid)).for_each(|r| r.mark_stopped(at)));
        if let Err(e) = r {
            tracing::warn!("seed list not updated: {e}");
        }
    }
}

impl SeedControl for ServedSeeds {
    fn seeds(&self) -> Vec<LiveSeed> {
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        self.host
            .list_seeds()
            .into_iter()
            .map(|s| LiveSeed {
                started_at: started.get(&(s.plugin.clone(), s.id.clone())).copied().unwrap_or(0),
                plugin: s.plugin,
                id: s.id,
                path: s.path,
                identifiers: s.identifiers,
                bytes_served: s.bytes_served,
                pid: self.pid,
            })
            .collect()
    }

    fn stop(&self, plugin: &str, id: &str) -> Result<(), HostError> {
        self.host.stop_seed(plugin, id)
    }

    fn after_stop(&self, _stopped: &[LiveSeed], remaining: &[LiveSeed]) {
        // An entry none of whose seeds is left is stopped; recorded before the answer goes out,
        // so the next `chiral seeds` already shows it.
        let (pid, at) = (self.pid, seedbook::now());
        let left = |p: &str, id: &str| remaining.iter().any(|s| s.plugin == p && s.id == id);
        let r = self.book.update(|v| {
            for r in v.iter_mut().filter(|r| r.is_running_in(pid)) {
                if !r.seeds.iter().any(|s| left(&s.plugin, &s.id)) {
                    r.mark_stopped(at);
                }
            }
        });
        if let Err(e) = r {
            tracing::warn!("seed list not updated: {e}");
        }
    }
}

/// What the serving processes of a data dir answered.
#[derive(Debug, Default)]
pub struct Probe {
    pub live: Vec<LiveSeed>,
    /// Processes that answered.
    pub answering: BTreeSet<u32>,
    /// Processes alive with a socket that did not answer (busy, or starting).
    pub silent: BTreeSet<u32>,
    /// Sockets of processes that are gone, removed.
    pub cleaned: Vec<PathBuf>,
}

impl Probe {
    /// Whether `pid` still serves, as far as can be told.
    pub fn running(&self, pid: u32) -> bool {
        self.answering.contains(&pid) || self.silent.contains(&pid)
    }
}

/// Removes the socket of a process that is gone; false if the process lives.
fn clean_if_stale(ep: &control::Endpoint, cleaned: &mut Vec<PathBuf>) -> bool {
    if socket::pid_alive(ep.pid) {
        return false;
    }
    if std::fs::remove_file(&ep.path).is_ok() {
        tracing::info!("removed the socket of exited process {}", ep.pid);
        cleaned.push(ep.path.clone());
    }
    true
}

/// Marks stopped the entries whose process no longer serves.
fn forget_dead(book: &SeedBook, running: impl Fn(u32) -> bool) {
    let dead = |r: &SeedRecord| r.state == SeedState::Running && !r.pid.is_some_and(&running);
    if !book.load().iter().any(&dead) {
        return; // nothing to write (and no lock to take in a data dir that may not exist)
    }
    let at = seedbook::now();
    let r = book.update(|v| {
        v.iter_mut().filter(|r| dead(r)).for_each(|r| r.mark_stopped(at));
    });
    if let Err(e) = r {
        tracing::warn!("seed list not updated: {e}");
    }
}

/// Asks every serving process for its seeds; cleans up after processes that are gone.
pub async fn probe(data_dir: &Path) -> Probe {
    let mut p = Probe::default();
    for ep in control::endpoints(data_dir) {
        match control::request(&ep.path, &Request::List).await {
            Ok(Response::Seeds { seeds }) => {
                p.answering.insert(ep.pid);
                p.live.extend(seeds);
            }
            Ok(other) => {
                tracing::warn!("process {} answered {other:?}", ep.pid);
                p.silent.insert(ep.pid);
            }
            Err(e) => {
                if !clean_if_stale(&ep, &mut p.cleaned) {
                    tracing::warn!("{e}");
                    p.silent.insert(ep.pid);
                }
            }
        }
    }
    forget_dead(&SeedBook::new(data_dir), |pid| p.running(pid));
    p
}

/// One line of `chiral seeds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedRow {
    pub state: SeedState,
    pub plugin: String,
    pub id: String,
    pub path: String,
    pub identifiers: Vec<String>,
    /// For running seeds whose process answered.
    pub bytes_served: Option<u64>,
    pub pid: Option<u32>,
    pub started_at: Option<u64>,
    pub via: Vec<String>,
    pub options: Vec<(String, String)>,
}

/// The seed list merged with what the processes answered: one row per plugin seed.
pub fn rows(records: &[SeedRecord], probe: &Probe) -> Vec<SeedRow> {
    let mut out = Vec::new();
    let mut shown: BTreeSet<(u32, String, String)> = BTreeSet::new();
    for r in records {
        let pid = r.pid.filter(|p| r.state == SeedState::Running && probe.running(*p));
        for s in &r.seeds {
            let live = pid.and_then(|p| probe.live.iter().find(|l| l.pid == p && l.plugin == s.plugin && l.id == s.id));
            let running = match (pid, live) {
                (Some(p), _) if probe.silent.contains(&p) => true,
                (_, Some(_)) => true,
                _ => false,
            };
            if let Some(l) = live {
                shown.insert((l.pid, l.plugin.clone(), l.id.clone()));
            }
            out.push(SeedRow {
                state: if running { SeedState::Running } else { SeedState::Stopped },
                plugin: s.plugin.clone(),
                id: s.id.clone(),
                path: r.path.clone(),
                identifiers: live.map_or_else(|| s.identifiers.clone(), |l| l.identifiers.clone()),
                bytes_served: live.map(|l| l.bytes_served),
                pid: if running { pid } else { None },
                started_at: Some(r.started_at),
                via: r.via.clone(),
                options: r.options.clone(),
            });
        }
    }
    // Seeds a process serves that the list does not know (the list was lost or edited).
    for l in &probe.live {
        if !shown.contains(&(l.pid, l.plugin.clone(), l.id.clone())) {
            out.push(SeedRow {
                state: SeedState::Running,
                plugin: l.plugin.clone(),
                id: l.id.clone(),
                path: l.path.clone(),
                identifiers: l.identifiers.clone(),
                bytes_served: Some(l.bytes_served),
                pid: Some(l.pid),
                started_at: Some(l.started_at),
                via: Vec::new(),
                options: Vec::new(),
            });
        }
    }
    out
}

/// What the seeds of a data dir are now, cleaning up after processes that are gone.
pub async fn list(data_dir: &Path) -> Vec<SeedRow> {
    let probe = probe(data_dir).await;
    rows(&SeedBook::new(data_dir).load(), &probe)
}

/// A target as the user typed it, or the canonical path when it names an existing file.
pub fn normalize_target(target: &str) -> String {
    match std::fs::canonicalize(target) {
        Ok(p) if !target.contains("://") && !target.starts_with("magnet:") => p.to_string_lossy().into_owned(),
        _ => target.to_string(),
    }
}

/// What a stop did.
#[derive(Debug, Default, Serialize)]
pub struct StopOutcome {
    pub stopped: Vec<LiveSeed>,
    pub errors: Vec<String>,
    /// Processes left with no seed, which exited.
    pub exited: Vec<u32>,
}

async fn stop_in(ep: &control::Endpoint, target: &str, out: &mut StopOutcome, cleaned: &mut Vec<PathBuf>) {
    match control::request(&ep.path, &Request::Stop { target: target.to_string() }).await {
        Ok(Response::Stopped { stopped, remaining, errors }) => {
            if remaining == 0 && !stopped.is_empty() {
                out.exited.push(ep.pid);
            }
            out.stopped.extend(stopped);
            out.errors.extend(errors);
        }
        Ok(Response::Error { error }) => out.errors.push(format!("process {}: {error}", ep.pid)),
        Ok(other) => out.errors.push(format!("process {} answered {other:?}", ep.pid)),
        Err(e) => {
            if !clean_if_stale(ep, cleaned) {
                out.errors.push(e.to_string());
            }
        }
    }
}

/// Waits (bounded) for the processes that were left with no seed to exit.
async fn wait_exited(pids: &[u32]) {
    let t0 = Instant::now();
    while pids.iter().any(|p| socket::pid_alive(*p)) && t0.elapsed() < EXIT_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in pids.iter().filter(|p| socket::pid_alive(**p)) {
        tracing::warn!("process {p} has no seed left but is still running");
    }
}

/// Stops the running seeds whose id, identifier or path is `target`, in every process of the
/// data dir; waits for processes left with nothing to serve to exit.
pub async fn stop(data_dir: &Path, target: &str) -> StopOutcome {
    let target = normalize_target(target);
    let mut out = StopOutcome::default();
    let mut cleaned = Vec::new();
    for ep in control::endpoints(data_dir) {
        stop_in(&ep, &target, &mut out, &mut cleaned).await;
    }
    wait_exited(&out.exited).await;
    out
}

/// What a remove did.
#[derive(Debug, Default, Serialize)]
pub struct RemoveOutcome {
    #[serde(flatten)]
    pub stop: StopOutcome,
    pub removed: Vec<SeedRecord>,
}

/// Stops what `target` names if it runs, and forgets its entries in the seed list (the files
/// stay where they are).
pub async fn remove(data_dir: &Path, target: &str) -> RemoveOutcome {
    let target = normalize_target(target);
    let book = SeedBook::new(data_dir);
    let named: Vec<SeedRecord> = book.load().into_iter().filter(|r| r.matches(&target)).collect();
    let mut out = RemoveOutcome { stop: stop(data_dir, &target).await, removed: Vec::new() };
    // Whole entries go: their other plugins' seeds stop too.
    let mut cleaned = Vec::new();
    let mut more = StopOutcome::default();
    for r in named.iter().filter(|r| r.state == SeedState::Running) {
        let Some(pid) = r.pid else { continue };
        let ep = control::Endpoint { pid, path: socket::socket_path(data_dir, pid) };
        for s in &r.seeds {
            if !out.stop.stopped.iter().any(|x| x.pid == pid && x.plugin == s.plugin && x.id == s.id)
                && ep.path.exists()
            {
                stop_in(&ep, &s.id, &mut more, &mut cleaned).await;
            }
        }
    }
    wait_exited(&more.exited).await;
    out.stop.stopped.extend(more.stopped);
    out.stop.errors.extend(more.errors);
    out.stop.exited.extend(more.exited);
    let stopped = &out.stop.stopped;
    let hit = |r: &SeedRecord| {
        r.matches(&target) || r.seeds.iter().any(|s| stopped.iter().any(|x| x.plugin == s.plugin && x.id == s.id))
    };
    if !book.load().iter().any(&hit) {
        return out;
    }
    match book.update(|v| {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(v).into_iter().partition(|r| hit(r));
        *v = kept;
        gone
    }) {
        Ok(gone) => out.removed = gone,
        Err(e) => out.stop.errors.push(e.to_string()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(pid: u32, plugin: &str, id: &str, bytes: u64) -> LiveSeed {
        LiveSeed {
            plugin: plugin.into(),
            id: id.into(),
            path: "/f".into(),
            identifiers: vec![format!("{plugin}://h/{id}")],
            bytes_served: bytes,
            pid,
            started_at: 5,
        }
    }

    fn rec(pid: Option<u32>, seeds: &[(&str, &str)]) -> SeedRecord {
        SeedRecord {
            path: "/f".into(),
            via: vec![],
            options: vec![],
            seeds: seeds
                .iter()
                .map(|(p, id)| RecordedSeed {
                    plugin: p.to_string(),
                    id: id.to_string(),
                    identifiers: vec![format!("{p}://h/{id}")],
                })
                .collect(),
            state: if pid.is_some() { SeedState::Running } else { SeedState::Stopped },
            pid,
            started_at: 5,
            stopped_at: None,
        }
    }

    #[test]
    fn rows_merge_the_list_with_live_answers() {
        let probe = Probe {
            live: vec![live(10, "http", "a", 99), live(30, "http", "z", 1)],
            answering: [10, 30].into(),
            silent: [20].into(),
            cleaned: vec![],
        };
        let records = vec![
            rec(Some(10), &[("http", "a"), ("ftp", "b")]), // ftp stopped on its own
            rec(Some(20), &[("http", "c")]),               // alive, did not answer
            rec(Some(40), &[("http", "d")]),               // gone
            rec(None, &[("http", "e")]),
        ];
        let rows = rows(&records, &probe);
        let got: Vec<(SeedState, &str, Option<u64>, Option<u32>)> =
            rows.iter().map(|r| (r.state, r.id.as_str(), r.bytes_served, r.pid)).collect();
        use SeedState::*;
        assert_eq!(
            got,
            vec![
                (Running, "a", Some(99), Some(10)),
                (Stopped, "b", None, None),
                (Running, "c", None, Some(20)),
                (Stopped, "d", None, None),
                (Stopped, "e", None, None),
                (Running, "z", Some(1), Some(30)),
            ]
        );
    }

    #[test]
    fn targets_that_name_files_become_canonical_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let canon = std::fs::canonicalize(dir.path().join("f")).unwrap();
        let odd = format!("{}/./f", dir.path().display());
        assert_eq!(normalize_target(&odd), canon.to_string_lossy());
        assert_eq!(normalize_target("http://h/x"), "http://h/x");
        assert_eq!(normalize_target("no-such-file-here"), "no-such-file-here");
    }
}
