//! Seeding: one HTTP/1.1 server per plugin (hyper), started on the first seed, serving every
//! seeded file at `/<seed-id>/<percent-encoded name>` with byte ranges.
//!
//! Files are opened per request and read in chunks on the blocking pool with one chunk of
//! read-ahead, so a body never sits in memory whole and disk reads overlap socket writes.

use std::{
    convert::Infallible,
    fs::File,
    future::Future as _,
    io,
    os::unix::fs::FileExt as _,
    path::PathBuf,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use chiral_sdk::{
    listen::ConnLimit,
    rate::RateLimiter,
    seeds::{check_file, listen_host, url_host, SeedTable, Seeded},
    Events, HostConfig, PluginError, SeedInfo,
};
use http_body_util::{Either, Empty, Full};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::OnceCell, task::JoinHandle};

use crate::{
    names::{decode_segment, encode_segment},
    range::{content_range, parse_range, RangeReply},
};

/// Bytes read from disk per body frame: large enough that per-chunk costs vanish, small enough
/// that a slow client pins little memory.
const CHUNK: u64 = 512 * 1024;
/// A client that opens a connection and sends no complete request head in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// One seeded file.
struct Seed {
    path: PathBuf,
    /// The file name as served (decoded form of the URL's last segment).
    name: String,
    url: String,
    bytes_served: AtomicU64,
    /// Its own upload rate (`upload_rate`) inside the plugin's (`max_upload_rate`, shared by
    /// every transfer of every seed), or the plugin's alone.
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

    /// Starts serving `path` (a regular file); seeding the same path again returns the same seed.
    /// `upload_rate`: this seed's own limit (bytes per second), inside the plugin's.
    pub async fn seed(&self, path: &str, upload_rate: Option<u64>, events: &Events) -> Result<SeedInfo, PluginError> {
        let path = check_file(path).await?;
        if let Some((id, existing)) = self.seeds.find_entry(|s| s.path == path) {
            return Ok(existing.info(&id));
        }
        let bound = self.server.get_or_try_init(|| self.start()).await?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        // Checked again under the table's lock: two seeds of one path may race here.
        let (id, seed, new) = self.seeds.insert_new(
            |s| s.path == path,
            |id, _| {
                let url = format!("http://{}/{}/{}", bound.authority, id, encode_segment(&name));
                Seed {
                    path: path.clone(),
                    name,
                    url,
                    bytes_served: AtomicU64::new(0),
                    upload_rate: chiral_sdk::rate::seed_limiter(upload_rate, &self.upload_rate),
                }
            },
        );
        if new {
            events.info(format!("seeding {} at {}", seed.path.display(), seed.url));
        }
        Ok(seed.info(&id))
    }

    pub fn list(&self) -> Vec<SeedInfo> {
        self.seeds.list()
    }

    /// Stops serving seed `id`; its URL answers 404 from now on (transfers already under way
    /// finish).
    pub fn stop(&self, id: &str) -> Result<(), PluginError> {
        let seed = self.seeds.remove(id)?;
        self.events.info(format!("stopped seeding {}", seed.path.display()));
        Ok(())
    }

    /// Binds the listener and spawns the accept loop (on the runtime this is called from: the
    /// plugin's own, as every plugin future runs there).
    async fn start(&self) -> Result<Bound, PluginError> {
        let host = listen_host(&self.listen_addr);
        let listener = TcpListener::bind((host, self.listen_port))
            .await
            .map_err(|e| PluginError::io(format!("cannot listen on {host} port {}: {e}", self.listen_port)))?;
        let local = listener.local_addr()?;
        let authority = format!("{}:{}", url_host(&self.advertise_host, local.ip()), local.port());
        self.events.info(format!("http seed server listening on {local}"));
        tokio::spawn(accept_loop(listener, self.seeds.clone(), self.events.clone()));
        Ok(Bound { authority })
    }
}

/// Connections one HTTP seed server holds at most; past it, the oldest that has not sent a
/// request yet is closed for the newcomer ([`ConnLimit`]).
const MAX_CONNECTIONS: usize = 1024;

async fn accept_loop(listener: TcpListener, seeds: Arc<SeedTable<Seed>>, events: Events) {
    let limit = ConnLimit::new(MAX_CONNECTIONS);
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                events.warn(format!("http seed server: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(conn) = limit.admit() else {
            events.debug(format!("http seed server: {MAX_CONNECTIONS} clients busy, a new connection refused"));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let seeds = seeds.clone();
        tokio::spawn(async move {
            let conn = Arc::new(conn);
            let in_service = conn.clone();
            let service = service_fn(move |req| {
                // A request proves the client: it keeps its slot.
                in_service.active();
                let seeds = seeds.clone();
                async move { Ok::<_, Infallible>(respond(&req, &seeds).await) }
            });
            // A connection error (client gone, bad request) only ends that connection.
            let serve = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = serve => {}
                _ = conn.evicted() => {}
            }
        });
    }
}

type ResponseBody = Either<Full<Bytes>, Either<Empty<Bytes>, FileBody>>;

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The seed a request path names: `/<id>/<name>`, the name compared after percent-decoding so
/// any equivalent spelling of it works.
fn lookup(path: &str, seeds: &SeedTable<Seed>) -> Option<Arc<Seed>> {
    let (id, name) = path.strip_prefix('/')?.split_once('/')?;
    let seed = seeds.get(id)?;
    (decode_segment(name) == seed.name).then_some(seed)
}

async fn respond(req: &Request<Incoming>, seeds: &SeedTable<Seed>) -> Response<ResponseBody> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
    };
    let Some(seed) = lookup(req.uri().path(), seeds) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let path = seed.path.clone();
    let opened = tokio::task::spawn_blocking(move || -> io::Result<(File, std::fs::Metadata)> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok((file, meta))
    })
    .await;
    let (file, meta) = match opened {
        Ok(Ok((f, m))) if m.is_file() => (f, m),
        Ok(Ok(_)) => return text(StatusCode::NOT_FOUND, "not found\n"),
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return text(StatusCode::NOT_FOUND, "not found\n"),
        _ => return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n"),
    };
    let length = meta.len();
    let last_modified = meta.modified().ok().map(httpdate::fmt_http_date);

    // `If-Range` with a validator that is not ours means the client's copy is stale: whole body.
    let if_range_ok = match req.headers().get(header::IF_RANGE) {
        None => true,
        Some(v) => last_modified.as_deref().is_some_and(|lm| v.as_bytes() == lm.as_bytes()),
    };
    let range_header = req.headers().get(header::RANGE).filter(|_| if_range_ok).map(|v| v.as_bytes());
    let reply = parse_range(range_header, length);

    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(lm) = &last_modified {
        builder = builder.header(header::LAST_MODIFIED, lm.as_str());
    }
    let (status, start, count) = match reply {
        RangeReply::Full => (StatusCode::OK, 0, length),
        RangeReply::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, content_range(start, end, length));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeReply::Unsatisfiable => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes */{length}"));
            (StatusCode::RANGE_NOT_SATISFIABLE, 0, 0)
        }
    };
    let body = if head || count == 0 {
        Either::Right(Either::Left(Empty::new()))
    } else {
        Either::Right(Either::Right(FileBody::new(file, start, count, seed)))
    };
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"))
}

/// A response body read from a file range in [`CHUNK`]s on the blocking pool, one chunk ahead
/// of the socket, counting what it hands out as served.
struct FileBody {
    file: Arc<File>,
    /// Where the next read starts.
    next_offset: u64,
    /// Bytes not yet asked of the disk.
    unread: u64,
    /// Bytes not yet handed to hyper (the exact size hint).
    left: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    seed: Arc<Seed>,
}

impl FileBody {
    fn new(file: File, start: u64, count: u64, seed: Arc<Seed>) -> Self {
        let mut body =
            Self { file: Arc::new(file), next_offset: start, unread: count, left: count, pending: None, seed };
        body.read_ahead();
        body
    }

    /// Starts reading the next chunk, if any is left.
    fn read_ahead(&mut self) {
        if self.unread == 0 {
            return;
        }
        let n = self.unread.min(CHUNK);
        let (file, offset) = (self.file.clone(), self.next_offset);
        let read = move || {
            // At most CHUNK, so it fits in usize.
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        };
        self.pending = Some(match self.seed.upload_rate.clone() {
            None => tokio::task::spawn_blocking(read),
            // The chunk is read once its bytes fit the upload rate.
            Some(rate) => tokio::spawn(async move {
                rate.acquire(n).await;
                tokio::task::spawn_blocking(read).await.map_err(io::Error::other)?
            }),
        });
        self.next_offset += n;
        self.unread -= n;
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let Some(pending) = this.pending.as_mut() else { return Poll::Ready(None) };
        let result = ready!(Pin::new(pending).poll(cx));
        this.pending = None;
        match result.map_err(io::Error::other).and_then(|r| r) {
            Ok(chunk) => {
                let n = chunk.len() as u64;
                this.left -= n;
                this.seed.bytes_served.fetch_add(n, Ordering::Relaxed);
                this.read_ahead();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Err(e) => {
                // The file shrank or failed: end the body (hyper drops the connection, so the
                // client sees a short body rather than wrong bytes).
                this.unread = 0;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
