use std::path::Path;

use super::*;
use crate::domain::NodeName;
use crate::plan::{Reported, Selection, plan};

/// prod migrates from HIS 2000 whose host security server is `PDC_SERVER`; dev has no migration.
const FLEET: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = '/media/setup.exe'
[[environment]]
name = "dev"
master = "d1"
backup_dir = '/b/dev'
[[environment]]
name = "prod"
master = "p1.corp.example"
members = ["p2"]
backup_dir = '/b/prod'
[environment.migration]
source = "his2000"
host_security_server = "PDC_SERVER"
backup_dir = '\\backup01\hostsec'
"#;

fn inventory(text: &str) -> Inventory {
    Inventory::parse(Path::new("fleet.toml"), text).unwrap()
}

fn migrate(env: &str) -> Selection {
    Selection {
        workflow: Workflow::Migrate,
        environments: vec![EnvName::new(env).unwrap()],
        master_only: false,
        max_parallel: None,
        max_failures: None,
    }
}

fn versions(pairs: &[(&str, &str)]) -> Reports {
    pairs
        .iter()
        .map(|(n, v)| (NodeName::new(n).unwrap(), Reported::version(v)))
        .collect()
}

/// Each step as `node step expected`.
fn shape(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| {
            let node = s.node.as_ref().map_or("-", NodeName::as_str);
            format!("{node} {} {}", s.kind.name(), s.expected)
        })
        .collect()
}

fn note(plan: &Plan, kind: StepKind) -> &str {
    &plan
        .steps
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("no {}", kind.name()))
        .note
}

#[test]
fn his2000_from_another_server_exports_after_the_operator_stopped_its_host_account_cache() {
    let inv = inventory(FLEET);
    let p = plan(
        &inv,
        &migrate("prod"),
        &versions(&[("p1.corp.example", "")]),
    )
    .unwrap();
    assert_eq!(p.workflow, Workflow::Migrate);
    assert_eq!(
        shape(&p),
        [
            "p1.corp.example backup-security-data run",
            "p1.corp.example export-encryption-key run",
            "p1.corp.example install-sso run",
            "p1.corp.example copy-migration-utility run",
            "- stop-host-account-cache run",
            "p1.corp.example export-host-security run",
            "- review-export run",
            "p1.corp.example import-host-security run",
            "p1.corp.example verify run",
        ]
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert!(p.steps.iter().all(|s| s.kind.in_master_chain()));
    assert_eq!(
        note(&p, StepKind::StopHostAccountCache),
        "stop the Host Account Cache service on PDC_SERVER for the export, then approve"
    );
    assert_eq!(
        note(&p, StepKind::ExportHostSecurity),
        "hissomig -export -servername PDC_SERVER; the Host Account Cache service on PDC_SERVER stopped by the operator"
    );
    assert_eq!(
        note(&p, StepKind::ReviewExport),
        "review the exported host security data and resolve conflicting mappings or names; restart the Host Account Cache service on PDC_SERVER (stopped for the export), then approve: the import starts only then"
    );
    assert_eq!(
        note(&p, StepKind::ExportEncryptionKey),
        r"udbkey /showkey into \\backup01\hostsec"
    );
    assert_eq!(
        note(&p, StepKind::ImportHostSecurity),
        r"hissomig -import -key (the key file in \\backup01\hostsec); the exported XML is deleted after"
    );
}

#[test]
fn his2000_on_the_master_itself_has_no_operator_stop() {
    // The master's short name, in another case: the same server (as ESSO compares them).
    let inv = inventory(&FLEET.replace("PDC_SERVER", "P1"));
    let p = plan(&inv, &migrate("prod"), &versions(&[])).unwrap();
    let kinds: Vec<&str> = p.steps.iter().map(|s| s.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "backup-security-data",
            "export-encryption-key",
            "install-sso",
            "copy-migration-utility",
            "export-host-security",
            "review-export",
            "import-host-security",
            "verify",
        ]
    );
    assert_eq!(
        note(&p, StepKind::ExportHostSecurity),
        "hissomig -export -servername P1; the agent stops the Host Account Cache service on p1.corp.example for it and restarts it after"
    );
    assert!(
        !note(&p, StepKind::ReviewExport).contains("restart"),
        "nothing for the operator to restart"
    );
}

#[test]
fn sna4_has_no_key_and_an_operator_stop_only_for_a_dbfile_on_another_server() {
    let sna = |dbfile: &str| {
        FLEET.replace(
            "source = \"his2000\"\nhost_security_server = \"PDC_SERVER\"",
            &format!("source = \"sna4\"\nhost_security_dbfile = '{dbfile}'"),
        )
    };
    let inv = inventory(&sna(r"D:\SNA Server\hostsec\dbfile.dbs"));
    let p = plan(
        &inv,
        &migrate("prod"),
        &versions(&[("p1.corp.example", "")]),
    )
    .unwrap();
    assert_eq!(
        shape(&p),
        [
            "p1.corp.example backup-security-data run",
            "p1.corp.example export-encryption-key skipped (SNA Server 4.0 has no encryption key)",
            "p1.corp.example install-sso run",
            "p1.corp.example copy-migration-utility run",
            "p1.corp.example export-host-security run",
            "- review-export run",
            "p1.corp.example import-host-security run",
            "p1.corp.example verify run",
        ]
    );
    assert_eq!(
        note(&p, StepKind::BackupSecurityData),
        r"the SNA Server 4.0 host security file D:\SNA Server\hostsec\dbfile.dbs to \\backup01\hostsec"
    );
    assert_eq!(
        note(&p, StepKind::ImportHostSecurity),
        "hissomig -import without a key (SNA Server 4.0); the exported XML is deleted after"
    );
    // On a share of another server: the Host Account Cache service runs there.
    let inv = inventory(&sna(r"\\sna01\hostsec\dbfile.dbs"));
    let p = plan(&inv, &migrate("prod"), &versions(&[])).unwrap();
    assert_eq!(
        note(&p, StepKind::StopHostAccountCache),
        "stop the Host Account Cache service on sna01 for the export, then approve"
    );
    // On a share of the master itself: the export step stops it.
    let inv = inventory(&sna(r"\\p1\hostsec\dbfile.dbs"));
    let p = plan(&inv, &migrate("prod"), &versions(&[])).unwrap();
    assert!(
        !p.steps
            .iter()
            .any(|s| s.kind.awaits_operator() && s.kind != StepKind::ReviewExport)
    );
}

#[test]
fn an_environment_without_a_migration_table_is_refused_by_name() {
    let inv = inventory(FLEET);
    let refused = plan(&inv, &migrate("dev"), &versions(&[])).unwrap_err();
    assert_eq!(refused, PlanError::NoMigration("dev".into()));
    assert_eq!(
        refused.to_string(),
        "environment \"dev\" has no [environment.migration] in the inventory: add it with source (\"his2000\" or \"sna4\"), host_security_server or host_security_dbfile, and backup_dir before migrating"
    );
    assert_eq!(
        plan(&inv, &migrate("staging"), &versions(&[])),
        Err(PlanError::UnknownEnvironment("staging".into()))
    );
    let two = Selection {
        environments: vec![EnvName::new("prod").unwrap(), EnvName::new("dev").unwrap()],
        ..migrate("prod")
    };
    assert_eq!(
        plan(&inv, &two, &versions(&[])),
        Err(PlanError::MigrateOneEnvironment)
    );
    let none = Selection {
        environments: Vec::new(),
        ..migrate("prod")
    };
    assert_eq!(
        plan(&inv, &none, &versions(&[])),
        Err(PlanError::MigrateOneEnvironment)
    );
}

#[test]
fn migrate_installs_unless_current_or_newer_and_the_hash_follows_the_migration() {
    let inv = inventory(FLEET);
    let sel = migrate("prod");
    let install = |p: &Plan| {
        p.steps
            .iter()
            .find(|s| s.kind == StepKind::InstallSso)
            .cloned()
            .unwrap()
    };
    let verify = |p: &Plan| p.steps.last().unwrap().clone();
    let newer = plan(&inv, &sel, &versions(&[("p1.corp.example", "3.0.9")])).unwrap();
    assert_eq!(install(&newer).expected, Expected::Newer);
    assert!(
        verify(&newer).accept_newer,
        "verify accepts the newer version"
    );
    let current = plan(&inv, &sel, &versions(&[("p1.corp.example", "3.0.7.0")])).unwrap();
    assert_eq!(install(&current).expected, Expected::AlreadyCurrent);
    assert!(!verify(&current).accept_newer);
    let fresh = plan(&inv, &sel, &versions(&[("p1.corp.example", "")])).unwrap();
    assert!(install(&fresh).install.is_some());
    assert_ne!(fresh.hash, current.hash);
    let unknown = plan(&inv, &sel, &versions(&[])).unwrap();
    assert!(
        unknown.warnings[0].contains("p1.corp.example (prod) has not reported"),
        "{:?}",
        unknown.warnings
    );
    // Another host security server, or backup directory, is another plan.
    let moved = inventory(&FLEET.replace("PDC_SERVER", "PDC_OTHER"));
    assert_ne!(
        plan(&moved, &sel, &versions(&[("p1.corp.example", "")]))
            .unwrap()
            .hash,
        fresh.hash
    );
    let elsewhere = inventory(&FLEET.replace(r"'\\backup01\hostsec'", r"'\\backup02\hostsec'"));
    assert_ne!(
        plan(&elsewhere, &sel, &versions(&[("p1.corp.example", "")]))
            .unwrap()
            .hash,
        fresh.hash
    );
}
