//! Conformance checks a plugin author runs against their plugin, through the same ABI objects
//! the host uses (in-process with [`handler_for`], or on a handler loaded from the built library
//! with [`Kit::shared`]).
//!
//! Always: the descriptor is sane, unknown identifiers are refused, bad input gives errors and
//! never panics. With a good identifier ([`Kit::good`], [`Kit::good_content`],
//! [`Kit::good_sha256`]), for a `SOURCE` plugin: `open_source` as the host calls it, `info()`
//! (length, piece length, name, hash list), the first, a middle and the last range compared
//! with the expected bytes, an out-of-range request (an [`ErrorKind::Invalid`] error), a
//! zero-length one, concurrent fetches, a fetch dropped mid-way (the source still works after);
//! for a `DOWNLOAD` plugin: a whole download, its files compared with the expected bytes. With
//! a slow identifier ([`Kit::slow`]): a download (or fetch) dropped while it runs returns at
//! once and the plugin still serves the good identifier. For a `SEED` plugin: it seeds a file
//! and downloads it back through the identifiers it printed (see [`Kit::skip_seed`]).
//!
//! Every combination of settings either runs or fails the `kit setup` check with the reason:
//! nothing is skipped silently ([`Check::skipped`] says what did not apply and why).
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     let dir = tempfile::tempdir().unwrap();
//!     let handler = chiral_sdk::testkit::handler_for::<MyPlugin>(chiral_sdk::testkit::config(dir.path())).unwrap();
//!     chiral_sdk::testkit::Kit::new(handler)
//!         .good_content("my://thing", expected_bytes)
//!         .slow("my://slow")
//!         .out_dir(dir.path())
//!         .assert_all();
//! }
//! ```

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use abi_stable::std_types::{RResult, RString, RVec};
use futures::{
    channel::oneshot,
    executor::block_on,
    future::{join_all, select, Either},
    FutureExt as _,
};

use crate::{
    abi::*,
    plugin::{root_module, Events, Plugin},
    verify::{sha256, PieceVerifier},
};

/// Deterministic, incompressible-looking test content (xorshift32), the same for every caller.
pub fn content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A host configuration for tests: state under `data_dir`, servers on loopback.
pub fn config(data_dir: &Path) -> HostConfig {
    HostConfig {
        data_dir: data_dir.to_string_lossy().into_owned().into(),
        listen_addr: "127.0.0.1".into(),
        listen_port: 0,
        advertise_host: "127.0.0.1".into(),
        connections: 4,
        proxy: abi_stable::std_types::ROption::RNone,
        bootstrap: RVec::new(),
        no_dht: true,
        options: RVec::new(),
    }
}

/// Builds `P`'s handler through its exported root module, exactly as a host would.
pub fn handler_for<P: Plugin>(config: HostConfig) -> Result<HandlerBox, PluginError> {
    let module = root_module::<P>();
    (module.new_handler())(config, Events::sink_from_fn(|_| {})).into_result()
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    /// What failed, or why the check did not apply.
    pub detail: String,
    /// The check did not apply to this plugin or these settings (`detail` says why); it counts
    /// as passed.
    pub skipped: bool,
}

impl Check {
    fn of(name: &'static str, problems: Vec<String>) -> Self {
        Self { name, passed: problems.is_empty(), detail: problems.join("; "), skipped: false }
    }
    fn skip(name: &'static str, why: impl Into<String>) -> Self {
        Self { name, passed: true, detail: why.into(), skipped: true }
    }
}

/// What the good identifier's content is, as far as the author told the kit.
#[derive(Clone)]
enum Expected {
    /// Only consistency checks (ranges agree with each other and with the piece hashes).
    Unknown,
    Bytes(Arc<Vec<u8>>),
    /// SHA-256 of the whole content (checked when the kit reads it all, up to [`READ_ALL`]).
    Sha256([u8; 32]),
    /// `good_sha256` was given something that is not 64 hex digits.
    BadSha256(String),
}

/// Largest content the kit reads whole (to compare it with a SHA-256 or use it as reference).
const READ_ALL: u64 = 64 << 20;
/// Piece size the kit asks for when the source names none.
const KIT_PIECE: u64 = 256 << 10;

/// The conformance kit for one handler.
pub struct Kit {
    handler: Arc<HandlerBox>,
    good: Option<String>,
    expected: Expected,
    slow: Option<String>,
    skip_seed: Option<String>,
    out_dir: PathBuf,
    limit: Duration,
}

fn no_events() -> EventSinkBox {
    Events::sink_from_fn(|_| {})
}

/// Waits for `fut` at most `limit` (None when it did not finish), on the calling thread.
fn wait<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    let (fire, fired) = oneshot::channel::<()>();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            let _ = fire.send(());
        }
    });
    let out = block_on(async {
        let fut = std::pin::pin!(fut);
        match select(fut, fired).await {
            Either::Left((v, _)) => Some(v),
            Either::Right(_) => None,
        }
    });
    drop(done);
    out
}

fn short(id: &str) -> String {
    let s: String = id.chars().take(60).collect();
    if s.len() < id.len() {
        format!("{s:?}...")
    } else {
        format!("{s:?}")
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s.trim()).ok()?;
    v.try_into().ok()
}

impl Kit {
    pub fn new(handler: HandlerBox) -> Self {
        Self::shared(Arc::new(handler))
    }
    /// A kit on a handler the host also holds.
    pub fn shared(handler: Arc<HandlerBox>) -> Self {
        Self {
            handler,
            good: None,
            expected: Expected::Unknown,
            slow: None,
            skip_seed: None,
            out_dir: std::env::temp_dir().join("chiral-testkit"),
            limit: Duration::from_secs(60),
        }
    }
    /// An identifier the plugin serves successfully, content not known to the kit: the kit
    /// opens it as a source and downloads it (whichever the plugin's capabilities offer) and
    /// checks that every answer is consistent. Prefer [`Kit::good_content`] or
    /// [`Kit::good_sha256`], which also compare the bytes.
    pub fn good(mut self, id: &str) -> Self {
        self.good = Some(id.into());
        self
    }
    /// A good identifier whose content is exactly `bytes`.
    pub fn good_content(mut self, id: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.good = Some(id.into());
        self.expected = Expected::Bytes(Arc::new(bytes.into()));
        self
    }
    /// A good identifier whose content has this SHA-256 (64 hex digits).
    pub fn good_sha256(mut self, id: &str, sha256_hex: &str) -> Self {
        self.good = Some(id.into());
        self.expected = match hex32(sha256_hex) {
            Some(h) => Expected::Sha256(h),
            None => Expected::BadSha256(sha256_hex.chars().take(80).collect()),
        };
        self
    }
    /// An identifier whose download (or, for a source-only plugin, whose first piece) takes
    /// longer than a second, so that dropping it cancels work in progress. After the cancel the
    /// kit checks the plugin still serves the good identifier (without one, that it still
    /// refuses an unknown identifier promptly). For a fast
    /// protocol, point it at a test server that accepts and never answers, or give the test
    /// build a delay knob (`?delay_ms=` in the skeleton of `docs/plugin-guide.md`).
    pub fn slow(mut self, id: &str) -> Self {
        self.slow = Some(id.into());
        self
    }
    /// Do not run the seed round trip although the plugin claims `SEED` (it cannot download
    /// from itself, say); the reason is shown in the results.
    pub fn skip_seed(mut self, reason: &str) -> Self {
        self.skip_seed = Some(reason.into());
        self
    }
    /// Where downloads and seeded files go (default: a folder under the system temp dir).
    pub fn out_dir(mut self, dir: &Path) -> Self {
        self.out_dir = dir.into();
        self
    }
    /// How long one call may take before it counts as hung (default 60 s).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    fn request(&self, id: &str, dir: &Path) -> DownloadRequest {
        DownloadRequest {
            identifier: id.into(),
            out_dir: dir.to_string_lossy().into_owned().into(),
            connections: 2,
            options: RVec::new(),
        }
    }

    /// Runs every check that applies.
    pub fn run(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let d = self.handler.descriptor();
        out.push(self.setup_check(&d));
        out.push(descriptor_check(&d));
        out.push(self.unknown_check(&d));
        out.push(self.bad_input_check(&d));
        let caps = d.capabilities;
        match &self.good {
            None => {
                out.push(Check::skip("good identifier", "no good identifier given: only the refusals were checked"))
            }
            Some(good) => {
                if caps & capability::SOURCE != 0 {
                    self.source_checks(good, &mut out);
                } else {
                    out.push(Check::skip("source", "the plugin does not claim SOURCE"));
                }
                if caps & capability::DOWNLOAD != 0 {
                    out.push(self.download_check(good));
                } else {
                    out.push(Check::skip("download", "the plugin does not claim DOWNLOAD"));
                }
            }
        }
        if let Some(slow) = &self.slow {
            out.push(self.cancel_check(caps, slow, self.good.as_deref()));
        }
        if caps & capability::SEED == 0 {
            out.push(Check::skip("seed round trip", "the plugin does not claim SEED"));
        } else if let Some(why) = &self.skip_seed {
            out.push(Check::skip("seed round trip", format!("skipped by the test: {why}")));
        } else {
            out.push(self.seed_check(&d));
        }
        out
    }

    /// Runs every check and panics with the failures listed.
    pub fn assert_all(&self) {
        let checks = self.run();
        let failed: Vec<String> =
            checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        assert!(failed.is_empty(), "plugin conformance failed:\n{}", failed.join("\n"));
    }

    fn setup_check(&self, d: &PluginDescriptor) -> Check {
        let mut problems = Vec::new();
        if self.slow.is_some() && d.capabilities & (capability::DOWNLOAD | capability::SOURCE) == 0 {
            problems.push("slow(..) given but the plugin claims neither DOWNLOAD nor SOURCE".into());
        }
        if self.good.is_some() && d.capabilities & (capability::DOWNLOAD | capability::SOURCE) == 0 {
            problems.push("good(..) given but the plugin claims neither DOWNLOAD nor SOURCE".into());
        }
        if let Expected::BadSha256(s) = &self.expected {
            problems.push(format!("good_sha256 needs 64 hex digits, got {s:?}"));
        }
        if let Err(e) = std::fs::create_dir_all(&self.out_dir) {
            problems.push(format!("out_dir {}: {e}", self.out_dir.display()));
        }
        Check::of("kit setup", problems)
    }

    fn unknown_check(&self, d: &PluginDescriptor) -> Check {
        // Unknown identifiers: an error value, not a panic, not success.
        let bogus = "chiral-testkit-unknown://nothing/here";
        let mut problems = Vec::new();
        match wait(self.handler.download(self.request(bogus, &self.out_dir), no_events()), self.limit) {
            None => problems.push(format!("download of an unknown identifier gave no answer in {:?}", self.limit)),
            Some(RResult::ROk(_)) => problems.push("download accepted an unknown identifier".to_string()),
            Some(RResult::RErr(e)) if e.kind == ErrorKind::Panic => problems.push(format!("download panicked: {e}")),
            Some(RResult::RErr(_)) => {}
        }
        if d.capabilities & capability::SOURCE != 0 {
            match wait(self.handler.open_source(bogus.into(), no_events()), self.limit) {
                None => {
                    problems.push(format!("open_source of an unknown identifier gave no answer in {:?}", self.limit))
                }
                Some(RResult::ROk(_)) => problems.push("open_source accepted an unknown identifier".to_string()),
                Some(RResult::RErr(e)) if e.kind == ErrorKind::Panic => {
                    problems.push(format!("open_source panicked: {e}"))
                }
                Some(RResult::RErr(_)) => {}
            }
        }
        Check::of("unknown identifier refused", problems)
    }

    fn bad_input_check(&self, d: &PluginDescriptor) -> Check {
        // Bad input everywhere: errors, never panics.
        let mut problems = Vec::new();
        for id in ["", ":", "\0", &"x".repeat(70_000)] {
            if let Some(RResult::RErr(e)) =
                wait(self.handler.download(self.request(id, &self.out_dir), no_events()), self.limit)
            {
                if e.kind == ErrorKind::Panic {
                    problems.push(format!("download({}) panicked: {e}", short(id)));
                }
            }
            if d.capabilities & capability::SOURCE != 0 {
                if let Some(RResult::RErr(e)) = wait(self.handler.open_source(id.into(), no_events()), self.limit) {
                    if e.kind == ErrorKind::Panic {
                        problems.push(format!("open_source({}) panicked: {e}", short(id)));
                    }
                }
            }
        }
        if let RResult::RErr(e) = self.handler.stop_seed(RString::from("no-such-seed")) {
            if e.kind == ErrorKind::Panic {
                problems.push(format!("stop_seed panicked: {e}"));
            }
        }
        if d.capabilities & capability::SEED != 0 {
            let req = SeedRequest { path: "/nonexistent/chiral-testkit".into(), options: RVec::new() };
            match wait(self.handler.seed(req, no_events()), self.limit) {
                None => problems.push(format!("seed of a missing path gave no answer in {:?}", self.limit)),
                Some(RResult::ROk(_)) => problems.push("seed accepted a missing path".into()),
                Some(RResult::RErr(e)) if e.kind == ErrorKind::Panic => problems.push(format!("seed panicked: {e}")),
                Some(RResult::RErr(_)) => {}
            }
        }
        let _ = self.handler.list_seeds();
        Check::of("errors instead of panics", problems)
    }

    fn open(&self, id: &str) -> Result<SourceBox, String> {
        match wait(self.handler.open_source(id.into(), no_events()), self.limit) {
            None => Err(format!("open_source({}) gave no answer in {:?}", short(id), self.limit)),
            Some(RResult::RErr(e)) => Err(format!("open_source({}) failed: {e} ({:?})", short(id), e.kind)),
            Some(RResult::ROk(s)) => Ok(s),
        }
    }

    fn fetch(&self, src: &SourceBox, offset: u64, length: u64) -> Result<Vec<u8>, String> {
        match wait(src.fetch(offset, length), self.limit) {
            None => Err(format!("fetch({offset}, {length}) gave no answer in {:?}", self.limit)),
            Some(RResult::RErr(e)) => Err(format!("fetch({offset}, {length}) failed: {e} ({:?})", e.kind)),
            Some(RResult::ROk(v)) if v.len() as u64 != length => {
                Err(format!("fetch({offset}, {length}) returned {} bytes", v.len()))
            }
            Some(RResult::ROk(v)) => Ok(v.into_vec()),
        }
    }

    /// `open_source` as the host calls it, then everything the engine asks of a source.
    fn source_checks(&self, good: &str, out: &mut Vec<Check>) {
        let src = match self.open(good) {
            Ok(s) => s,
            Err(e) => {
                out.push(Check::of("source info", vec![e]));
                return;
            }
        };
        let info = src.info();
        let mut problems = info_problems(&info);
        let expected_len = match &self.expected {
            Expected::Bytes(b) => Some(b.len() as u64),
            _ => None,
        };
        if let Some(want) = expected_len {
            if info.length_known && info.length != want {
                problems.push(format!("info().length is {}, the content has {want} bytes", info.length));
            }
        }
        let usable = info.length_known && info.random_access;
        out.push(Check::of("source info", problems));
        if !usable {
            let why = "info() says the length is unknown or there is no random access: the host downloads it with \
                       `download` instead of fetching ranges";
            out.push(Check::skip("source fetch", why));
            return;
        }
        let len = info.length;
        let piece = if info.piece_length > 0 { info.piece_length } else { KIT_PIECE };
        let pieces = len.div_ceil(piece);

        // The reference bytes: given, or read whole (small content) and checked against the
        // SHA-256 and the piece hashes the source published.
        let mut problems = Vec::new();
        let reference: Option<Arc<Vec<u8>>> = match &self.expected {
            Expected::Bytes(b) => Some(b.clone()),
            _ if len <= READ_ALL => {
                let mut all = Vec::with_capacity(len as usize);
                let mut off = 0;
                while off < len {
                    let n = piece.min(len - off);
                    match self.fetch(&src, off, n) {
                        Ok(v) => all.extend_from_slice(&v),
                        Err(e) => {
                            problems.push(e);
                            break;
                        }
                    }
                    off += n;
                }
                (all.len() as u64 == len).then(|| Arc::new(all))
            }
            _ => None,
        };
        if let (Expected::Sha256(want), Some(all)) = (&self.expected, &reference) {
            if sha256(all) != *want {
                problems.push(format!("the content read piece by piece has sha256 {}", hex::encode(sha256(all))));
            }
        }
        if let (Expected::Sha256(_), None) = (&self.expected, &reference) {
            if problems.is_empty() {
                problems.push(format!("content of {len} bytes is too large for the kit to check its sha256"));
            }
        }
        if let (Some(all), true) = (&reference, info.hash_kind != HashKind::None && info.piece_length > 0) {
            if let Ok(verifier) = PieceVerifier::for_content(&info, pieces) {
                for (i, chunk) in all.chunks(info.piece_length as usize).enumerate() {
                    if verifier.verify(i as u32, chunk).is_err() {
                        problems.push(format!("piece {i} does not match the hash info() lists"));
                        break;
                    }
                }
            }
        }

        // First, middle and last ranges, compared with the reference or with each other.
        let n = piece.min(len);
        let mid = (pieces / 2) * piece;
        let ranges = [(0, n), (mid, piece.min(len - mid.min(len))), (len - n, n)];
        let mut seen = Vec::new();
        for (off, n) in ranges {
            match self.fetch(&src, off, n) {
                Ok(v) => {
                    if let Some(all) = &reference {
                        if all.get(off as usize..(off + n) as usize) != Some(&v[..]) {
                            problems.push(format!("fetch({off}, {n}) returned other bytes than the content's"));
                        }
                    }
                    seen.push((off, n, v));
                }
                Err(e) => problems.push(e),
            }
        }
        out.push(Check::of("source fetch: first, middle, last", problems));

        // Out of range: an Invalid error, no panic, no bytes.
        let mut problems = Vec::new();
        for (off, n) in
            [(len, 1), (len.saturating_sub(1), 2), (u64::MAX - 1, 2), (len.saturating_add(1 << 40), 1 << 20)]
        {
            match wait(src.fetch(off, n), self.limit) {
                None => problems.push(format!("fetch({off}, {n}) past the end gave no answer in {:?}", self.limit)),
                Some(RResult::ROk(v)) => {
                    problems.push(format!("fetch({off}, {n}) past the end of {len} bytes returned {} bytes", v.len()))
                }
                Some(RResult::RErr(e)) if e.kind != ErrorKind::Invalid => problems
                    .push(format!("fetch({off}, {n}) past the end must be an Invalid error, got {:?}: {e}", e.kind)),
                Some(RResult::RErr(_)) => {}
            }
        }
        out.push(Check::of("source fetch out of range is Invalid", problems));

        let mut problems = Vec::new();
        for off in [0, len] {
            if let Err(e) = self.fetch(&src, off, 0) {
                problems.push(e);
            }
        }
        out.push(Check::of("source fetch of zero bytes", problems));

        // Concurrent fetches: the engine keeps several outstanding on one source.
        let mut problems = Vec::new();
        let count = pieces.min(8);
        let step = (pieces / count.max(1)).max(1);
        let wanted: Vec<(u64, u64)> =
            (0..count).map(|k| k * step * piece).map(|off| (off, piece.min(len - off))).collect();
        let all = wait(join_all(wanted.iter().map(|&(off, n)| src.fetch(off, n))), self.limit);
        match all {
            None => problems.push(format!("{count} concurrent fetches gave no answer in {:?}", self.limit)),
            Some(results) => {
                for ((off, n), r) in wanted.iter().zip(results) {
                    match r.into_result() {
                        Err(e) => problems.push(format!("concurrent fetch({off}, {n}) failed: {e}")),
                        Ok(v) => {
                            let want = match &reference {
                                Some(all) => all.get(*off as usize..(off + n) as usize).map(<[u8]>::to_vec),
                                None => seen.iter().find(|s| s.0 == *off && s.1 == *n).map(|s| s.2.clone()),
                            };
                            if v.len() as u64 != *n || want.is_some_and(|w| w != v.as_slice()) {
                                problems.push(format!("concurrent fetch({off}, {n}) returned other bytes"));
                            }
                        }
                    }
                }
            }
        }
        out.push(Check::of("source fetches at once", problems));

        // A fetch dropped mid-way: the drop returns at once and the source still works.
        let mut problems = Vec::new();
        let big = (4 * piece).min(len);
        let mut fut = src.fetch(0, big);
        let _ = (&mut fut).now_or_never();
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        drop(fut);
        if t.elapsed() > Duration::from_secs(1) {
            problems.push(format!("dropping a fetch took {:?}", t.elapsed()));
        }
        match self.fetch(&src, 0, n) {
            Ok(v) => {
                if let Some(first) = seen.iter().find(|s| s.0 == 0) {
                    if first.2 != v {
                        problems.push("after a dropped fetch, the first range came back different".into());
                    }
                }
            }
            Err(e) => problems.push(format!("after a dropped fetch: {e}")),
        }
        out.push(Check::of("source fetch dropped mid-way", problems));
    }

    /// A whole download through the plugin's `download`, compared with the content.
    fn download_check(&self, good: &str) -> Check {
        let mut problems = Vec::new();
        let dir = self.out_dir.join("kit-download");
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Check::of("download", vec![format!("{}: {e}", dir.display())]);
        }
        match wait(self.handler.download(self.request(good, &dir), no_events()), self.limit) {
            None => problems.push(format!("download({}) gave no answer in {:?}", short(good), self.limit)),
            Some(RResult::RErr(e)) => problems.push(format!("download({}) failed: {e} ({:?})", short(good), e.kind)),
            Some(RResult::ROk(outcome)) => problems.extend(self.outcome_problems(&outcome, &self.expected)),
        }
        Check::of("download", problems)
    }

    fn outcome_problems(&self, outcome: &DownloadOutcome, expected: &Expected) -> Vec<String> {
        let mut problems = Vec::new();
        if outcome.files.is_empty() {
            problems.push("the outcome lists no file".to_string());
        }
        let mut total = 0u64;
        for f in outcome.files.iter() {
            match std::fs::metadata(f.as_str()) {
                Ok(m) => total += m.len(),
                Err(e) => problems.push(format!("outcome file {f}: {e}")),
            }
        }
        if total != outcome.bytes {
            problems.push(format!("the outcome says {} bytes, its files hold {total}", outcome.bytes));
        }
        let single = (outcome.files.len() == 1).then(|| outcome.files[0].as_str());
        match (expected, single) {
            (Expected::Bytes(b), Some(f)) => match std::fs::read(f) {
                Ok(got) if got == **b => {}
                Ok(got) => problems.push(format!("{f} holds {} bytes other than the content's {}", got.len(), b.len())),
                Err(e) => problems.push(format!("{f}: {e}")),
            },
            (Expected::Sha256(want), Some(f)) => match std::fs::read(f) {
                Ok(got) if sha256(&got) == *want => {}
                Ok(_) => problems.push(format!("{f} does not have the expected sha256")),
                Err(e) => problems.push(format!("{f}: {e}")),
            },
            (Expected::Bytes(b), None) if outcome.bytes != b.len() as u64 => {
                problems.push(format!("downloaded {} bytes, the content has {}", outcome.bytes, b.len()))
            }
            _ => {}
        }
        problems
    }

    /// Dropping a running download (or fetch) returns at once and leaves the plugin usable.
    fn cancel_check(&self, caps: u32, slow: &str, good: Option<&str>) -> Check {
        let mut problems = Vec::new();
        let dir = self.out_dir.join("kit-cancel");
        let _ = std::fs::create_dir_all(&dir);
        let download = caps & capability::DOWNLOAD != 0;
        let source = if download {
            None
        } else {
            match self.open(slow) {
                Ok(s) => Some(s),
                Err(e) => return Check::of("cancel", vec![e]),
            }
        };
        let mut fut = match &source {
            None => self.handler.download(self.request(slow, &dir), no_events()).map(|r| r.is_ok()).boxed(),
            Some(s) => {
                let n = s.info().piece_length.clamp(1, KIT_PIECE);
                s.fetch(0, n).map(|r| r.is_ok()).boxed()
            }
        };
        let what = if download { "download" } else { "fetch" };
        let t0 = Instant::now();
        // Poll it for a while so the work has really started, then drop it.
        while t0.elapsed() < Duration::from_millis(300) {
            if let Some(ok) = (&mut fut).now_or_never() {
                problems.push(format!(
                    "the slow {what} finished in {:?} (ok: {ok}): it must take longer than a second",
                    t0.elapsed()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let t1 = Instant::now();
        drop(fut);
        if t1.elapsed() > Duration::from_secs(1) {
            problems.push(format!("dropping the {what} took {:?}", t1.elapsed()));
        }
        let Some(good) = good else {
            // No good identifier: the plugin must at least still answer (an unknown identifier
            // refused promptly).
            let bogus = "chiral-testkit-unknown://after/cancel";
            match wait(self.handler.download(self.request(bogus, &self.out_dir), no_events()), self.limit) {
                Some(RResult::RErr(e)) if e.kind != ErrorKind::Panic => {}
                Some(RResult::RErr(e)) => problems.push(format!("after a cancel, the plugin panicked: {e}")),
                Some(RResult::ROk(_)) => problems.push("after a cancel, an unknown identifier was accepted".into()),
                None => problems.push(format!("after a cancel, the plugin gave no answer in {:?}", self.limit)),
            }
            return Check::of("cancel", problems);
        };
        match &source {
            None => {
                // Into out_dir itself, as kits before this one did (tests look for the file).
                match wait(self.handler.download(self.request(good, &self.out_dir), no_events()), self.limit) {
                    Some(RResult::ROk(_)) => {}
                    Some(RResult::RErr(e)) => problems.push(format!("after a cancel, {} failed: {e}", short(good))),
                    None => {
                        problems.push(format!("after a cancel, {} gave no answer in {:?}", short(good), self.limit))
                    }
                }
            }
            Some(_) => match self.open(good) {
                Ok(g) => {
                    let n = g.info().length.min(KIT_PIECE);
                    if let Err(e) = self.fetch(&g, 0, n) {
                        problems.push(format!("after a cancel: {e}"));
                    }
                }
                Err(e) => problems.push(format!("after a cancel: {e}")),
            },
        }
        Check::of("cancel", problems)
    }

    /// Seeds a file, downloads it back through the identifiers the seed printed, stops it.
    fn seed_check(&self, d: &PluginDescriptor) -> Check {
        let mut problems = Vec::new();
        let dir = self.out_dir.join("kit-seed");
        let _ = std::fs::remove_dir_all(&dir);
        let data = Arc::new(content(300_001));
        let file = dir.join("kit-seed.bin");
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, &*data)) {
            return Check::of("seed round trip", vec![format!("{}: {e}", file.display())]);
        }
        let req = SeedRequest { path: file.to_string_lossy().into_owned().into(), options: RVec::new() };
        let info = match wait(self.handler.seed(req, no_events()), self.limit) {
            None => return Check::of("seed round trip", vec![format!("seed gave no answer in {:?}", self.limit)]),
            Some(RResult::RErr(e)) => {
                return Check::of(
                    "seed round trip",
                    vec![format!("seed({}) failed: {e} ({:?})", file.display(), e.kind)],
                )
            }
            Some(RResult::ROk(i)) => i,
        };
        let claimed = |id: &str| {
            let lower = id.to_ascii_lowercase();
            let scheme = lower.split_once(':').map(|s| s.0).unwrap_or_default();
            d.schemes.iter().any(|s| s.as_str() == scheme) || d.suffixes.iter().any(|s| lower.ends_with(s.as_str()))
        };
        let ids: Vec<String> = info.identifiers.iter().map(|i| i.to_string()).filter(|i| claimed(i)).collect();
        if info.identifiers.is_empty() {
            problems.push("seed returned no identifier".to_string());
        } else if ids.is_empty() {
            problems.push(format!("none of the seed's identifiers {:?} is one this plugin claims", info.identifiers));
        }
        let expected = Expected::Bytes(data.clone());
        for (k, id) in ids.iter().enumerate() {
            if d.capabilities & capability::DOWNLOAD != 0 {
                let out = dir.join(format!("back-{k}"));
                let _ = std::fs::create_dir_all(&out);
                match wait(self.handler.download(self.request(id, &out), no_events()), self.limit) {
                    None => problems.push(format!("download of seeded {} gave no answer", short(id))),
                    Some(RResult::RErr(e)) => problems.push(format!("download of seeded {} failed: {e}", short(id))),
                    Some(RResult::ROk(o)) => problems.extend(self.outcome_problems(&o, &expected)),
                }
            } else if d.capabilities & capability::SOURCE != 0 {
                match self.open(id) {
                    Err(e) => problems.push(e),
                    Ok(s) => match self.fetch(&s, 0, data.len() as u64) {
                        Ok(v) if v == *data => {}
                        Ok(_) => problems.push(format!("seeded {} came back with other bytes", short(id))),
                        Err(e) => problems.push(format!("seeded {}: {e}", short(id))),
                    },
                }
            }
        }
        if d.capabilities & capability::SEED_MANAGE != 0 {
            if !self.handler.list_seeds().iter().any(|s| s.id == info.id) {
                problems.push(format!("list_seeds does not list seed {:?} (the plugin claims SEED_MANAGE)", info.id));
            }
            if let RResult::RErr(e) = self.handler.stop_seed(info.id.clone()) {
                problems.push(format!("stop_seed({:?}) failed: {e}", info.id));
            } else if self.handler.list_seeds().iter().any(|s| s.id == info.id) {
                problems.push(format!("seed {:?} is still listed after stop_seed", info.id));
            }
        } else {
            let _ = self.handler.stop_seed(info.id.clone());
        }
        Check::of("seed round trip", problems)
    }
}

fn descriptor_check(d: &PluginDescriptor) -> Check {
    let mut problems = Vec::new();
    let name_ok = !d.name.is_empty()
        && d.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        problems.push(format!("name {:?} must be lowercase [a-z0-9_-]", d.name));
    }
    if crate::check_compatible(crate::SDK_VERSION, &d.sdk_version).is_err() {
        problems.push(format!("sdk_version {:?} is not this SDK's {}", d.sdk_version, crate::SDK_VERSION));
    }
    if d.version.split('.').count() < 2 || d.version.split('.').any(|p| p.parse::<u64>().is_err()) {
        problems.push(format!("version {:?} is not x.y.z", d.version));
    }
    if d.schemes.is_empty() && d.suffixes.is_empty() {
        problems.push("claims no scheme and no suffix".into());
    }
    for s in d.schemes.iter() {
        let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !ok {
            problems.push(format!("scheme {s:?} must be lowercase, without ':'"));
        }
    }
    if d.capabilities & (capability::DOWNLOAD | capability::SOURCE | capability::SEED) == 0 {
        problems.push("has none of the DOWNLOAD, SOURCE, SEED capabilities".into());
    }
    if d.capabilities & capability::SEED_MANAGE != 0 && d.capabilities & capability::SEED == 0 {
        problems.push("claims SEED_MANAGE without SEED".into());
    }
    Check::of("descriptor", problems)
}

/// What is wrong with a source's description, as the engine would find it.
fn info_problems(info: &ContentInfo) -> Vec<String> {
    let mut problems = Vec::new();
    if info.name.is_empty() || info.name.contains('\0') {
        problems.push(format!("info().name {:?} must be a non-empty file name", info.name));
    }
    if !info.length_known {
        return problems;
    }
    if info.piece_length > crate::layout::MAX_PIECE_LENGTH {
        problems.push(format!("piece_length {} is larger than 512 MiB", info.piece_length));
    }
    let pl = if info.piece_length > 0 { info.piece_length } else { KIT_PIECE };
    if info.length.div_ceil(pl) > crate::layout::MAX_PIECES {
        problems.push(format!("{} bytes in pieces of {pl} are too many pieces", info.length));
    }
    if info.hash_kind != HashKind::None {
        if info.piece_length == 0 {
            problems.push(format!("hash_kind {:?} needs a piece_length", info.hash_kind));
        } else if let Err(e) = PieceVerifier::for_content(info, info.length.div_ceil(info.piece_length)) {
            problems.push(format!("piece hashes do not fit the content: {e}"));
        }
    }
    let mut end = 0u64;
    for f in info.files.iter() {
        let fend = f.offset.checked_add(f.length);
        if f.offset < end || fend.is_none_or(|e| e > info.length) {
            problems.push(format!("file {:?} at {}+{} is out of order or past the end", f.path, f.offset, f.length));
            break;
        }
        end = fend.unwrap_or(end);
    }
    problems
}

#[cfg(test)]
mod tests;
