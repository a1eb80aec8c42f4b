//! The attempts this agent process accepted: an attempt id is run at most once, and a redelivered
//! assignment is answered with what is known of it. Kept in memory for now; the durable journal in
//! `state_dir` (surviving agent restarts, re-sending unacknowledged events) replaces it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use fleet_proto::pb;

#[derive(Clone, Default)]
pub struct Attempts {
    inner: Arc<Mutex<HashMap<String, pb::AttemptReport>>>,
}

impl Attempts {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, pb::AttemptReport>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records a new attempt as running; `Err` with what is known when the id was seen before.
    pub fn accept(&self, attempt_id: &str, epoch: u64) -> Result<(), Box<pb::AttemptReport>> {
        self.with(|map| {
            if let Some(known) = map.get(attempt_id) {
                return Err(Box::new(known.clone()));
            }
            map.insert(
                attempt_id.to_string(),
                pb::AttemptReport {
                    attempt_id: attempt_id.to_string(),
                    state: pb::AttemptState::Running as i32,
                    epoch,
                    ..Default::default()
                },
            );
            Ok(())
        })
    }

    pub fn finish(&self, attempt_id: &str, result: pb::StepFinished, last_seq: u64) {
        self.with(|map| {
            if let Some(report) = map.get_mut(attempt_id) {
                report.state = pb::AttemptState::Finished as i32;
                report.last_seq = last_seq;
                report.result = Some(result);
            }
        });
    }

    /// What is known of an attempt (`UNKNOWN` when it was never received).
    pub fn report(&self, attempt_id: &str) -> pb::AttemptReport {
        self.with(|map| {
            map.get(attempt_id)
                .cloned()
                .unwrap_or_else(|| pb::AttemptReport {
                    attempt_id: attempt_id.to_string(),
                    state: pb::AttemptState::Unknown as i32,
                    ..Default::default()
                })
        })
    }

    pub fn in_flight(&self) -> u32 {
        self.with(|map| {
            let running = map
                .values()
                .filter(|r| r.state() == pb::AttemptState::Running)
                .count();
            u32::try_from(running).unwrap_or(u32::MAX)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_accepted_once() {
        let attempts = Attempts::default();
        attempts.accept("a", 3).unwrap();
        assert_eq!(attempts.in_flight(), 1);
        let again = attempts.accept("a", 3).unwrap_err();
        assert_eq!(again.state(), pb::AttemptState::Running);
        attempts.finish("a", pb::StepFinished::default(), 4);
        let done = attempts.accept("a", 3).unwrap_err();
        assert_eq!(
            (done.state(), done.last_seq),
            (pb::AttemptState::Finished, 4)
        );
        assert_eq!(attempts.in_flight(), 0);
        assert_eq!(attempts.report("b").state(), pb::AttemptState::Unknown);
    }
}
