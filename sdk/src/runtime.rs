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

/// The tokio a plugin's futures run on (each plugin library has its own copy): plugins that
/// depend on `chiral-sdk` alone use it from here.
pub use tokio;
pub use tokio::runtime::Handle;
