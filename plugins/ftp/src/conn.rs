//! One logged-in FTP session: the control connection (suppaftp, with explicit TLS for `ftps://`)
//! and the passive data connections this crate opens itself (EPSV, else PASV), so that every
//! transfer is under its own control: `REST` + `RETR` of a byte range read straight into the
//! caller's buffer, an early close at the range end, and a timeout on every wait.
//!
//! Every message names the server and never the password; replies that a server sends back are
//! scrubbed of it all the same.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::BufMut as _;
use chiral_sdk::PluginError;
use suppaftp::{
    tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream},
    tokio_rustls::{
        client::TlsStream,
        rustls::{self, pki_types::ServerName, ClientConfig},
        TlsConnector,
    },
    FtpError,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    time::timeout,
};

use chiral_sdk::net::Proxy;

use crate::{
    reply::{self, Reply},
    target::Target,
};

/// How long a TCP connect (control or data) may take.
/// Most entries one folder listing may hold (a tree download takes at most 200,000 files).
pub const MAX_LISTING_LINES: usize = 250_000;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to answer a command.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a data connection may stall; a transfer as a whole is not bounded.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest single read from a data connection: big reads, few system calls.
pub const READ_CHUNK: usize = 512 * 1024;
/// How long to wait for the end-of-file a range that ends at the file's end should meet.
pub const EOF_WAIT: Duration = Duration::from_secs(5);

/// TLS settings for `ftps://`, built on first use (loading the platform's roots costs time).
pub struct TlsSettings {
    /// Extra trusted roots (PEM), from the `ca_file` option or `CHIRAL_FTP_CA_FILE`.
    ca_file: Option<String>,
    config: std::sync::OnceLock<Result<Arc<ClientConfig>, Arc<TlsSetupError>>>,
}

impl TlsSettings {
    pub fn new(ca_file: Option<String>) -> Self {
        Self { ca_file, config: std::sync::OnceLock::new() }
    }

    /// The client config: the platform's roots plus `ca_file`'s, TLS 1.2 and 1.3 (aws-lc-rs).
    pub fn config(&self) -> Result<Arc<ClientConfig>, PluginError> {
        self.config
            .get_or_init(|| build_tls_config(self.ca_file.as_deref()).map(Arc::new).map_err(Arc::new))
            .clone()
            .map_err(|e| PluginError::other(e.to_string()))
    }
}

/// Why the TLS client settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("ca_file {path}: {source}")]
    CaFile { path: String, source: rustls::pki_types::pem::Error },
    #[error("ca_file {0}: no certificate in it")]
    NoCertificate(String),
    #[error("cannot set up TLS certificate checks: {0}")]
    Verifier(rustls::Error),
    #[error("cannot set up TLS: {0}")]
    Protocols(rustls::Error),
}

fn build_tls_config(ca_file: Option<&str>) -> Result<ClientConfig, TlsSetupError> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut extra = Vec::new();
    if let Some(path) = ca_file {
        let bad = |source| TlsSetupError::CaFile { path: path.to_string(), source };
        for cert in CertificateDer::pem_file_iter(path).map_err(bad)? {
            extra.push(cert.map_err(bad)?);
        }
        if extra.is_empty() {
            return Err(TlsSetupError::NoCertificate(path.to_string()));
        }
    }
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        .map_err(TlsSetupError::Verifier)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Protocols)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// A data connection, plain or TLS.
pub enum Data {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Data {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Data::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Data::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Data {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Data::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Data::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Data::Plain(s) => Pin::new(s).poll_flush(cx),
            Data::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Data::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Data::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads exactly `n` more bytes from `data` onto the end of `buf`, straight into its spare
/// capacity (no zeroing, no intermediate buffer).
pub async fn read_exact_into(data: &mut Data, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let target = buf.len() + n;
    buf.reserve_exact(n);
    while buf.len() < target {
        let want = (target - buf.len()).min(READ_CHUNK);
        let mut limited = (&mut *buf).limit(want);
        let got = timeout(READ_TIMEOUT, data.read_buf(&mut limited))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "data connection stalled"))??;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "data connection closed early"));
        }
    }
    Ok(())
}

/// Connects a data connection. `rcvbuf` fixes its receive buffer: a range that ends before the
/// file does is cut off by closing the connection, and whatever the server pushed past the end
/// by then is wasted; loopback autotuning would let that grow to tens of MiB per range.
/// Through a proxy the data connection goes to the control connection's host name (the
/// server's address as the proxy sees it) at the passive port.
async fn connect_data(addr: SocketAddr, via: Option<(&Proxy, &str)>, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
    match via {
        Some((proxy, host)) => chiral_sdk::net::dial_with(Some(proxy), host, addr.port(), rcvbuf).await,
        None => chiral_sdk::net::dial_with(None, &addr.ip().to_string(), addr.port(), rcvbuf).await,
    }
}

/// The receive buffer for a data connection that stops `len` bytes in: half the range, at
/// least 256 KiB (a full window for a fast network at a few ms), at most 2 MiB.
pub fn range_rcvbuf(len: u64) -> u32 {
    (len / 2).clamp(256 << 10, 2 << 20) as u32
}

/// A short reason for an I/O error.
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::BrokenPipe => "connection closed".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::UnexpectedEof => "connection closed early".into(),
        _ => e.to_string(),
    }
}

/// Why a transfer could not start.
#[derive(Debug)]
pub enum StartError {
    /// The server refused `REST` (no random access).
    RestRefused(Reply),
    /// The server refused the transfer command itself.
    Refused(Reply),
    /// Anything else (network, protocol); the session is unusable.
    Failed(PluginError),
}

/// Why a session could not be opened.
#[derive(Debug)]
pub struct OpenError {
    pub error: PluginError,
    /// The server turned the session away for having too many already (421 at the greeting,
    /// "too many connections" at login): wait for one of ours instead of failing.
    pub busy: bool,
}

impl From<PluginError> for OpenError {
    fn from(error: PluginError) -> Self {
        Self { error, busy: false }
    }
}

impl From<OpenError> for PluginError {
    fn from(e: OpenError) -> Self {
        e.error
    }
}

/// Whether a reply turns a session away for the number of sessions already open.
pub fn is_busy_reply(code: u16, text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    code == 421 || (code == 530 && (t.contains("too many") || t.contains("maximum")))
}

/// Counts a session as open until it is dropped, and wakes a fetch waiting for one.
pub struct Slot {
    live: Arc<std::sync::atomic::AtomicUsize>,
    freed: Arc<tokio::sync::Notify>,
}

impl Slot {
    pub fn new(live: Arc<std::sync::atomic::AtomicUsize>, freed: Arc<tokio::sync::Notify>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self { live, freed }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.freed.notify_one();
    }
}

/// One logged-in session.
pub struct Conn {
    ctrl: AsyncRustlsFtpStream,
    peer: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Shared by the sessions of one source: cleared once the server refuses EPSV.
    epsv: Arc<AtomicBool>,
    /// `host:port` for messages.
    server: String,
    password: String,
    /// The login folder, once asked (`PWD`).
    home: Option<String>,
    /// Set when the session is out of step or dead: it must not be reused.
    pub broken: bool,
    /// The pool's count of open sessions, when the session belongs to one.
    pub slot: Option<Slot>,
    /// The proxy and the server's host name, when connections go through a proxy.
    via: Option<(Proxy, String)>,
}

impl Conn {
    /// Connects, secures (`ftps://`), logs in and selects binary mode.
    pub async fn open(t: &Target, tls: Option<Arc<ClientConfig>>, epsv: Arc<AtomicBool>) -> Result<Self, OpenError> {
        let server = t.authority();
        let tcp = match timeout(CONNECT_TIMEOUT, chiral_sdk::net::dial(t.proxy.as_ref(), &t.host, t.port)).await {
            Err(_) => return Err(PluginError::network(format!("timed out connecting to {server}")).into()),
            Ok(Err(e)) => return Err(PluginError::network(format!("{}: {server}", io_reason(&e))).into()),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map_err(|e| PluginError::network(format!("{}: {server}", io_reason(&e))))?;
        let ctrl = match timeout(REPLY_TIMEOUT, AsyncRustlsFtpStream::connect_with_stream(tcp)).await {
            Err(_) => return Err(PluginError::network(format!("no greeting from {server} (timed out)")).into()),
            Ok(Err(e)) => {
                let busy = matches!(&e, FtpError::UnexpectedResponse(r) if is_busy_reply(r.status.code() as u16, &String::from_utf8_lossy(&r.body)));
                return Err(OpenError { error: ftp_error(&e, &server, &t.password, "greeting"), busy });
            }
            Ok(Ok(c)) => c,
        };
        let (ctrl, tls) = match tls {
            None => (ctrl, None),
            Some(config) => {
                let name = ServerName::try_from(t.host.clone())
                    .map_err(|_| PluginError::invalid(format!("{} is not a valid TLS server name", t.host)))?;
                let connector = TlsConnector::from(config);
                let secured =
                    timeout(REPLY_TIMEOUT, ctrl.into_secure(AsyncRustlsConnector::from(connector.clone()), &t.host));
                match secured.await {
                    Err(_) => return Err(PluginError::network(format!("TLS setup with {server} timed out")).into()),
                    Ok(Err(e)) => return Err(ftp_error(&e, &server, &t.password, "AUTH TLS").into()),
                    Ok(Ok(c)) => (c, Some((connector, name))),
                }
            }
        };
        let mut conn = Self {
            ctrl,
            peer,
            tls,
            epsv,
            server,
            password: t.password.clone(),
            home: None,
            broken: false,
            slot: None,
            via: t.proxy.clone().map(|p| (p, t.host.clone())),
        };
        conn.login(&t.user, &t.password).await?;
        let r = conn.cmd("TYPE I").await?;
        if !r.is_success() {
            return Err(
                PluginError::other(format!("{} refused binary mode: {}", conn.server, conn.scrub(&r.text))).into()
            );
        }
        Ok(conn)
    }

    async fn login(&mut self, user: &str, password: &str) -> Result<(), OpenError> {
        let refused = |c: &Self, r: &Reply| OpenError {
            error: PluginError::other(format!(
                "login refused by {} as {}: {}",
                c.server,
                user_shown(user),
                c.scrub(&r.text)
            )),
            busy: is_busy_reply(r.code, &r.text),
        };
        let r = self.cmd(&format!("USER {user}")).await?;
        let r = match r.code {
            230 => return Ok(()),
            331 | 332 => self.cmd(&format!("PASS {password}")).await?,
            _ => return Err(refused(self, &r)),
        };
        match r.code {
            230 | 202 => Ok(()),
            332 => {
                Err(PluginError::other(format!("{} asks for an account (ACCT), which is not supported", self.server))
                    .into())
            }
            _ => Err(refused(self, &r)),
        }
    }

    /// `host:port` of the server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Server text with the password removed.
    pub fn scrub(&self, text: &str) -> String {
        crate::target::scrub(text, &self.password)
    }

    /// Sends one command and reads its reply, whatever its code.
    pub async fn cmd(&mut self, line: &str) -> Result<Reply, PluginError> {
        // Only the verb is ever shown (PASS carries the password).
        let verb = line.split(' ').next().unwrap_or_default().to_string();
        let r = timeout(REPLY_TIMEOUT, self.ctrl.custom_command(line, &[])).await;
        self.reply_of(r, &verb)
    }

    /// Reads one more reply (the end of a transfer) within `wait`.
    pub async fn read_reply(&mut self, wait: Duration, what: &str) -> Result<Reply, PluginError> {
        let r = timeout(wait, self.ctrl.read_response_in(&[])).await;
        self.reply_of(r, what)
    }

    fn reply_of(
        &mut self,
        r: Result<Result<suppaftp::types::Response, FtpError>, tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<Reply, PluginError> {
        let reply = match r {
            Err(_) => {
                self.broken = true;
                return Err(PluginError::network(format!("{} did not answer {what} (timed out)", self.server)));
            }
            // Every reply comes back as "unexpected": no code is listed as expected.
            Ok(Err(FtpError::UnexpectedResponse(resp))) | Ok(Ok(resp)) => Reply::from_bytes(&resp.body),
            Ok(Err(e)) => {
                self.broken = true;
                return Err(ftp_error(&e, &self.server, &self.password, what));
            }
        };
        match reply {
            Some(r) => {
                if r.code == 421 {
                    // Service closing: the server hangs up after this.
                    self.broken = true;
                }
                Ok(r)
            }
            None => {
                self.broken = true;
                Err(PluginError::network(format!("{} sent a garbled reply to {what}", self.server)))
            }
        }
    }

    /// The login folder (`PWD`), asked once.
    pub async fn home(&mut self) -> Result<String, PluginError> {
        if let Some(h) = &self.home {
            return Ok(h.clone());
        }
        let r = self.cmd("PWD").await?;
        let home = (r.code == 257).then(|| reply::parse_pwd(&r.text)).flatten().unwrap_or_else(|| "/".into());
        self.home = Some(home.clone());
        Ok(home)
    }

    /// Where to open the next data connection: EPSV, else PASV (whose address is ignored in
    /// favour of the control connection's peer, as curl does: no bounce to a third host).
    async fn passive(&mut self) -> Result<SocketAddr, PluginError> {
        if self.epsv.load(Ordering::Relaxed) {
            let r = self.cmd("EPSV").await?;
            if r.code == 229 {
                return match reply::parse_epsv(&r.text) {
                    Some(port) => Ok(SocketAddr::new(self.peer.ip(), port)),
                    None => {
                        self.broken = true;
                        Err(PluginError::network(format!(
                            "{} sent a bad EPSV reply: {}",
                            self.server,
                            self.scrub(&r.text)
                        )))
                    }
                };
            }
            if r.is_not_implemented() || r.code == 522 {
                self.epsv.store(false, Ordering::Relaxed);
            } else {
                return Err(self.transient_or_other(&r, "EPSV"));
            }
        }
        if self.via.is_none() && matches!(self.peer.ip(), IpAddr::V6(_)) {
            return Err(PluginError::other(format!("{} refused EPSV, and PASV cannot reach IPv6", self.server)));
        }
        let r = self.cmd("PASV").await?;
        if r.code != 227 {
            return Err(self.transient_or_other(&r, "PASV"));
        }
        match reply::parse_pasv(&r.text) {
            Some((_ip, port)) => Ok(SocketAddr::new(self.peer.ip(), port)),
            None => {
                self.broken = true;
                Err(PluginError::network(format!("{} sent a bad PASV reply: {}", self.server, self.scrub(&r.text))))
            }
        }
    }

    fn transient_or_other(&self, r: &Reply, what: &str) -> PluginError {
        let msg = format!("{} refused {what}: {}", self.server, self.scrub(&r.text));
        if r.is_transient() {
            PluginError::network(msg)
        } else {
            PluginError::other(msg)
        }
    }

    /// Opens a data connection and starts `command` on it (after `REST offset` when `offset` is
    /// not 0; `rcvbuf`: see [`range_rcvbuf`]). On success the transfer is running: read (or write) the data, then call
    /// [`Conn::finish`] after the end of file or [`Conn::abandon`] after closing it early.
    pub async fn start(&mut self, command: &str, offset: u64, rcvbuf: Option<u32>) -> Result<Data, StartError> {
        let addr = self.passive().await.map_err(StartError::Failed)?;
        let via = self.via.as_ref().map(|(p, h)| (p, h.as_str()));
        let tcp = match timeout(CONNECT_TIMEOUT, connect_data(addr, via, rcvbuf)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.broken = true;
                return Err(StartError::Failed(PluginError::network(format!(
                    "data connection to {addr}: {}",
                    io_reason(&e)
                ))));
            }
            Err(_) => {
                self.broken = true;
                return Err(StartError::Failed(PluginError::network(format!("data connection to {addr} timed out"))));
            }
        };
        if offset > 0 {
            let r = self.cmd(&format!("REST {offset}")).await.map_err(StartError::Failed)?;
            if !reply::rest_accepted(&r) {
                // The passive listener is left unused: the server drops it on the next command.
                return Err(StartError::RestRefused(r));
            }
        }
        let verb = command.split(' ').next().unwrap_or_default().to_string();
        let r = self.cmd(command).await.map_err(StartError::Failed)?;
        if !r.is_preliminary() {
            if r.is_success() {
                // A transfer that "completed" without a data connection is out of step with us.
                self.broken = true;
            }
            return Err(StartError::Refused(r));
        }
        match &self.tls {
            None => Ok(Data::Plain(tcp)),
            Some((connector, name)) => match timeout(REPLY_TIMEOUT, connector.connect(name.clone(), tcp)).await {
                Ok(Ok(s)) => Ok(Data::Tls(Box::new(s))),
                Ok(Err(e)) => {
                    self.broken = true;
                    Err(StartError::Failed(PluginError::network(format!(
                        "TLS on the {verb} data connection to {}: {e}",
                        self.server
                    ))))
                }
                Err(_) => {
                    self.broken = true;
                    Err(StartError::Failed(PluginError::network(format!(
                        "TLS on the {verb} data connection to {} timed out",
                        self.server
                    ))))
                }
            },
        }
    }

    /// After the data connection reached its end (and was dropped): the completion reply.
    pub async fn finish(&mut self, what: &str) -> Result<Reply, PluginError> {
        self.read_reply(REPLY_TIMEOUT, what).await
    }

    /// After closing a data connection before its end: reads the server's reaction (426 or
    /// 451, or 226 when it had already sent everything) so the session can be used again.
    pub async fn abandon(&mut self) -> Result<(), PluginError> {
        let r = self.read_reply(REPLY_TIMEOUT, "the end of an aborted transfer").await?;
        if r.is_preliminary() || r.is_intermediate() {
            self.broken = true;
        }
        Ok(())
    }

    /// `SIZE path`: `Ok(Some(n))`, `Ok(None)` when the server has no SIZE command, or the reply
    /// that refused it (550: no such file, or a folder).
    pub async fn size(&mut self, path: &str) -> Result<Result<Option<u64>, Reply>, PluginError> {
        let r = self.cmd(&format!("SIZE {path}")).await?;
        if let Some(n) = reply::parse_size(&r) {
            return Ok(Ok(Some(n)));
        }
        if r.is_not_implemented() {
            return Ok(Ok(None));
        }
        if r.code == 213 {
            self.broken = true;
            return Err(PluginError::network(format!(
                "{} sent a bad SIZE reply: {}",
                self.server,
                self.scrub(&r.text)
            )));
        }
        Ok(Err(r))
    }

    /// Whether the server accepts `REST` (tested with `REST 0`, which changes nothing).
    pub async fn supports_rest(&mut self) -> Result<bool, PluginError> {
        Ok(reply::rest_accepted(&self.cmd("REST 0").await?))
    }

    /// `CWD path`: whether it succeeded.
    pub async fn cwd(&mut self, path: &str) -> Result<bool, PluginError> {
        Ok(self.cmd(&format!("CWD {path}")).await?.is_success())
    }

    /// `FEAT`'s feature lines (upper-cased first words), empty when the server has no FEAT.
    pub async fn features(&mut self) -> Result<Vec<String>, PluginError> {
        let r = self.cmd("FEAT").await?;
        if r.code != 211 {
            return Ok(Vec::new());
        }
        // The reply's lines were joined with spaces; the feature names are the words between
        // the first and the last line.
        Ok(r.text.split_whitespace().map(|w| w.to_ascii_uppercase()).collect())
    }

    /// Runs a listing command (`MLSD` or `LIST`) in the current folder and returns its lines
    /// (at most [`MAX_LISTING_LINES`], 64 MiB in all).
    pub async fn listing(&mut self, command: &str) -> Result<Result<Vec<String>, Reply>, PluginError> {
        const MAX_LISTING: usize = 64 << 20;
        let mut data = match self.start(command, 0, None).await {
            Ok(d) => d,
            Err(StartError::Refused(r)) | Err(StartError::RestRefused(r)) => return Ok(Err(r)),
            Err(StartError::Failed(e)) => return Err(e),
        };
        let mut buf = Vec::new();
        let read = timeout(READ_TIMEOUT * 4, (&mut data).take(MAX_LISTING as u64 + 1).read_to_end(&mut buf)).await;
        drop(data);
        match read {
            Ok(Ok(_)) if buf.len() <= MAX_LISTING => {}
            Ok(Ok(_)) => {
                self.broken = true;
                return Err(PluginError::invalid(format!("{} sent a listing larger than 64 MiB", self.server)));
            }
            Ok(Err(e)) => {
                self.broken = true;
                return Err(PluginError::network(format!("listing from {}: {}", self.server, io_reason(&e))));
            }
            Err(_) => {
                self.broken = true;
                return Err(PluginError::network(format!("listing from {} timed out", self.server)));
            }
        }
        let end = self.finish(command).await?;
        if !end.is_success() {
            return Ok(Err(end));
        }
        // Lines are counted as they are split: millions of tiny entries within the byte cap
        // would otherwise cost far more memory as strings than as bytes.
        let text = String::from_utf8_lossy(&buf);
        let mut lines = Vec::new();
        for l in text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()) {
            if lines.len() == MAX_LISTING_LINES {
                return Err(PluginError::invalid(format!(
                    "{} sent a listing of more than {MAX_LISTING_LINES} entries",
                    self.server
                )));
            }
            lines.push(l.to_string());
        }
        Ok(Ok(lines))
    }

    /// Stores the local file `from` as `path` (`STOR`), returning the bytes sent.
    /// Uploads `from` as `path` (`STOR`), at most at `rate` when one is given.
    pub async fn store(
        &mut self,
        from: &Path,
        path: &str,
        rate: Option<&chiral_sdk::rate::RateLimiter>,
    ) -> Result<u64, PluginError> {
        let mut file =
            tokio::fs::File::open(from).await.map_err(|e| PluginError::io(format!("{}: {e}", from.display())))?;
        let mut data = match self.start(&format!("STOR {path}"), 0, None).await {
            Ok(d) => d,
            Err(StartError::Refused(r)) | Err(StartError::RestRefused(r)) => {
                return Err(PluginError::other(format!("{} refused the upload: {}", self.server, self.scrub(&r.text))))
            }
            Err(StartError::Failed(e)) => return Err(e),
        };
        // Paced: small writes, so the rate holds evenly rather than in bursts of a MiB.
        let mut buf = vec![0u8; if rate.is_some() { 64 << 10 } else { 1 << 20 }];
        let mut sent = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(|e| PluginError::io(format!("{}: {e}", from.display())))?;
            if n == 0 {
                break;
            }
            if let Some(r) = rate {
                r.acquire(n as u64).await;
            }
            let w = timeout(READ_TIMEOUT, data.write_all(&buf[..n])).await;
            let reason = match w {
                Ok(Ok(())) => {
                    sent += n as u64;
                    continue;
                }
                Ok(Err(e)) => io_reason(&e),
                Err(_) => "stalled".to_string(),
            };
            // The server closed the data connection: its reply says why.
            drop(data);
            self.broken = true;
            return Err(match self.read_reply(EOF_WAIT, "STOR").await {
                Ok(r) if !r.is_success() => {
                    PluginError::other(format!("{} refused the upload: {}", self.server, self.scrub(&r.text)))
                }
                _ => PluginError::network(format!("upload to {}: {reason}", self.server)),
            });
        }
        // The server learns the end of the file from the close (TLS: close_notify first).
        let _ = timeout(READ_TIMEOUT, data.shutdown()).await;
        drop(data);
        let r = self.finish("STOR").await?;
        if !r.is_success() {
            return Err(PluginError::other(format!("{} refused the upload: {}", self.server, self.scrub(&r.text))));
        }
        Ok(sent)
    }

    /// Says goodbye (best effort, short).
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), self.ctrl.custom_command("QUIT", &[])).await;
    }
}

/// A user name as shown in messages (bounded, no control characters).
fn user_shown(user: &str) -> String {
    user.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// A suppaftp error as one line naming the server, never the password.
fn ftp_error(e: &FtpError, server: &str, password: &str, what: &str) -> PluginError {
    let scrub = |s: String| crate::target::scrub(&s, password);
    match e {
        FtpError::ConnectionError(io) => PluginError::network(format!("{}: {server} ({what})", io_reason(io))),
        FtpError::SecureError(s) => PluginError::other(scrub(format!("TLS with {server} failed: {s}"))),
        FtpError::UnexpectedResponse(r) => {
            let text = Reply::from_bytes(&r.body).map(|r| r.text).unwrap_or_else(|| "a garbled reply".into());
            let msg = scrub(format!("{server} refused {what}: {text}"));
            if (400..500).contains(&r.status.code()) {
                PluginError::network(msg)
            } else {
                PluginError::other(msg)
            }
        }
        FtpError::BadResponse => PluginError::network(format!("{server} sent a garbled reply ({what})")),
        other => PluginError::network(scrub(format!("{server}: {other} ({what})"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn range_receive_buffers() {
        assert_eq!(super::range_rcvbuf(4 << 20), 2 << 20);
        assert_eq!(super::range_rcvbuf(64 << 20), 2 << 20);
        assert_eq!(super::range_rcvbuf(1 << 20), 512 << 10);
        assert_eq!(super::range_rcvbuf(1000), 256 << 10);
    }
}
