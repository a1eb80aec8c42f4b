//! Cancelling a running step (the coordinator's `CancelAttempt`, sent when a run is aborted): which
//! attempts run in this process, their cancellation, and the rule that an install is never stopped
//! halfway. A cancelled step's programs are ended by the runner (its whole process tree, as for a
//! timeout: `runner::CANCEL`), and its result says it was cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use fleet_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::catalogue::ActionName;

/// How long a cancelled step has to end by itself (its programs killed, its result reported) before
/// the agent records it cancelled without waiting any longer.
pub const GRACE: Duration = Duration::from_secs(10);

/// Actions that are never stopped while they run: an installer (and ESSO's configuration after it)
/// or the migration utility stopped halfway leaves the server, or the SSO database, in an unknown
/// state. The coordinator never asks (`StepKind::cancellable`); the agent refuses all the same, and
/// their programs outlive an agent that stops (`runner::CommandSpec::outlives_agent`).
pub fn never_stopped(action: ActionName) -> bool {
    matches!(
        action,
        ActionName::InstallSso | ActionName::ConfigureSso | ActionName::RunMigration
    )
}

/// The attempts running in this process.
#[derive(Clone, Default)]
pub struct Running {
    steps: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Clone)]
struct Entry {
    action: ActionName,
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

/// What [`Running::cancel`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Its programs are being ended; it reports itself cancelled.
    Cancelled,
    /// It is an install (or the migration): it runs to its end.
    NeverStopped(ActionName),
    /// Nothing of that id runs here (it ended, or never arrived).
    NotRunning,
}

impl Running {
    /// Registers a step that starts; it is forgotten when the returned ticket is dropped.
    pub fn register(&self, attempt_id: &str, action: ActionName) -> Ticket {
        let entry = Entry {
            action,
            token: CancellationToken::new(),
            reason: Arc::new(OnceLock::new()),
        };
        self.lock().insert(attempt_id.to_string(), entry.clone());
        Ticket {
            attempt_id: attempt_id.to_string(),
            entry,
            running: self.clone(),
        }
    }

    pub fn cancel(&self, attempt_id: &str, reason: &str) -> Cancel {
        let Some(entry) = self.lock().get(attempt_id).cloned() else {
            return Cancel::NotRunning;
        };
        if never_stopped(entry.action) {
            return Cancel::NeverStopped(entry.action);
        }
        let _ = entry.reason.set(reason.to_string());
        entry.token.cancel();
        Cancel::Cancelled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.steps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One running step's registration.
pub struct Ticket {
    attempt_id: String,
    entry: Entry,
    running: Running,
}

impl Ticket {
    /// The token the step's task runs under (`runner::CANCEL`).
    pub fn token(&self) -> CancellationToken {
        self.entry.token.clone()
    }

    /// A cancelled step's result that did not succeed says it was cancelled, and why (one that
    /// finished successfully before the cancel took effect stays a success).
    pub fn judge(&self, result: &mut pb::StepFinished) {
        if let Some(reason) = self.entry.reason.get()
            && result.outcome() != pb::StepOutcome::Succeeded
        {
            result.outcome = pb::StepOutcome::Cancelled as i32;
            result.error = cancelled(reason);
        }
    }

    /// Returns once the step was cancelled and has had [`GRACE`] to end by itself.
    pub async fn gave_up(&self) {
        self.entry.token.cancelled().await;
        tokio::time::sleep(GRACE).await;
    }

    /// The result of a cancelled step that did not end within the grace.
    pub fn abandoned(&self) -> pb::StepFinished {
        pb::StepFinished {
            outcome: pb::StepOutcome::Cancelled as i32,
            error: cancelled(self.entry.reason.get().map_or("", String::as_str)),
            ..Default::default()
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.running.lock().remove(&self.attempt_id);
    }
}

fn cancelled(reason: &str) -> String {
    format!("cancelled: {reason}; the step's programs were ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_is_never_cancelled_and_other_steps_are_once() {
        let running = Running::default();
        let install = running.register("i", ActionName::InstallSso);
        let backup = running.register("b", ActionName::BackupSecret);
        assert_eq!(
            running.cancel("i", "aborted"),
            Cancel::NeverStopped(ActionName::InstallSso)
        );
        assert!(!install.token().is_cancelled());
        assert_eq!(running.cancel("b", "aborted by ops"), Cancel::Cancelled);
        assert!(backup.token().is_cancelled());
        let mut failed = pb::StepFinished {
            outcome: pb::StepOutcome::Failed as i32,
            error: "powershell was ended by a signal".into(),
            ..Default::default()
        };
        backup.judge(&mut failed);
        assert_eq!(failed.outcome(), pb::StepOutcome::Cancelled);
        assert_eq!(
            failed.error,
            "cancelled: aborted by ops; the step's programs were ended"
        );
        let mut succeeded = pb::StepFinished {
            outcome: pb::StepOutcome::Succeeded as i32,
            ..Default::default()
        };
        backup.judge(&mut succeeded);
        assert_eq!(succeeded.outcome(), pb::StepOutcome::Succeeded);
        drop(backup);
        assert_eq!(running.cancel("b", "again"), Cancel::NotRunning);
    }
}
