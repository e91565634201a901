//! # chiral-plugin-chiral
//!
//! The Chiral network plugin: a libp2p node (ed25519 identity kept in the data directory,
//! TCP + TLS (AES-GCM first) or Noise + Yamux, optionally QUIC; identify `/chiral/2.0.0`,
//! Kademlia `/chiral/kad/2.0.0` in server mode,
//! request-response `/chiral/chunk/1.0.0`) publishing and finding content by its Merkle root.
//!
//! - [`records`]: content ids, DHT keys and record values (sans-IO, validated on read);
//! - [`wire`]: the chunk protocol's messages and bounded codec (sans-IO);
//! - [`reputation`]: per-peer metrics, score and provider choice (sans-IO);
//! - [`seed`]: hashing a file into its Merkle tree, serving chunks with proofs;
//! - [`node`]: the swarm task and its handle (transports built in one place, `build_swarm`);
//! - [`tls`]: libp2p's TLS upgrade with AES-GCM offered first;
//! - [`dial_filter`]: the SDK dial policy on the addresses other nodes name (no dials to
//!   loopback or private services unless the node's own network is that local);
//! - [`source`]: a content as an engine source fetching verified chunks from many providers.
//!
//! The node starts on first use (`node`, `search`, `seed`, `open_source`) and runs on the
//! plugin's runtime until the process exits.

pub mod dial_filter;
pub mod link;
pub mod node;
pub mod proxy_transport;
pub mod records;
pub mod reputation;
pub mod seed;
pub mod source;
pub mod tls;
pub mod wire;

use std::{path::Path, sync::Arc, time::Duration};

use chiral_sdk::{
    capability, engine,
    options::{parse_size, Opts},
    plugin::BoxFut,
    runtime::PluginRuntime,
    DownloadOutcome, DownloadRequest, Events, HostConfig, PieceSource, Plugin, PluginDescriptor, PluginError, SeedInfo,
    SeedRequest, SourceBytes,
};
use serde_json::json;

use crate::{
    node::Node,
    records::{content_id, FileMeta, IndexBody, Seeder},
    seed::{MerkleTree, SeedEntry},
    source::ChiralSource,
};

pub struct ChiralPlugin {
    // Dropped first: its shutdown stops the swarm task before the state it uses goes away.
    runtime: PluginRuntime,
    config: HostConfig,
    events: Events,
    node: tokio::sync::OnceCell<Node>,
    /// `max_upload_rate` (the host's `--max-upload-rate`): shared by every seed of the plugin.
    upload_rate: Option<Arc<chiral_sdk::rate::RateLimiter>>,
}

/// What an identifier names: a content id, or a magnet's info hash to resolve through
/// `info_hash_idx`.
enum Target {
    Root([u8; 32]),
    InfoHash(String),
}

fn target_of(identifier: &str) -> Result<Target, PluginError> {
    if let Some(root) = records::parse_content_id(identifier) {
        return Ok(Target::Root(root));
    }
    if identifier.len() > 7 && identifier[..7].eq_ignore_ascii_case("magnet:") {
        if let Some(ih) = chiral_sdk::ident::magnet_info_hash_hex(identifier) {
            return Ok(Target::InfoHash(ih));
        }
    }
    Err(PluginError::unsupported(format!(
        "not a Chiral content id (chiral:<64 hex>) nor a magnet with a btih info hash: {}",
        identifier.chars().take(80).collect::<String>()
    )))
}

impl ChiralPlugin {
    /// This node's wallet (plugin option `wallet`, set by the host), when well formed; a
    /// malformed one is logged and not published.
    fn wallet(&self, events: &Events) -> Option<String> {
        let opts = Opts::from_abi(&self.config.options);
        let w = opts.get_str("wallet")?;
        let parsed = records::parse_wallet(w);
        if parsed.is_none() {
            events.warn(format!("wallet {:?} is not 0x and 40 hex digits: not published", chiral_sdk::text::line(w)));
        }
        parsed
    }

    async fn node(&self) -> Result<Node, PluginError> {
        self.node.get_or_try_init(|| Node::start(&self.config, self.events.clone())).await.cloned()
    }

    async fn open(self: Arc<Self>, identifier: String, events: Events) -> Result<Arc<ChiralSource>, PluginError> {
        let target = target_of(&identifier)?;
        let node = self.node().await?;
        match target {
            Target::Root(r) => ChiralSource::open(node, r, None, events).await,
            Target::InfoHash(ih) => {
                node.join().await;
                let roots = read_roots(&node, records::info_hash_key(&ih), &events).await?;
                if roots.is_empty() {
                    return Err(PluginError::not_found(format!("no Chiral content carries info hash {ih}")));
                }
                // Entries are per publisher: try a few roots, preferring one whose record
                // carries the info dictionary that hashes to the magnet's info hash.
                let mut fallback = None;
                let mut last_error = None;
                for root in roots.into_iter().take(MAGNET_ROOTS) {
                    match ChiralSource::open(node.clone(), root, Some(&ih), events.clone()).await {
                        Ok(src) if src.proven_torrent() => return Ok(src),
                        Ok(src) => {
                            fallback.get_or_insert(src);
                        }
                        Err(e) => last_error = Some(e),
                    }
                }
                fallback.ok_or_else(|| {
                    last_error
                        .unwrap_or_else(|| PluginError::not_found(format!("no Chiral content carries info hash {ih}")))
                })
            }
        }
    }

    async fn seed_file(&self, request: SeedRequest, events: Events) -> Result<SeedInfo, PluginError> {
        let path = Path::new(request.path.as_str()).to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|e| PluginError::not_found(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(PluginError::invalid(format!("{}: the Chiral network seeds single files", path.display())));
        }
        let opts = Opts::from_abi(&request.options);
        let info_hash = opts.get_with("info_hash", "40 hex digits", records::parse_info_hash)?;
        let info_dict = opts.get_str("info_dict").map(str::to_string);
        let mirrors = opts.get_all("mirror");
        let upload_rate =
            opts.get_with("upload_rate", "bytes per second, e.g. 16M", |v| parse_size(v).filter(|n| *n > 0))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let hashing = path.clone();
        let (leaves, size) = tokio::task::spawn_blocking(move || seed::hash_file(&hashing))
            .await
            .map_err(|e| PluginError::other(format!("hashing: {e}")))?
            .map_err(|e| PluginError::io(format!("{}: {e}", path.display())))?;
        let tree = MerkleTree::new(leaves);
        let root = tree.root();
        let cid = content_id(&root);
        let node = self.node().await?;
        let entry = Arc::new(
            SeedEntry::open(&path, name.clone(), vec![cid.clone()], tree, size)?
                .with_upload_rate(upload_rate, self.upload_rate.clone()),
        );
        node.add_seed(root, entry.clone());

        let mut fm = FileMeta::new(&root, &name, size);
        fm.info_hash = info_hash.clone();
        fm.info_dict = info_dict;
        if fm.info_dict.is_some() && fm.torrent_info().is_none() {
            events.warn("info_dict is not the info dictionary of info_hash for this file: not published");
            fm.info_dict = None;
        }
        fm.mirrors = mirrors;
        fm.seeders.push(Seeder { peer_id: node.peer_id().to_string(), addrs: node.plain_addrs() });
        fm.wallet = self.wallet(&events);
        // Kept locally too (what this node seeds, readable without the network).
        let dir = Path::new(self.config.data_dir.as_str()).join("seeds");
        if std::fs::create_dir_all(&dir).is_ok() {
            if let Ok(v) = serde_json::to_vec_pretty(&fm) {
                let _ = std::fs::write(dir.join(format!("{}.json", hex::encode(root))), v);
            }
        }
        node.join().await;
        publish(&node, &fm, &events).await?;
        // Entries expire: re-signed and published again while this node seeds the content.
        let (n, ev) = (node.clone(), events.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REPUBLISH).await;
                if !n.seeds().iter().any(|s| s.tree.root() == root) {
                    break;
                }
                if let Err(e) = publish(&n, &fm, &ev).await {
                    ev.warn(format!("republishing {}: {e}", fm.root));
                }
            }
        });
        events.info(format!("seeding {} as {cid}", path.display()));
        Ok(SeedInfo {
            id: entry.id.clone().into(),
            path: path.to_string_lossy().into_owned().into(),
            identifiers: vec![cid.into()].into(),
            bytes_served: 0,
        })
    }

    async fn search(&self, word: &str, events: &Events) -> Result<String, PluginError> {
        let word = word.trim().to_lowercase();
        if word.is_empty() {
            return Err(PluginError::invalid("search needs a word"));
        }
        let node = self.node().await?;
        node.join().await;
        let key = records::keyword_key(&word);
        let (entries, refused) = records::index_entries(
            &key,
            node.get_record(key.clone()).await?.iter().map(|(_, v)| v.as_slice()),
            records::now(),
        );
        for r in refused {
            events.warn(format!("index entry rejected: {r}"));
        }
        let mut results = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in entries.iter() {
            let Some(root) = records::parse_hex32(&e.body.root) else { continue };
            if !seen.insert(root) || results.len() >= 100 {
                continue;
            }
            let mkey = records::meta_key(&root);
            let copies = node.get_record(mkey.clone()).await?;
            let (metas, refused) =
                records::meta_entries(&mkey, copies.iter().map(|(_, v)| v.as_slice()), records::now());
            for r in refused {
                events.warn(format!("metadata record rejected: {r}"));
            }
            // The name and size the index entry's own publisher gave, else any publisher's.
            let meta = metas.iter().find(|m| m.publisher == e.publisher).or(metas.first());
            let name = meta.map(|m| m.body.name.clone()).or_else(|| e.body.name.clone()).unwrap_or_default();
            let size = meta.map(|m| m.body.size).unwrap_or_default();
            results.push(json!({ "id": content_id(&root), "name": name, "size": size }));
        }
        Ok(json!({ "results": results }).to_string())
    }
}

/// The roots of every valid entry of the index record under `key`, merged from every copy
/// found (refused entries are logged and skipped).
async fn read_roots(
    node: &Node,
    key: Vec<u8>,
    events: &Events,
) -> Result<Vec<chiral_sdk::verify::Hash32>, PluginError> {
    let copies = node.get_record(key.clone()).await?;
    let (entries, refused) = records::index_entries(&key, copies.iter().map(|(_, v)| v.as_slice()), records::now());
    for r in refused {
        events.warn(format!("index entry rejected: {r}"));
    }
    Ok(records::roots_of(&entries))
}

/// Most roots of an `info_hash_idx` record tried for one magnet.
const MAGNET_ROOTS: usize = 4;

/// How often a seed's records are signed and published again (they live [`records::ENTRY_TTL`]).
const REPUBLISH: Duration = Duration::from_secs(records::ENTRY_TTL / 3);

/// Signs one index entry of this node under `key` and puts it.
async fn add_to_index(node: &Node, key: Vec<u8>, body: IndexBody) -> Result<(), PluginError> {
    let text = serde_json::to_string(&body).map_err(|e| PluginError::other(e.to_string()))?;
    let signed = records::sign(&node.shared.keypair, &key, text).map_err(|e| PluginError::other(e.to_string()))?;
    let value = records::SignedSet::of(vec![signed]).encode().map_err(|e| PluginError::invalid(e.to_string()))?;
    node.put_record(key, value).await
}

/// Puts the metadata record, provides the root, adds the root to the info-hash and keyword
/// indexes. Failing to reach other nodes is a warning (the records stay on this node, which
/// answers lookups), not an error.
async fn publish(node: &Node, fm: &FileMeta, events: &Events) -> Result<(), PluginError> {
    let root = fm.root_bytes().ok_or_else(|| PluginError::invalid("bad root"))?;
    let expires = records::now() + records::ENTRY_TTL;
    let mut fm = fm.clone();
    fm.expires = expires;
    let mkey = records::meta_key(&root);
    let body = fm.body().map_err(|e| PluginError::invalid(e.to_string()))?;
    let signed = records::sign(&node.shared.keypair, &mkey, body).map_err(|e| PluginError::other(e.to_string()))?;
    let value = records::SignedSet::of(vec![signed]).encode().map_err(|e| PluginError::invalid(e.to_string()))?;
    let mut jobs: Vec<(String, BoxFut<()>)> = Vec::new();
    {
        let n = node.clone();
        let k = mkey.clone();
        jobs.push(("metadata record".into(), Box::pin(async move { n.put_record(k, value).await })));
        let n = node.clone();
        jobs.push(("provider record".into(), Box::pin(async move { n.provide(mkey).await })));
    }
    if let Some(ih) = &fm.info_hash {
        let n = node.clone();
        let key = records::info_hash_key(ih);
        let body = IndexBody { root: fm.root.clone(), name: None, info_hash: Some(ih.clone()), expires };
        jobs.push((format!("info_hash_idx::{ih}"), Box::pin(async move { add_to_index(&n, key, body).await })));
    }
    for w in records::keywords(&fm.name) {
        let n = node.clone();
        let key = records::keyword_key(&w);
        let body = IndexBody { root: fm.root.clone(), name: Some(fm.name.clone()), info_hash: None, expires };
        jobs.push((format!("keyword_idx::{w}"), Box::pin(async move { add_to_index(&n, key, body).await })));
    }
    let (names, futs): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
    let results = tokio::time::timeout(Duration::from_secs(40), futures::future::join_all(futs)).await;
    match results {
        Ok(results) => {
            for (name, r) in names.iter().zip(results) {
                if let Err(e) = r {
                    events.warn(format!("{name} kept on this node only: {e}"));
                }
            }
        }
        Err(_) => events.warn("publishing took over 40 s; records are kept on this node and republished later"),
    }
    Ok(())
}

impl Plugin for ChiralPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor::new("chiral", env!("CARGO_PKG_VERSION"))
            .schemes(&["chiral", "magnet"])
            .capabilities(
                capability::DOWNLOAD
                    | capability::SEED
                    | capability::SOURCE
                    | capability::SEED_MANAGE
                    | capability::EXTRA_SOURCE
                    | capability::REPUTED_PEERS
                    | capability::PIPELINED,
            )
            // Never wins `magnet` over BitTorrent: it only adds Chiral seeders as extra sources.
            .priority(-10)
            .description("Chiral network (libp2p Kademlia): content by Merkle root, verified chunks from many peers")
    }

    fn new(config: HostConfig, events: Events) -> Result<Self, PluginError> {
        let opts = Opts::from_abi(&config.options);
        let runtime = PluginRuntime::for_plugin("chiral", &opts)?;
        let upload_rate = chiral_sdk::rate::limiter(opts.get_bytes("max_upload_rate")?);
        Ok(Self { runtime, config, events, node: tokio::sync::OnceCell::new(), upload_rate })
    }

    fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.handle()
    }

    fn download(self: Arc<Self>, request: DownloadRequest, events: Events) -> BoxFut<DownloadOutcome> {
        Box::pin(async move {
            let src = self.clone().open(request.identifier.to_string(), events.clone()).await?;
            let mut opts = engine::Options::new(request.out_dir.as_str());
            opts.slots_per_source = if request.connections == 0 { 8 } else { request.connections as usize };
            let total = src.info().length;
            let on = move |e: engine::EngineEvent| {
                if let engine::EngineEvent::Piece { .. } = e {
                    events.progress(0, total, 0);
                }
            };
            let out = engine::run(vec![src.clone() as Arc<dyn PieceSource>], &opts, &on).await?;
            Ok(DownloadOutcome {
                files: out.files.iter().map(|f| f.to_string_lossy().into_owned().into()).collect(),
                bytes: out.length,
                resumed_bytes: out.resumed_bytes,
                per_source: src
                    .per_provider()
                    .into_iter()
                    .map(|(peer, bytes, _)| SourceBytes { label: peer.into(), bytes })
                    .collect(),
            })
        })
    }

    fn seed(self: Arc<Self>, request: SeedRequest, events: Events) -> BoxFut<SeedInfo> {
        Box::pin(async move { self.seed_file(request, events).await })
    }

    fn list_seeds(&self) -> Vec<SeedInfo> {
        let Some(node) = self.node.get() else { return Vec::new() };
        node.seeds()
            .into_iter()
            .map(|s| SeedInfo {
                id: s.id.as_str().into(),
                path: s.path.to_string_lossy().into_owned().into(),
                identifiers: s.identifiers.iter().map(|i| i.as_str().into()).collect(),
                bytes_served: s.served.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect()
    }

    fn stop_seed(&self, id: &str) -> Result<(), PluginError> {
        match self.node.get() {
            Some(node) if node.remove_seed(id) => Ok(()),
            _ => Err(PluginError::not_found(format!("no seed {id}"))),
        }
    }

    fn open_source(self: Arc<Self>, identifier: String, events: Events) -> BoxFut<Arc<dyn PieceSource>> {
        Box::pin(async move {
            let src = self.open(identifier, events).await?;
            Ok(src as Arc<dyn PieceSource>)
        })
    }

    fn command(self: Arc<Self>, name: String, args: Vec<(String, String)>, events: Events) -> BoxFut<String> {
        Box::pin(async move {
            let arg = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or_default();
            match name.as_str() {
                "node" => {
                    let node = self.node().await?;
                    node.serve();
                    // Join the network in the background; the node keeps running.
                    let n = node.clone();
                    tokio::spawn(async move { n.join().await });
                    Ok(json!({ "peer_id": node.peer_id().to_string(), "addrs": node.addrs() }).to_string())
                }
                "search" => self.search(arg("word"), &events).await,
                "peers" => {
                    let node = self.node().await?;
                    let m = node.shared.metrics.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let peers: Vec<_> = m
                        .iter()
                        .map(|(p, m)| {
                            json!({
                                "peer_id": p.to_string(), "score": m.score, "successes": m.successes,
                                "failures": m.failures, "bad_data": m.bad_data, "bytes": m.bytes,
                                "latency_ms": m.latency_ms, "throughput": m.throughput,
                                "protocols": m.protocols, "agent": m.agent,
                            })
                        })
                        .collect();
                    Ok(json!({ "peers": peers }).to_string())
                }
                // The identity link (chiral_sdk::link): this node's network key vouches for
                // the BitTorrent plugin's Chiral peer id `bt_id`. No node is started for it.
                "link_proof" => {
                    let key = match self.node.get() {
                        Some(n) => n.shared.keypair.clone(),
                        None => node::load_identity(Path::new(self.config.data_dir.as_str()))?,
                    };
                    let (key, signature) = link::prove(&key, arg("bt_id"))?;
                    Ok(json!({ "key": key, "signature": signature }).to_string())
                }
                // The kept scores of peers with ed25519 identities, by public key (the running
                // node's, else the data dir's), each marked `poor` below the poor line: for the
                // BitTorrent fast lane.
                "reputation" => {
                    let metrics = match self.node.get() {
                        Some(n) => n.shared.metrics.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                        None => reputation::load(Path::new(self.config.data_dir.as_str()), &events),
                    };
                    Ok(json!({ "peers": link::scores(&metrics) }).to_string())
                }
                other => Err(PluginError::unsupported(format!("plugin chiral has no command {other:?}"))),
            }
        })
    }
}

chiral_sdk::export_plugin!(ChiralPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use chiral_sdk::abi_stable;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let handler =
            chiral_sdk::testkit::handler_for::<ChiralPlugin>(chiral_sdk::testkit::config(dir.path())).unwrap();
        chiral_sdk::testkit::Kit::new(handler)
            .out_dir(dir.path())
            .skip_seed("a lone node with no bootstrap peer cannot find its own seed")
            .assert_all();
    }

    fn plugin(dir: &Path, bootstrap: Vec<String>) -> Arc<ChiralPlugin> {
        let mut cfg = chiral_sdk::testkit::config(dir);
        cfg.no_dht = false;
        cfg.bootstrap = bootstrap.into_iter().map(Into::into).collect();
        Arc::new(ChiralPlugin::new(cfg, Events::none()).unwrap())
    }

    /// Two nodes in one process: one seeds, the other finds it through the DHT and fetches
    /// every chunk (verified), an unaligned range, then searches by keyword.
    #[test]
    fn seed_find_fetch_and_search_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> =
            (0..(chiral_sdk::verify::CHUNK_SIZE as usize * 5 + 123)).map(|i| (i * 31 % 251) as u8).collect();
        let file = dir.path().join("Holiday_Movie.bin");
        std::fs::write(&file, &data).unwrap();
        let seeder = plugin(&dir.path().join("s"), vec![]);
        let rt = seeder.runtime();
        let addr = rt.block_on(seeder.clone().command("node".into(), vec![], Events::none())).unwrap();
        let addr: serde_json::Value = serde_json::from_str(&addr).unwrap();
        let addr = addr["addrs"][0].as_str().unwrap().to_string();
        let req = SeedRequest {
            path: file.to_string_lossy().into_owned().into(),
            options: vec![abi_stable::std_types::Tuple2("info_hash".into(), "ab".repeat(20).into())].into(),
        };
        let info = rt.block_on(seeder.clone().seed(req, Events::none())).unwrap();
        let root = chiral_sdk::verify::merkle_root(&chiral_sdk::verify::leaves_of(&data));
        assert_eq!(info.identifiers[0].as_str(), content_id(&root));
        assert_eq!(seeder.list_seeds().len(), 1);

        let getter = plugin(&dir.path().join("g"), vec![addr]);
        let grt = getter.runtime();
        let src = grt.block_on(getter.clone().open_source(content_id(&root), Events::none())).unwrap();
        let ci = src.info();
        assert_eq!(ci.length, data.len() as u64);
        assert_eq!(ci.name.as_str(), "Holiday_Movie.bin");
        assert_eq!(ci.hash_kind, chiral_sdk::HashKind::Sha256Merkle);
        let v = chiral_sdk::verify::PieceVerifier::for_content(&ci, 6).unwrap();
        let chunk = chiral_sdk::verify::CHUNK_SIZE;
        for i in 0..6u64 {
            let len = (data.len() as u64 - i * chunk).min(chunk);
            let got = grt.block_on(src.fetch(i * chunk, len)).unwrap();
            v.verify(i as u32, &got).unwrap();
        }
        let got = grt.block_on(src.fetch(chunk - 10, chunk + 20)).unwrap();
        assert_eq!(got.as_slice(), &data[chunk as usize - 10..2 * chunk as usize + 10]);
        assert!(grt.block_on(src.fetch(data.len() as u64, 1)).is_err());

        // Magnet dual lookup through info_hash_idx.
        let magnet = format!("magnet:?xt=urn:btih:{}", "AB".repeat(20));
        let m = grt.block_on(getter.clone().open_source(magnet, Events::none())).unwrap();
        assert_eq!(m.info().root.as_slice(), root.as_slice());

        let found = grt
            .block_on(getter.clone().command("search".into(), vec![("word".into(), "MOVIE".into())], Events::none()))
            .unwrap();
        let found: serde_json::Value = serde_json::from_str(&found).unwrap();
        assert_eq!(found["results"][0]["id"], content_id(&root));
        assert_eq!(found["results"][0]["size"], data.len() as u64);

        // The peer's metrics recorded the transfers and its identify protocols.
        let peers = grt.block_on(getter.clone().command("peers".into(), vec![], Events::none())).unwrap();
        let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
        let p = &peers["peers"][0];
        assert!(p["successes"].as_u64().unwrap() >= 7, "{p}");
        assert!(p["score"].as_f64().unwrap() > reputation::INITIAL_SCORE);
        assert!(p["protocols"].as_array().unwrap().iter().any(|x| x == "/chiral/chunk/1.0.0"), "{p}");

        // Unknown content: a clean not-found, in bounded time.
        let missing = grt.block_on(getter.clone().open_source(content_id(&[9; 32]), Events::none()));
        assert!(missing.is_err());
        assert!(seeder.stop_seed(&info.id).is_ok());
        assert!(seeder.stop_seed("nope").is_err());
    }

    /// A malformed record put by a peer is refused by the node that receives it, with the
    /// reason logged; one over the size bound does not even leave the sender.
    #[test]
    fn malformed_and_oversized_records_are_rejected_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = logs.clone();
        let events = Events::from_box(Events::sink_from_fn(move |e| {
            if let chiral_sdk::Event::Log { message, .. } = e {
                seen.lock().unwrap().push(message.to_string());
            }
        }));
        let mut cfg = chiral_sdk::testkit::config(&dir.path().join("r"));
        cfg.no_dht = false;
        let receiver = Arc::new(ChiralPlugin::new(cfg, events).unwrap());
        let rt = receiver.runtime();
        let addr = rt.block_on(receiver.clone().command("node".into(), vec![], Events::none())).unwrap();
        let addr: serde_json::Value = serde_json::from_str(&addr).unwrap();
        let addr = addr["addrs"][0].as_str().unwrap().to_string();

        let sender = plugin(&dir.path().join("s"), vec![addr]);
        let srt = sender.runtime();
        let node = srt.block_on(sender.node()).unwrap();
        srt.block_on(node.join());
        let _ = srt.block_on(node.put_record(records::meta_key(&[7; 32]), b"{not json".to_vec()));
        let t0 = std::time::Instant::now();
        let rejected = loop {
            if let Some(l) = logs.lock().unwrap().iter().find(|l| l.contains("rejected")) {
                break l.clone();
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no rejection logged: {:?}", logs.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(rejected.contains("malformed"), "{rejected}");

        let huge = vec![b' '; records::MAX_RECORD + 1];
        assert!(srt.block_on(node.put_record(records::meta_key(&[8; 32]), huge)).is_err());
    }

    /// A bootstrap node, an honest seeder, a flooder and a reader, each its own plugin (own
    /// runtime, identity, sockets): the flooder signs 512 roots under the honest file's keyword
    /// and a metadata record of another size under its root; the reader still finds the honest
    /// entry, and opens the content with its true size.
    #[test]
    fn a_flooded_index_and_a_metadata_overwrite_leave_the_honest_publisher() {
        let dir = tempfile::tempdir().unwrap();
        let (_boot, addr) = boot_node(dir.path());

        let data: Vec<u8> = (0..(chiral_sdk::verify::CHUNK_SIZE as usize * 2 + 7)).map(|i| (i % 241) as u8).collect();
        let file = dir.path().join("Zeppelin_Flight.bin");
        std::fs::write(&file, &data).unwrap();
        let honest = plugin(&dir.path().join("h"), vec![addr.clone()]);
        let hrt = honest.runtime();
        let req = SeedRequest { path: file.to_string_lossy().into_owned().into(), options: Default::default() };
        let info = hrt.block_on(honest.clone().seed(req, Events::none())).unwrap();
        let cid = info.identifiers[0].to_string();
        let root = records::parse_content_id(&cid).unwrap();

        let flooder = plugin(&dir.path().join("f"), vec![addr.clone()]);
        let frt = flooder.runtime();
        let fnode = frt.block_on(flooder.node()).unwrap();
        frt.block_on(fnode.join());
        let key = records::keyword_key("zeppelin");
        let expires = records::now() + 3600;
        for batch in 0..8u32 {
            let entries = (0..64u32)
                .map(|i| {
                    let body = IndexBody {
                        root: format!("{:064x}", batch * 64 + i + 1),
                        name: Some(format!("zeppelin {batch} {i}")),
                        info_hash: None,
                        expires,
                    };
                    records::sign(&fnode.shared.keypair, &key, serde_json::to_string(&body).unwrap()).unwrap()
                })
                .collect();
            let v = records::SignedSet::of(entries).encode().unwrap();
            frt.block_on(fnode.put_record(key.clone(), v)).unwrap();
        }
        // A metadata record of another size under the honest root, signed by the flooder.
        let mut lie = FileMeta::new(&root, "Zeppelin_Flight.bin", data.len() as u64 + 5);
        lie.expires = expires;
        lie.seeders.push(Seeder { peer_id: fnode.peer_id().to_string(), addrs: fnode.plain_addrs() });
        let mkey = records::meta_key(&root);
        let signed = records::sign(&fnode.shared.keypair, &mkey, lie.body().unwrap()).unwrap();
        frt.block_on(fnode.put_record(mkey.clone(), records::SignedSet::of(vec![signed]).encode().unwrap())).unwrap();
        // And one claiming to be the honest node's (its key, the flooder's signature): refused.
        let mut forged = records::sign(&fnode.shared.keypair, &mkey, lie.body().unwrap()).unwrap();
        forged.pk = hex::encode(honest_key(&honest).public().encode_protobuf());
        let _ = frt.block_on(fnode.put_record(mkey.clone(), records::SignedSet::of(vec![forged]).encode().unwrap()));

        let reader = plugin(&dir.path().join("r"), vec![addr]);
        let rrt = reader.runtime();
        let found = rrt
            .block_on(reader.clone().command("search".into(), vec![("word".into(), "zeppelin".into())], Events::none()))
            .unwrap();
        let found: serde_json::Value = serde_json::from_str(&found).unwrap();
        let results = found["results"].as_array().unwrap();
        assert!(results.iter().any(|r| r["id"] == cid), "the honest entry is findable: {found}");
        assert!(results.len() <= 1 + records::MAX_ENTRIES_PER_PUBLISHER, "{}", results.len());
        let honest_result = results.iter().find(|r| r["id"] == cid).unwrap();
        assert_eq!(honest_result["size"], data.len() as u64, "{honest_result}");
        // The stored metadata holds both publishers' records; the reader keeps both, and the
        // content opens with the length the root commits to.
        let copies = rrt.block_on(reader.node()).unwrap();
        let copies = rrt.block_on(copies.get_record(mkey.clone())).unwrap();
        let (metas, _) = records::meta_entries(&mkey, copies.iter().map(|(_, v)| v.as_slice()), records::now());
        assert!(metas.iter().any(|m| m.body.size == data.len() as u64), "honest record kept");
        assert!(metas
            .iter()
            .all(|m| m.publisher != honest_key(&honest).public().to_peer_id() || m.body.size == data.len() as u64));
        let src = rrt.block_on(reader.clone().open_source(cid, Events::none())).unwrap();
        assert_eq!(src.info().length, data.len() as u64);
    }

    /// A well-reputed provider answers the manifest with the genuine leaves but a larger size:
    /// the length comes from the root (the last chunk, verified), the liar is dropped, and the
    /// honest provider serves everything and keeps its reputation.
    #[test]
    fn a_provider_lying_about_the_size_is_outlived() {
        let dir = tempfile::tempdir().unwrap();
        let (_boot, addr) = boot_node(dir.path());
        let chunk = chiral_sdk::verify::CHUNK_SIZE as usize;
        let data: Vec<u8> = (0..(chunk * 3 + 100)).map(|i| (i % 239) as u8).collect();
        let file = dir.path().join("sized.bin");
        std::fs::write(&file, &data).unwrap();

        let honest = plugin(&dir.path().join("h"), vec![addr.clone()]);
        let hrt = honest.runtime();
        let req = SeedRequest { path: file.to_string_lossy().into_owned().into(), options: Default::default() };
        let cid = hrt.block_on(honest.clone().seed(req, Events::none())).unwrap().identifiers[0].to_string();
        let root = records::parse_content_id(&cid).unwrap();

        let liar = plugin(&dir.path().join("l"), vec![addr.clone()]);
        let lrt = liar.runtime();
        let lnode = lrt.block_on(liar.node()).unwrap();
        lrt.block_on(lnode.join());
        let (leaves, size) = seed::hash_file(&file).unwrap();
        let lying =
            SeedEntry::open(&file, "sized.bin".into(), vec![cid.clone()], MerkleTree::new(leaves), size + 5).unwrap();
        lnode.add_seed(root, Arc::new(lying));
        lrt.block_on(lnode.provide(records::meta_key(&root))).unwrap();

        let reader = plugin(&dir.path().join("r"), vec![addr]);
        let rrt = reader.runtime();
        let rnode = rrt.block_on(reader.node()).unwrap();
        // The liar had a good name: it is asked first.
        rnode.update_metrics(lnode.peer_id(), |m| m.score = 0.99);
        let src = rrt.block_on(reader.clone().open_source(cid, Events::none())).unwrap();
        assert_eq!(src.info().length, data.len() as u64);
        let got = rrt.block_on(src.fetch(0, data.len() as u64)).unwrap();
        assert_eq!(got.as_slice(), data.as_slice());
        let peers = src.peers();
        let banned = |id: String| peers.iter().find(|p| p.id.as_str() == id).map(|p| p.banned);
        let honest_id = honest_key(&honest).public().to_peer_id();
        assert_eq!(banned(lnode.peer_id().to_string()), Some(true), "liar dropped");
        assert_eq!(banned(honest_id.to_string()), Some(false), "honest kept");
        assert!(rnode.metrics_of(&lnode.peer_id()).bad_data >= 1);
        let hm = rnode.metrics_of(&honest_id);
        assert!(hm.score > reputation::INITIAL_SCORE && hm.bad_data == 0, "{hm:?}");
    }

    /// The seeder's wallet travels in its signed metadata record; the downloader reports every
    /// verified byte as owed to that wallet (in batches, the rest when the download ends).
    #[test]
    fn providers_are_owed_their_verified_bytes_at_their_published_wallet() {
        let dir = tempfile::tempdir().unwrap();
        let (_boot, addr) = boot_node(dir.path());
        let wallet = format!("0x{}", "ab".repeat(20));
        let mut cfg = chiral_sdk::testkit::config(&dir.path().join("s"));
        cfg.no_dht = false;
        cfg.bootstrap = vec![addr.clone().into()].into();
        cfg.options = vec![abi_stable::std_types::Tuple2("wallet".into(), wallet.clone().into())].into();
        let seeder = Arc::new(ChiralPlugin::new(cfg, Events::none()).unwrap());
        let chunk = chiral_sdk::verify::CHUNK_SIZE;
        let data: Vec<u8> = (0..(chunk as usize * 21 + 11)).map(|i| (i % 233) as u8).collect();
        let file = dir.path().join("paid.bin");
        std::fs::write(&file, &data).unwrap();
        let req = SeedRequest { path: file.to_string_lossy().into_owned().into(), options: Default::default() };
        let cid =
            seeder.runtime().block_on(seeder.clone().seed(req, Events::none())).unwrap().identifiers[0].to_string();
        let seeder_id = seeder.node.get().unwrap().peer_id().to_string();

        let owed = Arc::new(std::sync::Mutex::new(Vec::<(String, Option<String>, u64)>::new()));
        let sink = owed.clone();
        let events = Events::from_box(Events::sink_from_fn(move |e| {
            if let chiral_sdk::Event::PaymentRequired { peer, wallet, bytes } = e {
                sink.lock().unwrap().push((peer.to_string(), wallet.into_option().map(|w| w.to_string()), bytes));
            }
        }));
        let getter = plugin(&dir.path().join("g"), vec![addr]);
        let grt = getter.runtime();
        let root = cid.trim_start_matches("chiral:").to_string();
        let src = grt.block_on(getter.clone().open_source(cid, events)).unwrap();
        for i in 0..22u64 {
            let len = (data.len() as u64 - i * chunk).min(chunk);
            grt.block_on(src.fetch(i * chunk, len)).unwrap();
        }
        drop(src);
        // One report per verified chunk, each tagged with the chunk: together exactly the file.
        let owed = owed.lock().unwrap().clone();
        assert_eq!(owed.len(), 22, "{owed:?}");
        for (i, (p, w, _)) in owed.iter().enumerate() {
            let (who, tag) = p.split_once(" piece ").unwrap_or_else(|| panic!("untagged report {p}"));
            assert_eq!(who, seeder_id);
            assert!(tag.starts_with(&format!("{root}:{i}:")), "{tag}");
            assert_eq!(w.as_deref(), Some(wallet.as_str()));
        }
        assert_eq!(owed.iter().map(|o| o.2).sum::<u64>(), data.len() as u64);
    }

    /// A node to bootstrap from, and its address.
    fn boot_node(dir: &Path) -> (Arc<ChiralPlugin>, String) {
        let boot = plugin(&dir.join("boot"), vec![]);
        let addr = boot.runtime().block_on(boot.clone().command("node".into(), vec![], Events::none())).unwrap();
        let addr: serde_json::Value = serde_json::from_str(&addr).unwrap();
        let addr = addr["addrs"][0].as_str().unwrap().to_string();
        (boot, addr)
    }

    /// A node on a public address does not dial the loopback address a record or another node
    /// names (a hostile peer pointing it at a local service); the same node on a loopback
    /// network does (the control: the test can fail).
    #[test]
    fn a_public_node_dials_no_loopback_address_it_is_told() {
        use std::{
            net::TcpListener,
            sync::atomic::{AtomicU32, Ordering},
        };
        let trap = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = trap.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in trap.incoming() {
                h.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
        let told: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let ask = |listen: &str, dir: &Path| -> Result<wire::Response, PluginError> {
            let mut cfg = chiral_sdk::testkit::config(dir);
            cfg.no_dht = false;
            cfg.listen_addr = listen.into();
            let p = Arc::new(ChiralPlugin::new(cfg, Events::none()).unwrap());
            let rt = p.runtime();
            rt.block_on(async {
                let node = p.node().await?;
                let stranger = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
                node.add_addresses(stranger, vec![told.clone()]);
                node.request(stranger, wire::Request::Manifest { root: [7; 32] }).await
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let public = ask("0.0.0.0", &dir.path().join("public"));
        assert!(public.is_err(), "{public:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the public node dialled the loopback address it was told");
        let local = ask("127.0.0.1", &dir.path().join("local"));
        assert!(local.is_err(), "{local:?}");
        // The trap counts on its own thread: give its accept a moment to be seen.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while hits.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(hits.load(Ordering::SeqCst) > 0, "the loopback node did not dial ({local:?}): the test proves nothing");
    }

    fn honest_key(p: &Arc<ChiralPlugin>) -> libp2p::identity::Keypair {
        p.node.get().expect("started").shared.keypair.clone()
    }

    #[test]
    fn identifiers() {
        assert!(matches!(target_of(&format!("chiral:{}", "0f".repeat(32))), Ok(Target::Root(_))));
        assert!(matches!(
            target_of("magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"),
            Ok(Target::InfoHash(_))
        ));
        // A base32 info hash is looked up by its hex form.
        match target_of("magnet:?xt=urn:btih:CIMUQ2LKNJ2G64TJMVZGC3DVNZSXE5DF") {
            Ok(Target::InfoHash(ih)) => assert_eq!(ih, "121948696a6a746f72696572616c756e65727465"),
            _ => panic!("base32 magnet"),
        }
        assert!(target_of("magnet:?xt=urn:btih:ABCDEFGHIJKLMNOPQRSTUVWXYZ23456").is_err());
        assert!(target_of("http://x").is_err());
        assert!(target_of("").is_err());
    }
}
