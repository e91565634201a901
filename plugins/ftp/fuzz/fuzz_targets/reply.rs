//! What an FTP server sends on the control connection and in listings: replies (`EPSV`, `PASV`,
//! `SIZE`, `PWD`) and `MLSD` / `LIST` lines (Unix and DOS forms). Never panics, whatever the
//! bytes (a multi-byte character inside a `LIST` field panicked once); an entry's name is
//! never empty nor a path, and `.`/`..` are never files or folders to descend into.
#![no_main]
use chiral_plugin_ftp::reply::{
    parse_epsv, parse_list_line, parse_mlsd_line, parse_pasv, parse_pwd, parse_size, rest_accepted, Entry, Kind, Reply,
};
use libfuzzer_sys::fuzz_target;

fn check(e: &Entry) {
    assert!(!e.name.is_empty() && !e.name.contains('/'));
    if e.name == "." || e.name == ".." {
        assert_eq!(e.kind, Kind::Other);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = Reply::from_bytes(data) {
        assert!((100..=599).contains(&r.code));
        assert!(r.text.chars().count() <= 300 && !r.text.chars().any(char::is_control));
        let _ = (r.is_preliminary(), r.is_success(), r.is_intermediate(), r.is_transient());
        let _ = (r.is_unavailable(), r.is_not_implemented(), rest_accepted(&r));
        if parse_size(&r).is_some() {
            assert_eq!(r.code, 213);
        }
        let _ = parse_epsv(&r.text);
        let _ = parse_pasv(&r.text);
        let _ = parse_pwd(&r.text);
    }
    let text = String::from_utf8_lossy(data);
    if let Some(port) = parse_epsv(&text) {
        assert_ne!(port, 0);
    }
    if let Some((_, port)) = parse_pasv(&text) {
        assert_ne!(port, 0);
    }
    let _ = parse_pwd(&text);
    for line in text.split('\n') {
        if let Some(e) = parse_mlsd_line(line) {
            check(&e);
        }
        if let Some(e) = parse_list_line(line) {
            check(&e);
            // A folder's or link's `LIST` size is never taken (it would be counted as data).
            assert!(!matches!(e.kind, Kind::Dir | Kind::Link) || e.size.is_none(), "{e:?}");
        }
    }
});
