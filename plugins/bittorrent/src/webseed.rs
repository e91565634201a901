//! BEP 19 web seeds (`url-list`): an HTTP(S) server holding the torrent's files, read with
//! byte ranges.
//!
//! - [`plan`] (pure): which URL and byte range of which file serve a range of the content.
//!   Single-file torrents: the URL as is (or URL + name when it ends with `/`); multi-file:
//!   URL + `/` + name + `/` + path, each component percent-encoded.
//! - [`WebSeedSource`]: a [`PieceSource`] over one web seed (no hashes: the engine verifies
//!   every piece against the torrent's, and the swarm source falls back to it piece by piece).
//!
//! BEP 17 HTTP seeds (`httpseeds`, Hoffman style) are read by the same source: a script asked
//! for `URL?info_hash=..&piece=N&ranges=A-B` (B inclusive, offsets within the piece) that
//! answers with exactly those bytes, or 503 when busy. [`hoffman_url`] (pure) builds the query.

use std::{sync::Arc, time::Duration};

use chiral_sdk::{plugin::BoxFut, ContentInfo, PieceSource, PluginError};

use crate::{magnet::percent_encode, metainfo::TorrentMetadata};

/// One HTTP request of a content range: `(url, start in that file, length)`.
pub type Part = (String, u64, u64);

/// The URL of one file of the content on web seed `base` (`path` empty for a single file).
pub fn file_url(base: &str, meta: &TorrentMetadata, path: &[String]) -> String {
    if !meta.multi_file {
        return if base.ends_with('/') {
            format!("{base}{}", percent_encode(meta.name.as_bytes()))
        } else {
            base.to_string()
        };
    }
    let mut u = base.to_string();
    if !u.ends_with('/') {
        u.push('/');
    }
    u.push_str(&percent_encode(meta.name.as_bytes()));
    for c in path {
        u.push('/');
        u.push_str(&percent_encode(c.as_bytes()));
    }
    u
}

/// The requests serving `length` bytes at `offset` of the content from web seed `base`.
pub fn plan(base: &str, meta: &TorrentMetadata, offset: u64, length: u64) -> Result<Vec<Part>, PluginError> {
    let end = offset
        .checked_add(length)
        .filter(|e| *e <= meta.length)
        .ok_or_else(|| PluginError::invalid(format!("range {offset}+{length} is outside the content")))?;
    if length == 0 {
        return Ok(Vec::new());
    }
    if !meta.multi_file {
        return Ok(vec![(file_url(base, meta, &[]), offset, length)]);
    }
    let mut parts = Vec::new();
    for f in &meta.files {
        let (fs, fe) = (f.offset, f.offset + f.length);
        if f.length == 0 || fe <= offset || fs >= end {
            continue;
        }
        let s = offset.max(fs);
        let e = end.min(fe);
        parts.push((file_url(base, meta, &f.path), s - fs, e - s));
    }
    Ok(parts)
}

/// The URL asking BEP 17 HTTP seed `base` for bytes `start..end` of piece `piece`.
pub fn hoffman_url(base: &str, info_hash: &[u8; 20], piece: u32, start: u64, end: u64) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}info_hash={}&piece={piece}&ranges={start}-{}", percent_encode(info_hash), end - 1)
}

/// How a web seed is asked for bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// BEP 19 (`url-list`): the files themselves, with `Range`.
    UrlList,
    /// BEP 17 (`httpseeds`): a script asked by piece.
    Hoffman,
}

/// The torrent's web seeds as sources: the `url-list` ones given (`urls`, a magnet's `ws=` and
/// options included) and the metadata's `httpseeds`.
pub fn sources(http: &reqwest::Client, urls: &[String], meta: &Arc<TorrentMetadata>) -> Vec<Arc<WebSeedSource>> {
    let list = urls.iter().map(|u| (u, Style::UrlList));
    let hoffman = meta.http_seeds.iter().map(|u| (u, Style::Hoffman));
    list.chain(hoffman)
        .map(|(u, s)| Arc::new(WebSeedSource::with_style(http.clone(), u.clone(), meta.clone(), s)))
        .collect()
}

/// One web seed as a piece source.
#[derive(Clone)]
pub struct WebSeedSource {
    http: reqwest::Client,
    url: String,
    meta: Arc<TorrentMetadata>,
    info: ContentInfo,
    style: Style,
}

impl WebSeedSource {
    pub fn new(http: reqwest::Client, url: String, meta: Arc<TorrentMetadata>) -> Self {
        Self::with_style(http, url, meta, Style::UrlList)
    }

    pub fn with_style(http: reqwest::Client, url: String, meta: Arc<TorrentMetadata>, style: Style) -> Self {
        let kind = match style {
            Style::UrlList => "webseed",
            Style::Hoffman => "httpseed",
        };
        let info = crate::content_info(&meta, &format!("{kind}:{url}")).without_hashes();
        Self { http, url, meta, info, style }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `length` bytes at `offset` of the content.
    pub async fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>, PluginError> {
        if self.style == Style::Hoffman {
            return self.read_by_piece(offset, length).await;
        }
        let parts = plan(&self.url, &self.meta, offset, length)?;
        let mut out = Vec::with_capacity(length as usize);
        for (url, start, len) in parts {
            get_range(&self.http, &url, start, len, &mut out).await?;
        }
        Ok(out)
    }

    /// BEP 17: one request per piece the range touches.
    async fn read_by_piece(&self, offset: u64, length: u64) -> Result<Vec<u8>, PluginError> {
        let meta = &self.meta;
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= meta.length)
            .ok_or_else(|| PluginError::invalid(format!("range {offset}+{length} is outside the content")))?;
        let mut out = Vec::with_capacity(length as usize);
        let mut at = offset;
        while at < end {
            let piece = (at / meta.piece_length) as u32;
            let base = piece as u64 * meta.piece_length;
            let stop = end.min(base + meta.piece_len(piece));
            let url = hoffman_url(&self.url, &meta.info_hash, piece, at - base, stop - base);
            let resp = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .map_err(|e| PluginError::network(format!("http seed {}: {e}", self.url)))?;
            match resp.status().as_u16() {
                200 => {}
                503 => return Err(PluginError::network(format!("http seed {}: busy (503)", self.url))),
                404 => return Err(PluginError::not_found(format!("http seed {}: HTTP 404", self.url))),
                s => return Err(PluginError::network(format!("http seed {}: HTTP {s}", self.url))),
            }
            read_body(resp, &self.url, stop - at, &mut out).await?;
            at = stop;
        }
        Ok(out)
    }
}

async fn get_range(
    http: &reqwest::Client,
    url: &str,
    start: u64,
    len: u64,
    out: &mut Vec<u8>,
) -> Result<(), PluginError> {
    let resp = http
        .get(url)
        .header(reqwest::header::RANGE, format!("bytes={start}-{}", start + len - 1))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| PluginError::network(format!("web seed {url}: {e}")))?;
    let status = resp.status().as_u16();
    // 200 is fine only when the range was the whole body (a server ignoring Range).
    let whole_ok = status == 200 && start == 0 && resp.content_length() == Some(len);
    if status != 206 && !whole_ok {
        return Err(if status == 404 {
            PluginError::not_found(format!("web seed {url}: HTTP 404"))
        } else {
            PluginError::network(format!("web seed {url}: HTTP {status} to a range request"))
        });
    }
    read_body(resp, url, len, out).await
}

/// Appends exactly `len` body bytes to `out`; more or fewer is an error.
async fn read_body(mut resp: reqwest::Response, url: &str, len: u64, out: &mut Vec<u8>) -> Result<(), PluginError> {
    let want = out.len() + len as usize;
    while let Some(c) = resp.chunk().await.map_err(|e| PluginError::network(format!("web seed {url}: {e}")))? {
        if out.len() + c.len() > want {
            return Err(PluginError::network(format!("web seed {url}: more bytes than asked")));
        }
        out.extend_from_slice(&c);
    }
    if out.len() != want {
        return Err(PluginError::network(format!("web seed {url}: short body")));
    }
    Ok(())
}

impl PieceSource for WebSeedSource {
    fn info(&self) -> ContentInfo {
        self.info.clone()
    }

    fn fetch(&self, offset: u64, length: u64) -> BoxFut<Vec<u8>> {
        let me = self.clone();
        Box::pin(async move { me.read(offset, length).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileInfo;

    fn meta(multi: bool) -> TorrentMetadata {
        let files = vec![
            FileInfo { path: vec!["a b.txt".into()], length: 10, offset: 0 },
            FileInfo { path: vec!["empty".into()], length: 0, offset: 10 },
            FileInfo { path: vec!["sub".into(), "c.bin".into()], length: 20, offset: 10 },
        ];
        TorrentMetadata {
            info_hash: [0; 20],
            info_bytes: Vec::new(),
            name: "top dir".into(),
            piece_length: 16,
            pieces: vec![0; 40],
            length: 30,
            files: if multi { files } else { vec![FileInfo { path: vec!["top dir".into()], length: 30, offset: 0 }] },
            multi_file: multi,
            private: false,
            trackers: Vec::new(),
            web_seeds: Vec::new(),
            http_seeds: Vec::new(),
        }
    }

    #[test]
    fn hoffman_queries() {
        let ih = [0xabu8; 20];
        let u = hoffman_url("http://s/seed.php", &ih, 3, 0, 65536);
        assert_eq!(u, format!("http://s/seed.php?info_hash={}&piece=3&ranges=0-65535", "%AB".repeat(20)));
        assert!(hoffman_url("http://s/seed?x=1", &ih, 0, 10, 11).ends_with("&piece=0&ranges=10-10"));
        assert!(hoffman_url("http://s/seed?x=1", &ih, 0, 10, 11).starts_with("http://s/seed?x=1&info_hash="));
    }

    #[test]
    fn single_file_urls() {
        let m = meta(false);
        assert_eq!(plan("http://h/f.bin", &m, 16, 14).unwrap(), vec![("http://h/f.bin".to_string(), 16, 14)]);
        assert_eq!(plan("http://h/d/", &m, 0, 1).unwrap(), vec![("http://h/d/top%20dir".to_string(), 0, 1)]);
        assert!(plan("http://h/f", &m, 20, 11).is_err());
        assert!(plan("http://h/f", &m, 30, 0).unwrap().is_empty());
    }

    #[test]
    fn multi_file_ranges_cross_files() {
        let m = meta(true);
        assert_eq!(
            plan("http://h/base", &m, 4, 12).unwrap(),
            vec![
                ("http://h/base/top%20dir/a%20b.txt".to_string(), 4, 6),
                ("http://h/base/top%20dir/sub/c.bin".to_string(), 0, 6)
            ]
        );
        assert_eq!(
            plan("http://h/base/", &m, 16, 14).unwrap(),
            vec![("http://h/base/top%20dir/sub/c.bin".to_string(), 6, 14)]
        );
    }
}
