//! Serving seeds until told to stop, as `seed` and `get --seed` do.

use std::{io::Write as _, path::Path, sync::Arc};

use chiral_host::{control::ControlSocket, lifecycle::ServedSeeds, session::SeedLine, Host};
use serde_json::json;

use super::{shown, shutdown_signal};

/// Seeds started for one path, as asked.
pub(super) struct Served {
    pub path: String,
    pub via: Vec<String>,
    pub options: Vec<(String, String)>,
    pub lines: Vec<SeedLine>,
}

/// Remembers the seeds in the seed list, prints their identifiers and serves until
/// SIGINT/SIGTERM, or until `chiral stop` stops the last of them through the control socket.
pub(super) async fn serve(host: Arc<Host>, data_dir: &Path, served: Vec<Served>, json: bool) {
    let control = Arc::new(ServedSeeds::new(host, data_dir));
    // Bound before anything is printed: once a script sees an identifier, `chiral stop` works.
    let socket = match ControlSocket::bind(data_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("control socket: {e}; `chiral seeds` and `chiral stop` will not see this process");
            None
        }
    };
    for s in &served {
        control.record(&s.path, &s.via, &s.options, &s.lines);
    }
    let seeds: Vec<&SeedLine> = served.iter().flat_map(|s| &s.lines).collect();
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", json!({ "ok": true, "seeds": seeds }));
    } else {
        for s in &seeds {
            for id in &s.identifiers {
                let _ = writeln!(out, "{}", shown(id));
            }
        }
    }
    let _ = out.flush();
    drop(out);
    for s in &seeds {
        eprintln!("seeding {} through {} (Ctrl-C or `chiral stop` to stop)", shown(&s.path), s.plugin);
    }
    let stopped_remotely = async {
        match &socket {
            Some(sock) => sock.serve(control.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = stopped_remotely => eprintln!("every seed was stopped; exiting"),
    }
    // The socket goes first, so that nobody waits on a process that no longer answers.
    drop(socket);
    control.finish();
}
