//! Plugin discovery, the registry of what loaded, and dispatch of identifiers to plugins.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use chiral_sdk::{capability, Events, HandlerBox, HostConfig, PluginDescriptor, PluginError, PluginModRef};
use thiserror::Error;

use crate::loader;

/// File names plugins are found by: `libchiral_plugin_<name>.so` (`.dylib` on macOS).
pub fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    name.starts_with("libchiral_plugin_") && (name.ends_with(".so") || name.ends_with(".dylib"))
}

/// The directories searched, first wins: `--plugin-path` (and the config's `plugin_path`),
/// `CHIRAL_PLUGIN_PATH` (colon-separated), the executable's directory and its `plugins/`
/// subfolder, then `<data dir>/plugins`.
pub fn search_dirs(explicit: &[PathBuf], env: Option<&str>, exe: Option<&Path>, data_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = explicit.to_vec();
    if let Some(env) = env {
        dirs.extend(env.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        dirs.push(dir.to_path_buf());
        dirs.push(dir.join("plugins"));
    }
    dirs.push(data_dir.join("plugins"));
    let mut seen = HashSet::new();
    dirs.retain(|d| seen.insert(d.canonicalize().unwrap_or_else(|_| d.clone())));
    dirs
}

/// What happened to one plugin file.
#[derive(Debug, Clone)]
pub enum Status {
    Loaded,
    Skipped(String),
}

/// One plugin file found during discovery.
#[derive(Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub status: Status,
    pub descriptor: Option<PluginDescriptor>,
    /// The SDK version the library says it was built against, also when it was skipped for it.
    pub sdk_version: Option<String>,
    module: Option<PluginModRef>,
    handler: Arc<OnceLock<Result<Arc<HandlerBox>, PluginError>>>,
}

impl Entry {
    pub fn name(&self) -> Option<&str> {
        self.descriptor.as_ref().map(|d| d.name.as_str())
    }
    pub fn is_loaded(&self) -> bool {
        matches!(self.status, Status::Loaded)
    }
    pub fn has(&self, cap: u32) -> bool {
        self.descriptor.as_ref().is_some_and(|d| d.capabilities & cap != 0)
    }
}

#[derive(Debug, Error)]
pub enum DispatchError {
    #[error("no plugin handles {what}; installed: {installed}")]
    Unclaimed { what: String, installed: String },
    #[error("backend {backend:?} does not handle {what}; it is not installed or claims other schemes (installed: {installed})")]
    Backend { backend: String, what: String, installed: String },
}

/// The scheme of an identifier (`http`, `magnet`), lowercase, if it has one.
pub fn scheme_of(identifier: &str) -> Option<String> {
    let (head, _) = identifier.split_once(':')?;
    let mut chars = head.chars();
    let first = chars.next()?;
    // One letter before ':' is a Windows drive, not a scheme.
    if head.len() < 2 || !first.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    Some(head.to_ascii_lowercase())
}

/// The path part of an identifier (no query or fragment), for suffix claims like `.torrent`.
fn path_part(identifier: &str) -> &str {
    identifier.split(['?', '#']).next().unwrap_or(identifier)
}

/// Where plugin events go: the plugin's name and the event.
pub type EventHandler = Arc<dyn Fn(&str, chiral_sdk::Event) + Send + Sync>;

/// Everything discovery found, and the host configuration handlers are built with.
pub struct Registry {
    entries: Vec<Entry>,
    config: HostConfig,
    /// scheme -> plugin name chosen by the user (config `[backend]`).
    overrides: BTreeMap<String, String>,
    /// plugin name -> options from the config's `[plugins.<name>]`.
    plugin_options: BTreeMap<String, Vec<(String, String)>>,
    events: EventHandler,
}

impl Registry {
    /// Scans `dirs` in order and loads every plugin file found; a file name or plugin name
    /// already seen is skipped as shadowed. Never fails: broken files are listed as skipped.
    pub fn discover(
        dirs: &[PathBuf],
        config: HostConfig,
        overrides: BTreeMap<String, String>,
        plugin_options: BTreeMap<String, Vec<(String, String)>>,
        events: EventHandler,
    ) -> Self {
        let mut entries: Vec<Entry> = Vec::new();
        let mut files_seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut names_seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(dir) else { continue };
            let mut files: Vec<PathBuf> =
                rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_plugin_file(p)).collect();
            files.sort();
            for path in files {
                let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let blank = |status| Entry {
                    path: path.clone(),
                    status,
                    descriptor: None,
                    sdk_version: None,
                    module: None,
                    handler: Arc::new(OnceLock::new()),
                };
                if let Some(first) = files_seen.get(&file_name) {
                    entries.push(blank(Status::Skipped(format!("shadowed by {}", first.display()))));
                    continue;
                }
                match loader::load(&path) {
                    Err(refusal) => {
                        // A file that does not load shadows nothing: the same name later in
                        // the search path still gets its turn.
                        tracing::info!("skipping plugin {}: {}", path.display(), refusal.error);
                        let mut e = blank(Status::Skipped(refusal.error.to_string()));
                        e.sdk_version = refusal.sdk_version;
                        entries.push(e);
                    }
                    Ok(lib) => {
                        files_seen.insert(file_name, path.clone());
                        let name = lib.descriptor.name.to_string();
                        let mut e = blank(Status::Loaded);
                        if let Some(first) = names_seen.get(&name) {
                            e.status =
                                Status::Skipped(format!("plugin {name} already loaded from {}", first.display()));
                        } else {
                            names_seen.insert(name, path.clone());
                            e.module = Some(lib.module);
                        }
                        e.sdk_version = Some(lib.descriptor.sdk_version.to_string());
                        e.descriptor = Some(lib.descriptor);
                        entries.push(e);
                    }
                }
            }
        }
        Self { entries, config, overrides, plugin_options, events }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Every plugin found, as `chiral plugins --json` and the daemon's API list them: name,
    /// version, claims, capabilities, file, and whether it loaded (or why not).
    pub fn describe(&self) -> Vec<serde_json::Value> {
        self.entries
            .iter()
            .map(|e| {
                let d = e.descriptor.as_ref();
                let (status, reason) = match &e.status {
                    Status::Loaded => ("loaded", None),
                    Status::Skipped(r) => ("skipped", Some(r.clone())),
                };
                serde_json::json!({
                    "name": d.map(|d| d.name.to_string()),
                    "version": d.map(|d| d.version.to_string()),
                    "sdk_version": e.sdk_version,
                    "schemes": d.map(|d| d.schemes.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                    "suffixes": d.map(|d| d.suffixes.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                    "capabilities": d.map(|d| Registry::capability_names(d.capabilities)).unwrap_or_default(),
                    "priority": d.map(|d| d.priority),
                    "description": d.map(|d| d.description.to_string()),
                    "file": e.path.display().to_string(),
                    "status": status,
                    "reason": reason,
                })
            })
            .collect()
    }

    pub fn loaded(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.is_loaded())
    }

    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.loaded().find(|e| e.name() == Some(name))
    }

    /// Loaded plugins claiming `identifier`, best first: suffix claims (`.torrent`) before
    /// scheme claims, then by priority, then discovery order.
    fn candidates(&self, identifier: &str) -> (String, Vec<&Entry>) {
        let lower = path_part(identifier).to_ascii_lowercase();
        let by_suffix: Vec<&Entry> = self
            .loaded()
            .filter(|e| e.descriptor.as_ref().is_some_and(|d| d.suffixes.iter().any(|s| lower.ends_with(s.as_str()))))
            .collect();
        let scheme = scheme_of(identifier);
        let what = match (&scheme, by_suffix.is_empty()) {
            (_, false) => "files ending in .torrent".to_string(),
            (Some(s), true) => format!("'{s}:' identifiers"),
            (None, true) => format!("{identifier:?} (no scheme and no known file suffix)"),
        };
        let mut list = if !by_suffix.is_empty() {
            by_suffix
        } else if let Some(s) = &scheme {
            self.loaded()
                .filter(|e| e.descriptor.as_ref().is_some_and(|d| d.schemes.iter().any(|x| x.as_str() == s)))
                .collect()
        } else {
            Vec::new()
        };
        list.sort_by_key(|e| std::cmp::Reverse(e.descriptor.as_ref().map_or(0, |d| d.priority)));
        (what, list)
    }

    /// Other plugins that can add a source for `identifier` beside `primary`
    /// (capability `EXTRA_SOURCE`, claiming the same scheme or suffix).
    pub fn extra_sources(&self, identifier: &str, primary: &Entry) -> Vec<&Entry> {
        let lower = path_part(identifier).to_ascii_lowercase();
        let scheme = scheme_of(identifier);
        self.loaded()
            .filter(|e| e.path != primary.path && e.has(capability::EXTRA_SOURCE) && e.has(capability::SOURCE))
            .filter(|e| {
                e.descriptor.as_ref().is_some_and(|d| {
                    d.suffixes.iter().any(|s| lower.ends_with(s.as_str()))
                        || scheme.as_ref().is_some_and(|sc| d.schemes.iter().any(|x| x.as_str() == sc))
                })
            })
            .collect()
    }

    /// The plugin for `identifier`: the user's `backend` if it claims it, else the config's
    /// override for the scheme, else the best candidate.
    pub fn route(&self, identifier: &str, backend: Option<&str>) -> Result<&Entry, DispatchError> {
        let (what, candidates) = self.candidates(identifier);
        if let Some(b) = backend {
            if let Some(e) = candidates.iter().find(|e| e.name() == Some(b)) {
                return Ok(e);
            }
            if candidates.is_empty() || self.by_name(b).is_none() {
                return Err(DispatchError::Backend { backend: b.into(), what, installed: self.installed_schemes() });
            }
            // The backend is installed but is for other identifiers (e.g. `--backend rqbit`
            // with an http:// mirror): use the normal choice for this one.
        }
        if let Some(name) = scheme_of(identifier).and_then(|s| self.overrides.get(&s)) {
            if let Some(e) = candidates.iter().find(|e| e.name() == Some(name.as_str())) {
                return Ok(e);
            }
        }
        candidates
            .into_iter()
            .next()
            .ok_or_else(|| DispatchError::Unclaimed { what, installed: self.installed_schemes() })
    }

    /// `http, https (http); magnet (bittorrent)`: what is installed, for error messages.
    pub fn installed_schemes(&self) -> String {
        let mut parts: Vec<String> = self
            .loaded()
            .filter_map(|e| e.descriptor.as_ref())
            .map(|d| {
                let mut claims: Vec<String> = d.schemes.iter().map(|s| format!("{s}:")).collect();
                claims.extend(d.suffixes.iter().map(|s| format!("*{s}")));
                format!("{} ({})", claims.join(" "), d.name)
            })
            .collect();
        if parts.is_empty() {
            parts.push("no plugins at all".into());
        }
        let skipped = self.entries.iter().filter(|e| !e.is_loaded()).count();
        let mut out = parts.join(", ");
        if skipped > 0 || self.loaded().next().is_none() {
            out.push_str(&format!(" ({skipped} plugin file(s) skipped; see `chiral plugins`)"));
        }
        out
    }

    /// scheme (`http`) or suffix (`*.torrent`) -> the plugin that wins it (config overrides
    /// included, `--backend` not).
    pub fn scheme_winners(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for d in self.loaded().filter_map(|e| e.descriptor.as_ref()) {
            for s in d.schemes.iter() {
                if let Ok(e) = self.route(&format!("{s}:"), None) {
                    out.insert(s.to_string(), e.name().unwrap_or_default().to_string());
                }
            }
            for s in d.suffixes.iter() {
                if let Ok(e) = self.route(&format!("x{s}"), None) {
                    out.insert(format!("*{s}"), e.name().unwrap_or_default().to_string());
                }
            }
        }
        out
    }

    /// The plugin's handler, built on first use from the host configuration.
    pub fn handler(&self, entry: &Entry) -> Result<Arc<HandlerBox>, PluginError> {
        let name = entry.name().unwrap_or("?").to_string();
        entry
            .handler
            .get_or_init(|| {
                let module =
                    entry.module.ok_or_else(|| PluginError::unsupported(format!("plugin {name} is not loaded")))?;
                let mut config = self.config.clone();
                config.data_dir = Path::new(config.data_dir.as_str()).join(&name).to_string_lossy().into_owned().into();
                config.options.extend(
                    self.plugin_options
                        .get(&name)
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.as_str().into(), v.as_str().into()).into()),
                );
                let events = self.events.clone();
                let n = name.clone();
                let sink = Events::sink_from_fn(move |e| events(&n, e));
                (module.new_handler())(config, sink)
                    .into_result()
                    .map(Arc::new)
                    .map_err(|e| PluginError::new(e.kind, format!("plugin {name} failed to start: {e}")))
            })
            .clone()
    }

    /// Where the events of `plugin`'s requests go: the registry's event handler (the host's
    /// logs, and its payment service), as for the plugin's own events.
    pub fn sink(&self, plugin: &str) -> chiral_sdk::EventSinkBox {
        let events = self.events.clone();
        let n = plugin.to_string();
        Events::sink_from_fn(move |e| events(&n, e))
    }

    /// The registry's event handler.
    pub fn events(&self) -> EventHandler {
        self.events.clone()
    }

    /// The plugin's handler if it was already built.
    pub fn started_handler(&self, entry: &Entry) -> Option<Arc<HandlerBox>> {
        entry.handler.get().and_then(|h| h.as_ref().ok()).cloned()
    }

    /// Capability names for display.
    pub fn capability_names(bits: u32) -> Vec<&'static str> {
        [
            (capability::DOWNLOAD, "download"),
            (capability::SEED, "seed"),
            (capability::SOURCE, "source"),
            (capability::SEED_MANAGE, "seed-manage"),
            (capability::EXTRA_SOURCE, "extra-source"),
            (capability::REPUTED_PEERS, "reputed-peers"),
            (capability::PIPELINED, "pipelined"),
        ]
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n)
        .collect()
    }
}

#[cfg(test)]
impl Registry {
    /// A registry of descriptors only (no libraries), for dispatch tests.
    pub(crate) fn from_descriptors(ds: Vec<PluginDescriptor>, overrides: BTreeMap<String, String>) -> Self {
        let entries = ds
            .into_iter()
            .map(|d| Entry {
                path: PathBuf::from(format!("/p/libchiral_plugin_{}.so", d.name)),
                status: Status::Loaded,
                sdk_version: Some(d.sdk_version.to_string()),
                descriptor: Some(d),
                module: None,
                handler: Arc::new(OnceLock::new()),
            })
            .collect();
        Self {
            entries,
            config: chiral_sdk::testkit::config(Path::new("/tmp")),
            overrides,
            plugin_options: BTreeMap::new(),
            events: Arc::new(|_, _| {}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(overrides: &[(&str, &str)]) -> Registry {
        let d = |n: &str, schemes: &[&str], suffixes: &[&str], prio| {
            PluginDescriptor::new(n, "1.0.0").schemes(schemes).suffixes(suffixes).priority(prio)
        };
        Registry::from_descriptors(
            vec![
                d("http", &["http", "https"], &[], 0),
                d("rqbit", &["magnet"], &[".torrent"], 5),
                d("bittorrent", &["magnet"], &[".torrent"], 10),
            ],
            overrides.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        )
    }

    #[test]
    fn dispatch_by_scheme_suffix_priority_and_override() {
        let r = registry(&[]);
        assert_eq!(r.route("http://h/f", None).unwrap().name(), Some("http"));
        assert_eq!(r.route("HTTPS://h/f", None).unwrap().name(), Some("http"));
        assert_eq!(r.route("magnet:?xt=urn:btih:00", None).unwrap().name(), Some("bittorrent"));
        assert_eq!(r.route("http://h/a.torrent?x=1", None).unwrap().name(), Some("bittorrent"));
        assert_eq!(r.route("/tmp/a.TORRENT", None).unwrap().name(), Some("bittorrent"));
        assert_eq!(r.route("magnet:?xt", Some("rqbit")).unwrap().name(), Some("rqbit"));
        // a backend for other identifiers leaves http alone
        assert_eq!(r.route("http://h/f", Some("rqbit")).unwrap().name(), Some("http"));
        assert!(r.route("magnet:?xt", Some("nope")).err().unwrap().to_string().contains("nope"));
        let o = registry(&[("magnet", "rqbit")]);
        assert_eq!(o.route("magnet:?xt", None).unwrap().name(), Some("rqbit"));
        assert_eq!(o.scheme_winners().get("magnet").map(String::as_str), Some("rqbit"));
        assert_eq!(o.scheme_winners().get("*.torrent").map(String::as_str), Some("bittorrent"));
    }

    #[test]
    fn unclaimed_lists_installed_schemes() {
        let e = registry(&[]).route("gopher://x/y", None).err().unwrap().to_string();
        assert!(e.contains("'gopher:'") && e.contains("http: https: (http)") && e.contains("magnet:"), "{e}");
        assert!(!e.contains('\n'));
        let e = registry(&[]).route("some/file.bin", None).err().unwrap().to_string();
        assert!(e.contains("no scheme"), "{e}");
    }

    #[test]
    fn schemes() {
        assert_eq!(scheme_of("http://x/y").as_deref(), Some("http"));
        assert_eq!(scheme_of("MAGNET:?xt=urn:btih:abc").as_deref(), Some("magnet"));
        assert_eq!(scheme_of("chiral:abcd").as_deref(), Some("chiral"));
        assert_eq!(scheme_of("C:\\file.torrent"), None);
        assert_eq!(scheme_of("/tmp/a.torrent"), None);
        assert_eq!(scheme_of("file.torrent"), None);
        assert_eq!(scheme_of("1http://x"), None);
    }

    #[test]
    fn search_order_and_dedup() {
        let dirs = search_dirs(
            &[PathBuf::from("/a")],
            Some("/b::/c:/a"),
            Some(Path::new("/opt/chiral/bin/chiral")),
            Path::new("/data"),
        );
        let want: Vec<PathBuf> = ["/a", "/b", "/c", "/opt/chiral/bin", "/opt/chiral/bin/plugins", "/data/plugins"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(dirs, want);
    }

    #[test]
    fn plugin_file_names() {
        assert!(is_plugin_file(Path::new("/x/libchiral_plugin_http.so")));
        assert!(!is_plugin_file(Path::new("/x/libchiral_sdk.so")));
        assert!(!is_plugin_file(Path::new("/x/libchiral_plugin_http.so.d")));
    }
}
