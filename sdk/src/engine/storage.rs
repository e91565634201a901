//! The content's bytes on disk: `.part` files at content offsets, renamed when complete.

use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

use super::{io_err, safe_relative, EngineError};
use crate::{
    abi::ContentInfo,
    resume::{create_dirs_within, is_own_file, open_part, part_path},
    select::FileSelection,
};

/// Most files in one content (bounds what a description from the network can make us create).
const MAX_FILES: usize = 1 << 20;

fn not_open(path: &Path) -> EngineError {
    EngineError::Io { path: path.to_path_buf(), message: "not open".into() }
}

pub(super) struct StoredFile {
    pub(super) final_path: PathBuf,
    pub(super) part: PathBuf,
    pub(super) offset: u64,
    pub(super) length: u64,
    /// Chosen (`--files`): an unchosen file is never created, written or renamed.
    pub(super) wanted: bool,
    file: Option<File>,
    /// Held while writing: a buffered write takes the file's inode lock in the kernel, where a
    /// second writer spins; here it sleeps instead (measured: 7% of a download's CPU spun).
    writing: std::sync::Mutex<()>,
}

/// The content's bytes on disk: one or more `.part` files at content offsets.
pub(super) struct Storage {
    pub(super) files: Vec<StoredFile>,
    /// The output folder: folders inside it are made without following links.
    base: PathBuf,
}

impl Storage {
    pub(super) fn plan(
        out_dir: &Path,
        name: &str,
        info: &ContentInfo,
        select: Option<&FileSelection>,
    ) -> Result<Self, EngineError> {
        let mut s = Self::plan_all(out_dir, name, info)?;
        if let Some(sel) = select {
            let paths: Vec<String> = if info.files.is_empty() {
                vec![name.to_string()]
            } else {
                info.files.iter().map(|f| f.path.to_string()).collect()
            };
            let wanted = sel.wanted(&paths).map_err(|e| EngineError::Layout(e.to_string()))?;
            for (f, w) in s.files.iter_mut().zip(wanted) {
                f.wanted = w;
            }
        }
        Ok(s)
    }

    /// Some files are not chosen.
    pub(super) fn is_partial(&self) -> bool {
        self.files.iter().any(|f| !f.wanted)
    }

    /// Whether the bytes `offset..offset+len` touch a chosen file.
    pub(super) fn wants(&self, offset: u64, len: u64) -> bool {
        self.segments(offset, len).any(|(f, ..)| f.wanted)
    }

    /// Whether the bytes `offset..offset+len` all belong to chosen files.
    pub(super) fn wants_all(&self, offset: u64, len: u64) -> bool {
        self.segments(offset, len).all(|(f, ..)| f.wanted)
    }

    fn plan_all(out_dir: &Path, name: &str, info: &ContentInfo) -> Result<Self, EngineError> {
        if info.files.is_empty() {
            let final_path = out_dir.join(name);
            return Ok(Self {
                files: vec![StoredFile {
                    part: part_path(&final_path),
                    final_path,
                    offset: 0,
                    length: info.length,
                    wanted: true,
                    file: None,
                    writing: Default::default(),
                }],
                base: out_dir.to_path_buf(),
            });
        }
        if info.files.len() > MAX_FILES {
            return Err(EngineError::Layout(format!(
                "{} files is more than the {MAX_FILES} allowed",
                info.files.len()
            )));
        }
        let root = out_dir.join(name);
        let mut files = Vec::with_capacity(info.files.len());
        let mut expect = 0u64;
        for f in info.files.iter() {
            let rel = safe_relative(&f.path)
                .ok_or_else(|| EngineError::Layout(format!("file entry {:?} has no usable name", f.path)))?;
            if f.offset != expect || f.offset.checked_add(f.length).is_none() {
                return Err(EngineError::Layout("file entries do not tile the content".into()));
            }
            expect = f.offset + f.length;
            let final_path = root.join(rel);
            files.push(StoredFile {
                part: part_path(&final_path),
                final_path,
                offset: f.offset,
                length: f.length,
                wanted: true,
                file: None,
                writing: Default::default(),
            });
        }
        if expect != info.length {
            return Err(EngineError::Layout(format!("files add up to {expect} bytes, content is {}", info.length)));
        }
        Ok(Self { files, base: out_dir.to_path_buf() })
    }

    pub(super) fn all_final_exist(&self) -> bool {
        self.files.iter().filter(|f| f.wanted).all(|f| is_own_file(&f.final_path))
    }

    /// Whether any chosen file has a `.part` on disk (a download to resume).
    pub(super) fn has_parts(&self) -> bool {
        self.files.iter().any(|f| f.wanted && f.part.exists())
    }

    pub(super) fn open(&mut self) -> Result<(), EngineError> {
        for f in self.files.iter_mut().filter(|f| f.wanted) {
            if let Some(dir) = f.part.parent() {
                create_dirs_within(&self.base, dir).map_err(|e| io_err(dir, e))?;
            }
            let file = open_part(&f.part, false).map_err(|e| io_err(&f.part, e))?;
            let len = file.metadata().map_err(|e| io_err(&f.part, e))?.len();
            if len != f.length {
                file.set_len(f.length).map_err(|e| io_err(&f.part, e))?;
            }
            f.file = Some(file);
        }
        Ok(())
    }

    /// Open the final files read-only (an already complete download being checked).
    pub(super) fn open_finals(&mut self) -> Result<(), EngineError> {
        for f in self.files.iter_mut().filter(|f| f.wanted) {
            f.file = Some(File::open(&f.final_path).map_err(|e| io_err(&f.final_path, e))?);
        }
        Ok(())
    }

    pub(super) fn segments(&self, offset: u64, len: u64) -> impl Iterator<Item = (&StoredFile, u64, u64, u64)> {
        let end = offset + len;
        self.files.iter().filter_map(move |f| {
            let s = offset.max(f.offset);
            let e = end.min(f.offset + f.length);
            (s < e).then(|| (f, s - f.offset, s - offset, e - s))
        })
    }

    pub(super) fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), EngineError> {
        for (f, at, from, n) in self.segments(offset, data.len() as u64).filter(|(f, ..)| f.wanted) {
            let file = f.file.as_ref().ok_or_else(|| not_open(&f.part))?;
            let _one_writer = f.writing.lock().unwrap_or_else(|p| p.into_inner());
            file.write_all_at(&data[from as usize..(from + n) as usize], at).map_err(|e| io_err(&f.part, e))?;
        }
        Ok(())
    }

    pub(super) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), EngineError> {
        for (f, at, from, n) in self.segments(offset, buf.len() as u64) {
            let file = f.file.as_ref().ok_or_else(|| not_open(&f.part))?;
            file.read_exact_at(&mut buf[from as usize..(from + n) as usize], at).map_err(|e| io_err(&f.part, e))?;
        }
        Ok(())
    }

    pub(super) fn sha256(&self, length: u64) -> Result<[u8; 32], EngineError> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < length {
            let n = (length - off).min(buf.len() as u64) as usize;
            self.read_at(off, &mut buf[..n])?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(h.finalize().into())
    }

    pub(super) fn finish(&self) -> Result<Vec<PathBuf>, EngineError> {
        let mut out = Vec::with_capacity(self.files.len());
        for f in self.files.iter().filter(|f| f.wanted) {
            std::fs::rename(&f.part, &f.final_path).map_err(|e| io_err(&f.final_path, e))?;
            out.push(f.final_path.clone());
        }
        Ok(out)
    }

    pub(super) fn remove_parts(&self) {
        for f in self.files.iter().filter(|f| f.wanted) {
            let _ = std::fs::remove_file(&f.part);
        }
    }
}
