//! In-process tests through the same ABI adapters the host uses: the plugin's own seed server
//! (libunftp) feeding the plugin's own downloads, plus tiny scripted FTP servers for behaviour
//! a real server rarely shows (no REST, no SIZE, refused logins, a connection dropped mid-way).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
};

use chiral_sdk::{
    abi_stable::std_types::{RResult, RString, RVec, Tuple2},
    testkit, DownloadOutcome, DownloadRequest, ErrorKind, EventSinkBox, Events, HandlerBox, PluginError, SeedInfo,
    SeedRequest,
};
use futures::executor::block_on;

use crate::FtpPlugin;

fn handler(dir: &Path) -> HandlerBox {
    testkit::handler_for::<FtpPlugin>(testkit::config(dir)).expect("handler builds")
}

fn no_events() -> EventSinkBox {
    Events::sink_from_fn(|_| {})
}

use chiral_sdk::testkit::content;

fn seed(h: &HandlerBox, path: &Path, options: &[(&str, &str)]) -> Result<SeedInfo, PluginError> {
    let options = options.iter().map(|(k, v)| Tuple2(RString::from(*k), RString::from(*v))).collect();
    let req = SeedRequest { path: path.to_string_lossy().into_owned().into(), options };
    block_on(h.seed(req, no_events())).into_result()
}

fn download(h: &HandlerBox, url: &str, out: &Path, connections: u32) -> Result<DownloadOutcome, PluginError> {
    let req = DownloadRequest {
        identifier: url.into(),
        out_dir: out.to_string_lossy().into_owned().into(),
        connections,
        options: RVec::new(),
    };
    block_on(h.download(req, no_events())).into_result()
}

fn assert_one_line(e: &PluginError) {
    assert!(!e.message.contains('\n') && !e.message.is_empty(), "{:?}", e.message);
}

#[test]
fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    testkit::Kit::new(handler(dir.path())).out_dir(&dir.path().join("out")).assert_all();
}

#[test]
fn seed_then_download_round_trip_with_four_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(9 * 1024 * 1024 + 123);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("data file #1.bin");
    std::fs::write(&file, &data).unwrap();
    // A sibling that must not be reachable through the seed.
    std::fs::write(src.join("secret.txt"), b"no").unwrap();
    let h = handler(dir.path());

    let info = seed(&h, &file, &[]).unwrap();
    let url = info.identifiers[0].to_string();
    assert!(url.starts_with("ftp://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/data%20file%20%231.bin"), "{url}");
    assert_eq!(seed(&h, &file, &[]).unwrap().id, info.id);

    let out = dir.path().join("out");
    let got = download(&h, &url, &out, 4).unwrap();
    assert_eq!(std::fs::read(out.join("data file #1.bin")).unwrap(), data);
    assert_eq!(got.bytes, data.len() as u64);
    assert_eq!(got.per_source[0].bytes, data.len() as u64);
    assert!(!got.per_source[0].label.contains('@'));

    let base = url.rsplit_once('/').unwrap().0;
    let e = download(&h, &format!("{base}/secret.txt"), &dir.path().join("out2"), 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert_one_line(&e);
    assert!(!dir.path().join("out2/secret.txt").exists());

    // Stopped: the URL is gone.
    h.stop_seed(info.id.clone()).into_result().unwrap();
    let e = download(&h, &url, &dir.path().join("out3"), 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(h.list_seeds().is_empty());
}

/// Files a scripted server received, by name.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// How a scripted server behaves.
#[derive(Clone, Default)]
struct Script {
    files: Vec<(String, Vec<u8>)>,
    /// Accepts only this user and password (else anyone).
    login: Option<(String, String)>,
    no_rest: bool,
    no_size: bool,
    no_epsv: bool,
    /// Close the data connection after this many bytes of the first `drop_count` RETRs (426).
    drop_after: Option<usize>,
    drop_count: usize,
    /// Files received by STOR.
    uploads: Received,
    /// Turns away sessions past this many at once (421), counting in `sessions`.
    max_sessions: Option<usize>,
    sessions: Arc<Mutex<(usize, usize)>>,
}

/// A scripted FTP server on loopback (threads, std only); returns its port and a log of the
/// commands it received.
fn scripted(script: Script) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let drops = Arc::new(Mutex::new(0usize));
    let l = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (script, log, drops) = (script.clone(), l.clone(), drops.clone());
            std::thread::spawn(move || {
                {
                    let mut n = script.sessions.lock().unwrap();
                    if script.max_sessions.is_some_and(|m| n.0 >= m) {
                        drop(n);
                        let mut stream = stream;
                        let _ = stream.write_all(b"421 There are too many connections from your internet address.\r\n");
                        return;
                    }
                    n.0 += 1;
                    n.1 = n.1.max(n.0);
                }
                let _ = session(stream, &script, &log, &drops);
                script.sessions.lock().unwrap().0 -= 1;
            });
        }
    });
    (port, log)
}

fn session(stream: TcpStream, s: &Script, log: &Mutex<Vec<String>>, drops: &Mutex<usize>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 scripted\r\n")?;
    let mut user = String::new();
    let mut rest = 0usize;
    let mut pasv: Option<TcpListener> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        log.lock().unwrap().push(cmd.clone());
        let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd.as_str(), ""));
        let file = s.files.iter().find(|(n, _)| n == arg.trim_start_matches('/')).map(|(_, d)| d.clone());
        let reply: String = match verb.to_ascii_uppercase().as_str() {
            "USER" => {
                user = arg.to_string();
                "331 password please".into()
            }
            "PASS" => match &s.login {
                Some((u, p)) if *u != user || p != arg => "530 Login incorrect.".into(),
                _ => "230 welcome".into(),
            },
            "TYPE" => "200 ok".into(),
            "PWD" => "257 \"/\" is home".into(),
            "CWD" => {
                if arg == "/" || arg.is_empty() {
                    "250 ok".into()
                } else {
                    "550 no such folder".into()
                }
            }
            "FEAT" => "211-Features:\r\n SIZE\r\n211 End".into(),
            "NOOP" => "200 ok".into(),
            "EPSV" if s.no_epsv => "502 no EPSV".into(),
            "EPSV" => {
                let l = TcpListener::bind("127.0.0.1:0")?;
                let p = l.local_addr()?.port();
                pasv = Some(l);
                format!("229 Entering Extended Passive Mode (|||{p}|)")
            }
            "PASV" => {
                let l = TcpListener::bind("127.0.0.1:0")?;
                let p = l.local_addr()?.port();
                pasv = Some(l);
                // A bogus address: clients must use the control connection's peer.
                format!("227 Entering Passive Mode (10,9,8,7,{},{})", p >> 8, p & 255)
            }
            "REST" if s.no_rest => "502 REST not implemented".into(),
            "REST" => {
                rest = arg.parse().unwrap_or(0);
                format!("350 Restart position accepted ({rest}).")
            }
            "SIZE" if s.no_size => "502 SIZE not implemented".into(),
            "SIZE" => match &file {
                Some(d) => format!("213 {}", d.len()),
                None => "550 Could not get file size.".into(),
            },
            "LIST" => {
                let Some(l) = pasv.take() else {
                    out.write_all(b"425 use PASV first\r\n")?;
                    continue;
                };
                out.write_all(b"150 Here comes the directory listing.\r\n")?;
                let (mut data, _) = l.accept()?;
                for (n, d) in &s.files {
                    if arg.is_empty() || arg.trim_start_matches('/') == n {
                        write!(data, "-rw-r--r--    1 0        0        {:>8} Jan 02 12:34 {n}\r\n", d.len())?;
                    }
                }
                drop(data);
                "226 Directory send OK.".into()
            }
            "RETR" => {
                let Some(d) = file else {
                    out.write_all(b"550 Failed to open file.\r\n")?;
                    continue;
                };
                let Some(l) = pasv.take() else {
                    out.write_all(b"425 use PASV first\r\n")?;
                    continue;
                };
                let from = std::mem::take(&mut rest).min(d.len());
                out.write_all(b"150 Opening BINARY mode data connection.\r\n")?;
                let (mut data, _) = l.accept()?;
                let dropping = s.drop_after.filter(|_| {
                    let mut n = drops.lock().unwrap();
                    *n += 1;
                    *n <= s.drop_count
                });
                let end = dropping.map_or(d.len(), |k| (from + k).min(d.len()));
                let ok = data.write_all(&d[from..end]).is_ok();
                drop(data);
                if ok && dropping.is_none() {
                    "226 Transfer complete.".into()
                } else {
                    "426 Failure writing network stream.".into()
                }
            }
            "STOR" => {
                let Some(l) = pasv.take() else {
                    out.write_all(b"425 use PASV first\r\n")?;
                    continue;
                };
                out.write_all(b"150 Ok to send data.\r\n")?;
                let (mut data, _) = l.accept()?;
                let mut got = Vec::new();
                data.read_to_end(&mut got)?;
                s.uploads.lock().unwrap().push((arg.to_string(), got));
                "226 Transfer complete.".into()
            }
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => "502 not implemented".into(),
        };
        out.write_all(format!("{reply}\r\n").as_bytes())?;
    }
}

#[test]
fn server_without_rest_is_streamed_whole() {
    let data = content(3 * 1024 * 1024 + 7);
    let (port, log) = scripted(Script {
        files: vec![("f.bin".into(), data.clone())],
        no_rest: true,
        no_epsv: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let url = format!("ftp://127.0.0.1:{port}/f.bin");
    let src = block_on(h.open_source(url.as_str().into(), no_events())).into_result().unwrap();
    let info = src.info();
    assert!(!info.random_access && info.length_known && info.length == data.len() as u64);
    let got = download(&h, &url, &dir.path().join("out"), 4).unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/f.bin")).unwrap(), data);
    assert_eq!(got.per_source[0].bytes, data.len() as u64);
    assert!(!dir.path().join("out/f.bin.part").exists());
    let log = log.lock().unwrap();
    assert!(log.iter().any(|l| l == "PASV") && !log.iter().any(|l| l.starts_with("REST 1")), "{log:?}");
}

#[test]
fn server_without_size_is_sized_by_list() {
    let data = content(777_777);
    let (port, _) =
        scripted(Script { files: vec![("f.bin".into(), data.clone())], no_size: true, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let url = format!("ftp://127.0.0.1:{port}/f.bin");
    let src = block_on(h.open_source(url.as_str().into(), no_events())).into_result().unwrap();
    assert_eq!(src.info().length, data.len() as u64);
    assert!(src.info().random_access);
    let piece = block_on(src.fetch(1000, 5000)).into_result().unwrap();
    assert_eq!(piece.as_slice(), &data[1000..6000]);
    // The end of the file, on the same (reused) session.
    let tail = block_on(src.fetch(777_000, 777)).into_result().unwrap();
    assert_eq!(tail.as_slice(), &data[777_000..]);
}

#[test]
fn refused_login_is_one_line_without_the_password() {
    let (port, log) = scripted(Script {
        files: vec![("f.bin".into(), content(10))],
        login: Some(("alice".into(), "right".into())),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let url = format!("ftp://alice:s3cr3tpw@127.0.0.1:{port}/f.bin");
    let e = download(&h, &url, &dir.path().join("out"), 1).unwrap_err();
    assert_one_line(&e);
    assert!(e.message.contains("login refused") && e.message.contains("530"), "{e}");
    assert!(!e.message.contains("s3cr3tpw"), "{e}");
    assert!(!dir.path().join("out/f.bin").exists());
    let e = match block_on(h.open_source(url.as_str().into(), no_events())) {
        RResult::RErr(e) => e,
        RResult::ROk(_) => panic!("open_source logged in with a wrong password"),
    };
    assert!(!e.message.contains("s3cr3tpw"), "{e}");
    // The right password, given through the URL.
    let ok = format!("ftp://alice:right@127.0.0.1:{port}/f.bin");
    download(&h, &ok, &dir.path().join("ok"), 1).unwrap();
    assert!(log.lock().unwrap().iter().any(|l| l == "PASS right"));
}

#[test]
fn credentials_come_from_the_plugin_options() {
    let (port, _) = scripted(Script {
        files: vec![("f.bin".into(), content(10))],
        login: Some(("bob".into(), "opt-pw".into())),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = testkit::config(dir.path());
    config.options = vec![Tuple2("user".into(), "bob".into()), Tuple2("password".into(), "opt-pw".into())].into();
    let h = testkit::handler_for::<FtpPlugin>(config).unwrap();
    download(&h, &format!("ftp://127.0.0.1:{port}/f.bin"), &dir.path().join("out"), 1).unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/f.bin")).unwrap(), content(10));
}

#[test]
fn a_dropped_data_connection_is_retried_on_another_session() {
    let data = content(5 * 1024 * 1024);
    let (port, _) = scripted(Script {
        files: vec![("f.bin".into(), data.clone())],
        drop_after: Some(100_000),
        drop_count: 1,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let got = download(&h, &format!("ftp://127.0.0.1:{port}/f.bin"), &dir.path().join("out"), 2).unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/f.bin")).unwrap(), data);
    assert_eq!(got.bytes, data.len() as u64);
}

#[test]
fn a_server_that_always_drops_fails_in_one_line_with_no_final_file() {
    let data = content(2 * 1024 * 1024);
    let (port, _) = scripted(Script {
        files: vec![("f.bin".into(), data)],
        drop_after: Some(1000),
        drop_count: usize::MAX,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let e = download(&h, &format!("ftp://127.0.0.1:{port}/f.bin"), &dir.path().join("out"), 2).unwrap_err();
    assert_one_line(&e);
    assert_eq!(e.kind, ErrorKind::Network, "{e}");
    assert!(e.message.contains("closed early"), "{e}");
    assert!(!dir.path().join("out/f.bin").exists());
}

#[test]
fn missing_file_and_dead_server() {
    let (port, _) = scripted(Script::default());
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let e = download(&h, &format!("ftp://127.0.0.1:{port}/nope.bin"), &dir.path().join("out"), 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("550"), "{e}");
    assert_one_line(&e);
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = download(&h, &format!("ftp://u:pw@127.0.0.1:{dead}/x"), &dir.path().join("out"), 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network, "{e}");
    assert!(e.message.contains("refused"), "{e}");
    assert!(!e.message.contains("pw"), "{e}");
}

#[test]
fn folder_download_through_the_seed_server_is_refused_for_missing_and_works_for_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let a = dir.path().join("a.bin");
    let b = dir.path().join("sub");
    std::fs::create_dir_all(&b).unwrap();
    let b = b.join("a.bin");
    std::fs::write(&a, content(300_000)).unwrap();
    std::fs::write(&b, content(5)).unwrap();
    let sa = seed(&h, &a, &[]).unwrap();
    let sb = seed(&h, &b, &[]).unwrap();
    // Same name: the second is served below its id.
    let ub = sb.identifiers[0].to_string();
    assert!(ub.ends_with(&format!("/{}/a.bin", sb.id)), "{ub}");
    let root = sa.identifiers[0].as_str().rsplit_once('/').unwrap().0.to_string() + "/";
    let out = dir.path().join("out");
    let got = download(&h, &root, &out, 3).unwrap();
    assert_eq!(got.files.len(), 2, "{:?}", got.files);
    let top = out.join("127.0.0.1");
    assert_eq!(std::fs::read(top.join("a.bin")).unwrap(), content(300_000));
    assert_eq!(std::fs::read(top.join(sb.id.as_str()).join("a.bin")).unwrap(), content(5));
    let e = download(&h, &format!("{root}nothing/"), &dir.path().join("o2"), 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

#[test]
fn upload_option_stores_the_file_on_another_server() {
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let data = content(1_000_000);
    let file = dir.path().join("up.bin");
    std::fs::write(&file, &data).unwrap();
    // The plugin's own seed server is read-only: the upload is refused, in one line.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"x").unwrap();
    let s = seed(&h, &other, &[]).unwrap();
    let base = s.identifiers[0].as_str().rsplit_once('/').unwrap().0.to_string();
    let e =
        seed(&h, &file, &[("ftp_upload", &format!("ftp://u:pw@{}/", base.trim_start_matches("ftp://")))]).unwrap_err();
    assert_one_line(&e);
    assert!(e.message.contains("refused the upload"), "{e}");
    assert!(!e.message.contains(":pw"), "{e}");

    // A server that takes it: the seed is the URL of the stored file (user, no password).
    let script = Script { login: Some(("carol".into(), "pw9".into())), ..Default::default() };
    let uploads = script.uploads.clone();
    let (port, _) = scripted(script);
    let info = seed(&h, &file, &[("ftp_upload", &format!("ftp://carol:pw9@127.0.0.1:{port}/in/"))]).unwrap();
    assert_eq!(info.identifiers[0].as_str(), format!("ftp://carol@127.0.0.1:{port}/in/up.bin"));
    let up = uploads.lock().unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].0, "in/up.bin");
    assert_eq!(up[0].1, data);
    assert!(h.list_seeds().iter().any(|s| s.id == info.id));
    h.stop_seed(info.id.clone()).into_result().unwrap();
}

#[test]
fn cancelled_fetches_leave_the_plugin_usable() {
    let data = content(4 * 1024 * 1024);
    let (port, _) = scripted(Script { files: vec![("f.bin".into(), data.clone())], ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let url = format!("ftp://127.0.0.1:{port}/f.bin");
    let src = block_on(h.open_source(url.as_str().into(), no_events())).into_result().unwrap();
    drop(src.fetch(0, 1 << 20));
    let mut buf = Vec::new();
    for i in 0..4u64 {
        let got = block_on(src.fetch(i << 20, 1 << 20)).into_result().unwrap();
        buf.extend_from_slice(&got);
    }
    assert_eq!(buf, data);
}

#[test]
fn a_server_that_limits_sessions_gets_no_more_than_it_allows() {
    let data = content(6 * 1024 * 1024 + 1);
    let script = Script { files: vec![("f.bin".into(), data.clone())], max_sessions: Some(2), ..Default::default() };
    let sessions = script.sessions.clone();
    let (port, _) = scripted(script);
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let got = download(&h, &format!("ftp://127.0.0.1:{port}/f.bin"), &dir.path().join("out"), 6).unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/f.bin")).unwrap(), data);
    assert_eq!(got.bytes, data.len() as u64);
    assert!(sessions.lock().unwrap().1 <= 2);
}
