//! The rollout engine: a pure state machine over one run. No I/O, no clock: time is an input.
//!
//! [`Run::apply`] takes an [`Event`] (a step started or finished, a node attached or detached, an
//! operator's control, a timer tick) with the current time, updates the run, and returns the
//! [`Command`]s for the shell around it: dispatch a step attempt (which the shell persists as
//! dispatched before sending), wake me at a time, and the state changes to persist and show.
//!
//! Attempts are numbered per step (1, 2, …); the shell maps them to attempt uuids. An event for any
//! attempt but a step's current one, or for a step already finished, is a duplicate and changes nothing.
//!
//! The ordering invariants of SPEC §5 hold by construction and are checked by property tests:
//! 1. no member step is dispatched before `verify-master` succeeded in that environment (and the master
//!    chain, backups included, cannot be skipped past);
//! 2. no step of environment k+1 before environment k finished and its gate passed;
//! 3. at most `max_parallel` member steps of an environment in flight;
//! 6. a step planned `already-current` or `newer` is never dispatched;
//! 7. no step is dispatched while its environment's maintenance window is closed.
//!
//! Waits for the operator: a manual gate, an attended install (its agent holds the attempt), and the
//! coordinator's own waits in the master chain ([`StepKind::awaits_operator`]: a migration's review of
//! its export). Such a wait is dispatched like any coordinator step; the shell reports it waiting with
//! what the operator must do ([`Event::StepWaiting`]), and only [`Control::Approve`] passes it.
//!
//! A run survives a coordinator restart: the shell stores each step's [`StepRecord`] and the run's
//! [`Durable`] state with every decision, and [`Run::restore`] rebuilds the same run from them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::domain::NodeName;
use crate::inventory::{Gate, Window};
use crate::plan::{Expected, Plan, PlannedStep, StepKind};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// How long past its step timeout a dispatched step may stay silent before the coordinator fails it
/// (the agent enforces the timeout itself; this covers an agent that never reports).
pub const RESULT_GRACE_MS: Millis = 60_000;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRun {
    pub plan: PlannedStep,
    pub state: StepState,
    /// Attempts dispatched so far; the current attempt is this number.
    pub attempt: u32,
    pub dispatched_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Why skipped, failed, or what it waits for.
    pub message: String,
    /// A soak gate passes at this time.
    pub wait_until: Option<Millis>,
    /// The attempt whose attended install the operator approved (its agent is told to verify).
    pub approved: Option<u32>,
    /// The attempt whose agent restarts the server (its node detaching is expected, not a loss).
    pub rebooting: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRun {
    pub status: EnvStatus,
    pub gate: Gate,
    /// Member steps failed and not retried or skipped.
    pub member_failures: u32,
    /// Failures the operator accepted by resuming a halted run.
    pub failures_accepted: u32,
    /// The master detached while the environment was in progress: halted until it is back and the
    /// operator resumes.
    pub master_lost: bool,
    /// Index range of this environment's steps.
    pub steps: std::ops::Range<usize>,
    /// The master secret server.
    pub master: NodeName,
    /// No step starts while this is closed (invariant 7).
    pub window: Option<Window>,
}

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
    /// The operator says the attended install `step` waits for is done: its agent verifies it.
    ApproveInstall {
        step: usize,
    },
    Retry {
        step: usize,
    },
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
    StepStarted {
        step: usize,
        attempt: u32,
    },
    /// The agent restarts the server its install needs rebooted: the step's timeout starts again (the
    /// agent reports after the reboot).
    StepRebooting {
        step: usize,
        attempt: u32,
        /// What the agent said it does (shown as the step's message).
        message: String,
    },
    /// The agent stopped at an attended install, or the shell at a coordinator wait, and waits for the
    /// operator (`instruction`).
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
    /// The operator approved the attended install of `step`: tell its agent to verify and finish.
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub steps: Vec<StepRun>,
    pub envs: Vec<EnvRun>,
    pub env_names: Vec<String>,
    pub max_parallel: u32,
    pub max_failures: u32,
    pub step_timeout_ms: Millis,
    pub started: bool,
    pub paused: bool,
    pub aborted: bool,
    /// Why the run is halted; `None` when it is not.
    pub halt: Option<String>,
    pub attached: BTreeSet<NodeName>,
    status: RunStatus,
    reason: String,
}

impl Run {
    pub fn new(plan: &Plan, step_timeout_ms: Millis, attached: BTreeSet<NodeName>) -> Self {
        let steps: Vec<StepRun> = plan
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
                    state,
                    attempt: 0,
                    dispatched_at: None,
                    finished_at: None,
                    message,
                    wait_until: None,
                    approved: None,
                    rebooting: None,
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
                    status: EnvStatus::Pending,
                    gate: e.gate.clone(),
                    member_failures: 0,
                    failures_accepted: 0,
                    master_lost: false,
                    steps: first..last,
                    master: e.master.clone(),
                    window: None,
                }
            })
            .collect();
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
            started: false,
            paused: false,
            aborted: false,
            halt: None,
            attached,
            status: RunStatus::Running,
            reason: String::new(),
        }
    }

    /// Whether an attempt of this run is out on an agent (or in the coordinator) with no result yet:
    /// running, or held by its agent at an attended install.
    pub fn has_running_steps(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.state == StepState::Running || self.waits_for_install(s))
    }

    /// A step whose agent waits for the operator's attended install.
    fn waits_for_install(&self, s: &StepRun) -> bool {
        s.state == StepState::Waiting && s.plan.kind.installs()
    }

    /// The coordinator's wait for the operator in the master chain of the environment in progress.
    fn operator_wait(&self) -> Option<usize> {
        let env = self.current_env()?;
        self.envs[env].steps.clone().find(|&i| {
            self.steps[i].plan.kind.awaits_operator() && self.steps[i].state == StepState::Waiting
        })
    }

    /// The gate step of `env`, if its workflow has one (migrate has none).
    pub fn gate_step(&self, env: usize) -> Option<usize> {
        let last = self.envs[env].steps.end.checked_sub(1)?;
        (self.envs[env].steps.contains(&last) && self.steps[last].plan.kind == StepKind::Gate)
            .then_some(last)
    }

    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// Why the run is halted, failed, waiting or aborted.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Applies `event` at time `now`. Controls the run's state does not allow are refused, and change nothing.
    pub fn apply(&mut self, event: Event, now: Millis) -> Result<Vec<Command>, Refused> {
        let mut out = Vec::new();
        match event {
            Event::Start => self.started = true,
            Event::Tick => self.check_timers(now, &mut out),
            Event::NodeAttached(node) => {
                self.attached.insert(node);
            }
            Event::NodesAttached(nodes) => self.attached.extend(nodes),
            Event::NodeDetached(node) => {
                self.attached.remove(&node);
                self.master_detached(&node, &mut out);
            }
            Event::StepStarted { .. } => {}
            Event::StepRebooting {
                step,
                attempt,
                message,
            } => {
                if let Some(s) = self.steps.get_mut(step)
                    && s.attempt == attempt
                    && s.state == StepState::Running
                    && s.rebooting != Some(attempt)
                {
                    s.dispatched_at = Some(now);
                    s.rebooting = Some(attempt);
                    self.set(step, StepState::Running, message, &mut out);
                }
            }
            Event::StepWaiting {
                step,
                attempt,
                instruction,
            } => {
                let waits = self.steps.get(step).is_some_and(|s| {
                    s.attempt == attempt
                        && s.state == StepState::Running
                        && s.approved != Some(attempt)
                        && (s.plan.kind.installs() || s.plan.kind.awaits_operator())
                        && !self.aborted
                });
                if waits {
                    let message = with_install_reason(instruction, &self.steps[step].plan);
                    self.set(step, StepState::Waiting, message, &mut out);
                }
            }
            Event::StepFinished {
                step,
                attempt,
                outcome,
            } => self.finished(step, attempt, outcome, now, &mut out),
            Event::StepNotDelivered { step, attempt } => {
                if self
                    .steps
                    .get(step)
                    .is_some_and(|s| s.attempt == attempt && s.state == StepState::Running)
                {
                    self.steps[step].dispatched_at = None;
                    self.set(
                        step,
                        StepState::Pending,
                        format!("attempt {attempt} never reached its agent; it starts again"),
                        &mut out,
                    );
                }
            }
            Event::StepAlreadyDone {
                step,
                attempt,
                message,
            } => {
                if self.steps.get(step).is_some_and(|s| {
                    s.attempt == attempt
                        && s.state == StepState::Running
                        && matches!(
                            s.plan.kind,
                            StepKind::UpgradeMaster | StepKind::UpgradeMember
                        )
                }) {
                    self.steps[step].finished_at = Some(now);
                    self.set(step, StepState::Succeeded, message, &mut out);
                }
            }
            Event::Control(control) => self.control(control, now, &mut out)?,
        }
        if self.started {
            self.advance(now, &mut out);
        }
        self.update_status(now, &mut out);
        Ok(out)
    }

    /// Sets the maintenance window of each environment, in plan order.
    pub fn set_windows(&mut self, windows: Vec<Option<Window>>) {
        for (env, window) in self.envs.iter_mut().zip(windows) {
            env.window = window;
        }
    }

    /// The state [`Run::restore`] needs besides the step records; small, stored with every decision.
    pub fn durable(&self) -> Durable {
        Durable {
            started: self.started,
            paused: self.paused,
            aborted: self.aborted,
            halt: self.halt.clone(),
            status: self.status,
            reason: self.reason.clone(),
            envs: self
                .envs
                .iter()
                .map(|e| DurableEnv {
                    status: e.status,
                    member_failures: e.member_failures,
                    failures_accepted: e.failures_accepted,
                    master_lost: e.master_lost,
                })
                .collect(),
        }
    }

    pub fn step_record(&self, step: usize) -> StepRecord {
        let s = &self.steps[step];
        StepRecord {
            state: s.state,
            attempt: s.attempt,
            dispatched_at: s.dispatched_at,
            finished_at: s.finished_at,
            message: s.message.clone(),
            wait_until: s.wait_until,
            approved: s.approved,
            rebooting: s.rebooting,
        }
    }

    /// The run as it was stored: `Run::new` of its plan, then the stored step records and state. No
    /// node counts as attached until it attaches again.
    pub fn restore(
        plan: &Plan,
        step_timeout_ms: Millis,
        windows: Vec<Option<Window>>,
        records: Vec<StepRecord>,
        durable: Durable,
    ) -> Result<Self, String> {
        let mut run = Self::new(plan, step_timeout_ms, BTreeSet::new());
        run.set_windows(windows);
        if records.len() != run.steps.len() || durable.envs.len() != run.envs.len() {
            return Err(format!(
                "the stored run has {} steps and {} environments, its plan {} and {}",
                records.len(),
                durable.envs.len(),
                run.steps.len(),
                run.envs.len()
            ));
        }
        for (step, r) in run.steps.iter_mut().zip(records) {
            step.state = r.state;
            step.attempt = r.attempt;
            step.dispatched_at = r.dispatched_at;
            step.finished_at = r.finished_at;
            step.message = r.message;
            step.wait_until = r.wait_until;
            step.approved = r.approved;
            step.rebooting = r.rebooting;
        }
        for (env, d) in run.envs.iter_mut().zip(durable.envs) {
            env.status = d.status;
            env.member_failures = d.member_failures;
            env.failures_accepted = d.failures_accepted;
            env.master_lost = d.master_lost;
        }
        run.started = durable.started;
        run.paused = durable.paused;
        run.aborted = durable.aborted;
        run.halt = durable.halt;
        run.status = durable.status;
        run.reason = durable.reason;
        Ok(run)
    }

    /// A master that detaches while its environment is in progress halts the environment: nothing
    /// new starts there until it is back and the operator resumes. Its own step is not failed: that
    /// waits for the step timeout (its result may still arrive).
    fn master_detached(&mut self, node: &NodeName, out: &mut Vec<Command>) {
        let Some(env) = self.current_env() else {
            return;
        };
        let e = &self.envs[env];
        let in_progress = matches!(e.status, EnvStatus::Running | EnvStatus::WaitingGate);
        // The master's agent said it restarts the server: its going away is the reboot.
        // Or its install waits for the operator, who may restart the server as setup asks.
        let rebooting = self.steps[e.steps.clone()].iter().any(|s| {
            s.plan.node.as_ref() == Some(node)
                && ((s.state == StepState::Running && s.rebooting == Some(s.attempt))
                    || self.waits_for_install(s))
        });
        if &e.master != node || rebooting || !in_progress || self.aborted || self.status.is_final()
        {
            return;
        }
        self.envs[env].master_lost = true;
        if self.halt.is_none() {
            self.halt = Some(format!(
                "the master {node} of {} detached: nothing more starts there until it re-attaches and the operator resumes",
                self.env_names[env]
            ));
        }
        self.set_env(env, EnvStatus::Halted, out);
    }

    /// Whether `env`'s window allows a step to start at `now`.
    fn window_open(&self, env: usize, now: Millis) -> bool {
        self.envs[env]
            .window
            .as_ref()
            .is_none_or(|w| w.is_open(now))
    }

    fn set(
        &mut self,
        step: usize,
        state: StepState,
        message: impl Into<String>,
        out: &mut Vec<Command>,
    ) {
        let s = &mut self.steps[step];
        let message = message.into();
        if s.state != state || s.message != message {
            s.state = state;
            s.message.clone_from(&message);
            out.push(Command::StepChanged {
                step,
                state,
                message,
            });
        }
    }

    fn set_env(&mut self, env: usize, status: EnvStatus, out: &mut Vec<Command>) {
        if self.envs[env].status != status {
            self.envs[env].status = status;
            out.push(Command::EnvChanged { env, status });
        }
    }

    fn describe(&self, step: usize) -> String {
        let s = &self.steps[step];
        let env = &self.env_names[s.plan.env];
        match &s.plan.node {
            Some(node) => format!("{} on {node} ({env})", s.plan.kind.name()),
            None => format!("{} of {env}", s.plan.kind.name()),
        }
    }

    fn finished(
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
        if attempt != s.attempt || !(s.state == StepState::Running || self.waits_for_install(s)) {
            return;
        }
        // A wait for the operator passes only by the operator's approval; it fails when the shell
        // cannot say what it waits for.
        if s.plan.kind.awaits_operator() && outcome == Outcome::Succeeded {
            return;
        }
        self.steps[step].finished_at = Some(now);
        match outcome {
            Outcome::Succeeded => self.set(step, StepState::Succeeded, "", out),
            Outcome::Failed(error) => self.fail(step, error, out),
        }
    }

    fn fail(&mut self, step: usize, error: String, out: &mut Vec<Command>) {
        let kind = self.steps[step].plan.kind;
        let env = self.steps[step].plan.env;
        self.set(step, StepState::Failed, error.clone(), out);
        let what = self.describe(step);
        if kind.is_member_step() {
            self.envs[env].member_failures += 1;
            if kind == StepKind::UpgradeMember {
                self.set(step + 1, StepState::Skipped, "the upgrade failed", out);
            }
            let e = &self.envs[env];
            if e.member_failures > self.max_failures + e.failures_accepted && self.halt.is_none() {
                self.halt = Some(format!(
                    "{} member failure(s) in {} exceed max_failures = {} (last: {what}: {error})",
                    e.member_failures, self.env_names[env], self.max_failures
                ));
                self.set_env(env, EnvStatus::Halted, out);
            }
        } else {
            self.halt = Some(format!("{what} failed: {error}"));
            self.set_env(env, EnvStatus::Halted, out);
        }
    }

    fn check_timers(&mut self, now: Millis, out: &mut Vec<Command>) {
        for i in 0..self.steps.len() {
            let s = &self.steps[i];
            let silent = s.state == StepState::Running
                && s.dispatched_at
                    .is_some_and(|at| now > at + self.step_timeout_ms + RESULT_GRACE_MS);
            if silent {
                let error = format!(
                    "no result within the step timeout ({} s) and {} s of grace",
                    self.step_timeout_ms / 1000,
                    RESULT_GRACE_MS / 1000
                );
                self.steps[i].finished_at = Some(now);
                self.fail(i, error, out);
            }
        }
    }

    fn control(
        &mut self,
        control: Control,
        now: Millis,
        out: &mut Vec<Command>,
    ) -> Result<(), Refused> {
        if self.status.is_final() {
            return Err(Refused(format!(
                "the run is {}; nothing can change it",
                self.status.as_str()
            )));
        }
        match control {
            Control::Pause => {
                if self.paused {
                    return Err(Refused("the run is already paused".into()));
                }
                self.paused = true;
            }
            Control::Resume => {
                // One resume lifts a pause and, where it can, a halt.
                if self.paused {
                    self.paused = false;
                    if self.halt.is_some() {
                        let _ = self.resume_halted(out);
                    }
                } else if self.halt.is_some() {
                    self.resume_halted(out)?;
                } else {
                    return Err(Refused("the run is neither paused nor halted".into()));
                }
            }
            Control::Abort => {
                self.aborted = true;
                // Nothing runs at an attended install's wait: it ends now (a dead server must not
                // keep the run open), and its agent is told to drop the attempt.
                for step in 0..self.steps.len() {
                    if self.waits_for_install(&self.steps[step]) {
                        let attempt = self.steps[step].attempt;
                        self.steps[step].finished_at = Some(now);
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
                    if s.state == StepState::Running && s.plan.kind.cancellable() {
                        let attempt = s.attempt;
                        out.push(Command::Cancel { step, attempt });
                    }
                    // The coordinator's own waits, and its preflight (it only reads), end with the
                    // run: nothing is out anywhere. A late preflight answer is then stale.
                    let s = &self.steps[step];
                    if s.plan.kind == StepKind::Preflight && s.state == StepState::Running {
                        self.steps[step].finished_at = Some(now);
                        self.set(
                            step,
                            StepState::Failed,
                            "ended: the run was aborted during preflight",
                            out,
                        );
                    }
                    let s = &self.steps[step];
                    if s.plan.kind.awaits_operator() && s.state.in_flight() {
                        self.steps[step].finished_at = Some(now);
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
                        s.state.as_str()
                    )));
                }
                if self.aborted {
                    return Err(Refused("the run is aborted".into()));
                }
                let attempt = s.attempt;
                // The verification is a step of its own now, with the step timeout.
                self.steps[step].dispatched_at = Some(now);
                self.steps[step].approved = Some(attempt);
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
                    self.steps[wait].finished_at = Some(now);
                    self.set(wait, StepState::Succeeded, "approved", out);
                    return Ok(());
                }
                let gate = self
                    .current_env()
                    .and_then(|env| self.gate_step(env))
                    .filter(|&g| {
                        self.steps[g].state == StepState::Waiting
                            && self.envs[self.steps[g].plan.env].gate == Gate::Manual
                    });
                let Some(gate) = gate else {
                    return Err(Refused(
                        "nothing waits for approval: no manual gate, no review (an attended install is approved with --node N)".into(),
                    ));
                };
                self.steps[gate].finished_at = Some(now);
                self.set(gate, StepState::Succeeded, "approved", out);
            }
            Control::Retry { step } => self.retry(step, out)?,
            Control::Skip { step } => self.skip(step, now, out)?,
        }
        Ok(())
    }

    fn resume_halted(&mut self, out: &mut Vec<Command>) -> Result<(), Refused> {
        let chain_failed = self
            .steps
            .iter()
            .position(|s| s.state == StepState::Failed && s.plan.kind.in_master_chain());
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
            env.master_lost = false;
        }
        // Member failures beyond max_failures: the operator accepts them and the run goes on.
        for env in 0..self.envs.len() {
            let e = &mut self.envs[env];
            e.failures_accepted = e.member_failures.saturating_sub(self.max_failures);
            if e.status == EnvStatus::Halted {
                self.unhalt(env, out);
            }
        }
        self.halt = None;
        Ok(())
    }

    fn retry(&mut self, step: usize, out: &mut Vec<Command>) -> Result<(), Refused> {
        let s = self
            .steps
            .get(step)
            .ok_or_else(|| Refused(format!("no step {step} in this run")))?;
        if s.state != StepState::Failed {
            return Err(Refused(format!(
                "{} is {}, not failed",
                self.describe(step),
                s.state.as_str()
            )));
        }
        let env = s.plan.env;
        let kind = s.plan.kind;
        self.require_current(env)?;
        self.set(step, StepState::Pending, "retry", out);
        self.reopen_gate(env, out);
        if kind.is_member_step() {
            let e = &mut self.envs[env];
            e.member_failures -= 1;
            // A failure the operator accepted and then retried or skipped is no longer accepted either.
            e.failures_accepted = e.failures_accepted.min(e.member_failures);
            if kind == StepKind::UpgradeMember && self.steps[step + 1].state == StepState::Skipped {
                self.set(step + 1, StepState::Pending, "", out);
            }
        }
        self.clear_halt_if_resolved(env, out);
        Ok(())
    }

    fn skip(&mut self, step: usize, now: Millis, out: &mut Vec<Command>) -> Result<(), Refused> {
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
        if !matches!(s.state, StepState::Failed | StepState::Pending) && !waiting {
            return Err(Refused(format!(
                "{} is {}: only a failed, pending or waiting step can be skipped",
                self.describe(step),
                s.state.as_str()
            )));
        }
        if s.plan.kind == StepKind::VerifyMember
            && !self.steps[step - 1].state.is_done()
            && self.steps[step - 1].state != StepState::Failed
        {
            return Err(Refused(format!(
                "{} cannot be skipped before its upgrade finished: skip the upgrade instead",
                self.describe(step)
            )));
        }
        if waiting {
            // Its agent drops the attempt (nothing ran there).
            let attempt = s.attempt;
            out.push(Command::Cancel { step, attempt });
        }
        let env = s.plan.env;
        let was_failed = s.state == StepState::Failed;
        let kind = s.plan.kind;
        self.require_current(env)?;
        self.reopen_gate(env, out);
        if was_failed {
            let e = &mut self.envs[env];
            e.member_failures -= 1;
            // A failure the operator accepted and then retried or skipped is no longer accepted either.
            e.failures_accepted = e.failures_accepted.min(e.member_failures);
        }
        self.steps[step].finished_at = Some(now);
        self.set(step, StepState::Skipped, "skipped by the operator", out);
        if kind == StepKind::UpgradeMember
            && matches!(
                self.steps[step + 1].state,
                StepState::Pending | StepState::Skipped
            )
        {
            self.set(step + 1, StepState::Skipped, "its upgrade was skipped", out);
        }
        self.clear_halt_if_resolved(env, out);
        Ok(())
    }

    /// Retry and skip act on the environment being upgraded; a finished one is history.
    fn require_current(&self, env: usize) -> Result<(), Refused> {
        if self.current_env() == Some(env) {
            Ok(())
        } else {
            let state = if self.envs[env].status == EnvStatus::Succeeded {
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
    fn reopen_gate(&mut self, env: usize, out: &mut Vec<Command>) {
        let Some(gate) = self.gate_step(env) else {
            return;
        };
        let passed_but_held = self.steps[gate].state == StepState::Succeeded
            && self.envs[env].status != EnvStatus::Succeeded;
        if self.steps[gate].state == StepState::Waiting || passed_but_held {
            self.steps[gate].finished_at = None;
            self.steps[gate].wait_until = None;
            self.set(gate, StepState::Pending, "", out);
            self.set_env(env, EnvStatus::Running, out);
        }
    }

    /// A halted environment goes on: waiting at its gate if the gate already waits, else running.
    fn unhalt(&mut self, env: usize, out: &mut Vec<Command>) {
        let gate_waits = self
            .gate_step(env)
            .is_some_and(|g| self.steps[g].state == StepState::Waiting);
        let status = if gate_waits {
            EnvStatus::WaitingGate
        } else {
            EnvStatus::Running
        };
        self.set_env(env, status, out);
    }

    /// A master whose detachment halted its environment and that has not re-attached.
    fn lost_master(&self) -> Option<NodeName> {
        self.envs
            .iter()
            .filter(|e| e.master_lost && !self.attached.contains(&e.master))
            .map(|e| e.master.clone())
            .next()
    }

    /// After a retry or skip in `env`: the run goes on when nothing else holds it; otherwise the
    /// halt's reason says what remains (never a reason that no longer holds).
    fn clear_halt_if_resolved(&mut self, env: usize, out: &mut Vec<Command>) {
        if let Some(step) = self
            .steps
            .iter()
            .position(|s| s.state == StepState::Failed && s.plan.kind.in_master_chain())
        {
            self.halt = Some(format!(
                "{} failed: retry it or abort the run (members never start on an unverified master)",
                self.describe(step)
            ));
            return;
        }
        // A master that detached and is back: the operator acting on its environment is the word a
        // resume would give.
        let e = &mut self.envs[env];
        if e.master_lost && self.attached.contains(&e.master) {
            e.master_lost = false;
        }
        let e = &self.envs[env];
        if e.master_lost {
            self.halt = Some(format!(
                "the master {} of {} is still detached: the run goes on once it has re-attached (`fleetctl nodes`) and the operator resumes",
                e.master, self.env_names[env]
            ));
        } else if e.member_failures > self.max_failures + e.failures_accepted {
            // Still over: say how things stand now; a retried step starts once the halt is lifted.
            self.halt = Some(format!(
                "{} member failure(s) in {} exceed max_failures = {}: retry or skip them, or resume to accept them (retried steps start then)",
                e.member_failures, self.env_names[env], self.max_failures
            ));
        } else {
            self.halt = None;
            if self.envs[env].status == EnvStatus::Halted {
                self.unhalt(env, out);
            }
        }
    }

    /// The first environment that has not succeeded.
    fn current_env(&self) -> Option<usize> {
        self.envs
            .iter()
            .position(|e| e.status != EnvStatus::Succeeded)
    }

    /// Starts what may start now.
    fn advance(&mut self, now: Millis, out: &mut Vec<Command>) {
        while let Some(env) = self.current_env() {
            if self.aborted || self.halt.is_some() || self.envs[env].status == EnvStatus::Halted {
                return;
            }
            if self.envs[env].status == EnvStatus::Pending {
                if self.paused {
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

    fn dispatch(&mut self, step: usize, now: Millis, out: &mut Vec<Command>) {
        let s = &mut self.steps[step];
        s.attempt += 1;
        s.dispatched_at = Some(now);
        s.finished_at = None;
        let attempt = s.attempt;
        self.set(step, StepState::Running, format!("attempt {attempt}"), out);
        out.push(Command::Dispatch { step, attempt });
    }

    fn may_dispatch_to(&self, step: usize, now: Millis) -> bool {
        !self.paused
            && self.window_open(self.steps[step].plan.env, now)
            && self.steps[step]
                .plan
                .node
                .as_ref()
                .is_none_or(|n| self.attached.contains(n))
    }

    /// Moves environment `env` on; true once it has finished (gate passed).
    fn advance_env(&mut self, env: usize, now: Millis, out: &mut Vec<Command>) -> bool {
        let range = self.envs[env].steps.clone();
        // The master chain, in order.
        for step in range.clone() {
            let s = &self.steps[step];
            if !s.plan.kind.in_master_chain() {
                break;
            }
            match s.state {
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
        let members: Vec<usize> = range
            .clone()
            .filter(|&i| self.steps[i].plan.kind == StepKind::UpgradeMember)
            .collect();
        let mut in_flight = members
            .iter()
            .filter(|&&u| self.steps[u].state.in_flight() || self.steps[u + 1].state.in_flight())
            .count();
        for &upgrade in &members {
            let verify = upgrade + 1;
            let next = match (self.steps[upgrade].state, self.steps[verify].state) {
                (StepState::Pending, _) => Some(upgrade),
                (StepState::Succeeded, StepState::Pending) => Some(verify),
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
        let terminal = |s: StepState| {
            !matches!(
                s,
                StepState::Pending | StepState::Running | StepState::Waiting
            )
        };
        let members_finished = members
            .iter()
            .all(|&u| terminal(self.steps[u].state) && terminal(self.steps[u + 1].state));
        if !members_finished {
            return false;
        }
        // The gate (a workflow without one has finished here).
        let Some(gate) = self.gate_step(env) else {
            return true;
        };
        match self.steps[gate].state {
            StepState::Succeeded => true,
            StepState::Pending => {
                if self.paused {
                    return false;
                }
                match self.envs[env].gate.clone() {
                    Gate::Auto => {
                        self.steps[gate].finished_at = Some(now);
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
                        self.steps[gate].wait_until = Some(until);
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
                    .wait_until
                    .is_some_and(|until| now >= until);
                if soaked {
                    self.steps[gate].finished_at = Some(now);
                    self.set(gate, StepState::Succeeded, "soaked", out);
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    fn update_status(&mut self, now: Millis, out: &mut Vec<Command>) {
        let (status, reason) = self.derive_status(now);
        if status != self.status || reason != self.reason {
            self.status = status;
            self.reason.clone_from(&reason);
            out.push(Command::RunChanged { status, reason });
        }
    }

    fn derive_status(&self, now: Millis) -> (RunStatus, String) {
        let in_flight = self.has_running_steps();
        if self.aborted {
            let installing = self
                .steps
                .iter()
                .position(|s| s.state == StepState::Running && !s.plan.kind.cancellable());
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
        if self.envs.iter().all(|e| e.status == EnvStatus::Succeeded) {
            let failed = self
                .steps
                .iter()
                .filter(|s| s.state == StepState::Failed)
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
        if let Some(halt) = &self.halt {
            return (RunStatus::Halted, halt.clone());
        }
        if self.paused {
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
                    format!("attended install on {node}: {}{more}", first.message),
                );
            }
            if let Some(wait) = self.operator_wait() {
                return (
                    RunStatus::WaitingApproval,
                    format!("{}: {}", self.describe(wait), self.steps[wait].message),
                );
            }
            let gate = self.gate_step(env).map(|g| &self.steps[g]);
            if let Some(gate) = gate
                && gate.state == StepState::Waiting
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
                .any(|s| s.state == StepState::Pending);
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
            if !self.steps.iter().any(|s| s.state == StepState::Running)
                && let Some(step) = self.steps[self.envs[env].steps.clone()].iter().find(|s| {
                    s.state == StepState::Pending
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

/// The run-level state stored with every decision (the steps are stored as [`StepRecord`]s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub started: bool,
    pub paused: bool,
    pub aborted: bool,
    pub halt: Option<String>,
    pub status: RunStatus,
    pub reason: String,
    pub envs: Vec<DurableEnv>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableEnv {
    pub status: EnvStatus,
    pub member_failures: u32,
    pub failures_accepted: u32,
    pub master_lost: bool,
}

/// One step's state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub state: StepState,
    pub attempt: u32,
    pub dispatched_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub message: String,
    pub wait_until: Option<Millis>,
    pub approved: Option<u32>,
    pub rebooting: Option<u32>,
}

#[cfg(test)]
mod migrate_tests;
#[cfg(test)]
mod tests;
