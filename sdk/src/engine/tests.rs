//! The engine driven with in-memory sources: sharing, failures, resume, the trust root,
//! hostile descriptions and pieces.

use super::*;
use crate::resume::part_path;
use crate::{abi::FileEntry, plugin::BoxFut, verify::sha1};
use abi_stable::std_types::RVec;
use std::os::unix::fs::FileExt as _;
use std::sync::{
    atomic::{AtomicU32, Ordering},
    Mutex,
};

/// An in-memory source: serves `data`, optionally corrupting or failing some calls.
struct MemSource {
    data: Arc<Vec<u8>>,
    info: ContentInfo,
    corrupt: bool,
    fail_after: Option<u32>,
    calls: AtomicU32,
    has: Option<Vec<u32>>,
}

impl PieceSource for MemSource {
    fn info(&self) -> ContentInfo {
        self.info.clone()
    }
    fn availability(&self, _: u64) -> Vec<u32> {
        self.has.clone().unwrap_or_default()
    }
    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut chunk = self.data[offset as usize..(offset + length) as usize].to_vec();
        let fail = self.fail_after.is_some_and(|k| n >= k);
        if self.corrupt {
            chunk[0] ^= 0xff;
        }
        Box::pin(async move {
            if fail {
                Err(PluginError::network("connection reset"))
            } else {
                Ok(chunk)
            }
        })
    }
}

fn content(len: usize) -> Arc<Vec<u8>> {
    Arc::new((0..len).map(|i| (i * 7 + i / 251) as u8).collect())
}

fn info_for(data: &[u8], piece: u64, hashed: bool, label: &str) -> ContentInfo {
    let hashes: Vec<u8> = if hashed { data.chunks(piece as usize).flat_map(sha1).collect() } else { vec![] };
    ContentInfo {
        name: "file.bin".into(),
        length: data.len() as u64,
        length_known: true,
        random_access: true,
        piece_length: if hashed { piece } else { 0 },
        hash_kind: if hashed { HashKind::Sha1Pieces } else { HashKind::None },
        piece_hashes: hashes.into(),
        root: RVec::new(),
        files: RVec::new(),
        label: label.into(),
    }
}

fn src(data: &Arc<Vec<u8>>, info: ContentInfo) -> MemSource {
    MemSource { data: data.clone(), info, corrupt: false, fail_after: None, calls: AtomicU32::new(0), has: None }
}

fn es(s: MemSource) -> EngineSource {
    EngineSource::from_source(Arc::new(s))
}

fn run_blocking(
    sources: Vec<Arc<dyn PieceSource>>,
    opts: &Options,
) -> (Result<Outcome, EngineError>, Vec<EngineEvent>) {
    let events = Mutex::new(Vec::new());
    let r = futures::executor::block_on(run(sources, opts, &|e| events.lock().unwrap().push(e)));
    (r, events.into_inner().unwrap())
}

#[test]
fn only_the_same_merkle_tree_skips_the_second_check() {
    let merkle = |root: u8, piece: u64| ContentInfo {
        name: "m".into(),
        length: 10,
        length_known: true,
        random_access: true,
        piece_length: piece,
        hash_kind: HashKind::Sha256Merkle,
        piece_hashes: vec![root; 32].into(),
        root: vec![root; 32].into(),
        files: Default::default(),
        label: "m".into(),
    };
    assert!(same_piece_hashes(&merkle(1, 16), &merkle(1, 16)));
    assert!(!same_piece_hashes(&merkle(1, 16), &merkle(2, 16)), "another root");
    assert!(!same_piece_hashes(&merkle(1, 16), &merkle(1, 32)), "another cut");
    let sha1 = info_for(&[0; 10], 16, true, "t");
    assert!(!same_piece_hashes(&merkle(1, 16), &sha1), "a torrent's pieces are checked by the engine");
    let mut no_root = merkle(1, 16);
    no_root.root = Default::default();
    assert!(!same_piece_hashes(&no_root, &no_root));
}

#[test]
fn a_torrents_pieces_skip_the_second_check_only_from_the_authority() {
    let torrent = info_for(&[7; 40], 16, true, "t");
    assert!(skips_second_check(true, true, &torrent, &torrent), "the authority checks against the layout itself");
    assert!(!skips_second_check(false, true, &torrent, &torrent), "another source with the same list is hashed");
    assert!(!skips_second_check(true, false, &torrent, &torrent), "a source that does not check is hashed");
    let other = info_for(&[8; 40], 16, true, "u");
    assert!(!skips_second_check(true, true, &other, &torrent), "other hashes");
    let recut = info_for(&[7; 40], 8, true, "t");
    assert!(!skips_second_check(true, true, &recut, &torrent), "another piece size");
}

#[test]
fn two_sources_share_the_work_and_result_is_exact() {
    let data = content(3 << 20);
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(src(&data, info_for(&data, 256 << 10, true, "a")));
    let b = Arc::new(src(&data, info_for(&data, 256 << 10, false, "b")));
    let mut opts = Options::new(dir.path());
    opts.slots_per_source = 2;
    opts.sha256 = Some(crate::verify::sha256(&data));
    let (r, _) = run_blocking(vec![a, b], &opts);
    let out = r.unwrap();
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    assert!(out.sources.iter().all(|s| s.bytes > 0), "{:?}", out.sources);
    assert_eq!(out.sources.iter().map(|s| s.bytes).sum::<u64>(), data.len() as u64);
    assert!(!state_path(&dir.path().join("file.bin")).exists());
    assert!(!part_path(&dir.path().join("file.bin")).exists());
}

#[test]
fn corrupt_source_is_dropped_and_download_completes() {
    let data = content(2 << 20);
    let dir = tempfile::tempdir().unwrap();
    let good = Arc::new(src(&data, info_for(&data, 128 << 10, true, "good")));
    let mut bad = src(&data, info_for(&data, 128 << 10, true, "bad"));
    bad.corrupt = true;
    let (r, events) = run_blocking(vec![Arc::new(bad), good], &Options::new(dir.path()));
    let out = r.unwrap();
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    let bad = &out.sources[0];
    assert_eq!(bad.bytes, 0);
    assert!(bad.dropped.as_deref().unwrap().contains("verification"));
    assert!(events.iter().any(|e| matches!(e, EngineEvent::SourceDropped { label, .. } if label == "bad")));
}

#[test]
fn failing_source_is_dropped_and_the_other_finishes() {
    let data = content(2 << 20);
    let dir = tempfile::tempdir().unwrap();
    let mut flaky = src(&data, info_for(&data, 0, false, "flaky"));
    flaky.fail_after = Some(2);
    let good = src(&data, info_for(&data, 0, false, "good"));
    let (r, _) = run_blocking(vec![Arc::new(flaky), Arc::new(good)], &Options::new(dir.path()));
    let out = r.unwrap();
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    assert!(out.sources[0].dropped.is_some());
}

#[test]
fn all_sources_failing_is_an_error_and_leaves_no_final_file() {
    let data = content(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let mut s = src(&data, info_for(&data, 0, false, "dead"));
    s.fail_after = Some(0);
    let (r, _) = run_blocking(vec![Arc::new(s)], &Options::new(dir.path()));
    let e = r.unwrap_err().to_string();
    assert!(e.contains("dead: connection reset"), "{e}");
    assert!(!dir.path().join("file.bin").exists());
}

#[test]
fn resumes_verified_pieces_only() {
    let data = content(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    // First run: the source dies after 2 pieces.
    let mut s = src(&data, info_for(&data, 128 << 10, true, "s"));
    s.fail_after = Some(2);
    let mut opts = Options::new(dir.path());
    opts.slots_per_source = 1;
    opts.max_failures = 1;
    assert!(run_blocking(vec![Arc::new(s)], &opts).0.is_err());
    // Damage one of the two done pieces on disk: it must be fetched again.
    let part = part_path(&dir.path().join("file.bin"));
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    let s2 = Arc::new(src(&data, info_for(&data, 128 << 10, true, "s")));
    let (r, _) = run_blocking(vec![s2.clone()], &opts);
    let out = r.unwrap();
    assert_eq!(out.resumed_bytes, 128 << 10);
    assert_eq!(s2.calls.load(Ordering::SeqCst), 7);
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
}

#[test]
fn a_late_source_joins_and_rescues_the_download() {
    let data = content(2 << 20);
    let dir = tempfile::tempdir().unwrap();
    let mut dying = src(&data, info_for(&data, 0, false, "dying"));
    dying.fail_after = Some(1);
    let (tx, rx) = futures::channel::mpsc::unbounded::<EngineSource>();
    let mut opts = Options::new(dir.path());
    opts.slots_per_source = 1;
    let events = Mutex::new(Vec::new());
    let late = es(src(&data, info_for(&data, 0, false, "late")));
    let small = content(100);
    let wrong = es(src(&small, info_for(&small, 0, false, "wrong-size")));
    let on = |e| events.lock().unwrap().push(e);
    let out = futures::executor::block_on(async {
        let engine = run_with_late_sources(vec![es(dying)], Some(rx), &opts, &on);
        let feed = async {
            tx.unbounded_send(wrong).unwrap();
            tx.unbounded_send(late).unwrap();
            drop(tx);
        };
        futures::join!(engine, feed).0
    })
    .unwrap();
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    assert_eq!(out.sources.len(), 3);
    assert!(out.sources[1].dropped.as_deref().unwrap().contains("reports 100 bytes"));
    assert!(out.sources[2].bytes > 0);
    let events = events.into_inner().unwrap();
    assert_eq!(events.iter().filter(|e| matches!(e, EngineEvent::SourceAdded { .. })).count(), 2);
}

#[test]
fn without_late_sources_everything_failing_is_an_error() {
    let data = content(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<EngineSource>();
    drop(tx);
    let mut s = src(&data, info_for(&data, 0, false, "dead"));
    s.fail_after = Some(0);
    let r =
        futures::executor::block_on(run_with_late_sources(vec![es(s)], Some(rx), &Options::new(dir.path()), &|_| {}));
    assert!(matches!(r, Err(EngineError::AllFailed(_))));
}

#[test]
fn sha256_mismatch_fails_and_removes_parts() {
    let data = content(300_000);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(dir.path());
    opts.sha256 = Some([0; 32]);
    let (r, _) = run_blocking(vec![Arc::new(src(&data, info_for(&data, 0, false, "s")))], &opts);
    assert!(matches!(r, Err(EngineError::Sha256Mismatch { .. })));
    assert!(!dir.path().join("file.bin").exists());
    assert!(!part_path(&dir.path().join("file.bin")).exists());
}

#[test]
fn rarest_piece_comes_from_the_only_holder() {
    let data = content(4 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let mut partial = src(&data, info_for(&data, 1024, true, "partial"));
    partial.has = Some(vec![1, 1, 0, 0]);
    let mut other = src(&data, info_for(&data, 1024, true, "other"));
    other.has = Some(vec![0, 0, 1, 1]);
    let (r, _) = run_blocking(vec![Arc::new(partial), Arc::new(other)], &Options::new(dir.path()));
    let out = r.unwrap();
    assert_eq!(out.sources[0].bytes, 2048);
    assert_eq!(out.sources[1].bytes, 2048);
}

#[test]
fn multi_file_layout_stays_inside_the_folder() {
    let data = content(10_000);
    let dir = tempfile::tempdir().unwrap();
    let mut info = info_for(&data, 4096, true, "t");
    info.name = "../evil".into();
    info.files = vec![
        FileEntry { path: "../../a.txt".into(), offset: 0, length: 3000 },
        FileEntry { path: "/abs/b.txt".into(), offset: 3000, length: 7000 },
    ]
    .into();
    let (r, _) = run_blocking(vec![Arc::new(src(&data, info))], &Options::new(dir.path().join("out")));
    let out = r.unwrap();
    for f in &out.files {
        assert!(f.starts_with(dir.path().join("out")), "{f:?}");
    }
    assert_eq!(out.files[0], dir.path().join("out/.._evil/a.txt"));
    assert_eq!(out.files[1], dir.path().join("out/.._evil/abs/b.txt"));
    let a = std::fs::read(&out.files[0]).unwrap();
    let b = std::fs::read(&out.files[1]).unwrap();
    assert_eq!([a, b].concat(), *data);
}

#[test]
fn chosen_files_only_are_written() {
    let data = content(40_000);
    let dir = tempfile::tempdir().unwrap();
    let mut info = info_for(&data, 4096, true, "t");
    info.name = "set".into();
    info.files = vec![
        FileEntry { path: "a".into(), offset: 0, length: 5000 },
        FileEntry { path: "b".into(), offset: 5000, length: 30_000 },
        FileEntry { path: "c".into(), offset: 35_000, length: 5000 },
    ]
    .into();
    let mut opts = Options::new(dir.path());
    opts.files = Some(crate::select::FileSelection::parse("1,3").unwrap());
    let (r, _) = run_blocking(vec![Arc::new(src(&data, info.clone()))], &opts);
    let out = r.unwrap();
    assert_eq!(out.files, vec![dir.path().join("set/a"), dir.path().join("set/c")]);
    assert_eq!(std::fs::read(&out.files[0]).unwrap(), data[..5000]);
    assert_eq!(std::fs::read(&out.files[1]).unwrap(), data[35_000..]);
    assert!(!dir.path().join("set/b").exists() && !dir.path().join("set/b.part").exists());
    // Run again: already complete, checked without the unchosen file.
    let (again, _) = run_blocking(vec![Arc::new(src(&data, info.clone()))], &opts);
    assert_eq!(again.unwrap().files.len(), 2);
    // A selection past the end is a one-line error.
    opts.files = Some(crate::select::FileSelection::parse("4").unwrap());
    let (bad, _) = run_blocking(vec![Arc::new(src(&data, info))], &opts);
    assert!(bad.unwrap_err().to_string().contains("3 files"));
}

#[test]
fn safe_names() {
    assert_eq!(safe_name(".."), "download");
    assert_eq!(safe_name("a/b"), "a_b");
    assert_eq!(safe_relative("../x/./y"), Some(PathBuf::from("x/y")));
    assert_eq!(safe_relative("/.."), None);
}

/// A source whose bytes differ from `data` in one byte of every MiB (a lying mirror).
fn liar(data: &Arc<Vec<u8>>, label: &str) -> MemSource {
    let mut bad = data.to_vec();
    for i in (0..bad.len()).step_by(1 << 20) {
        bad[i + 3] ^= 0xff;
    }
    let bad = Arc::new(bad);
    src(&bad, info_for(&bad, 0, false, label))
}

fn authority(s: MemSource) -> EngineSource {
    let mut e = es(s);
    e.authority = true;
    e
}

fn mirror(s: MemSource) -> EngineSource {
    let mut e = es(s);
    e.authority = false;
    e
}

#[test]
fn a_lying_mirror_listed_first_never_defines_the_content() {
    let data = content(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let torrent = src(&data, info_for(&data, 256 << 10, true, "torrent"));
    let (r, events) = futures::executor::block_on(async {
        let ev = Mutex::new(Vec::new());
        let r = run_with_late_sources(
            vec![mirror(liar(&data, "mirror")), authority(torrent)],
            None,
            &Options::new(dir.path()),
            &|e| ev.lock().unwrap().push(e),
        )
        .await;
        (r, ev.into_inner().unwrap())
    });
    let out = r.unwrap();
    assert!(out.verified);
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    assert!(out.sources[0].dropped.as_deref().unwrap().contains("verification"), "{:?}", out.sources[0]);
    assert!(events.iter().any(|e| matches!(e, EngineEvent::SourceDropped { label, .. } if label == "mirror")));
}

#[test]
fn a_lying_mirror_alone_with_its_torrent_unreachable_is_an_error_not_its_bytes() {
    let data = content(2 << 20);
    let dir = tempfile::tempdir().unwrap();
    let mut torrent = src(&data, info_for(&data, 256 << 10, true, "torrent"));
    torrent.fail_after = Some(0);
    let (r, _) = futures::executor::block_on(async {
        (
            run_with_late_sources(
                vec![mirror(liar(&data, "mirror")), authority(torrent)],
                None,
                &Options::new(dir.path()),
                &|_| {},
            )
            .await,
            (),
        )
    });
    assert!(r.is_err());
    assert!(!dir.path().join("file.bin").exists());
}

/// The authority arrives after a mirror has written everything: the bytes on disk are checked
/// again, the liar's are refetched from the authority.
fn late_authority(lying: bool) -> (Outcome, Vec<EngineEvent>, Arc<MemSource>, Arc<Vec<u8>>) {
    let data = content(3 << 20);
    let dir = tempfile::tempdir().unwrap();
    let first = if lying { liar(&data, "mirror") } else { src(&data, info_for(&data, 0, false, "mirror")) };
    let torrent = Arc::new(src(&data, info_for(&data, 256 << 10, true, "torrent")));
    let (tx, rx) = futures::channel::mpsc::unbounded::<EngineSource>();
    let mut opts = Options::new(dir.path());
    opts.await_authority = true;
    opts.authority_wait = Duration::ZERO;
    let events = Mutex::new(Vec::new());
    let (done_tx, done_rx) = futures::channel::oneshot::channel::<()>();
    let done_tx = Mutex::new(Some(done_tx));
    let total = data.len() as u64;
    let got = std::sync::atomic::AtomicU64::new(0);
    let on = |e: EngineEvent| {
        if let EngineEvent::Piece { bytes, .. } = &e {
            if got.fetch_add(*bytes, Ordering::SeqCst) + bytes == total {
                if let Some(t) = done_tx.lock().unwrap().take() {
                    let _ = t.send(());
                }
            }
        }
        events.lock().unwrap().push(e);
    };
    let t2: Arc<dyn PieceSource> = torrent.clone();
    let out = futures::executor::block_on(async {
        let engine = run_with_late_sources(vec![mirror(first)], Some(rx), &opts, &on);
        let feed = async {
            // Only once every provisional piece is on disk.
            let _ = done_rx.await;
            let mut e = EngineSource::from_source(t2);
            e.authority = true;
            tx.unbounded_send(e).unwrap();
            drop(tx);
        };
        futures::join!(engine, feed).0
    })
    .unwrap();
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    let ev = events.into_inner().unwrap();
    (out, ev, torrent, data)
}

#[test]
fn hashes_that_arrive_late_are_adopted_and_a_liar_is_caught() {
    let (out, events, torrent, _) = late_authority(true);
    assert!(out.verified);
    // One byte in each MiB was wrong: the three 256 KiB pieces holding one fail, the rest stand.
    let kept = (3 << 20) - 3 * (256 << 10);
    assert!(events.iter().any(|e| matches!(e, EngineEvent::Adopted { done, .. } if *done == kept)), "{events:?}");
    assert!(out.sources[0].dropped.is_some(), "{:?}", out.sources[0]);
    assert_eq!(torrent.calls.load(Ordering::SeqCst), 3, "the authority refetched the three bad pieces");
}

#[test]
fn hashes_that_arrive_late_keep_an_honest_mirror_s_work() {
    let (out, events, torrent, data) = late_authority(false);
    assert!(out.verified);
    assert!(events.iter().any(|e| matches!(e, EngineEvent::Adopted { done, .. } if *done == data.len() as u64)));
    assert_eq!(torrent.calls.load(Ordering::SeqCst), 0, "nothing fetched twice");
    assert!(out.sources[0].dropped.is_none());
}

#[test]
fn an_awaited_authority_that_never_comes_fails_and_keeps_the_part() {
    let data = content(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<EngineSource>();
    drop(tx);
    let mut opts = Options::new(dir.path());
    opts.await_authority = true;
    opts.authority_wait = Duration::ZERO;
    let events = Mutex::new(Vec::new());
    let r = futures::executor::block_on(run_with_late_sources(
        vec![mirror(src(&data, info_for(&data, 0, false, "mirror")))],
        Some(rx),
        &opts,
        &|e| events.lock().unwrap().push(e),
    ));
    assert!(matches!(r, Err(EngineError::NoTrustRoot(_))), "{r:?}");
    let events = events.into_inner().unwrap();
    assert!(events.iter().any(|e| matches!(e, EngineEvent::AwaitingTrustRoot)), "the wait is announced: {events:?}");
    assert!(!dir.path().join("file.bin").exists());
    assert!(part_path(&dir.path().join("file.bin")).exists());
}

#[test]
fn a_hashed_source_that_is_no_authority_is_checked_not_trusted() {
    // The Chiral network answering a magnet with other bytes, listed first.
    let data = content(2 << 20);
    let other = content(2 << 20 | 7).iter().skip(7).copied().collect::<Vec<u8>>();
    let other = Arc::new(other);
    let dir = tempfile::tempdir().unwrap();
    let extra = mirror(src(&other, info_for(&other, 256 << 10, true, "chiral-network")));
    let torrent = authority(src(&data, info_for(&data, 256 << 10, true, "torrent")));
    let (r, _) = futures::executor::block_on(async {
        (run_with_late_sources(vec![extra, torrent], None, &Options::new(dir.path()), &|_| {}).await, ())
    });
    let out = r.unwrap();
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    assert!(out.sources[0].dropped.as_deref().unwrap().contains("contradict"), "{:?}", out.sources[0]);
    assert_eq!(out.sources[0].bytes, 0);
}

#[test]
fn without_hashes_the_result_says_unverified() {
    let data = content(300_000);
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = run_blocking(vec![Arc::new(src(&data, info_for(&data, 0, false, "s")))], &Options::new(dir.path()));
    assert!(!r.unwrap().verified);
}

#[test]
fn hostile_descriptions_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(1000);
    type Edit = Box<dyn Fn(&mut ContentInfo)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("a 10^17-byte claim", Box::new(|i| i.length = 100_000_000_000_000_000)),
        ("u64::MAX bytes", Box::new(|i| i.length = u64::MAX)),
        ("a 1 GiB piece", Box::new(|i| i.piece_length = 1 << 30)),
        (
            "pieces too small for their hashes",
            Box::new(|i| {
                i.piece_length = 1;
                i.hash_kind = HashKind::Sha1Pieces;
            }),
        ),
        (
            "files that do not tile",
            Box::new(|i| {
                i.files = vec![FileEntry { path: "a".into(), offset: 5, length: u64::MAX }].into();
            }),
        ),
        (
            "a file past the end",
            Box::new(|i| {
                i.files = vec![FileEntry { path: "a".into(), offset: 0, length: 2000 }].into();
            }),
        ),
    ];
    for (what, edit) in cases {
        let mut info = info_for(&data, 0, false, "hostile");
        edit(&mut info);
        let (r, _) = run_blocking(vec![Arc::new(src(&data, info))], &Options::new(dir.path()));
        let e = r.expect_err(what).to_string();
        assert!(!e.contains('\n'), "{what}: {e}");
    }
}

/// A source that answers with short, long or wrong pieces.
struct Broken {
    data: Arc<Vec<u8>>,
    info: ContentInfo,
    how: u8,
}

impl PieceSource for Broken {
    fn info(&self) -> ContentInfo {
        self.info.clone()
    }
    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let mut v = self.data[offset as usize..(offset + length) as usize].to_vec();
        match self.how {
            0 => v.truncate(v.len() / 2),
            1 => v.extend_from_slice(&[0; 4096]),
            _ => v.iter_mut().for_each(|b| *b = !*b),
        }
        Box::pin(async move { Ok(v) })
    }
}

#[test]
fn short_long_and_wrong_pieces_are_refused_and_the_good_source_finishes() {
    let data = content(1 << 20);
    for how in 0..3u8 {
        let dir = tempfile::tempdir().unwrap();
        let broken = Broken { data: data.clone(), info: info_for(&data, 64 << 10, true, "broken"), how };
        let good = src(&data, info_for(&data, 64 << 10, true, "good"));
        let (r, _) = run_blocking(vec![Arc::new(broken), Arc::new(good)], &Options::new(dir.path()));
        let out = r.unwrap();
        assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data, "case {how}");
        assert_eq!(out.sources[0].bytes, 0, "case {how}");
        assert!(out.sources[0].dropped.is_some(), "case {how}");
    }
}

#[test]
fn a_swarm_keeps_enough_bytes_requested_a_mirror_one_request_per_connection() {
    use super::slots_for;
    // A mirror: the configured connections, whatever the piece size.
    assert_eq!(slots_for(false, 16 << 10, 8), 8);
    assert_eq!(slots_for(false, 4 << 20, 3), 3);
    // A swarm: at least 8 MiB of pieces over its peers, bounded.
    assert_eq!(slots_for(true, 1 << 20, 8), 8);
    assert_eq!(slots_for(true, 4 << 20, 8), 8);
    assert_eq!(slots_for(true, 256 << 10, 8), 32);
    assert_eq!(slots_for(true, 16 << 10, 8), 256);
    assert_eq!(slots_for(true, 0, 0), 256);
    // Each request is a piece in memory: huge pieces get fewer requests, one at least.
    assert_eq!(slots_for(false, 16 << 20, 8), 4);
    assert_eq!(slots_for(true, 32 << 20, 8), 2);
    assert_eq!(slots_for(false, 512 << 20, 8), 1);
    assert_eq!(slots_for(true, 512 << 20, 8), 1);
}

/// `download_for_plugin_with`: the live peer count rides on every progress event, a floor on
/// their spacing keeps the first and the last, and the per-source lines come from the caller.
#[test]
fn a_plugin_report_carries_peers_throttles_progress_and_splits_sources() {
    use crate::abi::Event;
    let data = content(2 << 20);
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn PieceSource> = Arc::new(src(&data, info_for(&data, 64 << 10, true, "swarm")));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let events = crate::plugin::Events::from_box(crate::plugin::Events::sink_from_fn(move |e| {
        if let Event::Progress { done, total, peers } = e {
            sink.lock().unwrap().push((done, total, peers));
        }
    }));
    let peers = || 7;
    let lines = |o: &Outcome| vec![("peer 1".to_string(), o.length - 5), ("peer 2".to_string(), 5)];
    let report = PluginReport::default().peers(&peers).progress_every(Duration::from_secs(3600)).per_source(&lines);
    let out =
        futures::executor::block_on(download_for_plugin_with(vec![a], &Options::new(dir.path()), &events, &report))
            .unwrap();
    assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), *data);
    let seen = seen.lock().unwrap().clone();
    let total = data.len() as u64;
    // 32 pieces, one hour apart at most: the start and the end only.
    assert_eq!(seen, vec![(0, total, 7), (total, total, 7)]);
    let split: Vec<(String, u64)> = out.per_source.iter().map(|s| (s.label.to_string(), s.bytes)).collect();
    assert_eq!(split, vec![("peer 1".to_string(), total - 5), ("peer 2".to_string(), 5)]);

    // The defaults: one event per piece after the start, the source count as peers, one line
    // per engine source.
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn PieceSource> = Arc::new(src(&data, info_for(&data, 64 << 10, true, "swarm")));
    let count = Arc::new(Mutex::new(Vec::new()));
    let sink = count.clone();
    let events = crate::plugin::Events::from_box(crate::plugin::Events::sink_from_fn(move |e| {
        if let Event::Progress { peers, .. } = e {
            sink.lock().unwrap().push(peers);
        }
    }));
    let out = futures::executor::block_on(download_for_plugin(vec![a], &Options::new(dir.path()), &events)).unwrap();
    assert_eq!(*count.lock().unwrap(), vec![1; 33]);
    assert_eq!(out.per_source.len(), 1);
    assert_eq!(out.per_source[0].bytes, total);
}

/// A source with one peer behind it whose first piece waits until the engine has told the
/// peers: the daemon's live per-peer view depends on these reports.
struct PeeredSource {
    inner: MemSource,
    gate: Mutex<Option<futures::channel::oneshot::Receiver<()>>>,
}

impl PieceSource for PeeredSource {
    fn info(&self) -> ContentInfo {
        self.inner.info()
    }
    fn availability(&self, n: u64) -> Vec<u32> {
        self.inner.availability(n)
    }
    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let gate = self.gate.lock().unwrap().take();
        let piece = self.inner.fetch(offset, length);
        Box::pin(async move {
            if let Some(g) = gate {
                let _ = g.await;
            }
            piece.await
        })
    }
    fn peers(&self) -> Vec<crate::abi::PeerStat> {
        vec![crate::abi::PeerStat::new("peer-1").address("127.0.0.1:6881").bytes(5, 0).reputation(700)]
    }
}

#[test]
fn the_peers_behind_a_running_source_are_reported() {
    let data = content(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (open, gate) = futures::channel::oneshot::channel();
    let s = PeeredSource { inner: src(&data, info_for(&data, 256 << 10, true, "swarm")), gate: Mutex::new(Some(gate)) };
    let opts = Options::new(dir.path());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let open = Mutex::new(Some(open));
        let peers = Mutex::new(Vec::new());
        let r = futures::executor::block_on(run(vec![Arc::new(s) as Arc<dyn PieceSource>], &opts, &|e| {
            if let EngineEvent::Peers { source, peers: p } = e {
                peers.lock().unwrap().push((source, p));
                if let Some(o) = open.lock().unwrap().take() {
                    let _ = o.send(());
                }
            }
        }));
        let _ = done_tx.send((r.is_ok(), peers.into_inner().unwrap()));
    });
    let (ok, peers) =
        done_rx.recv_timeout(Duration::from_secs(30)).expect("the download waits for a Peers report that never came");
    assert!(ok);
    let (source, p) = &peers[0];
    assert_eq!(*source, 0);
    assert_eq!(
        (p[0].address.as_str(), p[0].downloaded, p[0].reputation.into_option()),
        ("127.0.0.1:6881", 5, Some(700))
    );
}
