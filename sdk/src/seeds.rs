//! Seed bookkeeping every seeding plugin needs: a table of seeds by id (hard-to-guess ids, or
//! the plugin's own such as an info hash), listed in the order they were added, removed by id
//! with one "no seed" error; plus the small helpers HTTP-like seed servers share (the file to
//! serve, the host put in seed URLs).
//!
//! What a seed *is* stays the plugin's: the table holds any `T: Seeded`, shared as `Arc<T>` so
//! a server task can keep serving a seed it looked up while the seed is being stopped.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hasher as _},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::SystemTime,
};

use crate::abi::{PluginError, SeedInfo};

/// What the table needs of a seed: how it is listed.
pub trait Seeded: Send + Sync {
    /// The seed as `list_seeds` shows it; `id` is its key in the table.
    fn info(&self, id: &str) -> SeedInfo;
}

struct Entry<T> {
    seq: u64,
    seed: Arc<T>,
}

struct Inner<T> {
    seeds: HashMap<String, Entry<T>>,
    next_seq: u64,
}

/// The seeds of one plugin, by id.
pub struct SeedTable<T> {
    inner: RwLock<Inner<T>>,
}

impl<T> std::fmt::Debug for SeedTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().unwrap_or_else(|p| p.into_inner()).seeds.len();
        f.debug_struct("SeedTable").field("seeds", &n).finish()
    }
}

impl<T> Default for SeedTable<T> {
    fn default() -> Self {
        Self { inner: RwLock::new(Inner { seeds: HashMap::new(), next_seq: 0 }) }
    }
}

/// Most characters of an unknown id quoted back in the "no seed" error.
const MAX_ID_SHOWN: usize = 80;

impl<T: Seeded> SeedTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner<T>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner<T>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a seed under a new random id (10 hex digits, unused in the table), unless a seed
    /// matching `existing` is there already: then that one is returned with `false`. Both are
    /// decided under one lock, so two seeds of one file cannot race in. `make` gets the new id
    /// and the seeds already in the table. Returns the seed's id, the seed, and whether it is new.
    pub fn insert_new(
        &self,
        existing: impl Fn(&T) -> bool,
        make: impl FnOnce(&str, &mut dyn Iterator<Item = &T>) -> T,
    ) -> (String, Arc<T>, bool) {
        let mut inner = self.write();
        if let Some((id, e)) = inner.seeds.iter().find(|(_, e)| existing(&e.seed)) {
            return (id.clone(), e.seed.clone(), false);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let id = loop {
            let id = new_id(seq);
            if !inner.seeds.contains_key(&id) {
                break id;
            }
        };
        let seed = Arc::new(make(&id, &mut inner.seeds.values().map(|e| &*e.seed)));
        inner.seeds.insert(id.clone(), Entry { seq, seed: seed.clone() });
        (id, seed, true)
    }

    /// Adds `seed` under the plugin's own `id`; when the id is taken, the seed there and the
    /// one refused are returned instead.
    pub fn try_insert(&self, id: &str, seed: T) -> Result<Arc<T>, (Arc<T>, T)> {
        let mut inner = self.write();
        if let Some(e) = inner.seeds.get(id) {
            return Err((e.seed.clone(), seed));
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let seed = Arc::new(seed);
        inner.seeds.insert(id.to_string(), Entry { seq, seed: seed.clone() });
        Ok(seed)
    }

    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        self.read().seeds.get(id).map(|e| e.seed.clone())
    }

    /// The first seed (in the order added) matching `pred`.
    pub fn find(&self, pred: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.find_entry(pred).map(|(_, s)| s)
    }

    /// The first seed (in the order added) matching `pred`, with its id.
    pub fn find_entry(&self, pred: impl Fn(&T) -> bool) -> Option<(String, Arc<T>)> {
        self.entries().into_iter().find(|(_, s)| pred(s))
    }

    /// Every seed, in the order added.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.entries().into_iter().map(|(_, s)| s).collect()
    }

    /// Every seed with its id, in the order added.
    pub fn entries(&self) -> Vec<(String, Arc<T>)> {
        let inner = self.read();
        let mut all: Vec<(&String, &Entry<T>)> = inner.seeds.iter().collect();
        all.sort_by_key(|(_, e)| e.seq);
        all.into_iter().map(|(id, e)| (id.clone(), e.seed.clone())).collect()
    }

    /// What `list_seeds` answers, in the order the seeds were added.
    pub fn list(&self) -> Vec<SeedInfo> {
        self.entries().iter().map(|(id, s)| s.info(id)).collect()
    }

    pub fn len(&self) -> usize {
        self.read().seeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes seed `id` out of the table (what `stop_seed` does first); `NotFound` when there
    /// is none. What stopping means beyond that is the caller's.
    pub fn remove(&self, id: &str) -> Result<Arc<T>, PluginError> {
        self.write()
            .seeds
            .remove(id)
            .map(|e| e.seed)
            .ok_or_else(|| PluginError::not_found(format!("no seed {}", crate::text::for_terminal(id, MAX_ID_SHOWN))))
    }
}

/// A short token that is hard to guess (so a stopped seed's URL is not reused by another file
/// by accident): 40 bits from the std randomly-keyed hasher over a counter and the clock.
pub fn new_id(seq: u64) -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(seq);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

/// `path` as an absolute path to an existing regular file (symlinks are followed when read,
/// not resolved, so the served name is the one the user gave).
pub async fn check_file(path: &str) -> Result<PathBuf, PluginError> {
    if path.is_empty() {
        return Err(PluginError::invalid("no file given to seed"));
    }
    let meta = tokio_metadata(path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PluginError::not_found(format!("no such file: {path}")),
        _ => PluginError::io(format!("{path}: {e}")),
    })?;
    if !meta.is_file() {
        return Err(PluginError::invalid(format!("{path} is not a regular file")));
    }
    std::path::absolute(path).map_err(|e| PluginError::io(format!("{path}: {e}")))
}

/// `std::fs::metadata` off the async worker (a slow disk must not stall the runtime).
async fn tokio_metadata(path: &str) -> std::io::Result<std::fs::Metadata> {
    let p = path.to_string();
    match tokio::task::spawn_blocking(move || std::fs::metadata(p)).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// The host part of seed URLs: the advertised name, else the bound address, else loopback when
/// bound to every address (which has no single address to print); IPv6 in brackets.
pub fn url_host(advertise: &str, bound: IpAddr) -> String {
    let host = if !advertise.is_empty() {
        advertise.to_string()
    } else if bound.is_unspecified() {
        match bound {
            IpAddr::V4(_) => "127.0.0.1".to_string(),
            IpAddr::V6(_) => "::1".to_string(),
        }
    } else {
        bound.to_string()
    };
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host
    }
}

/// The address a seed server binds: the host's `listen_addr` without IPv6 brackets, every
/// IPv4 address when it is empty.
pub fn listen_host(listen_addr: &str) -> &str {
    match listen_addr.trim().trim_start_matches('[').trim_end_matches(']') {
        "" => "0.0.0.0",
        h => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct S {
        path: &'static str,
        id: String,
    }

    impl Seeded for S {
        fn info(&self, id: &str) -> SeedInfo {
            SeedInfo { id: id.into(), path: self.path.into(), identifiers: Default::default(), bytes_served: 0 }
        }
    }

    #[test]
    fn insert_list_remove() {
        let t = SeedTable::<S>::new();
        let (id, a, new) = t.insert_new(|s| s.path == "/a", |id, _| S { path: "/a", id: id.into() });
        assert!(new && a.id.len() == 10 && a.id == id);
        let (id2, again, new) = t.insert_new(|s| s.path == "/a", |_, _| unreachable!());
        assert!(!new && Arc::ptr_eq(&a, &again) && id2 == id);
        let (_, b, _) = t.insert_new(
            |s| s.path == "/b",
            |id, others| {
                assert_eq!(others.count(), 1);
                S { path: "/b", id: id.into() }
            },
        );
        assert!(t.try_insert("ih", S { path: "/c", id: "ih".into() }).is_ok());
        let (there, refused) = t.try_insert("ih", S { path: "/d", id: "ih".into() }).unwrap_err();
        assert_eq!((there.path, refused.path), ("/c", "/d"));
        let listed: Vec<String> = t.list().iter().map(|s| s.path.to_string()).collect();
        assert_eq!(listed, ["/a", "/b", "/c"], "in the order added");
        assert_eq!(t.get(&b.id).unwrap().path, "/b");
        assert_eq!(t.find(|s| s.path == "/c").unwrap().id, "ih");
        assert_eq!(t.find_entry(|s| s.path == "/b").unwrap().0, b.id);
        assert!(t.remove(&a.id).is_ok());
        let e = t.remove(&a.id).unwrap_err();
        assert_eq!(e.kind, crate::abi::ErrorKind::NotFound);
        let e = t.remove(&format!("x\x1b[2J{}", "y".repeat(500))).unwrap_err();
        assert!(!e.message.contains('\x1b') && e.message.len() < 200, "{}", e.message);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("", "0.0.0.0".parse().unwrap()), "127.0.0.1");
        assert_eq!(url_host("", "::".parse().unwrap()), "[::1]");
        assert_eq!(url_host("", "10.0.0.2".parse().unwrap()), "10.0.0.2");
        assert_eq!(url_host("fe80::1", "0.0.0.0".parse().unwrap()), "[fe80::1]");
        assert_eq!(url_host("seed.example", "0.0.0.0".parse().unwrap()), "seed.example");
        assert_eq!(listen_host(" [::1] "), "::1");
        assert_eq!(listen_host(""), "0.0.0.0");
    }

    #[test]
    fn files_to_seed() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(rt.block_on(check_file(f.to_str().unwrap())).unwrap().is_absolute());
        let kind = |p: &str| rt.block_on(check_file(p)).unwrap_err().kind;
        assert_eq!(kind(""), crate::abi::ErrorKind::Invalid);
        assert_eq!(kind(dir.path().to_str().unwrap()), crate::abi::ErrorKind::Invalid);
        assert_eq!(kind(dir.path().join("none").to_str().unwrap()), crate::abi::ErrorKind::NotFound);
    }
}
