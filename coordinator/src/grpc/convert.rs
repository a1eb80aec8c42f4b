//! The operator API's requests and plans on the wire: what a caller sends, checked into the domain
//! (selections, controls, log queries), and a plan as `Plan` answers it. With `agent_wire` and
//! `run_wire`, a proto change touches this layer, not the planner, the engine or the run manager.

use fleet_proto::pb;

use crate::domain::{AttemptOutcome, RunId};
use crate::input::{self, quote};
use crate::inventory::InstallMode;
use crate::inventory::Inventory;
use crate::plan::{Expected, Plan, Selection, StepKind, Workflow};
use crate::runs::{ControlAction, ControlRequest, LogsQuery};
use crate::store::LogPosition;

/// A request's selection, checked against the inventory. `Err` is a message for the operator.
pub fn selection(
    raw: Option<&pb::RunSelection>,
    inventory: &Inventory,
) -> Result<Selection, String> {
    let raw = raw.cloned().unwrap_or_default();
    // A value the API does not define is refused, never read as the default (an upgrade).
    let workflow = match pb::Workflow::try_from(raw.workflow) {
        Err(_) => {
            return Err(format!(
                "workflow {} is not defined: use WORKFLOW_UPGRADE (1) or WORKFLOW_MIGRATE (2)",
                raw.workflow
            ));
        }
        Ok(pb::Workflow::Upgrade | pb::Workflow::Unspecified) => Workflow::Upgrade,
        Ok(pb::Workflow::Migrate) => {
            if raw.all || raw.environments.len() != 1 {
                return Err("migrate runs on exactly one environment: --env E".into());
            }
            if raw.master_only || raw.max_parallel.is_some() || raw.max_failures.is_some() {
                return Err(
                    "migrate runs on the master secret server only: --master-only, --max-parallel and --max-failures do not apply"
                        .into(),
                );
            }
            Workflow::Migrate
        }
    };
    if raw.all != raw.environments.is_empty() {
        return Err(
            "name the environments, or all of them (--all), not both and not neither".into(),
        );
    }
    let mut environments = Vec::new();
    for name in &raw.environments {
        let env = input::environment(name).map_err(|e| format!("--env: {e}"))?;
        if !inventory.environments.iter().any(|e| e.name == env) {
            const SHOWN: usize = 10;
            let known: Vec<&str> = inventory
                .environments
                .iter()
                .take(SHOWN)
                .map(|e| e.name.as_str())
                .collect();
            let more = inventory.environments.len().saturating_sub(SHOWN);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            return Err(format!(
                "environment {} is not in the inventory (it has {}{more})",
                quote(name),
                known.join(", ")
            ));
        }
        environments.push(env);
    }
    if raw.max_parallel == Some(0) {
        return Err("--max-parallel must be at least 1".into());
    }
    Ok(Selection {
        workflow,
        environments,
        master_only: raw.master_only,
        max_parallel: raw.max_parallel,
        max_failures: raw.max_failures,
    })
}

/// A control request, checked: the run it names, and the control for the run's manager.
pub fn control(raw: pb::ControlRequest) -> Result<(RunId, ControlRequest), String> {
    let action = match pb::ControlAction::try_from(raw.action) {
        Err(_) => return Err(format!("control action {} is not defined", raw.action)),
        Ok(pb::ControlAction::Unspecified) => return Err("no control action".into()),
        Ok(pb::ControlAction::Pause) => ControlAction::Pause,
        Ok(pb::ControlAction::Resume) => ControlAction::Resume,
        Ok(pb::ControlAction::Abort) => ControlAction::Abort,
        Ok(pb::ControlAction::Approve) => ControlAction::Approve,
        Ok(pb::ControlAction::Retry) => ControlAction::Retry,
        Ok(pb::ControlAction::Skip) => ControlAction::Skip,
    };
    let run_id = RunId::new(&raw.run_id)?;
    let control = ControlRequest {
        action,
        node: raw.node.as_deref().map(input::node).transpose()?,
        step: optional_step(raw.step.as_deref())?,
        comment: input::comment(&raw.comment)?.to_string(),
        request_id: input::request_id(&raw.request_id)?.map(str::to_string),
    };
    Ok((run_id, control))
}

/// A `Logs` request, checked: which run, node and step, and where the page starts.
pub fn logs(raw: &pb::LogsRequest) -> Result<LogsQuery, String> {
    Ok(LogsQuery {
        run_id: RunId::new(&raw.run_id)?,
        node: raw.node.as_deref().map(input::node).transpose()?,
        step: optional_step(raw.step.as_deref())?,
        after: page_token(&raw.page_token)?,
        max_events: input::max_log_events(raw.max_events),
    })
}

/// Where the next page of a log starts, as a client sends it back (empty: no more pages).
pub fn next_page_token(next: Option<LogPosition>) -> String {
    next.map(|p| format!("{}.{}.{}", p.step, p.attempt, p.seq))
        .unwrap_or_default()
}

fn page_token(raw: &str) -> Result<Option<LogPosition>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut parts = raw.split('.');
    let position = (|| {
        let position = LogPosition {
            step: parts.next()?.parse().ok()?,
            attempt: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(position)
    })();
    position.map(Some).ok_or_else(|| {
        format!(
            "page token {} is not one this coordinator gives: send the last response's next_page_token",
            quote(raw)
        )
    })
}

/// A `WatchRun` request, checked; its node filter in the form runs store (lower case).
pub fn watch(mut raw: pb::WatchRunRequest) -> Result<pb::WatchRunRequest, String> {
    input::run_id(&raw.run_id)?;
    raw.node = raw
        .node
        .as_deref()
        .map(|n| input::node(n).map(String::from))
        .transpose()?;
    optional_step(raw.step.as_deref())?;
    Ok(raw)
}

/// The run id of a request about one run.
pub fn run_id(raw: &str) -> Result<RunId, String> {
    RunId::new(raw)
}

/// A `StartRun` request's plan hash, if it names one.
pub fn plan_hash(raw: Option<&str>) -> Result<Option<String>, String> {
    raw.map(|h| input::plan_hash(h).map(str::to_string))
        .transpose()
}

fn optional_step(raw: Option<&str>) -> Result<Option<String>, String> {
    raw.map(|s| input::step(s).map(str::to_string)).transpose()
}

/// How an agent says an attempt ended.
pub fn outcome(outcome: pb::StepOutcome) -> AttemptOutcome {
    match outcome {
        pb::StepOutcome::Unspecified => AttemptOutcome::Unreported,
        pb::StepOutcome::Succeeded => AttemptOutcome::Succeeded,
        pb::StepOutcome::Failed => AttemptOutcome::Failed,
        pb::StepOutcome::TimedOut => AttemptOutcome::TimedOut,
        pb::StepOutcome::Cancelled => AttemptOutcome::Cancelled,
    }
}

/// An install mode on the wire.
pub fn install_mode(mode: InstallMode) -> pb::InstallMode {
    match mode {
        InstallMode::Attended => pb::InstallMode::Attended,
        InstallMode::Unattended => pb::InstallMode::Unattended,
    }
}

/// A node's standing against the target on the wire (unspecified: no version known).
pub fn standing(standing: Option<fleet_proto::version::Standing>) -> pb::VersionStanding {
    use fleet_proto::version::Standing;
    match standing {
        None => pb::VersionStanding::Unspecified,
        Some(Standing::Older) => pb::VersionStanding::Older,
        Some(Standing::Current) => pb::VersionStanding::Current,
        Some(Standing::Newer) => pb::VersionStanding::Newer,
    }
}

/// The catalogue action an agent step runs (coordinator steps have none).
pub fn action(kind: StepKind) -> pb::Action {
    match kind {
        StepKind::BackupSecret => pb::Action::BackupSecret,
        StepKind::UpgradeMaster | StepKind::UpgradeMember => pb::Action::InstallSso,
        StepKind::VerifyMaster | StepKind::VerifyMember | StepKind::VerifyMigration => {
            pb::Action::VerifySso
        }
        StepKind::InstallSso => pb::Action::InstallSso,
        StepKind::BackupSecurityData => pb::Action::BackupSecurityData,
        StepKind::ExportEncryptionKey => pb::Action::ExportEncryptionKey,
        StepKind::CopyMigrationUtility => pb::Action::CopyMigrationUtility,
        StepKind::RunMigration | StepKind::ExportHostSecurity | StepKind::ImportHostSecurity => {
            pb::Action::RunMigration
        }
        StepKind::Preflight
        | StepKind::BackupDatabase
        | StepKind::Gate
        | StepKind::StopHostAccountCache
        | StepKind::ReviewExport => pb::Action::Unspecified,
    }
}

/// The window as written, and when it lets a step start: `sat,sun 22:00-04:00 Europe/Berlin; opens
/// Sat 2026-11-28 22:00:00 CET`, or `…; open now, until …`.
fn describe_window(window: &crate::inventory::Window, now: i64) -> String {
    match (window.closes_at(now), window.next_open(now)) {
        (Some(close), _) => format!("{window}; open now, until {}", window.local(close)),
        (None, Some(open)) => format!("{window}; opens {}", window.local(open)),
        (None, None) => format!("{window}; never opens"),
    }
}

pub fn plan_response(plan: &Plan, inventory: &Inventory) -> pb::PlanResponse {
    let now = fleet_proto::unix_ms(std::time::SystemTime::now());
    let environments = plan
        .environments
        .iter()
        .map(|e| {
            let inv = inventory.environments.iter().find(|i| i.name == e.name);
            let window = inv.and_then(|i| i.window.as_ref());
            pb::EnvironmentPlan {
                name: e.name.to_string(),
                master: e.master.to_string(),
                members: e.members.iter().map(ToString::to_string).collect(),
                gate: e.gate.to_string(),
                install: inv.map_or(pb::InstallMode::Unspecified, |i| install_mode(i.install))
                    as i32,
                window: window.map(|w| describe_window(w, now)).unwrap_or_default(),
                earliest_start_unix_ms: window.and_then(|w| w.next_open(now)),
            }
        })
        .collect();
    let steps = plan
        .steps
        .iter()
        .map(|s| {
            let (expected, note) = match &s.expected {
                Expected::Run => (pb::StepState::Pending, s.note.clone()),
                Expected::AlreadyCurrent => (pb::StepState::AlreadyCurrent, s.note.clone()),
                Expected::Newer => (pb::StepState::Newer, s.note.clone()),
                Expected::Skipped(why) => (pb::StepState::Skipped, why.clone()),
            };
            pb::PlannedStep {
                index: u32::try_from(s.index).unwrap_or(u32::MAX),
                environment: plan.environments[s.env].name.to_string(),
                node: s.node.as_ref().map(ToString::to_string),
                step: s.kind.name().to_string(),
                action: action(s.kind) as i32,
                batch: s.batch,
                expected: expected as i32,
                note,
                install: s
                    .install
                    .as_ref()
                    .map_or(pb::InstallMode::Unspecified, |i| install_mode(i.mode))
                    as i32,
                install_reason: s
                    .install
                    .as_ref()
                    .map(|i| i.reason.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    pb::PlanResponse {
        plan_hash: plan.hash.clone(),
        target_version: plan.target_version.to_string(),
        installer: plan.installer.clone(),
        master_installer: plan.master_installer.clone().unwrap_or_default(),
        environments,
        steps,
        warnings: plan.warnings.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page token is what the coordinator gave; anything else is refused, briefly.
    #[test]
    fn a_page_token_round_trips_and_a_forged_one_is_refused() {
        let position = LogPosition {
            step: 4,
            attempt: 2,
            seq: 900,
        };
        let token = next_page_token(Some(position));
        assert_eq!(page_token(&token), Ok(Some(position)));
        assert_eq!(next_page_token(None), "");
        assert_eq!(page_token(""), Ok(None));
        for forged in ["4.2", "4.2.900.1", "a.b.c", &"9".repeat(1 << 20)] {
            let refused = page_token(forged).unwrap_err();
            assert!(refused.len() < 300, "{refused}");
        }
    }

    /// A workflow value the API does not define (a newer or a broken client) starts nothing.
    #[test]
    fn an_undefined_workflow_is_refused_not_read_as_an_upgrade() {
        let text = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'setup.exe'\n[[environment]]\nname = \"dev\"\nmaster = \"m1\"\nmembers = []\nbackup_dir = 'b'\n";
        let inventory = match Inventory::parse(std::path::Path::new("fleet.toml"), text) {
            Ok(inventory) => inventory,
            Err(e) => panic!("{e}"),
        };
        for value in [99, -1] {
            let raw = pb::RunSelection {
                all: true,
                workflow: value,
                ..Default::default()
            };
            assert_eq!(
                selection(Some(&raw), &inventory).map(|s| s.workflow),
                Err(format!(
                    "workflow {value} is not defined: use WORKFLOW_UPGRADE (1) or WORKFLOW_MIGRATE (2)"
                ))
            );
        }
        let upgrade = pb::RunSelection {
            all: true,
            ..Default::default()
        };
        assert_eq!(
            selection(Some(&upgrade), &inventory).map(|s| s.workflow),
            Ok(Workflow::Upgrade)
        );
    }
}
