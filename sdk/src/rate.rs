//! The shared token bucket every plugin and the engine use to hold a transfer rate
//! (`--max-download-rate`, `--max-upload-rate`): a reservation of N bytes tells how long to
//! wait before moving them, so that bytes leave or arrive at the configured rate on average,
//! with at most one reservation's worth ahead of it.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// A rate in bytes per second shared by every transfer that holds an `Arc` of it.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    /// When the bytes reserved so far will have been paid for at the rate.
    paid_until: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self { bytes_per_sec: bytes_per_sec.max(1), paid_until: Mutex::new(None) }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Reserves `bytes` now: how long to wait before moving them. The first reservation after
    /// an idle spell goes at once; the next waits until the ones before are paid for.
    pub fn reserve(&self, bytes: u64) -> Duration {
        self.reserve_at(bytes, Instant::now())
    }

    fn reserve_at(&self, bytes: u64, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut paid = self.paid_until.lock().unwrap_or_else(|p| p.into_inner());
        let start = match *paid {
            Some(t) if t > now => t,
            _ => now,
        };
        *paid = Some(start + cost);
        start - now
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

/// A limiter for an optional rate (0 or none: unlimited).
pub fn limiter(bytes_per_sec: Option<u64>) -> Option<std::sync::Arc<RateLimiter>> {
    bytes_per_sec.filter(|&r| r > 0).map(|r| std::sync::Arc::new(RateLimiter::new(r)))
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
