//! Conversions between the wire (proto) and the domain, at the service boundary: a proto change
//! touches this file, not the planner or the engine.

use fleet_proto::pb;

use crate::domain::{EnvName, NodeName};
use crate::inventory::InstallMode;
use crate::inventory::Inventory;
use crate::plan::{Expected, Plan, Reported, Reports, Selection, StepKind, Workflow};

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
        let env = EnvName::new(name).map_err(|e| format!("--env {name:?}: {e}"))?;
        if !inventory.environments.iter().any(|e| e.name == env) {
            let known: Vec<&str> = inventory
                .environments
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            return Err(format!(
                "environment {name:?} is not in the inventory (it has {})",
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

/// What the attached nodes reported, from the fleet's node list: their ESSO version and whether their
/// agent installs with its own command. Detached nodes are unknown: their last facts may be stale,
/// and the run's preflight reads them afresh anyway.
pub fn reports(nodes: &[pb::NodeStatus]) -> Reports {
    nodes
        .iter()
        .filter(|n| n.attached)
        .filter_map(|n| {
            let overrides = |action: &str| {
                n.facts
                    .as_ref()
                    .is_some_and(|f| f.overridden_actions.iter().any(|a| a == action))
            };
            NodeName::new(&n.name).ok().map(|name| {
                let reported = Reported {
                    version: n.version.clone().filter(|v| !v.trim().is_empty()),
                    install_override: overrides(crate::plan::install::INSTALL_OVERRIDE),
                    configure_override: overrides(crate::plan::install::CONFIGURE_OVERRIDE),
                };
                (name, reported)
            })
        })
        .collect()
}

/// The fitness checks in an agent's facts.
pub fn checks(facts: &pb::Facts) -> Vec<crate::fitness::Check> {
    facts
        .checks
        .iter()
        .map(|c| crate::fitness::Check {
            name: c.name.clone(),
            passed: c.passed,
            detail: c.detail.clone(),
        })
        .collect()
}

/// What `plan` warns about the fitness of the nodes with steps to run (attached ones: the others are
/// already warned about).
pub fn fitness_warnings(plan: &Plan, nodes: &[pb::NodeStatus]) -> Vec<String> {
    let running: std::collections::BTreeSet<&str> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.expected, Expected::Run))
        .filter_map(|s| s.node.as_ref().map(NodeName::as_str))
        .collect();
    crate::fitness::plan_warnings(
        nodes
            .iter()
            .filter(|n| n.attached && running.contains(n.name.as_str()))
            .filter_map(|n| n.facts.as_ref().map(|f| (n.name.as_str(), checks(f)))),
    )
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
