//! In-process tests through the same ABI adapters the host uses.

use std::{path::Path, time::Duration};

use chiral_sdk::{
    abi_stable::std_types::{RString, RVec, Tuple2},
    testkit, DownloadOutcome, DownloadRequest, Events, HandlerBox, PluginError, SeedInfo, SeedRequest,
};
use futures::executor::block_on;

use crate::BitTorrentPlugin;

fn handler(dir: &Path) -> HandlerBox {
    testkit::handler_for::<BitTorrentPlugin>(testkit::config(dir)).expect("handler builds")
}

#[test]
fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    testkit::Kit::new(handler(dir.path()))
        .out_dir(&dir.path().join("out"))
        .skip_seed(
            "one instance downloading what it seeds dials itself, which the swarm refuses (same peer id); \
             seed-to-get between processes is tests/tests/bittorrent.rs",
        )
        .assert_all();
}

fn no_events() -> chiral_sdk::EventSinkBox {
    Events::sink_from_fn(|_| {})
}

use chiral_sdk::testkit::content;

fn opts(pairs: &[(&str, &str)]) -> RVec<Tuple2<RString, RString>> {
    pairs.iter().map(|(k, v)| Tuple2(RString::from(*k), RString::from(*v))).collect()
}

fn seed(h: &HandlerBox, path: &Path, options: &[(&str, &str)]) -> Result<SeedInfo, PluginError> {
    let req = SeedRequest { path: path.to_string_lossy().into_owned().into(), options: opts(options) };
    block_on(h.seed(req, no_events())).into_result()
}

fn download(h: &HandlerBox, id: &str, out: &Path, options: &[(&str, &str)]) -> Result<DownloadOutcome, PluginError> {
    let req = DownloadRequest {
        identifier: id.into(),
        out_dir: out.to_string_lossy().into_owned().into(),
        connections: 8,
        options: opts(options),
    };
    block_on(h.download(req, no_events())).into_result()
}

fn x_pe(magnet: &str) -> String {
    let at = magnet.find("x.pe=").expect("x.pe in the seed's magnet");
    crate::magnet::percent_decode(&magnet[at + 5..]).into_iter().map(char::from).collect()
}

#[test]
fn seed_then_magnet_download_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(3 * 1024 * 1024 + 12345);
    let src = dir.path().join("file one.bin");
    std::fs::write(&src, &data).unwrap();
    let seeder = handler(&dir.path().join("s"));
    let info = seed(&seeder, &src, &[("piece_size", "65536")]).unwrap();
    let magnet = info.identifiers[0].to_string();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
    assert_eq!(seed(&seeder, &src, &[("piece_size", "65536")]).unwrap().id, info.id, "same file, same seed");
    assert_eq!(seeder.list_seeds().len(), 1);

    let leecher = handler(&dir.path().join("l"));
    let out = dir.path().join("out");
    let outcome = download(&leecher, &magnet, &out, &[]).unwrap();
    assert_eq!(std::fs::read(out.join("file one.bin")).unwrap(), data);
    assert_eq!(outcome.bytes, data.len() as u64);
    assert!(!out.join("file one.bin.part").exists());
    // Again: already complete.
    let again = download(&leecher, &magnet, &out, &[]).unwrap();
    assert_eq!(again.resumed_bytes, data.len() as u64);
    assert!(seeder.list_seeds()[0].bytes_served >= data.len() as u64);
    seeder.stop_seed(info.id.clone()).into_result().unwrap();
    assert!(seeder.list_seeds().is_empty());
}

#[test]
fn create_command_then_multi_file_download_by_torrent_file() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("folder");
    std::fs::create_dir_all(top.join("sub")).unwrap();
    let a = content(200_000);
    let b = content(1_000_001);
    std::fs::write(top.join("a.txt"), &a).unwrap();
    std::fs::write(top.join("sub/b.bin"), &b).unwrap();
    let h = handler(&dir.path().join("s"));
    let torrent = dir.path().join("folder.torrent");
    let args = opts(&[
        ("path", top.to_str().unwrap()),
        ("output", torrent.to_str().unwrap()),
        ("tracker", "http://127.0.0.1:9/announce"),
        ("piece_size", "32768"),
        ("private", "false"),
    ]);
    let answer = block_on(h.command("create".into(), args, no_events())).into_result().unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let ih = v["info_hash"].as_str().unwrap().to_string();
    assert_eq!(ih.len(), 40);
    assert!(v["magnet"].as_str().unwrap().contains("&tr=http%3A%2F%2F127.0.0.1%3A9%2Fannounce"));
    // Seeding the same folder with the same options gives the same info hash.
    let info = seed(&h, &top, &[("piece_size", "32768"), ("tracker", "http://127.0.0.1:9/announce")]).unwrap();
    assert_eq!(info.id.as_str(), ih);
    let peer = x_pe(&info.identifiers[0]);

    let leecher = handler(&dir.path().join("l"));
    let out = dir.path().join("out");
    download(&leecher, torrent.to_str().unwrap(), &out, &[("peer", &peer)]).unwrap();
    assert_eq!(std::fs::read(out.join("folder/a.txt")).unwrap(), a);
    assert_eq!(std::fs::read(out.join("folder/sub/b.bin")).unwrap(), b);
    assert!(block_on(h.command("nope".into(), RVec::new(), no_events())).into_result().is_err());
}

/// A peer that has everything and answers every request with garbage.
fn liar(info_hash: [u8; 20], piece_count: u32) -> (u16, std::thread::JoinHandle<u64>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let mut served = 0u64;
        // The first connection with a plain handshake (an MSE attempt is dropped: the liar
        // speaks plaintext only, and the client dials it again in plaintext).
        let mut s = loop {
            let Ok((mut s, _)) = l.accept() else { return 0 };
            s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
            let mut hs = [0u8; 68];
            if s.read_exact(&mut hs).is_ok() && hs[0] == 19 && &hs[1..20] == crate::peer_wire::PROTOCOL {
                break s;
            }
        };
        let ours = crate::peer_wire::Handshake { reserved: [0; 8], info_hash, peer_id: *b"-XX0001-liarliarliar" };
        let mut out = ours.encode().to_vec();
        crate::peer_wire::encode(
            &crate::peer_wire::Message::Bitfield(crate::peer_wire::bitfield_bytes(&vec![true; piece_count as usize])),
            &mut out,
        );
        crate::peer_wire::encode(&crate::peer_wire::Message::Unchoke, &mut out);
        let _ = s.write_all(&out);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let n = match s.read(&mut chunk) {
                Ok(0) | Err(_) => return served,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some((m, used))) = crate::peer_wire::decode(&buf, 1 << 20, None) {
                buf.drain(..used);
                if let crate::peer_wire::Message::Request { index, begin, length } = m {
                    let mut o = Vec::new();
                    crate::peer_wire::encode(
                        &crate::peer_wire::Message::Piece { index, begin, data: vec![0xee; length as usize] },
                        &mut o,
                    );
                    if s.write_all(&o).is_err() {
                        return served;
                    }
                    served += 1;
                }
            }
        }
    });
    (port, t)
}

#[test]
fn a_peer_sending_bad_blocks_is_banned_and_the_download_completes() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough that the download is still running when the liar's connection is up (the
    // honest seeder alone would otherwise finish first and the liar never be asked).
    let data = content(16 * 1024 * 1024);
    let src = dir.path().join("d.bin");
    std::fs::write(&src, &data).unwrap();
    let seeder = handler(&dir.path().join("s"));
    let info = seed(&seeder, &src, &[("piece_size", "16384")]).unwrap();
    let good = x_pe(&info.identifiers[0]);
    let ih: [u8; 20] = hex::decode(info.id.as_str()).unwrap().try_into().unwrap();
    let (liar_port, liar_thread) = liar(ih, 1024);
    let leecher = handler(&dir.path().join("l"));
    let out = dir.path().join("out");
    let magnet = format!("{}&x.pe=127.0.0.1:{liar_port}", info.identifiers[0]);
    download(&leecher, &magnet, &out, &[]).unwrap();
    assert_eq!(std::fs::read(out.join("d.bin")).unwrap(), data);
    let served = liar_thread.join().unwrap();
    assert!(served > 0, "the liar was asked for blocks");
    let _ = good;
}

fn handler_with(dir: &Path, options: &[(&str, &str)]) -> HandlerBox {
    let mut c = testkit::config(dir);
    c.options = opts(options);
    testkit::handler_for::<BitTorrentPlugin>(c).expect("handler builds")
}

#[test]
fn chiral_peers_identify_each_other_and_payments_are_announced() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let data = content(3 * 1024 * 1024);
    let src = dir.path().join("paid.bin");
    std::fs::write(&src, &data).unwrap();
    let seeder = handler_with(&dir.path().join("s"), &[("wallet", "0xseeder")]);
    // The seeder's Chiral peer id: the key it made in its data dir.
    let seed_id = crate::identity::Identity::load_or_create(&dir.path().join("s")).0.id();
    let info = seed(&seeder, &src, &[]).unwrap();
    let leecher = handler_with(&dir.path().join("l"), &[("payment_threshold", "1048576")]);
    assert_ne!(crate::identity::Identity::load_or_create(&dir.path().join("l")).0.id(), seed_id);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let sink = Events::sink_from_fn(move |e| {
        if let chiral_sdk::Event::PaymentRequired { peer, wallet, bytes } = e {
            s2.lock().unwrap().push((peer.to_string(), wallet.into_option().map(|w| w.to_string()), bytes));
        }
    });
    let req = DownloadRequest {
        identifier: info.identifiers[0].clone(),
        out_dir: dir.path().join("out").to_string_lossy().into_owned().into(),
        connections: 8,
        options: RVec::new(),
    };
    block_on(leecher.download(req, sink)).into_result().unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/paid.bin")).unwrap(), data);
    let seen = seen.lock().unwrap();
    // One report per verified piece, each naming the piece: together exactly the content.
    assert!(!seen.is_empty(), "{seen:?}");
    let prefix = format!("{seed_id} piece ");
    assert!(seen.iter().all(|(p, w, _)| p.starts_with(&prefix) && w.as_deref() == Some("0xseeder")), "{seen:?}");
    let mut pieces: Vec<&str> = seen.iter().map(|s| s.0.rsplit_once(':').unwrap().0).collect();
    pieces.sort();
    pieces.dedup();
    assert_eq!(pieces.len(), seen.len(), "a piece billed twice: {seen:?}");
    assert_eq!(seen.iter().map(|s| s.2).sum::<u64>(), data.len() as u64, "{seen:?}");
}

/// A minimal HTTP/1.1 server with `Range` support serving `data` at any path; counts requests.
/// With `hoffman` (a piece length) it answers as a BEP 17 script instead: `?piece=N&ranges=A-B`.
fn range_server(data: Vec<u8>, hoffman: Option<usize>) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h2 = hits.clone();
    let data = std::sync::Arc::new(data);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (data, hits) = (data.clone(), h2.clone());
            std::thread::spawn(move || {
                let mut rd = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut range = None;
                    let mut line = String::new();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let query = line.split_whitespace().nth(1).and_then(|p| p.split_once('?')).map(|q| q.1.to_string());
                    loop {
                        let mut h = String::new();
                        if rd.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(r) = h.strip_prefix("range: bytes=") {
                            let (a, b) = r.split_once('-').unwrap();
                            range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                        }
                    }
                    hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let (Some(plen), Some(q)) = (hoffman, &query) {
                        let arg = |k: &str| q.split('&').find_map(|kv| kv.strip_prefix(k)).unwrap_or_default();
                        let base = arg("piece=").parse::<usize>().unwrap() * plen;
                        let (a, b) = arg("ranges=").split_once('-').unwrap();
                        let body = &data[base + a.parse::<usize>().unwrap()..=base + b.parse::<usize>().unwrap()];
                        assert!(!arg("info_hash=").is_empty(), "{q}");
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if w.write_all(head.as_bytes()).and_then(|_| w.write_all(body)).is_err() {
                            return;
                        }
                        continue;
                    }
                    let (a, b) = range.unwrap_or((0, data.len() - 1));
                    let body = &data[a..=b.min(data.len() - 1)];
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{}/{}\r\n\r\n",
                        body.len(),
                        a + body.len() - 1,
                        data.len()
                    );
                    if w.write_all(head.as_bytes()).and_then(|_| w.write_all(body)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://127.0.0.1:{port}/file.bin"), hits)
}

/// BEP 19: `download()` runs one byte-range source per web seed beside the (empty) swarm;
/// `open_source()` (what the host uses) falls back to the web seeds piece by piece.
#[test]
fn web_seeds_serve_a_torrent_with_no_peers() {
    web_seed_case("web_seed", None, "webseed:");
}

/// BEP 17 (`httpseeds`): the same, from a script asked by piece and range.
#[test]
fn http_seeds_serve_a_torrent_with_no_peers() {
    web_seed_case("http_seed", Some(65536), "httpseed:");
}

/// A torrent of 1.5 MB in 64 KiB pieces whose only source is one web seed of the kind `option`
/// adds (`hoffman`: a BEP 17 server), downloaded both ways.
fn web_seed_case(option: &str, hoffman: Option<usize>, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = content(1_500_000);
    let src = dir.path().join("file.bin");
    std::fs::write(&src, &data).unwrap();
    let (url, hits) = range_server(data.clone(), hoffman);
    let h = handler(&dir.path().join("s"));
    let torrent = dir.path().join("ws.torrent");
    let args = opts(&[
        ("path", src.to_str().unwrap()),
        ("output", torrent.to_str().unwrap()),
        (option, &url),
        ("piece_size", "65536"),
    ]);
    block_on(h.command("create".into(), args, no_events())).into_result().unwrap();

    let out = dir.path().join("out");
    let outcome = download(&h, torrent.to_str().unwrap(), &out, &[]).unwrap();
    assert_eq!(std::fs::read(out.join("file.bin")).unwrap(), data);
    assert!(
        outcome.per_source.iter().any(|s| s.label.as_str().starts_with(label) && s.bytes == data.len() as u64),
        "{:?}",
        outcome.per_source
    );
    assert!(hits.load(std::sync::atomic::Ordering::Relaxed) >= 23);

    // The host's path: one source whose fetch takes pieces from the web seed.
    let src =
        block_on(h.open_source(torrent.to_string_lossy().into_owned().into(), no_events())).into_result().unwrap();
    let piece = block_on(src.fetch(65536, 65536)).into_result().unwrap();
    assert_eq!(piece.as_slice(), &data[65536..131072]);
    let tail = block_on(src.fetch(1_400_000, 100_000)).into_result().unwrap();
    assert_eq!(tail.as_slice(), &data[1_400_000..]);
}

/// BEP 5 through the plugin: a bootstrap node (`dht_bootstrap = none`), a seeder and a
/// downloader on loopback; the magnet has no tracker and no peer address.
#[test]
fn trackerless_magnet_over_a_loopback_dht() {
    let dir = tempfile::tempdir().unwrap();
    let dht_handler = |d: &str, boot: &str| {
        let mut c = testkit::config(&dir.path().join(d));
        c.no_dht = false;
        c.options = opts(&[("dht_bootstrap", boot)]);
        testkit::handler_for::<BitTorrentPlugin>(c).expect("handler builds")
    };
    let dht_addr = |h: &HandlerBox| -> String {
        let v = block_on(h.command("dht".into(), RVec::new(), no_events())).into_result().unwrap();
        let v: serde_json::Value = serde_json::from_str(&v).unwrap();
        v["dht"].as_str().expect("a DHT address").to_string()
    };
    let boot = dht_handler("b", "none");
    let boot_addr = dht_addr(&boot);
    assert!(boot_addr.starts_with("127.0.0.1:"), "{boot_addr}");
    let data = content(700_000);
    let src = dir.path().join("dht.bin");
    std::fs::write(&src, &data).unwrap();
    let seeder = dht_handler("s", &boot_addr);
    let info = seed(&seeder, &src, &[]).unwrap();
    let bare = format!("magnet:?xt=urn:btih:{}", info.id);
    let leecher = dht_handler("l", &dht_addr(&seeder));
    let out = dir.path().join("out");
    download(&leecher, &bare, &out, &[]).unwrap();
    assert_eq!(std::fs::read(out.join("dht.bin")).unwrap(), data);
}

/// A swarm reads ahead of the engine (the pieces after the last one asked for) only while it
/// is the download's only source: beside others, those pieces go to other sources.
#[test]
fn the_swarm_reads_ahead_only_when_it_is_the_only_source() {
    let dir = tempfile::tempdir().unwrap();
    let piece = 65536u64;
    let data = content(4 * 1024 * 1024);
    let src = dir.path().join("ahead.bin");
    std::fs::write(&src, &data).unwrap();
    let seeder = handler(&dir.path().join("s"));
    let info = seed(&seeder, &src, &[("piece_size", "65536")]).unwrap();
    let magnet = info.identifiers[0].to_string();
    let got = |s: &chiral_sdk::SourceBox| s.peers().iter().map(|p| p.downloaded).sum::<u64>();

    // Beside another source: exactly the two pieces asked for come over the wire.
    let leecher = handler(&dir.path().join("l1"));
    let s = block_on(leecher.open_source(magnet.clone().into(), no_events())).into_result().unwrap();
    s.set_other_sources(1);
    let p0 = block_on(s.fetch(0, piece)).into_result().unwrap();
    assert_eq!(p0.as_slice(), &data[..piece as usize]);
    let p40 = block_on(s.fetch(40 * piece, piece)).into_result().unwrap();
    assert_eq!(p40.as_slice(), &data[40 * piece as usize..41 * piece as usize]);
    assert_eq!(got(&s), 2 * piece, "nothing read ahead beside another source");
    drop(s);

    // Alone: the requests for the pieces after 0 went out before the one for piece 40, so
    // they have come in by the time it has.
    let leecher = handler(&dir.path().join("l2"));
    let s = block_on(leecher.open_source(magnet.into(), no_events())).into_result().unwrap();
    s.set_other_sources(0);
    block_on(s.fetch(0, piece)).into_result().unwrap();
    block_on(s.fetch(40 * piece, piece)).into_result().unwrap();
    assert!(got(&s) > 2 * piece, "read ahead while alone: {} bytes", got(&s));
}

/// `x.pe` names are looked up together: a name that resolves gives one address, one that
/// cannot (an invalid name, a port out of range) is left out, and none holds up the others.
#[test]
fn x_pe_names_resolve_together_and_bad_ones_are_left_out() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let names =
        vec!["localhost:6881".to_string(), "no such host .invalid:1".to_string(), "localhost:99999".to_string()];
    let found = rt.block_on(crate::resolve_peer_names(names, Duration::from_secs(5)));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ip().is_loopback() && found[0].port() == 6881, "{found:?}");
    assert!(rt.block_on(crate::resolve_peer_names(Vec::new(), Duration::from_secs(5))).is_empty());
}
