//! `docs/plugin-guide.md` as a third party follows it: the blocks it marks with a file name
//! (```` ```toml file=Cargo.toml ````, ```` ```rust file=src/lib.rs ````) are written into a
//! fresh crate outside the workspace, its `chiral-sdk` dependency pointed at this repository's
//! `sdk/`; its own tests (the conformance kit) must pass, its release build must load into the
//! real `chiral`, and `chiral get` must download through it.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use chiral_tests::*;

/// The guide's files: every fenced block whose opening line carries `file=PATH`, blocks of the
/// same path joined in order.
fn guide_files(guide: &str) -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in guide.lines() {
        let trimmed = line.trim_start();
        match &current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    current = info.split_whitespace().find_map(|w| w.strip_prefix("file=")).map(str::to_string);
                    if let Some(path) = &current {
                        let text = files.entry(path.clone()).or_default();
                        if !text.is_empty() {
                            text.push('\n');
                        }
                    }
                }
            }
            Some(path) => {
                if trimmed.starts_with("```") {
                    current = None;
                } else {
                    let text = files.get_mut(path).expect("entry made at the fence");
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "a file block of the guide is not closed");
    files
}

/// The guide's `Cargo.toml` with its `chiral-sdk` path pointed at `sdk`.
fn point_at_sdk(toml: &str, sdk: &Path) -> String {
    let mut replaced = 0;
    let out: Vec<String> = toml
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("chiral-sdk") && l.contains("path = \"") {
                replaced += 1;
                let start = l.find("path = \"").expect("checked") + "path = \"".len();
                let end = start + l[start..].find('"').expect("closing quote of the sdk path");
                format!("{}{}{}", &l[..start], sdk.display(), &l[end..])
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(replaced, 1, "the guide's Cargo.toml must have one `chiral-sdk = {{ path = \"...\" }}` line:\n{toml}");
    out.join("\n") + "\n"
}

fn cargo(args: &[&str], manifest: &Path) -> std::process::Output {
    run_with_timeout(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .arg("--manifest-path")
            .arg(manifest)
            .env("CARGO_TARGET_DIR", root().join("target/fixtures"))
            .env_remove("RUSTFLAGS"),
        Duration::from_secs(1200),
    )
}

#[test]
fn the_guide_extracts_its_files_in_order() {
    let files =
        guide_files("x\n```toml file=a.toml\nk = 1\n```\n```rust\nnot mine\n```\n```rust file=a.toml\nk = 2\n```\n");
    assert_eq!(files.len(), 1);
    assert_eq!(files["a.toml"], "k = 1\n\nk = 2\n");
    let toml = point_at_sdk("[dependencies]\nchiral-sdk = { path = \"../chiral/sdk\" }\n", Path::new("/r/sdk"));
    assert_eq!(toml, "[dependencies]\nchiral-sdk = { path = \"/r/sdk\" }\n");
    assert!(std::panic::catch_unwind(|| point_at_sdk("[dependencies]\n", Path::new("/r/sdk"))).is_err());
}

#[test]
fn the_guide_skeleton_builds_passes_the_kit_loads_and_downloads() {
    let chiral = chiral_bin();
    let guide = std::fs::read_to_string(root().join("docs/plugin-guide.md")).expect("docs/plugin-guide.md");
    let files = guide_files(&guide);
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Cargo.toml", "src/lib.rs"],
        "the guide's file blocks"
    );

    // The crate, outside the workspace, exactly as the guide writes it.
    let work = tempfile::tempdir().unwrap();
    let krate = work.path().join("chiral-plugin-pattern");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(krate.join("Cargo.toml"), point_at_sdk(&files["Cargo.toml"], &root().join("sdk"))).unwrap();
    std::fs::write(krate.join("src/lib.rs"), &files["src/lib.rs"]).unwrap();
    // Same dependency versions as the workspace: no network needed to resolve.
    std::fs::copy(root().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let manifest = krate.join("Cargo.toml");

    // Its own tests: the conformance kit, as the guide runs it.
    let out = cargo(&["test"], &manifest);
    assert!(out.status.success(), "cargo test of the guide's plugin failed:\n{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("test tests::conformance ... ok"), "the kit did not run:\n{}", stdout(&out));

    // The release build, loaded by the real host.
    let out = cargo(&["build", "--release", "--quiet"], &manifest);
    assert!(out.status.success(), "cargo build --release of the guide's plugin failed:\n{}", stderr(&out));
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("target/fixtures/release/libchiral_plugin_pattern.so"),
        plugins.path().join("libchiral_plugin_pattern.so"),
    )
    .unwrap();
    let node = Chiral::new();
    let pp = plugins.path().to_string_lossy().into_owned();
    let out = node.run(&["--plugin-path", &pp, "plugins", "--json"]);
    assert!(out.status.success(), "{} plugins failed: {}", chiral.display(), stderr(&out));
    let v = json_of(&out);
    let entry = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"].as_str().is_some_and(|f| f.ends_with("libchiral_plugin_pattern.so")))
        .unwrap_or_else(|| panic!("the guide's plugin is not listed: {v}"))
        .clone();
    assert_eq!(entry["status"], "loaded", "{entry}");
    assert_eq!(entry["name"], "pattern");
    assert_eq!(entry["sdk_version"], chiral_sdk::SDK_VERSION);
    let caps = entry["capabilities"].as_array().unwrap();
    for cap in ["download", "source"] {
        assert!(caps.contains(&serde_json::json!(cap)), "{entry}");
    }
    assert_eq!(v["schemes"]["pattern"], "pattern", "{v}");

    // `chiral get` through it: the engine reads its ranges.
    let out_dir = node.data_dir.path().join("out");
    let out = node.run(&[
        "--plugin-path",
        &pp,
        "get",
        "pattern://3000000/hello.bin",
        "-o",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "get through the guide's plugin failed: {}", stderr(&out));
    let data = std::fs::read(out_dir.join("hello.bin")).unwrap();
    assert_eq!(data.len(), 3_000_000);
    assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "wrong bytes");
    assert_eq!(json_of(&out)["download"]["sources"][0]["plugin"], "pattern");

    // A malformed identifier: the plugin's one-line error, not a crash.
    let out = node.run(&["--plugin-path", &pp, "get", "pattern://many/x.bin", "-o", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("LENGTH is not a number"), "{err}");
}
