//! The native BitTorrent plugin end to end: the real `chiral` against real peers on loopback
//! (aria2c, transmission-daemon, transmission-cli, mktorrent), a tiny HTTP tracker of our own
//! (BEP 3/23, in this process), and scripted peers for what real clients never do (send bad
//! blocks, serve a torrent whose paths climb out of the folder).
//!
//! Needs: aria2, transmission-cli, transmission-daemon, mktorrent (Debian packages).

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chiral_tests::{bt::*, *};

const MIB: u64 = 1 << 20;
const BT: [&str; 2] = ["--backend", "bittorrent"];

// ---------------------------------------------------------------- chiral helpers

fn get(node: &Chiral, id: &str, out: &Path) -> std::process::Output {
    let mut args = vec!["get", id, "-o", out.to_str().unwrap(), "--json"];
    args.extend(BT);
    run_with_timeout(node.cmd().args(&args), Duration::from_secs(240))
}

fn assert_got(o: &std::process::Output, file: &Path, want: &str, what: &str) {
    assert!(o.status.success(), "{what}: chiral get failed: {}", last_error_line(o));
    assert_eq!(sha256_file(file), want, "{what}: sha256 differs");
}

// ---------------------------------------------------------------- tests

#[test]
fn torrent_and_magnet_from_an_aria2_seeder() {
    let tracker = Tracker::start();
    let f = fixture("a2.bin", 64 * MIB, 11);
    let tor = f.dir.path().join("a2.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &[]);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let t0 = Instant::now();
    let o = get(&node, tor.to_str().unwrap(), &out);
    let secs = t0.elapsed().as_secs_f64();
    assert_got(&o, &out.join("a2.bin"), &f.sha, ".torrent from aria2");
    eprintln!("64 MiB .torrent from aria2: {secs:.2}s ({:.1} MiB/s)", 64.0 / secs);
    let v = json_of(&o);
    assert_eq!(v["download"]["bytes"], 64 * MIB);

    let magnet = format!("magnet:?xt=urn:btih:{}&tr={}", hex::encode(&ih), tracker.url());
    let out2 = node.data_dir.path().join("out-magnet");
    let o = get(&node, &magnet, &out2);
    assert_got(&o, &out2.join("a2.bin"), &f.sha, "magnet from aria2");
    drop(seeder);
}

#[test]
fn torrent_and_magnet_from_a_transmission_seeder() {
    let tracker = Tracker::start();
    let f = fixture("tr.bin", 24 * MIB, 12);
    let tor = f.dir.path().join("tr.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 20, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    let seeder = TransmissionSeeder::start(&tor, f.dir.path(), port);
    assert!(
        tracker.wait_for(&ih, port, Duration::from_secs(60)),
        "transmission never announced: {}",
        seeder.proc.log_text()
    );

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = get(&node, tor.to_str().unwrap(), &out);
    assert_got(&o, &out.join("tr.bin"), &f.sha, ".torrent from Transmission");

    let magnet = format!("magnet:?xt=urn:btih:{}&tr={}", hex::encode(&ih), tracker.url());
    let out2 = node.data_dir.path().join("out-magnet");
    let o = get(&Chiral::new(), &magnet, &out2);
    assert_got(&o, &out2.join("tr.bin"), &f.sha, "magnet from Transmission");
}

#[test]
fn aria2_downloads_from_chiral_seed() {
    let tracker = Tracker::start();
    let f = fixture("served.bin", 32 * MIB, 13);
    let node = Chiral::new();
    let (seed, lines) =
        start_seed(&node, &[f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url()], 1);
    let magnet =
        lines.iter().find(|l| l.starts_with("magnet:")).unwrap_or_else(|| panic!("no magnet in {lines:?}")).clone();
    assert!(magnet.contains("tr="), "{magnet}");
    let out = node.data_dir.path().join("aria2-out");
    let (ok, log) = aria2_get(&magnet, &out, Duration::from_secs(120));
    assert!(ok, "aria2c failed: {log}\nseed: {}", seed.log_text());
    let got = find_file(&out, "served.bin").expect("aria2 wrote the file");
    assert_eq!(sha256_file(&got), f.sha);

    // The seed is listed from another command (with what it served) and stopped by its magnet.
    let mut seed = seed;
    let o = node.run(&["seeds", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json_of(&o);
    let rows = v["seeds"].as_array().unwrap();
    let row = rows.iter().find(|r| r["identifiers"].as_array().unwrap().iter().any(|i| i == magnet.as_str()));
    let row = row.unwrap_or_else(|| panic!("the magnet is not listed: {v}"));
    assert_eq!((&row["state"], &row["plugin"]), (&"running".into(), &"bittorrent".into()), "{row}");
    assert!(row["bytes_served"].as_u64().unwrap() >= 32 * MIB, "aria2 got it all from this seed: {row}");
    let o = node.run(&["stop", &magnet]);
    assert!(o.status.success(), "chiral stop: {}", stderr(&o));
    let status = seed.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the seed exits once stopped: {}", seed.log_text());
    let v = json_of(&node.run(&["seeds", "--json"]));
    assert_eq!(v["seeds"][0]["state"], "stopped", "{v}");
}

/// BEP 7 over IPv6 loopback, both ways with aria2: a tracker on `[::1]` answers IPv6 peers as
/// `peers6`; `chiral get` finds an aria2 seeder there and downloads over IPv6, and aria2 downloads
/// from `chiral seed --listen ::1` (whose magnet names its IPv6 address).
#[test]
fn ipv6_peers_and_tracker_with_aria2_both_ways() {
    let tracker = Tracker::start_v6();
    let v6 = ["--interface=::1", "--disable-ipv6=false"];
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("six.bin");
    make_file(&file, 12 * MIB, 71);
    let want = sha256_file(&file);
    let (tor, ih, seeder) = aria2_swarm(&file, &tracker, 18, &v6);
    assert!(tracker.announces().iter().all(|(ip, _)| ip == "::1"), "{:?}", tracker.announces());
    let aria2_ports = tracker.ports(&ih);
    let node = Chiral::new();
    let out = node.data_dir.path().join("from-aria2");
    let mut args = vec!["--listen", "::1", "get", tor.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend(BT);
    let o = run_with_timeout(node.cmd().args(&args), Duration::from_secs(120));
    assert_got(&o, &out.join("six.bin"), &want, "chiral from aria2 over IPv6");
    // (By now chiral may have announced `stopped` too: look at every announce, not the swarm.)
    let announced = tracker.announces().iter().any(|(ip, p)| ip == "::1" && !aria2_ports.contains(p));
    assert!(announced, "chiral announced over IPv6 too: {:?}", tracker.announces());
    drop(seeder);

    let f = fixture("served6.bin", 8 * MIB, 72);
    let (seed, lines) = start_seed(
        &node,
        &["--listen", "::1", f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url()],
        1,
    );
    let magnet = lines.iter().find(|l| l.starts_with("magnet:")).unwrap_or_else(|| panic!("{lines:?}")).clone();
    assert!(magnet.contains("x.pe=%5B%3A%3A1%5D"), "the magnet names the IPv6 address it listens on: {magnet}");
    let out = node.data_dir.path().join("aria2-out6");
    let (ok, log) = aria2_get_with(&magnet, &out, Duration::from_secs(120), &v6);
    assert!(ok, "aria2c failed over IPv6: {log}\nseed: {}", seed.log_text());
    assert_eq!(sha256_file(&find_file(&out, "served6.bin").expect("aria2 wrote it")), f.sha);
}

#[test]
fn transmission_downloads_a_chiral_created_torrent_from_chiral_seed() {
    let tracker = Tracker::start();
    let f = fixture("made.bin", 16 * MIB, 14);
    let node = Chiral::new();
    let tor = f.dir.path().join("made.torrent");
    let o = node.run(&["create", f.file.to_str().unwrap(), "-o", tor.to_str().unwrap(), "--tracker", &tracker.url()]);
    assert!(o.status.success(), "chiral create: {}", last_error_line(&o));
    let ih = info_hash_of(&tor);
    // transmission never dials loopback peers: start it first, then the seed dials it.
    let leech = TransmissionLeecher::start(&tor, &tracker, &ih);
    let seed_node = Chiral::new();
    let (seed, _) =
        start_seed(&seed_node, &[f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url()], 1);
    leech.wait_done(&seed);
    assert_eq!(sha256_file(&leech.out.join("made.bin")), f.sha);
}

#[test]
fn two_chiral_peers_recognise_each_other_while_transmission_leeches_normally() {
    let tracker = Tracker::start();
    let f = fixture("mixed.bin", 24 * MIB, 15);
    let maker = Chiral::new();
    let tor = f.dir.path().join("mixed.torrent");
    let o = maker.run(&["create", f.file.to_str().unwrap(), "-o", tor.to_str().unwrap(), "--tracker", &tracker.url()]);
    assert!(o.status.success(), "chiral create: {}", last_error_line(&o));
    let ih = info_hash_of(&tor);
    let leech = TransmissionLeecher::start(&tor, &tracker, &ih);

    // Chiral peer A seeds, B downloads the .torrent; each has the Chiral id of its own key.
    let a = Chiral::new();
    std::fs::write(a.data_dir.path().join("config/chiral/config.toml"), "no_dht = true\n").unwrap();
    let (seed, _) =
        start_seed(&a, &[f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url(), "-v"], 1);
    let b = Chiral::new();
    let out = b.data_dir.path().join("out");
    let o = run_with_timeout(
        b.cmd().args(["get", tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json", "-v"]).args(BT),
        Duration::from_secs(240),
    );
    assert_got(&o, &out.join("mixed.bin"), &f.sha, "chiral B from the swarm");
    leech.wait_done(&seed);
    assert_eq!(sha256_file(&leech.out.join("mixed.bin")), f.sha, "Transmission got the file intact");

    // B's report: A is a verified Chiral peer (with the id A announced); nobody else is.
    let v = json_of(&o);
    let peers: Vec<serde_json::Value> = v["download"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["peers"].as_array().cloned().unwrap_or_default())
        .collect();
    let a_log = seed.log_text();
    let (a_id, b_id) = (own_chiral_id(&a_log), own_chiral_id(&stderr(&o)));
    assert_ne!(a_id, b_id);
    let chiral: Vec<_> = peers.iter().filter(|p| !p["chiral_peer_id"].is_null()).collect();
    assert_eq!(chiral.len(), 1, "exactly one Chiral peer (A) in B's swarm: {peers:?}");
    assert_eq!(chiral[0]["chiral_peer_id"].as_str(), Some(a_id.as_str()), "{peers:?}");
    assert!(chiral[0]["downloaded"].as_u64().unwrap() > 0, "B got data from A: {peers:?}");
    for p in peers.iter().filter(|p| p["id"].as_str().unwrap_or_default().starts_with("-TR")) {
        assert!(p["chiral_peer_id"].is_null(), "Transmission is not taken for a Chiral peer: {p}");
    }
    // A's log: B proved its id through the `chiral` extension.
    assert!(a_log.contains(&format!("is Chiral peer {b_id}")), "A never recognised B ({b_id}):\n{a_log}");
    assert_eq!(a_log.matches("is Chiral peer").count(), 1, "only B is a Chiral peer for A:\n{a_log}");
}

/// The node's own Chiral peer id, as the bittorrent plugin logs it at `-v`.
fn own_chiral_id(log: &str) -> String {
    let at = log.find("bittorrent: Chiral peer id ").expect("the node logs its Chiral peer id") + 27;
    let id: String = log[at..].chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(id.len(), 64, "{id}");
    id
}

#[test]
fn killed_half_way_resumes() {
    let tracker = Tracker::start();
    let f = fixture("resume.bin", 64 * MIB, 15);
    let tor = f.dir.path().join("resume.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    // A slow seeder (4 MiB/s), so the download can be killed part way.
    let seeder = aria2_seed(&tor, f.dir.path(), port, &["--max-upload-limit=4M"]);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let mut child = node
        .cmd()
        .args(["get", tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"])
        .args(BT)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = out.join("resume.bin.chiral-resume");
    let done_fraction = || resume_fraction(&state, 64 * MIB);
    let t0 = Instant::now();
    while done_fraction() < 0.25 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress recorded in {}", state.display());
        assert!(child.try_wait().unwrap().is_none(), "download ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = done_fraction();
    assert!(before < 0.95, "killed too late ({before})");
    assert!(!out.join("resume.bin").exists());
    let o = get(&node, tor.to_str().unwrap(), &out);
    assert_got(&o, &out.join("resume.bin"), &f.sha, "resumed download");
    let resumed = json_of(&o)["download"]["resumed_bytes"].as_u64().unwrap();
    assert!(resumed as f64 >= before * 0.9 * (64 * MIB) as f64, "resumed only {resumed} bytes after {before}");
}

// ---------------------------------------------------------------- scripted peers

fn be_str(s: &[u8]) -> Vec<u8> {
    [format!("{}:", s.len()).into_bytes(), s.to_vec()].concat()
}

/// A scripted peer serving `data` (or garbage when `lie`) for the torrent `info_hash`.
fn scripted_peer(info_hash: [u8; 20], data: Arc<Vec<u8>>, piece_len: u64, lie: bool) -> (u16, Arc<Mutex<u64>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let served = Arc::new(Mutex::new(0u64));
    let s2 = served.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let data = data.clone();
            let served = s2.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
                let mut hs = [0u8; 68];
                if c.read_exact(&mut hs).is_err() || hs[28..48] != info_hash {
                    return;
                }
                let pieces = (data.len() as u64).div_ceil(piece_len) as usize;
                let mut out = vec![19u8];
                out.extend_from_slice(b"BitTorrent protocol");
                out.extend_from_slice(&[0; 8]);
                out.extend_from_slice(&info_hash);
                out.extend_from_slice(if lie { b"-XX0001-liarliarliar" } else { b"-XX0001-honesthonest" });
                let mut bf = vec![0u8; pieces.div_ceil(8)];
                for i in 0..pieces {
                    bf[i / 8] |= 0x80 >> (i % 8);
                }
                out.extend_from_slice(&((bf.len() + 1) as u32).to_be_bytes());
                out.push(5);
                out.extend_from_slice(&bf);
                out.extend_from_slice(&[0, 0, 0, 1, 1]); // unchoke
                if c.write_all(&out).is_err() {
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let n = match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        if buf.len() < 4 {
                            break;
                        }
                        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        if buf.len() < 4 + len {
                            break;
                        }
                        let msg: Vec<u8> = buf.drain(..4 + len).collect();
                        if len == 13 && msg[4] == 6 {
                            let w = |i: usize| u32::from_be_bytes(msg[i..i + 4].try_into().unwrap());
                            let (index, begin, length) = (w(5), w(9), w(13));
                            let off = index as usize * piece_len as usize + begin as usize;
                            let Some(block) = data.get(off..off + length as usize) else { return };
                            let mut o = Vec::with_capacity(13 + length as usize);
                            o.extend_from_slice(&(9 + length).to_be_bytes());
                            o.push(7);
                            o.extend_from_slice(&index.to_be_bytes());
                            o.extend_from_slice(&begin.to_be_bytes());
                            if lie {
                                o.extend(block.iter().map(|b| b ^ 0x5a));
                            } else {
                                o.extend_from_slice(block);
                            }
                            if c.write_all(&o).is_err() {
                                return;
                            }
                            *served.lock().unwrap() += 1;
                        }
                    }
                }
            });
        }
    });
    (port, served)
}

#[test]
fn a_peer_sending_corrupt_blocks_is_banned_and_the_download_completes_from_others() {
    let tracker = Tracker::start();
    let f = fixture("corrupt.bin", 16 * MIB, 16);
    let tor = f.dir.path().join("corrupt.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 16, false);
    let ih = info_hash_of(&tor);
    let data = Arc::new(std::fs::read(&f.file).unwrap());
    let (liar_port, liar_served) = scripted_peer(ih.clone().try_into().unwrap(), data.clone(), 1 << 16, true);
    tracker.add(&ih, liar_port);
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &[]);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());
    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = run_with_timeout(
        node.cmd().args(["get", tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json", "-v"]).args(BT),
        Duration::from_secs(240),
    );
    assert_got(&o, &out.join("corrupt.bin"), &f.sha, "download beside a lying peer");
    assert!(*liar_served.lock().unwrap() > 0, "the lying peer was never asked: the test proves nothing");
    let err = stderr(&o);
    assert!(err.contains("banning peer 127.0.0.1:") || err.contains("failed its SHA-1"), "no ban reported:\n{err}");
}

/// A multi-file `.torrent` built by hand (so its paths and URLs can be anything): the files
/// `(path components, length)` under `name`, the `pieces` hashes, an `announce-list` of one
/// tier per tracker and a `url-list`. Returns the file and its info hash.
fn crafted_torrent(
    name: &str,
    files: &[(Vec<&str>, u64)],
    pieces: &[u8],
    piece: u64,
    trackers: &[String],
    web_seeds: &[String],
) -> (Vec<u8>, [u8; 20]) {
    let mut flist = b"l".to_vec();
    for (path, len) in files {
        flist.extend_from_slice(b"d6:lengthi");
        flist.extend_from_slice(len.to_string().as_bytes());
        flist.extend_from_slice(b"e4:pathl");
        for c in path {
            flist.extend_from_slice(&be_str(c.as_bytes()));
        }
        flist.extend_from_slice(b"ee");
    }
    flist.push(b'e');
    let mut info = b"d5:files".to_vec();
    info.extend_from_slice(&flist);
    info.extend_from_slice(b"4:name");
    info.extend_from_slice(&be_str(name.as_bytes()));
    info.extend_from_slice(format!("12:piece lengthi{piece}e6:pieces").as_bytes());
    info.extend_from_slice(&be_str(pieces));
    info.push(b'e');
    let ih = sha1_smol_like::digest(&info);
    let mut torrent = b"d".to_vec();
    if let Some(first) = trackers.first() {
        torrent.extend_from_slice(b"8:announce");
        torrent.extend_from_slice(&be_str(first.as_bytes()));
        torrent.extend_from_slice(b"13:announce-listl");
        for t in trackers {
            torrent.extend_from_slice(b"l");
            torrent.extend_from_slice(&be_str(t.as_bytes()));
            torrent.extend_from_slice(b"e");
        }
        torrent.extend_from_slice(b"e");
    }
    torrent.extend_from_slice(b"4:info");
    torrent.extend_from_slice(&info);
    if !web_seeds.is_empty() {
        torrent.extend_from_slice(b"8:url-listl");
        for w in web_seeds {
            torrent.extend_from_slice(&be_str(w.as_bytes()));
        }
        torrent.extend_from_slice(b"e");
    }
    torrent.push(b'e');
    (torrent, ih)
}

fn piece_hashes(data: &[u8], piece: u64) -> Vec<u8> {
    data.chunks(piece as usize).flat_map(sha1_smol_like::digest).collect()
}

/// A listener that counts the connections made to it and answers none of them.
fn trap() -> (u16, Arc<Mutex<u32>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(0u32));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            *h.lock().unwrap() += 1;
            drop(c);
        }
    });
    (port, hits)
}

#[test]
fn a_torrent_naming_local_services_as_tracker_or_web_seed_sends_them_nothing() {
    let tracker = Tracker::start();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let piece = 1u64 << 15;
    let (trap_port, hits) = trap();
    let files = [(vec!["a.bin"], 120_000u64), (vec!["b.bin"], 80_000)];
    let (torrent, ih) = crafted_torrent(
        "pair",
        &files,
        &piece_hashes(&data, piece),
        piece,
        &[format!("http://127.0.0.1:{trap_port}/admin/reboot?now=1"), tracker.url()],
        &[format!("http://127.0.0.1:{trap_port}/cgi-bin/run?cmd=rm")],
    );
    let work = tempfile::tempdir().unwrap();
    let tor = work.path().join("local-services.torrent");
    std::fs::write(&tor, &torrent).unwrap();
    let (port, _) = scripted_peer(ih, Arc::new(data.clone()), piece, false);
    tracker.add(&ih, port);

    let node = Chiral::new();
    let out = work.path().join("out");
    let o = get(&node, tor.to_str().unwrap(), &out);
    assert!(o.status.success(), "{}", last_error_line(&o));
    assert_eq!(std::fs::read(out.join("pair/a.bin")).unwrap(), data[..120_000]);
    let err = stderr(&o);
    assert!(err.contains("tracker") && err.contains("must be an /announce URL"), "{err}");
    assert!(err.contains("web seed") && err.contains("query string"), "{err}");
    assert_eq!(*hits.lock().unwrap(), 0, "a request reached the local service the torrent named");
}

#[test]
fn a_link_planted_at_a_folder_of_a_multi_file_download_is_not_followed() {
    let tracker = Tracker::start();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 3 % 251) as u8).collect();
    let piece = 1u64 << 15;
    let files = [(vec!["sub", "a.bin"], 60_000u64), (vec!["b.bin"], 40_000)];
    let (torrent, ih) = crafted_torrent("album", &files, &piece_hashes(&data, piece), piece, &[tracker.url()], &[]);
    let work = tempfile::tempdir().unwrap();
    let tor = work.path().join("album.torrent");
    std::fs::write(&tor, &torrent).unwrap();
    let (port, _) = scripted_peer(ih, Arc::new(data.clone()), piece, false);
    tracker.add(&ih, port);

    let out = work.path().join("out");
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir_all(out.join("album")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("album/sub")).unwrap();
    let node = Chiral::new();
    let o = get(&node, tor.to_str().unwrap(), &out);
    assert!(!o.status.success(), "wrote through the planted link");
    assert!(last_error_line(&o).contains("symbolic link"), "{}", last_error_line(&o));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "something was written through the link");

    // Without the link the same download completes.
    std::fs::remove_file(out.join("album/sub")).unwrap();
    let o = get(&node, tor.to_str().unwrap(), &out);
    assert!(o.status.success(), "{}", last_error_line(&o));
    assert_eq!(std::fs::read(out.join("album/sub/a.bin")).unwrap(), data[..60_000]);
}

#[test]
fn a_torrent_with_climbing_paths_writes_nothing_outside_the_folder() {
    let tracker = Tracker::start();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let piece = 1u64 << 15;
    let pieces = piece_hashes(&data, piece);
    let files = [
        (vec!["..", "..", "escaped.txt"], 100_000u64),
        (vec!["/tmp", "abs-escape.txt"], 100_000),
        (vec!["ok", "inside.txt"], 100_000),
    ];
    let (torrent, ih) = crafted_torrent("../../top", &files, &pieces, piece, &[tracker.url()], &[]);
    let work = tempfile::tempdir().unwrap();
    let tor = work.path().join("evil.torrent");
    std::fs::write(&tor, &torrent).unwrap();
    let (port, _) = scripted_peer(ih, Arc::new(data.clone()), piece, false);
    tracker.add(&ih, port);

    let node = Chiral::new();
    let out = work.path().join("a/b/out");
    std::fs::create_dir_all(&out).unwrap();
    let o = get(&node, tor.to_str().unwrap(), &out);
    assert!(o.status.success(), "{}", last_error_line(&o));
    // Nothing above the output folder, nothing at the absolute path.
    assert!(!work.path().join("a/escaped.txt").exists() && !work.path().join("escaped.txt").exists());
    assert!(!work.path().join("a/b/escaped.txt").exists());
    assert!(!Path::new("/tmp/abs-escape.txt").exists());
    let mut all = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out)
            } else {
                out.push(e.path())
            }
        }
    }
    walk(work.path(), &mut all);
    for p in &all {
        assert!(p.starts_with(&out) || p == &tor, "{} is outside {}", p.display(), out.display());
    }
    let inside: Vec<u8> = std::fs::read(find_file(&out, "inside.txt").unwrap()).unwrap();
    assert_eq!(inside, data[200_000..]);
    let escaped = find_file(&out, "escaped.txt").expect("neutralised, kept inside");
    assert_eq!(std::fs::read(escaped).unwrap(), data[..100_000]);
}

/// SHA-1 for building a crafted torrent without trusting the plugin's code (tiny, test-only).
mod sha1_smol_like {
    pub(crate) fn digest(data: &[u8]) -> [u8; 20] {
        let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
        let ml = (data.len() as u64) * 8;
        let mut msg = data.to_vec();
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&ml.to_be_bytes());
        for chunk in msg.chunks(64) {
            let mut w = [0u32; 80];
            for i in 0..16 {
                w[i] = u32::from_be_bytes(chunk[i * 4..i * 4 + 4].try_into().unwrap());
            }
            for i in 16..80 {
                w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
            }
            let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
            for (i, wi) in w.iter().enumerate() {
                let (f, k) = match i {
                    0..=19 => ((b & c) | (!b & d), 0x5A827999),
                    20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                    40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                    _ => (b ^ c ^ d, 0xCA62C1D6),
                };
                let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
                e = d;
                d = c;
                c = b.rotate_left(30);
                b = a;
                a = t;
            }
            h[0] = h[0].wrapping_add(a);
            h[1] = h[1].wrapping_add(b);
            h[2] = h[2].wrapping_add(c);
            h[3] = h[3].wrapping_add(d);
            h[4] = h[4].wrapping_add(e);
        }
        let mut out = [0u8; 20];
        for (i, v) in h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    #[test]
    fn known() {
        assert_eq!(hex::encode(digest(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}

/// VmRSS of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A leecher that asks for every block of the torrent (16 KiB and 128 KiB spans, over and
/// over) and never reads a byte, until `stop` is set; reconnects when the seeder hangs up.
fn greedy_leecher(addr: String, info_hash: Vec<u8>, length: u64, piece_len: u64, stop: Arc<Mutex<bool>>) -> u64 {
    let mut asked = 0u64;
    while !*stop.lock().unwrap() {
        let Ok(mut c) = std::net::TcpStream::connect(&addr) else { return asked };
        let mut hs = vec![19u8];
        hs.extend_from_slice(b"BitTorrent protocol");
        hs.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
        hs.extend_from_slice(&info_hash);
        hs.extend_from_slice(b"-GL0001-greedygreedy");
        hs.extend_from_slice(&[0, 0, 0, 1, 2]); // interested
        if c.write_all(&hs).is_err() {
            continue;
        }
        'conn: while !*stop.lock().unwrap() {
            for block in [16u32 << 10, 128 << 10] {
                let mut batch = Vec::new();
                for piece in 0..length.div_ceil(piece_len) as u32 {
                    let plen = piece_len.min(length - piece as u64 * piece_len) as u32;
                    let mut begin = 0;
                    while begin < plen {
                        let l = block.min(plen - begin);
                        batch.extend_from_slice(&[0, 0, 0, 13, 6]);
                        batch.extend_from_slice(&piece.to_be_bytes());
                        batch.extend_from_slice(&begin.to_be_bytes());
                        batch.extend_from_slice(&l.to_be_bytes());
                        begin += l;
                        asked += l as u64;
                    }
                    if batch.len() > 64 << 10 {
                        if c.write_all(&batch).is_err() {
                            break 'conn;
                        }
                        batch.clear();
                        if *stop.lock().unwrap() {
                            break 'conn;
                        }
                    }
                }
                if c.write_all(&batch).is_err() {
                    break 'conn;
                }
            }
        }
    }
    asked
}

#[test]
fn a_leecher_that_asks_for_everything_and_never_reads_leaves_the_seeder_s_memory_flat() {
    let tracker = Tracker::start();
    let f = fixture("greedy.bin", 128 * MIB, 21);
    let node = Chiral::new();
    // 256 KiB pieces, known to the leecher: the seed reuses the torrent beside the file.
    let tor = f.dir.path().join("greedy.torrent");
    let o = node.run(&[
        "create",
        f.file.to_str().unwrap(),
        "-o",
        tor.to_str().unwrap(),
        "--tracker",
        &tracker.url(),
        "--piece-size",
        "262144",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (seed, lines) =
        start_seed(&node, &[f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url()], 1);
    let magnet = lines.iter().find(|l| l.starts_with("magnet:")).expect("a magnet").clone();
    let addr = magnet.split('&').find_map(|kv| kv.strip_prefix("x.pe=")).expect("x.pe in the magnet");
    let addr = String::from_utf8(pct_decode(addr)).unwrap();
    let ih = hex::decode(magnet.split('&').find_map(|kv| kv.split("urn:btih:").nth(1)).unwrap()).unwrap();
    let pid = seed.child.id();
    let before = rss_kib(pid);
    let stop = Arc::new(Mutex::new(false));
    let greedy: Vec<_> = (0..2)
        .map(|_| {
            let (a, ih, s) = (addr.clone(), ih.clone(), stop.clone());
            std::thread::spawn(move || greedy_leecher(a, ih, 128 * MIB, 1 << 18, s))
        })
        .collect();
    let watch = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !*stop.lock().unwrap() {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    // An honest leecher at the same time still gets the file; the flood goes on a while after.
    let out = node.data_dir.path().join("honest");
    let (ok, log) = aria2_get(&magnet, &out, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(5));
    *stop.lock().unwrap() = true;
    let peak = watch.join().unwrap();
    let asked: u64 = greedy.into_iter().map(|g| g.join().unwrap()).sum();
    assert!(ok, "aria2c failed beside the greedy leechers: {log}\nseed: {}", seed.log_text());
    assert_eq!(sha256_file(&find_file(&out, "greedy.bin").unwrap()), f.sha);
    assert!(asked > 1 << 30, "the greedy leechers asked for {asked} bytes only");
    let grew = peak.saturating_sub(before) / 1024;
    eprintln!(
        "seeder RSS {} MiB before, {} MiB peak; greedy asked for {} MiB",
        before / 1024,
        peak / 1024,
        asked >> 20
    );
    assert!(grew < 100, "the seeder grew by {grew} MiB for leechers that never read");
}
