//! Threads that verify and write pieces (and hash whole files), so hashing and page-cache
//! copies run beside the network instead of on the task that drives the engine.

use std::sync::Arc;

/// A few threads that verify and write pieces, so hashing and page-cache copies of several
/// pieces run in parallel with each other and with the network instead of on the one task
/// that drives the engine.
pub(super) struct Workers {
    tx: Option<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    pub(super) fn new(n: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let threads = (0..n)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("chiral-piece-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    })
                    .expect("spawn piece worker")
            })
            .collect();
        Self { tx: Some(tx), threads }
    }

    /// Runs `f` on a worker; the future resolves with its result.
    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Option<T>> {
        let (tx, rx) = futures::channel::oneshot::channel();
        if let Some(q) = &self.tx {
            let _ = q.send(Box::new(move || {
                let _ = tx.send(f());
            }));
        }
        async move { rx.await.ok() }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
