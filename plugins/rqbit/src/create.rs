//! Building `.torrent` files (BEP 3 v1, single- or multi-file, BEP 27 private flag, BEP 19
//! web seeds).
//!
//! librqbit 9.1's `create_torrent` is not used: it appends one extra (empty) piece hash when
//! the content length is a multiple of the piece length, which aria2 rejects ("Too few/many
//! piece hash"), and it has neither the private flag nor web seeds.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use chiral_sdk::PluginError;
use sha1::{Digest as _, Sha1};

/// What goes into a torrent besides the content.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub trackers: Vec<String>,
    pub web_seeds: Vec<String>,
    pub piece_length: Option<u64>,
    pub private: bool,
    pub name: Option<String>,
}

/// A built torrent.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub info_hash_hex: String,
    pub name: String,
    pub length: u64,
    pub piece_length: u64,
    pub pieces: usize,
    /// The folder librqbit serves from: the file's parent, or the folder itself.
    pub output_folder: PathBuf,
}

/// A power of two giving at most ~2000 pieces, between 256 KiB and 16 MiB.
pub fn default_piece_length(total: u64) -> u64 {
    (total / 2000).next_power_of_two().clamp(256 << 10, 16 << 20)
}

fn files_of(root: &Path, dir: &Path, out: &mut Vec<(Vec<String>, PathBuf, u64)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let meta = std::fs::metadata(&p)?;
        if meta.is_dir() {
            files_of(root, &p, out)?;
        } else if meta.is_file() {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            out.push((parts, p.clone(), meta.len()));
        }
    }
    Ok(())
}

fn bstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

fn bint(out: &mut Vec<u8>, i: u64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

/// Hashes `path` (a file or a folder) and builds the torrent. Blocking: run it off the runtime.
pub fn build(path: &Path, o: &CreateOptions) -> Result<Built, PluginError> {
    let io = |e: std::io::Error| PluginError::io(format!("{}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| PluginError::not_found(format!("{}: {e}", path.display())))?;
    let path = path.canonicalize().map_err(io)?;
    let base_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "content".into());
    let name = o.name.clone().filter(|n| !n.is_empty()).unwrap_or(base_name);
    let multi = meta.is_dir();
    let mut files = Vec::new();
    if multi {
        files_of(&path, &path, &mut files).map_err(io)?;
        if files.is_empty() {
            return Err(PluginError::invalid(format!("{}: no files to put in a torrent", path.display())));
        }
    } else {
        files.push((vec![name.clone()], path.clone(), meta.len()));
    }
    let total: u64 = files.iter().map(|f| f.2).sum();
    let piece_length = o.piece_length.unwrap_or_else(|| default_piece_length(total));
    if !(16 << 10..=1 << 30).contains(&piece_length) || !piece_length.is_power_of_two() {
        return Err(PluginError::invalid(format!(
            "piece size {piece_length} must be a power of two between 16 KiB and 1 GiB"
        )));
    }

    // Pieces run across file boundaries; the last one may be short (never empty).
    let mut pieces = Vec::with_capacity((total.div_ceil(piece_length) as usize) * 20);
    let mut h = Sha1::new();
    let mut in_piece = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    for (_, p, len) in &files {
        let mut f = std::fs::File::open(p).map_err(|e| PluginError::io(format!("{}: {e}", p.display())))?;
        let mut left = *len;
        while left > 0 {
            let want = (piece_length - in_piece).min(buf.len() as u64).min(left) as usize;
            f.read_exact(&mut buf[..want])
                .map_err(|e| PluginError::io(format!("{}: {e} (did it change?)", p.display())))?;
            h.update(&buf[..want]);
            in_piece += want as u64;
            left -= want as u64;
            if in_piece == piece_length {
                pieces.extend_from_slice(&h.finalize_reset());
                in_piece = 0;
            }
        }
    }
    if in_piece > 0 {
        pieces.extend_from_slice(&h.finalize_reset());
    }

    // The info dictionary, keys sorted.
    let mut info = vec![b'd'];
    if multi {
        bstr(&mut info, b"files");
        info.push(b'l');
        for (parts, _, len) in &files {
            info.push(b'd');
            bstr(&mut info, b"length");
            bint(&mut info, *len);
            bstr(&mut info, b"path");
            info.push(b'l');
            for part in parts {
                bstr(&mut info, part.as_bytes());
            }
            info.extend_from_slice(b"ee");
        }
        info.push(b'e');
    } else {
        bstr(&mut info, b"length");
        bint(&mut info, total);
    }
    bstr(&mut info, b"name");
    bstr(&mut info, name.as_bytes());
    bstr(&mut info, b"piece length");
    bint(&mut info, piece_length);
    bstr(&mut info, b"pieces");
    bstr(&mut info, &pieces);
    if o.private {
        bstr(&mut info, b"private");
        bint(&mut info, 1);
    }
    info.push(b'e');
    let info_hash_hex: String = Sha1::digest(&info).iter().map(|b| format!("{b:02x}")).collect();

    let mut t = vec![b'd'];
    if let Some(first) = o.trackers.first() {
        bstr(&mut t, b"announce");
        bstr(&mut t, first.as_bytes());
        bstr(&mut t, b"announce-list");
        t.push(b'l');
        for tr in &o.trackers {
            t.push(b'l');
            bstr(&mut t, tr.as_bytes());
            t.push(b'e');
        }
        t.push(b'e');
    }
    bstr(&mut t, b"created by");
    bstr(&mut t, concat!("chiral-rqbit/", env!("CARGO_PKG_VERSION")).as_bytes());
    bstr(&mut t, b"info");
    t.extend_from_slice(&info);
    if !o.web_seeds.is_empty() {
        bstr(&mut t, b"url-list");
        t.push(b'l');
        for w in &o.web_seeds {
            bstr(&mut t, w.as_bytes());
        }
        t.push(b'e');
    }
    t.push(b'e');

    let output_folder =
        if multi { path.clone() } else { path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/")) };
    Ok(Built { bytes: t, info_hash_hex, name, length: total, piece_length, pieces: pieces.len() / 20, output_folder })
}
