//! `multipart/form-data` (RFC 7578) as the API takes it: a whole body already read (its size
//! bounded by the server), split into named parts. Pure: bytes in, parts out.

/// One part: its `name`, its `filename` if any, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) name: String,
    pub(super) filename: Option<String>,
    pub(super) data: Vec<u8>,
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub(super) fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .split(';')
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
        })
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// The parts of `body`; an error names what is malformed.
pub(super) fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delim = format!("--{boundary}").into_bytes();
    let mut at = find(body, &delim, 0).ok_or("no multipart boundary in the body")? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err("malformed multipart body".into());
        }
        at += 2;
        let head_end = find(body, b"\r\n\r\n", at).ok_or("a multipart part has no end of headers")?;
        let head = String::from_utf8_lossy(&body[at..head_end]).into_owned();
        let data_start = head_end + 4;
        let mut close = delim.clone();
        close.splice(0..0, b"\r\n".iter().copied());
        let data_end = find(body, &close, data_start).ok_or("a multipart part is not closed")?;
        let (mut name, mut filename) = (None, None);
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else { continue };
            if !k.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for param in v.split(';').skip(1) {
                let Some((pk, pv)) = param.split_once('=') else { continue };
                let pv = pv.trim().trim_matches('"').to_string();
                match pk.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(pv),
                    "filename" => filename = Some(pv),
                    _ => {}
                }
            }
        }
        let name = name.ok_or("a multipart part has no name")?;
        parts.push(Part { name, filename, data: body[data_start..data_end].to_vec() });
        at = data_end + close.len();
        if parts.len() > 16 {
            return Err("too many multipart parts".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_as_curl_sends_them() {
        assert_eq!(boundary("multipart/form-data; boundary=------abc").as_deref(), Some("------abc"));
        assert_eq!(boundary("Multipart/Form-Data;boundary=\"q r\"").as_deref(), Some("q r"));
        assert_eq!(boundary("application/json"), None);
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"torrent\"; filename=\"a.torrent\"\r\n\
Content-Type: application/x-bittorrent\r\n\r\nd4:infod\r\n--Xee\r\n--XY\r\n\
Content-Disposition: form-data; name=\"out_dir\"\r\n\r\n/tmp/o\r\n--XY--\r\n";
        let parts = parse(body, "XY").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "torrent");
        assert_eq!(parts[0].filename.as_deref(), Some("a.torrent"));
        assert_eq!(parts[0].data, b"d4:infod\r\n--Xee");
        assert_eq!((parts[1].name.as_str(), parts[1].data.as_slice()), ("out_dir", &b"/tmp/o"[..]));
        assert!(parse(b"--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end", "XY").is_err());
        assert!(parse(b"nothing", "XY").is_err());
        assert!(parse(b"--XY\r\n\r\n\r\nx\r\n--XY--", "XY").is_err(), "a part needs a name");
    }
}
