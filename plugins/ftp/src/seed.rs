//! Seeding over FTP: one embedded, read-only, anonymous FTP server per plugin (libunftp),
//! started on the first seed, serving each seeded file at `ftp://<host>:<port>/<name>` and
//! nothing else. Its storage back-end is a virtual folder of the seeded files; each file is
//! read through unftp-sbe-fs rooted at the file's own folder, so only that file is reachable.
//!
//! With the seed option `ftp_upload=ftp://user@host/dir/` the file is instead uploaded to that
//! server (`STOR`) and the URL it can be fetched from is returned.

use std::{
    fmt::Debug,
    hash::{BuildHasher as _, Hasher as _},
    io,
    net::{IpAddr, SocketAddr, TcpListener as StdListener},
    ops::RangeInclusive,
    path::{Component, Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::SystemTime,
};

use async_trait::async_trait;
use chiral_sdk::{
    listen::ConnLimit,
    options::Opts,
    rate::RateLimiter,
    seeds::{check_file, listen_host, url_host, SeedTable, Seeded},
    Events, HostConfig, PluginError, SeedInfo,
};
use libunftp::ServerBuilder;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpListener,
    sync::OnceCell,
};
use unftp_core::{
    auth::DefaultUser,
    storage::{Error as StorageError, ErrorKind as StorageErrorKind, Fileinfo, Metadata, Permissions, StorageBackend},
};
use unftp_sbe_fs::Filesystem;

use crate::{
    target::{encode_path, Target, ANONYMOUS},
    Settings,
};

/// Width of the passive port range picked for the server.
const PASSIVE_PORTS: u16 = 32;
/// A control connection idle this long is closed.
const IDLE_SECS: u64 = 600;
/// Chunk of a file copied to a data connection at once.
const COPY_CHUNK: usize = 1 << 20;

/// One seeded (or uploaded) file.
struct Seed {
    id: String,
    path: PathBuf,
    /// Where it is served in the virtual folder: `name`, or `<id>/name` when another seed has
    /// the name already. `None` for an upload (served elsewhere).
    vpath: Option<String>,
    /// The file's name in its own folder (what unftp-sbe-fs opens).
    disk_name: String,
    /// unftp-sbe-fs rooted at the file's folder.
    fs: Option<Arc<Filesystem>>,
    url: String,
    bytes_served: AtomicU64,
    /// The plugin's upload rate (`max_upload_rate`), shared by every transfer of every seed.
    upload_rate: Option<Arc<RateLimiter>>,
}

impl Seeded for Seed {
    fn info(&self, id: &str) -> SeedInfo {
        SeedInfo {
            id: id.into(),
            path: self.path.to_string_lossy().into_owned().into(),
            identifiers: vec![self.url.as_str().into()].into(),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
        }
    }
}

/// Where the server listens and how its URLs are written.
struct Bound {
    /// `host:port` as put in URLs (IPv6 in brackets).
    authority: String,
}

/// The seeds of one plugin and the server that serves them.
pub struct Seeder {
    listen_addr: String,
    listen_port: u16,
    advertise_host: String,
    seeds: Arc<SeedTable<Seed>>,
    server: OnceCell<Bound>,
    events: Events,
    upload_rate: Option<Arc<RateLimiter>>,
}

impl Seeder {
    /// `upload_rate`: bytes per second all transfers of this plugin's seeds share (none: no limit).
    pub fn new(config: &HostConfig, events: Events, upload_rate: Option<u64>) -> Self {
        Self {
            listen_addr: config.listen_addr.trim().to_string(),
            listen_port: config.listen_port,
            advertise_host: config.advertise_host.trim().to_string(),
            seeds: Arc::new(SeedTable::new()),
            server: OnceCell::new(),
            events,
            upload_rate: chiral_sdk::rate::limiter(upload_rate),
        }
    }

    /// Serves `path` (a regular file), or uploads it when `options` has `ftp_upload`. Seeding
    /// the same path again returns the same seed.
    pub async fn seed(
        &self,
        settings: &Settings,
        path: &str,
        options: &Opts,
        events: &Events,
    ) -> Result<SeedInfo, PluginError> {
        let path = check_file(path).await?;
        if let Some(dest) = options.get_str("ftp_upload") {
            return self.upload(settings, &path, dest, options, events).await;
        }
        let own_rate = options.get_bytes("upload_rate")?;
        let served = |s: &Seed| s.path == path && s.vpath.is_some();
        if let Some((id, existing)) = self.seeds.find_entry(served) {
            return Ok(existing.info(&id));
        }
        let bound = self.server.get_or_try_init(|| self.start()).await?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        let fs = Filesystem::new(&dir).map_err(|e| PluginError::io(format!("{}: {e}", dir.display())))?;
        // Checked again under the table's lock: two seeds of one path may race here.
        let (id, seed, new) = self.seeds.insert_new(served, |id, others| {
            let taken = Iterator::any(&mut &mut *others, |s| s.vpath.as_deref() == Some(name.as_str()) || s.id == name);
            let vpath = if taken { format!("{id}/{name}") } else { name.clone() };
            let url = format!("ftp://{}/{}", bound.authority, encode_path(&vpath));
            Seed {
                id: id.to_string(),
                path: path.clone(),
                vpath: Some(vpath),
                disk_name: name,
                fs: Some(Arc::new(fs)),
                url,
                bytes_served: AtomicU64::new(0),
                upload_rate: chiral_sdk::rate::seed_limiter(own_rate, &self.upload_rate),
            }
        });
        if new {
            events.info(format!("seeding {} at {}", seed.path.display(), seed.url));
        }
        Ok(seed.info(&id))
    }

    /// `STOR`s `path` into the folder (or as the file) `dest` names; the seed records where.
    async fn upload(
        &self,
        settings: &Settings,
        path: &Path,
        dest: &str,
        options: &Opts,
        events: &Events,
    ) -> Result<SeedInfo, PluginError> {
        let target = settings.target(dest, options)?;
        let tls = settings.tls_for(&target)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let remote = if target.is_dir || target.path.is_empty() {
            join_remote(&target.path, &name)
        } else {
            target.path.clone()
        };
        let mut conn = crate::conn::Conn::open(&target, tls, Arc::new(true.into())).await?;
        // Held by the plugin's upload rate like every other upload (`max_upload_rate`).
        let rate = chiral_sdk::rate::seed_limiter(options.get_bytes("upload_rate")?, &self.upload_rate);
        let sent = conn.store(path, &remote, rate.as_deref()).await?;
        conn.quit().await;
        let url = upload_url(&target, &remote);
        let (id, seed, _) = self.seeds.insert_new(
            |_| false,
            |id, _| Seed {
                id: id.to_string(),
                path: path.to_path_buf(),
                vpath: None,
                disk_name: name,
                fs: None,
                url,
                bytes_served: AtomicU64::new(sent),
                upload_rate: None,
            },
        );
        events.info(format!("uploaded {} ({sent} bytes) to {}", seed.path.display(), seed.url));
        Ok(seed.info(&id))
    }

    pub fn list(&self) -> Vec<SeedInfo> {
        self.seeds.list()
    }

    /// Stops serving seed `id`: its URL answers 550 from now on (transfers already under way
    /// finish).
    pub fn stop(&self, id: &str) -> Result<(), PluginError> {
        let seed = self.seeds.remove(id)?;
        self.events.info(format!("stopped seeding {}", seed.path.display()));
        Ok(())
    }

    /// Binds the control port and spawns the accept loop (on the runtime this is called from:
    /// the plugin's own).
    async fn start(&self) -> Result<Bound, PluginError> {
        let host = listen_host(&self.listen_addr);
        let listener = TcpListener::bind((host, self.listen_port))
            .await
            .map_err(|e| PluginError::io(format!("cannot listen on {host} port {}: {e}", self.listen_port)))?;
        let local = listener.local_addr()?;
        let passive = free_port_range(local.ip(), PASSIVE_PORTS);
        let authority = format!("{}:{}", url_host(&self.advertise_host, local.ip()), local.port());
        self.events.info(format!(
            "ftp seed server listening on {local} (passive ports {}-{})",
            passive.start(),
            passive.end()
        ));
        tokio::spawn(accept_loop(listener, self.seeds.clone(), passive, self.events.clone()));
        Ok(Bound { authority })
    }
}

fn join_remote(dir: &str, name: &str) -> String {
    match dir {
        "" => name.to_string(),
        d if d.ends_with('/') => format!("{d}{name}"),
        d => format!("{d}/{name}"),
    }
}

/// The URL of an uploaded file: the destination's scheme and server, its user (never the
/// password), and the path it was stored at.
fn upload_url(target: &Target, remote: &str) -> String {
    let label = target.with_path(remote).label;
    if target.user.eq_ignore_ascii_case(ANONYMOUS) || target.user.eq_ignore_ascii_case("ftp") {
        return label;
    }
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    match label.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}@{rest}", utf8_percent_encode(&target.user, NON_ALPHANUMERIC)),
        None => label,
    }
}

fn random_u64(seed: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(seed);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

/// `width` consecutive ports that are free on `ip` right now, for passive data connections
/// (libunftp picks a random one of them per transfer and retries when one is taken).
pub fn free_port_range(ip: IpAddr, width: u16) -> RangeInclusive<u16> {
    for attempt in 0..64u64 {
        let base = 40_000 + (random_u64(attempt) % 20_000) as u16;
        let end = base + width - 1;
        if (base..=end).all(|p| StdListener::bind(SocketAddr::new(ip, p)).is_ok()) {
            return base..=end;
        }
    }
    49_152..=65_535
}

/// Control connections one FTP seed server holds at most. The FTP server library shows no
/// login to us, so every session stays evictable: past the cap the oldest is closed for the
/// newcomer ([`ConnLimit`]); idle sessions also end after `IDLE_SECS`.
const MAX_CONNECTIONS: usize = 256;

async fn accept_loop(listener: TcpListener, seeds: Arc<SeedTable<Seed>>, passive: RangeInclusive<u16>, events: Events) {
    let limit = ConnLimit::new(MAX_CONNECTIONS);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                events.warn(format!("ftp seed server: accept failed: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(conn) = limit.admit() else { continue };
        let _ = stream.set_nodelay(true);
        let table = seeds.clone();
        let built = ServerBuilder::new(Box::new(move || SeedFs { seeds: table.clone() }))
            .greeting("chiral ftp seed")
            .passive_ports(passive.clone())
            .idle_session_timeout(IDLE_SECS)
            .build();
        match built {
            Ok(server) => {
                tokio::spawn(async move {
                    // A session error (client gone) only ends that session.
                    tokio::select! {
                        _ = server.service(stream) => {}
                        _ = conn.evicted() => {}
                    }
                });
            }
            Err(e) => events.warn(format!("ftp seed server: {e}")),
        }
    }
}

/// The virtual folder of seeded files, read-only.
#[derive(Debug)]
pub struct SeedFs {
    seeds: Arc<SeedTable<Seed>>,
}

impl Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed").field("id", &self.id).field("vpath", &self.vpath).finish_non_exhaustive()
    }
}

/// What a path names in the virtual folder.
enum Node {
    Root,
    /// `<id>/`, the folder of a seed whose name was taken.
    IdDir(Arc<Seed>),
    File(Arc<Seed>),
}

/// Metadata of a virtual entry.
#[derive(Debug, Clone)]
pub struct SeedMeta {
    len: u64,
    dir: bool,
    modified: SystemTime,
}

impl Metadata for SeedMeta {
    fn len(&self) -> u64 {
        self.len
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn is_file(&self) -> bool {
        !self.dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> unftp_core::storage::Result<SystemTime> {
        Ok(self.modified)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
    fn permissions(&self) -> Permissions {
        Permissions(if self.dir { 0o555 } else { 0o444 })
    }
}

/// The normal components of a client path (`.` dropped, `..` climbing no higher than `/`).
fn components(path: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn not_available() -> StorageError {
    StorageError::from(StorageErrorKind::PermanentFileNotAvailable)
}

fn read_only() -> StorageError {
    StorageError::from(StorageErrorKind::PermissionDenied)
}

impl SeedFs {
    fn resolve(&self, path: &Path) -> Option<Node> {
        let parts = components(path);
        let seeds = self.seeds.all();
        let served = || seeds.iter().filter(|s| s.vpath.is_some());
        match parts.as_slice() {
            [] => Some(Node::Root),
            [one] => served()
                .find(|s| s.vpath.as_deref() == Some(one.as_str()))
                .map(|s| Node::File(s.clone()))
                .or_else(|| {
                    served()
                        .find(|s| s.id == *one && s.vpath.as_deref().is_some_and(|v| v.contains('/')))
                        .map(|s| Node::IdDir(s.clone()))
                }),
            [id, name] => {
                let want = format!("{id}/{name}");
                served().find(|s| s.vpath.as_deref() == Some(want.as_str())).map(|s| Node::File(s.clone()))
            }
            _ => None,
        }
    }

    fn dir_meta() -> SeedMeta {
        SeedMeta { len: 0, dir: true, modified: SystemTime::now() }
    }

    async fn file_meta(seed: &Seed) -> Result<SeedMeta, StorageError> {
        let m = tokio::fs::metadata(&seed.path).await.map_err(|_| not_available())?;
        if !m.is_file() {
            return Err(not_available());
        }
        Ok(SeedMeta { len: m.len(), dir: false, modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH) })
    }

    async fn open(
        &self,
        path: &Path,
        start: u64,
    ) -> Result<(Box<dyn AsyncRead + Send + Sync + Unpin>, Arc<Seed>), StorageError> {
        let Some(Node::File(seed)) = self.resolve(path) else { return Err(not_available()) };
        let fs = seed.fs.clone().ok_or_else(not_available)?;
        let reader =
            StorageBackend::<DefaultUser>::get(fs.as_ref(), &DefaultUser, seed.disk_name.clone(), start).await?;
        Ok((reader, seed))
    }
}

#[async_trait]
impl StorageBackend<DefaultUser> for SeedFs {
    type Metadata = SeedMeta;

    fn supported_features(&self) -> u32 {
        unftp_core::storage::FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<SeedMeta> {
        match self.resolve(path.as_ref()) {
            Some(Node::Root) | Some(Node::IdDir(_)) => Ok(Self::dir_meta()),
            Some(Node::File(seed)) => Self::file_meta(&seed).await,
            None => Err(not_available()),
        }
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<Vec<Fileinfo<PathBuf, SeedMeta>>> {
        let node = self
            .resolve(path.as_ref())
            .ok_or_else(|| StorageError::from(StorageErrorKind::PermanentDirectoryNotAvailable))?;
        // In the order the seeds were added.
        let mut listed: Vec<(String, Option<Arc<Seed>>)> = Vec::new();
        match node {
            Node::Root => {
                for s in self.seeds.all() {
                    match s.vpath.as_deref() {
                        Some(v) if v.contains('/') => listed.push((s.id.clone(), None)),
                        Some(v) => listed.push((v.to_string(), Some(s.clone()))),
                        None => {}
                    }
                }
            }
            Node::IdDir(s) => listed.push((s.disk_name.clone(), Some(s.clone()))),
            Node::File(s) => listed.push((s.disk_name.clone(), Some(s.clone()))),
        }
        let mut out = Vec::with_capacity(listed.len());
        for (name, seed) in listed {
            let metadata = match seed {
                Some(s) => match Self::file_meta(&s).await {
                    Ok(m) => m,
                    Err(_) => continue,
                },
                None => Self::dir_meta(),
            };
            out.push(Fileinfo { path: PathBuf::from(name), metadata });
        }
        Ok(out)
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
        start_pos: u64,
    ) -> unftp_core::storage::Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        let (reader, seed) = self.open(path.as_ref(), start_pos).await?;
        Ok(Box::new(Counting { inner: reader, seed, pause: None }))
    }

    /// Large reads and writes (the default copies 8 KiB at a time).
    async fn get_into<'a, P, W: ?Sized>(
        &self,
        _user: &DefaultUser,
        path: P,
        start_pos: u64,
        output: &'a mut W,
    ) -> unftp_core::storage::Result<u64>
    where
        W: AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        let (reader, seed) = self.open(path.as_ref(), start_pos).await?;
        let mut reader = tokio::io::BufReader::with_capacity(COPY_CHUNK, reader);
        let mut total = 0u64;
        loop {
            let chunk = tokio::io::AsyncBufReadExt::fill_buf(&mut reader).await?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            // The chunk goes once its bytes fit the upload rate.
            if let Some(rate) = &seed.upload_rate {
                rate.acquire(n as u64).await;
            }
            output.write_all(chunk).await?;
            tokio::io::AsyncBufReadExt::consume(&mut reader, n);
            total += n as u64;
            seed.bytes_served.fetch_add(n as u64, Ordering::Relaxed);
        }
        output.flush().await?;
        Ok(total)
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        _user: &DefaultUser,
        _input: R,
        _path: P,
        _start_pos: u64,
    ) -> unftp_core::storage::Result<u64> {
        Err(read_only())
    }

    async fn del<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        _path: P,
    ) -> unftp_core::storage::Result<()> {
        Err(read_only())
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        _path: P,
    ) -> unftp_core::storage::Result<()> {
        Err(read_only())
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        _from: P,
        _to: P,
    ) -> unftp_core::storage::Result<()> {
        Err(read_only())
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        _path: P,
    ) -> unftp_core::storage::Result<()> {
        Err(read_only())
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<()> {
        match self.resolve(path.as_ref()) {
            Some(Node::Root) | Some(Node::IdDir(_)) => Ok(()),
            _ => Err(StorageError::from(StorageErrorKind::PermanentDirectoryNotAvailable)),
        }
    }
}

/// A reader that counts what it hands out as served.
struct Counting {
    inner: Box<dyn AsyncRead + Send + Sync + Unpin>,
    seed: Arc<Seed>,
    /// Held back by the upload rate until then, after the bytes read before.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Counting {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
            self.pause = None;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.seed.bytes_served.fetch_add(n, Ordering::Relaxed);
        let wait =
            self.seed.upload_rate.as_ref().filter(|_| n > 0).map_or(std::time::Duration::ZERO, |rate| rate.reserve(n));
        if !wait.is_zero() {
            self.pause = Some(Box::pin(tokio::time::sleep(wait)));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_paths_cannot_climb() {
        assert_eq!(components(Path::new("/a/../../b/./c")), vec!["b", "c"]);
        assert!(components(Path::new("/..")).is_empty());
        assert_eq!(components(Path::new("name.bin")), vec!["name.bin"]);
    }

    #[test]
    fn passive_ranges_are_free_and_wide() {
        let r = free_port_range("127.0.0.1".parse().unwrap(), 8);
        assert_eq!(r.end() - r.start() + 1, 8);
    }

    #[test]
    fn upload_urls_name_the_user_not_the_password() {
        let t = Target::parse("ftp://bob:s3cret@h:2121/in/", &Default::default()).unwrap();
        let u = upload_url(&t, &join_remote(&t.path, "a b.bin"));
        assert_eq!(u, "ftp://bob@h:2121/in/a%20b.bin");
        let anon = Target::parse("ftp://h/", &Default::default()).unwrap();
        assert_eq!(upload_url(&anon, &join_remote(&anon.path, "x")), "ftp://h/x");
    }
}
