//! Identifiers: what a `download` identifier is (magnet, `.torrent` URL, local `.torrent`), and
//! magnet links for seeds. No librqbit type leaves this crate.

use std::path::Path;

use chiral_sdk::{magnet::Magnet, PluginError};

/// Torrent files larger than this are refused (same bound as the native plugin).
pub const MAX_TORRENT_BYTES: u64 = 64 << 20;

/// What an identifier names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    /// A magnet link (the SDK's parse of it: BTv1 info hash, trackers, `x.pe` peers, ...).
    Magnet(Magnet),
    /// An `http(s)://…/x.torrent` URL.
    Url(String),
    /// A local `.torrent` file (path, `file://` stripped).
    File(String),
}

/// Classifies `id` without touching the network. Anything that is not ours is `Unsupported`.
pub fn classify(id: &str) -> Result<Ident, PluginError> {
    let id = id.trim();
    if id.len() > 65_536 {
        return Err(PluginError::unsupported("identifier longer than 64 KiB"));
    }
    if id.is_empty() || id.contains('\0') {
        return Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent")));
    }
    let lower = id.to_ascii_lowercase();
    if lower.starts_with("magnet:") {
        return Ok(Ident::Magnet(Magnet::parse(id)?));
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let path_part = lower.split(['?', '#']).next().unwrap_or_default();
        if !path_part.ends_with(".torrent") {
            return Err(PluginError::unsupported(format!("{id} is not a .torrent URL")));
        }
        return Ok(Ident::Url(id.to_string()));
    }
    let path = id.strip_prefix("file://").unwrap_or(id);
    if path.is_empty() || (lower.contains("://") && !lower.starts_with("file://")) {
        return Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent")));
    }
    match std::fs::metadata(Path::new(path)) {
        Ok(m) if m.is_file() => {
            if m.len() > MAX_TORRENT_BYTES {
                return Err(PluginError::invalid(format!("{path}: torrent file over 64 MiB")));
            }
            Ok(Ident::File(path.to_string()))
        }
        Ok(_) => Err(PluginError::unsupported(format!("{path} is not a .torrent file"))),
        Err(e) if lower.ends_with(".torrent") => Err(PluginError::not_found(format!("{path}: {e}"))),
        Err(_) => Err(PluginError::unsupported(format!("{id:?} is not a magnet or a .torrent"))),
    }
}
