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

/// Tells opentracker's UDP port that `port` on 127.0.0.1 seeds `info_hash` (BEP 15 connect and
/// announce): the seeder, aria2, is built without UDP trackers.
fn udp_announce_for(tracker_port: u16, info_hash: &[u8], port: u16) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.connect(("127.0.0.1", tracker_port)).unwrap();
    let mut req = 0x0417_2710_1980u64.to_be_bytes().to_vec();
    req.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
    s.send(&req).unwrap();
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).expect("opentracker answers connect");
    assert!(n >= 16 && buf[..8] == [0, 0, 0, 0, 0, 0, 0, 7], "connect reply {:?}", &buf[..n]);
    let mut a = buf[8..16].to_vec();
    a.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 8]);
    a.extend_from_slice(info_hash);
    a.extend_from_slice(b"-AR0001-seeder000000");
    a.extend_from_slice(&[0; 24]); // downloaded, left (a seeder), uploaded
    a.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 50]); // started, ip, key, numwant
    a.extend_from_slice(&port.to_be_bytes());
    // opentracker loads its whitelist on a thread of its own after it starts: until then it
    // answers an announce with no body.
    let mut last = Vec::new();
    let listed = wait_until(Duration::from_secs(10), || {
        s.send(&a).unwrap();
        let n = s.recv(&mut buf).expect("opentracker answers announce");
        last = buf[..n].to_vec();
        n >= 20 && buf[..8] == [0, 0, 0, 1, 0, 0, 0, 8]
    });
    assert!(listed, "announce reply {last:?}");
}

/// A UDP tracker through a proxy that relays UDP (Dante, SOCKS5 UDP ASSOCIATE): a torrent
/// whose only tracker is opentracker's UDP port downloads from an aria2 seeder listed there,
/// the announce and the peer connection both through Dante. Through microsocks, which relays no
/// UDP, the same tracker is skipped with a warning and nothing is found: so nothing was ever
/// sent to it directly.
#[test]
fn a_udp_tracker_is_asked_through_the_proxys_udp_relay() {
    let (_dante, dp) = dante();
    let f = fixture("udp.bin", 8 * MIB, 34);
    // The tracker's port goes into the torrent, whose info hash goes into the tracker's
    // whitelist: the info hash does not depend on the announce URL, so a first torrent names it.
    let tor = f.dir.path().join("udp.torrent");
    mktorrent(&f.file, &tor, "udp://127.0.0.1:1/announce", 18, false);
    let ih = info_hash_of(&tor);
    let (_tracker, udp_port) = opentracker(&[&ih]);
    std::fs::remove_file(&tor).unwrap();
    mktorrent(&f.file, &tor, &format!("udp://127.0.0.1:{udp_port}/announce"), 18, false);
    assert_eq!(info_hash_of(&tor), ih);
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &[]);
    assert!(wait_port(port, Duration::from_secs(30)), "aria2 did not listen: {}", seeder.log_text());
    udp_announce_for(udp_port, &ih, port);
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o =
        get_via(&node, &format!("socks5h://127.0.0.1:{dp}"), tor.to_str().unwrap(), &out, &["--backend", "bittorrent"]);
    assert!(o.status.success(), "through Dante: {}\naria2: {}", last_error_line(&o), seeder.log_text());
    assert_eq!(sha256_file(&out.join("udp.bin")), f.sha);

    let (_socks, sp) = microsocks();
    let out2 = node.data_dir.path().join("out2");
    let err = node.data_dir.path().join("micro.err");
    let mut child = node
        .cmd()
        .args(["--proxy", &format!("socks5h://127.0.0.1:{sp}"), "get", tor.to_str().unwrap(), "-o"])
        .arg(&out2)
        .args(["--backend", "bittorrent"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let warned = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&err).unwrap_or_default().contains("the proxy does not relay UDP")
    });
    std::thread::sleep(Duration::from_secs(3));
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "{}", std::fs::read_to_string(&err).unwrap_or_default());
    assert!(!out2.join("udp.bin").exists(), "a peer was found without the UDP tracker");
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

/// MSE/PE with Transmission requiring encryption, both ways: its daemon seeds to `chiral get`
/// (chiral dials and starts MSE, with `encryption = "require"` and with the default), and
/// transmission-cli requiring encryption downloads from `chiral seed` with
/// `encryption = "require"` (chiral answers MSE).
#[test]
fn mse_with_transmission_requiring_encryption_both_ways() {
    let tracker = Tracker::start();
    let f = fixture("tmse.bin", 8 * MIB, 46);
    let tor = f.dir.path().join("tmse.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    let seeder = TransmissionSeeder::start_requiring_encryption(&tor, f.dir.path(), port);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "transmission never announced");
    let node = Chiral::new();
    std::fs::write(
        node.data_dir.path().join("config/chiral/config.toml"),
        "no_dht = true\n[plugins.bittorrent]\nencryption = \"require\"\n",
    )
    .unwrap();
    let out = node.data_dir.path().join("out");
    let o = node.run(&["get", tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "--backend", "bittorrent"]);
    assert!(o.status.success(), "from Transmission requiring encryption: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("tmse.bin")), f.sha);
    // The default (`allow`): Transmission drops the plain handshake, the second dial is MSE
    // and gets RC4.
    let plain = Chiral::new();
    let out = plain.data_dir.path().join("out");
    let o = plain.run(&["get", tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "--backend", "bittorrent"]);
    assert!(o.status.success(), "default settings, from Transmission requiring encryption: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("tmse.bin")), f.sha);
    drop(seeder);

    let (seed, _ids) = start_seed(
        &node,
        &[f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url(), "--listen", "127.0.0.1"],
        1,
    );
    let leecher = TransmissionLeecher::start_requiring_encryption(&tor, &tracker, &ih);
    leecher.wait_done(&seed);
    assert_eq!(sha256_file(&find_file(&leecher.out, "tmse.bin").expect("transmission wrote it")), f.sha);
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
