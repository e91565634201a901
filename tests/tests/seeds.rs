//! The seeding lifecycle across processes: `chiral seed` processes sharing a data dir, listed,
//! stopped and forgotten by `chiral seeds`, `stop` and `remove` through their control sockets
//! and `seeds.json`. Real processes, real sockets, curl as the downloader.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use chiral_tests::*;

const KIB: u64 = 1024;

/// Waits for a process to exit (it is expected to, on its own).
fn wait_exit(p: &mut Proc, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = p.child.try_wait().expect("wait") {
            return s;
        }
        assert!(t0.elapsed() < limit, "{} did not exit within {limit:?}; stderr:\n{}", p.name, p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_of(url: &str) -> u16 {
    let authority = url.split("://").nth(1).and_then(|r| r.split('/').next()).expect("authority");
    authority.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {url}"))
}

/// Fetches `url` with curl into `out` and checks it against `want` (sha256).
fn curl_matches(url: &str, out: &Path, want: &str) {
    let curl = require("curl", "curl");
    let o = run_with_timeout(Command::new(curl).args(["-sSf", "-o"]).arg(out).arg(url), Duration::from_secs(60));
    assert!(o.status.success(), "curl {url}: {}", stderr(&o));
    assert_eq!(sha256_file(out), want, "{url}");
}

fn seeds_json(node: &Chiral) -> Vec<serde_json::Value> {
    let o = node.run(&["seeds", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json_of(&o);
    assert_eq!(v["ok"], true, "{v}");
    v["seeds"].as_array().expect("seeds array").clone()
}

/// The row of `chiral seeds --json` listing `identifier`.
fn row<'a>(rows: &'a [serde_json::Value], identifier: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["identifiers"].as_array().is_some_and(|ids| ids.iter().any(|i| i == identifier)))
}

fn socket_of(node: &Chiral, p: &Proc) -> PathBuf {
    node.data_dir.path().join("run").join(format!("{}.sock", p.child.id()))
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().to_string_lossy().into_owned()
}

#[test]
fn two_seeds_listed_stopped_removed_and_a_killed_one_cleaned_up() {
    let node = Chiral::new();
    let files = tempfile::tempdir().unwrap();
    let (fa, fb) = (files.path().join("first.bin"), files.path().join("second.bin"));
    make_file(&fa, 300 * KIB + 7, 1);
    make_file(&fb, 500 * KIB + 3, 2);
    let (want_a, want_b) = (sha256_file(&fa), sha256_file(&fb));

    let (mut a, la) = start_seed(&node, &[fa.to_str().unwrap(), "--via", "http"], 1);
    let (mut b, lb) = start_seed(&node, &[fb.to_str().unwrap(), "--via", "http"], 1);
    let (url_a, url_b) = (la[0].clone(), lb[0].clone());
    assert!(url_a.starts_with("http://") && url_b.starts_with("http://"), "{url_a} {url_b}");
    assert_ne!(port_of(&url_a), port_of(&url_b), "two processes, two servers");

    // Both listed, running, with their URLs, processes and paths.
    let rows = seeds_json(&node);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (url, p, f) in [(&url_a, &a, &fa), (&url_b, &b, &fb)] {
        let r = row(&rows, url).unwrap_or_else(|| panic!("{url} not listed: {rows:?}"));
        assert_eq!(r["state"], "running");
        assert_eq!(r["plugin"], "http");
        assert_eq!(r["pid"], p.child.id());
        assert_eq!(r["path"], canonical(f));
        assert_eq!(r["via"], serde_json::json!(["http"]));
        assert_eq!(r["bytes_served"], 0);
    }

    // Each serves its file; the bytes served show up in the list.
    let out = tempfile::tempdir().unwrap();
    curl_matches(&url_a, &out.path().join("a"), &want_a);
    curl_matches(&url_b, &out.path().join("b"), &want_b);
    let rows = seeds_json(&node);
    assert_eq!(row(&rows, &url_a).unwrap()["bytes_served"], 300 * KIB + 7);

    // The text listing: one line per seed.
    let o = node.run(&["seeds"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().any(|l| l.starts_with("running") && l.contains(&url_a)), "{text}");

    // Stopped by its URL: the first process exits 0, its port refuses, the second serves on.
    let o = node.run(&["stop", &url_a, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json_of(&o);
    assert_eq!(v["ok"], true);
    assert_eq!(v["stopped"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["stopped"][0]["identifiers"][0], url_a.as_str());
    let status = wait_exit(&mut a, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", a.log_text());
    let refused = TcpStream::connect(("127.0.0.1", port_of(&url_a))).map(|_| ()).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!socket_of(&node, &a).exists(), "the socket goes with its process");
    curl_matches(&url_b, &out.path().join("b2"), &want_b);

    let rows = seeds_json(&node);
    assert_eq!(row(&rows, &url_a).unwrap()["state"], "stopped", "{rows:?}");
    assert_eq!(row(&rows, &url_b).unwrap()["state"], "running", "{rows:?}");

    // Stopping it again matches nothing running: one line, exit 1.
    let o = node.run(&["stop", &url_a]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim_end(), format!("chiral: no running seed matches {url_a}"));

    // Removed: forgotten, the file untouched.
    let o = node.run(&["remove", &url_a, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_of(&o)["removed"][0]["path"], canonical(&fa));
    let rows = seeds_json(&node);
    assert!(row(&rows, &url_a).is_none(), "{rows:?}");
    assert_eq!(rows.len(), 1);
    assert_eq!(sha256_file(&fa), want_a);

    // Killed without a chance to tidy up: its socket stays behind until someone looks.
    let sock_b = socket_of(&node, &b);
    assert!(sock_b.exists());
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    assert!(sock_b.exists(), "SIGKILL leaves the socket");
    let rows = seeds_json(&node);
    let r = row(&rows, &url_b).unwrap();
    assert_eq!(r["state"], "stopped", "{r}");
    assert!(r["bytes_served"].is_null() && r["pid"].is_null(), "{r}");
    assert!(!sock_b.exists(), "the stale socket is cleaned up by whoever finds it");
    let book: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.data_dir.path().join("seeds.json")).unwrap()).unwrap();
    assert_eq!(book["seeds"][0]["state"], "stopped", "{book}");

    // Nothing matches: exit 1 and one line, on stderr; with --json the same on stdout.
    let o = node.run(&["stop", "nothing-matches"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "chiral: no running seed matches nothing-matches\n");
    assert!(stdout(&o).is_empty());
    let o = node.run(&["stop", "nothing-matches", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_of(&o), serde_json::json!({ "ok": false, "error": "no running seed matches nothing-matches" }));
    let o = node.run(&["remove", "nothing-matches"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn one_process_two_plugins_stopped_by_id_then_by_path_and_served_again() {
    let node = Chiral::new();
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("both.bin");
    make_file(&f, 200 * KIB, 3);
    let want = sha256_file(&f);
    let (mut p, lines) = start_seed(&node, &[f.to_str().unwrap(), "--via", "http", "--via", "ftp"], 2);
    let http = lines.iter().find(|l| l.starts_with("http://")).expect("http URL").clone();
    let ftp = lines.iter().find(|l| l.starts_with("ftp://")).expect("ftp URL").clone();
    let rows = seeds_json(&node);
    let http_id = row(&rows, &http).unwrap()["id"].as_str().unwrap().to_string();

    // A malformed request to the live socket gets an error line; the process serves on.
    let mut s = UnixStream::connect(socket_of(&node, &p)).unwrap();
    s.write_all(b"{\"op\":\"explode\"}\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(v["answer"], "error", "{answer}");
    assert!(p.child.try_wait().unwrap().is_none());

    // Stopped by seed id: only the HTTP seed goes, the process keeps the FTP one.
    let o = node.run(&["stop", &http_id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    let rows = seeds_json(&node);
    assert_eq!(row(&rows, &http).unwrap()["state"], "stopped", "{rows:?}");
    assert_eq!(row(&rows, &ftp).unwrap()["state"], "running", "{rows:?}");
    assert!(p.child.try_wait().unwrap().is_none(), "one seed is left");
    curl_matches(&ftp, &files.path().join("via-ftp"), &want);

    // Stopped by path (relative, from another folder): the last seed, so the process exits 0.
    let o =
        run_with_timeout(node.cmd().current_dir(files.path()).args(["stop", "./both.bin"]), Duration::from_secs(60));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(wait_exit(&mut p, Duration::from_secs(30)).code(), Some(0), "{}", p.log_text());
    assert!(seeds_json(&node).iter().all(|r| r["state"] == "stopped"));

    // Served again with the same plugins: new URLs, both listed as running.
    let (mut again, lines) = spawn_seed_all(&node, 2);
    assert!(
        lines.iter().any(|l| l.starts_with("http://")) && lines.iter().any(|l| l.starts_with("ftp://")),
        "{lines:?}"
    );
    let rows = seeds_json(&node);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["state"] == "running" && r["pid"] == again.child.id()), "{rows:?}");
    let url = lines.iter().find(|l| l.starts_with("http://")).unwrap();
    curl_matches(url, &files.path().join("again"), &want);
    let o = node.run(&["seed", "--all"]);
    assert_eq!(o.status.code(), Some(1), "everything already runs");

    // SIGTERM: exits 0, its socket removed, its entry stopped.
    let sock = socket_of(&node, &again);
    let o =
        run_with_timeout(Command::new("kill").args(["-TERM", &again.child.id().to_string()]), Duration::from_secs(10));
    assert!(o.status.success());
    assert_eq!(wait_exit(&mut again, Duration::from_secs(30)).code(), Some(0), "{}", again.log_text());
    assert!(!sock.exists());
    assert!(seeds_json(&node).iter().all(|r| r["state"] == "stopped"));
    let o = node.run(&["remove", &canonical(&f)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(seeds_json(&node).is_empty());
    assert!(f.exists());
}

/// `chiral seed --all`, with the identifiers it printed first.
fn spawn_seed_all(node: &Chiral, expect_lines: usize) -> (Proc, Vec<String>) {
    let (proc, rx) = spawn_printing(node, "seed", &["--all"]);
    let mut lines = Vec::new();
    while lines.len() < expect_lines {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("chiral seed --all printed {lines:?} then nothing; stderr:\n{}", proc.log_text()),
        }
    }
    (proc, lines)
}

#[test]
fn a_corrupt_seed_list_is_set_aside_with_a_warning() {
    let node = Chiral::new();
    std::fs::write(node.data_dir.path().join("seeds.json"), "{ not json").unwrap();
    let o = node.run(&["seeds", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_of(&o)["seeds"], serde_json::json!([]));
    assert!(stderr(&o).contains("seeds.json"), "a warning names the file: {}", stderr(&o));

    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("c.bin");
    make_file(&f, 10 * KIB, 4);
    let (_p, lines) = start_seed(&node, &[f.to_str().unwrap(), "--via", "http"], 1);
    let rows = seeds_json(&node);
    assert_eq!(row(&rows, &lines[0]).unwrap()["state"], "running");
    assert_eq!(std::fs::read_to_string(node.data_dir.path().join("seeds.json.bad")).unwrap(), "{ not json");
}

#[test]
fn get_seed_keeps_serving_under_the_same_lifecycle() {
    let node = Chiral::new();
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("origin.bin");
    make_file(&f, 256 * KIB, 5);
    let want = sha256_file(&f);
    let (_origin, lines) = start_seed(&node, &[f.to_str().unwrap(), "--via", "http"], 1);
    let out_dir = files.path().join("out");
    let (mut getter, rx) = spawn_printing(&node, "get", &[&lines[0], "-o", out_dir.to_str().unwrap(), "--seed", "-q"]);
    let mut printed = Vec::new();
    while printed.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => printed.push(l),
            Err(_) => panic!("chiral get --seed printed {printed:?} then nothing; stderr:\n{}", getter.log_text()),
        }
    }
    let copy = out_dir.join("origin.bin");
    assert_eq!(sha256_file(&copy), want);
    let url = printed.iter().find(|l| l.starts_with("http://")).expect("a seed URL").clone();
    let rows = seeds_json(&node);
    let r = row(&rows, &url).unwrap_or_else(|| panic!("{url} not listed: {rows:?}"));
    assert_eq!((r["state"].as_str(), r["pid"].as_u64()), (Some("running"), Some(getter.child.id() as u64)));
    assert_eq!(r["path"], canonical(&copy));

    let o = node.run(&["stop", copy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(wait_exit(&mut getter, Duration::from_secs(30)).code(), Some(0), "{}", getter.log_text());
    let rows = seeds_json(&node);
    assert_eq!(row(&rows, &url).unwrap()["state"], "stopped");
    assert_eq!(row(&rows, &lines[0]).unwrap()["state"], "running", "the origin serves on");
}

#[test]
fn a_seeded_path_with_escapes_is_printed_escaped() {
    let node = Chiral::new();
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("evil\x1b[2J\nname\x1b]0;pwned\x07.bin");
    make_file(&f, 10 * KIB, 6);
    let (proc, lines) = start_seed(&node, &[f.to_str().unwrap(), "--via", "http"], 1);
    let o = node.run(&["seeds"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "raw escapes: {out:?}");
    assert_eq!(out.lines().count(), 1, "one seed, one line: {out:?}");
    assert!(out.contains("evil\\u{1b}[2J\\u{a}name"), "{out:?}");
    assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:?}");
    assert!(wait_until(Duration::from_secs(10), || proc.log_text().contains("seeding ")), "{}", proc.log_text());
    let log = proc.log_text();
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "raw escapes on stderr: {log:?}");
}

#[test]
fn an_idle_crowd_costs_the_seeder_at_most_its_connection_cap() {
    // The HTTP seed server holds 1,024 connections; 1,400 that never send a byte arrive, then
    // an honest client. The oldest idle ones are closed to make room, the seeder's open files
    // stay near the cap, and the client is served.
    const CAP: usize = 1024;
    const CROWD: usize = 1400;
    allow_open_files(CROWD as u64 + 256);
    let node = Chiral::new();
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("crowded.bin");
    make_file(&f, 2 * 1024 * KIB + 5, 9);
    let want = sha256_file(&f);
    let (seed, lines) = start_seed(&node, &[f.to_str().unwrap(), "--via", "http"], 1);
    let url = lines[0].split_whitespace().find(|w| w.starts_with("http://")).expect("an http URL").to_string();
    let port = port_of(&url);
    let pid = seed.child.id();
    let base = open_files(pid);

    let crowd = IdleCrowd::open(port, CROWD);
    let evicted_enough = wait_until(Duration::from_secs(60), || crowd.closed() >= CROWD - CAP);
    let now_open = open_files(pid);
    assert!(
        evicted_enough,
        "the seeder closed {} of {CROWD} idle connections (a cap of {CAP} closes at least {}); it has {now_open} files open",
        crowd.closed(),
        CROWD - CAP
    );
    assert!(now_open <= base + CAP + 8, "the seeder holds {now_open} open files (it had {base} before the crowd)");

    let out = files.path().join("got.bin");
    curl_matches(&url, &out, &want);
    drop(crowd);
}

/// `--max-upload-rate` holds for the HTTP, FTP and Chiral network seeders (the BitTorrent one
/// has its own test): 12 MiB at 4 MiB/s takes about three seconds whoever downloads it, where
/// loopback unlimited takes a fraction of one.
#[test]
fn max_upload_rate_holds_for_the_http_ftp_and_chiral_seeders() {
    const SIZE: u64 = 12 * 1024 * KIB;
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("paced.bin");
    make_file(&f, SIZE, 41);
    let want = sha256_file(&f);
    let node = Chiral::new();
    let (bootstrap, rx) = spawn_printing(&node, "node", &[]);
    let addr = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(30)).ok())
        .find(|l| l.starts_with("/ip4/") && l.contains("/p2p/"))
        .unwrap_or_else(|| panic!("chiral node printed no address: {}", bootstrap.log_text()));
    let seeder = Chiral::new();
    let mut seeds = Vec::new();
    let mut ids = Vec::new();
    for via in ["http", "ftp", "chiral"] {
        let args = [f.to_str().unwrap(), "--via", via, "--max-upload-rate", "4M", "--bootstrap", &addr];
        let (p, lines) = start_seed(&seeder, &args, 1);
        let id = lines[0].split_whitespace().find(|w| w.contains(':')).expect("an identifier").to_string();
        ids.push((via, id));
        seeds.push(p);
    }
    let curl = require("curl", "curl");
    for (via, id) in &ids {
        let out = files.path().join(format!("got-{via}.bin"));
        let t0 = Instant::now();
        if *via == "chiral" {
            let getter = Chiral::new();
            let dir = files.path().join("chiral-out");
            let o = getter.run(&["get", id, "--bootstrap", &addr, "-o", dir.to_str().unwrap()]);
            assert!(o.status.success(), "chiral get {id}: {}", stderr(&o));
            std::fs::rename(dir.join("paced.bin"), &out).unwrap();
        } else {
            let o =
                run_with_timeout(Command::new(&curl).args(["-sSf", "-o"]).arg(&out).arg(id), Duration::from_secs(60));
            assert!(o.status.success(), "curl {id}: {}", stderr(&o));
        }
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(sha256_file(&out), want, "{via}");
        // 12 MiB at 4 MiB/s: 3 s, less what may go before the bucket starts to count.
        assert!(secs >= 2.0, "{via}: 12 MiB in {secs:.2} s under --max-upload-rate 4M");
    }
    drop(seeds);
}

/// `--max-upload-rate` holds an upload to someone's FTP server too (`--option ftp_upload=`),
/// against a real pure-ftpd: 12 MiB at 4 MiB/s takes at least 2 s, and arrives intact.
#[test]
fn max_upload_rate_holds_an_ftp_upload() {
    use std::os::unix::fs::PermissionsExt as _;
    const SIZE: u64 = 12 * 1024 * KIB;
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("up.bin");
    make_file(&f, SIZE, 43);
    let want = sha256_file(&f);
    let root = tempfile::tempdir().unwrap();
    let server = PureFtpd::start(root.path(), "uploader", "pw7");
    // The virtual user writes as an unprivileged account.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let node = Chiral::new();
    let upload = format!("ftp_upload={}", server.url_with("pw7", ""));
    let t0 = Instant::now();
    let (_seed, lines) =
        start_seed(&node, &[f.to_str().unwrap(), "--via", "ftp", "--option", &upload, "--max-upload-rate", "4M"], 1);
    let secs = t0.elapsed().as_secs_f64();
    assert!(lines[0].contains(&format!("ftp://uploader@127.0.0.1:{}/up.bin", server.port)), "{lines:?}");
    assert_eq!(sha256_file(&root.path().join("up.bin")), want);
    // 12 MiB at 4 MiB/s: 3 s, less what may go before the bucket starts to count.
    assert!(secs >= 2.0, "12 MiB uploaded in {secs:.2} s under --max-upload-rate 4M");
}

/// A seed's own limit (`--option upload_rate=`), with no global one: the HTTP, FTP and
/// BitTorrent seeders each hold it (12 MiB at 4 MiB/s takes at least 2 s; curl for HTTP and FTP,
/// `chiral get` of the magnet for BitTorrent), and the file arrives intact.
#[test]
fn a_seeds_own_upload_rate_holds_for_http_ftp_and_bittorrent() {
    const SIZE: u64 = 12 * 1024 * KIB;
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("own.bin");
    make_file(&f, SIZE, 44);
    let want = sha256_file(&f);
    let seeder = Chiral::new();
    let curl = require("curl", "curl");
    for via in ["http", "ftp", "bittorrent"] {
        let (_seed, lines) = start_seed(&seeder, &[f.to_str().unwrap(), "--via", via, "--option", "upload_rate=4M"], 1);
        let id = lines
            .iter()
            .flat_map(|l| l.split_whitespace())
            .find(|w| w.contains("://") || w.starts_with("magnet:"))
            .unwrap_or_else(|| panic!("{via}: no identifier in {lines:?}"))
            .to_string();
        let out = files.path().join(format!("got-{via}"));
        let t0 = Instant::now();
        if via == "bittorrent" {
            let getter = Chiral::new();
            let o = getter.run(&["get", &id, "--backend", "bittorrent", "-o", out.to_str().unwrap()]);
            assert!(o.status.success(), "chiral get {id}: {}", stderr(&o));
            std::fs::rename(out.join("own.bin"), files.path().join("got-bt.bin")).unwrap();
            std::fs::remove_dir_all(&out).unwrap();
            std::fs::rename(files.path().join("got-bt.bin"), &out).unwrap();
        } else {
            let o =
                run_with_timeout(Command::new(&curl).args(["-sSf", "-o"]).arg(&out).arg(&id), Duration::from_secs(60));
            assert!(o.status.success(), "curl {id}: {}", stderr(&o));
        }
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(sha256_file(&out), want, "{via}");
        assert!(secs >= 2.0, "{via}: 12 MiB in {secs:.2} s under its seed's upload_rate=4M");
    }
}
