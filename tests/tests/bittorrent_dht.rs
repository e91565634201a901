//! The native BitTorrent plugin's DHT (BEP 5) and web seeds (BEP 19) end to end, all on
//! loopback: `chiral` processes whose DHT nodes are bootstrapped from each other through the
//! config file (`[plugins.bittorrent] dht_bootstrap = [...]`), and an nginx web seed.
//!
//! Needs: nginx (nginx-light) for the web seed test.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chiral_tests::*;

const MIB: u64 = 1 << 20;

/// Writes the node's config file (XDG_CONFIG_HOME is `<data_dir>/config` for test nodes).
fn write_config(node: &Chiral, text: &str) {
    let dir = node.data_dir.path().join("config/chiral");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

fn dht_config(bootstrap: &[&str]) -> String {
    let list: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    format!("[plugins.bittorrent]\ndht_bootstrap = [{}]\n", list.join(", "))
}

/// Waits for a line of `proc`'s log containing `needle` and returns the word after it.
fn wait_log_word(proc: &Proc, needle: &str, limit: Duration) -> String {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let text = proc.log_text();
        if let Some(at) = text.find(needle) {
            let rest = &text[at + needle.len()..];
            return rest
                .split(|c: char| c.is_whitespace() || c == ',' || c == ')')
                .next()
                .unwrap_or_default()
                .to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} never logged {needle:?}:\n{}", proc.name, proc.log_text());
}

fn wait_log(proc: &Proc, needle: &str, limit: Duration) {
    wait_log_word(proc, needle, limit);
}

fn get(node: &Chiral, id: &str, out: &Path) -> std::process::Output {
    let args =
        ["get", id, "-o", out.to_str().unwrap(), "--json", "--backend", "bittorrent", "--listen", "127.0.0.1", "-v"];
    run_with_timeout(node.cmd().args(args), Duration::from_secs(240))
}

/// Three `chiral` processes on loopback: a DHT bootstrap node (a seed of another file, with
/// `dht_bootstrap = ["none"]`: the first node of a new network), seeder A bootstrapped from it,
/// and downloader B bootstrapped from A's DHT node only. B gets a magnet with no tracker and no
/// peer address: the DHT is the only way to find A, whose DHT node was first sent malformed KRPC.
#[test]
fn trackerless_magnet_completes_over_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let dummy = dir.path().join("dummy.bin");
    make_file(&dummy, 1000, 1);
    let file = dir.path().join("dht payload.bin");
    make_file(&file, 6 * MIB + 4321, 77);
    let want = sha256_file(&file);

    let boot = Chiral::new();
    write_config(&boot, &dht_config(&["none"]));
    let (boot_proc, _) =
        start_seed(&boot, &[dummy.to_str().unwrap(), "--via", "bittorrent", "--listen", "127.0.0.1", "-v"], 1);
    let boot_addr = wait_log_word(&boot_proc, "DHT node listening on ", Duration::from_secs(30));
    assert!(boot_addr.starts_with("127.0.0.1:"), "bootstrap node not on loopback: {boot_addr}");

    let a = Chiral::new();
    write_config(&a, &dht_config(&[&boot_addr]));
    let (seed, lines) =
        start_seed(&a, &[file.to_str().unwrap(), "--via", "bittorrent", "--listen", "127.0.0.1", "-v"], 1);
    // A's DHT address is on its seed log line.
    let a_dht = wait_log_word(&seed, ", DHT ", Duration::from_secs(30));
    assert!(a_dht.starts_with("127.0.0.1:") && a_dht != boot_addr, "seed's DHT address: {a_dht}");
    wait_log(&seed, "announced on the DHT", Duration::from_secs(90));

    // Malformed KRPC at A's DHT node first (KRPC is parsed by the mainline crate): garbage,
    // truncated and lying bencode, absurd length prefixes, deep nesting, wrong types, an
    // oversized datagram. The node must shrug them off and still serve B's lookup below.
    let junk: Vec<Vec<u8>> = vec![
        b"not bencode at all".to_vec(),
        b"d1:ad2:id20:".to_vec(),
        b"d1:t99999999999999999999:x1:y1:qe".to_vec(),
        format!("{}{}", "l".repeat(5000), "e".repeat(5000)).into_bytes(),
        b"d1:ai42e1:q4:ping1:t2:aa1:y1:qe".to_vec(),
        b"d1:ad2:id3:abc9:info_hash3:xyze1:q9:get_peers1:t2:bb1:y1:qe".to_vec(),
        b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes7:garbagee1:t2:cc1:y1:re".to_vec(),
        vec![0xff; 65000],
        Vec::new(),
    ];
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20 {
        for j in &junk {
            let _ = udp.send_to(j, &a_dht);
        }
    }

    let magnet = lines[0].trim();
    let hash = magnet.split("xt=urn:btih:").nth(1).unwrap().split('&').next().unwrap();
    assert_eq!(hash.len(), 40, "{magnet}");
    let bare = format!("magnet:?xt=urn:btih:{hash}");

    let b = Chiral::new();
    write_config(&b, &dht_config(&[&a_dht]));
    let out = dir.path().join("out");
    let t0 = Instant::now();
    let o = get(&b, &bare, &out);
    assert!(
        o.status.success(),
        "chiral get over the DHT failed: {}\n{}\nseed:\n{}\nbootstrap:\n{}",
        last_error_line(&o),
        stderr(&o),
        seed.log_text(),
        boot_proc.log_text()
    );
    assert_eq!(sha256_file(&out.join("dht payload.bin")), want);
    eprintln!("trackerless magnet over the DHT: {} bytes in {:.1}s", 6 * MIB + 4321, t0.elapsed().as_secs_f64());
    drop(seed);
    drop(boot_proc);
}

/// `--no-dht` turns the DHT off: the same bare magnet finds nobody and says why quickly enough
/// (checked through the seed's log line only, a full timeout would take minutes).
#[test]
fn no_dht_seed_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    make_file(&file, 100_000, 3);
    let a = Chiral::new();
    write_config(&a, &dht_config(&["none"]));
    let (seed, _) =
        start_seed(&a, &[file.to_str().unwrap(), "--via", "bittorrent", "--listen", "127.0.0.1", "--no-dht", "-v"], 1);
    wait_log(&seed, "DHT off", Duration::from_secs(30));
    assert!(!seed.log_text().contains("DHT node listening"), "{}", seed.log_text());
}

/// A torrent made with `chiral create --web-seed URL` downloads with no peer at all: the pieces
/// come from the nginx web seed (BEP 19), each checked against the torrent's hashes.
#[test]
fn web_seed_only_download() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    let file = www.join("web seeded.bin");
    make_file(&file, 5 * MIB + 777, 9);
    let want = sha256_file(&file);
    let nginx = Nginx::start(&www);
    let node = Chiral::new();
    let tor = dir.path().join("ws.torrent");
    let url = nginx.url("web%20seeded.bin");
    let o = node.run(&[
        "create",
        file.to_str().unwrap(),
        "-o",
        tor.to_str().unwrap(),
        "--web-seed",
        &url,
        "--piece-size",
        "262144",
    ]);
    assert!(o.status.success(), "chiral create: {}", last_error_line(&o));
    // Nothing else on the machine has this torrent, and the DHT is off.
    let out: PathBuf = dir.path().join("out");
    let t0 = Instant::now();
    let o = run_with_timeout(
        node.cmd().args([
            "get",
            tor.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
            "--backend",
            "bittorrent",
            "--no-dht",
        ]),
        Duration::from_secs(240),
    );
    assert!(
        o.status.success(),
        "web seed download failed: {}\n{}\nnginx: {}",
        last_error_line(&o),
        stderr(&o),
        nginx.proc.log_text()
    );
    assert_eq!(sha256_file(&out.join("web seeded.bin")), want);
    eprintln!("web seed only: {} bytes in {:.1}s", 5 * MIB + 777, t0.elapsed().as_secs_f64());
}
