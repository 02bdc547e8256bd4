//! Exponential backoff with jitter, for retrying requests to a coordinator that is away.

use std::time::Duration;

/// Doubles from `start` up to `max`, each wait jittered by up to a quarter so a crowd of workers
/// does not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    start: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at `start`, capped at `max`.
    pub fn new(start: Duration, max: Duration) -> Self {
        Self {
            next: start,
            start,
            max,
        }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = base.mul_f64(fastrand::f64() * 0.25);
        base + jitter
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        for (w, base) in waits.iter().zip([100, 200, 400, 400]) {
            let base = Duration::from_millis(base);
            assert!(*w >= base && *w <= base.mul_f64(1.25), "{w:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
