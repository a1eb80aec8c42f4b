//! The operator's controls: pause, resume (lifting a halt where it can), abort, approve (a gate, a
//! review, an attended install), retry and skip — each allowed only where the run's state allows
//! it, refused with why otherwise (and then nothing changed).

use super::{Command, Control, EnvStatus, Millis, Refused, Run, StepState};
use crate::domain::NodeName;
use crate::inventory::Gate;
use crate::plan::StepKind;

impl Run {
    pub(super) fn control(
        &mut self,
        control: Control,
        now: Millis,
        out: &mut Vec<Command>,
    ) -> Result<(), Refused> {
        match control {
            Control::Pause => {
                if self.record.paused {
                    return Err(Refused("the run is already paused".into()));
                }
                self.record.paused = true;
            }
            Control::Resume => {
                // One resume lifts a pause and, where it can, a halt.
                if self.record.paused {
                    self.record.paused = false;
                    if self.record.halt.is_some() {
                        let _ = self.resume_halted(out);
                    }
                } else if self.record.halt.is_some() {
                    self.resume_halted(out)?;
                } else {
                    return Err(Refused("the run is neither paused nor halted".into()));
                }
            }
            Control::Abort => {
                self.record.aborted = true;
                // Nothing runs at an attended install's wait: it ends now (a dead server must not
                // keep the run open), and its agent is told to drop the attempt.
                for step in 0..self.steps.len() {
                    if self.waits_for_install(&self.steps[step]) {
                        let attempt = self.steps[step].record.attempt;
                        self.steps[step].record.finished_at = Some(now);
                        self.set(
                            step,
                            StepState::Failed,
                            "cancelled while it waited for the operator: the run was aborted",
                            out,
                        );
                        out.push(Command::Cancel { step, attempt });
                    }
                    // A running step is ended by its agent, which reports it cancelled; an install
                    // runs to its end (see `StepKind::cancellable`).
                    let s = &self.steps[step];
                    if s.record.state == StepState::Running && s.plan.kind.cancellable() {
                        let attempt = s.record.attempt;
                        out.push(Command::Cancel { step, attempt });
                    }
                    // The coordinator's own waits, and its preflight (it only reads), end with the
                    // run: nothing is out anywhere. A late preflight answer is then stale.
                    let s = &self.steps[step];
                    if s.plan.kind == StepKind::Preflight && s.record.state == StepState::Running {
                        self.steps[step].record.finished_at = Some(now);
                        self.set(
                            step,
                            StepState::Failed,
                            "ended: the run was aborted during preflight",
                            out,
                        );
                    }
                    let s = &self.steps[step];
                    if s.plan.kind.awaits_operator() && s.record.state.in_flight() {
                        self.steps[step].record.finished_at = Some(now);
                        self.set(
                            step,
                            StepState::Failed,
                            "ended: the run was aborted while it waited for the operator",
                            out,
                        );
                    }
                }
            }
            Control::ApproveInstall { step } => {
                let s = self
                    .steps
                    .get(step)
                    .ok_or_else(|| Refused(format!("no step {step} in this run")))?;
                if !self.waits_for_install(s) {
                    return Err(Refused(format!(
                        "{} is {}, not waiting for an attended install",
                        self.describe(step),
                        s.record.state.as_str()
                    )));
                }
                if self.record.aborted {
                    return Err(Refused("the run is aborted".into()));
                }
                let attempt = s.record.attempt;
                // The verification is a step of its own now, with the step timeout.
                self.steps[step].record.dispatched_at = Some(now);
                self.steps[step].record.approved = Some(attempt);
                self.set(
                    step,
                    StepState::Running,
                    "approved: the agent verifies the install",
                    out,
                );
                out.push(Command::Continue { step, attempt });
            }
            Control::Approve => {
                if let Some(wait) = self.operator_wait() {
                    self.steps[wait].record.finished_at = Some(now);
                    self.set(wait, StepState::Succeeded, "approved", out);
                    return Ok(());
                }
                let gate = self
                    .current_env()
                    .and_then(|env| self.gate_step(env))
                    .filter(|&g| {
                        self.steps[g].record.state == StepState::Waiting
                            && self.envs[self.steps[g].plan.env].gate == Gate::Manual
                    });
                let Some(gate) = gate else {
                    return Err(Refused(
                        "nothing waits for approval: no manual gate, no review (an attended install is approved with --node N)".into(),
                    ));
                };
                self.steps[gate].record.finished_at = Some(now);
                self.set(gate, StepState::Succeeded, "approved", out);
            }
            Control::Retry { step } => self.retry(step, out)?,
            Control::Skip { step } => self.skip(step, now, out)?,
        }
        Ok(())
    }

    pub(super) fn resume_halted(&mut self, out: &mut Vec<Command>) -> Result<(), Refused> {
        let chain_failed = self
            .steps
            .iter()
            .position(|s| s.record.state == StepState::Failed && s.plan.kind.in_master_chain());
        if let Some(step) = chain_failed {
            return Err(Refused(format!(
                "{} failed: retry it or abort the run (members never start on an unverified master)",
                self.describe(step)
            )));
        }
        if let Some(master) = self.lost_master() {
            return Err(Refused(format!(
                "the master {master} is still detached: resume once it has re-attached (`fleetctl nodes`)"
            )));
        }
        for env in &mut self.envs {
            env.record.master_lost = false;
        }
        // Member failures beyond max_failures: the operator accepts them and the run goes on.
        for env in 0..self.envs.len() {
            let e = &mut self.envs[env];
            e.record.failures_accepted = e.record.member_failures.saturating_sub(self.max_failures);
            if e.record.status == EnvStatus::Halted {
                self.unhalt(env, out);
            }
        }
        self.record.halt = None;
        Ok(())
    }

    pub(super) fn retry(&mut self, step: usize, out: &mut Vec<Command>) -> Result<(), Refused> {
        let s = self
            .steps
            .get(step)
            .ok_or_else(|| Refused(format!("no step {step} in this run")))?;
        if s.record.state != StepState::Failed {
            return Err(Refused(format!(
                "{} is {}, not failed",
                self.describe(step),
                s.record.state.as_str()
            )));
        }
        let env = s.plan.env;
        let kind = s.plan.kind;
        self.require_current(env)?;
        self.set(step, StepState::Pending, "retry", out);
        self.reopen_gate(env, out);
        if kind.is_member_step() {
            let e = &mut self.envs[env];
            e.record.member_failures -= 1;
            // A failure the operator accepted and then retried or skipped is no longer accepted either.
            e.record.failures_accepted = e.record.failures_accepted.min(e.record.member_failures);
            if let Some(verify) = self.verify_of(step)
                && self.steps[verify].record.state == StepState::Skipped
            {
                self.set(verify, StepState::Pending, "", out);
            }
        }
        self.clear_halt_if_resolved(env, out);
        Ok(())
    }

    pub(super) fn skip(
        &mut self,
        step: usize,
        now: Millis,
        out: &mut Vec<Command>,
    ) -> Result<(), Refused> {
        let s = self
            .steps
            .get(step)
            .ok_or_else(|| Refused(format!("no step {step} in this run")))?;
        if !s.plan.kind.is_member_step() {
            return Err(Refused(format!(
                "{} cannot be skipped: the master chain (backups, upgrade, verify) must succeed before any member starts; retry it or abort the run",
                self.describe(step)
            )));
        }
        let waiting = self.waits_for_install(s);
        if !matches!(s.record.state, StepState::Failed | StepState::Pending) && !waiting {
            return Err(Refused(format!(
                "{} is {}: only a failed, pending or waiting step can be skipped",
                self.describe(step),
                s.record.state.as_str()
            )));
        }
        if let Some(upgrade) = self.upgrade_of(step)
            && !self.steps[upgrade].record.state.is_done()
            && self.steps[upgrade].record.state != StepState::Failed
        {
            return Err(Refused(format!(
                "{} cannot be skipped before its upgrade finished: skip the upgrade instead",
                self.describe(step)
            )));
        }
        if waiting {
            // Its agent drops the attempt (nothing ran there).
            let attempt = s.record.attempt;
            out.push(Command::Cancel { step, attempt });
        }
        let env = s.plan.env;
        let was_failed = s.record.state == StepState::Failed;
        self.require_current(env)?;
        self.reopen_gate(env, out);
        if was_failed {
            let e = &mut self.envs[env];
            e.record.member_failures -= 1;
            // A failure the operator accepted and then retried or skipped is no longer accepted either.
            e.record.failures_accepted = e.record.failures_accepted.min(e.record.member_failures);
        }
        self.steps[step].record.finished_at = Some(now);
        self.set(step, StepState::Skipped, "skipped by the operator", out);
        if let Some(verify) = self.verify_of(step)
            && matches!(
                self.steps[verify].record.state,
                StepState::Pending | StepState::Skipped
            )
        {
            self.set(verify, StepState::Skipped, "its upgrade was skipped", out);
        }
        self.clear_halt_if_resolved(env, out);
        Ok(())
    }

    /// Retry and skip act on the environment being upgraded; a finished one is history.
    pub(super) fn require_current(&self, env: usize) -> Result<(), Refused> {
        if self.current_env() == Some(env) {
            Ok(())
        } else {
            let state = if self.envs[env].record.status == EnvStatus::Succeeded {
                "has finished"
            } else {
                "has not started"
            };
            Err(Refused(format!(
                "environment {} {state}: only steps of the environment in progress can be retried or skipped",
                self.env_names[env]
            )))
        }
    }

    /// A change to an environment's members after its gate began waiting, or passed while the
    /// environment was held (an approval given during a halt): the gate starts over.
    pub(super) fn reopen_gate(&mut self, env: usize, out: &mut Vec<Command>) {
        let Some(gate) = self.gate_step(env) else {
            return;
        };
        let passed_but_held = self.steps[gate].record.state == StepState::Succeeded
            && self.envs[env].record.status != EnvStatus::Succeeded;
        if self.steps[gate].record.state == StepState::Waiting || passed_but_held {
            self.steps[gate].record.finished_at = None;
            self.steps[gate].record.wait_until = None;
            self.set(gate, StepState::Pending, "", out);
            self.set_env(env, EnvStatus::Running, out);
        }
    }

    /// A halted environment goes on: waiting at its gate if the gate already waits, else running.
    pub(super) fn unhalt(&mut self, env: usize, out: &mut Vec<Command>) {
        let gate_waits = self
            .gate_step(env)
            .is_some_and(|g| self.steps[g].record.state == StepState::Waiting);
        let status = if gate_waits {
            EnvStatus::WaitingGate
        } else {
            EnvStatus::Running
        };
        self.set_env(env, status, out);
    }

    /// A master whose detachment halted its environment and that has not re-attached.
    pub(super) fn lost_master(&self) -> Option<NodeName> {
        self.envs
            .iter()
            .filter(|e| e.record.master_lost && !self.attached.contains(&e.master))
            .map(|e| e.master.clone())
            .next()
    }

    /// After a retry or skip in `env`: the run goes on when nothing else holds it; otherwise the
    /// halt's reason says what remains (never a reason that no longer holds).
    pub(super) fn clear_halt_if_resolved(&mut self, env: usize, out: &mut Vec<Command>) {
        if let Some(step) = self
            .steps
            .iter()
            .position(|s| s.record.state == StepState::Failed && s.plan.kind.in_master_chain())
        {
            self.record.halt = Some(format!(
                "{} failed: retry it or abort the run (members never start on an unverified master)",
                self.describe(step)
            ));
            return;
        }
        // A master that detached and is back: the operator acting on its environment is the word a
        // resume would give.
        let e = &mut self.envs[env];
        if e.record.master_lost && self.attached.contains(&e.master) {
            e.record.master_lost = false;
        }
        let e = &self.envs[env];
        if e.record.master_lost {
            self.record.halt = Some(format!(
                "the master {} of {} is still detached: the run goes on once it has re-attached (`fleetctl nodes`) and the operator resumes",
                e.master, self.env_names[env]
            ));
        } else if e.record.member_failures > self.max_failures + e.record.failures_accepted {
            // Still over: say how things stand now; a retried step starts once the halt is lifted.
            self.record.halt = Some(format!(
                "{} member failure(s) in {} exceed max_failures = {}: retry or skip them, or resume to accept them (retried steps start then)",
                e.record.member_failures, self.env_names[env], self.max_failures
            ));
        } else {
            self.record.halt = None;
            if self.envs[env].record.status == EnvStatus::Halted {
                self.unhalt(env, out);
            }
        }
    }
}
