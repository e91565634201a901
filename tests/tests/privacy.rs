//! Privacy and transfer controls end to end: every connection through a real SOCKS5 proxy
//! (microsocks, binding its outgoing side to 127.0.0.9 so the servers tell a proxied
//! connection from a direct one), protocol encryption against aria2 requiring RC4 both ways,
//! `--files`, `--max-download-rate`.
//!
//! Needs: microsocks, aria2, nginx, transmission-cli (transmission-show), mktorrent, and the
//! pure-ftpd that tests/install-deps.sh unpacks.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chiral_tests::{bt::*, *};

const MIB: u64 = 1 << 20;

/// A port nothing listens on: a proxy there refuses every connection.
fn dead_port() -> u16 {
    free_port()
}

fn get_via(node: &Chiral, proxy: &str, id: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--proxy", proxy, "get", id, "-o", out.to_str().unwrap()];
    args.extend(extra);
    run_with_timeout(node.cmd().args(&args), Duration::from_secs(180))
}

#[test]
fn an_unusable_proxy_is_an_error_and_a_password_never_shows() {
    let node = Chiral::new();
    let o = node.run(&["--proxy", "socks4://127.0.0.1:1080", "plugins"]);
    assert!(!o.status.success(), "a socks4 proxy was accepted");
    assert!(stderr(&o).contains("socks4"), "{}", stderr(&o));
    let o = node.run(&["--proxy", "socks5h://user:s3cret@127.0.0.1:1080", "plugins"]);
    assert!(o.status.success(), "{}", last_error_line(&o));
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(text.contains("proxy: socks5h://user:***@127.0.0.1:1080"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn ftp_control_and_data_go_through_the_proxy_and_never_around_it() {
    let (_proxy, sp) = microsocks();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    make_file(&root.join("f.bin"), 6 * MIB, 31);
    let want = sha256_file(&root.join("f.bin"));
    let ftp = PureFtpd::start(&root, "alice", "pw-alice");
    let node = Chiral::new();
    let out = dir.path().join("out");
    let url = ftp.url_with("pw-alice", "f.bin");
    let o = get_via(&node, &format!("socks5h://127.0.0.1:{sp}"), &url, &out, &[]);
    assert!(o.status.success(), "ftp through the proxy: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("f.bin")), want);
    // A proxy that refuses everything: the download fails instead of going direct.
    let out2 = dir.path().join("out2");
    let o = get_via(&node, &format!("socks5h://127.0.0.1:{}", dead_port()), &url, &out2, &[]);
    assert!(!o.status.success(), "ftp went around a dead proxy");
}

#[test]
fn bittorrent_tracker_and_peers_go_through_the_proxy() {
    let (_proxy, sp) = microsocks();
    let tracker = Tracker::start();
    let f = fixture("px.bin", 8 * MIB, 32);
    let (tor, ih, seeder) = aria2_swarm(&f.file, &tracker, 18, &[]);
    let port = seeder_port(&tracker, &ih);
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o =
        get_via(&node, &format!("socks5h://127.0.0.1:{sp}"), tor.to_str().unwrap(), &out, &["--backend", "bittorrent"]);
    assert!(o.status.success(), "bittorrent through the proxy: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("px.bin")), f.sha);
    // The tracker saw chiral's announce from the proxy's side only.
    let seen = tracker.announces();
    assert!(seen.iter().any(|(ip, _)| ip == "127.0.0.9"), "no announce came through the proxy: {seen:?}");
    assert!(seen.iter().all(|(ip, p)| ip == "127.0.0.9" || *p == port), "a direct announce: {seen:?}");
    // And with a dead proxy nothing is fetched: within 10 s it has failed or is still waiting,
    // with no byte of the file on disk.
    let out2 = node.data_dir.path().join("out2");
    let dead = format!("socks5h://127.0.0.1:{}", dead_port());
    let mut child = node
        .cmd()
        .args(["--proxy", &dead, "get", tor.to_str().unwrap(), "-o", out2.to_str().unwrap(), "--backend", "bittorrent"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.is_none_or(|s| !s.success()), "bittorrent went around a dead proxy");
    assert!(!out2.join("px.bin").exists(), "bittorrent went around a dead proxy");
    drop(seeder);
}

/// The rqbit backend through a real SOCKS5 proxy: its tracker announce and peer connections go
/// through microsocks (the tracker sees the proxy's side only), the torrent's UDP tracker gets
/// no datagram (dropped, with a warning), the file is intact; an HTTP CONNECT proxy is refused
/// in one line (librqbit speaks SOCKS5 only).
#[test]
fn rqbit_goes_through_the_proxy_and_never_around_it() {
    let (_proxy, sp) = microsocks();
    let tracker = Tracker::start();
    let f = fixture("rq.bin", 8 * MIB, 33);
    let (tor, ih, seeder) = aria2_swarm(&f.file, &tracker, 18, &[]);
    let port = seeder_port(&tracker, &ih);
    // The same content with a UDP tracker first: a trap that counts datagrams.
    let trap = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let udp = format!("udp://127.0.0.1:{}/announce", trap.local_addr().unwrap().port());
    let tor2 = f.dir.path().join("rq-udp.torrent");
    let o = std::process::Command::new(require("mktorrent", "mktorrent"))
        .args(["-a", &udp, "-a", &tracker.url(), "-l", "18", "-o"])
        .arg(&tor2)
        .arg(&f.file)
        .output()
        .unwrap();
    assert!(o.status.success(), "mktorrent: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(info_hash_of(&tor2), ih, "same content, same info hash");

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = get_via(&node, &format!("socks5h://127.0.0.1:{sp}"), tor2.to_str().unwrap(), &out, &["--backend", "rqbit"]);
    assert!(o.status.success(), "rqbit through the proxy: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("rq.bin")), f.sha);
    assert!(stderr(&o).contains("UDP tracker(s) skipped"), "{}", stderr(&o));
    let seen = tracker.announces();
    assert!(seen.iter().any(|(ip, _)| ip == "127.0.0.9"), "no announce came through the proxy: {seen:?}");
    assert!(seen.iter().all(|(ip, p)| ip == "127.0.0.9" || *p == port), "a direct announce: {seen:?}");
    let mut buf = [0u8; 2048];
    assert!(trap.recv_from(&mut buf).is_err(), "the UDP tracker got a datagram around the proxy");

    let http_proxy = format!("http://127.0.0.1:{sp}");
    let o =
        get_via(&node, &http_proxy, tor.to_str().unwrap(), &node.data_dir.path().join("o3"), &["--backend", "rqbit"]);
    assert!(!o.status.success());
    assert!(last_error_line(&o).contains("SOCKS5"), "{}", last_error_line(&o));
    drop(seeder);
}

#[test]
fn max_download_rate_holds_an_http_download() {
    let dir = tempfile::tempdir().unwrap();
    make_file(&dir.path().join("r.bin"), 24 * MIB, 33);
    let want = sha256_file(&dir.path().join("r.bin"));
    let nginx = Nginx::start(dir.path());
    let node = Chiral::new();
    let out = dir.path().join("out");
    let t0 = Instant::now();
    let o = node.run(&["get", &nginx.url("r.bin"), "-o", out.to_str().unwrap(), "--max-download-rate", "8M"]);
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("r.bin")), want);
    // 24 MiB at 8 MiB/s: 3 s, less the first piece that goes at once.
    assert!((2.5..5.0).contains(&secs), "24 MiB at --max-download-rate 8M took {secs:.2}s");
    let o = node.run(&["get", &nginx.url("r.bin"), "-o", out.to_str().unwrap(), "--max-download-rate", "fast"]);
    assert!(!o.status.success(), "a rate that is not a size was accepted");
}

#[test]
fn files_one_and_three_of_a_three_file_torrent() {
    let tracker = Tracker::start();
    let base = tempfile::tempdir().unwrap();
    let set = base.path().join("set");
    std::fs::create_dir_all(&set).unwrap();
    make_file(&set.join("a.bin"), 5 * MIB + MIB / 2, 41);
    make_file(&set.join("b.bin"), 20 * MIB + MIB / 4, 42);
    make_file(&set.join("c.bin"), 6 * MIB + 3 * MIB / 4, 43);
    let (tor, _ih, seeder) = aria2_swarm(&set, &tracker, 20, &[]);
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = node.run(&[
        "get",
        tor.to_str().unwrap(),
        "--files",
        "1,3",
        "-o",
        out.to_str().unwrap(),
        "--backend",
        "bittorrent",
    ]);
    assert!(o.status.success(), "{}", last_error_line(&o));
    for f in ["a.bin", "c.bin"] {
        assert_eq!(sha256_file(&out.join("set").join(f)), sha256_file(&set.join(f)), "{f}");
    }
    assert!(
        std::fs::read_dir(out.join("set"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("b.bin")),
        "the unchosen file left something on disk"
    );
    let o = node.run(&["get", tor.to_str().unwrap(), "--files", "4", "-o", out.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("3 files"), "{}", stderr(&o));
    drop(seeder);
}

/// aria2c options that make it require RC4 (MSE), whichever end dials.
const RC4: &[&str] = &["--bt-require-crypto=true", "--bt-min-crypto-level=arc4", "--bt-tracker-interval=2"];

/// The port the aria2 seeder announced (the only peer the tracker lists so far).
fn seeder_port(tracker: &Tracker, ih: &[u8]) -> u16 {
    tracker.ports(ih)[0]
}

#[test]
fn mse_with_aria2_requiring_rc4_both_ways() {
    let tracker = Tracker::start();
    let f = fixture("mse.bin", 8 * MIB, 44);
    // aria2 seeds requiring RC4: chiral dials it (chiral starts MSE).
    let (tor, _ih, seeder) = aria2_swarm(&f.file, &tracker, 18, RC4);
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = node.run(&["get", tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "--backend", "bittorrent"]);
    assert!(o.status.success(), "from aria2 requiring RC4: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("mse.bin")), f.sha);
    drop(seeder);

    // chiral seeds with encryption required; aria2 requiring RC4 dials it (chiral answers MSE).
    let before = tracker.announces().len();
    let seeder = Chiral::new();
    std::fs::write(
        seeder.data_dir.path().join("config/chiral/config.toml"),
        "no_dht = true\n[plugins.bittorrent]\nencryption = \"require\"\n",
    )
    .unwrap();
    let (seed, _ids) = start_seed(
        &seeder,
        &[f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url(), "--listen", "127.0.0.1"],
        1,
    );
    let announced = || tracker.announces().len() > before;
    assert!(wait_until(Duration::from_secs(30), announced), "chiral seed never announced");
    let (ok, log) = aria2_get_with(tor.to_str().unwrap(), &f.dir.path().join("a2"), Duration::from_secs(60), RC4);
    assert!(ok, "aria2 requiring RC4 could not download from chiral seed: {log}");
    assert_eq!(sha256_file(&f.dir.path().join("a2/mse.bin")), f.sha);
    drop(seed);
}
