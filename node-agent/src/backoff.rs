//! Exponential backoff with jitter for re-attaching: the delay doubles from `initial` up to `max`, and
//! each wait is drawn from [delay/2, delay] so that a fleet whose coordinator restarts does not come
//! back in lock step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self::with_rng(initial, max, fastrand::Rng::new())
    }

    pub fn with_rng(initial: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            current: initial,
            rng,
        }
    }

    /// The next wait; the one after will be about twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(self.rng.u64(0..=jitter_ms))
    }

    /// After a connection that worked: start again from `initial`.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_resets() {
        let mut b = Backoff::with_rng(
            Duration::from_millis(100),
            Duration::from_secs(2),
            fastrand::Rng::with_seed(7),
        );
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_agents_apart() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|seed| {
                Backoff::with_rng(
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                    fastrand::Rng::with_seed(seed),
                )
                .next_delay()
            })
            .collect();
        assert!(delays.len() > 10, "only {} distinct delays", delays.len());
    }
}
