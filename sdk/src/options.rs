//! Plugin options, read one way by every plugin: the config file's `[plugins.<name>]` table
//! ([`HostConfig::options`](crate::abi::HostConfig)) followed by a request's own options. Keys
//! may repeat (`tracker`, `peer`): the typed getters take the **last** value (later settings
//! win), [`Opts::get_all`] takes every one. Keys match without regard to ASCII case; an empty
//! value counts as absent (so a request can reset a configured value to the default).
//!
//! A value that does not parse is an error, never a truncation or a silent default:
//! `port=70000` gives [`OptionError`] `option port=70000: expected a port (0..=65535)`, which
//! turns into a [`PluginError`] of kind [`Invalid`](crate::abi::ErrorKind::Invalid).

use std::{net::SocketAddr, ops::RangeInclusive, str::FromStr, time::Duration};

use crate::abi::{Options, PluginError};

/// Most characters of an option value quoted back in an error.
const MAX_SHOWN: usize = 80;

/// An option whose value is not what its key needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("option {key}={value}: expected {expected}")]
pub struct OptionError {
    pub key: String,
    /// The value as given, made safe to print and cut to a line.
    pub value: String,
    pub expected: String,
}

impl OptionError {
    pub fn new(key: &str, value: &str, expected: impl Into<String>) -> Self {
        Self {
            key: crate::text::for_terminal(key, MAX_SHOWN),
            value: crate::text::for_terminal(value, MAX_SHOWN),
            expected: expected.into(),
        }
    }
}

impl From<OptionError> for PluginError {
    fn from(e: OptionError) -> Self {
        PluginError::invalid(e.to_string())
    }
}

/// Key/value options in the order they were given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opts(pub Vec<(String, String)>);

impl Opts {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string())).collect())
    }

    /// The ABI's options (`HostConfig::options`, `SeedRequest::options`, ...).
    pub fn from_abi(options: &Options) -> Self {
        Self(options.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect())
    }

    /// These options followed by `later` (which win).
    pub fn merged(&self, later: &Options) -> Self {
        let mut v = self.0.clone();
        v.extend(Self::from_abi(later).0);
        Self(v)
    }

    /// These options followed by `later` (which win).
    pub fn merged_with(&self, later: &Opts) -> Self {
        let mut v = self.0.clone();
        v.extend(later.0.iter().cloned());
        Self(v)
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `key` is given at all (even with an empty value).
    pub fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k.eq_ignore_ascii_case(key))
    }

    /// The last value of `key`, trimmed; `None` when absent or empty.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }

    /// The last value of `key` exactly as given (secrets keep their spaces); `None` when absent
    /// or empty.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every non-empty value of `key`, trimmed, in order.
    pub fn get_all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The last value of `key` through `parse`; `expected` names what it needs in the error.
    pub fn get_with<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, OptionError> {
        match self.get_str(key) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| OptionError::new(key, v, expected)),
        }
    }

    /// The last value of `key` through [`FromStr`].
    pub fn get<T: FromStr>(&self, key: &str) -> Result<Option<T>, OptionError> {
        let expected = format!("a value of type {}", short_type_name::<T>());
        self.get_with(key, &expected, |v| v.parse().ok())
    }

    /// A port number: `0..=65535`.
    pub fn get_port(&self, key: &str) -> Result<Option<u16>, OptionError> {
        self.get_with(key, "a port (0..=65535)", |v| v.parse().ok())
    }

    /// An unsigned 16-bit number.
    pub fn get_u16(&self, key: &str) -> Result<Option<u16>, OptionError> {
        self.get_with(key, "a number (0..=65535)", |v| v.parse().ok())
    }

    /// An unsigned number.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.get_with(key, "a number", |v| v.parse().ok())
    }

    /// An unsigned number inside `range` (outside it is an error, not a clamp).
    pub fn get_u64_in(&self, key: &str, range: RangeInclusive<u64>) -> Result<Option<u64>, OptionError> {
        let expected = format!("a number ({}..={})", range.start(), range.end());
        self.get_with(key, &expected, |v| v.parse().ok().filter(|n| range.contains(n)))
    }

    /// `true`/`yes`/`on`/`1` or `false`/`no`/`off`/`0` (any case).
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, OptionError> {
        self.get_with(key, "true or false", parse_bool)
    }

    /// A flag that is off unless given as true.
    pub fn flag(&self, key: &str) -> Result<bool, OptionError> {
        Ok(self.get_bool(key)?.unwrap_or(false))
    }

    /// A duration: `500ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
    pub fn get_duration(&self, key: &str) -> Result<Option<Duration>, OptionError> {
        self.get_with(key, "a duration (e.g. 30s, 500ms, 5m)", parse_duration)
    }

    /// A socket address: `ip:port` (IPv6 in brackets).
    pub fn get_socket_addr(&self, key: &str) -> Result<Option<SocketAddr>, OptionError> {
        self.get_with(key, "an address ip:port", |v| v.parse().ok())
    }

    /// A size in bytes: `262144`, `256k`, `256KiB`, `4M`, `4MiB`, `1G` (binary multiples).
    pub fn get_bytes(&self, key: &str) -> Result<Option<u64>, OptionError> {
        self.get_with(key, "a size in bytes (e.g. 262144, 256KiB, 4MiB)", parse_size)
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// `true`/`yes`/`on`/`1` or `false`/`no`/`off`/`0`, any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A size in bytes with an optional binary suffix (`k`, `KiB`, `KB`, `m`, `MiB`, `g`, `GiB`, `t`,
/// `TiB`, any case); `None` on anything else or on overflow.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// `500ms`, `30s`, `5m`, `2h`, or a bare number of seconds; `None` on anything else.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::ErrorKind;

    fn o(pairs: &[(&str, &str)]) -> Opts {
        Opts::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn last_wins_and_repeats_are_kept() {
        let opts = o(&[("tracker", "a"), ("port", "1"), ("Tracker", " b "), ("tracker", ""), ("port", "2")]);
        assert_eq!(opts.get_all("tracker"), ["a", "b"]);
        assert_eq!(opts.get_port("port"), Ok(Some(2)));
        assert_eq!(opts.get_str("TRACKER"), None, "an empty last value resets");
        assert_eq!(opts.get_str("missing"), None);
        assert_eq!(o(&[("password", " a b ")]).get_raw("PASSWORD"), Some(" a b "));
        assert_eq!(o(&[("password", "")]).get_raw("password"), None);
        let req: Options = vec![abi_stable::std_types::Tuple2("port".into(), "3".into())].into();
        assert_eq!(opts.merged(&req).get_port("port"), Ok(Some(3)));
        assert_eq!(opts.merged_with(&o(&[("port", "4")])).get_u16("port"), Ok(Some(4)));
    }

    #[test]
    fn one_error_style_and_no_truncation() {
        let e = o(&[("port", "70000")]).get_port("port").unwrap_err();
        assert_eq!(e.to_string(), "option port=70000: expected a port (0..=65535)");
        let pe: PluginError = e.into();
        assert_eq!(pe.kind, ErrorKind::Invalid);
        assert_eq!(pe.message.as_str(), "option port=70000: expected a port (0..=65535)");
        assert!(o(&[("n", "-1")]).get_u64("n").is_err());
        assert!(o(&[("n", "12x")]).get::<u32>("n").unwrap_err().to_string().contains("u32"));
        assert_eq!(o(&[("n", "9")]).get_u64_in("n", 1..=8).unwrap_err().expected, "a number (1..=8)");
        assert_eq!(o(&[("n", "8")]).get_u64_in("n", 1..=8), Ok(Some(8)));
        // Control characters in a value are shown, not obeyed, and long values are cut.
        let e = o(&[("name", "\x1b[2J")]).get_u64("name").unwrap_err();
        assert!(!e.to_string().contains('\x1b'));
        let e = o(&[("n", &"9".repeat(5000))]).get_u64("n").unwrap_err();
        assert!(e.to_string().len() < 300);
    }

    #[test]
    fn typed_values() {
        let opts = o(&[
            ("a", "YES"),
            ("b", "off"),
            ("c", "maybe"),
            ("d", "500ms"),
            ("e", "90"),
            ("f", "2m"),
            ("g", "[::1]:80"),
            ("h", "4MiB"),
            ("i", "256k"),
            ("j", "12"),
            ("k", "1e9"),
        ]);
        assert_eq!(opts.get_bool("a"), Ok(Some(true)));
        assert_eq!(opts.get_bool("b"), Ok(Some(false)));
        assert!(opts.get_bool("c").is_err());
        assert!(opts.flag("c").is_err());
        assert_eq!(opts.flag("zz"), Ok(false));
        assert_eq!(opts.get_duration("d"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(opts.get_duration("e"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(opts.get_duration("f"), Ok(Some(Duration::from_secs(120))));
        assert!(opts.get_duration("h").is_err());
        assert_eq!(opts.get_socket_addr("g"), Ok(Some("[::1]:80".parse().unwrap())));
        assert!(opts.get_socket_addr("j").is_err());
        assert_eq!(opts.get_bytes("h"), Ok(Some(4 << 20)));
        assert_eq!(opts.get_bytes("i"), Ok(Some(256 << 10)));
        assert_eq!(opts.get_bytes("j"), Ok(Some(12)));
        assert!(opts.get_bytes("k").is_err());
        assert_eq!(parse_size("99999999999999G"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("é"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_duration("1é"), None);
    }
}
