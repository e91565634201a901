//! Host configuration: defaults, the TOML config file, environment and flags, in that order
//! of increasing precedence.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

/// A config file that cannot be used; shown as one line naming the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read (an explicit `--config` that is missing, permissions).
    #[error("config {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// Not TOML, or not the config's shape (unknown keys are an error); the parser's first line.
    #[error("config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// The config file as written by users (every field optional).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub connections: Option<u32>,
    /// Address servers bind to.
    pub listen: Option<String>,
    pub port: Option<u16>,
    /// Host name put in printed URLs.
    pub advertise: Option<String>,
    #[serde(default)]
    pub plugin_path: Vec<PathBuf>,
    pub proxy: Option<String>,
    /// Most bytes per second downloaded (`"10M"` or a number of bytes).
    pub max_download_rate: Option<toml::Value>,
    /// Most bytes per second each seeding plugin uploads.
    pub max_upload_rate: Option<toml::Value>,
    #[serde(default)]
    pub bootstrap: Vec<String>,
    pub no_dht: Option<bool>,
    /// scheme -> plugin name, e.g. `magnet = "rqbit"`.
    #[serde(default)]
    pub backend: BTreeMap<String, String>,
    /// `[plugins.<name>]` tables, passed to that plugin as string options.
    #[serde(default)]
    pub plugins: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// `[daemon]`: how `chiral daemon` runs.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// `[payments]`: the chain, the price and the wallet (see [`crate::payments`]).
    #[serde(default)]
    pub payments: crate::payments::PaymentsFile,
}

/// The `[daemon]` table.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address and port of the HTTP API and page (default `127.0.0.1:7878`).
    pub http: Option<String>,
    /// Downloads transferring at once (default 5); the others wait in the queue.
    pub max_active: Option<usize>,
    /// Where downloads go when no folder is given (default `<data dir>/downloads`).
    pub download_dir: Option<PathBuf>,
    /// More names the `Host` header may give (the machine's name or LAN address when `http`
    /// listens beyond loopback).
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

impl ConfigFile {
    /// Reads `path`; a missing default file is an empty config, a missing explicit one an error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    /// The config in `text`, or the parser's first line (the fuzz target's entry point).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
    }

    /// Where the config is looked for when `--config` is not given.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(x).join("chiral/config.toml"));
        }
        home().map(|h| h.join(".config/chiral/config.toml"))
    }

    /// `max_download_rate` / `max_upload_rate`: a size string or a number of bytes per second.
    pub fn rate(&self, key: &str) -> Result<Option<u64>, String> {
        let v = match key {
            "max_download_rate" => &self.max_download_rate,
            _ => &self.max_upload_rate,
        };
        match v {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(toml::Value::String(s)) => {
                chiral_sdk::options::parse_size(s).map(Some).ok_or_else(|| format!("{key} = {s:?} is not a size"))
            }
            Some(other) => Err(format!("{key} = {other:?} is not a size")),
        }
    }

    /// A plugin's options as key/value strings; an array gives the key once per element.
    pub fn plugin_options(&self, plugin: &str) -> Vec<(String, String)> {
        fn scalar(v: &toml::Value) -> Option<String> {
            match v {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Float(f) => Some(f.to_string()),
                toml::Value::Boolean(b) => Some(b.to_string()),
                toml::Value::Datetime(d) => Some(d.to_string()),
                toml::Value::Array(_) | toml::Value::Table(_) => None,
            }
        }
        let mut out = Vec::new();
        for (k, v) in self.plugins.get(plugin).into_iter().flatten() {
            match v {
                toml::Value::Array(items) => out.extend(items.iter().filter_map(scalar).map(|s| (k.clone(), s))),
                other => out.extend(scalar(other).map(|s| (k.clone(), s))),
            }
        }
        out
    }
}

/// The default data directory: `$XDG_DATA_HOME/chiral`, else `~/.local/share/chiral`; with no
/// home at all, `$TMPDIR/chiral-<uid>` made private (0700) to the user. Never a folder shared
/// with other users (they could plant plugins or seeds there), never the current folder.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| Path::new(v).is_absolute()) {
        return PathBuf::from(x).join("chiral");
    }
    if let Some(h) = home() {
        return h.join(".local/share/chiral");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("chiral-{uid}"));
    private_dir(&dir);
    dir
}

/// The user's home: `$HOME` when it is an absolute path, else the account's home directory
/// (an empty or relative `$HOME` would make `~` the current folder).
pub fn home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| Path::new(h).is_absolute()) {
        return Some(PathBuf::from(h));
    }
    account_home().filter(|h| h.is_absolute() && h.is_dir())
}

fn account_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    // SAFETY: getpwuid_r writes into `pw` and `buf` (whose length it is given) and sets `out`
    // to `pw` or null; the strings it points to live in `buf`, read before it is dropped.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf: Vec<libc::c_char> = vec![0; 4096];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(libc::geteuid(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
        if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pw.pw_dir);
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

/// Creates `dir` readable by its owner only (best effort: plugins in a folder someone else
/// made there first are still refused by the loader's ownership check).
fn private_dir(dir: &Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
connections = 4
listen = "127.0.0.1"
plugin_path = ["/opt/chiral/plugins"]
[backend]
magnet = "rqbit"
[plugins.http]
user_agent = "x"
retries = 3
"#,
        )
        .unwrap();
        let c = ConfigFile::load(&p).unwrap();
        assert_eq!(c.connections, Some(4));
        assert_eq!(c.backend.get("magnet").map(String::as_str), Some("rqbit"));
        let mut opts = c.plugin_options("http");
        opts.sort();
        assert_eq!(opts, vec![("retries".into(), "3".into()), ("user_agent".into(), "x".into())]);
    }

    #[test]
    fn unknown_keys_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "conections = 4\n").unwrap();
        let e = ConfigFile::load(&p).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("c.toml") && !e.contains('\n'), "{e}");
        let missing = ConfigFile::load(&dir.path().join("none.toml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing:?}");
    }
}
