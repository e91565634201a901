//! One download from three protocols at once, each server capped at a different rate: nginx
//! (`limit_rate`), pure-ftpd (per-session bandwidth) and an aria2 seeder (upload limit). The
//! engine must share the pieces by what each source can give — asserted on the shares from
//! `--json`, never on times (the machine may be shared).
//!
//! Needs: nginx, pure-ftpd, aria2, mktorrent (Debian packages).

use std::time::Duration;

use chiral_tests::{bt::*, *};

const MIB: u64 = 1 << 20;

#[test]
fn three_capped_servers_share_one_download_by_their_speed() {
    let tracker = Tracker::start();
    let f = fixture("three.bin", 32 * MIB, 41);
    let tor = f.dir.path().join("three.torrent");
    mktorrent(&f.file, &tor, &tracker.url(), 18, false); // 256 KiB pieces
    let ih = info_hash_of(&tor);
    // BitTorrent ~1.5 MiB/s in all.
    let port = free_port();
    let seeder = aria2_seed(&tor, f.dir.path(), port, &["--max-upload-limit=1536K"]);
    assert!(tracker.wait_for(&ih, port, Duration::from_secs(60)), "aria2 never announced: {}", seeder.log_text());
    // HTTP ~0.7 MiB/s: 8 connections, a 256 KiB range in ~3 s each.
    let nginx = Nginx::start(f.dir.path());
    // FTP ~3 MiB/s: 8 sessions of 384 KB/s.
    let ftp = PureFtpd::start_with(f.dir.path(), "mirror", "mirror-pass", &["--userbandwidth=384"]);

    let node = Chiral::new();
    let out = node.data_dir.path().join("out");
    let o = run_with_timeout(
        node.cmd().args([
            "get",
            tor.to_str().unwrap(),
            &nginx.capped_url("three.bin"),
            &ftp.url_with("mirror-pass", "three.bin"),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]),
        Duration::from_secs(180),
    );
    assert!(o.status.success(), "chiral get failed: {}", last_error_line(&o));
    assert_eq!(sha256_file(&out.join("three.bin")), f.sha);
    let v = json_of(&o);
    assert_eq!(v["download"]["verified"], true, "{v}");
    let share = |plugin: &str| {
        let b: u64 = v["download"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["plugin"] == plugin)
            .map(|s| s["bytes"].as_u64().unwrap())
            .sum();
        b as f64 / (32 * MIB) as f64
    };
    let (bt, http, ftp_share) = (share("bittorrent"), share("http"), share("ftp"));
    eprintln!("shares: ftp {ftp_share:.2}, bittorrent {bt:.2}, http {http:.2}");
    assert!((bt + http + ftp_share - 1.0).abs() < 1e-9, "every byte from one source: {v}");
    // The caps give 3 : 1.5 : 0.67, i.e. shares of about 0.58, 0.29 and 0.13 (0.56, 0.31, 0.12
    // measured): each within half of its due either way, and in the caps' order.
    for (name, got, due) in [("ftp", ftp_share, 0.58), ("bittorrent", bt, 0.29), ("http", http, 0.13)] {
        assert!(got >= due * 0.5 && got <= due * 1.5, "{name} got {got:.2} of the file, due about {due}: {v}");
    }
    assert!(
        ftp_share > bt && bt > http,
        "shares out of the caps' order: ftp {ftp_share:.2}, bt {bt:.2}, http {http:.2}"
    );
    drop(seeder);
}
