//! In-process tests through the same ABI adapters the host uses: the plugin's own seed server
//! feeding the plugin's own downloads, plus tiny raw-TCP servers for behaviour the seed server
//! never shows (ignored ranges, unknown lengths, short bodies, trickling).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use chiral_sdk::{
    abi_stable::std_types::{RResult, RString, RVec},
    testkit, DownloadOutcome, DownloadRequest, ErrorKind, Event, EventSinkBox, Events, HandlerBox, PluginError,
    SeedInfo, SeedRequest,
};
use futures::executor::block_on;

use crate::HttpPlugin;

fn handler(dir: &Path) -> HandlerBox {
    testkit::handler_for::<HttpPlugin>(testkit::config(dir)).expect("handler builds")
}

fn no_events() -> EventSinkBox {
    Events::sink_from_fn(|_| {})
}

use chiral_sdk::testkit::content;

fn seed(h: &HandlerBox, path: &Path) -> Result<SeedInfo, PluginError> {
    let req = SeedRequest { path: path.to_string_lossy().into_owned().into(), options: RVec::new() };
    block_on(h.seed(req, no_events())).into_result()
}

fn download(
    h: &HandlerBox,
    url: &str,
    out: &Path,
    connections: u32,
    sink: EventSinkBox,
) -> Result<DownloadOutcome, PluginError> {
    let req = DownloadRequest {
        identifier: url.into(),
        out_dir: out.to_string_lossy().into_owned().into(),
        connections,
        options: RVec::new(),
    };
    block_on(h.download(req, sink)).into_result()
}

fn assert_one_line(e: &PluginError) {
    assert!(!e.message.contains('\n') && !e.message.is_empty(), "{:?}", e.message);
}

#[test]
fn seed_then_download_round_trip_with_four_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(5 * 1024 * 1024 + 123);
    let src = dir.path().join("data file #1 ü.bin");
    std::fs::write(&src, &data).unwrap();
    let h = handler(dir.path());

    let info = seed(&h, &src).unwrap();
    let url = info.identifiers[0].to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with(&format!("/{}/data%20file%20%231%20%C3%BC.bin", info.id)), "{url}");
    assert_eq!(info.path.as_str(), src.to_str().unwrap());
    // Seeding the same file again is the same seed.
    assert_eq!(seed(&h, &src).unwrap().id, info.id);

    let progress = Arc::new(Mutex::new(Vec::new()));
    let p = progress.clone();
    let sink = Events::sink_from_fn(move |e| {
        if let Event::Progress { done, total, peers } = e {
            p.lock().unwrap().push((done, total, peers));
        }
    });
    let out = dir.path().join("out");
    let outcome = download(&h, &url, &out, 4, sink).unwrap();
    let saved = out.join("data file #1 ü.bin");
    assert_eq!(outcome.files.iter().map(|f| f.to_string()).collect::<Vec<_>>(), vec![saved.to_string_lossy()]);
    assert_eq!(std::fs::read(&saved).unwrap(), data);
    assert_eq!(outcome.bytes, data.len() as u64);
    assert_eq!(outcome.resumed_bytes, 0);
    assert_eq!(outcome.per_source.len(), 1);
    assert_eq!(outcome.per_source[0].bytes, data.len() as u64);
    assert!(url.starts_with(outcome.per_source[0].label.as_str()));
    let progress = progress.lock().unwrap();
    assert_eq!(progress.last().copied(), Some((data.len() as u64, data.len() as u64, 1)));

    let listed = h.list_seeds();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].bytes_served >= data.len() as u64, "{}", listed[0].bytes_served);

    // Downloading again finds the complete file and touches nothing.
    let again = download(&h, &url, &out, 4, no_events()).unwrap();
    assert_eq!(again.resumed_bytes, data.len() as u64);

    // Stopped: 404, reported in one line naming the URL.
    h.stop_seed(RString::from(info.id.as_str())).into_result().unwrap();
    assert!(h.list_seeds().is_empty());
    let e = download(&h, &url, &dir.path().join("out2"), 4, no_events()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(e.message.as_str(), format!("HTTP 404 Not Found: {url}"));
    assert!(!dir.path().join("out2").join("data file #1 ü.bin").exists());
    assert_eq!(h.stop_seed(RString::from(info.id.as_str())).into_result().unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn several_seeds_share_one_server_and_empty_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.bin");
    let empty = dir.path().join("empty");
    std::fs::write(&a, content(1000)).unwrap();
    std::fs::write(&empty, b"").unwrap();
    let h = handler(dir.path());
    let sa = seed(&h, &a).unwrap();
    let se = seed(&h, &empty).unwrap();
    assert_ne!(sa.id, se.id);
    let port = |s: &SeedInfo| s.identifiers[0].split('/').nth(2).unwrap().to_string();
    assert_eq!(port(&sa), port(&se));
    assert_eq!(
        h.list_seeds().iter().map(|s| s.id.to_string()).collect::<Vec<_>>(),
        vec![sa.id.to_string(), se.id.to_string()]
    );

    let out = dir.path().join("out");
    let o = download(&h, &se.identifiers[0], &out, 0, no_events()).unwrap();
    assert_eq!(o.bytes, 0);
    assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
}

#[test]
fn seed_refuses_missing_paths_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let e = seed(&h, &dir.path().join("nope")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_one_line(&e);
    let e = seed(&h, dir.path()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("not a regular file"), "{}", e.message);
}

#[test]
fn refused_connection_is_a_one_line_network_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let e = download(&h, "http://127.0.0.1:1/x", dir.path(), 2, no_events()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network);
    assert_eq!(e.message.as_str(), "connection refused: http://127.0.0.1:1/x");
    let e = match block_on(h.open_source("http://127.0.0.1:1/x".into(), no_events())) {
        RResult::ROk(_) => panic!("opened a refused URL"),
        RResult::RErr(e) => e,
    };
    assert_eq!(e.message.as_str(), "connection refused: http://127.0.0.1:1/x");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn unsupported_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let e = download(&h, "ftp://127.0.0.1/x", dir.path(), 2, no_events()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_one_line(&e);
}

/// The server side, request by request: ranges, HEAD, 416, 404, 405, `If-Range`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_server_speaks_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(700_000);
    let path = dir.path().join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let h = handler(dir.path());
    let req = SeedRequest { path: path.to_string_lossy().into_owned().into(), options: RVec::new() };
    let info = h.seed(req, no_events()).await.into_result().unwrap();
    let url = info.identifiers[0].to_string();
    let c = reqwest::Client::new();
    let len = data.len();

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert!(r.headers().contains_key("last-modified"));
    let last_modified = r.headers()["last-modified"].clone();
    assert_eq!(r.bytes().await.unwrap(), data);

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=10-", 10, len - 1),
        ("bytes=-10", len - 10, len - 1),
        ("bytes=5-99999999", 5, len - 1),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(r.headers()["content-range"], format!("bytes {start}-{end}/{len}").as_str());
        assert_eq!(r.bytes().await.unwrap(), &data[start..=end], "{range}");
    }

    let r = c.get(&url).header("range", format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], format!("bytes */{len}").as_str());

    // Garbage and multi-range: the whole body.
    for range in ["bytes=x-y", "bytes=0-1,5-6"] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 200, "{range}");
        assert_eq!(r.bytes().await.unwrap().len(), len);
    }

    // If-Range: our date keeps the range, another validator gets the whole body.
    let r = c.get(&url).header("range", "bytes=1-2").header("if-range", last_modified).send().await.unwrap();
    assert_eq!(r.status(), 206);
    let r = c.get(&url).header("range", "bytes=1-2").header("if-range", "\"etag\"").send().await.unwrap();
    assert_eq!(r.status(), 200);

    let base = url.rsplit_once('/').unwrap().0;
    for missing in [format!("{base}/other.bin"), format!("{base}/"), url.replace(&*info.id, "0000000000")] {
        assert_eq!(c.get(&missing).send().await.unwrap().status(), 404, "{missing}");
    }
    let r = c.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
}

/// A raw HTTP server: each connection gets the request head and the stream to answer on.
fn raw_server(answer: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                answer(&String::from_utf8_lossy(&head), &mut stream);
            });
        }
    });
    port
}

/// A server that ignores `Range`, optionally without `Content-Length`, optionally sending
/// fewer bytes than it announces.
fn no_range_server(body: Vec<u8>, announce_length: bool, cut: usize) -> u16 {
    raw_server(move |_, s| {
        let mut head = "HTTP/1.1 200 OK\r\nConnection: close\r\n".to_string();
        if announce_length {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body[..body.len() - cut]);
    })
}

#[test]
fn servers_ignoring_ranges_are_streamed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let data = content(300_000);
    for announce in [true, false] {
        let port = no_range_server(data.clone(), announce, 0);
        let out = dir.path().join(format!("out-{announce}"));
        let o = download(&h, &format!("http://127.0.0.1:{port}/dir/plain.txt?q=1"), &out, 4, no_events()).unwrap();
        assert_eq!(std::fs::read(out.join("plain.txt")).unwrap(), data);
        assert_eq!(o.bytes, data.len() as u64);
        assert_eq!(o.per_source[0].label.as_str(), format!("http://127.0.0.1:{port}/dir/plain.txt"));
        assert!(!out.join("plain.txt.part").exists());
    }
}

#[test]
fn short_stream_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let port = no_range_server(content(100_000), true, 1000);
    let out = dir.path().join("out");
    let e = download(&h, &format!("http://127.0.0.1:{port}/short.bin"), &out, 4, no_events()).unwrap_err();
    assert_one_line(&e);
    assert_eq!(e.kind, ErrorKind::Network, "{}", e.message);
    assert!(!out.join("short.bin").exists());
    assert!(!out.join("short.bin.part").exists());
}

#[test]
fn range_source_refuses_oversized_answers() {
    // Claims ranges, then answers every range with more bytes than were asked for.
    let port = raw_server(|_, s| {
        let body = [7u8; 20];
        let head = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/100\r\nContent-Length: 20\r\nConnection: close\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
    });
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let src = match block_on(h.open_source(format!("http://127.0.0.1:{port}/x").as_str().into(), no_events())) {
        RResult::ROk(s) => s,
        RResult::RErr(e) => panic!("{e}"),
    };
    let info = src.info();
    assert!(info.random_access && info.length_known);
    assert_eq!(info.length, 100);
    assert_eq!(info.name.as_str(), "x");
    let e = block_on(src.fetch(0, 1)).into_result().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{}", e.message);
    assert_one_line(&e);
}

#[test]
fn redirects_are_followed_and_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(2_000_000);
    let path = dir.path().join("target.bin");
    std::fs::write(&path, &data).unwrap();
    let h = handler(dir.path());
    let target = seed(&h, &path).unwrap().identifiers[0].to_string();
    let hits = Arc::new(Mutex::new(0u32));
    let counter = hits.clone();
    let port = raw_server(move |_, s| {
        *counter.lock().unwrap() += 1;
        let head =
            format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
    });
    let out = dir.path().join("out");
    download(&h, &format!("http://127.0.0.1:{port}/get/target.bin"), &out, 4, no_events()).unwrap();
    assert_eq!(std::fs::read(out.join("target.bin")).unwrap(), data);
    // Only the probe went through the redirect; every range went to the final URL.
    assert_eq!(*hits.lock().unwrap(), 1);
}

#[test]
fn conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.bin");
    std::fs::write(&good, content(100_000)).unwrap();
    let h = handler(dir.path());
    let good_url = seed(&h, &good).unwrap().identifiers[0].to_string();
    // Trickles a large body so a download is still running when the kit drops it.
    let slow = raw_server(|_, s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n");
        for _ in 0..200 {
            if s.write_all(&[0u8; 1024]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let out = dir.path().join("kit");
    testkit::Kit::new(handler(dir.path()))
        .good(&good_url)
        .slow(&format!("http://127.0.0.1:{slow}/slow.bin"))
        .out_dir(&out)
        .assert_all();
    // The cancelled stream left nothing (its task is aborted on the plugin's runtime, so give
    // that a moment), the good download its file.
    assert!(!out.join("slow.bin").exists());
    let t0 = std::time::Instant::now();
    while out.join("slow.bin.part").exists() && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!out.join("slow.bin.part").exists());
    assert!(out.join("good.bin").exists());
    drop(h);
}

#[test]
fn plain_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    testkit::Kit::new(handler(dir.path())).assert_all();
}

/// Throughput check against a real server (e.g. nginx on loopback), not run by default:
/// `CHIRAL_HTTP_BENCH_URL=http://127.0.0.1:8080/big.bin cargo test --release -p chiral-plugin-http
/// -- --ignored --nocapture bench`, or `CHIRAL_HTTP_BENCH_FILE=/path/big.bin` to seed that file
/// from this plugin's own server and download it from there. Optional `CHIRAL_HTTP_BENCH_OUT`
/// (default: a temp folder), `CHIRAL_HTTP_BENCH_CONNECTIONS` (default 8).
#[test]
#[ignore = "needs CHIRAL_HTTP_BENCH_URL or CHIRAL_HTTP_BENCH_FILE"]
fn bench_download_from_env() {
    let connections = std::env::var("CHIRAL_HTTP_BENCH_CONNECTIONS").ok().and_then(|c| c.parse().ok()).unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let out =
        std::env::var("CHIRAL_HTTP_BENCH_OUT").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().into());
    let out = tempfile::tempdir_in(out).unwrap();
    let h = handler(tmp.path());
    // A separate plugin instance serves, as another node would.
    let seeder = handler(tmp.path());
    let url = match (std::env::var("CHIRAL_HTTP_BENCH_URL"), std::env::var("CHIRAL_HTTP_BENCH_FILE")) {
        (Ok(url), _) => url,
        (_, Ok(file)) => seed(&seeder, Path::new(&file)).unwrap().identifiers[0].to_string(),
        _ => return,
    };

    // Network only: every piece fetched by `connections` parallel requests, then dropped.
    let src = match block_on(h.open_source(url.as_str().into(), no_events())) {
        RResult::ROk(s) => s,
        RResult::RErr(e) => panic!("{e}"),
    };
    let length = src.info().length;
    let piece = chiral_sdk::layout::Layout::for_byte_ranges(length).unwrap().piece_length;
    let t0 = std::time::Instant::now();
    let mut offsets = (0..length).step_by(piece as usize);
    block_on(async {
        use futures::StreamExt as _;
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            while running.len() < connections as usize {
                let Some(off) = offsets.next() else { break };
                running.push(src.fetch(off, piece.min(length - off)));
            }
            match running.next().await {
                Some(r) => assert!(r.is_ok()),
                None => break,
            }
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    println!("fetch only: {length} bytes in {secs:.2}s = {:.2} GB/s", length as f64 / secs / 1e9);

    // The whole download: fetch, write at offsets, resume bookkeeping, rename.
    let t0 = std::time::Instant::now();
    let o = download(&h, &url, out.path(), connections, no_events()).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!("download: {} bytes in {secs:.2}s = {:.2} GB/s", o.bytes, o.bytes as f64 / secs / 1e9);
}
