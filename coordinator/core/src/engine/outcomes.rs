//! What the agents (and the coordinator's own steps) report of attempts — rebooting, waiting for the
//! operator, finished, never delivered, already done before it was sent — a master detaching, silent
//! steps timing out, and a coordinator restart resuming the run. An event for any attempt but a
//! step's current one, or for a step already finished, is a duplicate and changes nothing.

use super::{Command, EnvStatus, Millis, Outcome, RESULT_GRACE_MS, Run, StepState};
use crate::domain::NodeName;
use crate::plan::{PlannedStep, StepKind};

impl Run {
    /// The coordinator restarted: the clock of each step out on an agent starts again at `now`.
    pub(super) fn resumed(&mut self, now: Millis) {
        for s in self
            .steps
            .iter_mut()
            .filter(|s| s.record.state == StepState::Running)
        {
            s.record.dispatched_at = Some(now);
        }
    }

    pub(super) fn rebooting(
        &mut self,
        step: usize,
        attempt: u32,
        message: String,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        if let Some(s) = self.steps.get_mut(step)
            && s.record.attempt == attempt
            && s.record.state == StepState::Running
            && s.record.rebooting != Some(attempt)
        {
            s.record.dispatched_at = Some(now);
            s.record.rebooting = Some(attempt);
            self.set(step, StepState::Running, message, out);
        }
    }

    pub(super) fn waiting(
        &mut self,
        step: usize,
        attempt: u32,
        instruction: String,
        out: &mut Vec<Command>,
    ) {
        let Some(s) = self.steps.get(step) else {
            return;
        };
        if s.record.attempt != attempt
            || s.record.state != StepState::Running
            || self.record.aborted
        {
            return;
        }
        if s.record.approved == Some(attempt) {
            // Approved already: its agent did not get the word, and is told again.
            out.push(Command::Continue { step, attempt });
        } else if s.plan.kind.installs() || s.plan.kind.awaits_operator() {
            let message = with_install_reason(instruction, &s.plan);
            self.set(step, StepState::Waiting, message, out);
        }
    }

    /// Whether the run has a use for attempt `attempt` of `step` being held by its agent for the
    /// operator: the step waits for the operator, or the operator approved it and its agent is told
    /// to go on. A finished run has none (its agent is told to drop the attempt).
    pub fn wants_wait(&self, step: usize, attempt: u32) -> bool {
        !self.record.status.is_final()
            && self.steps.get(step).is_some_and(|s| {
                s.record.attempt == attempt
                    && (s.record.state == StepState::Waiting
                        || (s.record.state == StepState::Running
                            && s.record.approved == Some(attempt)))
            })
    }

    pub(super) fn not_delivered(&mut self, step: usize, attempt: u32, out: &mut Vec<Command>) {
        if self
            .steps
            .get(step)
            .is_some_and(|s| s.record.attempt == attempt && s.record.state == StepState::Running)
        {
            self.steps[step].record.dispatched_at = None;
            self.set(
                step,
                StepState::Pending,
                format!("attempt {attempt} never reached its agent; it starts again"),
                out,
            );
        }
    }

    pub(super) fn already_done(
        &mut self,
        step: usize,
        attempt: u32,
        message: String,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        if self.steps.get(step).is_some_and(|s| {
            s.record.attempt == attempt
                && s.record.state == StepState::Running
                && matches!(
                    s.plan.kind,
                    StepKind::UpgradeMaster | StepKind::UpgradeMember
                )
        }) {
            self.steps[step].record.finished_at = Some(now);
            self.set(step, StepState::Succeeded, message, out);
        }
    }

    pub(super) fn finished(
        &mut self,
        step: usize,
        attempt: u32,
        outcome: Outcome,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(s) = self.steps.get(step) else {
            return;
        };
        // Duplicates and stale attempts change nothing. An attempt waiting for an attended install
        // ends when it is cancelled (an aborted run).
        if attempt != s.record.attempt
            || !(s.record.state == StepState::Running || self.waits_for_install(s))
        {
            return;
        }
        // A wait for the operator passes only by the operator's approval; it fails when the shell
        // cannot say what it waits for.
        if s.plan.kind.awaits_operator() && outcome == Outcome::Succeeded {
            return;
        }
        self.steps[step].record.finished_at = Some(now);
        match outcome {
            Outcome::Succeeded => self.set(step, StepState::Succeeded, "", out),
            Outcome::Failed(error) => self.fail(step, error, out),
        }
    }

    pub(super) fn fail(&mut self, step: usize, error: String, out: &mut Vec<Command>) {
        let kind = self.steps[step].plan.kind;
        let env = self.steps[step].plan.env;
        self.set(step, StepState::Failed, error.clone(), out);
        let what = self.describe(step);
        if kind.is_member_step() {
            self.envs[env].record.member_failures += 1;
            if let Some(verify) = self.verify_of(step) {
                self.set(verify, StepState::Skipped, "the upgrade failed", out);
            }
            let e = &self.envs[env];
            if e.record.member_failures > self.max_failures + e.record.failures_accepted
                && self.record.halt.is_none()
            {
                self.record.halt = Some(format!(
                    "{} member failure(s) in {} exceed max_failures = {} (last: {what}: {error})",
                    e.record.member_failures, self.env_names[env], self.max_failures
                ));
                self.set_env(env, EnvStatus::Halted, out);
            }
        } else {
            self.record.halt = Some(format!("{what} failed: {error}"));
            self.set_env(env, EnvStatus::Halted, out);
        }
    }

    pub(super) fn check_timers(&mut self, now: Millis, out: &mut Vec<Command>) {
        for i in 0..self.steps.len() {
            let s = &self.steps[i];
            let silent = s.record.state == StepState::Running
                && s.record
                    .dispatched_at
                    .is_some_and(|at| now > at + self.step_timeout_ms + RESULT_GRACE_MS);
            if silent {
                let error = format!(
                    "no result within the step timeout ({} s) and {} s of grace",
                    self.step_timeout_ms / 1000,
                    RESULT_GRACE_MS / 1000
                );
                self.steps[i].record.finished_at = Some(now);
                self.fail(i, error, out);
            }
        }
    }

    /// A master that detaches while its environment is in progress halts the environment: nothing
    /// new starts there until it is back and the operator resumes. Its own step is not failed: that
    /// waits for the step timeout (its result may still arrive).
    pub(super) fn master_detached(&mut self, node: &NodeName, out: &mut Vec<Command>) {
        let Some(env) = self.current_env() else {
            return;
        };
        let e = &self.envs[env];
        let in_progress = matches!(e.record.status, EnvStatus::Running | EnvStatus::WaitingGate);
        // The master's agent said it restarts the server: its going away is the reboot.
        // Or its install waits for the operator, who may restart the server as setup asks.
        let rebooting = self.steps[e.steps.clone()].iter().any(|s| {
            s.plan.node.as_ref() == Some(node)
                && ((s.record.state == StepState::Running
                    && s.record.rebooting == Some(s.record.attempt))
                    || self.waits_for_install(s))
        });
        if &e.master != node
            || rebooting
            || !in_progress
            || self.record.aborted
            || self.record.status.is_final()
        {
            return;
        }
        self.envs[env].record.master_lost = true;
        if self.record.halt.is_none() {
            self.record.halt = Some(format!(
                "the master {node} of {} detached: nothing more starts there until it re-attaches and the operator resumes",
                self.env_names[env]
            ));
        }
        self.set_env(env, EnvStatus::Halted, out);
    }
}
/// What an attended install waits with: the agent's instruction, and why the plan made it attended
/// where the inventory asked for unattended (e.g. that Microsoft supports no silent BizTalk upgrade).
fn with_install_reason(instruction: String, step: &PlannedStep) -> String {
    match step.install.as_ref().and_then(|i| i.attended_because()) {
        Some(reason) if !instruction.contains(reason) => {
            format!("{instruction} (attended: {reason})")
        }
        _ => instruction,
    }
}
