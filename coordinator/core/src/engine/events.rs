//! The engine's vocabulary — the [`Event`]s it hears, the operator's [`Control`]s, the [`Command`]s
//! it answers with — and [`Run::apply`], which hands each event to the concern that decides it
//! (schedule, outcomes, controls) and derives the run's status after.

use super::{EnvStatus, Millis, Run, RunStatus, StepState};
use crate::domain::NodeName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
    /// Pass the operator's wait in the master chain (a migration's review), else the current manual gate.
    Approve,
    /// The operator says the attended install `step` waits for is done: its agent verifies it
    /// (which step a node's approval means: [`Run::waiting_install`]).
    ApproveInstall {
        step: usize,
    },
    /// Try a failed step again (which step an operator's retry names: [`Run::target`]).
    Retry {
        step: usize,
    },
    /// Skip a member step that failed, waits or has not started.
    Skip {
        step: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The run begins (once).
    Start,
    /// Time passed; soak gates and silent steps are checked.
    Tick,
    NodeAttached(NodeName),
    /// Several nodes attached (a coordinator restart brings thousands back): one decision for all.
    NodesAttached(Vec<NodeName>),
    NodeDetached(NodeName),
    /// The coordinator restarted and took the run up again from its store: the clock of steps out
    /// on agents starts again (the time it was down is not theirs to answer for; their results may
    /// be waiting in the agents' journals). Nothing else changes, and nothing is decided: what may
    /// start waits for the nodes to attach.
    Resumed,
    /// The agent restarts the server its install needs rebooted: the step's timeout starts again (the
    /// agent reports after the reboot).
    StepRebooting {
        step: usize,
        attempt: u32,
        /// What the agent said it does (shown as the step's message).
        message: String,
    },
    /// The agent stopped at an attended install, or the shell at a coordinator wait, and waits for the
    /// operator (`instruction`). Where the operator approved this attempt already, its agent did not
    /// get the word and is told again ([`Command::Continue`]).
    StepWaiting {
        step: usize,
        attempt: u32,
        instruction: String,
    },
    StepFinished {
        step: usize,
        attempt: u32,
        outcome: Outcome,
    },
    /// The agent reports it never received this attempt (its assignment was lost on the way): the step
    /// never ran and is dispatched again, as a new attempt, when the run allows.
    StepNotDelivered {
        step: usize,
        attempt: u32,
    },
    /// Asked before an upgrade is sent again (a retry, a re-send), its node already has the target:
    /// an earlier attempt, interrupted, had installed it. The step succeeds with `message` and is not
    /// sent; its verify follows as always.
    StepAlreadyDone {
        step: usize,
        attempt: u32,
        message: String,
    },
    Control(Control),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run attempt `attempt` of `step`: on its agent, or in the coordinator for preflight and
    /// backup-database. Persist it as dispatched before it leaves the process.
    Dispatch {
        step: usize,
        attempt: u32,
    },
    StepChanged {
        step: usize,
        state: StepState,
        message: String,
    },
    EnvChanged {
        env: usize,
        status: EnvStatus,
    },
    RunChanged {
        status: RunStatus,
        reason: String,
    },
    /// Deliver a `Tick` at (or after) this time.
    WakeAt(Millis),
    /// The operator approved the attended install of `step` (now, or before and its agent still
    /// waits): tell its agent to verify and finish.
    Continue {
        step: usize,
        attempt: u32,
    },
    /// The run was aborted while `step` waited for an attended install: its agent ends the attempt
    /// (nothing runs there meanwhile).
    Cancel {
        step: usize,
        attempt: u32,
    },
}

/// An operator control the run's state does not allow; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Run {
    /// Applies `event` at time `now`. Controls the run's state does not allow are refused, and change
    /// nothing; so is every control to a finished run. Other events a finished run does not hear
    /// ([`Run::hears_when_final`]) change nothing.
    pub fn apply(&mut self, event: Event, now: Millis) -> Result<Vec<Command>, Refused> {
        let mut out = Vec::new();
        if self.record.status.is_final() && !self.hears_when_final(&event) {
            return match event {
                Event::Control(_) => Err(Refused(format!(
                    "the run is {}; nothing can change it",
                    self.record.status.as_str()
                ))),
                _ => Ok(out),
            };
        }
        match event {
            Event::Start => self.record.started = true,
            Event::Tick => self.check_timers(now, &mut out),
            Event::NodeAttached(node) => {
                self.attached.insert(node);
            }
            Event::NodesAttached(nodes) => self.attached.extend(nodes),
            Event::NodeDetached(node) => {
                self.attached.remove(&node);
                self.master_detached(&node, &mut out);
            }
            Event::Resumed => {
                self.resumed(now);
                return Ok(out);
            }
            Event::StepRebooting {
                step,
                attempt,
                message,
            } => self.rebooting(step, attempt, message, now, &mut out),
            Event::StepWaiting {
                step,
                attempt,
                instruction,
            } => self.waiting(step, attempt, instruction, &mut out),
            Event::StepFinished {
                step,
                attempt,
                outcome,
            } => self.finished(step, attempt, outcome, now, &mut out),
            Event::StepNotDelivered { step, attempt } => {
                self.not_delivered(step, attempt, &mut out);
            }
            Event::StepAlreadyDone {
                step,
                attempt,
                message,
            } => self.already_done(step, attempt, message, now, &mut out),
            Event::Control(control) => self.control(control, now, &mut out)?,
        }
        if self.record.started {
            self.advance(now, &mut out);
        }
        self.update_status(now, &mut out);
        Ok(out)
    }

    /// What a finished run (succeeded, failed, aborted) still hears: results of the attempts it sent,
    /// which of them never arrived, the timeout of silent ones while any is out, and a coordinator
    /// restart. Nothing else changes it.
    pub fn hears_when_final(&self, event: &Event) -> bool {
        match event {
            Event::StepFinished { .. } | Event::StepNotDelivered { .. } | Event::Resumed => true,
            Event::Tick => self.has_running_steps(),
            _ => false,
        }
    }
}
