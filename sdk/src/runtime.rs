//! The plugin's own async runtime.
//!
//! Each plugin library carries its own copy of tokio, so the host's runtime cannot drive a
//! plugin's I/O. A plugin owns one [`PluginRuntime`]; the SDK spawns every call on it and hands
//! the host a future that only waits on a channel.

use std::future::Future;

/// A multi-threaded tokio runtime owned by one plugin.
pub struct PluginRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl PluginRuntime {
    /// A runtime with `threads` workers (at least 1) named after the plugin.
    pub fn new(name: &str, threads: usize) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(format!("chiral-{name}"))
            .enable_all()
            .build()?;
        Ok(Self { rt: Some(rt) })
    }

    /// The runtime of plugin `name` sized by the one policy every plugin follows: the option
    /// `threads` (1..=64) when given, else [`default_threads`].
    pub fn for_plugin(name: &str, options: &crate::options::Opts) -> Result<Self, crate::abi::PluginError> {
        let threads = worker_threads(options)?;
        Self::new(name, threads)
            .map_err(|e| crate::abi::PluginError::other(format!("cannot start the {name} plugin's runtime: {e}")))
    }

    /// A handle for spawning from anywhere (including non-runtime threads).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.as_ref().expect("runtime present until drop").handle().clone()
    }

    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(fut)
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        // Never block the caller (it may be a host runtime thread).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Most worker threads the `threads` option may ask for.
pub const MAX_THREADS: u64 = 64;

/// Worker threads when the options do not say: plugins are I/O bound, so a few are plenty
/// (the machine's parallelism, between 2 and 4).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 4)
}

/// Worker threads for a plugin: the `threads` option (1..=64, anything else is an error),
/// else [`default_threads`]. For plugins that size a library's runtime too (librqbit).
pub fn worker_threads(options: &crate::options::Opts) -> Result<usize, crate::options::OptionError> {
    Ok(options.get_u64_in("threads", 1..=MAX_THREADS)?.map(|n| n as usize).unwrap_or_else(default_threads))
}

/// The tokio a plugin's futures run on (each plugin library has its own copy): plugins that
/// depend on `chiral-sdk` alone use it from here.
pub use tokio;
pub use tokio::runtime::Handle;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Opts;

    #[test]
    fn sizing() {
        let d = default_threads();
        assert!((2..=4).contains(&d));
        assert_eq!(worker_threads(&Opts::default()), Ok(d));
        assert_eq!(worker_threads(&Opts::from_pairs([("threads", "3")])), Ok(3));
        for bad in ["0", "65", "many", "-1"] {
            let e = worker_threads(&Opts::from_pairs([("threads", bad)])).unwrap_err();
            assert_eq!(e.to_string(), format!("option threads={bad}: expected a number (1..=64)"));
        }
        let rt = PluginRuntime::for_plugin("t", &Opts::from_pairs([("threads", "1")])).unwrap();
        assert_eq!(rt.handle().block_on(async { 7 }), 7);
        let e = PluginRuntime::for_plugin("t", &Opts::from_pairs([("threads", "100")])).err().unwrap();
        assert_eq!(e.kind, crate::abi::ErrorKind::Invalid);
    }
}
