//! The daemon's HTTP API and its page (see docs/api.md): axum on the host's tokio runtime.
//!
//! Every request passes [`guard`] first, in this order:
//! 1. the `Host` header must name the daemon (its bound address, `localhost`, `127.0.0.1` or
//!    `[::1]`, with its port or none), else `403`: a DNS-rebinding page cannot reach it;
//! 2. every `/api/` path needs the token, as `Authorization: Bearer TOKEN` or as the cookie the
//!    page sets for itself (`HttpOnly`, `SameSite=Strict`), else `401`;
//! 3. a state-changing request (not GET/HEAD) whose `Origin` is another site's is refused
//!    (`403`), and so is one a browser marks `Sec-Fetch-Site: cross-site`.
//!
//! Every error answer is `{"error": "one line"}`, including the framework's own (unknown path,
//! wrong method, body too large).

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Router,
};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{multipart, AddRequest, Change, Daemon, DaemonError};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// Largest request body: an uploaded `.torrent` with its form fields.
const MAX_BODY: usize = 16 << 20;

/// What the guard checks requests against.
pub struct Access {
    /// The secret every `/api/` request carries.
    pub token: String,
    /// The address the server is bound to (its port is the one `Host` may name).
    pub bound: SocketAddr,
    /// More names `Host` may give (lowercase, no port): the machine's name or LAN address when
    /// the daemon listens beyond loopback (`--allow-host`).
    pub extra_hosts: Vec<String>,
}

impl Access {
    fn cookie_name(&self) -> String {
        format!("chiral_token_{}", self.bound.port())
    }

    /// Whether `host` (a `Host` header value, or the authority of an `Origin`) names the daemon.
    pub fn host_ok(&self, host: &str) -> bool {
        let host = host.trim();
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !p.contains(']') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (n, Some(p)),
            _ => (host, None),
        };
        if port.is_some_and(|p| p.parse::<u16>().ok() != Some(self.bound.port())) {
            return false;
        }
        let name = name.to_ascii_lowercase();
        let ip = self.bound.ip();
        let own = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
        let own_ok = !ip.is_unspecified() && name == own;
        own_ok || matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]") || self.extra_hosts.contains(&name)
    }

    fn origin_ok(&self, origin: &str) -> bool {
        origin.strip_prefix("http://").is_some_and(|authority| self.host_ok(authority))
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if bearer.is_some_and(|t| same(t, &self.token)) {
            return true;
        }
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| c.trim().split_once('=').is_some_and(|(k, v)| k == name && same(v, &self.token)))
    }
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Api {
    daemon: Arc<Daemon>,
    access: Access,
    payments: Option<Arc<crate::payments::PaymentService>>,
}

type St = State<Arc<Api>>;

/// An error answer: a status and one line.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let line = chiral_sdk::text::line(&self.1);
        (self.0, Json(json!({ "error": line }))).into_response()
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        ApiError(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON answer.
struct Json<T>(T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
            Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

/// The value of `key` in a query string (percent-decoded), if given.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode =
            |s: &str| String::from_utf8_lossy(&chiral_sdk::magnet::percent_decode(&s.replace('+', " "))).into_owned();
        (decode(k) == key).then(|| decode(v))
    })
}

/// The API and the page over `daemon`.
pub fn router(daemon: Arc<Daemon>, access: Access) -> Router {
    router_with_payments(daemon, access, None)
}

/// The API and the page over `daemon`, with `GET /api/v1/payments` and payment events from
/// `payments`.
pub fn router_with_payments(
    daemon: Arc<Daemon>,
    access: Access,
    payments: Option<Arc<crate::payments::PaymentService>>,
) -> Router {
    let api = Arc::new(Api { daemon, access, payments });
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/style.css", get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }))
        .route("/api/v1/session", post(session))
        .route("/api/v1/downloads", get(list_downloads).post(add_download))
        .route("/api/v1/downloads/{id}", get(one_download).patch(update_download).delete(delete_download))
        .route("/api/v1/downloads/{id}/pause", post(pause))
        .route("/api/v1/downloads/{id}/resume", post(resume))
        .route("/api/v1/downloads/{id}/stream", get(stream_download))
        .route("/api/v1/seeds", get(list_seeds).post(add_seed))
        .route("/api/v1/seeds/{id}", get(one_seed).delete(delete_seed))
        .route("/api/v1/seeds/{id}/stop", post(stop_seed))
        .route("/api/v1/seeds/{id}/start", post(start_seed))
        .route("/api/v1/events", get(events))
        .route("/api/v1/plugins", get(plugins))
        .route("/api/v1/search", get(search))
        .route("/api/v1/payments", get(payments_report))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such path".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
}

/// Serves the router on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

fn page(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn guard(State(api): St, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !api.access.host_ok(host) {
        return finish(
            ApiError(StatusCode::FORBIDDEN, "the Host header does not name this daemon".into()).into_response(),
        );
    }
    // A media player cannot send a header: the stream endpoint takes the token as `?token=`.
    let stream_token = (matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path().ends_with("/stream"))
        .then(|| query_param(req.uri().query(), "token"))
        .flatten()
        .is_some_and(|t| same(&t, &api.access.token));
    if req.uri().path().starts_with("/api/") && !stream_token && !api.access.token_ok(headers) {
        return finish(
            ApiError(StatusCode::UNAUTHORIZED, "missing or wrong token (Authorization: Bearer TOKEN)".into())
                .into_response(),
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let cross = headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
        if origin.is_some_and(|o| !api.access.origin_ok(o)) || cross {
            return finish(
                ApiError(StatusCode::FORBIDDEN, "requests from another site may not change anything".into())
                    .into_response(),
            );
        }
    }
    finish(next.run(req).await)
}

/// Error answers the framework made itself become JSON too; every answer gets the headers
/// that keep browsers from guessing types or leaking the URL.
fn finish(mut r: Response) -> Response {
    let status = r.status();
    let is_json = r.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let reason = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
        r = ApiError(status, reason).into_response();
    }
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The page trades the token from its URL for a cookie, so its event stream (a browser's
/// `EventSource` sends no `Authorization` header) and reloads are authorised.
async fn session(State(api): St) -> Response {
    let cookie = format!("{}={}; Path=/api/; HttpOnly; SameSite=Strict", api.access.cookie_name(), api.access.token);
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn list_downloads(State(api): St) -> Json<serde_json::Value> {
    Json(json!({ "downloads": api.daemon.downloads() }))
}

async fn one_download(State(api): St, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(api.daemon.download(&id)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    identifiers: Vec<String>,
    #[serde(default)]
    out_dir: Option<PathBuf>,
    #[serde(default)]
    backend: Option<String>,
    /// Bytes per second, or a size string (`2M`, `500K`); 0 or null: no limit of its own.
    #[serde(default)]
    max_download_rate: Option<serde_json::Value>,
    /// `1,3-5` or a glob.
    #[serde(default)]
    file_selection: Option<String>,
    #[serde(default)]
    sequential: bool,
}

/// A rate as given: a number of bytes per second or a size string; 0, `""` or null: none.
fn rate_value(v: &serde_json::Value) -> ApiResult<Option<u64>> {
    named_rate_value(v, "max_download_rate")
}

fn named_rate_value(v: &serde_json::Value, name: &str) -> ApiResult<Option<u64>> {
    let r = match v {
        serde_json::Value::Null => 0,
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| bad(format!("{name} {n} is not a size")))?,
        serde_json::Value::String(s) if s.trim().is_empty() => 0,
        serde_json::Value::String(s) => chiral_sdk::options::parse_size(s.trim())
            .ok_or_else(|| bad(format!("{name} {:?} is not a size", chiral_sdk::text::line(s))))?,
        other => return Err(bad(format!("{name} {other} is not a size"))),
    };
    Ok(Some(r).filter(|&r| r > 0))
}

/// `PATCH /api/v1/downloads/{id}`: each field given replaces the download's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// Absent: unchanged; null, 0 or `""`: no limit of its own.
    #[serde(default, deserialize_with = "present")]
    max_download_rate: Option<serde_json::Value>,
    /// Absent: unchanged; null or `""`: every file.
    #[serde(default, deserialize_with = "present")]
    file_selection: Option<serde_json::Value>,
    #[serde(default)]
    sequential: Option<bool>,
}

/// A field that is present, even as null (`Some(Value::Null)`), apart from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

async fn update_download(State(api): St, Path(id): Path<String>, body: Bytes) -> ApiResult<Response> {
    let b: UpdateBody = serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let file_selection = match b.file_selection {
        None => None,
        Some(serde_json::Value::Null) => Some(None),
        Some(serde_json::Value::String(s)) => Some(Some(s)),
        Some(other) => return Err(bad(format!("file_selection must be a string, not {other}"))),
    };
    let u = crate::daemon::Update {
        max_download_rate: b.max_download_rate.as_ref().map(rate_value).transpose()?,
        file_selection,
        sequential: b.sequential,
    };
    Ok(Json(api.daemon.update(&id, u).await?).into_response())
}

/// JSON `{"identifiers", "out_dir"?, "backend"?}`, or a multipart form with a `torrent` file.
async fn add_download(State(api): St, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let req = match multipart::boundary(kind) {
        Some(b) => {
            let mut req = AddRequest::default();
            for p in multipart::parse(&body, &b).map_err(bad)? {
                let text = || String::from_utf8_lossy(&p.data).trim().to_string();
                match p.name.as_str() {
                    "torrent" => req.torrent = Some(p.data.clone()),
                    "out_dir" if !text().is_empty() => req.out_dir = Some(PathBuf::from(text())),
                    "backend" if !text().is_empty() => req.backend = Some(text()),
                    "max_download_rate" => req.max_download_rate = rate_value(&serde_json::Value::String(text()))?,
                    "file_selection" if !text().is_empty() => req.file_selection = Some(text()),
                    "sequential" => req.sequential = matches!(text().as_str(), "true" | "1" | "on"),
                    "identifier" | "identifiers" => req.identifiers.extend(text().lines().map(str::to_string)),
                    _ => {}
                }
            }
            if req.torrent.is_none() && req.identifiers.is_empty() {
                return Err(bad("the form has no torrent file part and no identifier"));
            }
            req
        }
        None => {
            let b: AddBody = serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
            AddRequest {
                identifiers: b.identifiers,
                out_dir: b.out_dir,
                backend: b.backend,
                torrent: None,
                max_download_rate: b.max_download_rate.as_ref().map(rate_value).transpose()?.flatten(),
                file_selection: b.file_selection,
                sequential: b.sequential,
            }
        }
    };
    let view = api.daemon.add(req)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn pause(State(api): St, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(api.daemon.pause(&id).await?).into_response())
}

async fn resume(State(api): St, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(api.daemon.resume(&id)?).into_response())
}

async fn delete_download(State(api): St, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let delete_files = match query_param(q.as_deref(), "delete_files").as_deref() {
        None | Some("false" | "0" | "") => false,
        Some("true" | "1") => true,
        Some(other) => return Err(bad(format!("delete_files must be true or false, not {other:?}"))),
    };
    api.daemon.delete(&id, delete_files).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_seeds(State(api): St) -> Json<serde_json::Value> {
    Json(json!({ "seeds": api.daemon.seeds() }))
}

async fn one_seed(State(api): St, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(api.daemon.seed_by_id(&id)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedBody {
    path: PathBuf,
    #[serde(default)]
    via: Vec<String>,
    /// Tracker announce URLs for BitTorrent seeds.
    #[serde(default)]
    trackers: Vec<String>,
    /// This seed's own upload limit (bytes per second or a size), inside the global one.
    #[serde(default)]
    max_upload_rate: Option<serde_json::Value>,
}

/// `via` naming one plugin answers that seed; several or none answer `{"seeds": [...]}`.
async fn add_seed(State(api): St, body: Bytes) -> ApiResult<Response> {
    let b: SeedBody = serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let mut options: Vec<(String, String)> = b.trackers.iter().map(|t| ("tracker".to_string(), t.clone())).collect();
    if let Some(rate) =
        b.max_upload_rate.as_ref().map(|v| named_rate_value(v, "max_upload_rate")).transpose()?.flatten()
    {
        // Every seeding plugin takes its seed's own limit as the option `upload_rate`.
        options.push(("upload_rate".to_string(), rate.to_string()));
    }
    let seeds = api.daemon.add_seed(&b.path, &b.via, &options).await?;
    match (b.via.len(), seeds.as_slice()) {
        (1, [one]) => Ok((StatusCode::CREATED, Json(one.clone())).into_response()),
        _ => Ok((StatusCode::CREATED, Json(json!({ "seeds": seeds }))).into_response()),
    }
}

async fn stop_seed(State(api): St, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(api.daemon.stop_seed(&id)?).into_response())
}

async fn start_seed(State(api): St, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(api.daemon.start_seed(&id).await?).into_response())
}

async fn delete_seed(State(api): St, Path(id): Path<String>) -> ApiResult<Response> {
    api.daemon.remove_seed(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn plugins(State(api): St) -> Json<serde_json::Value> {
    let reg = &api.daemon.host().registry;
    Json(json!({ "plugins": reg.describe(), "schemes": reg.scheme_winners() }))
}

/// A keyword lookup on the Chiral network (`chiral search`): `?q=WORD[&via=PLUGIN]`.
async fn search(State(api): St, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let word =
        query_param(q.as_deref(), "q").filter(|w| !w.trim().is_empty()).ok_or_else(|| bad("give a word: ?q=WORD"))?;
    let via = query_param(q.as_deref(), "via").unwrap_or_else(|| "chiral".into());
    let answer = api
        .daemon
        .host()
        .command(Some(&via), "", "search", &[("word".to_string(), word)])
        .await
        .map_err(DaemonError::host)?;
    Ok(Json(answer).into_response())
}

/// `GET /api/v1/downloads/{id}/stream[?file=N]`: file N (default: the first chosen) of a
/// download, while it downloads, with `Range` ([`super::stream`]).
async fn stream_download(
    State(api): St,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let file = match query_param(q.as_deref(), "file") {
        None => None,
        Some(n) => Some(n.trim().parse::<usize>().map_err(|_| bad("file: a file's index (0, 1, ...)"))?),
    };
    let range = headers.get(header::RANGE).map(|v| v.as_bytes().to_vec());
    Ok(super::stream::respond(api.daemon.clone(), id, file, range).await?)
}

/// `GET /api/v1/payments`: what `chiral payments --json` prints.
async fn payments_report(State(api): St) -> ApiResult<Response> {
    let Some(p) = &api.payments else {
        return Ok(Json(json!({ "wallet": null, "payments": [] })).into_response());
    };
    let r = p.report().await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(r).into_response())
}

/// `text/event-stream`: a snapshot (one event per download and seed), then the changes. A
/// client too slow to keep up gets a fresh snapshot instead of what it missed.
async fn events(State(api): St) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = api.daemon.subscribe();
    let first: Vec<Change> = api.daemon.snapshot();
    let daemon = api.daemon.clone();
    let rest = futures::stream::unfold((rx, daemon), |(mut rx, daemon)| async move {
        match rx.recv().await {
            Ok(c) => Some((vec![c], (rx, daemon))),
            Err(RecvError::Lagged(_)) => {
                let snap = daemon.snapshot();
                Some((snap, (rx, daemon)))
            }
            Err(RecvError::Closed) => None,
        }
    })
    .flat_map(futures::stream::iter);
    let changes = futures::stream::iter(first).chain(rest).map(|c| Event::default().event(c.kind).data(c.data));
    // `event: payment`: a debt, a transaction's new state or a refused wallet, as they happen.
    let paid = futures::stream::unfold(api.payments.as_ref().map(|p| p.subscribe()), |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(n) => return Some((Event::default().event("payment").data(json!(n).to_string()), Some(rx))),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::stream::select(changes, paid).map(Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(bound: &str) -> Access {
        Access { token: "t0k".into(), bound: bound.parse().unwrap(), extra_hosts: vec!["mybox.lan".into()] }
    }

    #[test]
    fn host_header_names_the_daemon_or_is_refused() {
        let a = access("127.0.0.1:7878");
        for ok in ["127.0.0.1:7878", "127.0.0.1", "localhost:7878", "LOCALHOST", "[::1]:7878", "[::1]"] {
            assert!(a.host_ok(ok), "{ok}");
        }
        for no in ["evil.example", "evil.example:7878", "127.0.0.1:80", "localhost.evil.example", "", "[::1]:1"] {
            assert!(!a.host_ok(no), "{no}");
        }
        let lan = access("192.168.1.5:9000");
        assert!(lan.host_ok("192.168.1.5:9000") && !lan.host_ok("192.168.1.6:9000"));
        assert!(!access("0.0.0.0:9000").host_ok("0.0.0.0:9000"));
        let any = access("0.0.0.0:9000");
        assert!(any.host_ok("MyBox.lan:9000") && any.host_ok("mybox.lan") && !any.host_ok("mybox.lan:80"));
        assert!(!any.host_ok("evil.mybox.lan:9000"));
        assert!(a.origin_ok("http://127.0.0.1:7878") && !a.origin_ok("http://evil.example") && !a.origin_ok("null"));
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param(Some("a=1&delete_files=true"), "delete_files").as_deref(), Some("true"));
        assert_eq!(query_param(Some("q=two+words%21"), "q").as_deref(), Some("two words!"));
        assert_eq!(query_param(Some("x"), "x").as_deref(), Some(""));
        assert_eq!(query_param(None, "q"), None);
    }

    #[test]
    fn token_by_header_or_by_the_page_cookie() {
        let a = access("127.0.0.1:7878");
        let mut h = HeaderMap::new();
        assert!(!a.token_ok(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t0k"));
        assert!(a.token_ok(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t0K"));
        assert!(!a.token_ok(&h));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("x=1; chiral_token_7878=t0k"));
        assert!(a.token_ok(&h));
        h.insert(header::COOKIE, HeaderValue::from_static("chiral_token_7879=t0k"));
        assert!(!a.token_ok(&h));
    }
}
