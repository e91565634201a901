//! The kit on a tiny in-process plugin, `mem://LENGTH/NAME[?bug=..]`, that can be told to
//! misbehave: every fault the kit claims to find must make it fail, and a good plugin passes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::*;
use crate::{engine, plugin::BoxFut, runtime::PluginRuntime, PieceSource};

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

fn bytes(len: u64) -> Vec<u8> {
    (0..len).map(byte_at).collect()
}

/// Seeds by identifier: file name and bytes.
type Seeds = HashMap<String, (String, Arc<Vec<u8>>)>;

struct Mem {
    rt: PluginRuntime,
    seeds: Mutex<Seeds>,
}

struct MemSource {
    name: String,
    data: Arc<Vec<u8>>,
    bug: String,
}

impl PieceSource for MemSource {
    fn info(&self) -> ContentInfo {
        let info = ContentInfo::new(self.name.as_str(), self.data.len() as u64);
        match self.bug.as_str() {
            "bad-hashes" => info.sha1_pieces(1000, vec![0u8; 20]),
            _ => info.piece_length(64 << 10),
        }
    }
    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let (data, bug) = (self.data.clone(), self.bug.clone());
        Box::pin(async move {
            match bug.as_str() {
                "slow" => tokio::time::sleep(Duration::from_secs(3600)).await,
                "panic" if length > 0 => panic!("fetch asked to panic"),
                "oob-ok" => return Ok(vec![0; length.min(1 << 20) as usize]),
                _ => {}
            }
            let end = offset.checked_add(length).filter(|e| *e <= data.len() as u64);
            let Some(end) = end else {
                let kind =
                    if bug == "oob-other" { PluginError::other("nope") } else { PluginError::invalid("past the end") };
                return Err(kind);
            };
            let mut v = data[offset as usize..end as usize].to_vec();
            if bug == "flip" && !v.is_empty() {
                v[0] ^= 1;
            }
            Ok(v)
        })
    }
}

impl Mem {
    fn source(&self, id: &str) -> Result<MemSource, PluginError> {
        if let Some((name, data)) = self.seeds.lock().map_err(|_| PluginError::other("poisoned"))?.get(id) {
            return Ok(MemSource { name: name.clone(), data: data.clone(), bug: String::new() });
        }
        let rest = id.strip_prefix("mem://").ok_or_else(|| PluginError::unsupported(format!("not mem: {id}")))?;
        let (rest, bug) = rest.split_once("?bug=").unwrap_or((rest, ""));
        let (len, name) = rest.split_once('/').ok_or_else(|| PluginError::invalid("mem://LENGTH/NAME"))?;
        let len: u64 = len.parse().map_err(|_| PluginError::invalid("bad length"))?;
        if len > 64 << 20 || name.is_empty() {
            return Err(PluginError::invalid("too large or no name"));
        }
        Ok(MemSource { name: name.into(), data: Arc::new(bytes(len)), bug: bug.into() })
    }
}

impl Plugin for Mem {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor::new("mem", "0.1.0")
            .schemes(&["mem"])
            .capabilities(capability::DOWNLOAD | capability::SOURCE | capability::SEED | capability::SEED_MANAGE)
    }
    fn new(_config: HostConfig, _events: Events) -> Result<Self, PluginError> {
        Ok(Self { rt: PluginRuntime::new("mem", 2)?, seeds: Mutex::new(HashMap::new()) })
    }
    fn runtime(&self) -> tokio::runtime::Handle {
        self.rt.handle()
    }
    fn open_source(self: Arc<Self>, id: String, _events: Events) -> BoxFut<Arc<dyn PieceSource>> {
        Box::pin(async move { Ok(Arc::new(self.source(&id)?) as Arc<dyn PieceSource>) })
    }
    fn download(self: Arc<Self>, request: DownloadRequest, events: Events) -> BoxFut<DownloadOutcome> {
        Box::pin(async move {
            let src: Arc<dyn PieceSource> = Arc::new(self.source(&request.identifier)?);
            engine::download_for_plugin(vec![src], &engine::Options::new(request.out_dir.as_str()), &events).await
        })
    }
    fn seed(self: Arc<Self>, request: SeedRequest, _events: Events) -> BoxFut<SeedInfo> {
        Box::pin(async move {
            let data = std::fs::read(request.path.as_str())?;
            let mut seeds = self.seeds.lock().map_err(|_| PluginError::other("poisoned"))?;
            let id = format!("mem://seed-{}", seeds.len());
            seeds.insert(id.clone(), ("seeded.bin".into(), Arc::new(data)));
            Ok(SeedInfo::new(id.clone(), request.path.as_str(), [id]))
        })
    }
    fn list_seeds(&self) -> Vec<SeedInfo> {
        let seeds = self.seeds.lock().map(|s| s.clone()).unwrap_or_default();
        seeds.keys().map(|id| SeedInfo::new(id.as_str(), "", [id.as_str()])).collect()
    }
    fn stop_seed(&self, id: &str) -> Result<(), PluginError> {
        let mut seeds = self.seeds.lock().map_err(|_| PluginError::other("poisoned"))?;
        seeds.remove(id).map(|_| ()).ok_or_else(|| PluginError::not_found(format!("no seed {id}")))
    }
}

fn kit(dir: &Path) -> Kit {
    Kit::new(handler_for::<Mem>(config(dir)).unwrap()).out_dir(dir).timeout(Duration::from_secs(20))
}

fn failed(checks: &[Check]) -> Vec<&'static str> {
    checks.iter().filter(|c| !c.passed).map(|c| c.name).collect()
}

#[test]
fn a_good_plugin_passes_every_check_and_nothing_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let len = 1_000_003;
    let checks =
        kit(dir.path()).good_content(&format!("mem://{len}/a.bin"), bytes(len)).slow("mem://5000/s?bug=slow").run();
    assert!(failed(&checks).is_empty(), "{checks:#?}");
    assert!(checks.iter().all(|c| !c.skipped), "{checks:#?}");
    for name in [
        "source info",
        "source fetch: first, middle, last",
        "source fetch out of range is Invalid",
        "source fetch of zero bytes",
        "source fetches at once",
        "source fetch dropped mid-way",
        "download",
        "cancel",
        "seed round trip",
    ] {
        assert!(checks.iter().any(|c| c.name == name), "{name} did not run: {checks:#?}");
    }
    // The same with only a sha256, and with nothing known of the content.
    let sha = hex::encode(sha256(&bytes(len)));
    let checks = kit(dir.path()).good_sha256(&format!("mem://{len}/a.bin"), &sha).run();
    assert!(failed(&checks).is_empty(), "{checks:#?}");
    let checks = kit(dir.path()).good("mem://70000/b.bin").run();
    assert!(failed(&checks).is_empty(), "{checks:#?}");
}

#[test]
fn settings_that_cannot_run_fail_the_setup_check() {
    let dir = tempfile::tempdir().unwrap();
    let checks = kit(dir.path()).good_sha256("mem://10/x", "00").run();
    assert!(failed(&checks).contains(&"kit setup"), "{checks:#?}");
    let checks = kit(dir.path()).good_sha256("mem://10/x", "not hex").run();
    assert!(failed(&checks).contains(&"kit setup"), "{checks:#?}");
    // No good identifier: said so, not silent.
    let checks = kit(dir.path()).run();
    assert!(checks.iter().any(|c| c.skipped && c.name == "good identifier"), "{checks:#?}");
    // A slow identifier alone: the cancel runs, then the plugin must still answer.
    let checks = kit(dir.path()).slow("mem://5000/s?bug=slow").run();
    assert!(failed(&checks).is_empty() && checks.iter().any(|c| c.name == "cancel"), "{checks:#?}");
}

#[test]
fn each_fault_fails_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let len = 300_000u64;
    let cases: &[(&str, &str)] = &[
        ("oob-ok", "source fetch out of range is Invalid"),
        ("oob-other", "source fetch out of range is Invalid"),
        ("flip", "source fetch: first, middle, last"),
        ("bad-hashes", "source info"),
        ("panic", "source fetch: first, middle, last"),
    ];
    for (bug, check) in cases {
        let id = format!("mem://{len}/c.bin?bug={bug}");
        let checks = kit(dir.path()).good_content(&id, bytes(len)).skip_seed("not under test").run();
        assert!(failed(&checks).contains(check), "{bug}: {checks:#?}");
    }
    // A wrong sha256 is found by reading the content.
    let checks = kit(dir.path()).good_sha256("mem://1000/d.bin", &"00".repeat(32)).run();
    assert!(failed(&checks).contains(&"source fetch: first, middle, last"), "{checks:#?}");
    assert!(failed(&checks).contains(&"download"), "{checks:#?}");
    // A "slow" identifier that is fast is refused as such.
    let checks = kit(dir.path()).good("mem://1000/e.bin").slow("mem://1000/f.bin").run();
    assert_eq!(failed(&checks), ["cancel"], "{checks:#?}");
}

#[test]
fn a_failing_kit_panics_with_the_failures() {
    let dir = tempfile::tempdir().unwrap();
    let r =
        std::panic::catch_unwind(|| kit(dir.path()).good_content("mem://100/g.bin?bug=flip", bytes(100)).assert_all());
    let msg = r.err().map(|p| crate::plugin::panic_message(&*p)).unwrap_or_default();
    assert!(msg.contains("plugin conformance failed") && msg.contains("source fetch"), "{msg}");
}
