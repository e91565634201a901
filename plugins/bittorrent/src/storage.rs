//! Reading a torrent's content from disk at content offsets (seeding).

use std::{fs::File, os::unix::fs::FileExt as _, path::PathBuf};

use crate::metainfo::TorrentMetadata;

pub struct Storage {
    files: Vec<(File, u64, u64, PathBuf)>,
}

impl Storage {
    /// Opens the files of `meta` at `paths` (from `metainfo::disk_paths`), checking sizes.
    pub fn open(meta: &TorrentMetadata, paths: &[PathBuf]) -> std::io::Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        for (f, p) in meta.files.iter().zip(paths) {
            let file = File::open(p)?;
            let len = file.metadata()?.len();
            if len != f.length {
                return Err(std::io::Error::other(format!(
                    "{}: {len} bytes, the torrent says {}",
                    p.display(),
                    f.length
                )));
            }
            files.push((file, f.offset, f.length, p.clone()));
        }
        Ok(Self { files })
    }

    /// Fills `buf` with the content bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        for (file, start, len, _) in &self.files {
            let s = offset.max(*start);
            let e = end.min(start + len);
            if s < e {
                let from = (s - offset) as usize;
                file.read_exact_at(&mut buf[from..from + (e - s) as usize], s - start)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, disk_paths, CreateOptions};

    #[test]
    fn reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("top");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a"), b"hello ").unwrap();
        std::fs::write(d.join("b"), b"world").unwrap();
        let (m, _) = build(&d, &CreateOptions::default()).unwrap();
        let s = Storage::open(&m, &disk_paths(&m, &d)).unwrap();
        let mut buf = vec![0; 7];
        s.read_at(3, &mut buf).unwrap();
        assert_eq!(&buf, b"lo worl");
        std::fs::write(d.join("b"), b"changed size").unwrap();
        assert!(Storage::open(&m, &disk_paths(&m, &d)).is_err());
    }
}
