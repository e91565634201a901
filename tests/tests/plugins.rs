//! Discovery, loading and the plugin boundary, with real plugin files: the workspace's, a
//! third-party plugin built outside the workspace against `chiral-sdk` alone, one built against
//! another SDK version, and a garbage file.

use std::{path::Path, process::Command, sync::Arc};

use chiral_host::{
    registry::{Registry, Status},
    session::GetRequest,
    Host,
};
use chiral_tests::*;

fn plugin_dir_with(extra: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bin_dir().join("libchiral_plugin_http.so"), dir.path().join("libchiral_plugin_http.so")).unwrap();
    for (from, name) in extra {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    dir
}

/// The host fetches content only through plugins. The one HTTP client it links (reqwest) is
/// the payment service's JSON-RPC to the chain (docs/architecture.md, "The host's own
/// network use"): no other module of the host library names it, and the binary runs no
/// protocol of its own for downloads.
#[test]
fn the_host_speaks_http_only_to_the_chain() {
    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = root().join("host/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found too few host sources to judge: {files:?}");
    let mut users = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if text.contains("reqwest") {
            users.push(f.strip_prefix(&src).unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(users, ["payments/chain.rs"], "only the chain client may use reqwest in the host");
    // The plugin boundary is what the binary loads the HTTP plugin through.
    let plugin = Command::new(require("nm", "binutils"))
        .args(["-C", "-D", "--defined-only"])
        .arg(bin_dir().join("libchiral_plugin_http.so"))
        .output()
        .unwrap();
    assert!(stdout(&plugin).contains("chiral_plugin_sdk_version"));
}

#[test]
fn third_party_plugin_garbage_and_mismatched_sdk() {
    let gen = build_fixture_plugin("ok", None);
    let other_sdk = build_fixture_plugin("sdk-0.2", Some("0.2.0"));
    let garbage = tempfile::NamedTempFile::new().unwrap();
    make_file(garbage.path(), 65536, 7);
    let dir = plugin_dir_with(&[
        (&gen, "libchiral_plugin_gen.so"),
        (&other_sdk, "libchiral_plugin_oldgen.so"),
        (garbage.path(), "libchiral_plugin_garbage.so"),
    ]);
    let node = Chiral::new();
    let pp = dir.path().to_string_lossy().into_owned();

    // `chiral plugins --json`: the good ones load, the others are skipped with one-line reasons.
    let out = node.run(&["--plugin-path", &pp, "plugins", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&out);
    let plugins = v["plugins"].as_array().unwrap();
    let by_file = |f: &str| {
        plugins
            .iter()
            .find(|p| p["file"].as_str().unwrap().ends_with(f))
            .unwrap_or_else(|| panic!("{f} not listed: {v}"))
    };
    assert_eq!(by_file("libchiral_plugin_http.so")["status"], "loaded");
    // The Chiral network's sources are ranked first by a capability, not by the plugin's name.
    let caps = |f: &str| by_file(f)["capabilities"].as_array().unwrap().clone();
    assert!(caps("libchiral_plugin_chiral.so").contains(&serde_json::json!("reputed-peers")), "{v}");
    assert!(!caps("libchiral_plugin_http.so").contains(&serde_json::json!("reputed-peers")), "{v}");
    // A swarm's requests share connections, a mirror's each take one.
    assert!(caps("libchiral_plugin_bittorrent.so").contains(&serde_json::json!("pipelined")), "{v}");
    assert!(!caps("libchiral_plugin_http.so").contains(&serde_json::json!("pipelined")), "{v}");
    let g = by_file("libchiral_plugin_gen.so");
    assert_eq!(g["status"], "loaded");
    assert_eq!(g["name"], "gen");
    assert_eq!(g["version"], "0.3.1");
    assert_eq!(g["sdk_version"], chiral_sdk::SDK_VERSION);
    let garbage = by_file("libchiral_plugin_garbage.so");
    assert_eq!(garbage["status"], "skipped");
    assert!(!garbage["reason"].as_str().unwrap().contains('\n'));
    let old = by_file("libchiral_plugin_oldgen.so");
    assert_eq!(old["status"], "skipped");
    let reason = old["reason"].as_str().unwrap();
    assert!(reason.contains("0.2.0") && reason.contains("rebuild"), "{reason}");
    assert_eq!(old["sdk_version"], "0.2.0", "the version it was skipped for is kept: {v}");
    assert_eq!(v["schemes"]["gen"], "gen");
    assert_eq!(v["schemes"]["http"], "http");

    // The human listing says the same.
    let text = stdout(&node.run(&["--plugin-path", &pp, "plugins"]));
    assert!(text.contains("skipped: built against sdk 0.2.0"), "{text}");

    // Download through the third-party plugin by its own scheme; pieces are SHA-1 verified.
    let out_dir = node.data_dir.path().join("out");
    let out =
        node.run(&["--plugin-path", &pp, "get", "gen://3000000/made.bin", "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let data = std::fs::read(out_dir.join("made.bin")).unwrap();
    assert_eq!(data.len(), 3_000_000);
    assert!(data.iter().enumerate().all(|(i, b)| *b == ((i as u64).wrapping_mul(31) ^ ((i as u64) >> 11)) as u8));
    assert_eq!(json_of(&out)["download"]["sources"][0]["plugin"], "gen");

    // A panic inside the plugin is an error for the caller, on one line.
    let out = node.run(&["--plugin-path", &pp, "get", "gen://panic/x", "-o", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("plugin panicked at") && err.contains("asked to panic"), "{err}");
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one line: {err}");

    // In one host process: the panic comes back as an error and the host goes on working.
    let registry = Registry::discover(
        &[dir.path().to_path_buf()],
        chiral_sdk::testkit::config(node.data_dir.path()),
        Default::default(),
        Default::default(),
        Arc::new(|_, _| {}),
    );
    assert!(registry.entries().iter().any(|e| matches!(e.status, Status::Skipped(_))));
    let host = Host::new(registry);
    let req = |id: &str| GetRequest {
        identifiers: vec![id.into()],
        out_dir: node.data_dir.path().join("inproc"),
        backend: None,
        connections: 2,
        sha256: None,
        ..Default::default()
    };
    let Err(e) = futures::executor::block_on(host.get(&req("gen://panic/y"), Arc::new(|_| {}))) else {
        panic!("a panicking plugin call must be an error")
    };
    assert!(e.to_string().contains("panicked"), "{e}");
    let ok = futures::executor::block_on(host.get(&req("gen://65536/after.bin"), Arc::new(|_| {})))
        .expect("host still works");
    assert_eq!(ok.bytes, 65536);

    // The SDK's conformance kit, run on the loaded third-party library as its author would.
    let gen_entry = host.registry.by_name("gen").unwrap();
    let handler = host.registry.handler(gen_entry).unwrap();
    let kit_out = node.data_dir.path().join("kit");
    let checks = chiral_sdk::testkit::Kit::shared(handler)
        .good("gen://1000/ok.bin")
        .slow("gen://slow/never.bin")
        .out_dir(&kit_out)
        .run();
    assert!(checks.iter().all(|c| c.passed), "{checks:?}");
    assert!(checks.len() >= 10, "the kit ran its checks: {checks:?}");
}

/// The oldest supported SDK: the fixture plugin and `sdk/` as released at this commit (0.1.0),
/// before `Source::peers`, `checks_pieces` and `set_other_sources` were appended.
const SDK_0_1_0_COMMIT: &str = "2c313b2";

#[test]
fn a_plugin_built_against_the_oldest_sdk_of_the_series_loads_and_downloads() {
    let old = build_released_fixture_plugin(SDK_0_1_0_COMMIT);
    // Beside today's HTTP plugin, loaded after it (file names sort "gen" first): checking the
    // old one must not change how today's plugins are checked.
    let dir = plugin_dir_with(&[(&old, "libchiral_plugin_gen.so")]);
    let node = Chiral::new();
    let pp = dir.path().to_string_lossy().into_owned();
    let v = json_of(&node.run(&["--plugin-path", &pp, "plugins", "--json"]));
    let listed = |f: &str| {
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["file"].as_str().unwrap() == dir.path().join(f).to_str().unwrap())
            .cloned()
            .unwrap_or_else(|| panic!("{f} not listed: {v}"))
    };
    let gen = listed("libchiral_plugin_gen.so");
    assert_eq!(gen["status"], "loaded", "{v}");
    assert_eq!(gen["sdk_version"], "0.1.0");
    assert_eq!(listed("libchiral_plugin_http.so")["status"], "loaded", "{v}");

    // The host calls what 0.1.0 did not have (peers, checks_pieces, set_other_sources) on the
    // old plugin's source: the SDK's defaults answer, and every piece is hashed by the host.
    let out_dir = node.data_dir.path().join("out");
    let out =
        node.run(&["--plugin-path", &pp, "get", "gen://3000000/old.bin", "-o", out_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["download"]["verified"], true, "{report}");
    assert_eq!(report["download"]["sources"][0]["plugin"], "gen", "{report}");
    let data = std::fs::read(out_dir.join("old.bin")).unwrap();
    assert_eq!(data.len(), 3_000_000);
    assert!(data.iter().enumerate().all(|(i, b)| *b == ((i as u64).wrapping_mul(31) ^ ((i as u64) >> 11)) as u8));

    // And today's HTTP plugin, checked after it, still works in the same process.
    let served = tempfile::tempdir().unwrap();
    let file = served.path().join("f.bin");
    make_file(&file, 200_000, 3);
    let nginx = Nginx::start(served.path());
    let out = node.run(&[
        "--plugin-path",
        &pp,
        "get",
        &format!("http://127.0.0.1:{}/f.bin", nginx.port),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(out_dir.join("f.bin")).unwrap(), std::fs::read(&file).unwrap());
}

/// `chiral --plugin-path DIR plugins --json`, and its rows for files named like the HTTP plugin.
fn http_plugin_files(dir: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let node = Chiral::new();
    let v = json_of(&node.run(&["--plugin-path", dir.to_str().unwrap(), "plugins", "--json"]));
    let rows = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["file"].as_str().unwrap().ends_with("libchiral_plugin_http.so"))
        .cloned()
        .collect();
    (v, rows)
}

#[test]
fn a_file_that_does_not_load_shadows_nothing() {
    // A broken file named like the HTTP plugin, first in the search path: it is listed as
    // skipped with its reason, and the real one beside the executable still loads.
    let dir = tempfile::tempdir().unwrap();
    make_file(&dir.path().join("libchiral_plugin_http.so"), 4096, 1);
    let (v, http) = http_plugin_files(dir.path());
    assert_eq!(http.len(), 2, "{v}");
    assert_eq!(http[0]["status"], "skipped");
    assert!(http[0]["reason"].as_str().unwrap().contains("not a loadable library"), "{v}");
    assert_eq!(http[1]["status"], "loaded", "{v}");
    assert_eq!(v["schemes"]["http"], "http", "{v}");
}

#[test]
fn unclaimed_identifier_lists_installed_schemes() {
    let node = Chiral::new();
    let out = node.run(&["get", "gopher://127.0.0.1/x", "-o", node.data_dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let line = last_error_line(&out);
    assert!(line.contains("gopher") && line.contains("http:") && line.contains("https:"), "{line}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn explicit_plugin_path_wins_over_the_executable_folder() {
    // Same file name in --plugin-path and beside the executable: the first found wins, the
    // other is listed as shadowed.
    let dir = plugin_dir_with(&[]);
    let (v, http) = http_plugin_files(dir.path());
    assert_eq!(http.len(), 2, "{v}");
    assert!(http[0]["file"].as_str().unwrap().starts_with(dir.path().to_str().unwrap()));
    assert_eq!(http[0]["status"], "loaded");
    assert_eq!(http[1]["status"], "skipped");
    assert!(http[1]["reason"].as_str().unwrap().contains("shadowed"));
}

#[test]
fn a_plugin_anyone_can_change_is_refused_with_a_reason() {
    use std::os::unix::fs::PermissionsExt as _;
    let node = Chiral::new();
    let status = |dir: &Path| {
        let v = json_of(&node.run(&["--plugin-path", dir.to_str().unwrap(), "plugins", "--json"]));
        let p = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["file"].as_str().unwrap().starts_with(dir.to_str().unwrap()))
            .cloned()
            .unwrap_or_else(|| panic!("not listed: {v}"));
        (p["status"].as_str().unwrap().to_string(), p["reason"].as_str().unwrap_or_default().to_string())
    };
    // A folder every user can write to: anyone could have put the file there.
    let open_dir = plugin_dir_with(&[]);
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (s, why) = status(open_dir.path());
    assert_eq!(s, "skipped");
    assert!(why.contains("writable by every user") && why.contains("folder"), "{why}");
    // A file every user can write to, in a private folder.
    let open_file = plugin_dir_with(&[]);
    let so = open_file.path().join("libchiral_plugin_http.so");
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (s, why) = status(open_file.path());
    assert_eq!(s, "skipped");
    assert!(why.contains("writable by every user") && why.contains("plugin file"), "{why}");
    // The same file made private again loads.
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(status(open_file.path()).0, "loaded");
}
