//! A hostile Chiral node, for the end-to-end tests (`tests/tests/chiral_network.rs`): a process
//! of its own, with its own identity, that joins a network through a bootstrap node, attacks it
//! one way, prints `ready <peer id>` and stays up (answering the DHT and chunk requests with what
//! it holds) until it is killed. Not part of the product: an example, built by `cargo test`.
//!
//! ```text
//! hostile_node DATA_DIR BOOTSTRAP flood WORD COUNT
//!     COUNT index entries under keyword_idx::WORD, each naming a fresh root, signed by this
//!     node, put in batches of 64 (one publisher trying to evict every other's entry)
//! hostile_node DATA_DIR BOOTSTRAP overwrite CONTENT_ID NAME SIZE
//!     a metadata record of another SIZE under someone else's root, listing this node as its
//!     seeder, and a copy carrying the honest publisher's key over this node's signature
//! hostile_node DATA_DIR BOOTSTRAP lie-size FILE
//!     seeds FILE's genuine chunks and proofs but answers the manifest with a length 5 bytes
//!     longer, and announces itself as a provider of its root
//! ```

use std::{path::Path, sync::Arc};

use chiral_plugin_chiral::{
    node::Node,
    records::{self, FileMeta, IndexBody, Seeder, SignedSet},
    seed::{self, MerkleTree, SeedEntry},
};
use chiral_sdk::Events;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: hostile_node DATA_DIR BOOTSTRAP (flood WORD COUNT | overwrite CONTENT_ID NAME SIZE | lie-size FILE)");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if let Err(e) = rt.block_on(run(&args)) {
        eprintln!("hostile_node: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &[String]) -> Res<()> {
    let mut config = chiral_sdk::testkit::config(Path::new(&args[0]));
    config.no_dht = false;
    config.bootstrap = vec![args[1].clone().into()].into();
    let node = Node::start(&config, Events::none()).await?;
    node.serve();
    node.join().await;
    let key = &node.shared.keypair;
    let expires = records::now() + 3600;
    match (args[2].as_str(), &args[3..]) {
        ("flood", [word, count]) => {
            let count: u32 = count.parse()?;
            let key_bytes = records::keyword_key(word);
            for batch in 0..count.div_ceil(64) {
                let entries = (batch * 64..((batch + 1) * 64).min(count))
                    .map(|i| {
                        let body = IndexBody {
                            root: format!("{:064x}", u64::from(i) + 1),
                            name: Some(format!("{word} flood {i}")),
                            info_hash: None,
                            expires,
                        };
                        records::sign(key, &key_bytes, serde_json::to_string(&body)?).map_err(Into::into)
                    })
                    .collect::<Res<Vec<_>>>()?;
                node.put_record(key_bytes.clone(), SignedSet::of(entries).encode()?).await?;
            }
        }
        ("overwrite", [cid, name, size]) => {
            let root = records::parse_content_id(cid).ok_or("not a chiral: id")?;
            let mut lie = FileMeta::new(&root, name, size.parse()?);
            lie.expires = expires;
            lie.seeders.push(Seeder { peer_id: node.peer_id().to_string(), addrs: node.plain_addrs() });
            let mkey = records::meta_key(&root);
            let signed = records::sign(key, &mkey, lie.body()?)?;
            node.put_record(mkey.clone(), SignedSet::of(vec![signed]).encode()?).await?;
        }
        ("lie-size", [file]) => {
            let path = Path::new(file);
            let (leaves, size) = seed::hash_file(path)?;
            let tree = MerkleTree::new(leaves);
            let root = tree.root();
            let cid = format!("chiral:{}", hex::encode(root));
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file").to_string();
            let entry = SeedEntry::open(path, name, vec![cid], tree, size + 5)?;
            node.add_seed(root, Arc::new(entry));
            node.provide(records::meta_key(&root)).await?;
        }
        (mode, rest) => return Err(format!("unknown attack {mode} {rest:?}").into()),
    }
    println!("ready {}", node.peer_id());
    std::future::pending::<()>().await;
    Ok(())
}
