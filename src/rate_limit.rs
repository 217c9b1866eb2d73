//! `--bwlimit`: paces the file data a source sends, whatever carries it (a
//! copy between local trees, ssh, the QUIC data channel). One token bucket
//! per sending endpoint, shared by all the threads that read files for it;
//! a sender takes its bytes' worth before handing them on, and sleeps when
//! the bucket is empty. It never buffers: it only delays.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much unused allowance may pile up: this long at the full rate (so a
/// pause does not buy a burst far above the cap afterwards).
const BURST: Duration = Duration::from_millis(100);

pub struct RateLimit {
    bytes_per_second: u64,
    /// When everything taken so far is paid for at the full rate.
    paid_until: Mutex<Instant>,
}

impl RateLimit {
    /// A cap of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> RateLimit {
        RateLimit {
            bytes_per_second: bytes_per_second.max(1),
            paid_until: Mutex::new(Instant::now()),
        }
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Waits until `bytes` more may go without exceeding the cap.
    pub fn take(&self, bytes: usize) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Books `bytes` at `now`; how long the caller must wait before sending.
    fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let mut paid = self.paid_until.lock().unwrap();
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        if *paid < earliest {
            *paid = earliest;
        }
        *paid += cost;
        paid.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_kept_after_a_short_burst() {
        let limit = RateLimit::new(1000);
        let now = Instant::now() + Duration::from_secs(10);
        // 100 bytes of unused allowance go at once.
        assert_eq!(limit.reserve(100, now), Duration::ZERO);
        // Then each byte costs a millisecond.
        let wait = limit.reserve(500, now);
        assert_eq!(wait, Duration::from_millis(500));
        let wait = limit.reserve(500, now);
        assert_eq!(wait, Duration::from_millis(1000));
    }

    #[test]
    fn idle_time_buys_no_more_than_the_burst() {
        let limit = RateLimit::new(1000);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(limit.reserve(100, later), Duration::ZERO);
        assert_eq!(limit.reserve(100, later), Duration::from_millis(100));
    }

    #[test]
    fn threads_share_one_bucket() {
        let limit = std::sync::Arc::new(RateLimit::new(200_000));
        let started = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = std::sync::Arc::clone(&limit);
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        limit.take(2_500);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // 100,000 bytes at 200,000/s, less the 20,000-byte burst: 0.4 s.
        assert!(started.elapsed() >= Duration::from_millis(380));
    }
}
