//! The control protocol over Unix sockets: `<data dir>/run/<pid>.sock`, one per serving process.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

use super::wire::{self, LineBuffer, Request, Response, SeedControl};

/// How long one side waits for the other to send its line.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no answer within {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
    #[error("{path}: {source}")]
    Wire { path: PathBuf, source: wire::WireError },
    #[error("{path}: closed without answering")]
    NoAnswer { path: PathBuf },
}

/// The folder holding the control sockets.
pub fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

pub fn socket_path(data_dir: &Path, pid: u32) -> PathBuf {
    run_dir(data_dir).join(format!("{pid}.sock"))
}

/// A serving process's socket found in the run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub pid: u32,
    pub path: PathBuf,
}

/// Every `<pid>.sock` in the run folder, by pid.
pub fn endpoints(data_dir: &Path) -> Vec<Endpoint> {
    let Ok(rd) = std::fs::read_dir(run_dir(data_dir)) else { return Vec::new() };
    let mut out: Vec<Endpoint> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let pid = name.to_str()?.strip_suffix(".sock")?.parse().ok()?;
            Some(Endpoint { pid, path: e.path() })
        })
        .collect();
    out.sort_by_key(|e| e.pid);
    out
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold anything.
        Ok(stat) => {
            !matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()), Some('Z' | 'X'))
        }
        Err(_) if Path::new("/proc/self/stat").exists() => false,
        Err(_) => {
            // No procfs: signal 0 only checks that the process exists.
            // SAFETY: kill with signal 0 sends nothing; it has no memory effects.
            let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
    }
}

/// A bound control socket; the file is removed when this is dropped.
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    /// Binds `<data dir>/run/<this pid>.sock`, creating the folder (mode 0700) and removing
    /// sockets left by processes that are gone.
    pub fn bind(data_dir: &Path) -> Result<Self, ControlError> {
        let dir = run_dir(data_dir);
        let io = |source| ControlError::Io { path: dir.clone(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let me = std::process::id();
        for e in endpoints(data_dir) {
            if e.pid == me || !pid_alive(e.pid) {
                let _ = std::fs::remove_file(&e.path);
            }
        }
        let path = socket_path(data_dir, me);
        let listener = UnixListener::bind(&path).map_err(|source| ControlError::Io { path: path.clone(), source })?;
        Ok(Self { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until a stop leaves the process with no seed, then returns.
    pub async fn serve(&self, ctl: Arc<dyn SeedControl + Send + Sync>) {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        loop {
            let conn = tokio::select! {
                c = self.listener.accept() => c,
                _ = done_rx.recv() => return,
            };
            let stream = match conn {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket {}: {e}", self.path.display());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (ctl, done) = (ctl.clone(), done_tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(IO_TIMEOUT, answer(stream, ctl.as_ref())).await {
                    Ok(Ok(Response::Stopped { stopped, remaining: 0, .. })) if !stopped.is_empty() => {
                        let _ = done.send(());
                    }
                    Ok(Err(e)) => tracing::debug!("control connection: {e}"),
                    _ => {}
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one request line, answers it, and returns the answer sent.
async fn answer(mut stream: UnixStream, ctl: &(dyn SeedControl + Send + Sync)) -> std::io::Result<Response> {
    let mut lines = LineBuffer::new(wire::MAX_REQUEST);
    let mut chunk = vec![0u8; 8192];
    let line = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break lines.finish().unwrap_or_default();
        }
        match lines.push(&chunk[..n]) {
            Ok(Some(line)) => break line,
            Ok(None) => {}
            Err(e) => {
                let r = Response::Error { error: e.to_string() };
                stream.write_all(&wire::encode_response(&r)).await?;
                return Ok(r);
            }
        }
    };
    let r = wire::handle(&line, ctl);
    stream.write_all(&wire::encode_response(&r)).await?;
    stream.shutdown().await?;
    Ok(r)
}

/// Sends one request to the process behind `path` and reads its answer.
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let p = path.to_path_buf();
    let io = |source| ControlError::Io { path: p.clone(), source };
    let exchange = async {
        let mut stream = UnixStream::connect(path).await.map_err(io)?;
        stream.write_all(&wire::encode_request(req)).await.map_err(io)?;
        let mut lines = LineBuffer::new(wire::MAX_RESPONSE);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return match lines.finish() {
                    Some(line) => Ok(line),
                    None => Err(ControlError::NoAnswer { path: p.clone() }),
                };
            }
            if let Some(line) =
                lines.push(&chunk[..n]).map_err(|source| ControlError::Wire { path: p.clone(), source })?
            {
                return Ok(line);
            }
        }
    };
    let line = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| ControlError::Timeout { path: path.to_path_buf(), secs: IO_TIMEOUT.as_secs() })??;
    wire::decode_response(&line).map_err(|source| ControlError::Wire { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::control::wire::LiveSeed;

    struct One(Mutex<Vec<LiveSeed>>);

    impl SeedControl for One {
        fn seeds(&self) -> Vec<LiveSeed> {
            self.0.lock().unwrap().clone()
        }
        fn stop(&self, _plugin: &str, id: &str) -> Result<(), crate::session::HostError> {
            self.0.lock().unwrap().retain(|s| s.id != id);
            Ok(())
        }
    }

    #[tokio::test]
    async fn serves_until_the_last_seed_stops_and_removes_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        // A socket left by a process that is gone is cleaned up by the next one to bind.
        std::fs::create_dir_all(run_dir(dir.path())).unwrap();
        let stale = run_dir(dir.path()).join(format!("{}.sock", i32::MAX - 1));
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let sock = ControlSocket::bind(dir.path()).unwrap();
        assert!(!stale.exists());
        let mode = std::fs::metadata(run_dir(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let path = sock.path().to_path_buf();
        assert_eq!(endpoints(dir.path()), vec![Endpoint { pid: std::process::id(), path: path.clone() }]);

        let seed = LiveSeed {
            plugin: "http".into(),
            id: "a".into(),
            path: "/f".into(),
            identifiers: vec!["http://h/a/f".into()],
            bytes_served: 0,
            pid: std::process::id(),
            started_at: 0,
        };
        let ctl = Arc::new(One(Mutex::new(vec![seed.clone()])));
        let server = tokio::spawn(async move {
            sock.serve(ctl).await;
            drop(sock);
        });
        assert_eq!(request(&path, &Request::List).await.unwrap(), Response::Seeds { seeds: vec![seed.clone()] });

        // Garbage and oversized requests get an error line; the server keeps going.
        for bad in [b"hello\n".to_vec(), vec![b'x'; wire::MAX_REQUEST + 10]] {
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(&bad).await.unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).await.unwrap();
            assert!(matches!(wire::decode_response(text.as_bytes()).unwrap(), Response::Error { .. }), "{text}");
        }
        let r = request(&path, &Request::Stop { target: "nope".into() }).await.unwrap();
        assert_eq!(r, Response::Stopped { stopped: vec![], remaining: 1, errors: vec![] });
        let r = request(&path, &Request::Stop { target: "http://h/a/f".into() }).await.unwrap();
        assert_eq!(r, Response::Stopped { stopped: vec![seed], remaining: 0, errors: vec![] });
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(!path.exists());
        assert!(matches!(request(&path, &Request::List).await, Err(ControlError::Io { .. })));
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
