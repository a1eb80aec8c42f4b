//! The run manager's views on the wire: a run, the list of runs, run events and the audit trail.

use fleet_proto::pb;

use super::agent_wire;
use crate::engine::{EnvStatus, RunStatus, StepState};
use crate::plan::Workflow;
use crate::protocol::Artifact;
use crate::runs::{
    EnvironmentView, RunEventKind, RunEventView, RunSummaryView, RunView, SelectionView, StepView,
};
use crate::store::AuditEntry;

pub fn workflow(workflow: Workflow) -> pb::Workflow {
    match workflow {
        Workflow::Upgrade => pb::Workflow::Upgrade,
        Workflow::Migrate => pb::Workflow::Migrate,
    }
}

pub fn run_state(state: Option<RunStatus>) -> pb::RunState {
    match state {
        Some(RunStatus::Running) => pb::RunState::Running,
        Some(RunStatus::Paused) => pb::RunState::Paused,
        Some(RunStatus::WaitingApproval) => pb::RunState::WaitingApproval,
        Some(RunStatus::Halted) => pb::RunState::Halted,
        Some(RunStatus::Succeeded) => pb::RunState::Succeeded,
        Some(RunStatus::Failed) => pb::RunState::Failed,
        Some(RunStatus::Aborted) => pb::RunState::Aborted,
        None => pb::RunState::Unspecified,
    }
}

pub fn step_state(state: Option<StepState>) -> pb::StepState {
    match state {
        Some(StepState::Pending) => pb::StepState::Pending,
        Some(StepState::Running) => pb::StepState::Running,
        Some(StepState::Waiting) => pb::StepState::Waiting,
        Some(StepState::Succeeded) => pb::StepState::Succeeded,
        Some(StepState::Failed) => pb::StepState::Failed,
        Some(StepState::Skipped) => pb::StepState::Skipped,
        Some(StepState::AlreadyCurrent) => pb::StepState::AlreadyCurrent,
        Some(StepState::Newer) => pb::StepState::Newer,
        None => pb::StepState::Unspecified,
    }
}

/// An environment's state on the wire. The engine has no failed, skipped or window-waiting
/// environment: a closed window, or a failure, shows in the run's state and reason.
pub fn environment_state(status: Option<EnvStatus>) -> pb::EnvironmentState {
    match status {
        Some(EnvStatus::Pending) => pb::EnvironmentState::Pending,
        Some(EnvStatus::Running) => pb::EnvironmentState::Running,
        Some(EnvStatus::WaitingGate) => pb::EnvironmentState::WaitingGate,
        Some(EnvStatus::Halted) => pb::EnvironmentState::Halted,
        Some(EnvStatus::Succeeded) => pb::EnvironmentState::Succeeded,
        None => pb::EnvironmentState::Unspecified,
    }
}

pub fn selection(s: SelectionView) -> pb::RunSelection {
    pb::RunSelection {
        workflow: workflow(s.workflow) as i32,
        all: s.environments.is_empty(),
        environments: s.environments,
        master_only: s.master_only,
        max_parallel: s.max_parallel,
        max_failures: s.max_failures,
    }
}

fn environment(e: EnvironmentView) -> pb::RunEnvironment {
    pb::RunEnvironment {
        name: e.name,
        state: environment_state(e.state) as i32,
        gate: e.gate,
        waiting_for: e.waiting_for,
        member_failures: e.member_failures,
    }
}

pub fn artifact(a: Artifact) -> pb::Artifact {
    pb::Artifact {
        kind: a.kind,
        path: a.path,
        size_bytes: a.size_bytes,
        sha256: a.sha256,
        note: a.note,
    }
}

fn step(s: StepView) -> pb::RunStep {
    pb::RunStep {
        index: u32::try_from(s.index).unwrap_or(u32::MAX),
        environment: s.environment,
        node: s.node,
        step: s.step,
        state: step_state(s.state) as i32,
        attempts: s.attempts,
        attempt_id: s.attempt_id,
        percent: s.percent,
        message: s.message,
        started_at_unix_ms: s.started_at,
        finished_at_unix_ms: s.finished_at,
        artifacts: s.artifacts.into_iter().map(artifact).collect(),
        outputs: s.outputs,
        batch: s.batch,
    }
}

pub fn run(r: RunView) -> pb::Run {
    pb::Run {
        id: r.id,
        workflow: workflow(r.workflow) as i32,
        state: run_state(r.state) as i32,
        started_at_unix_ms: r.started_at,
        finished_at_unix_ms: r.finished_at,
        started_by: r.started_by,
        target_version: r.target_version,
        installer: r.installer,
        installer_sha256: r.installer_sha256,
        plan_hash: r.plan_hash,
        selection: Some(selection(r.selection)),
        environments: r.environments.into_iter().map(environment).collect(),
        steps: r.steps.into_iter().map(step).collect(),
        reason: r.reason,
        last_event_seq: r.last_event_seq,
        master_installer: r.master_installer,
        master_installer_sha256: r.master_installer_sha256,
    }
}

pub fn run_summary(r: RunSummaryView) -> pb::RunSummary {
    pb::RunSummary {
        id: r.id,
        workflow: workflow(r.workflow) as i32,
        state: run_state(r.state) as i32,
        started_at_unix_ms: r.started_at,
        finished_at_unix_ms: r.finished_at,
        started_by: r.started_by,
        environments: r.environments,
    }
}

pub fn run_event(e: RunEventView) -> pb::RunEvent {
    use pb::run_event::Kind;
    let kind = e.kind.map(|kind| match kind {
        RunEventKind::RunState { state, reason } => Kind::RunState(pb::RunStateChanged {
            state: run_state(state) as i32,
            reason,
        }),
        RunEventKind::StepState {
            state,
            attempt_id,
            attempt,
            message,
        } => Kind::StepState(pb::StepStateChanged {
            state: step_state(state) as i32,
            attempt_id,
            message,
            attempt,
        }),
        RunEventKind::EnvironmentState { state, waiting_for } => {
            Kind::EnvironmentState(pb::EnvironmentStateChanged {
                state: environment_state(state) as i32,
                waiting_for,
            })
        }
        RunEventKind::Progress(p) => Kind::Progress(pb::StepProgress {
            percent: p.percent,
            message: p.message,
        }),
        RunEventKind::Output(o) => Kind::Output(pb::StepOutput {
            key: o.key,
            value: o.value,
        }),
        RunEventKind::Log(l) => Kind::Log(agent_wire::log_line_to_wire(l)),
        RunEventKind::Waiting(w) => Kind::Waiting(agent_wire::waiting_to_wire(w)),
    });
    pb::RunEvent {
        seq: e.seq,
        at_unix_ms: e.at,
        run_id: e.run_id,
        environment: e.environment,
        node: e.node,
        step: e.step,
        attempt_id: e.attempt_id,
        kind,
    }
}

pub fn audit_entry(e: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        at_unix_ms: e.at,
        operator: e.operator,
        action: e.action,
        run_id: e.run_id,
        node: e.node,
        step: e.step,
        detail: e.detail,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::inventory::Inventory;
    use crate::plan::{Reports, plan};
    use crate::runs::selection_json;
    use crate::store::StoredEvent;

    const FLEET: &str = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'D:\\media\\Setup.exe'\n[[environment]]\nname = \"dev\"\nmaster = \"m\"\nmembers = [\"a\", \"b\"]\nbackup_dir = 'B'\n";

    /// A stored event as `WatchRun` sends it (without the run: a run stored before its plan was).
    fn plain_event(run_id: &str, e: &StoredEvent) -> pb::RunEvent {
        run_event(crate::runs::plain_event(run_id, e))
    }

    /// A stored selection as `GetRun` sends it.
    fn stored_selection(stored: &str, workflow: &str) -> pb::RunSelection {
        super::selection(crate::runs::selection(stored, workflow))
    }

    /// Environment events are stored with the engine's name of the status (`Store::commit`): each
    /// comes back as its state, never unspecified.
    #[test]
    fn a_stored_environment_status_comes_back_as_its_state() {
        for (status, state) in [
            (EnvStatus::Pending, pb::EnvironmentState::Pending),
            (EnvStatus::Running, pb::EnvironmentState::Running),
            (EnvStatus::WaitingGate, pb::EnvironmentState::WaitingGate),
            (EnvStatus::Halted, pb::EnvironmentState::Halted),
            (EnvStatus::Succeeded, pb::EnvironmentState::Succeeded),
        ] {
            let stored = StoredEvent {
                seq: 3,
                at: 0,
                step: None,
                kind: "environment".into(),
                payload: serde_json::json!({ "environment": "dev", "status": format!("{status:?}") }),
            };
            let event = plain_event("run", &stored);
            let Some(pb::run_event::Kind::EnvironmentState(changed)) = event.kind else {
                panic!("{status:?}: {event:?}");
            };
            assert_eq!(changed.state(), state, "{status:?}");
            assert_eq!(event.environment, "dev");
        }
    }

    #[test]
    fn a_selection_reads_back_with_the_limits_the_run_applies() {
        let inv = Inventory::parse(Path::new("fleet.toml"), FLEET).unwrap();
        let mut chosen = crate::grpc::dev_selection(Workflow::Upgrade);
        chosen.max_failures = Some(4);
        let p = plan(&inv, &chosen, &Reports::new()).unwrap();
        let shown = stored_selection(&selection_json(&chosen, &p), "upgrade");
        assert_eq!(shown.workflow(), pb::Workflow::Upgrade);
        assert!(!shown.all);
        assert_eq!(shown.environments, ["dev"]);
        assert_eq!(shown.max_failures, Some(4));
        assert_eq!(shown.max_parallel, Some(p.max_parallel));
        chosen.environments.clear();
        let all = stored_selection(&selection_json(&chosen, &p), "upgrade");
        assert!(all.all && all.environments.is_empty());
    }
}
