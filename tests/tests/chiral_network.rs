//! The Chiral network plugin end to end: several real `chiral` processes on loopback, each with
//! its own data dir (identity), publishing, finding through the DHT, downloading, searching.

use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use chiral_tests::*;

const MIB: u64 = 1 << 20;

/// Starts `chiral node ARGS...` and returns it with the first `/ip4/.../p2p/...` it printed.
fn start_node(node: &Chiral, args: &[&str]) -> (Proc, String) {
    let (proc, rx) = spawn_printing(node, "node", args);
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with("/ip4/") && l.contains("/p2p/") => return (proc, l.trim().to_string()),
            Ok(_) => {}
            Err(_) => panic!("chiral node printed no address; stderr:\n{}", proc.log_text()),
        }
    }
}

fn peer_id_of(addr: &str) -> String {
    addr.rsplit_once("/p2p/").expect("/p2p/ in the address").1.to_string()
}

fn cid_of(lines: &[String]) -> String {
    let cid = lines.iter().find(|l| l.starts_with("chiral:")).expect("a chiral: id").trim().to_string();
    assert_eq!(cid.len(), 7 + 64, "{cid}");
    assert!(cid[7..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{cid}");
    cid
}

/// The providers of a `get --json` answer (`sources[].peers[]`): peer id -> (bytes, reputation, banned).
fn provider_totals(v: &serde_json::Value) -> BTreeMap<String, (u64, i64, bool)> {
    let mut out = BTreeMap::new();
    for src in v["download"]["sources"].as_array().into_iter().flatten() {
        for p in src["peers"].as_array().into_iter().flatten() {
            let id = p["id"].as_str().expect("peer id").to_string();
            assert_eq!(p["chiral_peer_id"].as_str(), Some(id.as_str()), "a Chiral provider is a Chiral peer: {p}");
            let entry =
                (p["downloaded"].as_u64().unwrap(), p["reputation"].as_i64().unwrap(), p["banned"].as_bool().unwrap());
            out.insert(id, entry);
        }
    }
    out
}

/// The peer id a data dir's identity gives (its `chiral node` prints it).
fn peer_id_for(node: &Chiral) -> String {
    let (p, addr) = start_node(node, &[]);
    drop(p);
    peer_id_of(&addr)
}

#[test]
fn five_processes_find_and_download_through_the_dht_and_search() {
    let size = 256 * MIB;
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);

    let b = Chiral::new();
    let file = b.data_dir.path().join("src/fixture-net.bin");
    make_file(&file, size, 77);
    let want = sha256_file(&file);
    let (pb, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);

    let c = Chiral::new();
    let (_pc, addr_c) = start_node(&c, &["--bootstrap", &addr_a]);
    let d = Chiral::new();
    let (_pd, addr_d) = start_node(&d, &["--bootstrap", &addr_c]);
    std::thread::sleep(Duration::from_secs(2));

    // E knows only D; D knows only C; the seeder B is reachable through the DHT alone.
    let e = Chiral::new();
    let out_dir = e.data_dir.path().join("dl");
    let t0 = Instant::now();
    let out = e.run(&["get", &cid, "--bootstrap", &addr_d, "-o", out_dir.to_str().unwrap(), "--json", "-v"]);
    let secs = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "get failed: {}\nseeder: {}", stderr(&out), pb.log_text());
    let v = json_of(&out);
    assert_eq!(v["download"]["bytes"], size);
    assert_eq!(v["download"]["mode"], "engine");
    assert_eq!(sha256_file(&out_dir.join("fixture-net.bin")), want);
    let totals = provider_totals(&v);
    eprintln!("chiral network: {} MiB in {secs:.2} s (incl. lookup); providers {totals:?}", size / MIB);
    assert!(totals.values().map(|t| t.0).sum::<u64>() >= size, "{totals:?}");

    // Keyword search from a node bootstrapped elsewhere.
    let s = e.run(&["search", "fixture", "--bootstrap", &addr_c]);
    assert!(s.status.success(), "search failed: {}", stderr(&s));
    let text = stdout(&s);
    assert!(text.contains(&cid), "search fixture does not list {cid}: {text}\n{}", stderr(&s));
    assert!(text.contains("fixture-net.bin"), "{text}");
    // And a word no file has.
    let none = e.run(&["search", "nosuchwordanywhere", "--bootstrap", &addr_c]);
    assert!(none.status.success(), "{}", stderr(&none));
    assert!(!stdout(&none).contains("chiral:"), "{}", stdout(&none));
}

#[test]
fn two_seeders_share_one_download() {
    let size = 96 * MIB;
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("shared-two.bin");
    make_file(&file, size, 5);
    let want = sha256_file(&file);
    let b1 = Chiral::new();
    let (_s1, l1) = start_seed(&b1, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let b2 = Chiral::new();
    let (_s2, l2) = start_seed(&b2, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&l1);
    assert_eq!(cid, cid_of(&l2), "the same bytes have the same content id");

    let e = Chiral::new();
    let out_dir = e.data_dir.path().join("dl");
    let t0 = Instant::now();
    let out = e.run(&["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap(), "--json", "-v"]);
    let secs = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("shared-two.bin")), want);
    let totals = provider_totals(&json_of(&out));
    eprintln!("two seeders: {} MiB in {secs:.2} s; per provider {totals:?}", size / MIB);
    assert_eq!(totals.len(), 2, "expected two providers: {totals:?}\n{}", stderr(&out));
    assert!(totals.values().all(|t| t.0 > 0 && !t.2), "both providers must deliver: {totals:?}");
    assert!(totals.values().map(|t| t.0).sum::<u64>() >= size, "{totals:?}");
}

#[test]
fn a_seeder_stopped_half_way_leaves_the_other_to_finish() {
    let size = 64 * MIB;
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("half-way.bin");
    make_file(&file, size, 21);
    let want = sha256_file(&file);
    // Capped seeders (8 MiB/s each) so the download is still running when one goes away.
    let (b1, b2) = (Chiral::new(), Chiral::new());
    let (id1, id2) = (peer_id_for(&b1), peer_id_for(&b2));
    let args = [file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a, "--option", "upload_rate=8M"];
    let (s1, l1) = start_seed(&b1, &args, 1);
    let (_s2, _) = start_seed(&b2, &args, 1);
    let cid = cid_of(&l1);

    let e = Chiral::new();
    let out_dir = e.data_dir.path().join("dl");
    let child = e
        .cmd()
        .args(["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap(), "--json", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = out_dir.join("half-way.bin.chiral-resume");
    let t0 = Instant::now();
    while resume_fraction(&state, size) < 0.3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress recorded in {}", state.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s1); // the first seeder goes away (killed) with most of the file still to fetch
    let stopped_at = resume_fraction(&state, size);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stopped_at < 0.9, "the first seeder stopped too late ({stopped_at})");
    assert_eq!(sha256_file(&out_dir.join("half-way.bin")), want);
    let totals = provider_totals(&json_of(&out));
    eprintln!("seeder stopped at {:.0}%: per provider {totals:?}", stopped_at * 100.0);
    let (got1, got2) = (totals[&id1].0, totals[&id2].0);
    assert!(got1 > 0 && got1 < size, "the stopped seeder delivered part of it: {got1}");
    assert!(got2 as f64 >= (1.0 - stopped_at) * size as f64 * 0.9, "the other finished it: {got2}");
    assert!(got1 + got2 >= size, "{totals:?}");
}

#[test]
fn a_node_serving_corrupt_chunks_is_dropped_and_its_chunks_refetched() {
    let size = 48 * MIB;
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let good_file = src.path().join("good/corrupt-test.bin");
    let bad_file = src.path().join("bad/corrupt-test.bin");
    make_file(&good_file, size, 9);
    make_file(&bad_file, size, 9);
    let want = sha256_file(&good_file);
    let (good, bad) = (Chiral::new(), Chiral::new());
    let (good_id, bad_id) = (peer_id_for(&good), peer_id_for(&bad));
    let (_sg, lg) = start_seed(&good, &[good_file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let (_sb, lb) = start_seed(&bad, &[bad_file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lg);
    assert_eq!(cid, cid_of(&lb));
    // The bad node's file changes under it after publishing: it now serves other bytes with
    // the proofs of the published tree.
    make_file(&bad_file, size, 10);

    let e = Chiral::new();
    let out_dir = e.data_dir.path().join("dl");
    let out = e.run(&["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("corrupt-test.bin")), want);
    let totals = provider_totals(&json_of(&out));
    eprintln!("corrupt node: per provider {totals:?}");
    let (bad_bytes, bad_rep, bad_banned) = totals[&bad_id];
    let (good_bytes, good_rep, good_banned) = totals[&good_id];
    assert!(bad_banned && !good_banned, "{totals:?}");
    assert_eq!(bad_bytes, 0, "no chunk of the bad node is kept");
    assert!(good_bytes >= size, "every chunk came from the good node: {good_bytes}");
    assert!(bad_rep < 500 && bad_rep < good_rep, "reputation lowered: bad {bad_rep}, good {good_rep}");
    assert!(stderr(&out).contains("sent bad data"), "the bad node is reported: {}", stderr(&out));
}

#[test]
fn a_magnet_finds_a_chiral_seed_through_the_info_hash_index() {
    let size = 24 * MIB;
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("dual-lookup-sample.bin");
    make_file(&file, size, 33);
    let want = sha256_file(&file);
    // One command seeds over BitTorrent (no tracker, no BitTorrent DHT) and on the Chiral
    // network; the host hands the magnet's info hash to the Chiral plugin.
    let b = Chiral::new();
    let (_sb, lines) = start_seed(
        &b,
        &[file.to_str().unwrap(), "--via", "bittorrent", "--via", "chiral", "--bootstrap", &addr_a, "--no-dht"],
        2,
    );
    let magnet = lines.iter().find(|l| l.starts_with("magnet:")).expect("a magnet link");
    let ih = magnet.split("xt=urn:btih:").nth(1).expect("btih")[..40].to_string();
    let cid = cid_of(&lines);

    // The bare magnet: no tracker, no peer address; only the Chiral index can resolve it.
    let e = Chiral::new();
    let out_dir = e.data_dir.path().join("dl");
    let bare = format!("magnet:?xt=urn:btih:{ih}");
    let out = e.run(&["get", &bare, "--bootstrap", &addr_a, "--no-dht", "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(sha256_file(&out_dir.join("dual-lookup-sample.bin")), want);
    let sources = v["download"]["sources"].as_array().unwrap();
    let chiral = sources.iter().find(|s| s["plugin"] == "chiral").unwrap_or_else(|| panic!("no chiral source: {v}"));
    assert_eq!(chiral["bytes"], size, "{v}");
    assert!(chiral["label"].as_str().unwrap().starts_with(&cid), "{v}");
    // Checked, not trusted: the Chiral record carries the info dictionary whose SHA-1 is the
    // magnet's info hash, and every piece was verified against its SHA-1 pieces.
    assert_eq!(v["download"]["verified"], true, "{v}");

    // And by a word of its name.
    let s = e.run(&["search", "sample", "--bootstrap", &addr_a]);
    assert!(s.status.success(), "{}", stderr(&s));
    assert!(stdout(&s).contains(&cid), "{}", stdout(&s));
}

#[test]
fn a_restarted_node_keeps_its_peer_id() {
    let n = Chiral::new();
    let (p1, addr1) = start_node(&n, &[]);
    drop(p1);
    let (_p2, addr2) = start_node(&n, &[]);
    assert_eq!(peer_id_of(&addr1), peer_id_of(&addr2));
    // Another data dir, another identity.
    let (_p3, addr3) = start_node(&Chiral::new(), &[]);
    assert_ne!(peer_id_of(&addr1), peer_id_of(&addr3));
}

#[test]
fn a_lying_ftp_mirror_listed_before_a_chiral_id_never_defines_the_content() {
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("root-check.bin");
    make_file(&file, 8 * MIB, 41);
    let want = sha256_file(&file);
    let b = Chiral::new();
    let (_sb, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);
    // The mirror serves bytes of the right length, one flipped in every MiB.
    let evil = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    for i in (0..bytes.len()).step_by(MIB as usize) {
        bytes[i + 3] ^= 0xff;
    }
    std::fs::write(evil.path().join("root-check.bin"), bytes).unwrap();
    let ftp = PureFtpd::start(evil.path(), "mirror", "mirror-pass");

    let e = Chiral::new();
    let out_dir = e.data_dir.path().join("dl");
    let out = e.run(&[
        "get",
        &ftp.url_with("mirror-pass", "root-check.bin"),
        &cid,
        "--bootstrap",
        &addr_a,
        "-o",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("root-check.bin")), want, "the Merkle root decides, not the first mirror");
    let v = json_of(&out);
    assert_eq!(v["download"]["verified"], true, "{v}");
    let ftp_src = v["download"]["sources"].as_array().unwrap().iter().find(|s| s["plugin"] == "ftp").cloned();
    let ftp_src = ftp_src.unwrap_or_else(|| panic!("no ftp source: {v}"));
    // None of its bytes count: what it sent failed verification (and dropped it, unless the
    // Chiral source finished first).
    assert_eq!(ftp_src["bytes"], 0, "{ftp_src}");
    let dropped = ftp_src["dropped"].as_str();
    assert!(dropped.is_none_or(|d| d.contains("verification")), "{ftp_src}");
}

/// Names come from the network: `chiral search` shows an escape sequence or a new line in a
/// published name as text, never as a terminal command or an extra result line.
#[test]
fn search_shows_hostile_names_escaped() {
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let b = Chiral::new();
    let file = b.data_dir.path().join("src/hostile\x1b[2J\nfake-result.bin");
    make_file(&file, MIB, 5);
    let (_pb, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);

    let e = Chiral::new();
    let s = e.run(&["search", "hostile", "--bootstrap", &addr_a]);
    assert!(s.status.success(), "{}", stderr(&s));
    let text = stdout(&s);
    assert!(text.contains(&cid), "{text}");
    assert!(!text.contains('\x1b'), "a raw escape reached the terminal: {text:?}");
    assert_eq!(text.lines().count(), 1, "one result, one line: {text:?}");
    assert!(text.contains("hostile\\u{1b}[2J\\u{a}fake-result.bin"), "{text:?}");
}

/// Reputation lasts across runs: a download writes the providers' scores to the data dir, and
/// the next `chiral get` in the same data dir (a new process) starts from them.
#[test]
fn a_restart_keeps_reputation() {
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("lasting.bin");
    make_file(&file, 8 * MIB, 61);
    let b = Chiral::new();
    let b_id = peer_id_for(&b);
    let (_pb, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);

    let e = Chiral::new();
    let get = |dir: &str| {
        let out_dir = e.data_dir.path().join(dir);
        let out = e.run(&["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        provider_totals(&json_of(&out))[&b_id].1
    };
    let first = get("dl1");
    let kept = std::fs::read_to_string(e.data_dir.path().join("chiral/reputation.json"))
        .unwrap_or_else(|e| panic!("no reputation file in the data dir: {e}"));
    assert!(kept.contains(&b_id), "{kept}");
    let second = get("dl2");
    assert!(second > first, "the second run starts from the first's score: {first} then {second}");
}

/// `get --seed`: the finisher publishes itself as a provider, so the content outlives its
/// first seeder.
#[test]
fn a_finisher_with_seed_becomes_a_provider() {
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("passed-on.bin");
    make_file(&file, 4 * MIB, 62);
    let want = sha256_file(&file);
    let b = Chiral::new();
    let (pb, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);

    let e = Chiral::new();
    let e_id = peer_id_for(&e);
    let e_dir = e.data_dir.path().join("dl");
    let (_pe, rx) = spawn_printing(&e, "get", &[&cid, "--bootstrap", &addr_a, "-o", e_dir.to_str().unwrap(), "--seed"]);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("chiral:")) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("get --seed printed {seen:?} then nothing"),
        }
    }
    drop(pb); // the first seeder is gone

    let f = Chiral::new();
    let out_dir = f.data_dir.path().join("dl");
    let out = f.run(&["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("passed-on.bin")), want);
    let totals = provider_totals(&json_of(&out));
    assert!(totals.get(&e_id).is_some_and(|t| t.0 > 0), "the finisher served it: {totals:?}");
}

/// The node's listener under an idle crowd: 1,400 TCP connections that never start a
/// handshake. Past 1,024 being set up, more are refused at once; the others end at the 10 s
/// connection timeout; the node's open files stay bounded all along, and afterwards a seed
/// bootstraps from it and a download finds the file through it.
#[test]
fn an_idle_crowd_costs_a_chiral_node_at_most_its_connection_caps() {
    const CAP: usize = 1024;
    const CROWD: usize = 1400;
    allow_open_files(CROWD as u64 + 256);
    let a = Chiral::new();
    let (pa, addr_a) = start_node(&a, &[]);
    let parts: Vec<&str> = addr_a.split('/').collect();
    assert_eq!(parts.get(3), Some(&"tcp"), "{addr_a}");
    let port: u16 = parts[4].parse().expect("a port");
    let pid = pa.child.id();
    let base = open_files(pid);
    let crowd = IdleCrowd::open(port, CROWD);
    // Refused at once, long before the 10 s connection timeout would close them.
    let refused = wait_until(Duration::from_secs(5), || crowd.closed() >= CROWD - CAP);
    let now_open = open_files(pid);
    assert!(refused, "the node closed {} of {CROWD} idle connections; it has {now_open} files open", crowd.closed());
    assert!(now_open <= base + CAP + 16, "the node holds {now_open} open files (it had {base} before the crowd)");
    assert!(
        wait_until(Duration::from_secs(40), || crowd.closed() == CROWD),
        "{} of {CROWD} idle connections outlived the connection timeout",
        CROWD - crowd.closed()
    );
    drop(crowd);

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("after-crowd.bin");
    make_file(&file, 3 * MIB + 17, 31);
    let b = Chiral::new();
    let (_s, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);
    let e = Chiral::new();
    let out_dir = e.data_dir.path().join("dl");
    let out = e.run(&["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("after-crowd.bin")), sha256_file(&file));
}

/// Starts the hostile node (`plugins/chiral/examples/hostile_node.rs`, a process of its own with
/// its own identity) joined through `bootstrap`, running one attack; returns it once it printed
/// `ready <peer id>`, with that peer id.
fn start_hostile(dir: &std::path::Path, bootstrap: &str, attack: &[&str]) -> (Proc, String) {
    let bin = bin_dir().join("examples/hostile_node");
    assert!(bin.exists(), "{} is missing: `cargo test --release --workspace` builds it", bin.display());
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg(dir).arg(bootstrap).args(attack);
    let (proc, rx) = spawn_lines(cmd, &format!("hostile_node {}", attack[0]), dir.join("stderr.log"));
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(l) if l.starts_with("ready ") => (proc, l[6..].trim().to_string()),
        other => panic!("hostile node ({attack:?}) not ready: {other:?}; stderr:\n{}", proc.log_text()),
    }
}

/// Index flooding and a metadata overwrite from separate processes: one hostile node signs 512
/// roots under the keyword of an honest file, another a metadata record of another size under
/// its root listing itself as the seeder. A reader's `chiral search` still lists the honest
/// entry (with its true size), at most 16 of the flooder's, and `chiral get` downloads the
/// honest bytes.
#[test]
fn a_flooding_process_and_a_metadata_overwriting_process_leave_the_honest_publisher() {
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("Zeppelin_Flight.bin");
    let size = 3 * MIB + 7;
    make_file(&file, size, 71);
    let want = sha256_file(&file);
    let b = Chiral::new();
    let (_pb, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);

    let (_flood, _) = start_hostile(&src.path().join("flooder"), &addr_a, &["flood", "zeppelin", "512"]);
    let lie = (size + 5).to_string();
    let (_over, over_id) =
        start_hostile(&src.path().join("overwriter"), &addr_a, &["overwrite", &cid, "Zeppelin_Flight.bin", &lie]);

    let e = Chiral::new();
    let s = e.run(&["search", "zeppelin", "--bootstrap", &addr_a, "--json"]);
    assert!(s.status.success(), "search failed: {}", stderr(&s));
    let v = json_of(&s);
    let results = v["search"]["results"].as_array().cloned().unwrap_or_default();
    let flood = results.iter().filter(|r| r["name"].as_str().is_some_and(|n| n.contains("flood"))).count();
    eprintln!("search zeppelin: {} results, {flood} of the flooder's", results.len());
    let honest = results.iter().find(|r| r["id"] == cid.as_str());
    let honest = honest.unwrap_or_else(|| panic!("the honest entry is gone under the flood: {v}"));
    assert_eq!(honest["size"], size, "{honest}");
    assert!(flood >= 1, "the flood reached the network (else this test shows nothing): {v}");
    assert!(flood <= 16, "one publisher holds at most 16 entries under a key: {flood}");

    let out_dir = e.data_dir.path().join("dl");
    let out = e.run(&["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["download"]["bytes"], size, "the length the root commits to");
    assert_eq!(sha256_file(&out_dir.join("Zeppelin_Flight.bin")), want);
    let totals = provider_totals(&v);
    assert!(totals.get(&over_id).is_none_or(|t| t.0 == 0), "no byte from the overwriter: {totals:?}");
}

/// A provider that lies about the size, from a process of its own, with a good name in the
/// reader's kept reputation (so it is asked first): it serves the genuine chunks and proofs but
/// a manifest 5 bytes longer. The length comes from the root (the verified last chunk), the
/// liar is dropped with bad data on its record, and the honest provider serves the file and
/// gains reputation; both outlast the run in the reader's data dir.
#[test]
fn a_process_lying_about_the_size_is_outlived() {
    let a = Chiral::new();
    let (_pa, addr_a) = start_node(&a, &[]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("honest/sized.bin");
    let size = 4 * MIB + 100;
    make_file(&file, size, 72);
    let want = sha256_file(&file);
    let copy = src.path().join("liar/sized.bin");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&file, &copy).unwrap();
    let b = Chiral::new();
    let b_id = peer_id_for(&b);
    let (_pb, lines) = start_seed(&b, &[file.to_str().unwrap(), "--via", "chiral", "--bootstrap", &addr_a], 1);
    let cid = cid_of(&lines);
    let (_liar, liar_id) = start_hostile(&src.path().join("liar-node"), &addr_a, &["lie-size", copy.to_str().unwrap()]);

    let e = Chiral::new();
    let kept = e.data_dir.path().join("chiral/reputation.json");
    std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
    let good_name = serde_json::json!({ liar_id.clone(): {
        "score": 0.99, "successes": 500, "failures": 0, "bad_data": 0, "bytes": 1u64 << 30 } });
    std::fs::write(&kept, good_name.to_string()).unwrap();
    let out_dir = e.data_dir.path().join("dl");
    let out = e.run(&["get", &cid, "--bootstrap", &addr_a, "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["download"]["bytes"], size);
    assert_eq!(sha256_file(&out_dir.join("sized.bin")), want);
    let totals = provider_totals(&v);
    eprintln!("size liar: per provider {totals:?}");
    let (liar_bytes, liar_rep, liar_banned) = totals[&liar_id];
    let (honest_bytes, honest_rep, honest_banned) = totals[&b_id];
    assert!(liar_banned && !honest_banned, "{totals:?}");
    assert_eq!(liar_bytes, 0, "nothing of the liar's is kept");
    assert!(honest_bytes >= size, "{honest_bytes}");
    assert!(liar_rep < 990 && honest_rep > liar_rep, "liar {liar_rep}, honest {honest_rep}");
    let after: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    assert!(after[&liar_id]["bad_data"].as_u64() >= Some(1), "the lie is remembered: {after}");
    assert!(after[&liar_id]["score"].as_f64() < Some(0.99), "{after}");
    assert!(after[&b_id]["successes"].as_u64() >= Some(1), "{after}");
}

/// Reputation travels from the Chiral network to BitTorrent: the seeder's Chiral network plugin
/// remembers one downloader's network identity for bad data (its reputation file); both
/// downloaders' hosts link their BitTorrent Chiral id to their network key, the seeder's host
/// hands its BitTorrent plugin the poor scores, and `chiral seed --via bittorrent` gives the
/// fast lane to the good downloader only (the other still gets the file, in the regular slots).
#[test]
fn a_poor_chiral_network_reputation_costs_a_peer_the_bittorrent_fast_lane() {
    use chiral_tests::bt::{fixture, info_hash_of, mktorrent, Tracker};
    let tracker = Tracker::start();
    let f = fixture("lane.bin", 8 * MIB, 73);
    let tor = f.dir.path().join("lane.bin.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let (bad, good) = (Chiral::new(), Chiral::new());
    let bad_id = peer_id_for(&bad);
    let seeder = Chiral::new();
    let kept = seeder.data_dir.path().join("chiral/reputation.json");
    std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
    let record = serde_json::json!({ bad_id.clone(): {
        "score": 0.02, "successes": 0, "failures": 2, "bad_data": 3, "bytes": 0 } });
    std::fs::write(&kept, record.to_string()).unwrap();
    let args = [f.file.to_str().unwrap(), "--via", "bittorrent", "--tracker", &tracker.url(), "-v"];
    let (seed, _) = start_seed(&seeder, &args, 1);
    assert!(wait_until(Duration::from_secs(30), || !tracker.ports(&ih).is_empty()), "the seed never announced");
    let lanes = |with: &str| {
        seed.log_text()
            .lines()
            .filter(|l| l.contains("proven;") && l.contains(with))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for (who, node) in [("bad", &bad), ("good", &good)] {
        let out = node.data_dir.path().join("dl");
        let o = node.run(&["get", tor.to_str().unwrap(), "-o", out.to_str().unwrap(), "--backend", "bittorrent"]);
        assert!(o.status.success(), "{who}: {}", stderr(&o));
        assert_eq!(sha256_file(&out.join("lane.bin")), f.sha, "{who}");
    }
    let refused = lanes("no fast lane: poor reputation on the Chiral network");
    let given = lanes("; fast lane)");
    assert_eq!(refused.len(), 1, "the poorly reputed downloader lost the fast lane:\n{}", seed.log_text());
    assert_eq!(given.len(), 1, "the other kept it:\n{}", seed.log_text());
    assert!(given[0].contains("Chiral network key"), "the good downloader was linked too: {}", given[0]);
    eprintln!("{}\n{}", refused[0], given[0]);
}
