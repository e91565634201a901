//! The control socket's protocol (one JSON line each way between `chiral` processes of the same
//! user): never panics; lines are bounded; what decodes re-encodes to one line that decodes the
//! same; every answer a serving process gives is one well-formed line, and a stop only stops
//! seeds the request named.
#![no_main]
use std::cell::RefCell;

use chiral_host::{
    control::wire::{decode_request, decode_response, encode_request, encode_response, handle, LineBuffer},
    control::{LiveSeed, Response, SeedControl},
    session::HostError,
};
use libfuzzer_sys::fuzz_target;

struct Seeds(RefCell<Vec<LiveSeed>>);

impl SeedControl for Seeds {
    fn seeds(&self) -> Vec<LiveSeed> {
        self.0.borrow().clone()
    }
    fn stop(&self, plugin: &str, id: &str) -> Result<(), HostError> {
        self.0.borrow_mut().retain(|s| !(s.plugin == plugin && s.id == id));
        Ok(())
    }
}

fn seed(id: &str, path: &str, identifier: &str) -> LiveSeed {
    LiveSeed {
        plugin: "http".into(),
        id: id.into(),
        path: path.into(),
        identifiers: vec![identifier.into()],
        bytes_served: 1,
        pid: 7,
        started_at: 1_700_000_000,
    }
}

fn one_line(bytes: &[u8]) -> bool {
    bytes.last() == Some(&b'\n') && bytes.iter().filter(|b| **b == b'\n').count() == 1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_request(data) {
        let line = encode_request(&r);
        assert!(one_line(&line));
        assert_eq!(decode_request(&line), Ok(r));
    }
    if let Ok(r) = decode_response(data) {
        let line = encode_response(&r);
        assert!(one_line(&line));
        assert_eq!(decode_response(&line), Ok(r));
    }

    // The bytes as they may arrive on a socket, in pieces.
    let limit = 64;
    let mut lb = LineBuffer::new(limit);
    for chunk in data.chunks(7) {
        match lb.push(chunk) {
            Ok(Some(line)) => {
                assert!(line.len() <= limit && line.ends_with(b"\n"));
                break;
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }

    let ctl = Seeds(RefCell::new(vec![
        seed("a1", "/srv/a.iso", "http://u:pw@host:8080/a.iso"),
        seed("b2", "/srv/b", "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"),
    ]));
    let before = ctl.seeds();
    let answer = handle(data, &ctl);
    let line = encode_response(&answer);
    assert!(one_line(&line));
    assert_eq!(decode_response(&line), Ok(answer.clone()));
    if let Response::Stopped { stopped, remaining, .. } = &answer {
        assert_eq!(stopped.len() + remaining, before.len());
        let target = match decode_request(data) {
            Ok(chiral_host::control::Request::Stop { target }) => target,
            other => panic!("stopped on {other:?}"),
        };
        assert!(stopped.iter().all(|s| s.matches(&target)));
    }
});
