//! The Chiral network plugin end to end: several real `chiral` processes on loopback, each with
//! its own data dir (identity), publishing, finding through the DHT, downloading, searching.

use std::time::{Duration, Instant};

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

/// `chiral provider <peer>: <bytes> bytes in <n> chunks` lines of a `-v` run: last total per peer.
fn provider_totals(stderr_text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for l in stderr_text.lines() {
        let Some(rest) = l.split("chiral provider ").nth(1) else { continue };
        let Some((peer, tail)) = rest.split_once(": ") else { continue };
        let Some(bytes) = tail.split_whitespace().next().and_then(|b| b.parse::<u64>().ok()) else { continue };
        out.insert(peer.to_string(), bytes);
    }
    out
}

#[test]
fn five_processes_find_and_download_through_the_dht_and_search() {
    let size = 128 * MIB;
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
    let totals = provider_totals(&stderr(&out));
    eprintln!("chiral network: {} MiB in {secs:.2} s (incl. lookup); providers {totals:?}", size / MIB);

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
    let totals = provider_totals(&stderr(&out));
    eprintln!("two seeders: {} MiB in {secs:.2} s; per provider {totals:?}", size / MIB);
    assert_eq!(totals.len(), 2, "expected two providers: {totals:?}\n{}", stderr(&out));
    assert!(totals.values().all(|b| *b > 0), "both providers must deliver: {totals:?}");
    assert!(totals.values().sum::<u64>() >= size, "{totals:?}");
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
