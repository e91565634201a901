//! Both BitTorrent backends behind the same identifiers: the native `bittorrent` plugin and the
//! librqbit-based `rqbit` plugin, each chosen with `--backend NAME` / `--via NAME`, run through
//! the same suite against real peers on loopback (aria2c, transmission-daemon) and a tiny
//! HTTP tracker in this process; then both plugin files installed at once, and either one
//! removed.
//!
//! Needs: aria2, transmission-cli, transmission-daemon, mktorrent (Debian packages). A missing
//! program fails the test (never a skip).

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use chiral_tests::{bt::*, *};

const MIB: u64 = 1 << 20;

/// What a backend cannot do that the native one does. Each gap is asserted *present* for the
/// native backend and *absent* for the one listed, so closing a gap fails the test until this
/// list is updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// The BEP 10 `chiral` extension: peers' Chiral ids and wallets. Without it,
    /// `PaymentRequired` events carry the peer's address and `wallet: None`.
    ChiralExtension,
    /// Piece-level access (`SOURCE`): the host's multi-source engine cannot mix this backend's
    /// swarm with HTTP/FTP mirrors; the plugin runs its whole download itself (`mode: plugin`).
    PieceSource,
    /// `chiral create --private` / `--web-seed` (the rqbit plugin builds its own torrents, so
    /// it has both; kept so a backend that cannot is listed here).
    PrivateAndWebSeedCreate,
}

/// The gaps of each backend.
const GAPS: &[(&str, &[Gap])] = &[("bittorrent", &[]), ("rqbit", &[Gap::ChiralExtension, Gap::PieceSource])];

fn has_gap(backend: &str, gap: Gap) -> bool {
    GAPS.iter()
        .find(|(b, _)| *b == backend)
        .map(|(_, g)| g.contains(&gap))
        .unwrap_or_else(|| panic!("no GAPS entry for {backend}"))
}

/// Generates one `#[test]` per backend for each suite function `fn name(backend: &str)`.
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod native {
            $( #[test] fn $name() { super::$name("bittorrent") } )*
        }
        mod rqbit {
            $( #[test] fn $name() { super::$name("rqbit") } )*
        }
    };
}

per_backend!(
    torrent_and_magnet_from_an_aria2_seeder,
    torrent_and_magnet_from_a_transmission_seeder,
    aria2_downloads_from_chiral_seed,
    payment_required_between_two_chiral_nodes,
    create_honours_the_native_contract,
);

// ---------------------------------------------------------------- chiral helpers

/// `chiral get ID -o OUT --json --backend BACKEND [extra]`.
fn get(node: &Chiral, backend: &str, id: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["get", id, "-o", out.to_str().unwrap(), "--json", "--backend", backend];
    args.extend(extra);
    run_with_timeout(node.cmd().args(&args), Duration::from_secs(240))
}

/// Checks the download succeeded, has the right bytes and ran on `backend`; returns seconds.
fn assert_got(o: &Output, backend: &str, file: &Path, want: &str, what: &str) -> f64 {
    assert!(
        o.status.success(),
        "{what} (--backend {backend}): chiral get failed: {}\n{}",
        last_error_line(o),
        stderr(o)
    );
    assert_eq!(sha256_file(file), want, "{what} (--backend {backend}): sha256 differs");
    let v = json_of(o);
    let plugins: Vec<&str> =
        v["download"]["sources"].as_array().into_iter().flatten().filter_map(|s| s["plugin"].as_str()).collect();
    assert!(
        !plugins.is_empty() && plugins.iter().all(|p| *p == backend),
        "{what}: ran on {plugins:?}, not {backend}: {v}"
    );
    let mode = if has_gap(backend, Gap::PieceSource) { "plugin" } else { "engine" };
    assert_eq!(v["download"]["mode"], mode, "{what} (--backend {backend}): {v}");
    v["download"]["seconds"].as_f64().unwrap_or(0.0)
}

/// Writes the node's config file (`$XDG_CONFIG_HOME/chiral/config.toml`), keeping the public
/// DHTs off as every test node's default config does: tests stay on loopback.
fn write_config(node: &Chiral, text: &str) {
    let dir = node.data_dir.path().join("config/chiral");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), format!("no_dht = true\n{text}")).unwrap();
}

fn no_leftovers(out: &Path, what: &str) {
    let left: Vec<String> = std::fs::read_dir(out)
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{what}: temporary files left in {}: {left:?}", out.display());
}

// ---------------------------------------------------------------- the suite, per backend

fn torrent_and_magnet_from_an_aria2_seeder(backend: &str) {
    let tracker = Tracker::start();
    let f = fixture("a2.bin", 32 * MIB, 21);
    let tor = f.dir.path().join("a2.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &[]);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = get(&node, backend, tor.to_str().unwrap(), &out, &[]);
    let secs = assert_got(&o, backend, &out.join("a2.bin"), &f.sha, ".torrent from aria2");
    eprintln!("[{backend}] 32 MiB .torrent from aria2: {secs:.2}s");
    assert_eq!(json_of(&o)["download"]["bytes"], 32 * MIB);
    no_leftovers(&out, ".torrent from aria2");

    let magnet = format!("magnet:?xt=urn:btih:{}&tr={}", hex::encode(&ih), tracker.url());
    let out2 = node.data_dir.path().join("out-magnet");
    let o = get(&Chiral::new(), backend, &magnet, &out2, &[]);
    let secs = assert_got(&o, backend, &out2.join("a2.bin"), &f.sha, "magnet from aria2");
    eprintln!("[{backend}] 32 MiB magnet from aria2: {secs:.2}s");
    no_leftovers(&out2, "magnet from aria2");
    drop(seeder);
}

fn torrent_and_magnet_from_a_transmission_seeder(backend: &str) {
    let tracker = Tracker::start();
    let f = fixture("tr.bin", 16 * MIB, 22);
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
    let o = get(&node, backend, tor.to_str().unwrap(), &out, &[]);
    let secs = assert_got(&o, backend, &out.join("tr.bin"), &f.sha, ".torrent from Transmission");
    eprintln!("[{backend}] 16 MiB .torrent from Transmission: {secs:.2}s");

    // transmission keys peers by IP and refuses a 127.0.0.1 peer it saw finish (a seed):
    // a fresh seeder for the magnet.
    drop(seeder);
    let port = free_port();
    let seeder = TransmissionSeeder::start(&tor, f.dir.path(), port);
    assert!(
        tracker.wait_for(&ih, port, Duration::from_secs(60)),
        "transmission never announced: {}",
        seeder.proc.log_text()
    );
    let magnet = format!("magnet:?xt=urn:btih:{}&tr={}", hex::encode(&ih), tracker.url());
    let out2 = node.data_dir.path().join("out-magnet");
    let o = get(&Chiral::new(), backend, &magnet, &out2, &[]);
    let secs = assert_got(&o, backend, &out2.join("tr.bin"), &f.sha, "magnet from Transmission");
    eprintln!("[{backend}] 16 MiB magnet from Transmission: {secs:.2}s");
}

fn aria2_downloads_from_chiral_seed(backend: &str) {
    let tracker = Tracker::start();
    let f = fixture("served.bin", 16 * MIB, 23);
    let node = Chiral::new();
    let (seed, lines) =
        start_seed(&node, &[f.file.to_str().unwrap(), "--via", backend, "--tracker", &tracker.url()], 1);
    let magnet =
        lines.iter().find(|l| l.starts_with("magnet:")).unwrap_or_else(|| panic!("no magnet in {lines:?}")).clone();
    assert!(magnet.contains("tr="), "{magnet}");
    let ih = hex::decode(magnet.split("btih:").nth(1).unwrap().get(..40).unwrap()).unwrap();
    assert!(tracker.wait_any(&ih, Duration::from_secs(60)), "the {backend} seed never announced: {}", seed.log_text());
    let out = node.data_dir.path().join("aria2-out");
    let t0 = Instant::now();
    let (ok, log) = aria2_get(&magnet, &out, Duration::from_secs(120));
    assert!(ok, "aria2c failed from the {backend} seed: {log}\nseed: {}", seed.log_text());
    eprintln!("[{backend}] aria2c got 16 MiB from chiral seed --via {backend}: {:.2}s", t0.elapsed().as_secs_f64());
    let got = find_file(&out, "served.bin")
        .unwrap_or_else(|| panic!("aria2 wrote no served.bin: {:?}\n{log}", list_tree(&out)));
    assert_eq!(sha256_file(&got), f.sha);
}

fn list_tree(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(list_tree(&p));
        } else {
            v.push(format!("{} ({} bytes)", p.display(), e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
    v
}

/// Two chiral nodes on the same backend: a seed with a wallet, a download with a 64 KiB
/// payment threshold. Both backends emit `PaymentRequired`; only one with the chiral
/// extension knows the seeder's wallet.
fn payment_required_between_two_chiral_nodes(backend: &str) {
    let tracker = Tracker::start();
    let f = fixture("paid.bin", 4 * MIB, 24);
    let seed_node = Chiral::new();
    write_config(&seed_node, &format!("[plugins.{backend}]\nwallet = \"0xSEEDWALLET\"\n"));
    let (seed, lines) =
        start_seed(&seed_node, &[f.file.to_str().unwrap(), "--via", backend, "--tracker", &tracker.url()], 1);
    let magnet =
        lines.iter().find(|l| l.starts_with("magnet:")).unwrap_or_else(|| panic!("no magnet in {lines:?}")).clone();
    let node = Chiral::new();
    write_config(&node, &format!("[plugins.{backend}]\npayment_threshold = 65536\nwallet = \"0xLEECHWALLET\"\n"));
    let out = node.data_dir.path().join("out");
    // -vv: a PaymentRequired without a wallet is logged at debug level.
    let o = get(&node, backend, &magnet, &out, &["-vv"]);
    assert_got(&o, backend, &out.join("paid.bin"), &f.sha, "magnet from a chiral seed");
    let err = stderr(&o);
    let events: Vec<&str> = err.lines().filter(|l| l.contains("payment required")).collect();
    assert!(
        !events.is_empty(),
        "[{backend}] no PaymentRequired for 4 MiB at a 64 KiB threshold:\n{err}\nseed: {}",
        seed.log_text()
    );
    let wallet_seen = events.iter().any(|l| l.contains("0xSEEDWALLET"));
    if has_gap(backend, Gap::ChiralExtension) {
        assert!(!wallet_seen, "[{backend}] learned the seeder's wallet: remove Gap::ChiralExtension from GAPS");
        assert!(events.iter().all(|l| l.contains("127.0.0.1:")), "[{backend}] peers are named by address: {events:?}");
    } else {
        assert!(wallet_seen, "[{backend}] the chiral extension did not carry the seeder's wallet: {events:?}");
    }
}

/// `chiral create --via BACKEND`: a .torrent another client accepts, the native JSON answer.
fn create_honours_the_native_contract(backend: &str) {
    let tracker = Tracker::start();
    let f = fixture("made.bin", 3 * MIB, 25);
    let node = Chiral::new();
    let tor = f.dir.path().join("made.torrent");
    let o = node.run(&[
        "create",
        f.file.to_str().unwrap(),
        "-o",
        tor.to_str().unwrap(),
        "--tracker",
        &tracker.url(),
        "--via",
        backend,
        "--json",
    ]);
    assert!(o.status.success(), "[{backend}] chiral create: {}", last_error_line(&o));
    let v = json_of(&o);
    let c = &v["created"];
    assert_eq!(c["length"], 3 * MIB, "{v}");
    assert_eq!(c["name"], "made.bin", "{v}");
    assert_eq!(c["info_hash"].as_str().unwrap(), hex::encode(info_hash_of(&tor)), "{v}");
    assert!(c["magnet"].as_str().unwrap().contains("tr="), "{v}");
    assert!(c["pieces"].as_u64().unwrap() * c["piece_length"].as_u64().unwrap() >= 3 * MIB, "{v}");
    let private = tempfile::tempdir().unwrap();
    let o = node.run(&[
        "create",
        f.file.to_str().unwrap(),
        "-o",
        private.path().join("p.torrent").to_str().unwrap(),
        "--private",
        "--via",
        backend,
    ]);
    if has_gap(backend, Gap::PrivateAndWebSeedCreate) {
        assert!(
            !o.status.success(),
            "[{backend}] made a private torrent: remove Gap::PrivateAndWebSeedCreate from GAPS"
        );
        assert!(last_error_line(&o).contains("private"), "{}", last_error_line(&o));
    } else {
        assert!(o.status.success(), "[{backend}] chiral create --private: {}", last_error_line(&o));
    }
}

// ---------------------------------------------------------------- both installed at once

/// A self-contained install: a copy of `chiral` in its own folder (so the plugins beside
/// target/release are not found) and a plugin folder passed with `--plugin-path`.
struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    fn new(plugins: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::copy(chiral_bin(), dir.path().join("bin/chiral")).unwrap();
        for p in plugins {
            let name = format!("libchiral_plugin_{p}.so");
            let from = bin_dir().join(&name);
            assert!(
                from.exists(),
                "{} is missing: build it (`cargo build --release -p chiral-plugin-{p}`)",
                from.display()
            );
            std::fs::copy(&from, dir.path().join("plugins").join(&name)).unwrap();
        }
        Self { dir }
    }

    fn remove(&self, plugin: &str) {
        std::fs::remove_file(self.dir.path().join("plugins").join(format!("libchiral_plugin_{plugin}.so"))).unwrap();
    }

    fn run(&self, node: &Chiral, args: &[&str]) -> Output {
        let mut c = Command::new(self.dir.path().join("bin/chiral"));
        c.env("CHIRAL_DATA_DIR", node.data_dir.path())
            .env_remove("CHIRAL_PLUGIN_PATH")
            .env("XDG_CONFIG_HOME", node.data_dir.path().join("config"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .arg("--plugin-path")
            .arg(self.dir.path().join("plugins"))
            .args(args);
        run_with_timeout(&mut c, Duration::from_secs(240))
    }

    /// (loaded plugin names, winner of `magnet:`).
    fn plugins(&self, node: &Chiral) -> (Vec<String>, String) {
        let o = self.run(node, &["plugins", "--json"]);
        assert!(o.status.success(), "chiral plugins: {}", last_error_line(&o));
        let v = json_of(&o);
        let loaded = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "loaded")
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        (loaded, v["schemes"]["magnet"].as_str().unwrap_or_default().to_string())
    }

    /// Downloads `magnet` (no `--backend` unless given) and returns the plugin that ran it.
    fn get(&self, node: &Chiral, magnet: &str, f: &Fixture, tag: &str, backend: Option<&str>) -> String {
        let out = node.data_dir.path().join(format!("out-{tag}"));
        let mut args = vec!["get", magnet, "-o", out.to_str().unwrap(), "--json"];
        if let Some(b) = backend {
            args.extend(["--backend", b]);
        }
        let o = self.run(node, &args);
        assert!(o.status.success(), "{tag}: chiral get failed: {}", last_error_line(&o));
        assert_eq!(sha256_file(&out.join("both.bin")), f.sha, "{tag}: sha256 differs");
        let v = json_of(&o);
        v["download"]["sources"][0]["plugin"].as_str().unwrap_or_default().to_string()
    }
}

#[test]
fn both_backends_installed_at_once_and_removing_one_leaves_the_other_serving_magnet() {
    let tracker = Tracker::start();
    let f = fixture("both.bin", 8 * MIB, 26);
    let tor = f.dir.path().join("both.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &[]);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());
    let magnet = format!("magnet:?xt=urn:btih:{}&tr={}", hex::encode(&ih), tracker.url());

    let install = Install::new(&["bittorrent", "rqbit", "http"]);
    let node = Chiral::new();
    let (loaded, winner) = install.plugins(&node);
    for p in ["bittorrent", "rqbit", "http"] {
        assert!(loaded.iter().any(|l| l == p), "{p} not loaded: {loaded:?}");
    }
    assert_eq!(winner, "bittorrent", "the native backend must stay the default for magnet:");
    assert_eq!(install.get(&node, &magnet, &f, "default", None), "bittorrent");
    assert_eq!(install.get(&node, &magnet, &f, "flag", Some("rqbit")), "rqbit");
    // The config's [backend] table picks rqbit without a flag.
    let cfg_node = Chiral::new();
    write_config(&cfg_node, "[backend]\nmagnet = \"rqbit\"\n");
    assert_eq!(install.plugins(&cfg_node).1, "rqbit");
    assert_eq!(install.get(&cfg_node, &magnet, &f, "config", None), "rqbit");

    // Without the native plugin, rqbit serves magnet: by itself.
    install.remove("bittorrent");
    let (loaded, winner) = install.plugins(&node);
    assert!(!loaded.iter().any(|l| l == "bittorrent"), "{loaded:?}");
    assert_eq!(winner, "rqbit");
    assert_eq!(install.get(&node, &magnet, &f, "only-rqbit", None), "rqbit");

    // And the other way round.
    let install = Install::new(&["bittorrent", "http"]);
    let (loaded, winner) = install.plugins(&node);
    assert!(!loaded.iter().any(|l| l == "rqbit"), "{loaded:?}");
    assert_eq!(winner, "bittorrent");
    assert_eq!(install.get(&node, &magnet, &f, "only-native", None), "bittorrent");
    let o = install
        .run(&node, &["get", &magnet, "-o", node.data_dir.path().join("none").to_str().unwrap(), "--backend", "rqbit"]);
    assert!(!o.status.success(), "--backend rqbit worked without the rqbit plugin");
    assert!(last_error_line(&o).contains("rqbit"), "{}", last_error_line(&o));
    drop(seeder);
}
