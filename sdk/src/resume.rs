//! Resume state kept beside a partial download: which pieces are verified on disk.
//!
//! `<final name>.part` holds the data at its final offsets; `<final name>.chiral-resume` is a
//! small JSON record (layout, content fingerprint, done-piece bitfield) written atomically
//! (temporary file + rename) as pieces land. A restarted download that finds both, with the
//! same layout and fingerprint, skips the pieces marked done.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// State files larger than this are not ours (16M pieces fit in 4 MiB of hex).
const MAX_STATE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeState {
    pub version: u32,
    pub length: u64,
    pub piece_length: u64,
    /// Identifies the content (hash of its piece hashes) so another file of the same size is
    /// never resumed into; for content without hashes, its length and name.
    pub fingerprint: String,
    /// Hex of the bitfield of done pieces (bit 7 of byte 0 = piece 0).
    pub done: String,
}

impl ResumeState {
    pub fn new(length: u64, piece_length: u64, fingerprint: String, done: &[bool]) -> Self {
        Self { version: 1, length, piece_length, fingerprint, done: hex::encode(pack(done)) }
    }

    /// Done flags for `count` pieces, or `None` when the bitfield does not fit.
    pub fn done_pieces(&self, count: u32) -> Option<Vec<bool>> {
        let bytes = hex::decode(&self.done).ok()?;
        if bytes.len() != (count as usize).div_ceil(8) {
            return None;
        }
        Some((0..count as usize).map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0).collect())
    }

    /// Reads a state file; `None` if missing, oversized or malformed (then the download starts
    /// over, which loses time but never data).
    pub fn load(path: &Path) -> Option<Self> {
        let f = std::fs::File::open(path).ok()?;
        let mut text = String::new();
        f.take(MAX_STATE_BYTES).read_to_string(&mut text).ok()?;
        Self::from_json(&text)
    }

    /// A state file's text; `None` if malformed.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("chiral-resume.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}

pub fn pack(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        if *b {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

/// `name.part` beside `path`.
pub fn part_path(path: &Path) -> PathBuf {
    suffixed(path, ".part")
}

/// Opens the `.part` file at `path` for reading and writing, creating it, without following a
/// symlink planted there: the `.part` name is ours, so a link found at it is removed (never
/// written through) and a fresh file made. Anything but a regular file there is an error.
/// `truncate`: start empty (a stream) or keep what is there (a resumable download).
pub fn open_part(path: &Path, truncate: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let file = match open() {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            std::fs::remove_file(path)?;
            open()?
        }
        other => other?,
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// Creates the folder `dir` inside the output folder `base` without going through a link
/// planted inside it: `base` itself is the user's choice (made if missing, links followed);
/// every folder between `base` and `dir` is made if missing, and one that is a symbolic link
/// (or not a folder) is an error, so a link planted at a folder name of a multi-file download
/// never sends its files elsewhere. A `dir` outside `base` is made as given.
pub fn create_dirs_within(base: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(base)?;
    let Ok(rel) = dir.strip_prefix(base) else {
        return std::fs::create_dir_all(dir);
    };
    let mut at = base.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is a symbolic link; a download never writes through one", at.display()),
                ))
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is in the way: not a folder", at.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&at) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `path` is a regular file of our own (a symlink there is not, whatever it points to).
pub fn is_own_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// `name.chiral-resume` beside `path`.
pub fn state_path(path: &Path) -> PathBuf {
    suffixed(path, ".chiral-resume")
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_at_the_part_name_is_replaced_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        let part = dir.path().join("file.bin.part");
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        let f = open_part(&part, true).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"downloaded bytes", 0).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(is_own_file(&part) && !std::fs::symlink_metadata(&part).unwrap().is_symlink());
        assert_eq!(std::fs::read(&part).unwrap(), b"downloaded bytes");
        // Kept when resuming; a final name that is a symlink is not one of ours.
        drop(f);
        assert_eq!(open_part(&part, false).unwrap().metadata().unwrap().len(), 16);
        let fin = dir.path().join("file.bin");
        std::os::unix::fs::symlink(&victim, &fin).unwrap();
        assert!(!is_own_file(&fin));
        // Something other than a file at the name is an error, not a write.
        let odd = dir.path().join("dir.part");
        std::fs::create_dir(&odd).unwrap();
        assert!(open_part(&odd, false).is_err());
    }

    #[test]
    fn a_symlink_at_a_folder_name_is_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        create_dirs_within(&out, &out.join("album/disc1")).unwrap();
        assert!(out.join("album/disc1").is_dir());
        std::os::unix::fs::symlink(&elsewhere, out.join("planted")).unwrap();
        let e = create_dirs_within(&out, &out.join("planted/sub")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!elsewhere.join("sub").exists());
        std::fs::write(out.join("file"), b"x").unwrap();
        assert!(create_dirs_within(&out, &out.join("file/sub")).is_err());
        // The output folder itself may be a link: it is the user's choice.
        let linked = d.path().join("linked-out");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        create_dirs_within(&linked, &linked.join("a")).unwrap();
        assert!(elsewhere.join("a").is_dir());
    }

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.chiral-resume");
        let done = [true, false, true, true, false, false, false, false, true];
        let s = ResumeState::new(100, 12, "fp".into(), &done);
        s.save(&p).unwrap();
        let back = ResumeState::load(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.done_pieces(9).unwrap(), done);
        assert!(back.done_pieces(17).is_none(), "a bitfield of the wrong size is refused");
    }

    #[test]
    fn garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.chiral-resume");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(ResumeState::load(&p).is_none());
        assert!(ResumeState::load(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn names() {
        assert_eq!(part_path(Path::new("/a/b.bin")), PathBuf::from("/a/b.bin.part"));
        assert_eq!(state_path(Path::new("b")), PathBuf::from("b.chiral-resume"));
    }
}
