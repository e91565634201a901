//! A small, bounded bencode decoder and a canonical encoder (sans-IO): the one bencode reader
//! of the project (the BitTorrent plugin's torrents, tracker replies and extension messages;
//! the host's check of an info dictionary found on the side, [`crate::ident::TorrentInfo`]).
//!
//! Own code rather than `bendy`, decided by measurement (`docs/bittorrent.md`, "Bencode"):
//! bendy 0.6 refuses dictionaries whose keys are not sorted (`Keys were not sorted`), which
//! real trackers and torrents send and which must be hashed as they are, and its only bound is
//! nesting depth. Here every limit (input size, nesting depth, item count, string length,
//! integer width) is checked *before* anything is allocated, and the decoder reports the exact
//! byte span of each top-level dictionary value, which the info hash needs (SHA-1 of the raw
//! `info` bytes as they appear in the file, whatever their key order). Speed is the same as
//! bendy's pull parser walking the same input.

use std::collections::BTreeMap;
use std::ops::Range;

/// A decoded bencode value. Dictionary keys are raw byte strings, kept sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Bounds applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_input: usize,
    pub max_depth: usize,
    /// Total number of values (all levels).
    pub max_items: usize,
}

impl Limits {
    /// For .torrent files (64 MiB, depth 32, 4M values).
    pub const TORRENT: Limits = Limits { max_input: 64 << 20, max_depth: 32, max_items: 4 << 20 };
    /// For small wire messages (tracker replies, extension messages).
    pub const MESSAGE: Limits = Limits { max_input: 4 << 20, max_depth: 16, max_items: 200_000 };
}

/// Why an input is not (bounded) bencode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad bencode: {0}")]
pub struct DecodeError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(m.into()))
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    items: usize,
    limits: Limits,
    /// Spans of the values of the outermost dictionary (recorded at depth 1).
    spans: Vec<(Vec<u8>, Range<usize>)>,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.data.get(self.pos).copied().ok_or_else(|| DecodeError("unexpected end of input".into()))
    }

    fn count(&mut self) -> Result<(), DecodeError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return err(format!("more than {} values", self.limits.max_items));
        }
        Ok(())
    }

    fn int_until(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let stop = self.data[start..]
            .iter()
            .take(21)
            .position(|&b| b == end)
            .ok_or_else(|| DecodeError("unterminated or oversized integer".into()))?;
        let text = &self.data[start..start + stop];
        self.pos = start + stop + 1;
        let s = std::str::from_utf8(text).map_err(|_| DecodeError("integer is not ASCII".into()))?;
        let valid = !matches!(s.as_bytes(), [] | [b'-'] | [b'-', b'0', ..] | [b'0', _, ..]);
        if !valid {
            return err(format!("integer {s:?} is not canonical"));
        }
        s.parse::<i64>().map_err(|_| DecodeError(format!("integer {s:?} out of range")))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.int_until(b':')?;
        if n < 0 {
            return err("negative string length");
        }
        let n = n as usize;
        if n > self.data.len() - self.pos {
            return err(format!("string of {n} bytes runs past the end"));
        }
        let v = self.data[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(v)
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > self.limits.max_depth {
            return err(format!("nested deeper than {}", self.limits.max_depth));
        }
        self.count()?;
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                Ok(Value::Int(self.int_until(b'e')?))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                let mut last: Option<Vec<u8>> = None;
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return err("dictionary key is not a string");
                    }
                    let key = self.bytes()?;
                    // Sorted, unique keys are the rule; many real files break the order, so
                    // only duplicates are refused (they make the meaning ambiguous).
                    if map.contains_key(&key) {
                        return err(format!("duplicate key {:?}", String::from_utf8_lossy(&key)));
                    }
                    let start = self.pos;
                    let v = self.value(depth + 1)?;
                    if depth == 0 {
                        self.spans.push((key.clone(), start..self.pos));
                    }
                    last = Some(key.clone());
                    map.insert(key, v);
                }
                let _ = last;
                self.pos += 1;
                Ok(Value::Dict(map))
            }
            c => err(format!("unexpected byte 0x{c:02x} at {}", self.pos)),
        }
    }
}

/// Decodes one value at the start of `data`; returns it and the number of bytes it used
/// (trailing bytes are the caller's business: ut_metadata appends raw data after a dict).
pub fn decode_prefix(data: &[u8], limits: Limits) -> Result<(Value, usize), DecodeError> {
    if data.len() > limits.max_input {
        return err(format!("input of {} bytes is over the {} limit", data.len(), limits.max_input));
    }
    let mut d = Decoder { data, pos: 0, items: 0, limits, spans: Vec::new() };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

/// Decodes exactly one value filling `data`.
pub fn decode(data: &[u8], limits: Limits) -> Result<Value, DecodeError> {
    let (v, used) = decode_prefix(data, limits)?;
    if used != data.len() {
        return err(format!("{} trailing bytes", data.len() - used));
    }
    Ok(v)
}

/// The outer dictionary's keys with the byte range of each value.
pub type Spans = Vec<(Vec<u8>, Range<usize>)>;

/// Decodes a whole dictionary and the raw byte span of each of its values.
pub fn decode_with_spans(data: &[u8], limits: Limits) -> Result<(Value, Spans), DecodeError> {
    if data.len() > limits.max_input {
        return err(format!("input of {} bytes is over the {} limit", data.len(), limits.max_input));
    }
    let mut d = Decoder { data, pos: 0, items: 0, limits, spans: Vec::new() };
    let v = d.value(0)?;
    if d.pos != data.len() {
        return err(format!("{} trailing bytes", data.len() - d.pos));
    }
    Ok((v, d.spans))
}

/// Canonical encoding (dictionary keys sorted, as BTreeMap keeps them).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => {
            out.extend_from_slice(b.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(b);
        }
        Value::List(l) => {
            out.push(b'l');
            l.iter().for_each(|x| encode_into(x, out));
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, x) in d {
                encode_into(&Value::Bytes(k.clone()), out);
                encode_into(x, out);
            }
            out.push(b'e');
        }
    }
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }
}

/// Builds a dictionary from `(key, value)` pairs.
pub fn dict<I: IntoIterator<Item = (&'static str, Value)>>(items: I) -> Value {
    Value::Dict(items.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &[u8]) -> Result<Value, DecodeError> {
        decode(s, Limits::MESSAGE)
    }

    #[test]
    fn round_trips() {
        let cases: &[&[u8]] =
            &[b"i0e", b"i-42e", b"4:spam", b"0:", b"le", b"de", b"l4:spami3ee", b"d3:bar4:spam3:fooi42ee"];
        for c in cases {
            let v = d(c).unwrap();
            assert_eq!(encode(&v), c.to_vec(), "{}", String::from_utf8_lossy(c));
        }
        assert_eq!(d(b"d1:ai1e1:bl1:xee").unwrap().get("b").unwrap().as_list().unwrap()[0].as_str(), Some("x"));
    }

    #[test]
    fn malformed_is_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"i",
            b"ie",
            b"i-e",
            b"i01e",
            b"i-0e",
            b"i1x",
            b"5:abc",
            b"-1:a",
            b"l",
            b"d",
            b"d1:a",
            b"di1ei2ee",
            b"x",
            b"i99999999999999999999e",
            b"d1:ai1e1:ai2ee",
            b"4:spamx",
            b"99999999999999999999:a",
        ];
        for b in bad {
            assert!(d(b).is_err(), "{:?} accepted", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn depth_items_and_size_are_bounded() {
        let deep = [vec![b'l'; 100], vec![b'e'; 100]].concat();
        assert!(d(&deep).unwrap_err().0.contains("deeper"));
        let ok = [vec![b'l'; 10], vec![b'e'; 10]].concat();
        assert!(d(&ok).is_ok());
        let many: Vec<u8> = [b"l".to_vec(), b"i1e".repeat(300_000), b"e".to_vec()].concat();
        assert!(d(&many).unwrap_err().0.contains("values"));
        let lim = Limits { max_input: 10, max_depth: 4, max_items: 10 };
        assert!(decode(b"20:aaaaaaaaaaaaaaaaaaaa", lim).is_err());
        // A huge declared length is refused before any allocation.
        assert!(d(b"4000000000:x").is_err());
    }

    #[test]
    fn spans_and_prefix() {
        let data = b"d4:infod1:ai1ee3:zzzi2ee";
        let (_, spans) = decode_with_spans(data, Limits::TORRENT).unwrap();
        let info = spans.iter().find(|(k, _)| k == b"info").unwrap().1.clone();
        assert_eq!(&data[info], b"d1:ai1ee");
        let (v, used) = decode_prefix(b"d1:xi3eeRAW", Limits::MESSAGE).unwrap();
        assert_eq!(used, 8);
        assert_eq!(v.get("x").unwrap().as_int(), Some(3));
    }
}
