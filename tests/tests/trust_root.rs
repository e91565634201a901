//! The trust root end to end: what a download must equal comes from the identifiers the user
//! gave (a torrent's info hash), never from a mirror that answers first. The real `chiral`
//! against nginx serving lying bytes, aria2c seeding the genuine ones, our loopback tracker,
//! and a hostile HTTP server claiming a 10^17-byte file.
//!
//! Needs: nginx, aria2, mktorrent (Debian packages).

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use chiral_tests::{bt::*, *};

const MIB: u64 = 1 << 20;

/// `good` with one byte flipped in every MiB, under the same name in `dir`.
fn lying_copy(good: &Path, dir: &Path) -> std::path::PathBuf {
    let mut d = std::fs::read(good).unwrap();
    for i in (0..d.len()).step_by(MIB as usize) {
        d[i + 3] ^= 0xff;
    }
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(good.file_name().unwrap());
    std::fs::write(&p, d).unwrap();
    p
}

fn sources(o: &std::process::Output) -> Vec<serde_json::Value> {
    json_of(o)["download"]["sources"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_lying_mirror_listed_before_a_torrent_with_a_swarm_loses_and_the_torrent_s_bytes_are_written() {
    let tracker = Tracker::start();
    let f = fixture("lm.bin", 16 * MIB, 31);
    let tor = f.dir.path().join("lm.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &[]);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());
    let evil = tempfile::tempdir().unwrap();
    lying_copy(&f.file, evil.path());
    let nginx = Nginx::start(evil.path());

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = run_with_timeout(
        node.cmd().args(["get", &nginx.url("lm.bin"), tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json"]),
        Duration::from_secs(180),
    );
    assert!(o.status.success(), "chiral get failed: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("lm.bin")), f.sha, "the result must be the torrent's bytes");
    let v = json_of(&o);
    assert_eq!(v["download"]["verified"], true, "{v}");
    let srcs = sources(&o);
    let http = srcs.iter().find(|s| s["plugin"] == "http").expect("http source reported");
    assert!(http["dropped"].as_str().unwrap_or_default().contains("verification"), "{http}");
    drop(seeder);
}

#[test]
fn a_lying_mirror_beside_a_torrent_nobody_seeds_never_gives_exit_0() {
    let tracker = Tracker::start();
    let f = fixture("ns.bin", 8 * MIB, 32);
    let tor = f.dir.path().join("ns.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let evil = tempfile::tempdir().unwrap();
    lying_copy(&f.file, evil.path());
    let nginx = Nginx::start(evil.path());

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let mut child = node
        .cmd()
        .args(["get", &nginx.url("ns.bin"), tor.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The mirror is found out within seconds; the torrent then waits for peers that never
    // come. Either way the mirror's bytes must never become the result.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    if let Some(s) = status {
        assert!(!s.success(), "exit 0 without a single verified byte source: {err}");
        assert!(s.code().is_some_and(|c| c < 100), "chiral died: {s}: {err}");
    }
    assert!(!out.join("ns.bin").exists(), "a final file was written: {err}");
    assert!(err.contains("dropped source") && err.contains("verification"), "the liar was not named: {err}");
}

#[test]
fn hashes_that_arrive_late_are_adopted_and_the_mirror_s_bytes_checked_again() {
    // The mirror (listed first) has written everything before the magnet's metadata exists:
    // the seeder only starts seconds later.
    let tracker = Tracker::start();
    let f = fixture("late.bin", 16 * MIB, 33);
    let tor = f.dir.path().join("late.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let evil = tempfile::tempdir().unwrap();
    lying_copy(&f.file, evil.path());
    let nginx = Nginx::start(evil.path());
    let magnet = format!("magnet:?xt=urn:btih:{}&tr={}", hex::encode(&ih), tracker.url());

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let mut cmd = node.cmd();
    cmd.args([
        "get",
        &nginx.url("late.bin"),
        &magnet,
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--backend",
        "bittorrent",
    ]);
    let get = std::thread::spawn(move || run_with_timeout(&mut cmd, Duration::from_secs(240)));
    // Wait until the provisional download is on disk, then start the swarm.
    let part = out.join("late.bin.part");
    assert!(wait_until(Duration::from_secs(60), || part.exists()), "the mirror never started");
    std::thread::sleep(Duration::from_secs(2));
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &[]);
    let o = get.join().unwrap();
    assert!(o.status.success(), "chiral get failed: {} / seeder: {}", last_error_line(&o), seeder.log_text());
    assert_eq!(sha256_file(&out.join("late.bin")), f.sha);
    let v = json_of(&o);
    assert_eq!(v["download"]["verified"], true, "{v}");
    let srcs = sources(&o);
    let http = srcs.iter().find(|s| s["plugin"] == "http").expect("http source reported");
    assert!(http["dropped"].is_string(), "the liar was not dropped: {http}");
    let bt = srcs.iter().find(|s| s["plugin"] == "bittorrent").expect("bittorrent source reported");
    assert!(bt["bytes"].as_u64().unwrap() > 0, "{bt}");
}

#[test]
fn a_server_claiming_ten_to_the_seventeen_bytes_gets_a_one_line_error() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/100000000000000000\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
                );
            });
        }
    });
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let url = format!("http://127.0.0.1:{port}/huge.bin");
    let o =
        run_with_timeout(node.cmd().args(["-q", "get", &url, "-o", out.to_str().unwrap()]), Duration::from_secs(60));
    let err = stderr(&o);
    // A description that breaks the rules is data that does not verify (docs/cli.md, "Exit codes").
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.contains("piece"), "{err}");
}

#[test]
fn plain_urls_say_they_are_unverified() {
    let f = fixture("plain.bin", 2 * MIB, 34);
    let nginx = Nginx::start(f.dir.path());
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = run_with_timeout(
        node.cmd().args(["get", &nginx.url("plain.bin"), "-o", out.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", last_error_line(&o));
    assert!(stderr(&o).contains("unverified (no hashes and no --sha256)"), "{}", stderr(&o));
    let o = run_with_timeout(
        node.cmd().args(["get", &nginx.url("plain.bin"), "-o", out.to_str().unwrap(), "--json"]),
        Duration::from_secs(60),
    );
    assert_eq!(json_of(&o)["download"]["verified"], false);
}

/// A torrent's web seeds (BEP 19 `url-list`) join as sources of their own: shown in `--json`
/// with their bytes, each checked against the torrent's pieces — a lying one is dropped.
#[test]
fn a_torrent_s_web_seeds_are_sources_of_their_own_and_a_lying_one_is_dropped() {
    let tracker = Tracker::start();
    let f = fixture("ws.bin", 16 * MIB, 34);
    let good = Nginx::start(f.dir.path());
    let evil_dir = tempfile::tempdir().unwrap();
    lying_copy(&f.file, evil_dir.path());
    let evil = Nginx::start(evil_dir.path());
    let tor = f.dir.path().join("ws.torrent");
    let out = std::process::Command::new(require("mktorrent", "mktorrent"))
        .args(["-a", &tracker.url(), "-l", "18", "-w", &evil.url("ws.bin"), "-w", &good.url("ws.bin"), "-o"])
        .arg(&tor)
        .arg(&f.file)
        .output()
        .unwrap();
    assert!(out.status.success(), "mktorrent: {}", String::from_utf8_lossy(&out.stderr));

    let node = Chiral::new();
    let dl = node.data_dir.path().join("out");
    let o = run_with_timeout(
        node.cmd().args(["get", tor.to_str().unwrap(), "-o", dl.to_str().unwrap(), "--json"]),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "chiral get failed: {}", last_error_line(&o));
    assert_eq!(sha256_file(&dl.join("ws.bin")), f.sha);
    let srcs = sources(&o);
    let by_id = |u: String| srcs.iter().find(|s| s["identifier"] == u.as_str()).cloned();
    let g = by_id(good.url("ws.bin")).unwrap_or_else(|| panic!("the good web seed is no source: {srcs:?}"));
    assert_eq!(g["plugin"], "http", "{g}");
    assert!(g["bytes"].as_u64().unwrap() > 0, "{g}");
    assert!(g["dropped"].is_null(), "{g}");
    let e = by_id(evil.url("ws.bin")).unwrap_or_else(|| panic!("the lying web seed is no source: {srcs:?}"));
    assert!(e["dropped"].as_str().unwrap_or_default().contains("verification"), "{e}");
    assert_eq!(json_of(&o)["download"]["verified"], true);
}
