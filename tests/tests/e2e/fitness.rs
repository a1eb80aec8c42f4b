//! Preflight fitness (issue 19): what the agents report about each server before anything changes.
//! `plan` warns about a failed check and about checks a customer's facts command does not report; the
//! run's preflight halts the environment on a failed check, with its name and what to do, and nothing
//! is installed.

use crate::durability::wait_state;
use crate::upgrade::{FLEET, Setup, setup, setups};

#[test]
fn a_failed_check_is_in_the_plan_and_halts_preflight_before_anything_changes() {
    let s = setup(FLEET, &[], &[]);
    s.fleet
        .write(
            "agents/m1/esso/checks",
            "reboot_pending=failed: a restart is pending (Windows Update: RebootRequired); restart the server before the upgrade\nmsdtc=ok running\n",
        )
        .unwrap();
    // The facts are read at attach; preflight reads them again.
    let (code, plan) = s.json(&["plan", "--env", "dev"]);
    assert_eq!(code, Some(0), "{plan}");
    let warnings: Vec<&str> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    // The fixture's facts at attach had no checks: every node's are "not reported".
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("checks not reported by m1, a1, a2, a3: local_admin, sso_admin")),
        "{warnings:?}"
    );

    let (code, run) = s.json(&["upgrade", "--env", "dev", "--detach"]);
    assert_eq!(code, Some(0), "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let run = wait_state(&s, &run_id, "halted");
    let steps = Setup::steps(&run);
    assert_eq!(steps["- preflight"], "failed", "{run}");
    let preflight = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["step"] == "preflight")
        .unwrap();
    assert!(
        preflight["message"]
            .as_str()
            .unwrap()
            .contains("m1: check reboot_pending failed: a restart is pending (Windows Update: RebootRequired); restart the server before the upgrade"),
        "{preflight}"
    );
    assert!(setups(&fleet_tests::tool_log(&s.fleet)).is_empty());

    // The facts preflight read are the node's latest: `plan` now warns about the failed check.
    let (_, plan) = s.json(&["plan", "--env", "dev"]);
    let warned = plan["warnings"].to_string();
    assert!(
        warned.contains("m1: check reboot_pending failed: a restart is pending (Windows Update: RebootRequired); restart the server before the upgrade (preflight will halt its environment)"),
        "{warned}"
    );
    assert!(
        warned.contains("checks not reported by m1: local_admin, sso_admin, backup_space, entsso"),
        "{warned}"
    );
}
