//! The FTP plugin end to end: the real `chiral` against a real vsftpd on loopback (anonymous,
//! and over explicit TLS), mixed with nginx as an HTTP mirror, and `chiral seed --via ftp`
//! fetched by curl and aria2c.
//!
//! Logins with a user and password run against pure-ftpd with a virtual user (`PureFtpd`):
//! vsftpd's local users need a PAM service in /etc/pam.d, and with the sandbox off
//! (`isolate=NO`, as root in a container) its privileged helper stalls at the first passive
//! data connection of a local-user session.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use chiral_tests::*;

const MIB: u64 = 1 << 20;

/// vsftpd serving `root` on a free loopback port, passive ports picked from free ones, killed
/// when dropped (by its `Proc`). Runs as root (as the tests do): no seccomp or namespace sandbox.
struct Vsftpd {
    port: u16,
    proc: Proc,
    conf: tempfile::TempDir,
}

impl Vsftpd {
    /// Anonymous read-only access to `root`; `extra` lines are appended to the config.
    fn start(root: &Path, extra: &str) -> Self {
        let vsftpd = require("vsftpd", "vsftpd");
        std::fs::create_dir_all("/var/run/vsftpd/empty").expect("secure_chroot_dir");
        // The anonymous root must be readable by the `ftp` user and not writable by it.
        set_mode(root, 0o755);
        let conf = tempfile::tempdir().expect("temp");
        let port = free_port();
        let (pasv_min, pasv_max) = free_port_window(40);
        let c = conf.path();
        let text = format!(
            "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
anonymous_enable=YES\nno_anon_password=YES\nanon_root={root}\nlocal_enable=NO\nwrite_enable=NO\n\
anon_upload_enable=NO\nanon_mkdir_write_enable=NO\npasv_enable=YES\nport_enable=NO\n\
pasv_address=127.0.0.1\npasv_min_port={pasv_min}\npasv_max_port={pasv_max}\npasv_promiscuous=NO\n\
connect_from_port_20=NO\nmax_clients=64\nmax_per_ip=32\nuse_sendfile=YES\ndirmessage_enable=NO\n\
xferlog_enable=NO\ndual_log_enable=NO\nsyslog_enable=NO\nvsftpd_log_file={c}/vsftpd.log\n\
seccomp_sandbox=NO\nisolate=NO\nisolate_network=NO\nsecure_chroot_dir=/var/run/vsftpd/empty\n\
ftp_username=ftp\nidle_session_timeout=120\ndata_connection_timeout=120\n{extra}\n",
            root = root.display(),
            c = c.display(),
        );
        // `extra` comes last: a later line overrides an earlier one.
        let path = c.join("vsftpd.conf");
        std::fs::write(&path, text).expect("write conf");
        set_mode(&path, 0o600);
        let log = c.join("stderr.log");
        let child = Command::new(vsftpd)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn vsftpd");
        let proc = Proc { child, name: "vsftpd".into(), log };
        assert!(wait_port(port, Duration::from_secs(10)), "vsftpd did not listen on {port}: {}", proc.log_text());
        Self { port, proc, conf }
    }

    fn url(&self, path: &str) -> String {
        format!("ftp://127.0.0.1:{}/{path}", self.port)
    }

    fn logs(&self) -> String {
        format!(
            "{}{}",
            self.proc.log_text(),
            std::fs::read_to_string(self.conf.path().join("vsftpd.log")).unwrap_or_default()
        )
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

struct Site {
    dir: tempfile::TempDir,
    ftp: Vsftpd,
}

fn site(files: &[(&str, u64)], extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, size)) in files.iter().enumerate() {
        make_file(&dir.path().join(name), *size, 2000 + i as u64);
    }
    let ftp = Vsftpd::start(dir.path(), extra);
    Site { dir, ftp }
}

fn all_output(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn get(node: &Chiral, args: &[&str]) -> Output {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    node.run(&full)
}

#[test]
fn a_256_mib_file_with_one_and_four_connections() {
    let s = site(&[("big.bin", 256 * MIB)], "");
    let want = sha256_file(&s.dir.path().join("big.bin"));
    let node = Chiral::new();
    for n in ["1", "4"] {
        let out_dir = node.data_dir.path().join(format!("out{n}"));
        let t0 = Instant::now();
        let out = get(&node, &[&s.ftp.url("big.bin"), "-o", out_dir.to_str().unwrap(), "--connections", n, "--json"]);
        let secs = t0.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}\nvsftpd: {}", stderr(&out), s.ftp.logs());
        eprintln!("256 MiB over FTP with {n} connection(s): {secs:.2}s ({:.0} MB/s)", 256.0 * 1.048_576 / secs);
        assert_eq!(sha256_file(&out_dir.join("big.bin")), want);
        let v = json_of(&out);
        assert_eq!(v["download"]["mode"], "engine");
        assert_eq!(v["download"]["bytes"], 256 * MIB);
        assert_eq!(v["download"]["sources"][0]["plugin"], "ftp");
        assert_eq!(v["download"]["sources"][0]["bytes"], 256 * MIB);
        assert_eq!(v["download"]["sources"][0]["label"], s.ftp.url("big.bin"));
        assert!(!out_dir.join("big.bin.part").exists() && !out_dir.join("big.bin.chiral-resume").exists());
    }
}

#[test]
fn a_1_gib_file_with_four_connections() {
    let s = site(&[("huge.bin", 1024 * MIB)], "");
    let want = sha256_file(&s.dir.path().join("huge.bin"));
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let t0 = Instant::now();
    let out =
        get(&node, &[&s.ftp.url("huge.bin"), "-o", out_dir.to_str().unwrap(), "--connections", "4", "--sha256", &want]);
    let secs = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}\nvsftpd: {}", stderr(&out), s.ftp.logs());
    eprintln!("1 GiB over FTP with 4 connections (and --sha256): {secs:.2}s");
    assert_eq!(sha256_file(&out_dir.join("huge.bin")), want);
}

#[test]
fn missing_file_and_refused_login_are_one_line_errors_without_the_password() {
    let s = site(&[("here.bin", MIB)], "");
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let out = get(&node, &[&s.ftp.url("missing.bin"), "-o", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let line = last_error_line(&out);
    assert!(line.contains("no such file") && line.contains("550"), "{line}");
    assert!(!out_dir.join("missing.bin").exists());

    for json in [false, true] {
        let url = format!("ftp://nobody:s3cr3tpw@127.0.0.1:{}/here.bin", s.ftp.port);
        let mut args = vec![url.as_str(), "-o", out_dir.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = get(&node, &args);
        assert!(!out.status.success());
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(last_error_line(&out).contains("login refused"), "{}", stderr(&out));
        assert!(!all_output(&out).contains("s3cr3tpw"), "{}", all_output(&out));
        if json {
            assert_eq!(json_of(&out)["ok"], false);
        }
        assert!(!out_dir.join("here.bin").exists());
    }

    // Nothing listens: refused, one line.
    let dead = format!("ftp://u:s3cr3tpw@127.0.0.1:{}/x.bin", free_port());
    let out = get(&node, &[&dead, "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    assert!(json_of(&out)["error"].as_str().unwrap().contains("refused"), "{}", stdout(&out));
    assert!(!all_output(&out).contains("s3cr3tpw"));
}

#[test]
fn killed_half_way_resumes_instead_of_starting_over() {
    // 4 MB/s per session: slow enough to be killed part way.
    let s = site(&[("resume.bin", 128 * MIB)], "anon_max_rate=4000000");
    let want = sha256_file(&s.dir.path().join("resume.bin"));
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let url = s.ftp.url("resume.bin");
    let mut child = node
        .cmd()
        .args(["get", &url, "-o", out_dir.to_str().unwrap(), "-q", "--connections", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = out_dir.join("resume.bin.chiral-resume");
    let t0 = Instant::now();
    let done_fraction = || resume_fraction(&state, 128 * MIB);
    while done_fraction() < 0.3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress recorded in {}", state.display());
        assert!(child.try_wait().unwrap().is_none(), "download ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no chance to tidy up
    child.wait().unwrap();
    let before = done_fraction();
    assert!(before < 0.95, "killed too late ({before})");
    assert!(!out_dir.join("resume.bin").exists(), "no file at the final name while incomplete");
    assert!(out_dir.join("resume.bin.part").exists());

    let out = get(&node, &[&url, "-o", out_dir.to_str().unwrap(), "--json", "--connections", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    let resumed = v["download"]["resumed_bytes"].as_u64().unwrap();
    let fetched = v["download"]["sources"][0]["bytes"].as_u64().unwrap();
    assert!(resumed as f64 >= 0.25 * (128 * MIB) as f64, "resumed only {resumed}");
    assert_eq!(resumed + fetched, 128 * MIB, "every byte fetched once: resumed {resumed} + fetched {fetched}");
    assert_eq!(sha256_file(&out_dir.join("resume.bin")), want);
}

#[test]
fn ftp_and_http_mirrors_share_one_download() {
    let s = site(&[("m.bin", 256 * MIB)], "");
    let nginx = Nginx::start(s.dir.path());
    let want = sha256_file(&s.dir.path().join("m.bin"));
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let out = get(
        &node,
        &[&s.ftp.url("m.bin"), &nginx.url("m.bin"), "-o", out_dir.to_str().unwrap(), "--json", "--connections", "4"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    let sources = v["download"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    let mut plugins: Vec<&str> = sources.iter().map(|s| s["plugin"].as_str().unwrap()).collect();
    plugins.sort();
    assert_eq!(plugins, ["ftp", "http"]);
    let bytes: Vec<u64> = sources.iter().map(|s| s["bytes"].as_u64().unwrap()).collect();
    assert!(bytes.iter().all(|b| *b > 0), "both mirrors used: {bytes:?}");
    assert_eq!(bytes.iter().sum::<u64>(), 256 * MIB);
    assert_eq!(sha256_file(&out_dir.join("m.bin")), want);
}

#[test]
fn a_folder_url_downloads_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_file(&tree.join("a.bin"), 3 * MIB + 5, 1);
    make_file(&tree.join("sub dir/b file.bin"), 700_000, 2);
    make_file(&tree.join("sub dir/deeper/c.bin"), 10, 3);
    std::fs::write(tree.join("empty.txt"), b"").unwrap();
    for d in [tree.clone(), tree.join("sub dir"), tree.join("sub dir/deeper")] {
        set_mode(&d, 0o755);
    }
    let ftp = Vsftpd::start(dir.path(), "");
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let out = get(&node, &[&ftp.url("tree/"), "-o", out_dir.to_str().unwrap(), "--json", "--connections", "3"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), ftp.logs());
    for rel in ["a.bin", "sub dir/b file.bin", "sub dir/deeper/c.bin", "empty.txt"] {
        assert_eq!(sha256_file(&out_dir.join("tree").join(rel)), sha256_file(&tree.join(rel)), "{rel}");
    }
    assert_eq!(json_of(&out)["download"]["files"].as_array().unwrap().len(), 4);
    // Without the trailing slash it is still the folder.
    let out2 = node.data_dir.path().join("out2");
    let out = get(&node, &[&ftp.url("tree"), "-o", out2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out2.join("tree/sub dir/b file.bin")), sha256_file(&tree.join("sub dir/b file.bin")));
}

#[test]
fn seeded_file_is_fetched_intact_by_curl_and_aria2c() {
    let curl = require("curl", "curl");
    let aria2c = require("aria2c", "aria2");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed me.bin");
    make_file(&file, 64 * MIB + 12345, 42);
    let want = sha256_file(&file);
    let node = Chiral::new();
    let (seed, lines) = start_seed(&node, &[file.to_str().unwrap(), "--via", "ftp", "--listen", "127.0.0.1"], 1);
    let url = lines[0].clone();
    assert!(url.starts_with("ftp://127.0.0.1:") && url.ends_with("/seed%20me.bin"), "{url}");

    let got = dir.path().join("curl.bin");
    let out = Command::new(curl).args(["-sSf", "-o"]).arg(&got).arg(&url).output().unwrap();
    assert!(out.status.success(), "curl: {}\nseed: {}", stderr(&out), seed.log_text());
    assert_eq!(sha256_file(&got), want);

    let aria_dir = dir.path().join("aria");
    let out = Command::new(aria2c)
        .args([
            "-x4",
            "-s4",
            "-k1M",
            "--allow-overwrite=true",
            "--console-log-level=warn",
            "--summary-interval=0",
            "-d",
        ])
        .arg(&aria_dir)
        .args(["-o", "aria.bin", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "aria2c: {}\nseed: {}", stdout(&out), seed.log_text());
    assert_eq!(sha256_file(&aria_dir.join("aria.bin")), want);

    // And chiral itself, with several connections.
    let out_dir = dir.path().join("chiral");
    let out = get(&node, &[&url, "-o", out_dir.to_str().unwrap(), "--connections", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("seed me.bin")), want);
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = require("openssl", "openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=chiral test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn ftps_explicit_tls_with_vsftpd() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    make_file(&root.join("tls.bin"), 32 * MIB + 3, 7);
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, cert, key) = make_certs(&certs);
    let ftp = Vsftpd::start(
        &root,
        &format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\nforce_anon_data_ssl=YES\n\
rsa_cert_file={}\nrsa_private_key_file={}\nssl_ciphers=HIGH\nrequire_ssl_reuse=NO\nssl_tlsv1=YES\nssl_sslv2=NO\nssl_sslv3=NO",
            cert.display(),
            key.display()
        ),
    );
    let node = Chiral::new();
    let url = format!("ftps://127.0.0.1:{}/tls.bin", ftp.port);
    let out_dir = node.data_dir.path().join("out");
    let out = run_with_timeout(
        node.cmd()
            .args(["get", &url, "-o", out_dir.to_str().unwrap(), "--connections", "4", "--json"])
            .env("CHIRAL_FTP_CA_FILE", &ca),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), ftp.logs());
    assert_eq!(sha256_file(&out_dir.join("tls.bin")), sha256_file(&root.join("tls.bin")));

    // Without the CA the certificate is not trusted: one line, no file.
    let out2 = node.data_dir.path().join("out2");
    let out = get(&node, &[&url, "-o", out2.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(last_error_line(&out).contains("TLS"), "{}", stderr(&out));
    assert!(!out2.join("tls.bin").exists());

    // Plain FTP to a server that insists on TLS: refused, one line.
    let out = get(&node, &[&format!("ftp://127.0.0.1:{}/tls.bin", ftp.port), "-o", out2.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!out2.join("tls.bin").exists());
}

/// The virtual user's password: `:` and `@` must be percent-encoded in a URL and decoded by
/// the plugin.
const PASSWORD: &str = "Pa55:w@rd-7Kq";
const PASSWORD_IN_URL: &str = "Pa55%3Aw%40rd-7Kq";
const USER: &str = "chiraltest";

/// Fails when the password shows anywhere in what `chiral` printed, in either spelling.
fn assert_no_password(out: &Output, password: &str, encoded: &str) {
    let all = all_output(out);
    assert!(!all.contains(password) && !all.contains(encoded), "password printed:\n{all}");
}

struct UserSite {
    dir: tempfile::TempDir,
    ftp: PureFtpd,
    sha: String,
}

fn user_site(name: &str, size: u64) -> UserSite {
    let dir = tempfile::tempdir().unwrap();
    make_file(&dir.path().join(name), size, 3000);
    let sha = sha256_file(&dir.path().join(name));
    let ftp = PureFtpd::start(dir.path(), USER, PASSWORD);
    UserSite { dir, ftp, sha }
}

#[test]
fn pure_ftpd_password_login_with_one_and_four_connections() {
    let s = user_site("auth.bin", 64 * MIB);
    let node = Chiral::new();
    let url = s.ftp.url_with(PASSWORD_IN_URL, "auth.bin");
    for n in ["1", "4"] {
        for json in [false, true] {
            let out_dir = node.data_dir.path().join(format!("out{n}-{json}"));
            let mut args = vec![url.as_str(), "-o", out_dir.to_str().unwrap(), "--connections", n];
            if json {
                args.push("--json");
            }
            let t0 = Instant::now();
            let out = get(&node, &args);
            let secs = t0.elapsed().as_secs_f64();
            assert!(out.status.success(), "{}\npure-ftpd: {}", all_output(&out), s.ftp.proc.log_text());
            eprintln!(
                "64 MiB over FTP as {USER} with {n} connection(s){}: {secs:.2}s",
                if json { " --json" } else { "" }
            );
            assert_no_password(&out, PASSWORD, PASSWORD_IN_URL);
            assert_eq!(sha256_file(&out_dir.join("auth.bin")), s.sha);
            assert!(!out_dir.join("auth.bin.part").exists() && !out_dir.join("auth.bin.chiral-resume").exists());
            if json {
                let v = json_of(&out);
                assert_eq!(v["ok"], true);
                assert_eq!(v["download"]["mode"], "engine");
                assert_eq!(v["download"]["bytes"], 64 * MIB);
                let src = &v["download"]["sources"][0];
                assert_eq!(src["plugin"], "ftp");
                assert_eq!(src["bytes"], 64 * MIB);
                // The label drops the user information.
                assert_eq!(src["label"], s.ftp.url("auth.bin"));
            } else {
                assert!(stdout(&out).trim().ends_with("auth.bin"), "{}", stdout(&out));
            }
        }
    }
    // The downloaded files were compared; the source is still there for the next run.
    assert!(s.dir.path().join("auth.bin").exists());
}

/// The plugin's other ways to give credentials (plugins/ftp/src/lib.rs): `CHIRAL_FTP_USER` and
/// `CHIRAL_FTP_PASSWORD`, a user in the URL with the password from the environment, and the
/// config file's `[plugins.ftp]` `user` / `password`.
#[test]
fn pure_ftpd_credentials_from_environment_and_config_file() {
    let s = user_site("env.bin", 64 * MIB);
    let node = Chiral::new();
    let check = |out: &Output, out_dir: &Path, what: &str| {
        assert!(out.status.success(), "{what}: {}\npure-ftpd: {}", all_output(out), s.ftp.proc.log_text());
        assert_no_password(out, PASSWORD, PASSWORD_IN_URL);
        assert_eq!(sha256_file(&out_dir.join("env.bin")), s.sha, "{what}");
        let v = json_of(out);
        assert_eq!(v["download"]["sources"][0]["label"], s.ftp.url("env.bin"), "{what}");
    };

    // Both from the environment; with -vv the debug logs must not carry it either.
    let out_dir = node.data_dir.path().join("env");
    let out = run_with_timeout(
        node.cmd()
            .args([
                "get",
                &s.ftp.url("env.bin"),
                "-o",
                out_dir.to_str().unwrap(),
                "--connections",
                "4",
                "--json",
                "-vv",
            ])
            .env("CHIRAL_FTP_USER", USER)
            .env("CHIRAL_FTP_PASSWORD", PASSWORD),
        Duration::from_secs(300),
    );
    check(&out, &out_dir, "CHIRAL_FTP_USER + CHIRAL_FTP_PASSWORD");

    // The user in the URL, the password from the environment.
    let out_dir = node.data_dir.path().join("url-user");
    let url = format!("ftp://{USER}@127.0.0.1:{}/env.bin", s.ftp.port);
    let out = run_with_timeout(
        node.cmd()
            .args(["get", &url, "-o", out_dir.to_str().unwrap(), "--connections", "4", "--json"])
            .env("CHIRAL_FTP_PASSWORD", PASSWORD),
        Duration::from_secs(300),
    );
    check(&out, &out_dir, "user in the URL + CHIRAL_FTP_PASSWORD");

    // The config file.
    let conf = node.data_dir.path().join("ftp-config.toml");
    std::fs::write(&conf, format!("no_dht = true\n[plugins.ftp]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n"))
        .unwrap();
    let out_dir = node.data_dir.path().join("config");
    let out = get(
        &node,
        &[
            "--config",
            conf.to_str().unwrap(),
            &s.ftp.url("env.bin"),
            "-o",
            out_dir.to_str().unwrap(),
            "--connections",
            "4",
            "--json",
        ],
    );
    check(&out, &out_dir, "[plugins.ftp] user + password");
}

#[test]
fn pure_ftpd_wrong_password_is_one_line_error_without_file_or_password() {
    let s = user_site("deny.bin", 4 * MIB);
    let node = Chiral::new();
    let (wrong, wrong_in_url) = ("Wr0ng:p@ss-9Zv", "Wr0ng%3Ap%40ss-9Zv");
    let url = s.ftp.url_with(wrong_in_url, "deny.bin");
    for json in [false, true] {
        let out_dir = node.data_dir.path().join(format!("out-{json}"));
        let mut args = vec![url.as_str(), "-o", out_dir.to_str().unwrap(), "--connections", "4"];
        if json {
            args.push("--json");
        }
        let t0 = Instant::now();
        let out = get(&node, &args);
        eprintln!("wrong password refused in {:.2}s (pure-ftpd delays a 530)", t0.elapsed().as_secs_f64());
        assert!(!out.status.success(), "{}", all_output(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        let line = last_error_line(&out);
        assert!(line.starts_with("chiral: ") && line.contains("login refused") && line.contains("530"), "{line}");
        assert_no_password(&out, wrong, wrong_in_url);
        assert_no_password(&out, PASSWORD, PASSWORD_IN_URL);
        if json {
            let v = json_of(&out);
            assert_eq!(v["ok"], false);
            assert!(v["error"].as_str().unwrap().contains("login refused"), "{v}");
        }
        let left: Vec<_> =
            std::fs::read_dir(&out_dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "left in {}: {left:?}", out_dir.display());
    }
    // The same wrong password from the environment: the same one line.
    let out_dir = node.data_dir.path().join("out-env");
    let out = run_with_timeout(
        node.cmd()
            .args(["get", &s.ftp.url("deny.bin"), "-o", out_dir.to_str().unwrap()])
            .env("CHIRAL_FTP_USER", USER)
            .env("CHIRAL_FTP_PASSWORD", wrong),
        Duration::from_secs(300),
    );
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(last_error_line(&out).contains("login refused"), "{}", stderr(&out));
    assert_no_password(&out, wrong, wrong_in_url);
    assert!(std::fs::read_dir(&out_dir).map(|mut d| d.next().is_none()).unwrap_or(true));
}
