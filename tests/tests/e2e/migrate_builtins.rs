//! The migrate workflow over the agent's BUILT-IN `export_encryption_key`, `copy_migration_utility`
//! and `run_migration` (fixture scripts standing in for `udbkey`, `hissomig` and the service
//! controller; `[tools]` in agent.toml): what `[environment.migration]` says reaches the agent with
//! each assignment (source, host security server or database file, backup and log directories, the
//! phase), and the import runs only after the operator approved the review of the export.

use std::path::{Path, PathBuf};

use fleet_tests::{fixture, upgrade_actions};

use crate::builtins::{calls, script, start_agent};
use crate::durability::{step_of, wait_final};
use crate::migrate::{
    approve, coordinator_step, migrate_fleet, start_migrate, wait_for_operator_at,
};
use crate::upgrade::{NODES, Setup, setup};

/// The fleet with m1's agent on the built-in migration actions over the Windows fixtures; its
/// simulated server runs the Host Account Cache service. Returns the server's directory.
fn built_in_migration(migration: &str) -> (Setup, PathBuf) {
    let mut s = setup(&migrate_fleet(migration), &[("m1", "")], &[]);
    std::fs::create_dir_all(s.fleet.path("backups/hostsec")).unwrap();
    // hissomig on the installer's media, where copy_migration_utility looks for it.
    s.fleet
        .write(
            "media/support/utilities/hissomig.exe",
            "simulated hissomig\n",
        )
        .unwrap();
    let win = s.fleet.path("agents/m1/win");
    std::fs::create_dir_all(&win).unwrap();
    std::fs::write(win.join("service.SnaDatabase"), "running\n").unwrap();
    let bin = s.fleet.path("agents/m1/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let mut tools = String::from("[tools]\n");
    for tool in ["sc", "reg", "udbkey", "hissomig"] {
        let wrapper = script(
            &bin.join(tool),
            &format!(
                "FAKE_WIN_DIR='{}' exec '{}' \"$@\"",
                win.display(),
                fixture("windows").join(tool).display()
            ),
        );
        tools.push_str(&format!("{tool} = \"{}\"\n", wrapper.display()));
    }
    tools.push_str(&format!(
        "migration_dir = \"{}\"\n",
        win.join("hostsec").display()
    ));
    // The docs defer the old product's backup to the old product: a configured command.
    let backup = format!(
        "[actions.backup_security_data]\nprogram = \"{}\"\nargs = [\"backup-security-data\", \"{{backup_dir}}\"]\nenv = {{ {} }}\n",
        fixture("hostsec").display(),
        fleet_tests::esso_env(&s.fleet, "m1"),
    );
    let extra = upgrade_actions(&s.fleet, "m1", "").unwrap() + &tools + &backup;
    let m1 = NODES.iter().position(|(n, _)| *n == "m1").unwrap();
    s.agents[m1].process.kill();
    s.agents[m1] = start_agent(&s, "m1", "", &extra);
    s.coordinator.wait_attached(&s.fleet, "m1", true);
    (s, win)
}

fn hissomig_calls(win: &Path) -> Vec<String> {
    calls(win)
        .into_iter()
        .filter(|c| c.starts_with("hissomig") || c.starts_with("hac="))
        .collect()
}

#[test]
fn the_built_in_migration_gets_its_parameters_and_imports_only_after_the_review() {
    let (s, win) = built_in_migration(
        "source = \"his2000\"\nhost_security_server = \"M1\"\nbackup_dir = 'BACKUPS/hostsec'\nlog_dir = 'BACKUPS/hissomig-log'\n",
    );
    let run_id = start_migrate(&s);
    // M1 is the master (as ESSO compares names): its own export step stops the Host Account Cache,
    // no operator is asked to; the run's first wait is the review.
    let run = wait_for_operator_at(&s, &run_id, "review-export");
    assert!(
        !run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["step"] == "stop-host-account-cache"),
        "{run}"
    );
    let hostsec = s.fleet.path("backups/hostsec");
    let log_dir = s.fleet.path("backups/hissomig-log");
    let key = hostsec.join(format!("ssofleet-hostseckey-dev-{run_id}.bak"));
    let xml = win.join(format!("hostsec/ssofleet-hostsecdb-dev-{run_id}.xml"));
    // udbkey's key, in the migration's backup directory (built-in export_encryption_key).
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        "SIMULATED-HOSTSEC-KEY 00112233445566778899AABBCCDDEEFF\r\n"
    );
    assert!(hostsec.join("snaudb.bak").is_file());
    // hissomig copied from the media to the migration folder (built-in copy_migration_utility).
    assert_eq!(
        std::fs::read_to_string(win.join("hostsec/hissomig.exe")).unwrap(),
        "simulated hissomig\n"
    );
    // Only the export so far, from the inventory's server, with the service stopped while it ran.
    assert_eq!(
        hissomig_calls(&win),
        [
            format!(
                "hissomig [-export] [-servername] [M1] [-output] [{}] [-log] [{}]",
                xml.display(),
                log_dir.display()
            ),
            "hac=stopped".to_string(),
        ]
    );
    assert!(
        calls(&win).contains(&"sc [start] [SnaDatabase]".to_string()),
        "restarted after the export"
    );
    assert!(xml.is_file(), "kept for the review and the import");
    // The review shows what the export reported.
    let message = coordinator_step(&run, "review-export")["message"]
        .as_str()
        .unwrap()
        .to_string();
    let size = std::fs::metadata(&xml).unwrap().len();
    assert!(
        message.starts_with(&format!(
            "exported {} ({size} bytes, 1 line); the Host Account Cache service on m1 is running; review the exported host security data",
            xml.display()
        )),
        "{message}"
    );
    assert!(
        !message.contains("restart the Host Account Cache"),
        "{message}"
    );
    assert_eq!(
        step_of(&run, "m1", "import-host-security")["state"],
        "pending"
    );

    approve(&s, &run_id);
    let run = wait_final(&s, &run_id, fleet_tests::PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        hissomig_calls(&win)[2..],
        [format!(
            "hissomig [-import] [-key] [{}] [-input] [{}] [-log] [{}]",
            key.display(),
            xml.display(),
            log_dir.display()
        )]
    );
    assert!(!xml.exists(), "the exported security data is deleted");
    let text = s.step_log(&run_id, "m1", "import-host-security");
    assert!(
        text.contains("imported=true") && text.contains("xml_deleted=true"),
        "{text}"
    );
}

#[test]
fn an_sna4_migration_exports_its_database_file_and_has_no_key() {
    let (s, win) = built_in_migration(
        "source = \"sna4\"\nhost_security_dbfile = 'D:\\SNA Server\\hostsec\\dbfile.dbs'\nbackup_dir = 'BACKUPS/hostsec'\n",
    );
    let run_id = start_migrate(&s);
    let run = wait_for_operator_at(&s, &run_id, "review-export");
    let key = step_of(&run, "m1", "export-encryption-key");
    assert_eq!(key["state"], "skipped", "{run}");
    assert_eq!(key["message"], "SNA Server 4.0 has no encryption key");
    assert!(!calls(&win).iter().any(|c| c.starts_with("udbkey")));
    let xml = win.join(format!("hostsec/ssofleet-hostsecdb-dev-{run_id}.xml"));
    assert_eq!(
        hissomig_calls(&win),
        [
            format!(
                r"hissomig [-export] [-dbfile] [D:\SNA Server\hostsec\dbfile.dbs] [-output] [{}]",
                xml.display()
            ),
            "hac=stopped".to_string(),
        ]
    );
    approve(&s, &run_id);
    let run = wait_final(&s, &run_id, fleet_tests::PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        hissomig_calls(&win)[2..],
        [format!("hissomig [-import] [-input] [{}]", xml.display())]
    );
}
