//! Attended installs (SPEC §5): the run stops at each node's install with the instruction, the
//! operator installs and says so with `fleetctl approve ID --node N`, and the agent verifies before the
//! step counts. The order holds, waits survive restarts of coordinator and agent, abort ends them.
//! Attended is the default; an unattended environment still waits where Microsoft supports no silent
//! install (a BizTalk setup upgrade without the customer's own command), and says why.

use std::time::Duration;

use fleet_tests::{PATIENCE, eventually, tool_log};

use crate::durability::{restart_coordinator, step_of, wait_final, wait_state};
use crate::upgrade::{FLEET, Setup, setup};

fn attended_prod() -> String {
    let inventory = FLEET.replace(
        "name = \"prod\"\ninstall = \"unattended\"\n",
        "name = \"prod\"\ninstall = \"attended\"\n",
    );
    assert!(inventory.contains("install = \"attended\""));
    inventory
}

fn start_prod(s: &Setup) -> String {
    let (code, started) = s.json(&["upgrade", "--env", "prod", "--detach"]);
    assert_eq!(code, Some(0), "{started}");
    started["run_id"].as_str().unwrap().to_string()
}

/// Waits until `node`'s install waits for the operator; returns the run.
fn wait_for_install(s: &Setup, run_id: &str, node: &str, step: &str) -> serde_json::Value {
    eventually(
        PATIENCE,
        &format!("{node} waiting for its attended install"),
        || {
            let (_, run) = s.json(&["run", "show", run_id]);
            (step_of(&run, node, step)["state"] == "waiting").then_some(run)
        },
    )
}

/// What the operator does by hand on the server: installs the version.
fn install_by_hand(s: &Setup, node: &str, version: &str) {
    std::fs::write(
        s.fleet.path(&format!("agents/{node}/esso/version")),
        format!("{version}\n"),
    )
    .unwrap();
}

fn approve(s: &Setup, run_id: &str, node: &str) -> std::process::Output {
    s.ctl(&[
        "approve",
        run_id,
        "--node",
        node,
        "--comment",
        "installed by hand",
    ])
}

#[test]
fn attended_installs_wait_for_the_operator_and_are_verified_before_they_count() {
    let mut s = setup(&attended_prod(), &[], &[]);
    let run_id = start_prod(&s);
    let run = wait_for_install(&s, &run_id, "m2", "upgrade-master");
    assert_eq!(run["state"], "waiting-approval", "{run}");
    let reason = run["reason"].as_str().unwrap();
    for part in [
        "attended install on m2",
        "Join an existing SSO system",
        "Setup.exe",
        &format!("fleetctl approve {run_id} --node m2"),
    ] {
        assert!(reason.contains(part), "{part:?} in {reason}");
    }
    // The backups ran; no installer did, anywhere; no member started.
    let log = tool_log(&s.fleet);
    assert!(log.iter().any(|e| e.node == "m2" && e.tool == "backup"));
    assert!(!log.iter().any(|e| e.tool == "setup"), "{log:?}");
    assert!(!log.iter().any(|e| e.node.starts_with('b')), "{log:?}");
    // `watch` shows the instruction as it follows.
    let watch = s.ctl(&["logs", &run_id, "--node", "m2", "--step", "upgrade-master"]);
    assert!(
        String::from_utf8_lossy(&watch.stdout).contains("Join an existing SSO system"),
        "{watch:?}"
    );

    // A gate approval is not what the run waits for; a node without a waiting install is refused.
    let o = s.ctl(&["approve", &run_id]);
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    let o = approve(&s, &run_id, "b1");
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no attended install on \"b1\" waits"),
        "{o:?}"
    );

    // The wait survives a coordinator restart and an agent restart.
    restart_coordinator(&mut s);
    s.coordinator.wait_attached(&s.fleet, "m2", true);
    let m2 = 4;
    s.agents[m2].process.kill();
    s.agents[m2] = crate::upgrade::restart_agent(&s, "m2");
    s.coordinator.wait_attached(&s.fleet, "m2", true);
    // The master went away while its install waited for the operator (who may restart it, as setup
    // asks): not a loss; the run still waits.
    let run = wait_for_install(&s, &run_id, "m2", "upgrade-master");
    assert_eq!(run["state"], "waiting-approval", "{run}");
    assert_eq!(step_of(&run, "m2", "upgrade-master")["attempts"], 1);

    // Approved before anything was installed: the agent's verification fails the step.
    let o = approve(&s, &run_id, "m2");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let run = wait_state(&s, &run_id, "halted");
    let failed = step_of(&run, "m2", "upgrade-master");
    assert_eq!(failed["state"], "failed", "{run}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("ESSO reports version 3.0.6, expected 3.0.7"),
        "{failed}"
    );
    // Retry: a new attempt waits again; this time the operator installs, then approves.
    let o = s.ctl(&["retry", &run_id, "--node", "m2"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    wait_for_install(&s, &run_id, "m2", "upgrade-master");
    install_by_hand(&s, "m2", "3.0.7");
    assert_eq!(approve(&s, &run_id, "m2").status.code(), Some(0));

    // Members: both wait at once (max_parallel 2), each approved on its own.
    wait_for_install(&s, &run_id, "b1", "upgrade");
    wait_for_install(&s, &run_id, "b2", "upgrade");
    for node in ["b1", "b2"] {
        install_by_hand(&s, node, "3.0.7");
        assert_eq!(approve(&s, &run_id, node).status.code(), Some(0));
    }
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(step_of(&run, "m2", "upgrade-master")["attempts"], 2);
    // The agents verified the installs themselves, and then verify-master / verify ran as steps.
    let log = tool_log(&s.fleet);
    assert!(
        !log.iter().any(|e| e.tool == "setup"),
        "no installer ran: {log:?}"
    );
    // Invariant 1: nothing ran on a member before the master's last verification (verify-master).
    let master_verified = log
        .iter()
        .filter(|e| e.node == "m2" && e.tool == "verify" && !e.start)
        .map(|e| e.at_ns)
        .max()
        .unwrap();
    let first_member = log
        .iter()
        .filter(|e| e.node.starts_with('b'))
        .map(|e| e.at_ns)
        .min()
        .unwrap();
    assert!(first_member > master_verified, "{log:?}");
    let verifies = log
        .iter()
        .filter(|e| e.node == "m2" && e.tool == "verify" && e.start)
        .count();
    assert_eq!(verifies, 3, "2 approvals + verify-master: {log:?}");
    // Who approved is in the audit trail.
    let (_, audit) = s.json(&["audit", &run_id]);
    let approvals: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "approve")
        .collect();
    assert_eq!(approvals.len(), 4, "{audit}");
    assert!(
        approvals.iter().all(|e| e["operator"] == "admin"),
        "{audit}"
    );
    assert!(
        approvals
            .iter()
            .any(|e| e["node"] == "b2" && e["step"] == "upgrade"),
        "{audit}"
    );
}

#[test]
fn abort_ends_an_attended_wait_and_the_server_takes_new_work() {
    let s = setup(&attended_prod(), &[], &[]);
    let run_id = start_prod(&s);
    wait_for_install(&s, &run_id, "m2", "upgrade-master");
    let o = s.ctl(&["abort", &run_id]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "aborted", "{run}");
    let step = step_of(&run, "m2", "upgrade-master");
    assert_eq!(step["state"], "failed", "{run}");
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .contains("cancelled while it waited for the operator"),
        "{step}"
    );
    // The agent holds nothing: a new run on the same server starts (and waits again).
    let run_id = eventually(Duration::from_secs(20), "a new run accepted", || {
        let (code, started) = s.json(&["upgrade", "--env", "prod", "--detach"]);
        (code == Some(0)).then(|| started["run_id"].as_str().unwrap().to_string())
    });
    wait_for_install(&s, &run_id, "m2", "upgrade-master");
}

#[test]
fn a_wait_no_run_wants_any_more_is_dropped_when_its_agent_comes_back() {
    let mut s = setup(&attended_prod(), &[], &[]);
    let run_id = start_prod(&s);
    wait_for_install(&s, &run_id, "m2", "upgrade-master");
    // The server is unreachable when the operator aborts: the cancel cannot reach its agent.
    let m2 = 4;
    s.agents[m2].process.kill();
    s.coordinator.wait_attached(&s.fleet, "m2", false);
    assert_eq!(s.ctl(&["abort", &run_id]).status.code(), Some(0));
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "aborted", "{run}");
    // The coordinator restarts too; then the agent is back with the wait in its journal.
    restart_coordinator(&mut s);
    s.agents[m2] = crate::upgrade::restart_agent(&s, "m2");
    s.coordinator.wait_attached(&s.fleet, "m2", true);
    // It was told to drop the attempt: a new run's install on m2 is not refused as busy.
    let run_id = eventually(Duration::from_secs(20), "a new run accepted", || {
        let (code, started) = s.json(&["upgrade", "--env", "prod", "--detach"]);
        (code == Some(0)).then(|| started["run_id"].as_str().unwrap().to_string())
    });
    let run = wait_for_install(&s, &run_id, "m2", "upgrade-master");
    assert_eq!(
        step_of(&run, "m2", "upgrade-master")["attempts"],
        1,
        "{run}"
    );
    let agent_log = s.agents[m2].process.log_text();
    assert!(
        agent_log.contains("the waiting attempt was cancelled"),
        "{agent_log}"
    );
}

/// The inventory's FLEET without any `install` key: every environment attended, the default.
fn no_install_key() -> String {
    let inventory = FLEET.replace("install = \"unattended\"\n", "");
    assert!(!inventory.contains("install ="), "{inventory}");
    inventory
}

/// The plan's step `node step` (JSON).
fn planned<'a>(plan: &'a serde_json::Value, node: &str, step: &str) -> &'a serde_json::Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == node && s["step"] == step)
        .unwrap_or_else(|| panic!("no {node} {step} in {plan}"))
}

#[test]
fn an_inventory_without_install_stops_at_the_masters_install_until_approved() {
    let s = setup(&no_install_key(), &[], &[]);
    // `plan` says how each install step will install, and why.
    let (_, plan) = s.json(&["plan", "--env", "dev"]);
    let install = planned(&plan, "m1", "upgrade-master");
    assert_eq!(install["install"], "attended", "{plan}");
    assert!(
        install["install_reason"]
            .as_str()
            .unwrap()
            .contains("install = \"attended\""),
        "{install}"
    );
    assert_eq!(planned(&plan, "a1", "upgrade")["install"], "attended");
    assert_eq!(
        planned(&plan, "m1", "verify-master")["install"],
        serde_json::Value::Null
    );
    let text = s.ctl(&["plan", "--env", "dev"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("attended install ("),
        "{text:?}"
    );

    let (code, started) = s.json(&["upgrade", "--env", "dev", "--master-only", "--detach"]);
    assert_eq!(code, Some(0), "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let run = wait_for_install(&s, &run_id, "m1", "upgrade-master");
    assert_eq!(run["state"], "waiting-approval", "{run}");
    assert_eq!(step_of(&run, "m1", "upgrade-master")["state"], "waiting");
    let reason = run["reason"].as_str().unwrap();
    for part in [
        "attended install on m1",
        "Setup.exe",
        &format!("fleetctl approve {run_id} --node m1"),
    ] {
        assert!(reason.contains(part), "{part:?} in {reason}");
    }
    // The backup ran; the agent ran no installer although it has a command of its own for it.
    let log = tool_log(&s.fleet);
    assert!(log.iter().any(|e| e.node == "m1" && e.tool == "backup"));
    assert!(!log.iter().any(|e| e.tool == "setup"), "{log:?}");

    // The operator installs, then approves through the operator API (`fleetctl approve`).
    install_by_hand(&s, "m1", "3.0.7");
    assert_eq!(approve(&s, &run_id, "m1").status.code(), Some(0));
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(step_of(&run, "m1", "upgrade-master")["state"], "succeeded");
    assert_eq!(step_of(&run, "m1", "verify-master")["state"], "succeeded");
    assert!(!tool_log(&s.fleet).iter().any(|e| e.tool == "setup"));
}

/// `upgrade_actions` without the `[actions.install_sso]` table: the agent installs with its built-in.
fn actions_without_install(s: &Setup, node: &str) -> String {
    let all = fleet_tests::upgrade_actions(&s.fleet, node, "").unwrap();
    let (before, rest) = all.split_once("[actions.install_sso]\n").unwrap();
    let after = rest.find("[actions.").map_or("", |at| &rest[at..]);
    let actions = format!("{before}{after}");
    assert!(!actions.contains("install_sso"), "{actions}");
    actions
}

#[test]
fn an_unattended_biztalk_upgrade_without_an_override_waits_and_says_why() {
    let mut s = setup(FLEET, &[], &[]);
    // m1's agent has no install command of its own: a BizTalk setup upgrade, which cannot be silent.
    let m1 = 0;
    s.agents[m1].process.kill();
    s.coordinator.wait_attached(&s.fleet, "m1", false);
    let tls = "agents/m1/tls";
    let spec = fleet_tests::AgentSpec {
        node: "m1",
        tls_rel: tls,
        coordinator: &s.coordinator.url(),
        version: "3.0.6",
    };
    s.agents[m1] =
        fleet_tests::Agent::start_with(&s.fleet, &spec, &actions_without_install(&s, "m1"))
            .unwrap();
    s.coordinator.wait_attached(&s.fleet, "m1", true);

    let (_, plan) = s.json(&["plan", "--env", "dev"]);
    let install = planned(&plan, "m1", "upgrade-master");
    assert_eq!(install["install"], "attended", "{install}");
    let why = install["install_reason"].as_str().unwrap();
    for quote in [
        "The Quiet flag cannot be specified for an upgrade",
        "Silent Upgrade is not supported",
    ] {
        assert!(why.contains(quote), "{quote:?} in {why}");
    }
    // The members' agents have their own command: unattended.
    assert_eq!(planned(&plan, "a1", "upgrade")["install"], "unattended");

    let (code, started) = s.json(&["upgrade", "--env", "dev", "--master-only", "--detach"]);
    assert_eq!(code, Some(0), "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let run = wait_for_install(&s, &run_id, "m1", "upgrade-master");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("(attended: a BizTalk Server upgrade cannot be silent"),
        "{reason}"
    );
    assert!(!tool_log(&s.fleet).iter().any(|e| e.tool == "setup"));
    install_by_hand(&s, "m1", "3.0.7");
    assert_eq!(approve(&s, &run_id, "m1").status.code(), Some(0));
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
}
