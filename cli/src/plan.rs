//! `fleetctl plan`: the steps `upgrade` would run, in order, and the plan's hash.

use fleet_core::engine::StepState;
use fleet_core::inventory::InstallMode;
use fleet_proto::pb;
use serde_json::{Value, json};

use crate::Output;
use crate::error::{CliError, Result};
use crate::remote::Remote;

pub(crate) fn selection(
    all: bool,
    envs: &[String],
    master_only: bool,
    max_parallel: Option<u32>,
    max_failures: Option<u32>,
) -> pb::RunSelection {
    pb::RunSelection {
        workflow: pb::Workflow::Upgrade as i32,
        all,
        environments: envs.to_vec(),
        master_only,
        max_parallel,
        max_failures,
    }
}

pub(crate) async fn show(
    remote: &mut Remote,
    selection: pb::RunSelection,
    output: Output,
) -> Result<()> {
    let plan = remote
        .client
        .plan(pb::PlanRequest {
            selection: Some(selection.clone()),
        })
        .await
        .map_err(|s| CliError::from_status(&s, &remote.url))?
        .into_inner();
    match output {
        Output::Json => println!("{}", to_json(&plan)),
        Output::Text => print!("{}", text(&plan, &selection)),
    }
    Ok(())
}

/// What the plan expects of a step, in the engine's words for its final states ("run" otherwise).
fn state(s: &pb::PlannedStep) -> &'static str {
    match s.expected() {
        pb::StepState::AlreadyCurrent => StepState::AlreadyCurrent.as_str(),
        pb::StepState::Newer => StepState::Newer.as_str(),
        pb::StepState::Skipped => StepState::Skipped.as_str(),
        _ => "run",
    }
}

/// How an install step will install, in the inventory's words (`None` for steps that do not install).
fn install(s: &pb::PlannedStep) -> Option<&'static str> {
    match s.install() {
        pb::InstallMode::Attended => Some(InstallMode::Attended.as_str()),
        pb::InstallMode::Unattended => Some(InstallMode::Unattended.as_str()),
        pb::InstallMode::Unspecified => None,
    }
}

fn to_json(plan: &pb::PlanResponse) -> Value {
    json!({
        "plan_hash": plan.plan_hash,
        "target_version": plan.target_version,
        "installer": plan.installer,
        "master_installer": (!plan.master_installer.is_empty()).then_some(&plan.master_installer),
        "environments": plan.environments.iter().map(|e| json!({
            "name": e.name,
            "master": e.master,
            "members": e.members,
            "gate": e.gate,
            "window": (!e.window.is_empty()).then_some(&e.window),
            "earliest_start": e.earliest_start_unix_ms.map(crate::runs::time),
        })).collect::<Vec<_>>(),
        "steps": plan.steps.iter().map(|s| json!({
            "index": s.index,
            "environment": s.environment,
            "node": s.node,
            "step": s.step,
            "batch": s.batch,
            "expected": state(s),
            "note": s.note,
            "install": install(s),
            "install_reason": install(s).map(|_| &s.install_reason),
        })).collect::<Vec<_>>(),
        "warnings": plan.warnings,
    })
}

fn text(plan: &pb::PlanResponse, selection: &pb::RunSelection) -> String {
    let mut out = format!(
        "plan {}: upgrade to ESSO {} with {}\n",
        plan.plan_hash, plan.target_version, plan.installer
    );
    if !plan.master_installer.is_empty() {
        out.push_str(&format!(
            "the master secret server installs from {}\n",
            plan.master_installer
        ));
    }
    let node_width = plan
        .steps
        .iter()
        .filter_map(|s| s.node.as_ref())
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(4);
    for env in &plan.environments {
        let window = if env.window.is_empty() {
            String::new()
        } else {
            format!(", window {}", env.window)
        };
        out.push_str(&format!(
            "\n{} (master {}, gate {}{window})\n",
            env.name, env.master, env.gate
        ));
        for s in plan.steps.iter().filter(|s| s.environment == env.name) {
            let node = s.node.as_deref().unwrap_or("-");
            let batch = if s.batch > 0 {
                format!("batch {}", s.batch)
            } else {
                String::new()
            };
            let mut what = match state(s) {
                "run" => s.note.clone(),
                other if s.note.is_empty() => other.to_string(),
                other => format!("{other}: {}", s.note),
            };
            if let Some(mode) = install(s) {
                if !what.is_empty() {
                    what.push_str("; ");
                }
                what.push_str(&format!("{mode} install ({})", s.install_reason));
            }
            let line = format!(
                "  {:>3}  {:<15} {node:<node_width$}  {batch:<8} {what}",
                s.index + 1,
                s.step
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    for warning in &plan.warnings {
        out.push_str(&format!("\nwarning: {warning}"));
    }
    if !plan.warnings.is_empty() {
        out.push('\n');
    }
    let scope = if selection.all {
        "--all".to_string()
    } else {
        selection
            .environments
            .iter()
            .map(|e| format!("--env {e}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let master_only = if selection.master_only {
        " --master-only"
    } else {
        ""
    };
    out.push_str(&format!(
        "\nto run exactly this plan: fleetctl upgrade {scope}{master_only} --plan-hash {}\n",
        plan.plan_hash
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(step: &str, node: &str, expected: pb::StepState) -> pb::PlannedStep {
        pb::PlannedStep {
            index: 0,
            environment: "dev".into(),
            node: Some(node.into()),
            step: step.into(),
            expected: expected as i32,
            ..Default::default()
        }
    }

    #[test]
    fn install_steps_show_their_mode_and_reason_and_newer_nodes_say_so() {
        let mut upgrade = planned("upgrade-master", "m1", pb::StepState::Pending);
        upgrade.index = 3;
        upgrade.note = r"from D:\media\Platform\SSO\Setup.exe".into();
        upgrade.install = pb::InstallMode::Attended as i32;
        upgrade.install_reason = "a BizTalk Server upgrade cannot be silent".into();
        let mut newer = planned("upgrade", "a2", pb::StepState::Newer);
        newer.index = 5;
        newer.note = "on 3.0.8, newer than the target 3.0.7: never downgraded".into();
        let plan = pb::PlanResponse {
            plan_hash: "0123456789abcdef".into(),
            target_version: "3.0.7".into(),
            installer: r"D:\media\Setup.exe".into(),
            environments: vec![pb::EnvironmentPlan {
                name: "dev".into(),
                master: "m1".into(),
                gate: "auto".into(),
                ..Default::default()
            }],
            steps: vec![upgrade, newer],
            ..Default::default()
        };
        let selection = selection(true, &[], false, None, None);
        let shown = text(&plan, &selection);
        assert!(
            shown.contains(r"    4  upgrade-master  m1             from D:\media\Platform\SSO\Setup.exe; attended install (a BizTalk Server upgrade cannot be silent)"),
            "{shown}"
        );
        assert!(
            shown.contains("    6  upgrade         a2             newer: on 3.0.8, newer than the target 3.0.7: never downgraded"),
            "{shown}"
        );
        let json = to_json(&plan);
        assert_eq!(json["steps"][0]["install"], "attended");
        assert_eq!(
            json["steps"][0]["install_reason"],
            "a BizTalk Server upgrade cannot be silent"
        );
        assert_eq!(json["steps"][1]["expected"], "newer");
        assert_eq!(json["steps"][1]["install"], Value::Null);
        assert_eq!(json["steps"][1]["install_reason"], Value::Null);
    }
}
