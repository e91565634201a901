//! The control protocol between `chiral` commands and a serving process: one JSON line each
//! way over the process's Unix socket. Bytes in, bytes out: no I/O here.
//!
//! ```text
//! -> {"op":"list"}
//! <- {"answer":"seeds","seeds":[{"plugin":"http","id":"…","path":"/abs/file",…}]}
//! -> {"op":"stop","target":"http://127.0.0.1:8080/…/file"}
//! <- {"answer":"stopped","stopped":[…],"remaining":0,"errors":[]}
//! <- {"answer":"error","error":"…"}            (malformed or oversized request)
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::session::{redact, HostError};

/// Longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest response line accepted by a client.
pub const MAX_RESPONSE: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The process's live seeds.
    List,
    /// Stop the seeds whose id, any identifier or path equals `target`.
    Stop { target: String },
}

/// A seed as a serving process reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSeed {
    pub plugin: String,
    pub id: String,
    /// Canonical path of the served file or folder.
    pub path: String,
    pub identifiers: Vec<String>,
    pub bytes_served: u64,
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
}

impl LiveSeed {
    /// Whether `target` names this seed: its id, one of its identifiers (as printed, or with the
    /// password left out) or its canonical path.
    pub fn matches(&self, target: &str) -> bool {
        !target.is_empty()
            && (self.id == target
                || self.path == target
                || self.identifiers.iter().any(|i| i == target || redact(i) == target))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    Seeds {
        seeds: Vec<LiveSeed>,
    },
    Stopped {
        stopped: Vec<LiveSeed>,
        /// Seeds the process still serves; at 0 it exits.
        remaining: usize,
        #[serde(default)]
        errors: Vec<String>,
    },
    Error {
        error: String,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message longer than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("message is not one line of UTF-8 JSON")]
    NotText,
    #[error("malformed message: {0}")]
    Malformed(String),
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; an empty object keeps the line well-formed anyway.
    let mut out = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

fn decode<'a, T: Deserialize<'a>>(line: &'a [u8], limit: usize) -> Result<T, WireError> {
    if line.len() > limit {
        return Err(WireError::TooLarge { limit });
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| WireError::NotText)?;
    if text.contains('\n') {
        return Err(WireError::NotText);
    }
    serde_json::from_str(text).map_err(|e| WireError::Malformed(e.to_string()))
}

pub fn encode_request(r: &Request) -> Vec<u8> {
    encode(r)
}

pub fn decode_request(line: &[u8]) -> Result<Request, WireError> {
    decode(line, MAX_REQUEST)
}

pub fn encode_response(r: &Response) -> Vec<u8> {
    encode(r)
}

pub fn decode_response(line: &[u8]) -> Result<Response, WireError> {
    decode(line, MAX_RESPONSE)
}

/// Collects bytes until a newline, refusing lines longer than `limit`.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    limit: usize,
}

impl LineBuffer {
    pub fn new(limit: usize) -> Self {
        Self { buf: Vec::new(), limit }
    }

    /// Adds `bytes`; returns the first complete line (newline included) once there is one.
    /// Bytes after it are ignored: one request per connection.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        let end = bytes.iter().position(|b| *b == b'\n');
        let take = end.map_or(bytes.len(), |i| i + 1);
        if self.buf.len() + take > self.limit {
            return Err(WireError::TooLarge { limit: self.limit });
        }
        self.buf.extend_from_slice(&bytes[..take]);
        Ok(end.map(|_| std::mem::take(&mut self.buf)))
    }

    /// What came before the peer closed without a newline, if anything.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

/// What a serving process exposes to the protocol.
pub trait SeedControl {
    /// The seeds this process serves now.
    fn seeds(&self) -> Vec<LiveSeed>;
    /// Stops one seed; the error's text goes into the answer's `errors`.
    fn stop(&self, plugin: &str, id: &str) -> Result<(), HostError>;
    /// Called after a stop, before the answer is sent, with what is left.
    fn after_stop(&self, _stopped: &[LiveSeed], _remaining: &[LiveSeed]) {}
}

/// Answers one request line.
pub fn handle(line: &[u8], ctl: &dyn SeedControl) -> Response {
    match decode_request(line) {
        Err(e) => Response::Error { error: e.to_string() },
        Ok(Request::List) => Response::Seeds { seeds: ctl.seeds() },
        Ok(Request::Stop { target }) => {
            let mut stopped = Vec::new();
            let mut errors = Vec::new();
            for s in ctl.seeds().into_iter().filter(|s| s.matches(&target)) {
                match ctl.stop(&s.plugin, &s.id) {
                    Ok(()) => stopped.push(s),
                    Err(e) => errors.push(format!("{} {}: {e}", s.plugin, s.id)),
                }
            }
            let remaining = ctl.seeds();
            if !stopped.is_empty() {
                ctl.after_stop(&stopped, &remaining);
            }
            Response::Stopped { stopped, remaining: remaining.len(), errors }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn seed(plugin: &str, id: &str, path: &str, ids: &[&str]) -> LiveSeed {
        LiveSeed {
            plugin: plugin.into(),
            id: id.into(),
            path: path.into(),
            identifiers: ids.iter().map(|s| s.to_string()).collect(),
            bytes_served: 7,
            pid: 42,
            started_at: 1_700_000_000,
        }
    }

    struct Fake {
        seeds: Mutex<Vec<LiveSeed>>,
        after: Mutex<Vec<(usize, usize)>>,
    }

    impl Fake {
        fn new(seeds: Vec<LiveSeed>) -> Self {
            Self { seeds: Mutex::new(seeds), after: Mutex::new(Vec::new()) }
        }
    }

    impl SeedControl for Fake {
        fn seeds(&self) -> Vec<LiveSeed> {
            self.seeds.lock().unwrap().clone()
        }
        fn stop(&self, plugin: &str, id: &str) -> Result<(), HostError> {
            if id == "stuck" {
                return Err(HostError::plugin(chiral_sdk::ErrorKind::Other, "refused"));
            }
            self.seeds.lock().unwrap().retain(|s| !(s.plugin == plugin && s.id == id));
            Ok(())
        }
        fn after_stop(&self, stopped: &[LiveSeed], remaining: &[LiveSeed]) {
            self.after.lock().unwrap().push((stopped.len(), remaining.len()));
        }
    }

    #[test]
    fn requests_round_trip_as_one_line() {
        for r in [Request::List, Request::Stop { target: "http://h/a b\n".into() }] {
            let bytes = encode_request(&r);
            assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
            assert!(bytes.ends_with(b"\n"));
            assert_eq!(decode_request(&bytes).unwrap(), r);
        }
        assert_eq!(encode_request(&Request::List), b"{\"op\":\"list\"}\n");
        assert_eq!(
            decode_request(b"{\"op\":\"stop\",\"target\":\"x\"}\r\n").unwrap(),
            Request::Stop { target: "x".into() }
        );
    }

    #[test]
    fn responses_round_trip() {
        let all = [
            Response::Seeds { seeds: vec![seed("http", "a", "/f", &["http://h/a/f"])] },
            Response::Stopped { stopped: vec![], remaining: 2, errors: vec!["e".into()] },
            Response::Error { error: "bad".into() },
        ];
        for r in all {
            assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
        }
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        let cases: [&[u8]; 8] = [
            b"",
            b"\n",
            b"{",
            b"[1,2]",
            b"{\"op\":\"dance\"}",
            b"{\"op\":\"stop\"}",
            b"{\"op\":\"stop\",\"target\":5}",
            b"\xff\xfe{}",
        ];
        for c in cases {
            assert!(decode_request(c).is_err(), "{c:?}");
            let fake = Fake::new(vec![seed("http", "a", "/f", &[])]);
            assert!(matches!(handle(c, &fake), Response::Error { .. }), "{c:?}");
            assert_eq!(fake.seeds().len(), 1);
        }
        assert_eq!(decode_request(b"{\"op\":\"list\"}\n{\"op\":\"list\"}"), Err(WireError::NotText));
        let big = vec![b' '; MAX_REQUEST + 1];
        assert_eq!(decode_request(&big), Err(WireError::TooLarge { limit: MAX_REQUEST }));
    }

    #[test]
    fn line_buffer_bounds_the_request() {
        let mut lb = LineBuffer::new(16);
        assert_eq!(lb.push(b"{\"op\":").unwrap(), None);
        assert_eq!(lb.push(b"\"list\"}\nrest").unwrap(), Some(b"{\"op\":\"list\"}\n".to_vec()));
        let mut lb = LineBuffer::new(16);
        assert_eq!(lb.push(&[b'x'; 10]).unwrap(), None);
        assert_eq!(lb.push(&[b'x'; 10]), Err(WireError::TooLarge { limit: 16 }));
        let mut lb = LineBuffer::new(16);
        lb.push(b"abc").unwrap();
        assert_eq!(lb.finish(), Some(b"abc".to_vec()));
        assert_eq!(LineBuffer::new(4).finish(), None);
    }

    #[test]
    fn list_answers_the_live_seeds() {
        let fake = Fake::new(vec![seed("http", "a", "/f", &["http://h/a/f"]), seed("ftp", "b", "/f", &["ftp://h/f"])]);
        let Response::Seeds { seeds } = handle(&encode_request(&Request::List), &fake) else { panic!() };
        assert_eq!(seeds.len(), 2);
    }

    #[test]
    fn stop_matches_id_identifier_or_path() {
        let make = || {
            Fake::new(vec![
                seed("http", "a1", "/data/f", &["http://h:1/a1/f"]),
                seed("ftp", "b2", "/data/f", &["ftp://u:secret@h:2/f"]),
                seed("http", "c3", "/data/g", &["http://h:1/c3/g"]),
            ])
        };
        let stop =
            |fake: &Fake, target: &str| match handle(&encode_request(&Request::Stop { target: target.into() }), fake) {
                Response::Stopped { stopped, remaining, errors } => {
                    assert!(errors.is_empty());
                    (stopped.into_iter().map(|s| s.id).collect::<Vec<_>>(), remaining)
                }
                other => panic!("{other:?}"),
            };
        let f = make();
        assert_eq!(stop(&f, "a1"), (vec!["a1".to_string()], 2));
        assert_eq!(*f.after.lock().unwrap(), vec![(1, 2)]);
        let f = make();
        assert_eq!(stop(&f, "http://h:1/c3/g"), (vec!["c3".to_string()], 2));
        let f = make();
        assert_eq!(stop(&f, "ftp://u@h:2/f"), (vec!["b2".to_string()], 2), "the redacted URL names it too");
        let f = make();
        assert_eq!(stop(&f, "/data/f"), (vec!["a1".to_string(), "b2".to_string()], 1));
        let f = make();
        assert_eq!(stop(&f, "nothing"), (vec![], 3));
        assert_eq!(stop(&f, ""), (vec![], 3));
        assert!(f.after.lock().unwrap().is_empty(), "no hook when nothing stopped");
        assert_eq!(stop(&f, "/data/g"), (vec!["c3".to_string()], 2));
        assert_eq!(stop(&f, "/data/f"), (vec!["a1".to_string(), "b2".to_string()], 0));
    }

    #[test]
    fn a_failed_stop_is_reported() {
        let fake = Fake::new(vec![seed("http", "stuck", "/f", &[])]);
        let r = handle(&encode_request(&Request::Stop { target: "/f".into() }), &fake);
        let Response::Stopped { stopped, remaining, errors } = r else { panic!() };
        assert!(stopped.is_empty());
        assert_eq!(remaining, 1);
        assert_eq!(errors.len(), 1);
    }
}
