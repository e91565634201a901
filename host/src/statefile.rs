//! The data dir's JSON state files (`seeds.json`, `daemon.json`, ...): one way to read them
//! and one way to replace them. A file is replaced atomically (a 0600 temporary file, synced,
//! renamed over it); a file that does not parse is set aside as `<name>.bad` with a warning,
//! so a corrupt file costs its contents but never stops a command.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

/// What reading a state file found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded<T> {
    /// No file yet.
    Missing,
    /// The file did not parse: it was renamed to `<name>.bad`.
    SetAside,
    Read(T),
}

impl<T: Default> Loaded<T> {
    /// The contents, or the empty value for a missing or set-aside file.
    pub fn or_default(self) -> T {
        match self {
            Loaded::Read(v) => v,
            Loaded::Missing | Loaded::SetAside => T::default(),
        }
    }
}

/// Reads `path` with `parse`; `what` names the contents in the warning ("seed list").
pub fn read<T, E: std::fmt::Display>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> std::io::Result<Loaded<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    match parse(&text) {
        Ok(v) => Ok(Loaded::Read(v)),
        Err(e) => {
            let bad = bad_path(path);
            tracing::warn!(
                "{} is not a valid {what} ({e}); starting a new one, the old one is kept as {}",
                path.display(),
                bad.display()
            );
            let _ = std::fs::rename(path, &bad);
            Ok(Loaded::SetAside)
        }
    }
}

/// `<name>.bad` beside `path`.
pub fn bad_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bad");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` atomically: written to `tmp` (mode 0600) and synced first,
/// then renamed over it; `tmp` is removed when the write fails.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_read_and_corrupt_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        let parse = |t: &str| serde_json::from_str::<Vec<u32>>(t);
        assert_eq!(read(&path, "list", parse).unwrap(), Loaded::Missing);
        replace(&path, &dir.path().join("x.json.tmp"), b"[1,2]").unwrap();
        assert_eq!(read(&path, "list", parse).unwrap(), Loaded::Read(vec![1, 2]));
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        std::fs::write(&path, "[1,").unwrap();
        assert_eq!(read(&path, "list", parse).unwrap(), Loaded::SetAside);
        assert_eq!(std::fs::read_to_string(dir.path().join("x.json.bad")).unwrap(), "[1,");
        assert!(!path.exists());
    }
}
