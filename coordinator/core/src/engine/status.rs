//! The run's status: where the run stands and why (running, paused, waiting for the operator,
//! halted, finished), derived from its steps and environments after every event.

use serde::{Deserialize, Serialize};

use super::{Command, Millis, Run, StepRun, StepState};
use crate::domain::NodeName;
use crate::inventory::Gate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Running,
    Paused,
    WaitingApproval,
    Halted,
    Succeeded,
    Failed,
    Aborted,
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::WaitingApproval => "waiting-approval",
            RunStatus::Halted => "halted",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
        }
    }

    /// A stored name ([`Self::as_str`]) back; `None` for one this build does not know.
    pub fn parse(stored: &str) -> Option<Self> {
        [
            RunStatus::Running,
            RunStatus::Paused,
            RunStatus::WaitingApproval,
            RunStatus::Halted,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Aborted,
        ]
        .into_iter()
        .find(|s| s.as_str() == stored)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvStatus {
    Pending,
    Running,
    WaitingGate,
    Halted,
    Succeeded,
}

impl EnvStatus {
    /// Every status, for the names' round trip.
    pub const ALL: [EnvStatus; 5] = [
        EnvStatus::Pending,
        EnvStatus::Running,
        EnvStatus::WaitingGate,
        EnvStatus::Halted,
        EnvStatus::Succeeded,
    ];

    /// The name an environment event is stored with (its `status`). These spellings are in existing
    /// databases: never change one.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvStatus::Pending => "Pending",
            EnvStatus::Running => "Running",
            EnvStatus::WaitingGate => "WaitingGate",
            EnvStatus::Halted => "Halted",
            EnvStatus::Succeeded => "Succeeded",
        }
    }

    /// A stored name ([`Self::as_str`]) back; `None` for one this build does not know.
    pub fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == stored)
    }
}

impl Run {
    pub(super) fn update_status(&mut self, now: Millis, out: &mut Vec<Command>) {
        let (status, reason) = self.derive_status(now);
        if status != self.record.status || reason != self.record.reason {
            self.record.status = status;
            self.record.reason.clone_from(&reason);
            out.push(Command::RunChanged { status, reason });
        }
    }

    pub(super) fn derive_status(&self, now: Millis) -> (RunStatus, String) {
        let in_flight = self.has_running_steps();
        if self.record.aborted {
            let installing = self
                .steps
                .iter()
                .position(|s| s.record.state == StepState::Running && !s.plan.kind.cancellable());
            let reason = match installing {
                Some(step) => format!(
                    "aborted; waiting for {} to end: an install is never stopped halfway (it would leave the server in an unknown state)",
                    self.describe(step)
                ),
                None if in_flight => {
                    "aborted; the steps in flight are being ended on their agents".into()
                }
                None => "aborted by the operator".into(),
            };
            return (RunStatus::Aborted, reason);
        }
        if self
            .envs
            .iter()
            .all(|e| e.record.status == EnvStatus::Succeeded)
        {
            let failed = self
                .steps
                .iter()
                .filter(|s| s.record.state == StepState::Failed)
                .count();
            return if failed == 0 {
                (RunStatus::Succeeded, String::new())
            } else {
                (
                    RunStatus::Failed,
                    format!("completed with {failed} failed member step(s)"),
                )
            };
        }
        if let Some(halt) = &self.record.halt {
            return (RunStatus::Halted, halt.clone());
        }
        if self.record.paused {
            return (RunStatus::Paused, "paused by the operator".into());
        }
        if let Some(env) = self.current_env() {
            let waiting: Vec<&StepRun> = self.steps[self.envs[env].steps.clone()]
                .iter()
                .filter(|s| self.waits_for_install(s))
                .collect();
            if let Some(first) = waiting.first() {
                let node = first.plan.node.as_ref().map_or("", NodeName::as_str);
                let more = match waiting.len() {
                    1 => String::new(),
                    n => format!(" ({} more attended installs wait)", n - 1),
                };
                return (
                    RunStatus::WaitingApproval,
                    format!("attended install on {node}: {}{more}", first.record.message),
                );
            }
            if let Some(wait) = self.operator_wait() {
                return (
                    RunStatus::WaitingApproval,
                    format!(
                        "{}: {}",
                        self.describe(wait),
                        self.steps[wait].record.message
                    ),
                );
            }
            let gate = self.gate_step(env).map(|g| &self.steps[g]);
            if let Some(gate) = gate
                && gate.record.state == StepState::Waiting
                && self.envs[env].gate == Gate::Manual
            {
                return (
                    RunStatus::WaitingApproval,
                    format!(
                        "the gate of {} waits for `fleetctl approve`",
                        self.env_names[env]
                    ),
                );
            }
            let pending = self.steps[self.envs[env].steps.clone()]
                .iter()
                .any(|s| s.record.state == StepState::Pending);
            if pending
                && let Some(window) = self.envs[env].window.as_ref()
                && !window.is_open(now)
            {
                let opens = window
                    .next_open(now)
                    .map_or_else(|| "never".to_string(), |at| window.local(at));
                let flight = if self.has_running_steps() {
                    "; steps in flight finish"
                } else {
                    ""
                };
                return (
                    RunStatus::Running,
                    format!(
                        "waiting for the maintenance window of {} ({window}): it opens {opens}{flight}",
                        self.env_names[env]
                    ),
                );
            }
            // Only while nothing runs (the cheap test first: this is derived at every event, and a
            // lookup per pending step of a 10,000-node environment made it the coordinator's hot spot).
            if !self
                .steps
                .iter()
                .any(|s| s.record.state == StepState::Running)
                && let Some(step) = self.steps[self.envs[env].steps.clone()].iter().find(|s| {
                    s.record.state == StepState::Pending
                        && s.plan
                            .node
                            .as_ref()
                            .is_some_and(|n| !self.attached.contains(n))
                })
            {
                let node = step.plan.node.as_ref().map_or("", NodeName::as_str);
                return (RunStatus::Running, format!("waiting for {node} to attach"));
            }
        }
        (RunStatus::Running, String::new())
    }
}
