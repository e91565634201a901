//! The HTTP plugin end to end: the real `chiral` against a real nginx on loopback, and
//! `chiral seed --via http` fetched by curl and aria2c.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chiral_tests::*;

const MIB: u64 = 1 << 20;

struct Site {
    dir: tempfile::TempDir,
    nginx: Nginx,
}

fn site(files: &[(&str, u64)]) -> Site {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, size)) in files.iter().enumerate() {
        make_file(&dir.path().join(name), *size, 1000 + i as u64);
    }
    let nginx = Nginx::start(dir.path());
    Site { dir, nginx }
}

#[test]
fn one_gib_from_nginx_with_matching_sha256() {
    let s = site(&[("big.bin", 1024 * MIB)]);
    let want = sha256_file(&s.dir.path().join("big.bin"));
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let out = node.run(&["get", &s.nginx.url("big.bin"), "-o", out_dir.to_str().unwrap(), "--json", "--sha256", &want]);
    assert!(out.status.success(), "{}\nnginx: {}", stderr(&out), s.nginx.proc.log_text());
    assert_eq!(sha256_file(&out_dir.join("big.bin")), want);
    let v = json_of(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["download"]["bytes"], 1024 * MIB);
    assert_eq!(v["download"]["mode"], "engine");
    assert_eq!(v["download"]["sources"][0]["bytes"], 1024 * MIB);
    assert!(!out_dir.join("big.bin.part").exists() && !out_dir.join("big.bin.chiral-resume").exists());
    // Asked again, it is already complete: nothing is fetched, exit 0.
    let again = node.run(&["get", &s.nginx.url("big.bin"), "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(json_of(&again)["download"]["resumed_bytes"], 1024 * MIB);
}

#[test]
fn killed_half_way_resumes_instead_of_starting_over() {
    let s = site(&[("resume.bin", 256 * MIB)]);
    let want = sha256_file(&s.dir.path().join("resume.bin"));
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    // A mirror limited to 8 MB/s per connection: slow enough to be killed part way.
    let url = s.nginx.slow_url("resume.bin");
    let mut child = node
        .cmd()
        .args(["get", &url, "-o", out_dir.to_str().unwrap(), "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = out_dir.join("resume.bin.chiral-resume");
    let t0 = Instant::now();
    let done_fraction = || resume_fraction(&state, 256 * MIB);
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

    let out = node.run(&["get", &url, "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    let resumed = v["download"]["resumed_bytes"].as_u64().unwrap();
    let fetched = v["download"]["sources"][0]["bytes"].as_u64().unwrap();
    assert!(resumed as f64 >= 0.25 * (256 * MIB) as f64, "resumed only {resumed}");
    assert_eq!(resumed + fetched, 256 * MIB, "every byte fetched once: resumed {resumed} + fetched {fetched}");
    assert_eq!(sha256_file(&out_dir.join("resume.bin")), want);
}

#[test]
fn missing_file_and_dead_server_are_one_line_errors_with_no_file() {
    let s = site(&[("here.bin", MIB)]);
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let out = node.run(&["get", &s.nginx.url("missing.bin"), "-o", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(last_error_line(&out).contains("404"), "{}", stderr(&out));
    assert!(!out_dir.join("missing.bin").exists());

    let dead = format!("http://127.0.0.1:{}/x.bin", free_port());
    let out = node.run(&["get", &dead, "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().to_lowercase().contains("refused"), "{v}");
    assert!(!out_dir.join("x.bin").exists());

    // A wrong --sha256 fails and leaves nothing at the final name.
    let out =
        node.run(&["get", &s.nginx.url("here.bin"), "-o", out_dir.to_str().unwrap(), "--sha256", &"0".repeat(64)]);
    assert!(!out.status.success());
    assert!(last_error_line(&out).contains("SHA-256"), "{}", stderr(&out));
    assert!(!out_dir.join("here.bin").exists());
}

/// Scripts tell failures apart by the exit code (docs/cli.md, "Exit codes"); the reason stays
/// one line on stderr, and nothing is left at the final name.
#[test]
fn exit_codes_tell_the_failures_apart() {
    let s = site(&[("here.bin", MIB)]);
    let want = sha256_file(&s.dir.path().join("here.bin"));
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let out = out_dir.to_str().unwrap();
    let get = |args: &[&str]| {
        let o = node.run(&[&["-q", "get", "-o", out], args].concat());
        (o.status.code(), last_error_line(&o), stderr(&o).lines().count())
    };

    // No plugin claims the identifier: 3, naming what is installed.
    let (code, line, lines) = get(&["gopher://127.0.0.1/x.bin"]);
    assert_eq!(code, Some(3), "{line}");
    assert!(line.starts_with("chiral: no plugin handles") && line.contains("http"), "{line}");
    assert_eq!(lines, 1);

    // The server answers 404: 4.
    let (code, line, lines) = get(&[&s.nginx.url("missing.bin")]);
    assert_eq!(code, Some(4), "{line}");
    assert!(line.contains("404"), "{line}");
    assert_eq!(lines, 1);

    // Nobody listens: 5.
    let (code, line, _) = get(&[&format!("http://127.0.0.1:{}/x.bin", free_port())]);
    assert_eq!(code, Some(5), "{line}");

    // The bytes are not the ones asked for: 6, and no file at the final name.
    let (code, line, _) = get(&[&s.nginx.url("here.bin"), "--sha256", &"0".repeat(64)]);
    assert_eq!(code, Some(6), "{line}");
    assert!(line.contains("SHA-256"), "{line}");
    assert!(!out_dir.join("here.bin").exists());

    // A --sha256 that is not one: a usage error, like clap's own.
    let (code, line, _) = get(&[&s.nginx.url("here.bin"), "--sha256", "xyz"]);
    assert_eq!(code, Some(2), "{line}");
    let o = node.run(&["get", "--no-such-flag", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // And 0 once it is complete and verified.
    let (code, line, _) = get(&[&s.nginx.url("here.bin"), "--sha256", &want]);
    assert_eq!(code, Some(0), "{line}");
    assert_eq!(sha256_file(&out_dir.join("here.bin")), want);
}

#[test]
fn two_mirrors_share_one_download() {
    let s = site(&[("m.bin", 256 * MIB)]);
    std::os::unix::fs::symlink(s.dir.path().join("m.bin"), s.dir.path().join("mirror2.bin")).unwrap();
    let want = sha256_file(&s.dir.path().join("m.bin"));
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let out = node.run(&[
        "get",
        &s.nginx.url("m.bin"),
        &s.nginx.url("mirror2.bin"),
        "-o",
        out_dir.to_str().unwrap(),
        "--json",
        "--connections",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    let sources = v["download"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    let bytes: Vec<u64> = sources.iter().map(|s| s["bytes"].as_u64().unwrap()).collect();
    assert!(bytes.iter().all(|b| *b > 0), "both mirrors used: {bytes:?}");
    assert_eq!(bytes.iter().sum::<u64>(), 256 * MIB);
    assert_eq!(sha256_file(&out_dir.join("m.bin")), want);
}

#[test]
fn a_dead_mirror_is_dropped_and_the_download_completes() {
    let s = site(&[("d.bin", 64 * MIB)]);
    let node = Chiral::new();
    let out_dir = node.data_dir.path().join("out");
    let dead = format!("http://127.0.0.1:{}/d.bin", free_port());
    let out = node.run(&["get", &dead, &s.nginx.url("d.bin"), "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("d.bin")), sha256_file(&s.dir.path().join("d.bin")));
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
    let (seed, lines) = start_seed(&node, &[file.to_str().unwrap(), "--via", "http", "--listen", "127.0.0.1"], 1);
    let url = lines[0].clone();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

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
    let out = node.run(&["get", &url, "-o", out_dir.to_str().unwrap(), "--connections", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&out_dir.join("seed me.bin")), want);
}

#[test]
fn demo_seeds_and_downloads_on_loopback() {
    let node = Chiral::new();
    let out = node.run(&["demo", "--size", "32", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["download"]["bytes"], 32 * MIB);
    assert!(v["download"]["sha256"].as_str().unwrap().len() == 64);
}
