//! `fleetctl migrate --env E` end to end (SPEC §5), with the migration's steps overridden by the
//! `hostsec` fixture: back up the old host security data → export its key → install ESSO → copy the
//! migration utility → (the operator stops the Host Account Cache service on the host security server)
//! → export → the operator's review → import → verify, all on the environment's master secret server,
//! each step only after the one before it succeeded, resumable like an upgrade. The built-in actions'
//! parameter flow is `migrate_builtins`.

use fleet_tests::{PATIENCE, eventually, fixture, tool_log};

use crate::durability::{restart_coordinator, step_of, wait_final, wait_state, wait_tool};
use crate::upgrade::{FLEET, NODES, Setup, restart_agent_with, setup};

/// dev migrates from HIS 2000, its host security server `PDC1` (not an inventory node: the operator
/// stops its Host Account Cache service); the old data and key go to their own directory.
pub(crate) fn migrate_fleet(migration: &str) -> String {
    let dev_end = "backup_dir = 'BACKUPS'\n[[environment]]\nname = \"prod\"";
    assert_eq!(FLEET.matches(dev_end).count(), 1);
    FLEET.replace(
        dev_end,
        &format!(
            "backup_dir = 'BACKUPS'\n[environment.migration]\n{migration}[[environment]]\nname = \"prod\""
        ),
    )
}

const HIS2000_ELSEWHERE: &str =
    "source = \"his2000\"\nhost_security_server = \"PDC1\"\nbackup_dir = 'BACKUPS/hostsec'\n";

/// The fleet, with dev's master m1 given the migration actions (the `hostsec` fixture, writing into
/// the migration's backup directory) and the fixture settings `env`.
fn migration_fleet(env: &str) -> Setup {
    let mut s = setup(&migrate_fleet(HIS2000_ELSEWHERE), &[("m1", "")], &[]);
    std::fs::create_dir_all(s.fleet.path("backups/hostsec")).unwrap();
    let actions: String = [
        "backup_security_data",
        "export_encryption_key",
        "copy_migration_utility",
        "run_migration",
    ]
    .iter()
    .map(|action| {
        format!(
            "[actions.{action}]\nprogram = \"{}\"\nargs = [\"{}\", \"{{backup_dir}}\"]\nenv = {{ {}{env} }}\n",
            fixture("hostsec").display(),
            action.replace('_', "-"),
            fleet_tests::esso_env(&s.fleet, "m1"),
        )
    })
    .collect();
    let m1 = NODES.iter().position(|(n, _)| *n == "m1").unwrap();
    s.agents[m1].process.kill();
    s.agents[m1] = restart_agent_with(&s, "m1", env, &actions);
    s.coordinator.wait_attached(&s.fleet, "m1", true);
    s
}

pub(crate) fn start_migrate(s: &Setup) -> String {
    let (code, started) = s.json(&["migrate", "--env", "dev", "--detach"]);
    assert_eq!(code, Some(0), "{started}");
    started["run_id"].as_str().unwrap().to_string()
}

/// The migration tools that ran, in time order, as `node tool`.
fn tools_run(s: &Setup) -> Vec<String> {
    tool_log(&s.fleet)
        .iter()
        .filter(|e| e.start)
        .map(|e| format!("{} {}", e.node, e.tool))
        .collect()
}

/// Waits until run `run_id` waits for the operator at the coordinator's step `step`; returns the run.
pub(crate) fn wait_for_operator_at(s: &Setup, run_id: &str, step: &str) -> serde_json::Value {
    eventually(PATIENCE, &format!("run {run_id} waiting at {step}"), || {
        let (_, run) = s.json(&["run", "show", run_id]);
        let waits = run["state"] == "waiting-approval"
            && coordinator_step(&run, step)["state"] == "waiting";
        waits.then_some(run)
    })
}

/// The coordinator's own step `step` (no node) of `run`.
pub(crate) fn coordinator_step<'a>(
    run: &'a serde_json::Value,
    step: &str,
) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"].is_null() && s["step"] == step)
        .unwrap_or_else(|| panic!("no coordinator step {step} in {run}"))
}

pub(crate) fn approve(s: &Setup, run_id: &str) {
    let o = s.ctl(&["approve", run_id]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

#[test]
fn migrate_runs_in_order_on_the_master_and_imports_only_after_the_review() {
    let s = migration_fleet("");
    let o = s.ctl(&["migrate", "--env", "staging"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("environment \"staging\" is not in the inventory"),
        "{o:?}"
    );
    // prod has no [environment.migration]: nothing to migrate from, and no run starts.
    let o = s.ctl(&["migrate", "--env", "prod"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("environment \"prod\" has no [environment.migration] in the inventory"),
        "{o:?}"
    );
    let (_, runs) = s.json(&["runs"]);
    assert_eq!(runs.as_array().map(Vec::len), Some(0), "{runs}");

    let run_id = start_migrate(&s);
    // PDC1 is not the master: the run waits for the operator to stop its Host Account Cache.
    let run = wait_for_operator_at(&s, &run_id, "stop-host-account-cache");
    assert!(
        run["reason"].as_str().unwrap().contains(&format!(
            "stop the Host Account Cache service on PDC1 for the export, then approve (`fleetctl approve {run_id}`)"
        )),
        "{run}"
    );
    assert_eq!(
        tools_run(&s),
        [
            "m1 backup-security-data",
            "m1 export-encryption-key",
            "m1 setup",
            "m1 copy-migration-utility",
        ]
    );
    approve(&s, &run_id);

    // The export ran; the run waits for the review, showing what was exported.
    let run = wait_for_operator_at(&s, &run_id, "review-export");
    let hostsec = s.fleet.path("backups/hostsec");
    let xml = hostsec.join("hostsecdb.xml");
    let review = coordinator_step(&run, "review-export")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        review.starts_with(&format!("exported {} (", xml.display()))
            && review.contains(" bytes, 3 lines)")
            && review.contains("resolve conflicting mappings or names")
            && review.contains("restart the Host Account Cache service on PDC1"),
        "{review}"
    );
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .starts_with("review-export of dev: exported"),
        "{run}"
    );
    assert_eq!(
        step_of(&run, "m1", "import-host-security")["state"],
        "pending"
    );
    assert_eq!(tools_run(&s).last().unwrap(), "m1 hissomig-export");
    assert!(xml.is_file(), "kept for the review");
    assert!(!hostsec.join("migrated").exists(), "nothing imported yet");

    approve(&s, &run_id);
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["workflow"], "migrate");
    let steps: Vec<String> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            format!(
                "{} {} {}",
                st["node"].as_str().unwrap_or("-"),
                st["step"].as_str().unwrap(),
                st["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "m1 backup-security-data succeeded",
            "m1 export-encryption-key succeeded",
            "m1 install-sso succeeded",
            "m1 copy-migration-utility succeeded",
            "- stop-host-account-cache succeeded",
            "m1 export-host-security succeeded",
            "- review-export succeeded",
            "m1 import-host-security succeeded",
            "m1 verify succeeded",
        ]
    );
    assert_eq!(
        tools_run(&s),
        [
            "m1 backup-security-data",
            "m1 export-encryption-key",
            "m1 setup",
            "m1 copy-migration-utility",
            "m1 hissomig-export",
            "m1 hissomig-import",
            "m1 verify",
        ]
    );
    // Everything went to the migration's backup directory ({backup_dir}), none to the environment's.
    for file in ["snaudb.bak", "hostseckey.bak", "migrated"] {
        assert!(hostsec.join(file).is_file(), "{file}");
        assert!(!s.fleet.path("backups").join(file).exists(), "{file}");
    }
    assert!(!xml.exists(), "the export is deleted after the import");
    let (_, audit) = s.json(&["audit", &run_id]);
    let approvals = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "approve")
        .count();
    assert_eq!(approvals, 2, "{audit}");
    let text = s.step_log(&run_id, "m1", "import-host-security");
    assert!(
        text.contains("hissomig -import") && text.contains("hissomig-import=done"),
        "{text}"
    );
}

#[test]
fn a_failed_migration_step_halts_and_a_restarted_coordinator_goes_on_without_rerunning() {
    let mut s = migration_fleet(
        ", FAKE_HOSTSEC_FAIL = \"export-encryption-key\", FAKE_HOSTSEC_SECONDS = \"2\"",
    );
    let run_id = start_migrate(&s);
    let halted = wait_state(&s, &run_id, "halted");
    assert!(
        halted["reason"]
            .as_str()
            .unwrap()
            .contains("export-encryption-key on m1 (dev) failed"),
        "{halted}"
    );
    // Nothing after it ran: no install, no migration.
    assert_eq!(
        tools_run(&s),
        ["m1 backup-security-data", "m1 export-encryption-key"]
    );
    // A chain step cannot be skipped; resume does not pass it.
    assert_ne!(
        s.ctl(&["skip", &run_id, "--node", "m1"]).status.code(),
        Some(0)
    );
    assert_ne!(s.ctl(&["resume", &run_id]).status.code(), Some(0));
    assert_eq!(
        s.ctl(&["retry", &run_id, "--node", "m1"]).status.code(),
        Some(0)
    );
    wait_for_operator_at(&s, &run_id, "stop-host-account-cache");
    approve(&s, &run_id);
    // The coordinator is killed while the export runs, and comes back.
    wait_tool(&s.fleet, "m1", "hissomig-export", true);
    restart_coordinator(&mut s);
    wait_for_operator_at(&s, &run_id, "review-export");
    // And again while the run waits for the review: it still waits, and nothing was imported.
    restart_coordinator(&mut s);
    let run = wait_for_operator_at(&s, &run_id, "review-export");
    assert!(
        coordinator_step(&run, "review-export")["message"]
            .as_str()
            .unwrap()
            .starts_with("exported "),
        "{run}"
    );
    assert!(!tools_run(&s).contains(&"m1 hissomig-import".to_string()));
    approve(&s, &run_id);
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(step_of(&run, "m1", "export-encryption-key")["attempts"], 2);
    assert_eq!(step_of(&run, "m1", "export-host-security")["attempts"], 1);
    let exports = tools_run(&s)
        .iter()
        .filter(|t| *t == "m1 hissomig-export")
        .count();
    assert_eq!(exports, 1, "the export ran once: {:?}", tools_run(&s));
}
