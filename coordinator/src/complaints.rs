//! Warnings about what an agent sent wrong, rate-limited per source: any holder of an agent
//! certificate could otherwise flood the coordinator's log with a warning per bogus message
//! (issue 18, item 10). The first is logged; then at most one per [`EVERY`], counting the rest.

use std::time::Duration;

use std::time::Instant;

/// At most one warning per source this often.
pub const EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Complaints {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl Complaints {
    /// Whether to log a complaint now; when it is, the number of complaints left unlogged since the
    /// last one (to say so in the line).
    pub fn admit(&mut self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_complaint_a_minute_with_the_count_of_the_rest() {
        let t0 = Instant::now();
        let mut c = Complaints::default();
        assert_eq!(c.admit_at(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(c.admit_at(t0 + EVERY / 2), None);
        }
        assert_eq!(c.admit_at(t0 + EVERY), Some(1000));
        assert_eq!(c.admit_at(t0 + EVERY), None);
    }
}
