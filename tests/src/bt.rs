//! BitTorrent test support shared by the BitTorrent suites: a tiny BEP 3/23 HTTP tracker in the
//! test process, torrents made by mktorrent, aria2c and Transmission peers on loopback.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::*;

// ---------------------------------------------------------------- a tiny tracker

pub type Swarms = Arc<Mutex<HashMap<Vec<u8>, HashMap<(String, u16), Instant>>>>;

/// A BEP 3 / BEP 23 HTTP tracker on 127.0.0.1 (compact peers, interval 5 s), in a thread; or
/// on `[::1]` (BEP 7: IPv6 peers as `peers6`).
pub struct Tracker {
    pub port: u16,
    /// The address it listens on, as written in a URL (`127.0.0.1` or `[::1]`).
    pub host: String,
    pub swarms: Swarms,
    /// Every announce as it came: the connection's source address and the port announced.
    pub announces: Arc<Mutex<Vec<(String, u16)>>>,
}

pub fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

impl Tracker {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// On IPv6 loopback: IPv6 peers are answered as `peers6` (BEP 7).
    pub fn start_v6() -> Self {
        Self::start_on("[::1]")
    }

    fn start_on(host: &str) -> Self {
        let l = TcpListener::bind(format!("{host}:0")).unwrap();
        let port = l.local_addr().unwrap().port();
        let swarms: Swarms = Arc::default();
        let announces: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
        let (s2, a2) = (swarms.clone(), announces.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (s3, a3) = (s2.clone(), a2.clone());
                std::thread::spawn(move || Tracker::serve(c, s3, a3));
            }
        });
        Self { port, host: host.to_string(), swarms, announces }
    }

    fn serve(mut c: TcpStream, swarms: Swarms, announces: Arc<Mutex<Vec<(String, u16)>>>) {
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&req).into_owned();
        let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (_, query) = target.split_once('?').unwrap_or((&target, ""));
        let mut q: HashMap<&str, Vec<u8>> = HashMap::new();
        for kv in query.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            q.insert(k, pct_decode(v));
        }
        let ip = c.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let body =
            match (q.get("info_hash"), q.get("port").and_then(|p| String::from_utf8_lossy(p).parse::<u16>().ok())) {
                (Some(ih), Some(port)) if ih.len() == 20 => {
                    let mut sw = swarms.lock().unwrap();
                    let peers = sw.entry(ih.clone()).or_default();
                    peers.retain(|_, t| t.elapsed() < Duration::from_secs(60));
                    let me = (ip.clone(), port);
                    announces.lock().unwrap().push(me.clone());
                    if q.get("event").map(|e| e.as_slice()) == Some(b"stopped") {
                        peers.remove(&me);
                    } else {
                        peers.insert(me.clone(), Instant::now());
                    }
                    let (mut compact, mut compact6) = (Vec::new(), Vec::new());
                    for (p_ip, p_port) in peers.keys().filter(|k| **k != me) {
                        match p_ip.parse::<std::net::IpAddr>() {
                            Ok(std::net::IpAddr::V4(v4)) => compact.extend_from_slice(&v4.octets()),
                            Ok(std::net::IpAddr::V6(v6)) => compact6.extend_from_slice(&v6.octets()),
                            Err(_) => continue,
                        }
                        let out = if p_ip.contains(':') { &mut compact6 } else { &mut compact };
                        out.extend_from_slice(&p_port.to_be_bytes());
                    }
                    let mut b = b"d8:intervali5e12:min intervali2e5:peers".to_vec();
                    b.extend_from_slice(format!("{}:", compact.len()).as_bytes());
                    b.extend_from_slice(&compact);
                    if !compact6.is_empty() {
                        b.extend_from_slice(format!("6:peers6{}:", compact6.len()).as_bytes());
                        b.extend_from_slice(&compact6);
                    }
                    b.push(b'e');
                    b
                }
                _ => b"d14:failure reason11:bad requeste".to_vec(),
            };
        let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(&body);
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}/announce", self.host, self.port)
    }

    pub fn ports(&self, info_hash: &[u8]) -> Vec<u16> {
        self.swarms.lock().unwrap().get(info_hash).map(|p| p.keys().map(|k| k.1).collect()).unwrap_or_default()
    }

    /// Every announce so far (any torrent): its source address and the port it announced.
    pub fn announces(&self) -> Vec<(String, u16)> {
        self.announces.lock().unwrap().clone()
    }

    /// Waits until the tracker lists 127.0.0.1:`port` for `info_hash`.
    pub fn wait_for(&self, info_hash: &[u8], port: u16, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.ports(info_hash).contains(&port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Waits until the tracker lists any peer for `info_hash`.
    pub fn wait_any(&self, info_hash: &[u8], limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if !self.ports(info_hash).is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Registers a peer by hand (a scripted peer that does not announce itself).
    pub fn add(&self, info_hash: &[u8], port: u16) {
        self.swarms
            .lock()
            .unwrap()
            .entry(info_hash.to_vec())
            .or_default()
            .insert(("127.0.0.1".into(), port), Instant::now() + Duration::from_secs(3600));
    }
}

// ---------------------------------------------------------------- torrents and fixtures

/// The info hash of a .torrent as transmission-show reports it (not the plugin's own parser).
pub fn info_hash_of(torrent: &Path) -> Vec<u8> {
    let out = Command::new(require("transmission-show", "transmission-cli")).arg(torrent).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hex_hash = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Hash:").map(|h| h.trim().to_string()))
        .unwrap_or_else(|| panic!("transmission-show gave no hash: {text}"));
    hex::decode(hex_hash).unwrap()
}

pub fn mktorrent(file: &Path, torrent: &Path, tracker: &str, piece_log2: u32, private: bool) {
    let mut c = Command::new(require("mktorrent", "mktorrent"));
    c.args(["-a", tracker, "-l", &piece_log2.to_string(), "-o"]).arg(torrent);
    if private {
        c.arg("-p");
    }
    let out = c.arg(file).output().unwrap();
    assert!(out.status.success(), "mktorrent: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn spawn_logged(cmd: &mut Command, name: &str, log: PathBuf) -> Proc {
    let f = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Proc { child, name: name.into(), log }
}

/// aria2c seeding `torrent` whose data is in `dir`, listening on `port`.
pub fn aria2_seed(torrent: &Path, dir: &Path, port: u16, extra: &[&str]) -> Proc {
    let aria2 = require("aria2c", "aria2");
    let log = dir.join(format!("aria2-seed-{port}.log"));
    let mut c = Command::new(aria2);
    c.args([
        "--interface=127.0.0.1",
        "--disable-ipv6=true",
        "--check-integrity=true",
        "--seed-ratio=0.0",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--bt-require-crypto=false",
        "--file-allocation=none",
        "--summary-interval=0",
        "--auto-save-interval=0",
        "--console-log-level=notice",
    ])
    .arg(format!("--listen-port={port}"))
    .arg(format!("--dir={}", dir.display()))
    .args(extra)
    .arg(torrent);
    spawn_logged(&mut c, "aria2c seeder", log)
}

/// aria2c downloading `id` (a .torrent or magnet) into `out`; returns its exit status and log.
pub fn aria2_get(id: &str, out: &Path, limit: Duration) -> (bool, String) {
    aria2_get_with(id, out, limit, &[])
}

/// [`aria2_get`] with more aria2c options (later ones win, e.g. `--bt-require-crypto=true`).
pub fn aria2_get_with(id: &str, out: &Path, limit: Duration, extra: &[&str]) -> (bool, String) {
    let aria2 = require("aria2c", "aria2");
    std::fs::create_dir_all(out).unwrap();
    let port = free_port();
    let o = run_with_timeout(
        Command::new(aria2)
            .args([
                "--interface=127.0.0.1",
                "--disable-ipv6=true",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--bt-require-crypto=false",
                "--seed-time=0",
                "--file-allocation=none",
                "--summary-interval=0",
                "--console-log-level=warn",
                "--bt-tracker-interval=5",
            ])
            .arg(format!("--listen-port={port}"))
            .arg(format!("--dir={}", out.display()))
            .arg(format!("--bt-stop-timeout={}", limit.as_secs()))
            .args(extra)
            .arg(id),
        limit + Duration::from_secs(10),
    );
    (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
}

/// A torrent of `path` (a file or folder) announced to `tracker` and seeded by aria2c (with
/// `extra` options), once the tracker lists it: the torrent, its info hash and the seeder.
pub fn aria2_swarm(path: &Path, tracker: &Tracker, piece_log2: u32, extra: &[&str]) -> (PathBuf, Vec<u8>, Proc) {
    let dir = path.parent().expect("a parent folder");
    let name = path.file_name().expect("a name").to_string_lossy();
    let tor = dir.join(format!("{name}.torrent"));
    mktorrent(path, &tor, &tracker.url(), piece_log2, false);
    let ih = info_hash_of(&tor);
    let port = free_port();
    let seeder = aria2_seed(&tor, dir, port, extra);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());
    (tor, ih, seeder)
}

pub fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, suffix) {
                return Some(f);
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            return Some(p);
        }
    }
    None
}

/// transmission-daemon seeding `torrent` (data in `dir`) on `port`, waited until Seeding.
pub struct TransmissionSeeder {
    pub proc: Proc,
    _conf: tempfile::TempDir,
}

impl TransmissionSeeder {
    pub fn start(torrent: &Path, dir: &Path, port: u16) -> Self {
        Self::start_with(torrent, dir, port, 0)
    }

    /// Seeding with protocol encryption required (`"encryption": 2`): plaintext peers refused.
    pub fn start_requiring_encryption(torrent: &Path, dir: &Path, port: u16) -> Self {
        Self::start_with(torrent, dir, port, 2)
    }

    fn start_with(torrent: &Path, dir: &Path, port: u16, encryption: u8) -> Self {
        let daemon = require("transmission-daemon", "transmission-daemon");
        let remote = require("transmission-remote", "transmission-cli");
        let conf = tempfile::tempdir().unwrap();
        let rpc = free_port();
        let settings = format!(
            r#"{{"bind-address-ipv4":"127.0.0.1","bind-address-ipv6":"::1","peer-port":{port},"peer-port-random-on-start":false,
"port-forwarding-enabled":false,"dht-enabled":false,"lpd-enabled":false,"pex-enabled":false,"utp-enabled":false,
"blocklist-enabled":false,"encryption":{encryption},"download-dir":"{dir}","incomplete-dir-enabled":false,"start-added-torrents":true,
"speed-limit-up-enabled":false,"speed-limit-down-enabled":false,"alt-speed-enabled":false,"ratio-limit-enabled":false,
"idle-seeding-limit-enabled":false,"cache-size-mb":64,"rpc-enabled":true,"rpc-bind-address":"127.0.0.1","rpc-port":{rpc},
"rpc-authentication-required":false,"rpc-whitelist-enabled":true,"rpc-whitelist":"127.0.0.1","rpc-host-whitelist-enabled":false,"message-level":2}}"#,
            dir = dir.display()
        );
        std::fs::write(conf.path().join("settings.json"), settings).unwrap();
        let proc = spawn_logged(
            Command::new(daemon).arg("-f").arg("-g").arg(conf.path()),
            "transmission-daemon",
            conf.path().join("daemon.log"),
        );
        assert!(
            wait_port(rpc, Duration::from_secs(15)),
            "transmission-daemon RPC did not come up: {}",
            proc.log_text()
        );
        let target = format!("127.0.0.1:{rpc}");
        let add = Command::new(&remote).args([&target, "-a"]).arg(torrent).arg("-w").arg(dir).output().unwrap();
        assert!(add.status.success(), "transmission-remote -a: {}", String::from_utf8_lossy(&add.stderr));
        let t0 = Instant::now();
        let mut ok = 0;
        loop {
            let l = Command::new(&remote).args([&target, "-l"]).output().unwrap();
            let text = String::from_utf8_lossy(&l.stdout).into_owned();
            let line = text.lines().nth(1).unwrap_or_default().to_string();
            if line.contains("100%") && (line.contains("Seeding") || line.contains("Idle")) {
                ok += 1;
                if ok >= 2 {
                    break;
                }
            } else {
                ok = 0;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "transmission never reached 100%: {line}\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        Self { proc, _conf: conf }
    }
}

/// transmission-cli downloading `torrent`, started first and waited until the tracker lists it:
/// transmission never dials loopback peers, so the seeder started next must dial it.
pub struct TransmissionLeecher {
    pub proc: Proc,
    pub mark: PathBuf,
    pub out: PathBuf,
    _conf: tempfile::TempDir,
}

impl TransmissionLeecher {
    pub fn start(torrent: &Path, tracker: &Tracker, info_hash: &[u8]) -> Self {
        Self::start_with(torrent, tracker, info_hash, false)
    }

    /// Leeching with protocol encryption required (`-er`): plaintext peers refused.
    pub fn start_requiring_encryption(torrent: &Path, tracker: &Tracker, info_hash: &[u8]) -> Self {
        Self::start_with(torrent, tracker, info_hash, true)
    }

    fn start_with(torrent: &Path, tracker: &Tracker, info_hash: &[u8], require_encryption: bool) -> Self {
        let cli = require("transmission-cli", "transmission-cli");
        let conf = tempfile::tempdir().unwrap();
        let encryption = if require_encryption { 2 } else { 0 };
        std::fs::write(
            conf.path().join("settings.json"),
            format!(
                r#"{{"bind-address-ipv4":"127.0.0.1","dht-enabled":false,"lpd-enabled":false,"pex-enabled":false,"utp-enabled":false,
"port-forwarding-enabled":false,"blocklist-enabled":false,"encryption":{encryption},"speed-limit-up-enabled":false,"speed-limit-down-enabled":false,"message-level":1}}"#
            ),
        )
        .unwrap();
        // The completion hook touches a file: the event the test waits for.
        let mark = conf.path().join("finished");
        let hook = conf.path().join("done.sh");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch '{}'\n", mark.display())).unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = conf.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let port = free_port();
        let proc = spawn_logged(
            Command::new(cli)
                .arg("-g")
                .arg(conf.path())
                .arg("-w")
                .arg(&out)
                .args(["-p", &port.to_string(), "-M", "-D", "-U", if require_encryption { "-er" } else { "-ep" }, "-f"])
                .arg(&hook)
                .arg(torrent),
            "transmission-cli",
            conf.path().join("cli.log"),
        );
        assert!(
            tracker.wait_for(info_hash, port, Duration::from_secs(60)),
            "transmission-cli never announced: {}",
            proc.log_text()
        );
        Self { proc, mark, out, _conf: conf }
    }

    pub fn wait_done(&self, seed: &Proc) {
        let t0 = Instant::now();
        while !self.mark.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(150),
                "transmission-cli did not finish: {}\nseed: {}",
                self.proc.log_text(),
                seed.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub sha: String,
}

pub fn fixture(name: &str, size: u64, seed: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    make_file(&file, size, seed);
    let sha = sha256_file(&file);
    Fixture { dir, file, sha }
}

/// microsocks (a real SOCKS5 server) on a free loopback port, its outgoing connections from
/// 127.0.0.9 (so a server can tell a proxied connection from a direct one).
pub fn microsocks() -> (Proc, u16) {
    let bin = require("microsocks", "microsocks");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let mut c = Command::new(bin);
    c.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-b", "127.0.0.9"]);
    let p = spawn_logged(&mut c, "microsocks", dir.join("microsocks.log"));
    assert!(wait_port(port, Duration::from_secs(10)), "microsocks did not start: {}", p.log_text());
    (p, port)
}

/// Dante (`danted`), a SOCKS5 server that also relays UDP (`UDP ASSOCIATE`), on a free
/// loopback port, its outgoing side from 127.0.0.9; no login.
pub fn dante() -> (Proc, u16) {
    let bin = require("danted", "dante-server");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    let users = if root { "user.privileged: root\nuser.unprivileged: nobody\n" } else { "" };
    let conf = format!(
        "logoutput: {log}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.9\n\
         socksmethod: none\nclientmethod: none\n{users}\
         client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n\
         socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: bind connect udpassociate bindreply udpreply }}\n",
        log = dir.join("danted.log").display()
    );
    let conf_path = dir.join("danted.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut c = Command::new(bin);
    c.arg("-f").arg(&conf_path).args(["-N", "1"]);
    let p = spawn_logged(&mut c, "danted", dir.join("danted.out"));
    assert!(wait_port(port, Duration::from_secs(10)), "danted did not start: {}", p.log_text());
    (p, port)
}

/// opentracker on 127.0.0.1 serving `info_hashes` (Debian builds it with a whitelist): its UDP
/// (BEP 15) port.
pub fn opentracker(info_hashes: &[&[u8]]) -> (Proc, u16) {
    let bin = require("opentracker", "opentracker");
    let (tcp, udp) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap().keep();
    let list: String = info_hashes.iter().map(|h| format!("{}\n", hex::encode(h))).collect();
    std::fs::write(dir.join("whitelist"), list).unwrap();
    let mut c = Command::new(bin);
    c.current_dir(&dir).args(["-i", "127.0.0.1", "-p", &tcp.to_string(), "-P", &udp.to_string(), "-w"]);
    c.arg(dir.join("whitelist"));
    let p = spawn_logged(&mut c, "opentracker", dir.join("opentracker.log"));
    assert!(wait_port(tcp, Duration::from_secs(10)), "opentracker did not start: {}", p.log_text());
    (p, udp)
}
