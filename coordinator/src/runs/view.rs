//! What the run manager shows of runs, in its own terms: a run ([`RunView`]), the list of runs
//! ([`RunSummaryView`]) and run events ([`RunEventView`]), read back from the store and the engine.
//! The gRPC layer (`grpc::run_wire`) puts them on the wire.

use std::collections::HashMap;

use crate::engine::{EnvStatus, Millis, Run, RunStatus, StepState};
use crate::inventory::Gate;
use crate::plan::{Plan, Selection, StepKind, Workflow};
use crate::protocol::{Artifact, LogLine, LogStream, Output, Progress, WaitReason, Waiting};
use crate::store::{LogRow, StoredEvent};

/// A run as `GetRun` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub id: String,
    pub workflow: Workflow,
    /// `None`: a state this build does not know.
    pub state: Option<RunStatus>,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub started_by: String,
    /// Why halted, failed, aborted or waiting.
    pub reason: String,
    /// The seq of the run's latest stored event.
    pub last_event_seq: u64,
    pub target_version: String,
    pub installer: String,
    pub plan_hash: String,
    pub selection: SelectionView,
    /// Every environment of the run, in plan order.
    pub environments: Vec<EnvironmentView>,
    pub steps: Vec<StepView>,
    /// The members' installer (else the master's) as preflight recorded it; empty: not yet.
    pub installer_sha256: String,
    pub master_installer: String,
    pub master_installer_sha256: String,
}

/// A run's selection as it was started: the environments named (none: all), and the limits the run
/// applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectionView {
    pub workflow: Workflow,
    pub environments: Vec<String>,
    pub master_only: bool,
    pub max_parallel: Option<u32>,
    pub max_failures: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentView {
    pub name: String,
    /// `None` for a run stored before its plan was (names only).
    pub state: Option<EnvStatus>,
    /// `auto`, `manual`, `soak 10m`; empty: none (the migrate workflow).
    pub gate: String,
    /// See [`waiting_for`].
    pub waiting_for: String,
    pub member_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepView {
    pub index: usize,
    pub environment: String,
    pub node: Option<String>,
    pub step: String,
    pub state: Option<StepState>,
    pub attempts: u32,
    /// The latest attempt's id; empty before the first.
    pub attempt_id: String,
    /// 100 once succeeded; else the last percent the latest attempt reported.
    pub percent: u32,
    pub message: String,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub artifacts: Vec<Artifact>,
    /// The latest attempt's outputs (the last value of a key).
    pub outputs: HashMap<String, String>,
    pub batch: u32,
}

/// One run of `ListRuns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummaryView {
    pub id: String,
    pub workflow: Workflow,
    pub state: Option<RunStatus>,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub started_by: String,
    /// In plan order.
    pub environments: Vec<String>,
}

/// A run event: from the run's event log (`seq` > 0), or a step's progress, output, log line or
/// wait as its agent reported it (`seq` 0: streamed live, or read back by `Logs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunEventView {
    pub seq: u64,
    pub at: Millis,
    pub run_id: String,
    pub environment: String,
    pub node: Option<String>,
    pub step: String,
    pub attempt_id: String,
    /// `None`: a kind the operator API does not show.
    pub kind: Option<RunEventKind>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEventKind {
    RunState {
        state: Option<RunStatus>,
        reason: String,
    },
    StepState {
        state: Option<StepState>,
        attempt_id: String,
        attempt: u32,
        message: String,
    },
    EnvironmentState {
        state: Option<EnvStatus>,
        /// At a gate: what it waits for.
        waiting_for: String,
    },
    Progress(Progress),
    Output(Output),
    Log(LogLine),
    Waiting(Waiting),
}

impl RunEventView {
    /// Whether the event ends the run (no live event follows it).
    pub fn ends_the_run(&self) -> bool {
        matches!(
            &self.kind,
            Some(RunEventKind::RunState { state: Some(s), .. }) if s.is_final()
        )
    }

    /// About what the event takes on the wire (its text, and a little for the rest): a page of a log
    /// is bounded with it.
    pub fn size(&self) -> usize {
        let text = match &self.kind {
            Some(RunEventKind::RunState { reason, .. }) => reason.len(),
            Some(RunEventKind::StepState {
                attempt_id,
                message,
                ..
            }) => attempt_id.len() + message.len(),
            Some(RunEventKind::EnvironmentState { waiting_for, .. }) => waiting_for.len(),
            Some(RunEventKind::Progress(p)) => p.message.len(),
            Some(RunEventKind::Output(o)) => o.key.len() + o.value.len(),
            Some(RunEventKind::Log(l)) => l.line.len(),
            Some(RunEventKind::Waiting(w)) => w.instruction.len() + w.boot_id.len(),
            None => 0,
        };
        64 + text
            + self.run_id.len()
            + self.environment.len()
            + self.node.as_ref().map_or(0, String::len)
            + self.step.len()
            + self.attempt_id.len()
    }
}

/// A stored workflow's name back (a run stored before workflows were is an upgrade).
pub(super) fn workflow(stored: &str) -> Workflow {
    match stored {
        "migrate" => Workflow::Migrate,
        _ => Workflow::Upgrade,
    }
}

/// How a run's selection is stored at its start: the environments named (none: all), and the limits
/// the run applies (the selection's, else the inventory's policy, as planned).
pub fn selection_json(selection: &Selection, plan: &Plan) -> String {
    serde_json::json!({
        "workflow": plan.workflow.as_str(),
        "environments": selection.environments.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "master_only": selection.master_only,
        "max_parallel": plan.max_parallel,
        "max_failures": plan.max_failures,
    })
    .to_string()
}

/// A stored selection ([`selection_json`]) back; `workflow` is the run's stored workflow.
pub fn selection(stored: &str, workflow_name: &str) -> SelectionView {
    let value: serde_json::Value = serde_json::from_str(stored).unwrap_or_default();
    let environments: Vec<String> = value
        .get("environments")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let limit = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    SelectionView {
        workflow: workflow(workflow_name),
        environments,
        master_only: value
            .get("master_only")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        max_parallel: limit("max_parallel"),
        max_failures: limit("max_failures"),
    }
}

/// Every environment of a run, in plan order. The engine has no failed, skipped or window-waiting
/// environment: a closed window, or a failure, shows in the run's state and reason.
pub(super) fn environments(run: &Run) -> Vec<EnvironmentView> {
    run.envs()
        .iter()
        .enumerate()
        .map(|(env, e)| EnvironmentView {
            name: run.env_name(env).to_string(),
            state: Some(e.status()),
            // The migrate workflow has none.
            gate: run
                .gate_step(env)
                .map(|_| e.gate().to_string())
                .unwrap_or_default(),
            waiting_for: waiting_for(run, env),
            member_failures: e.member_failures(),
        })
        .collect()
}

/// What an environment waits for (`RunEnvironment.waiting_for`): at its gate, what the gate waits
/// for ([`gate_wait`]); in progress, the operator's approval of a step that waits for it (an
/// attended install, a migration's review); otherwise nothing.
fn waiting_for(run: &Run, env: usize) -> String {
    match run.envs()[env].status() {
        EnvStatus::WaitingGate => gate_wait(run, env),
        EnvStatus::Running => run.steps()[run.envs()[env].steps()]
            .iter()
            .find(|s| s.state() == StepState::Waiting && s.plan().kind != StepKind::Gate)
            .map(|s| match &s.plan().node {
                Some(node) => format!("approval of {node} {}", s.plan().kind.name()),
                None => format!("approval of {}", s.plan().kind.name()),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// What an environment's gate waits for: `approval` (a manual gate), or `soak until <time>` (the
/// soak's end, RFC 3339; `soak <duration>` before it began).
fn gate_wait(run: &Run, env: usize) -> String {
    match run.envs()[env].gate() {
        Gate::Auto => String::new(),
        Gate::Manual => "approval".into(),
        Gate::Soak(duration) => match run
            .gate_step(env)
            .and_then(|g| run.steps()[g].record().wait_until)
        {
            Some(until) => format!("soak until {}", rfc3339(until)),
            None => format!("soak {}", humantime::format_duration(*duration)),
        },
    }
}

fn rfc3339(at: Millis) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A stored run event, with the step's environment, node and name from the run, and what an
/// environment's gate waits for.
pub(super) fn run_event(run_id: &str, run: &Run, e: &StoredEvent) -> RunEventView {
    let mut event = plain_event(run_id, e);
    if let Some(step) = e.step.and_then(|i| run.steps().get(i)) {
        event.environment = run.env_name(step.plan().env).to_string();
        event.node = step.plan().node.as_ref().map(ToString::to_string);
        event.step = step.plan().kind.name().to_string();
    }
    if let Some(RunEventKind::EnvironmentState {
        state: Some(EnvStatus::WaitingGate),
        waiting_for,
    }) = &mut event.kind
        && let Some(env) = run.env_named(&event.environment)
    {
        *waiting_for = gate_wait(run, env);
    }
    event
}

/// A stored run event as it was stored (without the run: a run stored before its plan was).
pub fn plain_event(run_id: &str, e: &StoredEvent) -> RunEventView {
    let text = |k: &str| {
        e.payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let kind = match e.kind.as_str() {
        "step" => Some(RunEventKind::StepState {
            state: StepState::parse(&text("state")),
            attempt_id: String::new(),
            attempt: 0,
            message: text("message"),
        }),
        "dispatched" => Some(RunEventKind::StepState {
            state: Some(StepState::Running),
            attempt_id: text("attempt_id"),
            attempt: u32::try_from(
                e.payload
                    .get("attempt")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            )
            .unwrap_or(0),
            message: String::new(),
        }),
        "run" => Some(RunEventKind::RunState {
            state: RunStatus::parse(&text("state")),
            reason: text("reason"),
        }),
        // The status as stored: the engine's name of it.
        "environment" => Some(RunEventKind::EnvironmentState {
            state: EnvStatus::parse(&text("status")),
            waiting_for: String::new(),
        }),
        _ => None,
    };
    RunEventView {
        seq: e.seq,
        at: e.at,
        run_id: run_id.to_string(),
        environment: text("environment"),
        kind,
        ..Default::default()
    }
}

/// One stored agent event as `Logs` shows it; `None` for kinds it does not show.
pub(super) fn log_event(run_id: &str, row: LogRow) -> Option<RunEventView> {
    let LogRow {
        node,
        step,
        kind,
        payload,
        ..
    } = row;
    let text = |k: &str| {
        payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let agent = |line: String| {
        RunEventKind::Log(LogLine {
            stream: LogStream::Agent,
            line,
        })
    };
    let kind = match kind.as_str() {
        "log" => RunEventKind::Log(LogLine {
            stream: if payload.get("stderr").and_then(serde_json::Value::as_bool) == Some(true) {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            },
            line: text("line"),
        }),
        "progress" => RunEventKind::Progress(Progress {
            percent: u32::try_from(
                payload
                    .get("percent")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            )
            .unwrap_or(0),
            message: text("message"),
        }),
        "output" => RunEventKind::Output(Output {
            key: text("key"),
            value: text("value"),
        }),
        "finished" => agent(
            format!("finished: {} {}", text("outcome"), text("error"))
                .trim_end()
                .to_string(),
        ),
        "waiting" => RunEventKind::Waiting(Waiting {
            instruction: text("instruction"),
            reason: WaitReason::parse(&text("reason")),
            boot_id: String::new(),
        }),
        "started" => agent(format!("started: {}", text("command"))),
        _ => return None,
    };
    Some(RunEventView {
        run_id: run_id.to_string(),
        node: (!node.is_empty()).then_some(node),
        step,
        kind: Some(kind),
        ..Default::default()
    })
}
