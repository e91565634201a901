//! The client side: one shared reqwest client, the probe that learns what a URL serves, and the
//! byte-range [`HttpSource`] the engine pulls pieces through.

use std::{sync::Arc, time::Duration};

use chiral_sdk::{
    layout::MAX_PIECE_LENGTH, plugin::BoxFut, ContentInfo, ErrorKind, HostConfig, PieceSource, PluginError,
};
use reqwest::{
    header::{HeaderMap, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, RANGE},
    redirect, Client, Response, StatusCode, Url,
};
use tokio::task::JoinHandle;

use crate::{
    names,
    range::{parse_content_range, ContentRange},
};

/// Redirects followed before giving up (a loop would otherwise spin forever).
const MAX_REDIRECTS: usize = 10;
/// How long a TCP (and TLS) connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single read may stall; a dead server is noticed without bounding the whole
/// transfer, which may legitimately take hours.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of a probe's body read to give its connection back to the pool; a server that sends
/// more than this for `bytes=0-0` is not worth a kept-alive connection.
const PROBE_DRAIN_LIMIT: usize = 64 * 1024;

/// Builds the client every request of this plugin goes through, so connections (and TLS
/// sessions) are pooled across probes and pieces.
pub fn build_client(config: &HostConfig) -> Result<Client, PluginError> {
    let mut builder = Client::builder()
        .user_agent(concat!("chiral/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(proxy) = config.proxy.as_ref().into_option().filter(|p| !p.trim().is_empty()) {
        let proxy = reqwest::Proxy::all(proxy.as_str())
            // Not echoed: a proxy URL may carry a password.
            .map_err(|e| PluginError::invalid(format!("invalid proxy URL: {}", innermost(&e))))?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|e| PluginError::other(format!("cannot build the HTTP client: {}", innermost(&e))))
}

/// Parses an identifier this plugin accepts: an absolute `http`/`https` URL with a host.
pub fn parse_url(identifier: &str) -> Result<Url, PluginError> {
    let url = Url::parse(identifier.trim())
        .map_err(|e| PluginError::unsupported(format!("not an http(s) URL ({e}): {}", names::shorten(identifier))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PluginError::unsupported(format!(
            "the http plugin handles http and https URLs, not {}: {}",
            url.scheme(),
            names::shorten(identifier)
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(PluginError::invalid(format!("URL has no host: {}", names::shorten(identifier))));
    }
    Ok(url)
}

/// What a probe learned: the content and where to fetch it from.
#[derive(Clone, Debug)]
pub struct Probe {
    pub info: ContentInfo,
    /// The URL after redirects; range requests go straight there.
    pub final_url: Url,
}

/// Asks for the first byte of `url` to learn its length, whether it serves ranges, its final
/// location and its name, without downloading the body of a server that ignores ranges.
pub async fn probe(client: &Client, url: &Url) -> Result<Probe, PluginError> {
    let shown = names::redacted(url);
    let mut resp =
        client.get(url.clone()).header(RANGE, "bytes=0-0").send().await.map_err(|e| request_error(&e, &shown))?;
    let status = resp.status();
    let final_url = resp.url().clone();
    let headers = resp.headers().clone();
    let name = names::file_name(url, headers.get(CONTENT_DISPOSITION).map(|v| v.as_bytes()));
    let mut info = ContentInfo::new(name, 0).unknown_length().sequential().label(names::label(url));
    match status {
        StatusCode::PARTIAL_CONTENT => {
            // A 206 for some other range is a server not to trust with ranges; a plain GET of
            // the whole body still works, so it is treated like a 200.
            if let Some(ContentRange::Bytes { start: 0, end: 0, total }) = content_range(&headers) {
                info.random_access = true;
                info.length_known = total.is_some();
                info.length = total.unwrap_or(0);
            }
            drain_small(&mut resp).await;
        }
        StatusCode::OK => {
            if let Some(len) = content_length(&headers) {
                info.length = len;
                info.length_known = true;
            }
            // Dropping `resp` unread closes the connection instead of downloading the body.
        }
        // An empty file: no byte 0 to give, but a known (zero) length and nothing to fetch.
        StatusCode::RANGE_NOT_SATISFIABLE
            if content_range(&headers) == Some(ContentRange::Unsatisfied { total: 0 }) =>
        {
            info.random_access = true;
            info.length_known = true;
        }
        _ => return Err(status_error(status, &shown)),
    }
    Ok(Probe { info, final_url })
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    parse_content_range(headers.get(CONTENT_RANGE)?.as_bytes())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Reads what little is left of a probe's body so its connection can be reused.
async fn drain_small(resp: &mut Response) {
    let mut seen = 0;
    while let Ok(Some(chunk)) = resp.chunk().await {
        seen += chunk.len();
        if seen > PROBE_DRAIN_LIMIT {
            break;
        }
    }
}

/// Byte-range access to one URL, for the engine.
pub struct HttpSource {
    client: Client,
    /// Where the bytes are (the probe's URL after redirects).
    url: Url,
    /// The URL as messages show it.
    shown: String,
    info: ContentInfo,
    /// The runtime each fetch is spawned on; `None` only outside any runtime (fetches then run
    /// in the caller's task).
    runtime: Option<tokio::runtime::Handle>,
}

impl HttpSource {
    /// Built inside the plugin's runtime (every plugin future runs there), which it remembers.
    pub fn new(client: Client, probe: Probe) -> Self {
        let shown = names::redacted(&probe.final_url);
        let runtime = tokio::runtime::Handle::try_current().ok();
        Self { client, url: probe.final_url, shown, info: probe.info, runtime }
    }
}

/// Aborts a spawned fetch when its future is dropped (the engine cancels end-game duplicates).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PieceSource for HttpSource {
    fn info(&self) -> ContentInfo {
        self.info.clone()
    }

    /// Each fetch is its own task: a caller that polls many fetches from one task (the engine
    /// does) still gets the body reads and copies of N connections spread over every worker
    /// thread, instead of all on the thread running that one task.
    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let request = self.client.get(self.url.clone());
        let shown = self.shown.clone();
        let total = self.info.length_known.then_some(self.info.length);
        // A range outside the known content is the caller's mistake: no request for it.
        if let Some(total) = total {
            if offset.checked_add(length).is_none_or(|end| end > total) {
                let e = PluginError::invalid(format!("range {offset}+{length} is outside {total} bytes: {shown}"));
                return Box::pin(async move { Err(e) });
            }
        }
        let work = async move { fetch_range(request, &shown, total, offset, length).await };
        let Some(runtime) = &self.runtime else { return Box::pin(work) };
        let mut task = AbortOnDrop(runtime.spawn(work));
        Box::pin(async move {
            match (&mut task.0).await {
                Ok(result) => result,
                Err(e) if e.is_cancelled() => Err(PluginError::cancelled()),
                Err(e) => {
                    let why = match e.try_into_panic() {
                        Ok(payload) => chiral_sdk::plugin::panic_message(&*payload),
                        Err(e) => e.to_string(),
                    };
                    Err(PluginError::new(ErrorKind::Panic, format!("fetch panicked: {why}")))
                }
            }
        })
    }
}

/// `GET` bytes `[offset, offset + length)` and return exactly those bytes.
///
/// The hot path of every download: the buffer is allocated once at its final size and each body
/// chunk is copied into it once; nothing lets a server make it grow.
async fn fetch_range(
    request: reqwest::RequestBuilder,
    shown: &str,
    total: Option<u64>,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, PluginError> {
    if length == 0 {
        return Ok(Vec::new());
    }
    if length > MAX_PIECE_LENGTH {
        return Err(PluginError::invalid(format!("a {length}-byte range is larger than one piece may be")));
    }
    let last = offset
        .checked_add(length - 1)
        .ok_or_else(|| PluginError::invalid(format!("range at {offset} of {length} bytes overflows")))?;
    let mut resp =
        request.header(RANGE, format!("bytes={offset}-{last}")).send().await.map_err(|e| request_error(&e, shown))?;
    let status = resp.status();
    if status != StatusCode::PARTIAL_CONTENT {
        return Err(match status {
            StatusCode::OK => PluginError::invalid(format!("server ignored the range request (HTTP 200): {shown}")),
            _ => status_error(status, shown),
        });
    }
    match content_range(resp.headers()) {
        Some(ContentRange::Bytes { start, total: got_total, .. }) if start == offset => {
            if let (Some(want), Some(got)) = (total, got_total) {
                if want != got {
                    return Err(PluginError::invalid(format!("content changed: now {got} bytes, was {want}: {shown}")));
                }
            }
        }
        Some(_) => {
            return Err(PluginError::invalid(format!(
                "server answered another range than bytes {offset}-{last}: {shown}"
            )))
        }
        None => return Err(PluginError::invalid(format!("206 without a valid Content-Range: {shown}"))),
    }
    if content_length(resp.headers()).is_some_and(|n| n > length) {
        return Err(PluginError::invalid(format!("server sends more than the {length} bytes asked for: {shown}")));
    }
    let cap = usize::try_from(length).map_err(|_| PluginError::invalid("range too large for this machine"))?;
    let mut buf = Vec::with_capacity(cap);
    while let Some(chunk) = resp.chunk().await.map_err(|e| request_error(&e, shown))? {
        if chunk.len() > cap - buf.len() {
            return Err(PluginError::invalid(format!("server sent more than the {length} bytes asked for: {shown}")));
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() != cap {
        return Err(PluginError::network(format!("short read: {} of {length} bytes: {shown}", buf.len())));
    }
    Ok(buf)
}

/// The error for an HTTP status that is not the content: 404 and 410 say it does not exist,
/// 5xx and 429 are worth retrying (network), other statuses are final.
pub fn status_error(status: StatusCode, shown: &str) -> PluginError {
    let text = match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}: {shown}", status.as_u16()),
        None => format!("HTTP {}: {shown}", status.as_u16()),
    };
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => PluginError::not_found(text),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => PluginError::network(text),
        s if s.is_server_error() => PluginError::network(text),
        _ => PluginError::other(text),
    }
}

/// A transport error in one short line: `<reason>: <url>`, e.g.
/// `connection refused: http://127.0.0.1:1/x`.
pub fn request_error(e: &reqwest::Error, shown: &str) -> PluginError {
    if e.is_builder() {
        return PluginError::invalid(format!("invalid request ({}): {shown}", innermost(e)));
    }
    let reason = if e.is_timeout() {
        "timed out".to_string()
    } else if let Some(io) = io_source(e) {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
            std::io::ErrorKind::ConnectionAborted => "connection aborted".to_string(),
            std::io::ErrorKind::TimedOut => "timed out".to_string(),
            std::io::ErrorKind::UnexpectedEof => "connection closed early".to_string(),
            _ => io.to_string(),
        }
    } else if e.is_redirect() {
        format!("too many redirects (more than {MAX_REDIRECTS})")
    } else {
        innermost(e)
    };
    PluginError::network(format!("{reason}: {shown}"))
}

/// The I/O error at the root of an error chain, if any.
fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut found = None;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            found = Some(io);
        }
        cur = err.source();
    }
    found
}

/// The text of the deepest error in a chain: the most specific reason (reqwest's own text only
/// says which step failed).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Opens `identifier` as an engine source.
pub async fn open(client: &Client, identifier: &str) -> Result<Arc<dyn PieceSource>, PluginError> {
    let url = parse_url(identifier)?;
    let probe = probe(client, &url).await?;
    Ok(Arc::new(HttpSource::new(client.clone(), probe)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation() {
        assert!(parse_url("http://127.0.0.1:8080/x").is_ok());
        assert!(parse_url("HTTPS://example.com/").is_ok());
        for bad in
            ["ftp://h/x", "magnet:?xt=urn:btih:00", "", ":", "/etc/passwd", "chiral-testkit-unknown://nothing/here"]
        {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unsupported, "{bad:?}: {e}");
        }
        assert!(parse_url(&"x".repeat(70_000)).unwrap_err().message.len() < 400);
    }

    #[test]
    fn status_errors_are_classified() {
        let e = status_error(StatusCode::NOT_FOUND, "http://h/x");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.message.as_str(), "HTTP 404 Not Found: http://h/x");
        assert_eq!(status_error(StatusCode::GONE, "u").kind, ErrorKind::NotFound);
        assert_eq!(status_error(StatusCode::SERVICE_UNAVAILABLE, "u").kind, ErrorKind::Network);
        let e = status_error(StatusCode::FORBIDDEN, "u");
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(e.message.as_str(), "HTTP 403 Forbidden: u");
        assert_eq!(status_error(StatusCode::from_u16(599).unwrap(), "u").message.as_str(), "HTTP 599: u");
    }
}
