//! `fleetctl migrate --env E` end to end (SPEC §5): back up the old host security data → export its
//! key → install ESSO → copy the migration utility → run it → verify, all on the environment's master
//! secret server, each step only after the one before it succeeded, resumable like an upgrade.

use fleet_tests::{PATIENCE, fixture, tool_log};

use crate::durability::{restart_coordinator, step_of, wait_final, wait_state, wait_tool};
use crate::upgrade::{FLEET, NODES, Setup, restart_agent_with, setup};

const STEPS: [&str; 6] = [
    "backup-security-data",
    "export-encryption-key",
    "install-sso",
    "copy-migration-utility",
    "run-migration",
    "verify",
];

/// The fleet, with dev's master m1 given the migration actions (the `hostsec` fixture, writing into
/// the backup directory) and the fixture settings `env`.
fn migration_fleet(env: &str) -> Setup {
    let mut s = setup(FLEET, &[("m1", "")], &[]);
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

fn start_migrate(s: &Setup) -> String {
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

#[test]
fn migrate_runs_its_six_steps_in_order_on_the_master_only() {
    let s = migration_fleet("");
    let o = s.ctl(&["migrate", "--env", "staging"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("environment \"staging\" is not in the inventory"),
        "{o:?}"
    );

    let run_id = start_migrate(&s);
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["workflow"], "migrate");
    let steps: Vec<(String, String, String)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            (
                st["node"].as_str().unwrap_or("-").to_string(),
                st["step"].as_str().unwrap().to_string(),
                st["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = STEPS
        .iter()
        .map(|st| ("m1".to_string(), st.to_string(), "succeeded".to_string()))
        .collect();
    assert_eq!(steps, expected);
    assert_eq!(
        tools_run(&s),
        [
            "m1 backup-security-data",
            "m1 export-encryption-key",
            "m1 setup",
            "m1 copy-migration-utility",
            "m1 run-migration",
            "m1 verify",
        ]
    );
    let backups = s.fleet.path("backups");
    assert!(backups.join("migrated").exists());
    let (_, runs) = s.json(&["runs"]);
    assert_eq!(runs[0]["workflow"], "migrate", "{runs}");
    // A run with progress and outputs of its own, as for an upgrade.
    let logs = s.ctl(&["logs", &run_id, "--node", "m1", "--step", "run-migration"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains("hissomig -import") && text.contains("run-migration=done"),
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
    // The coordinator is killed while the migration runs, and comes back.
    wait_tool(&s.fleet, "m1", "run-migration", true);
    restart_coordinator(&mut s);
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(step_of(&run, "m1", "export-encryption-key")["attempts"], 2);
    assert_eq!(step_of(&run, "m1", "run-migration")["attempts"], 1);
    let migrations = tools_run(&s)
        .iter()
        .filter(|t| *t == "m1 run-migration")
        .count();
    assert_eq!(migrations, 1, "the migration ran once: {:?}", tools_run(&s));
}
