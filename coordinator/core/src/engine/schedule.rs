//! What starts when: the master chain in order, then the members — at most `max_parallel` in flight,
//! each member's upgrade then its verify — then the gate, environment after environment, within
//! each environment's maintenance window (SPEC §5, invariants 1, 2, 3, 6, 7).

use super::model::MemberPair;
use super::{Command, EnvStatus, Millis, Run, StepState};
use crate::inventory::Gate;

impl Run {
    /// The first environment that has not succeeded.
    pub(super) fn current_env(&self) -> Option<usize> {
        self.envs
            .iter()
            .position(|e| e.record.status != EnvStatus::Succeeded)
    }

    /// Starts what may start now.
    pub(super) fn advance(&mut self, now: Millis, out: &mut Vec<Command>) {
        while let Some(env) = self.current_env() {
            if self.record.aborted
                || self.record.halt.is_some()
                || self.envs[env].record.status == EnvStatus::Halted
            {
                return;
            }
            if self.envs[env].record.status == EnvStatus::Pending {
                if self.record.paused {
                    return;
                }
                self.set_env(env, EnvStatus::Running, out);
            }
            if !self.advance_env(env, now, out) {
                return;
            }
            self.set_env(env, EnvStatus::Succeeded, out);
        }
    }

    pub(super) fn dispatch(&mut self, step: usize, now: Millis, out: &mut Vec<Command>) {
        let s = &mut self.steps[step];
        s.record.attempt += 1;
        s.record.dispatched_at = Some(now);
        s.record.finished_at = None;
        let attempt = s.record.attempt;
        self.set(step, StepState::Running, format!("attempt {attempt}"), out);
        out.push(Command::Dispatch { step, attempt });
    }

    pub(super) fn may_dispatch_to(&self, step: usize, now: Millis) -> bool {
        !self.record.paused
            && self.window_open(self.steps[step].plan.env, now)
            && self.steps[step]
                .plan
                .node
                .as_ref()
                .is_none_or(|n| self.attached.contains(n))
    }

    /// Moves environment `env` on; true once it has finished (gate passed).
    pub(super) fn advance_env(&mut self, env: usize, now: Millis, out: &mut Vec<Command>) -> bool {
        let range = self.envs[env].steps.clone();
        // The master chain, in order.
        for step in range {
            let s = &self.steps[step];
            if !s.plan.kind.in_master_chain() {
                break;
            }
            match s.record.state {
                state if state.is_done() => continue,
                StepState::Pending => {
                    if self.may_dispatch_to(step, now) {
                        self.dispatch(step, now, out);
                    }
                    return false;
                }
                _ => return false,
            }
        }
        // Members: a window of at most max_parallel in flight, each member upgrade → verify.
        let state = |step: Option<usize>| step.map(|i| self.steps[i].record.state);
        let mut in_flight = self.envs[env]
            .members
            .iter()
            .filter(|m| {
                state(Some(m.upgrade)).is_some_and(StepState::in_flight)
                    || state(m.verify).is_some_and(StepState::in_flight)
            })
            .count();
        for k in 0..self.envs[env].members.len() {
            let MemberPair { upgrade, verify } = self.envs[env].members[k];
            let next = match (
                self.steps[upgrade].record.state,
                verify.map(|v| self.steps[v].record.state),
            ) {
                (StepState::Pending, _) => Some(upgrade),
                (StepState::Succeeded, Some(StepState::Pending)) => verify,
                _ => None,
            };
            if let Some(step) = next
                && in_flight < self.max_parallel as usize
                && self.may_dispatch_to(step, now)
            {
                self.dispatch(step, now, out);
                in_flight += 1;
            }
        }
        let terminal = |step: Option<usize>| {
            step.is_none_or(|i| {
                !matches!(
                    self.steps[i].record.state,
                    StepState::Pending | StepState::Running | StepState::Waiting
                )
            })
        };
        let members_finished = self.envs[env]
            .members
            .iter()
            .all(|m| terminal(Some(m.upgrade)) && terminal(m.verify));
        if !members_finished {
            return false;
        }
        // The gate (a workflow without one has finished here).
        let Some(gate) = self.gate_step(env) else {
            return true;
        };
        match self.steps[gate].record.state {
            StepState::Succeeded => true,
            StepState::Pending => {
                if self.record.paused {
                    return false;
                }
                match self.envs[env].gate.clone() {
                    Gate::Auto => {
                        self.steps[gate].record.finished_at = Some(now);
                        self.set(gate, StepState::Succeeded, "auto", out);
                        true
                    }
                    Gate::Manual => {
                        self.set_env(env, EnvStatus::WaitingGate, out);
                        self.set(
                            gate,
                            StepState::Waiting,
                            "waiting for `fleetctl approve`",
                            out,
                        );
                        false
                    }
                    Gate::Soak(duration) => {
                        let until =
                            now + Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX / 2);
                        self.steps[gate].record.wait_until = Some(until);
                        self.set_env(env, EnvStatus::WaitingGate, out);
                        self.set(
                            gate,
                            StepState::Waiting,
                            format!("soaking for {}", humantime::format_duration(duration)),
                            out,
                        );
                        out.push(Command::WakeAt(until));
                        false
                    }
                }
            }
            StepState::Waiting => {
                let soaked = self.steps[gate]
                    .record
                    .wait_until
                    .is_some_and(|until| now >= until);
                if soaked {
                    self.steps[gate].record.finished_at = Some(now);
                    self.set(gate, StepState::Succeeded, "soaked", out);
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// Whether `env`'s window allows a step to start at `now`.
    pub(super) fn window_open(&self, env: usize, now: Millis) -> bool {
        self.envs[env]
            .window
            .as_ref()
            .is_none_or(|w| w.is_open(now))
    }
}
