//! `chiral daemon`: the real binary driven over its HTTP API on loopback, with nginx as the
//! server downloads come from and the HTTP plugin's own seed: the token and Host checks, JSON
//! errors, downloads watched on the event stream, pause and resume, delete with the files, a
//! seed fetched with curl, and a `kill -9` mid-download after which a restart on the same data
//! dir finishes the download and serves the seed again.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use chiral_tests::{bt::*, *};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// A running `chiral daemon` and what its first line said.
struct Daemon {
    proc: Proc,
    port: u16,
    token: String,
}

impl Daemon {
    fn start(node: &Chiral) -> Self {
        let (proc, rx) = spawn_printing(node, "daemon", &["--http", "127.0.0.1:0"]);
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("chiral daemon printed no URL; stderr:\n{}", proc.log_text()));
        let rest = line.strip_prefix("http://127.0.0.1:").unwrap_or_else(|| panic!("first line {line:?}"));
        let (port, token) = rest.split_once("/#token=").unwrap_or_else(|| panic!("first line {line:?}"));
        let d = Self { port: port.parse().expect("port"), token: token.to_string(), proc };
        let saved = std::fs::read_to_string(node.data_dir.path().join("daemon.token")).expect("daemon.token");
        assert_eq!(saved.trim(), d.token, "daemon.token holds the printed token");
        let mode = std::fs::metadata(node.data_dir.path().join("daemon.token")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        d
    }

    /// One request with the token; the status and the body parsed as JSON (Null when empty).
    fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.token);
        let (status, text) = http(self.port, method, path, &[("Authorization", &auth)], body);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}\n{}", self.proc.log_text()))
        };
        (status, v)
    }

    fn get(&self, path: &str) -> Value {
        let (status, v) = self.api("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}\n{}", self.proc.log_text());
        v
    }

    fn download(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/downloads/{id}"))
    }

    fn add(&self, out: &Path, ids: &[&str]) -> String {
        let (status, v) = self.api("POST", "/api/v1/downloads", Some(&json!({ "identifiers": ids, "out_dir": out })));
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Waits until the download is in `state`; fails at once on an unexpected failure.
    fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(limit, || {
            last = self.download(id);
            assert!(
                state == "failed" || last["state"] != "failed",
                "download {id} failed: {}\n{}",
                last["error"],
                self.proc.log_text()
            );
            last["state"] == state
        });
        assert!(ok, "download {id} is not {state} after {limit:?}: {last}\n{}", self.proc.log_text());
        last
    }
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port` (`Connection: close`); status and body text.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    (status, if chunked { dechunk(rest) } else { rest.to_string() })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The event stream, recorded by a thread: (event type, id, state) of each complete event.
struct Events {
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    _stream: TcpStream,
}

impl Events {
    fn open(d: &Daemon) -> Self {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
        let req = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
            d.port, d.token
        );
        s.write_all(req.as_bytes()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, log) = (s.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = String::new();
            let mut chunk = [0u8; 8192];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
                // Each event ends with a blank line; chunk sizes of the transfer coding are
                // lines of their own that are neither `event:` nor `data:`.
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let kind = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_string();
                    let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                    if let Ok(v) = serde_json::from_str::<Value>(&data) {
                        let id = v["id"].as_str().unwrap_or_default().to_string();
                        let state = v["state"].as_str().unwrap_or_default().to_string();
                        log.lock().unwrap().push((kind, id, state));
                    }
                }
            }
        });
        Self { seen, _stream: s }
    }

    fn has(&self, kind: &str, id: &str, state: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|(k, i, s)| k == kind && i == id && s == state)
    }

    fn wait(&self, kind: &str, id: &str, state: &str) {
        assert!(
            wait_until(Duration::from_secs(30), || self.has(kind, id, state)),
            "no '{kind}' event with {id} {state}: {:?}",
            self.seen.lock().unwrap()
        );
    }
}

#[test]
fn api_downloads_seeds_security_and_a_restart_after_kill_9() {
    let node = Chiral::new();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (small, big, crash) = (src.path().join("small.bin"), src.path().join("big.bin"), src.path().join("crash.bin"));
    make_file(&small, 3 * MIB + 11, 1);
    make_file(&big, 4 * MIB, 2);
    make_file(&crash, 4 * MIB + 5, 3);
    let seeded = src.path().join("seeded.bin");
    make_file(&seeded, MIB + 3, 4);
    let nginx = Nginx::start(src.path());
    let d = Daemon::start(&node);

    // The page without a token; the API only with it; a foreign Host never.
    let (status, page) = http(d.port, "GET", "/", &[], None);
    assert!(status == 200 && page.contains("<title>"), "{status} {page}");
    for p in ["/api/v1/downloads", "/api/v1/seeds", "/api/v1/events"] {
        let (status, text) = http(d.port, "GET", p, &[], None);
        assert_eq!(status, 401, "{p}: {text}");
        assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string(), "{text}");
    }
    let auth = format!("Bearer {}", d.token);
    let (status, _) = http(d.port, "GET", "/api/v1/downloads", &[("Authorization", "Bearer nope")], None);
    assert_eq!(status, 401);
    for host in ["evil.example", "evil.example:80", "127.0.0.1:1"] {
        let (status, text) =
            http(d.port, "GET", "/api/v1/downloads", &[("Host", host), ("Authorization", &auth)], None);
        assert_eq!(status, 403, "Host {host}: {text}");
    }
    let (status, _) = http(
        d.port,
        "GET",
        "/api/v1/downloads",
        &[("Host", &format!("localhost:{}", d.port)), ("Authorization", &auth)],
        None,
    );
    assert_eq!(status, 200);
    let add = json!({ "identifiers": [nginx.url("small.bin")], "out_dir": out.path().join("x") });
    let (status, text) = http(
        d.port,
        "POST",
        "/api/v1/downloads",
        &[("Authorization", &auth), ("Origin", "http://evil.example")],
        Some(&add),
    );
    assert_eq!(status, 403, "a foreign Origin may not add: {text}");
    assert_eq!(d.get("/api/v1/downloads")["downloads"], json!([]));
    // Errors are one-line JSON.
    for (body, want) in [(json!({ "out_dir": "/x" }), 400), (json!({ "identifiers": ["gopher://h/x"] }), 400)] {
        let (status, v) = d.api("POST", "/api/v1/downloads", Some(&body));
        assert_eq!(status, want, "{body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.contains('\n')), "{v}");
    }
    let (status, v) = d.api("GET", "/api/v1/downloads/nope", None);
    assert_eq!((status, v["error"].is_string()), (404, true), "{v}");

    // Two downloads watched on the event stream; the rate-capped one paused and resumed.
    let events = Events::open(&d);
    let id_s = d.add(&out.path().join("s"), &[&nginx.url("small.bin")]);
    let id_b = d.add(&out.path().join("b"), &[&nginx.capped_url("big.bin")]);
    assert_ne!(id_s, id_b);
    let done = d.wait_state(&id_s, "completed", Duration::from_secs(60));
    assert_eq!(done["bytes_done"], 3 * MIB + 11);
    assert_eq!(done["files"], json!([out.path().join("s/small.bin")]));
    assert_eq!(sha256_file(&out.path().join("s/small.bin")), sha256_file(&small));
    for key in ["id", "name", "state", "bytes_total", "bytes_done", "speed", "eta_seconds", "peers", "identifiers"] {
        assert!(done.get(key).is_some(), "a Download has {key}: {done}");
    }
    assert_eq!(done["sources"][0]["plugin"], "http", "{done}");
    assert!(
        wait_until(Duration::from_secs(60), || d.download(&id_b)["bytes_done"].as_u64().unwrap_or(0) > 0),
        "the capped download never moved"
    );
    let (status, v) = d.api("POST", &format!("/api/v1/downloads/{id_b}/pause"), None);
    assert_eq!((status, v["state"].as_str()), (200, Some("paused")), "{v}");
    let at_pause = d.download(&id_b)["bytes_done"].clone();
    // Paused means nothing moves: watched for two seconds.
    assert!(
        !wait_until(Duration::from_secs(2), || d.download(&id_b)["bytes_done"] != at_pause),
        "it grew while paused"
    );
    assert_eq!(d.download(&id_b)["state"], "paused");
    let (status, v) = d.api("POST", &format!("/api/v1/downloads/{id_b}/resume"), None);
    assert!(status == 200 && ["queued", "running"].contains(&v["state"].as_str().unwrap_or_default()), "{v}");
    d.wait_state(&id_b, "completed", Duration::from_secs(90));
    assert_eq!(sha256_file(&out.path().join("b/big.bin")), sha256_file(&big));
    events.wait("download", &id_s, "completed");
    events.wait("download", &id_b, "paused");
    events.wait("download", &id_b, "completed");

    // Delete: the list forgets it; with delete_files its file goes, without it stays.
    let (status, _) = d.api("DELETE", &format!("/api/v1/downloads/{id_s}?delete_files=true"), None);
    assert_eq!(status, 204);
    assert!(!out.path().join("s/small.bin").exists());
    assert_eq!(d.api("GET", &format!("/api/v1/downloads/{id_s}"), None).0, 404);
    assert_eq!(d.api("DELETE", &format!("/api/v1/downloads/{id_b}"), None).0, 204);
    assert!(out.path().join("b/big.bin").exists());

    // A seed through the HTTP plugin, fetched with curl, seen by `chiral seeds`.
    let (status, seed) = d.api("POST", "/api/v1/seeds", Some(&json!({ "path": seeded, "via": ["http"] })));
    assert_eq!((status, seed["state"].as_str()), (201, Some("running")), "{seed}");
    let sid = seed["id"].as_str().unwrap().to_string();
    let url = seed["identifiers"][0].as_str().unwrap().to_string();
    let curl = require("curl", "curl");
    let got = out.path().join("seeded.got");
    let o = run_with_timeout(Command::new(&curl).args(["-sSf", "-o"]).arg(&got).arg(&url), Duration::from_secs(30));
    assert!(o.status.success(), "curl {url}: {}", stderr(&o));
    assert_eq!(sha256_file(&got), sha256_file(&seeded));
    events.wait("seed", &sid, "running");
    let o = node.run(&["seeds"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("running") && l.contains(&url)), "{}", stdout(&o));

    // kill -9 in the middle of a download; the restart finishes it and serves the seed again.
    let id_c = d.add(&out.path().join("c"), &[&nginx.capped_url("crash.bin")]);
    assert!(
        wait_until(Duration::from_secs(60), || d.download(&id_c)["bytes_done"].as_u64().unwrap_or(0) >= MIB),
        "the download to crash never reached 1 MiB: {}",
        d.download(&id_c)
    );
    // Killed once the state file has the progress (it is written at most a second late).
    let state_file = node.data_dir.path().join("daemon.json");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let saved: Value = std::fs::read_to_string(&state_file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            saved["downloads"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["id"] == id_c.as_str() && x["bytes_done"].as_u64() >= Some(MIB))
        }),
        "daemon.json never recorded the progress"
    );
    let Daemon { mut proc, .. } = d;
    proc.child.kill().expect("kill -9");
    proc.child.wait().expect("wait");
    drop(proc);
    let d = Daemon::start(&node);
    let v = d.download(&id_c);
    assert!(v["bytes_done"].as_u64().unwrap_or(0) > 0, "the progress survived: {v}");
    d.wait_state(&id_c, "completed", Duration::from_secs(90));
    assert_eq!(sha256_file(&out.path().join("c/crash.bin")), sha256_file(&crash));
    let mut url2 = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let seeds = d.get("/api/v1/seeds");
            let s = seeds["seeds"].as_array().unwrap().iter().find(|s| s["id"] == sid.as_str()).cloned();
            url2 = s.as_ref().and_then(|s| s["identifiers"][0].as_str()).unwrap_or_default().to_string();
            s.is_some_and(|s| s["state"] == "running")
        }),
        "the seed is not served again after the restart: {}",
        d.get("/api/v1/seeds")
    );
    let o = run_with_timeout(Command::new(&curl).args(["-sSf", "-o"]).arg(&got).arg(&url2), Duration::from_secs(30));
    assert!(o.status.success(), "curl {url2}: {}", stderr(&o));
    assert_eq!(sha256_file(&got), sha256_file(&seeded));

    // `chiral stop` reaches the daemon's seed through its control socket; the API sees it
    // stopped, and starts it again.
    let o = node.run(&["stop", &url2]);
    assert!(o.status.success(), "chiral stop {url2}: {}", stderr(&o));
    let seed_state =
        |d: &Daemon| d.get(&format!("/api/v1/seeds/{sid}"))["state"].as_str().unwrap_or_default().to_string();
    assert!(wait_until(Duration::from_secs(10), || seed_state(&d) == "stopped"), "the API does not see `chiral stop`");
    let (status, v) = d.api("POST", &format!("/api/v1/seeds/{sid}/start"), None);
    assert_eq!((status, v["state"].as_str()), (200, Some("running")), "{v}");
    let url2 = v["identifiers"][0].as_str().unwrap().to_string();

    // Stopped through the API: no longer served, listed as stopped.
    let (status, v) = d.api("POST", &format!("/api/v1/seeds/{sid}/stop"), None);
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")), "{v}");
    let o = run_with_timeout(Command::new(&curl).args(["-sf", "-o", "/dev/null"]).arg(&url2), Duration::from_secs(30));
    assert!(!o.status.success(), "a stopped seed still serves {url2}");
    assert_eq!(d.api("DELETE", &format!("/api/v1/seeds/{sid}"), None).0, 204);
    assert_eq!(d.get("/api/v1/seeds")["seeds"], json!([]));
}

/// The page in headless Chromium (Debian's `chromium` driven by `playwright-core`, which
/// tests/install-deps.sh puts under target/test-tools/pw): add a download through the form,
/// pause and resume it from its row, filter its sources by protocol in the detail, see the
/// row's progressbar reach 100, stop a seed in the Seeds view. tests/fixtures/daemon-page.mjs
/// drives it by accessible roles and names.
#[test]
fn the_page_in_headless_chromium() {
    let chromium = require("chromium", "chromium");
    let node_js = require("node", "nodejs");
    let pw = root().join("target/test-tools/pw");
    assert!(
        pw.join("node_modules/playwright-core/package.json").is_file(),
        "playwright-core is missing: `bash tests/install-deps.sh` installs it into {}",
        pw.display()
    );
    let node = Chiral::new();
    let src = tempfile::tempdir().unwrap();
    make_file(&src.path().join("paged.bin"), 4 * MIB, 7);
    let seeded = src.path().join("page-seed.bin");
    make_file(&seeded, MIB, 8);
    let nginx = Nginx::start(src.path());
    let d = Daemon::start(&node);
    let (status, v) = d.api("POST", "/api/v1/seeds", Some(&json!({ "path": seeded, "via": ["http"] })));
    assert_eq!(status, 201, "{v}");
    let shot = node.data_dir.path().join("page.png");
    let o = run_with_timeout(
        Command::new(node_js)
            .arg(root().join("tests/fixtures/daemon-page.mjs"))
            .env("PW_DIR", &pw)
            .env("CHROMIUM", &chromium)
            .env("PAGE_URL", format!("http://127.0.0.1:{}/#token={}", d.port, d.token))
            .env("URL", nginx.capped_url("paged.bin"))
            .env("NAME", "paged.bin")
            .env("SEED_NAME", "page-seed.bin")
            .env("SHOT", &shot),
        Duration::from_secs(240),
    );
    let text = stdout(&o);
    assert!(
        o.status.success() && text.lines().last() == Some("page ok"),
        "{text}\n{}\ndaemon:\n{}",
        stderr(&o),
        d.proc.log_text()
    );
    assert!(shot.is_file(), "no screenshot");
}

/// A download's own options through the API: a rate limit holds while it runs and can be
/// lifted mid-run; the file selection of a multi-file torrent can be widened mid-run (the run
/// restarts from what is verified, nothing fetched twice), and only the chosen files are
/// written. Bad values are one-line 400s; a completed download cannot change its files.
#[test]
fn a_downloads_rate_and_files_change_while_it_runs() {
    let tracker = Tracker::start();
    let base = tempfile::tempdir().unwrap();
    let set = base.path().join("set");
    std::fs::create_dir_all(&set).unwrap();
    make_file(&set.join("a.bin"), 6 * MIB + MIB / 2, 51);
    make_file(&set.join("b.bin"), 12 * MIB + MIB / 4, 52);
    make_file(&set.join("c.bin"), 3 * MIB + 3 * MIB / 4, 53);
    let (tor, _ih, seeder) = aria2_swarm(&set, &tracker, 18, &[]);
    let node = Chiral::new();
    let d = Daemon::start(&node);
    let out = node.data_dir.path().join("out");
    let add = json!({ "identifiers": [tor], "out_dir": out, "backend": "bittorrent",
                      "file_selection": "1", "max_download_rate": "1M" });
    let (status, v) = d.api("POST", "/api/v1/downloads", Some(&add));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["max_download_rate"], MIB, "{v}");
    assert_eq!(v["file_selection"], "1", "{v}");

    // At 1 MiB/s, the first file (6.5 MiB) is still under way after the first MiB or two.
    let mut first = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            first = d.download(&id);
            first["bytes_done"].as_u64().unwrap_or(0) > 0
        }),
        "no progress: {first}\n{}",
        d.proc.log_text()
    );
    let t0 = std::time::Instant::now();
    let done0 = first["bytes_done"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let now = d.download(&id);
    let moved = now["bytes_done"].as_u64().unwrap().saturating_sub(done0);
    let allowed = (t0.elapsed().as_secs_f64() * MIB as f64) as u64 + 2 * MIB;
    assert!(moved <= allowed, "{moved} bytes in {:?} under a 1 MiB/s limit: {now}", t0.elapsed());
    assert_eq!(now["state"], "running", "{now}");

    // Bad values: one line each, nothing changed.
    for bad in [json!({ "max_download_rate": "fast" }), json!({ "file_selection": "0" }), json!({ "colour": 1 })] {
        let (status, v) = d.api("PATCH", &format!("/api/v1/downloads/{id}"), Some(&bad));
        assert_eq!(status, 400, "{bad} -> {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.contains('\n')), "{v}");
    }

    // Lift the limit and add the third file, mid-run.
    let (status, v) = d.api(
        "PATCH",
        &format!("/api/v1/downloads/{id}"),
        Some(&json!({ "max_download_rate": null, "file_selection": "1,3" })),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["max_download_rate"], Value::Null, "{v}");
    assert_eq!(v["file_selection"], "1,3", "{v}");
    let done = d.wait_state(&id, "completed", Duration::from_secs(120));
    // The new run started from what the first one had verified.
    assert!(done["bytes_resumed"].as_u64().unwrap_or(0) >= done0, "{done}");
    for f in ["a.bin", "c.bin"] {
        assert_eq!(sha256_file(&out.join("set").join(f)), sha256_file(&set.join(f)), "{f}");
    }
    let left: Vec<String> = std::fs::read_dir(out.join("set"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.contains("b.bin")), "the unchosen file left something: {left:?}");
    let (status, v) = d.api("PATCH", &format!("/api/v1/downloads/{id}"), Some(&json!({ "file_selection": "1-3" })));
    assert_eq!(status, 409, "{v}");
    drop(seeder);
}

/// A raw `GET` of `path` with extra header lines; the status, the headers (lower-case names)
/// and exactly `Content-Length` bytes of body.
fn get_bytes(port: u16, path: &str, extra: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).expect("read the head"),
            1,
            "closed in the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("the whole body");
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

/// A torrent's file is played through the daemon while it downloads: a player's `Range` from
/// three quarters in gets verified bytes from there before the pieces before it (the engine
/// fetches under the reader's cursor first: without that, the download would be complete when
/// the stream ends), then the whole file from the start, then a range of the finished file;
/// the token may be given as `?token=` (players send no header).
#[test]
fn a_torrent_streams_while_it_downloads_from_where_the_player_reads() {
    let tracker = Tracker::start();
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("movie.mp4");
    make_file(&file, 12 * MIB, 61);
    let want = std::fs::read(&file).unwrap();
    let (tor, _ih, seeder) = aria2_swarm(&file, &tracker, 18, &[]);
    let node = Chiral::new();
    let d = Daemon::start(&node);
    let out = node.data_dir.path().join("out");
    let add = json!({ "identifiers": [tor], "out_dir": out, "backend": "bittorrent", "max_download_rate": "2M" });
    let (status, v) = d.api("POST", "/api/v1/downloads", Some(&add));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    d.wait_state(&id, "running", Duration::from_secs(30));

    let stream = format!("/api/v1/downloads/{id}/stream");
    let (status, _, _) = get_bytes(d.port, &stream, "");
    assert_eq!(status, 401, "no token, no stream");
    let from = 9 * MIB;
    let auth = format!("Authorization: Bearer {}\r\n", d.token);
    let (status, h, body) = get_bytes(d.port, &stream, &format!("{auth}Range: bytes={from}-\r\n"));
    assert_eq!(status, 206, "{h:?}");
    assert_eq!(header(&h, "content-range"), format!("bytes {from}-{}/{}", 12 * MIB - 1, 12 * MIB));
    assert_eq!(header(&h, "content-type"), "video/mp4");
    assert!(body == want[from as usize..], "the streamed bytes differ from the file");
    let after = d.download(&id);
    assert_eq!(after["state"], "running", "the stream ended only with the download: {after}");
    assert!(after["bytes_done"].as_u64().unwrap() < 12 * MIB, "{after}");

    // From the start, the token in the query (as a player is given it): the whole file.
    let (status, h, body) = get_bytes(d.port, &format!("{stream}?token={}", d.token), "");
    assert_eq!(status, 200, "{h:?}");
    assert!(body == want, "the whole stream differs from the file");
    d.wait_state(&id, "completed", Duration::from_secs(60));
    let (status, h, body) = get_bytes(d.port, &stream, &format!("{auth}Range: bytes=100-199\r\n"));
    assert_eq!((status, header(&h, "content-range")), (206, "bytes 100-199/12582912"));
    assert!(body == want[100..200]);
    let (status, _, _) = get_bytes(d.port, &stream, &format!("{auth}Range: bytes={}-\r\n", 13 * MIB));
    assert_eq!(status, 416);
    let (status, _, _) = get_bytes(d.port, &format!("{stream}?file=3"), &auth);
    assert_eq!(status, 404);
    drop(seeder);
}

/// `?file=N` numbers every file of the content, chosen or not, the same while the download runs
/// and after it finished: with only the second of three files chosen, file 1 streams it and
/// file 0 is refused, before and after completion.
#[test]
fn stream_file_numbers_stay_the_same_once_a_download_with_chosen_files_finishes() {
    let tracker = Tracker::start();
    let base = tempfile::tempdir().unwrap();
    let set = base.path().join("show");
    for (i, (name, size)) in [("e1.mkv", 2 * MIB), ("e2.mkv", 3 * MIB), ("e3.mkv", 2 * MIB)].into_iter().enumerate() {
        make_file(&set.join(name), size, 90 + i as u64);
    }
    let want = std::fs::read(set.join("e2.mkv")).unwrap();
    let (tor, _ih, seeder) = aria2_swarm(&set, &tracker, 18, &[]);
    let node = Chiral::new();
    let d = Daemon::start(&node);
    let out = node.data_dir.path().join("out");
    let add = json!({ "identifiers": [tor], "out_dir": out, "backend": "bittorrent", "file_selection": "2",
                      "max_download_rate": "1M" });
    let (status, v) = d.api("POST", "/api/v1/downloads", Some(&add));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    d.wait_state(&id, "running", Duration::from_secs(30));
    let auth = format!("Authorization: Bearer {}\r\n", d.token);
    let stream = format!("/api/v1/downloads/{id}/stream");
    let check = |when: &str| {
        let (status, h, body) = get_bytes(d.port, &format!("{stream}?file=1"), &auth);
        assert_eq!(status, 200, "{when}: {h:?}");
        assert!(body == want, "{when}: file 1 is not the chosen episode");
        let (status, _, _) = get_bytes(d.port, &format!("{stream}?file=0"), &auth);
        assert_eq!(status, 409, "{when}: file 0 is not chosen");
    };
    check("running");
    d.wait_state(&id, "completed", Duration::from_secs(60));
    check("completed");
    drop(seeder);
}

/// A seed added through the API with its own `max_upload_rate` holds it (and shows it); a bad
/// value is a one-line 400.
#[test]
fn a_seed_added_with_its_own_upload_rate_holds_it() {
    let node = Chiral::new();
    let d = Daemon::start(&node);
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("slow-seed.bin");
    make_file(&f, 12 * MIB, 45);
    let (status, v) =
        d.api("POST", "/api/v1/seeds", Some(&json!({ "path": f, "via": ["http"], "max_upload_rate": "fast" })));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("max_upload_rate") && !e.contains('\n')), "{v}");
    let (status, v) =
        d.api("POST", "/api/v1/seeds", Some(&json!({ "path": f, "via": ["http"], "max_upload_rate": "4M" })));
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["max_upload_rate"], 4 * MIB, "{v}");
    let url = v["identifiers"][0].as_str().unwrap().to_string();
    let out = files.path().join("got.bin");
    let t0 = std::time::Instant::now();
    let curl = require("curl", "curl");
    let o = run_with_timeout(
        std::process::Command::new(curl).args(["-sSf", "-o"]).arg(&out).arg(&url),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "curl {url}: {}", stderr(&o));
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(sha256_file(&out), sha256_file(&f));
    assert!(secs >= 2.0, "12 MiB in {secs:.2} s from a seed limited to 4 MiB/s");
}

/// A small deterministic generator for the kill points (seeded from the clock; the seed is
/// printed so a failing run can be replayed with CHIRAL_SOAK_SEED).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

/// Bytes a `.chiral-resume` file vouches for (0 when there is none).
fn resumable_bytes(state: &Path) -> u64 {
    let Some(st) = chiral_sdk::resume::ResumeState::load(state) else { return 0 };
    let count = st.length.div_ceil(st.piece_length.max(1));
    let Some(done) = st.done_pieces(count as u32) else { return 0 };
    done.iter()
        .enumerate()
        .filter(|(_, d)| **d)
        .map(|(i, _)| st.piece_length.min(st.length - i as u64 * st.piece_length))
        .sum()
}

/// Crash safety under load: 50 downloads in one daemon, each from two nginx servers, the
/// daemon `kill -9`ed ten times at random points of the progress. Every file ends complete
/// and correct with nothing else left in its folder, and after every restart each download
/// resumes from at least what its resume file vouched for when the daemon died (no verified
/// piece is fetched again).
#[test]
fn fifty_downloads_survive_ten_kill_9s() {
    const FILES: usize = 50;
    const KILLS: u64 = 10;
    let seed = std::env::var("CHIRAL_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("soak seed {seed} (CHIRAL_SOAK_SEED={seed} replays the kill points)");
    let mut rng = Lcg(seed);
    let node = Chiral::new();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut total = 0;
    let mut wants = Vec::new();
    for i in 0..FILES {
        let f = src.path().join(format!("soak-{i:02}.bin"));
        let size = 4 * MIB + 4099 * i as u64;
        make_file(&f, size, 100 + i as u64);
        total += size;
        wants.push((format!("soak-{i:02}.bin"), size, sha256_file(&f)));
    }
    let (a, b) = (Nginx::start(src.path()), Nginx::start(src.path()));
    let start = |node: &Chiral| {
        let (proc, rx) = spawn_printing(node, "daemon", &["--http", "127.0.0.1:0", "--max-active", "10"]);
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the daemon printed its URL");
        let rest = line.strip_prefix("http://127.0.0.1:").unwrap_or_else(|| panic!("first line {line:?}"));
        let (port, token) = rest.split_once("/#token=").unwrap_or_else(|| panic!("first line {line:?}"));
        Daemon { port: port.parse().expect("port"), token: token.to_string(), proc }
    };
    let mut d = start(&node);
    let mut ids = Vec::new();
    for (i, (name, _, _)) in wants.iter().enumerate() {
        ids.push(d.add(&out.path().join(format!("{i:02}")), &[&a.paced_url(name), &b.paced_url(name)]));
    }
    let list = |d: &Daemon| d.get("/api/v1/downloads")["downloads"].as_array().cloned().unwrap_or_default();
    let done_bytes = |rows: &[Value]| rows.iter().map(|r| r["bytes_done"].as_u64().unwrap_or(0)).sum::<u64>();
    // Per download: what its resume file vouched for at the last kill, until a run of the
    // restarted daemon shows what it resumed from.
    let mut owed: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut checked = 0;
    let mut check_resumed = |rows: &[Value], owed: &mut std::collections::HashMap<String, u64>| {
        for r in rows {
            let id = r["id"].as_str().unwrap_or_default();
            if let (Some(want), Some(got)) = (owed.get(id).copied(), r["bytes_resumed"].as_u64()) {
                assert!(got >= want, "download {id} resumed from {got} bytes; its resume file vouched for {want}: {r}");
                owed.remove(id);
                checked += 1;
            }
        }
    };
    let t0 = std::time::Instant::now();
    for k in 1..=KILLS {
        let goal = total * k / (KILLS + 1);
        assert!(
            wait_until(Duration::from_secs(120), || {
                let rows = list(&d);
                check_resumed(&rows, &mut owed);
                done_bytes(&rows) >= goal
            }),
            "kill {k}: progress stalled below {goal} of {total} bytes\n{}",
            d.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(rng.next(400)));
        let Daemon { mut proc, .. } = d;
        proc.child.kill().expect("kill -9");
        proc.child.wait().expect("wait");
        drop(proc);
        for (i, (name, _, _)) in wants.iter().enumerate() {
            let state = out.path().join(format!("{i:02}/{name}.chiral-resume"));
            let vouched = resumable_bytes(&state);
            if vouched > 0 {
                let e = owed.entry(ids[i].clone()).or_insert(0);
                *e = (*e).max(vouched);
            }
        }
        d = start(&node);
    }
    assert!(
        wait_until(Duration::from_secs(240), || {
            let rows = list(&d);
            check_resumed(&rows, &mut owed);
            rows.iter().all(|r| r["state"] == "completed")
        }),
        "not every download completed after the kills: {:?}\n{}",
        list(&d).iter().filter(|r| r["state"] != "completed").map(|r| r["id"].clone()).collect::<Vec<_>>(),
        d.proc.log_text()
    );
    let elapsed = t0.elapsed();
    assert!(owed.is_empty(), "downloads whose resumed bytes were never shown: {owed:?}");
    for (i, (name, _, want)) in wants.iter().enumerate() {
        let dir = out.path().join(format!("{i:02}"));
        let left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, vec![name.clone()], "{}: only the finished file is left", dir.display());
        assert_eq!(&sha256_file(&dir.join(name)), want, "{name}");
    }
    let served = a.paced_bytes_sent() + b.paced_bytes_sent();
    println!(
        "soak: {FILES} downloads ({total} bytes) through {KILLS} kill -9s in {:.1} s; {checked} resumptions checked; the servers sent {served} bytes ({:.3} of the content)",
        elapsed.as_secs_f64(),
        served as f64 / total as f64
    );
}
