//! FTP replies and listings as pure functions, so they can be tested on text alone: passive-mode
//! addresses (EPSV, RFC 2428; PASV, RFC 959), `SIZE` (RFC 3659), `PWD`, and directory listings
//! (`MLSD`, RFC 3659, and the `LIST` formats servers really send: Unix `ls -l` and DOS/IIS).

use std::net::Ipv4Addr;

/// One control-connection reply: its code and its text on one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Every line of the reply, trimmed and joined with spaces (the code included).
    pub text: String,
}

impl Reply {
    /// A reply from its raw bytes (`NNN text\r\n`, possibly multi-line); `None` without a
    /// three-digit code.
    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        let code = std::str::from_utf8(raw.get(..3)?).ok()?.parse::<u16>().ok()?;
        if !(100..=599).contains(&code) {
            return None;
        }
        let text = String::from_utf8_lossy(raw);
        let text = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        Some(Self { code, text })
    }

    /// 1xx: the command goes on (a transfer starts).
    pub fn is_preliminary(&self) -> bool {
        (100..200).contains(&self.code)
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// 4xx: worth trying again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// The command (or the file it named) is not there: 550, 450 and 553 on file commands.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.code, 450 | 550 | 553)
    }
    /// The server does not know the command (or its parameter).
    pub fn is_not_implemented(&self) -> bool {
        matches!(self.code, 500 | 501 | 502 | 504)
    }
}

/// The port of an EPSV reply: `229 Entering Extended Passive Mode (|||6446|)`. Any printable
/// delimiter may replace `|`; the address fields must be empty (the data connection goes to
/// the control connection's peer).
pub fn parse_epsv(text: &str) -> Option<u16> {
    let open = text.find('(')?;
    let close = open + text[open..].find(')')?;
    let inner = &text.as_bytes()[open + 1..close];
    if inner.len() < 5 {
        return None;
    }
    let d = inner[0];
    if !(33..=126).contains(&d) || inner[1] != d || inner[2] != d || inner[inner.len() - 1] != d {
        return None;
    }
    let port = std::str::from_utf8(&inner[3..inner.len() - 1]).ok()?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

/// The address of a PASV reply: `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` (parentheses
/// are optional, as some servers leave them out).
pub fn parse_pasv(text: &str) -> Option<(Ipv4Addr, u16)> {
    // Past the reply code: the first run of six comma-separated numbers.
    let body = text.get(3..)?;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let end =
                body[i..].find(|c: char| !(c.is_ascii_digit() || c == ',' || c == ' ')).map_or(body.len(), |e| i + e);
            let nums: Vec<&str> = body[i..end].split(',').map(str::trim).collect();
            if nums.len() >= 6 {
                let v: Option<Vec<u8>> = nums[..6].iter().map(|n| n.parse::<u8>().ok()).collect();
                if let Some(v) = v {
                    let port = u16::from(v[4]) << 8 | u16::from(v[5]);
                    if port != 0 {
                        return Some((Ipv4Addr::new(v[0], v[1], v[2], v[3]), port));
                    }
                }
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

/// The size in a `213` reply to `SIZE`: `213 1048576`.
pub fn parse_size(reply: &Reply) -> Option<u64> {
    if reply.code != 213 {
        return None;
    }
    let rest = reply.text.get(3..)?.trim_start_matches('-').trim();
    let digits = rest.split_whitespace().next()?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a reply to `REST <n>` means the server will start the next transfer at `n`.
pub fn rest_accepted(reply: &Reply) -> bool {
    reply.code == 350
}

/// The folder in a `257 "/a ""quoted"" dir" is the current directory` reply.
pub fn parse_pwd(text: &str) -> Option<String> {
    let start = text.find('"')? + 1;
    let mut out = String::new();
    let mut chars = text[start..].chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
                out.push('"');
            } else {
                return Some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// What a listing entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link (not followed: it may point anywhere, or loop).
    Link,
    /// Anything else (devices, the `cdir`/`pdir` entries of MLSD).
    Other,
}

/// One line of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub size: Option<u64>,
}

/// An `MLSD` line: `fact=value;fact=value; name` (facts are case-insensitive).
pub fn parse_mlsd_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (facts, name) = line.split_once(' ')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let mut kind = Kind::Other;
    let mut size = None;
    for fact in facts.split(';').filter(|f| !f.is_empty()) {
        let Some((key, value)) = fact.split_once('=') else { continue };
        match key.to_ascii_lowercase().as_str() {
            "type" => {
                let v = value.to_ascii_lowercase();
                kind = match v.as_str() {
                    "file" => Kind::File,
                    "dir" => Kind::Dir,
                    "cdir" | "pdir" => Kind::Other,
                    v if v.contains("slink") || v.contains("symlink") => Kind::Link,
                    _ => Kind::Other,
                };
            }
            "size" => size = value.parse().ok(),
            _ => {}
        }
    }
    if name == "." || name == ".." {
        kind = Kind::Other;
    }
    Some(Entry { name: name.to_string(), kind, size })
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// A `LIST` line in Unix `ls -l` form (`-rw-r--r-- 1 ftp ftp 1234 Jan 02 12:34 a name`, the
/// group column optional) or DOS form (`01-02-24  12:34PM  <DIR>  name`). `None` for lines that
/// are neither (`total 12`, banners).
pub fn parse_list_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches(['\r', '\n']);
    parse_unix_line(line).or_else(|| parse_dos_line(line))
}

/// Splits `line` into whitespace-separated fields with the byte offset where each ends.
fn fields(line: &str) -> Vec<(&str, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((&line[s..i], i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((&line[s..], line.len()));
    }
    out
}

fn parse_unix_line(line: &str) -> Option<Entry> {
    let kind = match line.as_bytes().first()? {
        b'-' => Kind::File,
        b'd' => Kind::Dir,
        b'l' => Kind::Link,
        b'b' | b'c' | b'p' | b's' => Kind::Other,
        _ => return None,
    };
    let f = fields(line);
    let perms = f.first()?.0;
    // Bytes, not a `str` slice: a multi-byte character among the permissions is no boundary.
    if perms.len() < 10 || !perms.as_bytes()[1..10].iter().all(|b| b"rwxsStTl-".contains(b)) {
        return None;
    }
    // The date is `Mon DD HH:MM` or `Mon DD YYYY`; the size is the field before it.
    let m = (3..f.len().saturating_sub(3)).find(|&i| {
        MONTHS.contains(&f[i].0.to_ascii_lowercase().as_str())
            && f[i + 1].0.parse::<u8>().is_ok_and(|d| (1..=31).contains(&d))
            && (f[i + 2].0.contains(':') || f[i + 2].0.parse::<u16>().is_ok())
    })?;
    let size = f[m - 1].0.parse::<u64>().ok();
    // The name starts after the one separator that follows the time/year field.
    let after = f[m + 2].1;
    let mut name = line.get(after + 1..)?.to_string();
    if name.is_empty() {
        return None;
    }
    if kind == Kind::Link {
        if let Some((n, _target)) = name.split_once(" -> ") {
            name = n.to_string();
        }
    }
    finish(name, kind, if kind == Kind::File { size } else { None })
}

fn parse_dos_line(line: &str) -> Option<Entry> {
    let f = fields(line);
    if f.len() < 4 {
        return None;
    }
    let date = f[0].0;
    if date.len() < 8 || !date.bytes().all(|b| b.is_ascii_digit() || b == b'-' || b == b'/') {
        return None;
    }
    let time = f[1].0.to_ascii_uppercase();
    if !time.contains(':') {
        return None;
    }
    let (kind, size) = if f[2].0.eq_ignore_ascii_case("<DIR>") {
        (Kind::Dir, None)
    } else {
        (Kind::File, Some(f[2].0.replace(',', "").parse::<u64>().ok()?))
    };
    let name = line.get(f[2].1..)?.trim_start().to_string();
    finish(name, kind, size)
}

fn finish(name: String, kind: Kind, size: Option<u64>) -> Option<Entry> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let kind = if name == "." || name == ".." { Kind::Other } else { kind };
    Some(Entry { name, kind, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Reply {
        Reply::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn replies() {
        let r = reply("230-Welcome\r\n230-to the server\r\n230 Login successful.\r\n");
        assert_eq!(r.code, 230);
        assert_eq!(r.text, "230-Welcome 230-to the server 230 Login successful.");
        assert!(r.is_success());
        assert!(reply("550 Failed to open file.\r\n").is_unavailable());
        assert!(reply("426 Failure writing network stream.").is_transient());
        assert!(reply("502 Command not implemented.").is_not_implemented());
        assert!(reply("150 Opening BINARY mode data connection").is_preliminary());
        assert!(reply("350 Restart position accepted (5).").is_intermediate());
        assert_eq!(Reply::from_bytes(b"abc"), None);
        assert_eq!(Reply::from_bytes(b"999 x"), None);
        assert_eq!(Reply::from_bytes(b"20"), None);
        assert!(reply(&format!("500 {}", "x".repeat(1000))).text.len() <= 300);
    }

    #[test]
    fn epsv() {
        assert_eq!(parse_epsv("229 Entering Extended Passive Mode (|||6446|)"), Some(6446));
        assert_eq!(parse_epsv("229 Entering Extended Passive Mode (!!!30001!)."), Some(30001));
        assert_eq!(parse_epsv("229 EPSV ok (|||65535|)"), Some(65535));
        for bad in [
            "229 Entering Extended Passive Mode",
            "229 (|||0|)",
            "229 (|||65536|)",
            "229 (|||12a|)",
            "229 (||||)",
            "229 (|1|2|3|)",
            "229 (|||123!)",
            "229 (   12 )",
            "229 (|||-1|)",
        ] {
            assert_eq!(parse_epsv(bad), None, "{bad}");
        }
    }

    #[test]
    fn pasv() {
        assert_eq!(
            parse_pasv("227 Entering Passive Mode (127,0,0,1,117,48)."),
            Some((Ipv4Addr::new(127, 0, 0, 1), 30000))
        );
        assert_eq!(parse_pasv("227 Entering Passive Mode 10,1,2,3,4,1"), Some((Ipv4Addr::new(10, 1, 2, 3), 1025)));
        assert_eq!(parse_pasv("227 =192,168,0,9,255,255"), Some((Ipv4Addr::new(192, 168, 0, 9), 65535)));
        for bad in ["227 Entering Passive Mode", "227 (1,2,3,4,5)", "227 (256,0,0,1,1,1)", "227 (1,2,3,4,0,0)", "22"] {
            assert_eq!(parse_pasv(bad), None, "{bad}");
        }
    }

    #[test]
    fn size_and_rest() {
        assert_eq!(parse_size(&reply("213 268435456\r\n")), Some(268_435_456));
        assert_eq!(parse_size(&reply("213 0")), Some(0));
        assert_eq!(parse_size(&reply("213 18446744073709551615")), Some(u64::MAX));
        assert_eq!(parse_size(&reply("213 18446744073709551616")), None);
        assert_eq!(parse_size(&reply("213 -5")), None);
        assert_eq!(parse_size(&reply("213 12kB")), None);
        assert_eq!(parse_size(&reply("550 Could not get file size.")), None);
        assert!(rest_accepted(&reply("350 Restart position accepted (1048576).")));
        assert!(!rest_accepted(&reply("502 REST not implemented")));
        assert!(!rest_accepted(&reply("501 Bad parameter")));
    }

    #[test]
    fn pwd() {
        assert_eq!(parse_pwd("257 \"/\" is the current directory").as_deref(), Some("/"));
        assert_eq!(parse_pwd("257 \"/home/a \"\"q\"\" b\" ok").as_deref(), Some("/home/a \"q\" b"));
        assert_eq!(parse_pwd("257 no quotes"), None);
        assert_eq!(parse_pwd("257 \"unterminated"), None);
    }

    #[test]
    fn mlsd_lines() {
        let e = parse_mlsd_line("type=file;size=1024;modify=20240101120000; a file.bin").unwrap();
        assert_eq!(e, Entry { name: "a file.bin".into(), kind: Kind::File, size: Some(1024) });
        assert_eq!(parse_mlsd_line("Type=dir;Modify=2024; sub").unwrap().kind, Kind::Dir);
        assert_eq!(parse_mlsd_line("type=cdir; .").unwrap().kind, Kind::Other);
        assert_eq!(parse_mlsd_line("type=OS.unix=slink:/x; l").unwrap().kind, Kind::Link);
        assert_eq!(parse_mlsd_line("type=file;size=1; ..").unwrap().kind, Kind::Other);
        assert_eq!(parse_mlsd_line("type=file;size=1; a/b"), None);
        assert_eq!(parse_mlsd_line("nospace"), None);
    }

    #[test]
    fn unix_list_lines() {
        let e = parse_list_line("-rw-r--r--    1 0        0        268435456 Jan 02 12:34 big.bin").unwrap();
        assert_eq!(e, Entry { name: "big.bin".into(), kind: Kind::File, size: Some(268_435_456) });
        let e = parse_list_line("-rw-r--r--    1 ftp      ftp             5 Dec 31  2023  two  spaces ").unwrap();
        assert_eq!(e.name, " two  spaces ");
        assert_eq!(e.size, Some(5));
        // No group column.
        let e = parse_list_line("-rw-r--r-- 1 owner 77 Mar 3 2020 x").unwrap();
        assert_eq!((e.name.as_str(), e.size), ("x", Some(77)));
        let e = parse_list_line("drwxr-xr-x    2 0        0            4096 Feb 29 01:00 sub dir").unwrap();
        assert_eq!((e.name.as_str(), e.kind), ("sub dir", Kind::Dir));
        let e = parse_list_line("lrwxrwxrwx    1 0        0               3 Jan 01 00:00 link -> ../x").unwrap();
        assert_eq!((e.name.as_str(), e.kind), ("link", Kind::Link));
        // A name that looks like a date is still a name.
        let e = parse_list_line("-rw-r--r-- 1 u g 9 Jan 1 2020 Jan 1 2020").unwrap();
        assert_eq!(e.name, "Jan 1 2020");
        assert_eq!(parse_list_line("drwxr-xr-x 2 u g 4096 Jan 1 2020 ..").unwrap().kind, Kind::Other);
        // A multi-byte character (or an invalid byte, decoded lossily) among the permissions.
        assert_eq!(parse_list_line("-rwxrwxrw\u{20ac} 1 u g 5 Jan 1 00:00 f"), None);
        assert_eq!(parse_list_line("-rwxrwxrw\u{fffd} 1 u g 5 Jan 1 00:00 f"), None);
        assert_eq!(parse_list_line("\u{20ac}rwxrwxrwx 1 u g 5 Jan 1 00:00 f"), None);
        for bad in ["total 12", "", "-rw-r--r-- 1 u g 9 Jan 1", "hello world", "-rw-r--r-- 1 u g 9 Jan 1 2020 a/b"] {
            assert_eq!(parse_list_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dos_list_lines() {
        let e = parse_list_line("01-02-24  12:34PM       <DIR>          My Folder").unwrap();
        assert_eq!((e.name.as_str(), e.kind, e.size), ("My Folder", Kind::Dir, None));
        let e = parse_list_line("01-02-2024  09:00AM            1,234,567 file name.txt\r\n").unwrap();
        assert_eq!((e.name.as_str(), e.kind, e.size), ("file name.txt", Kind::File, Some(1_234_567)));
        assert_eq!(parse_list_line("01-02-24  12:34PM  abc  x"), None);
    }
}
