//! The run's model: what a run is made of (its steps, environments, and the plan-derived layout —
//! each member's upgrade → verify pair, computed once from the plan), how it is made from a plan,
//! and what the shell may read of it. Every change goes through [`Run::apply`]; the fields are the
//! engine's own.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::record::{DurableEnv, RunRecord, StepRecord};
use super::{Command, EnvStatus, Millis, RunStatus};
use crate::domain::NodeName;
use crate::inventory::{Gate, Window};
use crate::plan::{Expected, Plan, PlannedStep, StepKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepState {
    Pending,
    Running,
    /// A gate waiting for approval or its soak time; an install or a coordinator step waiting for the
    /// operator.
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    AlreadyCurrent,
    /// The node is on a newer version than the target: nothing to do, never downgraded.
    Newer,
}

impl StepState {
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StepState::Succeeded
                | StepState::Skipped
                | StepState::AlreadyCurrent
                | StepState::Newer
        )
    }

    pub fn in_flight(self) -> bool {
        matches!(self, StepState::Running | StepState::Waiting)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Waiting => "waiting",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::AlreadyCurrent => "already-current",
            StepState::Newer => "newer",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            StepState::Pending,
            StepState::Running,
            StepState::Waiting,
            StepState::Succeeded,
            StepState::Failed,
            StepState::Skipped,
            StepState::AlreadyCurrent,
            StepState::Newer,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One step of a run: its plan and its state (the state as stored, [`StepRecord`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRun {
    pub(super) plan: PlannedStep,
    pub(super) record: StepRecord,
    /// The member step paired with this one: an upgrade's verify, a verify's upgrade.
    pub(super) partner: Option<usize>,
}

impl StepRun {
    pub fn plan(&self) -> &PlannedStep {
        &self.plan
    }

    pub fn state(&self) -> StepState {
        self.record.state
    }

    /// The current attempt (0 before the first dispatch).
    pub fn attempt(&self) -> u32 {
        self.record.attempt
    }

    /// Everything the step's state holds (what is stored of it).
    pub fn record(&self) -> &StepRecord {
        &self.record
    }
}

/// A member's upgrade and the verify of the same node that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MemberPair {
    pub(super) upgrade: usize,
    /// `None` only in a plan without the member's verify (a plan always has one).
    pub(super) verify: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRun {
    pub(super) record: DurableEnv,
    pub(super) gate: Gate,
    /// Index range of this environment's steps.
    pub(super) steps: std::ops::Range<usize>,
    /// Its members' upgrade → verify pairs, in plan order.
    pub(super) members: Vec<MemberPair>,
    /// The master secret server.
    pub(super) master: NodeName,
    /// No step starts while this is closed (invariant 7).
    pub(super) window: Option<Window>,
}

impl EnvRun {
    pub fn status(&self) -> EnvStatus {
        self.record.status
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Member steps failed and not retried or skipped.
    pub fn member_failures(&self) -> u32 {
        self.record.member_failures
    }

    /// Index range of this environment's steps.
    pub fn steps(&self) -> std::ops::Range<usize> {
        self.steps.clone()
    }

    pub fn window(&self) -> Option<&Window> {
        self.window.as_ref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub(super) steps: Vec<StepRun>,
    pub(super) envs: Vec<EnvRun>,
    pub(super) env_names: Vec<String>,
    pub(super) max_parallel: u32,
    pub(super) max_failures: u32,
    pub(super) step_timeout_ms: Millis,
    pub(super) attached: BTreeSet<NodeName>,
    /// Started, paused, aborted, halted, and the status derived last (stored with every decision).
    pub(super) record: RunRecord,
}

impl Run {
    pub fn new(plan: &Plan, step_timeout_ms: Millis, attached: BTreeSet<NodeName>) -> Self {
        let mut steps: Vec<StepRun> = plan
            .steps
            .iter()
            .map(|p| {
                let noted = |fallback: &str| {
                    if p.note.is_empty() {
                        fallback.to_string()
                    } else {
                        p.note.clone()
                    }
                };
                let (state, message) = match &p.expected {
                    Expected::Run => (StepState::Pending, String::new()),
                    Expected::AlreadyCurrent => (
                        StepState::AlreadyCurrent,
                        noted("already on the target version"),
                    ),
                    Expected::Newer => (
                        StepState::Newer,
                        noted("newer than the target version: never downgraded"),
                    ),
                    Expected::Skipped(why) => (StepState::Skipped, why.clone()),
                };
                StepRun {
                    plan: p.clone(),
                    record: StepRecord::new(state, message),
                    partner: None,
                }
            })
            .collect();
        let envs = plan
            .environments
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let first = steps
                    .iter()
                    .position(|s| s.plan.env == i)
                    .unwrap_or(steps.len());
                let last = steps
                    .iter()
                    .rposition(|s| s.plan.env == i)
                    .map_or(first, |p| p + 1);
                EnvRun {
                    record: DurableEnv::new(),
                    gate: e.gate.clone(),
                    steps: first..last,
                    members: member_pairs(&steps, first..last),
                    master: e.master.clone(),
                    window: None,
                }
            })
            .collect::<Vec<_>>();
        for pair in envs.iter().flat_map(|e| &e.members) {
            if let Some(verify) = pair.verify {
                steps[pair.upgrade].partner = Some(verify);
                steps[verify].partner = Some(pair.upgrade);
            }
        }
        Self {
            steps,
            envs,
            env_names: plan
                .environments
                .iter()
                .map(|e| e.name.to_string())
                .collect(),
            max_parallel: plan.max_parallel.max(1),
            max_failures: plan.max_failures,
            step_timeout_ms,
            attached,
            record: RunRecord::new(),
        }
    }

    /// Every step, in plan order.
    pub fn steps(&self) -> &[StepRun] {
        &self.steps
    }

    /// Every environment, in plan order.
    pub fn envs(&self) -> &[EnvRun] {
        &self.envs
    }

    /// The name of environment `env`.
    pub fn env_name(&self, env: usize) -> &str {
        &self.env_names[env]
    }

    /// Which environment is named `name`.
    pub fn env_named(&self, name: &str) -> Option<usize> {
        self.env_names.iter().position(|n| n == name)
    }

    pub fn max_parallel(&self) -> u32 {
        self.max_parallel
    }

    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    pub fn step_timeout_ms(&self) -> Millis {
        self.step_timeout_ms
    }

    /// Whether the run has begun ([`super::Event::Start`]).
    pub fn started(&self) -> bool {
        self.record.started
    }

    /// The nodes the run counts as attached.
    pub fn attached(&self) -> &BTreeSet<NodeName> {
        &self.attached
    }

    /// Sets the maintenance window of each environment, in plan order (a run being made or
    /// restored: windows come from the inventory, not from the stored run).
    pub fn set_windows(&mut self, windows: Vec<Option<Window>>) {
        for (env, window) in self.envs.iter_mut().zip(windows) {
            env.window = window;
        }
    }

    /// The verify that follows member upgrade `step` (`None` for any other step).
    pub(super) fn verify_of(&self, step: usize) -> Option<usize> {
        let s = &self.steps[step];
        (s.plan.kind == StepKind::UpgradeMember)
            .then_some(s.partner)
            .flatten()
    }

    /// The member upgrade that member verify `step` verifies (`None` for any other step).
    pub(super) fn upgrade_of(&self, step: usize) -> Option<usize> {
        let s = &self.steps[step];
        (s.plan.kind == StepKind::VerifyMember)
            .then_some(s.partner)
            .flatten()
    }

    /// Whether an attempt of this run is out on an agent (or in the coordinator) with no result yet:
    /// running, or held by its agent at an attended install.
    pub fn has_running_steps(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.record.state == StepState::Running || self.waits_for_install(s))
    }

    /// A step whose agent waits for the operator's attended install.
    pub(super) fn waits_for_install(&self, s: &StepRun) -> bool {
        s.record.state == StepState::Waiting && s.plan.kind.installs()
    }

    /// The coordinator's wait for the operator in the master chain of the environment in progress.
    pub(super) fn operator_wait(&self) -> Option<usize> {
        let env = self.current_env()?;
        self.envs[env].steps.clone().find(|&i| {
            self.steps[i].plan.kind.awaits_operator()
                && self.steps[i].record.state == StepState::Waiting
        })
    }

    /// The gate step of `env`, if its workflow has one (migrate has none).
    pub fn gate_step(&self, env: usize) -> Option<usize> {
        let last = self.envs[env].steps.end.checked_sub(1)?;
        (self.envs[env].steps.contains(&last) && self.steps[last].plan.kind == StepKind::Gate)
            .then_some(last)
    }

    pub fn status(&self) -> RunStatus {
        self.record.status
    }

    /// Why the run is halted, failed, waiting or aborted.
    pub fn reason(&self) -> &str {
        &self.record.reason
    }

    pub(super) fn set(
        &mut self,
        step: usize,
        state: StepState,
        message: impl Into<String>,
        out: &mut Vec<Command>,
    ) {
        let s = &mut self.steps[step];
        let message = message.into();
        if s.record.state != state || s.record.message != message {
            s.record.state = state;
            s.record.message.clone_from(&message);
            out.push(Command::StepChanged {
                step,
                state,
                message,
            });
        }
    }

    pub(super) fn set_env(&mut self, env: usize, status: EnvStatus, out: &mut Vec<Command>) {
        if self.envs[env].record.status != status {
            self.envs[env].record.status = status;
            out.push(Command::EnvChanged { env, status });
        }
    }

    pub(super) fn describe(&self, step: usize) -> String {
        let s = &self.steps[step];
        let env = &self.env_names[s.plan.env];
        match &s.plan.node {
            Some(node) => format!("{} on {node} ({env})", s.plan.kind.name()),
            None => format!("{} of {env}", s.plan.kind.name()),
        }
    }
}

/// The upgrade → verify pairs of the members among `range`: each member upgrade with the first verify
/// of the same node after it.
fn member_pairs(steps: &[StepRun], range: std::ops::Range<usize>) -> Vec<MemberPair> {
    range
        .clone()
        .filter(|&i| steps[i].plan.kind == StepKind::UpgradeMember)
        .map(|upgrade| MemberPair {
            upgrade,
            verify: (upgrade + 1..range.end).find(|&j| {
                steps[j].plan.kind == StepKind::VerifyMember
                    && steps[j].plan.node == steps[upgrade].plan.node
            }),
        })
        .collect()
}
