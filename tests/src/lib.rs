//! Support for the end-to-end tests: the real `chiral` binary and plugin files, real servers
//! (nginx, aria2c, curl) on loopback, fixture files, and third-party plugins built from a copy
//! outside the workspace.
//!
//! A missing third-party program fails the test with the package to install: tests never skip
//! silently (`.ci/run` installs everything).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

pub mod bt;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The folder holding `chiral` and the plugin libraries of the profile being tested
/// (`target/release` when the tests run with `--release`), or `$CHIRAL_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CHIRAL_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// Path of the `chiral` binary, checked to exist along with the HTTP plugin.
pub fn chiral_bin() -> PathBuf {
    let dir = bin_dir();
    let bin = dir.join("chiral");
    for p in [bin.clone(), dir.join("libchiral_plugin_http.so")] {
        assert!(
            p.exists(),
            "{} is missing: build the workspace first (`cargo build --release --workspace`; tests/run.sh does it)",
            p.display()
        );
    }
    bin
}

/// Finds a program on PATH (or in /usr/sbin, where nginx lives), or fails with what to install.
pub fn require(program: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found: `apt-get install -y {package}` (.ci/run installs it)"))
}

/// A fresh `chiral` command with its own data dir (several nodes can run side by side).
pub struct Chiral {
    pub data_dir: tempfile::TempDir,
}

impl Default for Chiral {
    fn default() -> Self {
        Self::new()
    }
}

impl Chiral {
    /// A node whose config turns the public DHTs off: tests stay on loopback. A test that
    /// wants a DHT writes its own `config/chiral/config.toml` (bootstrapped on loopback).
    pub fn new() -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let conf = data_dir.path().join("config/chiral");
        std::fs::create_dir_all(&conf).expect("config dir");
        std::fs::write(conf.join("config.toml"), "no_dht = true\n").expect("config");
        Self { data_dir }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(chiral_bin());
        c.env("CHIRAL_DATA_DIR", self.data_dir.path())
            .env_remove("CHIRAL_PLUGIN_PATH")
            .env("XDG_CONFIG_HOME", self.data_dir.path().join("config"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs to completion with a deadline; fails the test with stderr if it hangs.
    pub fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(self.cmd().args(args), Duration::from_secs(300))
    }
}

pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let stderr = String::from_utf8_lossy(&e.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} did not finish in {limit:?} ({status}); stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: o.join().unwrap_or_default(), stderr: e.join().unwrap_or_default() }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last non-empty stderr line (the one-line reason of a failure).
pub fn last_error_line(o: &Output) -> String {
    stderr(o).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string()
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits until something accepts on 127.0.0.1:`port`.
pub fn wait_port(port: u16, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Writes `size` bytes of incompressible data (xorshift seeded by `seed`) to `path`.
pub fn make_file(path: &Path, size: u64, seed: u64) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut x = seed | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// A child process killed when dropped, with its process group when it leads one (nginx's
/// workers outlive a killed master otherwise, holding its port).
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx serving `dir` on a free loopback port (sendfile, Range, one worker).
pub struct Nginx {
    pub port: u16,
    pub proc: Proc,
    conf: tempfile::TempDir,
}

impl Nginx {
    pub fn start(dir: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let nginx = require("nginx", "nginx-light");
        let conf = tempfile::tempdir().expect("temp");
        let port = free_port();
        let c = conf.path();
        std::fs::create_dir_all(c.join("tmp")).expect("mkdir");
        let text = format!(
            "daemon off;\nworker_processes 1;\npid {c}/nginx.pid;\nerror_log {c}/error.log warn;\n\
events {{ worker_connections 256; }}\n\
http {{\n access_log off;\n log_format paced '$body_bytes_sent';\n sendfile on;\n tcp_nopush on;\n keepalive_timeout 30;\n default_type application/octet-stream;\n\
 client_body_temp_path {c}/tmp/body;\n proxy_temp_path {c}/tmp/proxy;\n fastcgi_temp_path {c}/tmp/fastcgi;\n\
 uwsgi_temp_path {c}/tmp/uwsgi;\n scgi_temp_path {c}/tmp/scgi;\n\
 server {{ listen 127.0.0.1:{port}; root {root}; autoindex on;\n  location /slow/ {{ alias {root}/; limit_rate 8m; }}\n  location /capped/ {{ alias {root}/; limit_rate 64k; }}\n  location /paced/ {{ alias {root}/; limit_rate 100k; access_log {c}/paced.log paced; }}\n }}\n}}\n",
            c = c.display(),
            root = dir.display()
        );
        let user = if unsafe_is_root() { "user root;\n" } else { "" };
        std::fs::write(c.join("nginx.conf"), format!("{user}{text}")).expect("write conf");
        let log = c.join("stderr.log");
        let child = Command::new(nginx)
            .args(["-c", &c.join("nginx.conf").to_string_lossy(), "-p", &c.to_string_lossy()])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn nginx");
        let proc = Proc { child, name: "nginx".into(), log };
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "nginx did not listen on {port}: {} {}",
            proc.log_text(),
            std::fs::read_to_string(c.join("error.log")).unwrap_or_default()
        );
        Self { port, proc, conf }
    }

    /// The same file at 100 KiB/s per connection, every byte sent counted in
    /// [`paced_bytes_sent`](Self::paced_bytes_sent).
    pub fn paced_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/paced/{name}", self.port)
    }

    /// Body bytes sent through [`paced_url`](Self::paced_url)s, over the requests nginx has
    /// finished (a request cut short counts what it sent).
    pub fn paced_bytes_sent(&self) -> u64 {
        std::fs::read_to_string(self.conf.path().join("paced.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum()
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The same file through a location limited to 8 MB/s per connection (a slow mirror).
    pub fn slow_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/slow/{name}", self.port)
    }

    /// The same file limited to 64 KiB/s per request after a first 64 KiB (nginx's
    /// `limit_rate`): a 256 KiB range takes about 3 s.
    pub fn capped_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/capped/{name}", self.port)
    }
}

/// `width` consecutive loopback ports that are free now.
pub fn free_port_window(width: u16) -> (u16, u16) {
    for _ in 0..200 {
        let base = free_port();
        if base > 65_535 - width {
            continue;
        }
        if (base..base + width).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + width - 1);
        }
    }
    panic!("no window of {width} free ports");
}

/// pure-ftpd on a free loopback port with one virtual user (a PureDB file of its own, no PAM,
/// no system account: the user maps to `nobody`, or to the test's own uid when not root),
/// chrooted to `root`, anonymous logins refused, passive ports picked from free ones. Runs in
/// the foreground (no `-B`) in its own process group, all of it killed when dropped. `root`
/// is made world-readable; the files in it must be too (`make_file` leaves them 0644).
pub struct PureFtpd {
    pub port: u16,
    pub user: String,
    pub proc: Proc,
    _conf: tempfile::TempDir,
}

impl PureFtpd {
    pub fn start(root: &Path, user: &str, password: &str) -> Self {
        Self::start_with(root, user, password, &[])
    }

    /// [`start`](Self::start) with more pure-ftpd options (e.g. `--userbandwidth=KB/s`).
    pub fn start_with(root: &Path, user: &str, password: &str, extra: &[&str]) -> Self {
        use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
        let pure_ftpd = pure_ftpd_program("sbin/pure-ftpd");
        let pure_pw = pure_ftpd_program("bin/pure-pw");
        let openssl = require("openssl", "openssl");
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod root");
        let conf = tempfile::tempdir().expect("temp");
        let c = conf.path();
        // SHA-512 crypt instead of pure-pw's default argon2id (seconds per login here); the
        // password goes to openssl on stdin, never on a command line.
        let mut hasher = Command::new(openssl)
            .args(["passwd", "-6", "-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl");
        hasher.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("write password");
        let out = hasher.wait_with_output().expect("openssl passwd");
        assert!(out.status.success(), "openssl passwd: {}", String::from_utf8_lossy(&out.stderr));
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (uid, gid) = own_ids().filter(|(u, _)| *u != 0).unwrap_or((65_534, 65_534));
        // pure-pw's passwd format: user:hash:uid:gid:gecos:home (`/./` = chroot there), then
        // empty limits.
        let passwd = c.join("pureftpd.passwd");
        std::fs::write(&passwd, format!("{user}:{hash}:{uid}:{gid}::{}/./::::::::::::\n", root.display()))
            .expect("write passwd");
        let pdb = c.join("pureftpd.pdb");
        let out = Command::new(pure_pw)
            .arg("mkdb")
            .arg(&pdb)
            .arg("-f")
            .arg(&passwd)
            .stdin(Stdio::null())
            .output()
            .expect("pure-pw mkdb");
        assert!(out.status.success(), "pure-pw mkdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let (pasv_min, pasv_max) = free_port_window(40);
        let log = c.join("stderr.log");
        let child = Command::new(pure_ftpd)
            .arg(format!("--login=puredb:{}", pdb.display()))
            .arg(format!("--bind=127.0.0.1,{port}"))
            .arg(format!("--passiveportrange={pasv_min}:{pasv_max}"))
            .args(["--forcepassiveip=127.0.0.1", "--noanonymous", "--chrooteveryone", "--dontresolve"])
            .args(["--ipv4only", "--syslogfacility=none", "--maxclientsnumber=64", "--maxclientsperip=64"])
            .args(extra)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn pure-ftpd");
        let proc = Proc { child, name: "pure-ftpd".into(), log };
        let t0 = Instant::now();
        let greeting = loop {
            match ftp_greeting(port) {
                Some(line) => break line,
                None if t0.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("pure-ftpd did not greet on {port}: {}", proc.log_text()),
            }
        };
        assert!(greeting.starts_with("220"), "pure-ftpd greeted with {greeting:?}: {}", proc.log_text());
        Self { port, user: user.to_string(), proc, _conf: conf }
    }

    /// `ftp://USER:PASSWORD@127.0.0.1:PORT/PATH` (`password` as given: percent-encode it first
    /// if needed).
    pub fn url_with(&self, password: &str, path: &str) -> String {
        format!("ftp://{}:{password}@127.0.0.1:{}/{path}", self.user, self.port)
    }

    /// `ftp://127.0.0.1:PORT/PATH`, no credentials (the label `chiral` shows for any of them).
    pub fn url(&self, path: &str) -> String {
        format!("ftp://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for PureFtpd {
    fn drop(&mut self) {
        // The master and the per-session processes it forked share its process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.proc.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `usr/REL` of the pure-ftpd package that tests/install-deps.sh unpacked under
/// `target/test-tools` (installing it would remove vsftpd: both provide `ftp-server`), else of
/// a system install.
fn pure_ftpd_program(rel: &str) -> PathBuf {
    let unpacked = root().join("target/test-tools/pure-ftpd/usr").join(rel);
    if unpacked.is_file() {
        return unpacked;
    }
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{name} not found: `bash tests/install-deps.sh` unpacks pure-ftpd into {}", unpacked.display())
    })
}

/// The first reply line an FTP server sends on a new connection to 127.0.0.1:`port`, if it
/// accepts one and says something within a second.
fn ftp_greeting(port: u16) -> Option<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line).ok()?;
    Some(line.trim_end().to_string()).filter(|l| !l.is_empty())
}

/// This process's real uid and gid.
fn own_ids() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u32> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

fn unsafe_is_root() -> bool {
    // Root-run nginx workers drop to `nobody` unless told otherwise; test files live in
    // private temp dirs, so keep them as root.
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
            .unwrap_or(false)
}

/// Starts `chiral COMMAND ARGS...` (a long-running `seed` or `node`) and returns it with a
/// channel of the lines it prints on stdout, as they come.
pub fn spawn_printing(node: &Chiral, command: &str, args: &[&str]) -> (Proc, std::sync::mpsc::Receiver<String>) {
    spawn_printing_env(node, command, args, &[])
}

/// [`spawn_printing`] with more environment variables for the process.
pub fn spawn_printing_env(
    node: &Chiral,
    command: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let log = node.data_dir.path().join(format!("{command}-{}.stderr", free_port()));
    let mut cmd = node.cmd();
    cmd.envs(env.iter().copied()).arg(command).args(args);
    spawn_lines(cmd, &format!("chiral {command}"), log)
}

/// Starts `cmd` (stderr to `log`) and returns it with a channel of the lines it prints on
/// stdout, as they come.
pub fn spawn_lines(mut cmd: Command, name: &str, log: PathBuf) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let proc = Proc { child, name: name.to_string(), log };
    // Read lines as they come (the process keeps running, so no read_to_end).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while let Ok(1) = out.read(&mut byte) {
            if byte[0] == b'\n' {
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                buf.clear();
            } else {
                buf.push(byte[0]);
            }
        }
    });
    (proc, rx)
}

/// Starts `chiral seed ARGS...` and returns it with the identifiers it printed first.
pub fn start_seed(node: &Chiral, args: &[&str], expect_lines: usize) -> (Proc, Vec<String>) {
    let (proc, rx) = spawn_printing(node, "seed", args);
    let mut lines = Vec::new();
    while lines.len() < expect_lines {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("chiral seed printed {lines:?} then nothing; stderr:\n{}", proc.log_text()),
        }
    }
    (proc, lines)
}

/// Builds the third-party plugin in `tests/fixtures/gen-plugin` from a copy outside the
/// workspace, depending on `chiral-sdk` alone. With `sdk_version`, it builds against a copy of
/// the SDK carrying that version instead (a plugin made with another SDK). Returns the library.
pub fn build_fixture_plugin(tag: &str, sdk_version: Option<&str>) -> PathBuf {
    let work = std::env::temp_dir().join(format!("chiral-fixture-{tag}"));
    let _ = std::fs::remove_dir_all(&work);
    let plugin_dir = work.join("gen-plugin");
    copy_tree(&root().join("tests/fixtures/gen-plugin"), &plugin_dir);
    let sdk = match sdk_version {
        None => root().join("sdk"),
        Some(v) => {
            let copy = work.join("sdk");
            copy_tree(&root().join("sdk"), &copy);
            let toml = std::fs::read_to_string(copy.join("Cargo.toml")).expect("sdk toml");
            let toml = toml.replacen(
                &format!("version = \"{}\"", sdk_version_of_workspace()),
                &format!("version = \"{v}\""),
                1,
            );
            std::fs::write(copy.join("Cargo.toml"), toml).expect("write");
            copy
        }
    };
    build_gen_plugin(&work, &plugin_dir, &sdk)
}

/// The fixture plugin and the SDK exactly as they were at `commit` (from the repository's
/// history), built together: a plugin someone built against that release and never rebuilt.
pub fn build_released_fixture_plugin(commit: &str) -> PathBuf {
    let work = std::env::temp_dir().join(format!("chiral-fixture-at-{commit}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let archive = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["archive", "--format=tar", commit, "sdk", "tests/fixtures/gen-plugin"])
        .output()
        .expect("git runs");
    assert!(
        archive.status.success(),
        "the SDK as released at {commit} is read from the repository's history (a full clone): {}",
        stderr(&archive)
    );
    let tar = work.join("release.tar");
    std::fs::write(&tar, &archive.stdout).expect("write archive");
    let out = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&work).output().expect("tar runs");
    assert!(out.status.success(), "tar: {}", stderr(&out));
    build_gen_plugin(&work, &work.join("tests/fixtures/gen-plugin"), &work.join("sdk"))
}

/// Builds the gen plugin in `plugin_dir` against the SDK in `sdk`, outside the workspace, and
/// keeps a copy of the library in `work`.
fn build_gen_plugin(work: &Path, plugin_dir: &Path, sdk: &Path) -> PathBuf {
    let manifest = plugin_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest").replace("SDK_PATH", &sdk.to_string_lossy());
    std::fs::write(&manifest, text).expect("write");
    // Same dependency versions as the workspace, no network needed for resolution.
    let _ = std::fs::copy(root().join("Cargo.lock"), plugin_dir.join("Cargo.lock"));
    let target = root().join("target/fixtures");
    let out = run_with_timeout(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS"),
        Duration::from_secs(900),
    );
    assert!(out.status.success(), "building the fixture plugin failed:\n{}", stderr(&out));
    let lib = target.join("debug/libchiral_plugin_gen.so");
    // Each build gets its own copy: the next build overwrites the target file.
    let kept = work.join("libchiral_plugin_gen.so");
    std::fs::copy(&lib, &kept).expect("copy plugin");
    kept
}

fn sdk_version_of_workspace() -> String {
    let toml = std::fs::read_to_string(root().join("sdk/Cargo.toml")).expect("sdk toml");
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|r| r.strip_suffix('"')))
        .expect("sdk version line")
        .to_string()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        if p.is_dir() {
            copy_tree(&p, &to.join(name));
        } else {
            std::fs::copy(&p, to.join(name)).expect("copy");
        }
    }
}

/// Parses the `--json` output of a command.
pub fn json_of(o: &Output) -> serde_json::Value {
    let text = stdout(o);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}\nstderr: {}", stderr(o)))
}

/// Fraction of `total` bytes a download's `.chiral-resume` file records as verified (0 while
/// the file is missing or being replaced): lets a test act "half way" through a download.
pub fn resume_fraction(state: &Path, total: u64) -> f64 {
    let Ok(text) = std::fs::read_to_string(state) else { return 0.0 };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return 0.0 };
    let bits = hex::decode(v["done"].as_str().unwrap_or_default()).unwrap_or_default();
    let ones: u32 = bits.iter().map(|b| b.count_ones()).sum();
    ones as f64 * v["piece_length"].as_f64().unwrap_or(0.0) / total as f64
}

/// Polls `cond` every 20 ms until it holds (true) or `limit` passes (false).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Open files of a process, from /proc.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Raises this test process's soft open-files limit to what `want` needs (or the hard limit).
pub fn allow_open_files(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain get/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        assert!(lim.rlim_max >= want, "this test needs {want} open files; the hard limit is {}", lim.rlim_max);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

/// TCP connections to a loopback port that never send a byte (a listener's idle crowd).
pub struct IdleCrowd(Vec<std::net::TcpStream>);

impl IdleCrowd {
    /// `n` connections to 127.0.0.1:`port` (the test fails if one cannot connect).
    pub fn open(port: u16, n: usize) -> Self {
        let crowd: Vec<std::net::TcpStream> = (0..n)
            .map(|i| {
                std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
            })
            .collect();
        for s in &crowd {
            s.set_nonblocking(true).unwrap();
        }
        Self(crowd)
    }

    /// How many the other end has closed.
    pub fn closed(&self) -> usize {
        self.0.iter().filter(|s| closed_by_peer(s)).count()
    }
}

/// Whether the other end closed a nonblocking socket (end of file or reset; nothing to read
/// yet means open).
fn closed_by_peer(mut s: &std::net::TcpStream) -> bool {
    match std::io::Read::read(&mut s, &mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}
