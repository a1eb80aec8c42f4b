//! Conversions between the run manager's state and the wire: assignments, run events, states.

use fleet_proto::pb;

use crate::engine::Run;
use crate::inventory::{InstallMode, Inventory};
use crate::plan::Plan;
use crate::store::StoredEvent;

/// The assignment for an agent step: the action and placeholder values, never a command line.
pub(super) fn assignment(
    inventory: &Inventory,
    plan: &Plan,
    run_id: &str,
    epoch: u64,
    run: &Run,
    step: usize,
    attempt_id: &str,
) -> pb::StepAssignment {
    let s = &run.steps[step].plan;
    let env_name = &plan.environments[s.env].name;
    let env = inventory.environments.iter().find(|e| &e.name == env_name);
    let mut params = std::collections::HashMap::from([
        ("target_version".to_string(), plan.target_version.clone()),
        ("installer".to_string(), plan.installer.clone()),
    ]);
    if let Some(env) = env {
        params.insert("backup_dir".into(), env.backup_dir.clone());
        params.insert("master".into(), env.master.to_string());
    }
    let action = crate::convert::action(s.kind);
    pb::StepAssignment {
        epoch,
        attempt_id: attempt_id.to_string(),
        run_id: run_id.to_string(),
        environment: env_name.to_string(),
        step: s.kind.name().to_string(),
        action: action as i32,
        params,
        timeout_ms: u64::try_from(run.step_timeout_ms).unwrap_or(u64::MAX),
        install_mode: match env.map(|e| e.install) {
            Some(InstallMode::Attended) => pb::InstallMode::Attended,
            _ => pb::InstallMode::Unattended,
        } as i32,
        expected_installer_sha256: String::new(),
    }
}

pub(super) fn workflow(stored: &str) -> pb::Workflow {
    match stored {
        "migrate" => pb::Workflow::Migrate,
        _ => pb::Workflow::Upgrade,
    }
}

pub(super) fn run_state(state: &str) -> pb::RunState {
    match state {
        "running" => pb::RunState::Running,
        "paused" => pb::RunState::Paused,
        "waiting-approval" => pb::RunState::WaitingApproval,
        "halted" => pb::RunState::Halted,
        "succeeded" => pb::RunState::Succeeded,
        "failed" => pb::RunState::Failed,
        "aborted" => pb::RunState::Aborted,
        _ => pb::RunState::Unspecified,
    }
}

pub(super) fn step_state(state: &str) -> pb::StepState {
    match state {
        "pending" => pb::StepState::Pending,
        "running" => pb::StepState::Running,
        "waiting" => pb::StepState::Waiting,
        "succeeded" => pb::StepState::Succeeded,
        "failed" => pb::StepState::Failed,
        "skipped" => pb::StepState::Skipped,
        "already-current" => pb::StepState::AlreadyCurrent,
        _ => pb::StepState::Unspecified,
    }
}

/// A stored run event, with the step's environment, node and name from the run.
pub(super) fn run_event(run_id: &str, run: &Run, e: &StoredEvent) -> pb::RunEvent {
    let mut event = plain_event(run_id, e);
    if let Some(step) = e.step.and_then(|i| run.steps.get(i)) {
        event.environment = run.env_names[step.plan.env].clone();
        event.node = step.plan.node.as_ref().map(ToString::to_string);
        event.step = step.plan.kind.name().to_string();
    }
    event
}

pub(super) fn plain_event(run_id: &str, e: &StoredEvent) -> pb::RunEvent {
    let text = |k: &str| {
        e.payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let kind = match e.kind.as_str() {
        "step" => Some(pb::run_event::Kind::StepState(pb::StepStateChanged {
            state: step_state(&text("state")) as i32,
            message: text("message"),
            ..Default::default()
        })),
        "dispatched" => Some(pb::run_event::Kind::StepState(pb::StepStateChanged {
            state: pb::StepState::Running as i32,
            attempt_id: text("attempt_id"),
            attempt: u32::try_from(
                e.payload
                    .get("attempt")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            )
            .unwrap_or(0),
            message: String::new(),
        })),
        "run" => Some(pb::run_event::Kind::RunState(pb::RunStateChanged {
            state: run_state(&text("state")) as i32,
            reason: text("reason"),
        })),
        "environment" => Some(pb::run_event::Kind::EnvironmentState(
            pb::EnvironmentStateChanged {
                state: 0,
                waiting_for: text("status"),
            },
        )),
        _ => None,
    };
    pb::RunEvent {
        seq: e.seq,
        at_unix_ms: e.at,
        run_id: run_id.to_string(),
        environment: text("environment"),
        kind,
        ..Default::default()
    }
}
