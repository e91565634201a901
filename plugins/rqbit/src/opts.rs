//! Plugin options: the config file's `[plugins.rqbit]` table, then the request's own (keys may
//! repeat: `tracker`, `peer`, `dht_bootstrap`). Same keys as the native `bittorrent` plugin.

use chiral_sdk::PluginError;

#[derive(Clone, Debug, Default)]
pub struct Opts(pub Vec<(String, String)>);

impl Opts {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    pub fn from_abi(options: &chiral_sdk::Options) -> Self {
        Self(options.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect())
    }

    /// Every non-empty value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
    }

    /// The last value of `key` (later settings win).
    pub fn last(&self, key: &str) -> Option<String> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.last(key).as_deref().map(str::trim), Some("true" | "1" | "yes"))
    }

    pub fn num(&self, key: &str) -> Result<Option<u64>, PluginError> {
        self.last(key)
            .map(|v| v.trim().parse::<u64>().map_err(|_| PluginError::invalid(format!("{key}={v:?} is not a number"))))
            .transpose()
    }

    /// These options followed by a request's.
    pub fn merged(&self, other: &chiral_sdk::Options) -> Opts {
        let mut v = self.0.clone();
        v.extend(Opts::from_abi(other).0);
        Opts(v)
    }
}
