//! The run's durable form: what is stored with every decision, and the run rebuilt from it after a
//! restart. One type per level — [`StepRecord`] for a step, [`RunRecord`] and [`DurableEnv`] for the
//! run and its environments — held by the live run as they are stored, so a field is added once.
//!
//! The stored forms must keep loading: [`Durable`] is stored as JSON (`runs.engine_state`) with its
//! field names as they are; [`StepRecord`] as the columns of `steps`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{EnvStatus, Millis, Run, RunStatus, StepState};
use crate::domain::NodeName;
use crate::inventory::Window;
use crate::plan::Plan;

/// One step's state, as the run holds it and as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
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

impl StepRecord {
    /// A step as planned: never dispatched.
    pub(super) fn new(state: StepState, message: String) -> Self {
        Self {
            state,
            attempt: 0,
            dispatched_at: None,
            finished_at: None,
            message,
            wait_until: None,
            approved: None,
            rebooting: None,
        }
    }
}

/// The run-level state stored with every decision (the steps are stored as [`StepRecord`]s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// Stored flat: the JSON has the run's fields, then `envs`.
    #[serde(flatten)]
    pub(super) run: RunRecord,
    pub(super) envs: Vec<DurableEnv>,
}

/// The run's own state: started, paused, aborted, halted, and its status as derived last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub(super) started: bool,
    pub(super) paused: bool,
    pub(super) aborted: bool,
    /// Why the run is halted; `None` when it is not.
    pub(super) halt: Option<String>,
    pub(super) status: RunStatus,
    pub(super) reason: String,
}

impl RunRecord {
    pub(super) fn new() -> Self {
        Self {
            started: false,
            paused: false,
            aborted: false,
            halt: None,
            status: RunStatus::Running,
            reason: String::new(),
        }
    }
}

/// An environment's state, as the run holds it and as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableEnv {
    pub(super) status: EnvStatus,
    /// Member steps failed and not retried or skipped.
    pub(super) member_failures: u32,
    /// Failures the operator accepted by resuming a halted run.
    pub(super) failures_accepted: u32,
    /// The master detached while the environment was in progress: halted until it is back and the
    /// operator resumes.
    pub(super) master_lost: bool,
}

impl DurableEnv {
    pub(super) fn new() -> Self {
        Self {
            status: EnvStatus::Pending,
            member_failures: 0,
            failures_accepted: 0,
            master_lost: false,
        }
    }
}

impl Run {
    /// The state [`Run::restore`] needs besides the step records; small, stored with every decision.
    pub fn durable(&self) -> Durable {
        Durable {
            run: self.record.clone(),
            envs: self.envs.iter().map(|e| e.record.clone()).collect(),
        }
    }

    /// Step `step`'s state as it is stored.
    pub fn step_record(&self, step: usize) -> StepRecord {
        self.steps[step].record.clone()
    }

    /// The run as it was stored: `Run::new` of its plan with `attached` (a coordinator that restarts
    /// counts none until they attach again), then the stored step records and state.
    pub fn restore(
        plan: &Plan,
        step_timeout_ms: Millis,
        windows: Vec<Option<Window>>,
        records: Vec<StepRecord>,
        durable: Durable,
        attached: BTreeSet<NodeName>,
    ) -> Result<Self, String> {
        let mut run = Self::new(plan, step_timeout_ms, attached);
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
        for (step, record) in run.steps.iter_mut().zip(records) {
            step.record = record;
        }
        for (env, record) in run.envs.iter_mut().zip(durable.envs) {
            env.record = record;
        }
        run.record = durable.run;
        Ok(run)
    }
}
