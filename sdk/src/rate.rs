//! The shared token bucket every plugin and the engine use to hold a transfer rate
//! (`--max-download-rate`, `--max-upload-rate`): a reservation of N bytes tells how long to
//! wait before moving them, so that bytes leave or arrive at the configured rate on average,
//! with at most one reservation's worth ahead of it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// A rate in bytes per second shared by every transfer that holds an `Arc` of it.
///
/// A limiter may sit inside another one (a download's own limit inside the host's): a
/// reservation is then paid on both and waits for the slower. Its rate can change while
/// transfers hold it (a user changing a running download's limit); 0 means no limit of its
/// own, only its parent's.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: AtomicU64,
    /// When the bytes reserved so far will have been paid for at the rate.
    paid_until: Mutex<Option<Instant>>,
    parent: Option<Arc<RateLimiter>>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self { bytes_per_sec: AtomicU64::new(bytes_per_sec.max(1)), paid_until: Mutex::new(None), parent: None }
    }

    /// A limiter of `bytes_per_sec` (0: none of its own) that also holds `parent`'s rate.
    pub fn within(bytes_per_sec: u64, parent: Option<Arc<RateLimiter>>) -> Self {
        Self { bytes_per_sec: AtomicU64::new(bytes_per_sec), paid_until: Mutex::new(None), parent }
    }

    /// Its own rate (0: none).
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec.load(Ordering::Relaxed)
    }

    /// Changes its own rate (0: none) for the reservations to come.
    pub fn set_bytes_per_sec(&self, bytes_per_sec: u64) {
        self.bytes_per_sec.store(bytes_per_sec, Ordering::Relaxed);
        if bytes_per_sec == 0 {
            *self.paid_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Reserves `bytes` now: how long to wait before moving them. The first reservation after
    /// an idle spell goes at once; the next waits until the ones before are paid for.
    pub fn reserve(&self, bytes: u64) -> Duration {
        self.reserve_at(bytes, Instant::now())
    }

    fn reserve_at(&self, bytes: u64, now: Instant) -> Duration {
        let outer = self.parent.as_ref().map_or(Duration::ZERO, |p| p.reserve_at(bytes, now));
        let rate = self.bytes_per_sec();
        if rate == 0 {
            return outer;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let mut paid = self.paid_until.lock().unwrap_or_else(|p| p.into_inner());
        let start = match *paid {
            Some(t) if t > now => t,
            _ => now,
        };
        *paid = Some(start + cost);
        (start - now).max(outer)
    }

    /// Waits until `bytes` may move (on a tokio timer when there is a runtime, else a thread).
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            sleep(wait).await;
        }
    }
}

/// Sleeps `d` on the current tokio runtime's timer, or on a thread outside one.
pub async fn sleep(d: Duration) {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::time::sleep(d).await;
    } else {
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

/// The limiter of one seed: its own `upload_rate` (the seed option, bytes per second) nested
/// inside the plugin's `max_upload_rate` (both paid, the slower holds), or the plugin's alone
/// when the seed has none.
pub fn seed_limiter(own: Option<u64>, plugin: &Option<Arc<RateLimiter>>) -> Option<Arc<RateLimiter>> {
    match own.filter(|&r| r > 0) {
        Some(r) => Some(Arc::new(RateLimiter::within(r, plugin.clone()))),
        None => plugin.clone(),
    }
}

/// A limiter for an optional rate (0 or none: unlimited).
pub fn limiter(bytes_per_sec: Option<u64>) -> Option<Arc<RateLimiter>> {
    bytes_per_sec.filter(|&r| r > 0).map(|r| Arc::new(RateLimiter::new(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_reservations_at_the_rate() {
        let l = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        assert_eq!(l.reserve_at(500_000, t0), Duration::ZERO);
        assert_eq!(l.reserve_at(500_000, t0), Duration::from_millis(500));
        assert_eq!(l.reserve_at(1_000_000, t0), Duration::from_millis(1000));
        // Later, once paid for: nothing to wait.
        assert_eq!(l.reserve_at(1, t0 + Duration::from_secs(3)), Duration::ZERO);
        assert!(limiter(Some(0)).is_none() && limiter(None).is_none());
        assert_eq!(limiter(Some(7)).unwrap().bytes_per_sec(), 7);
    }

    #[test]
    fn a_limiter_inside_another_pays_both_and_can_change() {
        let host = Arc::new(RateLimiter::new(1_000_000));
        let own = RateLimiter::within(500_000, Some(host.clone()));
        let t0 = Instant::now();
        assert_eq!(own.reserve_at(500_000, t0), Duration::ZERO);
        // Its own rate is the slower: a second.
        assert_eq!(own.reserve_at(500_000, t0), Duration::from_secs(1));
        // The host's bucket was paid too: another transfer of the host waits for it.
        assert_eq!(host.reserve_at(1_000_000, t0), Duration::from_secs(1));
        // No limit of its own any more: only the host's holds (paid until 2 s).
        own.set_bytes_per_sec(0);
        assert_eq!(own.bytes_per_sec(), 0);
        assert_eq!(own.reserve_at(1, t0), Duration::from_secs(2));
        let free = RateLimiter::within(0, None);
        assert_eq!(free.reserve_at(u64::MAX / 2, t0), Duration::ZERO);
        // A new limit counts from now.
        free.set_bytes_per_sec(1_000);
        assert_eq!(free.reserve_at(1_000, t0), Duration::ZERO);
        assert_eq!(free.reserve_at(500, t0), Duration::from_secs(1));
    }

    #[test]
    fn holds_the_rate_over_time() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let l = RateLimiter::new(4_000_000);
        let t0 = Instant::now();
        rt.block_on(async {
            for _ in 0..5 {
                l.acquire(200_000).await;
            }
        });
        // 5 x 200 kB at 4 MB/s: the last starts 200 ms in.
        let e = t0.elapsed();
        assert!(e >= Duration::from_millis(195) && e < Duration::from_millis(600), "{e:?}");
    }
}
