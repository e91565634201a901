//! Conformance checks a plugin author runs against their plugin (in-process through the same
//! ABI adapters the host sees, or on a handler loaded from the built library):
//! descriptor sane, unknown identifiers refused, cancellation prompt, errors instead of panics.
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     let handler = chiral_sdk::testkit::handler_for::<MyPlugin>(chiral_sdk::testkit::config(dir)).unwrap();
//!     chiral_sdk::testkit::Kit::new(handler).good("my://thing").slow("my://slow").assert_all();
//! }
//! ```

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use abi_stable::std_types::{RResult, RString, RVec};
use futures::{executor::block_on, FutureExt as _};

use crate::{
    abi::*,
    plugin::{root_module, Events, Plugin},
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
pub fn config(data_dir: &std::path::Path) -> HostConfig {
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
    pub detail: String,
}

/// The conformance kit for one handler.
pub struct Kit {
    handler: Arc<HandlerBox>,
    good: Option<String>,
    slow: Option<String>,
    out_dir: std::path::PathBuf,
}

fn no_events() -> EventSinkBox {
    Events::sink_from_fn(|_| {})
}

impl Kit {
    pub fn new(handler: HandlerBox) -> Self {
        Self::shared(Arc::new(handler))
    }
    /// A kit on a handler the host also holds.
    pub fn shared(handler: Arc<HandlerBox>) -> Self {
        Self { handler, good: None, slow: None, out_dir: std::env::temp_dir().join("chiral-testkit") }
    }
    /// An identifier the plugin downloads successfully (checked after cancellations).
    pub fn good(mut self, id: &str) -> Self {
        self.good = Some(id.into());
        self
    }
    /// An identifier whose download takes long enough to cancel (> 200 ms).
    pub fn slow(mut self, id: &str) -> Self {
        self.slow = Some(id.into());
        self
    }
    pub fn out_dir(mut self, dir: &std::path::Path) -> Self {
        self.out_dir = dir.into();
        self
    }

    fn request(&self, id: &str) -> DownloadRequest {
        DownloadRequest {
            identifier: id.into(),
            out_dir: self.out_dir.to_string_lossy().into_owned().into(),
            connections: 2,
            options: RVec::new(),
        }
    }

    /// Runs every check.
    pub fn run(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let d = self.handler.descriptor();
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
            let ok =
                !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                problems.push(format!("scheme {s:?} must be lowercase, without ':'"));
            }
        }
        if d.capabilities & (capability::DOWNLOAD | capability::SOURCE | capability::SEED) == 0 {
            problems.push("has none of the DOWNLOAD, SOURCE, SEED capabilities".into());
        }
        out.push(Check { name: "descriptor", passed: problems.is_empty(), detail: problems.join("; ") });

        // Unknown identifiers: an error value, not a panic, not success.
        let bogus = "chiral-testkit-unknown://nothing/here";
        let mut problems = Vec::new();
        match block_on(self.handler.download(self.request(bogus), no_events())) {
            RResult::ROk(_) => problems.push("download accepted an unknown identifier".to_string()),
            RResult::RErr(e) if e.kind == ErrorKind::Panic => problems.push(format!("download panicked: {e}")),
            RResult::RErr(_) => {}
        }
        if d.capabilities & capability::SOURCE != 0 {
            match block_on(self.handler.open_source(bogus.into(), no_events())) {
                RResult::ROk(_) => problems.push("open_source accepted an unknown identifier".to_string()),
                RResult::RErr(e) if e.kind == ErrorKind::Panic => problems.push(format!("open_source panicked: {e}")),
                RResult::RErr(_) => {}
            }
        }
        out.push(Check {
            name: "unknown identifier refused",
            passed: problems.is_empty(),
            detail: problems.join("; "),
        });

        // Bad input everywhere: errors, never panics.
        let mut problems = Vec::new();
        for id in ["", ":", "\0", &"x".repeat(70_000)] {
            if let RResult::RErr(e) = block_on(self.handler.download(self.request(id), no_events())) {
                if e.kind == ErrorKind::Panic {
                    problems.push(format!("download({:?}) panicked: {e}", id.chars().take(8).collect::<String>()));
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
            match block_on(self.handler.seed(req, no_events())) {
                RResult::ROk(_) => problems.push("seed accepted a missing path".into()),
                RResult::RErr(e) if e.kind == ErrorKind::Panic => problems.push(format!("seed panicked: {e}")),
                RResult::RErr(_) => {}
            }
        }
        let _ = self.handler.list_seeds();
        out.push(Check { name: "errors instead of panics", passed: problems.is_empty(), detail: problems.join("; ") });

        // Cancellation: dropping a running download returns at once and leaves the plugin usable.
        if let Some(slow) = &self.slow {
            let mut problems = Vec::new();
            let mut fut = self.handler.download(self.request(slow), no_events());
            let t0 = Instant::now();
            // Poll it for a while so the work has really started, then drop it.
            while t0.elapsed() < Duration::from_millis(200) {
                if let Some(r) = (&mut fut).now_or_never() {
                    problems.push(format!("slow download finished in {:?}: {:?}", t0.elapsed(), r.is_ok()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let t1 = Instant::now();
            drop(fut);
            if t1.elapsed() > Duration::from_secs(1) {
                problems.push(format!("dropping the download took {:?}", t1.elapsed()));
            }
            if let Some(good) = &self.good {
                if let RResult::RErr(e) = block_on(self.handler.download(self.request(good), no_events())) {
                    problems.push(format!("after a cancel, {good} failed: {e}"));
                }
            }
            out.push(Check { name: "cancel", passed: problems.is_empty(), detail: problems.join("; ") });
        }
        out
    }

    /// Runs every check and panics with the failures listed.
    pub fn assert_all(&self) {
        let failed: Vec<String> =
            self.run().into_iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        assert!(failed.is_empty(), "plugin conformance failed:\n{}", failed.join("\n"));
    }
}
