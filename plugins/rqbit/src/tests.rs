use std::net::SocketAddr;

use chiral_sdk::{abi_stable::std_types::RVec, testkit, DownloadRequest, ErrorKind, Events, SeedRequest};

use crate::{ident, ident::Ident, ledger::Ledger, RqbitPlugin};

#[test]
fn conformance() {
    let tmp = tempfile::tempdir().unwrap();
    testkit::Kit::new(testkit::handler_for::<RqbitPlugin>(testkit::config(tmp.path())).unwrap())
        .out_dir(tmp.path())
        .skip_seed("its magnet names no peer and the test has no DHT or tracker to find the seed")
        .slow("magnet:?xt=urn:btih:c9e15763f722f23e98a29decdfae341b98d53056&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce")
        .assert_all();
}

#[test]
fn descriptor_claims_what_the_native_plugin_claims_below_its_priority() {
    let d = <RqbitPlugin as chiral_sdk::Plugin>::descriptor();
    assert_eq!(d.name.as_str(), "rqbit");
    assert_eq!(d.schemes.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ["magnet"]);
    assert_eq!(d.suffixes.iter().map(|s| s.to_string()).collect::<Vec<_>>(), [".torrent"]);
    assert!(d.priority < 10, "the native bittorrent plugin (priority 10) must stay the default");
    assert_eq!(d.capabilities & chiral_sdk::capability::SOURCE, 0);
}

#[test]
fn identifiers() {
    let ih = "c9e15763f722f23e98a29decdfae341b98d53056";
    match ident::classify(&format!("magnet:?xt=urn:btih:{ih}&x.pe=127.0.0.1%3A6881&x.pe=bad")).unwrap() {
        Ident::Magnet(m) => {
            assert_eq!(m.info_hash_hex(), ih);
            assert_eq!(m.peers, vec!["127.0.0.1:6881".parse::<SocketAddr>().unwrap()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ident::classify("https://x.example/a.torrent?k=1").unwrap(),
        Ident::Url("https://x.example/a.torrent?k=1".into())
    );
    assert_eq!(ident::classify("http://x.example/a.bin").unwrap_err().kind, ErrorKind::Unsupported);
    assert_eq!(ident::classify("ftp://x/a.torrent").unwrap_err().kind, ErrorKind::Unsupported);
    assert_eq!(ident::classify("/nonexistent/x.torrent").unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(ident::classify("magnet:?xt=urn:btih:zz").unwrap_err().kind, ErrorKind::Invalid);
    assert_eq!(ident::classify("").unwrap_err().kind, ErrorKind::Unsupported);
}

#[test]
fn magnets_carry_one_tr_per_tracker_and_the_peer() {
    let ih = "ab".repeat(20);
    let m = crate::seed::build_magnet(
        &ih,
        "a b.bin",
        &["http://t1/announce".into(), "udp://t2:80".into()],
        Some(&chiral_sdk::magnet::host_port("127.0.0.1", 5)),
    )
    .unwrap();
    assert_eq!(
        m,
        format!(
            "magnet:?xt=urn:btih:{ih}&dn=a%20b.bin&tr=http%3A%2F%2Ft1%2Fannounce&tr=udp%3A%2F%2Ft2%3A80&x.pe=127.0.0.1%3A5"
        )
    );
    let Ident::Magnet(mut parsed) = ident::classify(&m).unwrap() else { panic!("{m}") };
    assert_eq!(parsed.peers, vec!["127.0.0.1:5".parse::<SocketAddr>().unwrap()]);
    // What a download adds: the option's trackers, each once.
    parsed.add_tracker("http://t1/announce");
    parsed.add_tracker("http://t3/a");
    assert_eq!(parsed.to_uri().matches("tr=").count(), 3, "{}", parsed.to_uri());
    assert!(crate::seed::build_magnet("ab", "x", &[], None).is_err());
}

#[test]
fn ledger_emits_once_per_threshold_crossed() {
    let mut l = Ledger::new(100);
    assert_eq!(l.update("p", 50, 0), None);
    assert_eq!(l.update("p", 90, 20), Some(110));
    assert_eq!(l.update("p", 90, 20), None);
    assert_eq!(l.update("p", 10, 0), None, "counters never go down");
    assert_eq!(l.update("p", 350, 20), Some(370));
    assert_eq!(l.update("q", 0, 100), Some(100));
    assert_eq!(l.downloaded(), vec![("p".to_string(), 350)]);
}

fn plugin(dir: &std::path::Path) -> std::sync::Arc<RqbitPlugin> {
    let mut config = testkit::config(dir);
    config.options.push(chiral_sdk::abi_stable::std_types::Tuple2("payment_threshold".into(), "65536".into()));
    std::sync::Arc::new(<RqbitPlugin as chiral_sdk::Plugin>::new(config, Events::none()).unwrap())
}

#[test]
fn seed_create_and_a_local_download_through_initial_peers() {
    use chiral_sdk::Plugin as _;
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let seeder = plugin(&tmp.path().join("a"));
    let rt = seeder.runtime();

    // create: the native contract.
    let torrent = tmp.path().join("data.torrent");
    let args = vec![
        ("path".to_string(), src.join("data.bin").to_string_lossy().into_owned()),
        ("output".to_string(), torrent.to_string_lossy().into_owned()),
        ("private".to_string(), "false".to_string()),
        ("tracker".to_string(), "http://127.0.0.1:1/announce".to_string()),
        ("piece_size".to_string(), "262144".to_string()),
    ];
    let json = rt.block_on(seeder.clone().command("create".into(), args, Events::none())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["length"], 3_000_000);
    assert_eq!(v["piece_length"], 262144);
    assert_eq!(v["pieces"], 12);
    assert!(v["magnet"].as_str().unwrap().contains("&tr="), "{v}");
    assert!(torrent.exists());

    let info = rt
        .block_on(seeder.clone().seed(
            SeedRequest {
                path: src.join("data.bin").to_string_lossy().into_owned().into(),
                options: vec![chiral_sdk::abi_stable::std_types::Tuple2("piece_size".into(), "262144".into())].into(),
            },
            Events::none(),
        ))
        .unwrap();
    let magnet = info.identifiers[0].to_string();
    assert_eq!(info.id.as_str(), v["info_hash"].as_str().unwrap(), "create and seed make the same torrent");
    assert!(magnet.starts_with("magnet:?xt=urn:btih:") && magnet.contains("x.pe="), "{magnet}");
    assert_eq!(seeder.list_seeds().len(), 1);

    // A second instance downloads from the first, found through the magnet's x.pe.
    let leecher = plugin(&tmp.path().join("b"));
    let out = tmp.path().join("out");
    let req = DownloadRequest {
        identifier: magnet.clone().into(),
        out_dir: out.to_string_lossy().into_owned().into(),
        connections: 0,
        options: RVec::new(),
    };
    let payments = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let p2 = payments.clone();
    let events = Events::from_box(Events::sink_from_fn(move |e| {
        if let chiral_sdk::Event::PaymentRequired { peer, bytes, .. } = e {
            eprintln!("payment required: {peer} {bytes}");
            p2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }));
    let lrt = leecher.runtime();
    let got = lrt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(120), leecher.clone().download(req, events)).await
    });
    let got = got.expect("download timed out").unwrap();
    assert_eq!(got.bytes, 3_000_000);
    assert_eq!(std::fs::read(out.join("data.bin")).unwrap(), data);
    assert!(std::fs::read_dir(&out).unwrap().count() == 1, "temp folder left behind");
    assert!(
        payments.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "3 MB at a 64 KiB threshold: counters are sampled, so at least one event"
    );

    // The torrent file too (the content is already there: same bytes, no error).
    let req = DownloadRequest {
        identifier: torrent.to_string_lossy().into_owned().into(),
        out_dir: out.to_string_lossy().into_owned().into(),
        connections: 0,
        options: vec![chiral_sdk::abi_stable::std_types::Tuple2(
            "peer".into(),
            format!("127.0.0.1:{}", seeder.port().unwrap()).into(),
        )]
        .into(),
    };
    let got = lrt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(120), leecher.clone().download(req, Events::none())).await
    });
    assert_eq!(got.expect("timed out").unwrap().bytes, 3_000_000);

    let id = info.id.to_string();
    seeder.stop_seed(&id).unwrap();
    assert!(seeder.list_seeds().is_empty());
    assert_eq!(seeder.stop_seed(&id).unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn created_torrents_have_one_hash_per_piece_even_for_exact_multiples() {
    use crate::create::{build, CreateOptions};
    let tmp = tempfile::tempdir().unwrap();
    let exact = tmp.path().join("exact.bin");
    std::fs::write(&exact, vec![7u8; 4 * 262144]).unwrap();
    let o = CreateOptions {
        piece_length: Some(262144),
        trackers: vec!["http://t/a".into()],
        private: true,
        ..Default::default()
    };
    let b = build(&exact, &o).unwrap();
    assert_eq!((b.pieces, b.length, b.piece_length), (4, 4 * 262144, 262144));
    let parsed = librqbit::torrent_from_bytes(&b.bytes).unwrap();
    assert_eq!(parsed.info_hash.as_string(), b.info_hash_hex);
    assert!(parsed.info.data.private);
    assert_eq!(parsed.info.data.pieces.as_ref().len(), 4 * 20);

    let dir = tmp.path().join("folder");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("b.bin"), vec![1u8; 100_000]).unwrap();
    std::fs::write(dir.join("sub/a.bin"), vec![2u8; 300_000]).unwrap();
    let b = build(&dir, &CreateOptions { web_seeds: vec!["http://w/".into()], ..Default::default() }).unwrap();
    assert_eq!((b.name.as_str(), b.length, b.pieces), ("folder", 400_000, 2));
    assert_eq!(b.output_folder, dir.canonicalize().unwrap());
    let parsed = librqbit::torrent_from_bytes(&b.bytes).unwrap();
    let files = parsed.info.data.files.as_ref().unwrap();
    assert_eq!(files.len(), 2);
    assert!(b.bytes.windows(8).any(|w| w == b"url-list"));
}

#[test]
fn a_cancelled_download_leaves_no_torrent_and_no_final_file() {
    use chiral_sdk::Plugin as _;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("nobody-seeds.bin");
    std::fs::write(&src, vec![3u8; 1 << 20]).unwrap();
    let built = crate::create::build(
        &src,
        &crate::create::CreateOptions { trackers: vec!["http://127.0.0.1:1/announce".into()], ..Default::default() },
    )
    .unwrap();
    let tor = tmp.path().join("x.torrent");
    std::fs::write(&tor, &built.bytes).unwrap();
    let p = plugin(&tmp.path().join("state"));
    let out = tmp.path().join("out");
    let req = DownloadRequest {
        identifier: tor.to_string_lossy().into_owned().into(),
        out_dir: out.to_string_lossy().into_owned().into(),
        connections: 0,
        options: RVec::new(),
    };
    let rt = p.runtime();
    let task = rt.spawn(p.clone().download(req, Events::none()));
    let session = rt.block_on(async {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(s) = p.session_if_started() {
                if s.with_torrents(|it| it.count()) == 1 {
                    break s;
                }
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(20), "the torrent was never added");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    task.abort();
    rt.block_on(async {
        let t0 = std::time::Instant::now();
        while session.with_torrents(|it| it.count()) != 0 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(5), "the cancelled torrent is still in the session");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    assert!(!out.join("nobody-seeds.bin").exists(), "a cancelled download left a file at the final name");
}

/// Through a proxy the torrent handed to librqbit has no UDP tracker left, and the same info
/// hash (the info dictionary is copied byte for byte, even when not canonical).
#[test]
fn udp_trackers_are_dropped_and_the_info_hash_kept() {
    // `pieces` before `piece length` is not canonical order: a re-encoding would change it.
    let info = b"d6:lengthi5e4:name1:x6:pieces20:aaaaaaaaaaaaaaaaaaaa12:piece lengthi16384ee";
    let mut t = b"d8:announce21:udp://127.0.0.1:1/ann13:announce-listll21:udp://127.0.0.1:1/annel".to_vec();
    t.extend_from_slice(b"29:http://127.0.0.1:2/announce/xee4:info");
    t.extend_from_slice(info);
    t.push(b'e');
    let before = crate::download::info_hash_of(&t).unwrap();
    let (stripped, dropped) = crate::download::without_udp_trackers(&t).unwrap();
    assert_eq!(dropped, 2);
    assert_eq!(crate::download::info_hash_of(&stripped).unwrap(), before);
    let text = String::from_utf8_lossy(&stripped);
    assert!(!text.contains("udp://"), "{text}");
    assert!(text.contains("http://127.0.0.1:2/announce/x"), "{text}");
    // Nothing to drop: the same bytes.
    let (same, none) = crate::download::without_udp_trackers(&stripped).unwrap();
    assert_eq!((same, none), (stripped, 0));
}
